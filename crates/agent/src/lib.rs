//! The per-node daemon: it owns the node's datapath (programs and maps), the
//! endpoints of the node's pods, the services they reach, and the node's DNS
//! responder; it serves a local API on a unix socket.
//!
//! A node is a value: everything here is scoped to the node the agent was
//! started for, so several agents (one per lab node) can run side by side.

pub mod api;
pub mod cluster;
mod conntrack;
mod daemon;
pub mod flows;
pub mod inspect;
mod ipam;
pub mod l7;
mod metrics;
mod netns;
mod policy;
mod reconcile;
pub mod rpc;
mod services;
mod state;
#[cfg(test)]
mod testing;
mod view;

pub use daemon::{AgentConfig, ClusterConfig, run};
pub use netns::enter_netns;
