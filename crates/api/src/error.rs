//! Errors as the APIs answer them: a kind the caller can act on and a
//! message for the operator, never a prefix to parse.

use serde::{Deserialize, Serialize};

/// What kind of failure a server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is wrong (a manifest, a name, a value): fix it and retry.
    Invalid,
    /// What the request names does not exist.
    NotFound,
    /// The request could not be carried out (a process, the kernel, another node).
    Failed,
    /// The request was not understood (a client of another version).
    Malformed,
    /// Not now: what the request needs is not there yet (a pod the control
    /// plane has not told of); the same request may succeed later.
    Unavailable,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A server's own failure, described by its message (`anyhow`'s `{:#}`).
impl From<String> for ApiError {
    fn from(message: String) -> Self {
        Self::new(ErrorKind::Failed, message)
    }
}
