//! Programs the lab runs for the container images it knows (the Star Wars demo).
