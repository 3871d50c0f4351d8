//! Loading, attaching and pinning Myelin's kernel programs, typed handles on
//! their maps, and the reader of their event ring.
//!
//! Everything is pinned under one bpffs directory per node, so an agent that
//! restarts finds its maps and attached programs where it left them: traffic
//! is never interrupted by an agent restart.

mod conntrack;
mod error;
mod events;
mod handles;
mod loader;
mod maps;
mod overlay;
pub mod proxy_routing;
mod services;
mod tables;

pub use conntrack::{Collected, ConntrackCollector};
pub use error::DatapathError;
pub use events::EventReader;
pub use handles::parse_mac;
pub use loader::{
    Datapath, EndpointAttachment, MapLayout, PROGRAM_FROM_CONTAINER, PROGRAM_FROM_OVERLAY,
    PROGRAM_FROM_UNDERLAY, PROGRAM_PROXY_LOOKUP, PROGRAM_TO_CONTAINER, PROGRAM_TO_OVERLAY,
    ReplacedPin, TestRunOutcome,
};
pub use myelin_common::{
    EndpointInfo, EventKind, ObservationPoint, PacketStats, TraceEvent, TrafficDirection, Verdict,
    drop_reason,
};
pub use overlay::{
    OVERLAY_DEVICE, OVERLAY_OVERHEAD_IPV4, OVERLAY_OVERHEAD_IPV6, OverlayDevice, RoutingMode,
    TunnelRoute, VXLAN_PORT, links_holding, pod_mtu,
};
pub use services::{ServiceGroup, ServiceOutcome};
pub use tables::{
    BackendRecord, CtRecord, CtScope, EndpointRecord, IpcacheRecord, PolicyDirection, PolicyRecord,
    PolicyRule, PolicyTable, RuleAction, Service, ServiceProtocol, ServiceRecord,
};

/// The kernel programs as built for this binary; empty in a lint-only build.
pub(crate) static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/myelin"));
