//! Label selectors, identity allocation and policy resolution into
//! per-endpoint entries.
//!
//! The agent feeds a [`PolicyEngine`] with policies (validated manifests
//! from `myelin-model`), endpoints, services and namespaces; each change
//! returns [`Changes`]: per-endpoint diffs and ipcache updates for the
//! datapath, with L7 rules for the proxy. [`explain`] answers "would this
//! flow pass, and why", also for policies not applied yet.

#![forbid(unsafe_code)]

mod contrib;
pub mod error;
pub mod explain;
pub mod identity;
pub mod labels;
mod peer_index;
pub mod resolve;
pub mod rules;

pub use error::{IdentityError, PolicyError};
pub use explain::{
    Explanation, HttpRequest, PolicyView, Query, Step, Target, Verdict, explain, http_matches,
};
pub use identity::{
    Allocator, FileStore, Identity, IdentityStore, LocalIdentities, MemoryStore, Retention,
    unix_now,
};
pub use labels::{LabelSet, Selector};
pub use resolve::{
    Action, Changes, Decision, DirectionDiff, DirectionPolicy, Endpoint, EndpointChange,
    EndpointKey, EndpointPolicy, Entry, EntryKey, EntryValue, IpCacheDiff, L7Policy, NamedPort,
    PolicyEngine, PortRange, RemoteEndpoint, ServiceRecord,
};
pub use rules::{Direction, PolicyKey, PolicyKind, Proto, Provenance};
