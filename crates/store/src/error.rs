//! The store's errors.

use std::path::PathBuf;

/// What went wrong talking to etcd, starting it, or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An etcd call failed (unreachable, no leader, refused).
    #[error("etcd: {what}: {source}")]
    Etcd {
        /// The operation.
        what: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// An etcd call did not answer in time.
    #[error("etcd: {what}: no answer within {secs:.1} s (is etcd running and reachable?)")]
    Timeout {
        /// The operation.
        what: String,
        /// The timeout.
        secs: f64,
    },
    /// A key or value in the store that does not parse.
    #[error("etcd key {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A name that cannot be a key component.
    #[error("{what} {value:?} cannot be part of a store key: {why}")]
    BadName {
        /// What the name names (node, namespace, ...).
        what: &'static str,
        /// The name.
        value: String,
        /// Why not.
        why: &'static str,
    },
    /// Every number of the cluster range is bound.
    #[error("no free identity number left in the cluster range")]
    Exhausted,
    /// A transaction kept losing races.
    #[error("etcd: {what}: still conflicting after {attempts} attempts")]
    Contended {
        /// The operation.
        what: String,
        /// How often it was tried.
        attempts: usize,
    },
    /// The store's runtime thread is gone (the store was shut down).
    #[error("the store's runtime has stopped")]
    Stopped,
    /// The etcd server could not be started or stopped.
    #[error("etcd server: {what}: {message} (log: {})", log.display())]
    Server {
        /// What was being done.
        what: String,
        /// What went wrong, with the log's last lines when etcd wrote any.
        message: String,
        /// The member's log file.
        log: PathBuf,
    },
    /// A local I/O error (data directory, ports).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| Self::Etcd {
            what: what.into(),
            source,
        }
    }
}
