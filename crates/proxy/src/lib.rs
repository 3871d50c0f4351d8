//! The per-node L7 proxy: transparent listeners, HTTP/1.1, HTTP/2, gRPC policy and visibility.
//!
//! The agent configures the proxy with versioned [`config::Snapshot`]s over a unix socket
//! ([`control`]); the datapath hands it connections with TPROXY semantics; for every request
//! the proxy evaluates the L7 policy of the connection's [`config::PolicyKey`], forwards or
//! answers `403 Access denied`, and reports an [`event::L7Event`] back to the agent.

pub mod config;
pub mod control;
pub mod event;
pub mod h2c;
pub mod http;
pub mod io;
pub mod metrics;
mod proxy;
pub mod rules;
pub mod socket;

pub use proxy::{DEFAULT_MARK, Limits, Proxy, ProxyConfig, ProxyError, run};
