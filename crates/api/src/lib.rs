//! The APIs between Myelin's processes, in one place: what the lab
//! supervisor and the CLI ask a node's agent ([`agent`]), what the CLI asks
//! the lab supervisor ([`lab`]), typed errors ([`ApiError`]) and the framing
//! both speak ([`framing`]: JSON lines on a unix socket).
//!
//! Callers depend on this crate, not on the daemon behind the socket.

#![forbid(unsafe_code)]

pub mod agent;
pub mod cni;
mod error;
pub mod framing;
pub mod lab;

pub use error::{ApiError, ErrorKind};
pub use framing::{ClientError, call, serve_connection};
