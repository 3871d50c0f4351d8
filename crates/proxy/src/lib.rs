//! The per-node L7 proxy: transparent listeners, HTTP/1.1, HTTP/2, gRPC policy and visibility.
//!
//! The agent configures the proxy with versioned [`config::Snapshot`]s over a unix socket
//! ([`control`]); the datapath hands it connections with TPROXY semantics; for every request
//! the proxy evaluates the L7 policy of the connection's [`config::PolicyKey`], forwards or
//! answers `403 Access denied`, and reports an [`event::L7Event`] back to the agent.
//!
//! A connection passes through layers, each a module: the listener (`listener`: accept,
//! admission under the connection limits in `admission`, protocol sniffing, hyper), the
//! routing (`routing`: where the connection goes), the request handling (`http`: policy
//! from [`rules`], events from [`event`]), and the upstream pools (`upstream`). They share
//! the proxy-wide services (`state`); the process around them (snapshots, listeners,
//! metrics endpoint, drain) is in `proxy`.
// One call needs `unsafe` (glibc's `malloc_trim`, in `memory`); nothing else may.
#![deny(unsafe_code)]

mod admission;
pub mod config;
pub mod control;
pub mod event;
pub mod fd_limit;
pub mod h2c;
mod http;
pub mod io;
mod listener;
mod memory;
pub mod metrics;
mod proxy;
mod routing;
pub mod rules;
mod settings;
pub mod socket;
mod state;
mod upstream;

pub use http::{ACCESS_DENIED, ProxyBody};
pub use proxy::{Proxy, ProxyError, run};
pub use settings::{DEFAULT_MARK, DEFAULT_METRICS_ADDR, Limits, ProxyConfig};
