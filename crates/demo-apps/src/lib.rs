//! Programs the lab runs for the container images it knows.
//!
//! The Star Wars demo's images are mapped to these: the deathstar is an HTTP
//! service with the API users know from Cilium's guide, and the spaceships
//! are idle pods that users `exec` into to run curl.

#![forbid(unsafe_code)]

pub mod deathstar;

/// The images the lab knows, and which program of this crate runs each.
pub fn program_for_image(image: &str) -> Option<KnownImage> {
    let repository = image.split(['@', ':']).next().unwrap_or(image);
    match repository {
        "quay.io/cilium/starwars" | "docker.io/cilium/starwars" | "cilium/starwars" => {
            Some(KnownImage::Deathstar)
        }
        "quay.io/cilium/json-mock" | "docker.io/cilium/json-mock" | "cilium/json-mock" => {
            Some(KnownImage::Spaceship)
        }
        _ => None,
    }
}

/// A program standing in for a container image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownImage {
    /// The deathstar HTTP service on port 80.
    Deathstar,
    /// An idle spaceship.
    Spaceship,
}

impl KnownImage {
    /// The `myelin app` subcommand arguments that run it.
    pub fn app_args(self) -> &'static [&'static str] {
        match self {
            KnownImage::Deathstar => &["app", "deathstar"],
            KnownImage::Spaceship => &["app", "spaceship"],
        }
    }

    /// The TCP port the program serves on, if any: the lab waits for it
    /// before it reports the pod ready.
    pub fn serving_port(self) -> Option<u16> {
        match self {
            KnownImage::Deathstar => Some(deathstar::PORT),
            KnownImage::Spaceship => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_by_repository_whatever_the_tag() {
        assert_eq!(
            program_for_image("quay.io/cilium/starwars:v2.1@sha256:833d"),
            Some(KnownImage::Deathstar)
        );
        assert_eq!(
            program_for_image("quay.io/cilium/json-mock:v1.3.8"),
            Some(KnownImage::Spaceship)
        );
        assert_eq!(program_for_image("nginx:1.27"), None);
    }
}
