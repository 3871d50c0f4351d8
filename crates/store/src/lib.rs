//! The cluster store on etcd: nodes, identities, endpoints and the lab's resources under
//! `/myelin/<cluster>/` (the layout is in the crate README), and etcd itself as a child
//! process for the lab and the tests ([`server`]).
//!
//! [`Store`] is the connection (async calls, each with a timeout; it reconnects by
//! itself). [`NodeSession`] is a node's lease and the keys it owns under it (kept alive,
//! replaced and rewritten when lost). [`EtcdIdentityStore`] serves the agent's
//! synchronous identity allocator. [`Store::watch_nodes`] and its siblings deliver typed
//! changes, resyncing after outages without a spurious delete-all.

mod client;
mod cluster;
mod error;
mod identity;
mod keys;
pub mod server;
mod session;
mod types;
pub mod watch;

pub use client::{Store, StoreAddress, StoreConfig};
pub use error::StoreError;
pub use identity::{EtcdIdentityStore, first_free};
pub use keys::{Keys, ResourceKey};
pub use session::{LAB_LEASE_TTL, NodeSession};
pub use types::{Endpoint, Node};
pub use watch::{Update, Watch};
