//! Errors of identity allocation and policy resolution.

use myelin_model::ManifestError;

/// A failure of the identity store or allocator.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file operation of the file-backed store failed.
    #[error("identity store: cannot {what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store's file is not a valid identity table.
    #[error("identity store {path} is corrupt ({message}); move it away to start afresh")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Every cluster identity (256-65535) is in use.
    #[error("all cluster identities 256-65535 are in use; fewer distinct label sets are needed")]
    Exhausted,
    /// A thread panicked while holding the in-memory store.
    #[error("identity store lock poisoned by a panic in another thread")]
    Poisoned,
    /// A networked store (etcd) failed or did not answer; the call may be retried.
    #[error("identity store: {0}")]
    Unavailable(String),
}

/// A failure to apply a change to the policy engine.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The resource is not a policy kind (or not one the call expects).
    #[error("{0} is not a CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy")]
    NotAPolicy(String),
    /// A manifest failed validation; it is rejected alone.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    /// Identity allocation failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The named endpoint is unknown.
    #[error("no endpoint {0}; list endpoints with `myelin policy get`")]
    UnknownEndpoint(String),
    /// A remote endpoint came with a number outside the cluster range (a
    /// reserved or node-local identity means something else on each node).
    #[error(
        "remote endpoint {ip} of node {node} has identity {identity}, outside the cluster range 256-65535; ignored"
    )]
    RemoteIdentity {
        /// The address.
        ip: std::net::IpAddr,
        /// The node that published it.
        node: String,
        /// The number.
        identity: u32,
    },
}
