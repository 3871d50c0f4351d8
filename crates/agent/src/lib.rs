//! The per-node daemon: endpoints, identities, datapath programming, APIs.
