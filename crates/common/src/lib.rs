//! `#[repr(C)]` types shared by Myelin's kernel programs and user space: map
//! keys and values, and the records the programs write to the event ring.
//!
//! Every type here is plain old data with explicit padding, so that the
//! kernel and user space agree on its layout byte for byte.
#![no_std]

pub mod event;
pub mod maps;

pub use event::{EventKind, ObservationPoint, TraceEvent, TrafficDirection, Verdict, drop_reason};
pub use maps::{
    AffinityEntry, AffinityKey, CtEntry, CtKey, DatapathConfig, Direction, EndpointInfo,
    EndpointPolicy, IpKey, IpcacheEntry, IpcacheKey, L4Addr, PacketStats, PolicyAction,
    PolicyEntry, PolicyKey, PolicyMatch, ServiceEntry, ServiceKey, StatsKey, TunnelEndpoint,
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    /// The kernel and user space read the same bytes: sizes are part of the ABI.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TraceEvent>(), 104);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<CtEntry>(), 56);
        assert_eq!(size_of::<PolicyKey>(), 16);
        assert_eq!(size_of::<IpcacheKey>(), 20);
        assert_eq!(size_of::<ServiceKey>(), 24);
        assert_eq!(size_of::<L4Addr>(), 20);
        assert_eq!(size_of::<ServiceEntry>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 20);
        assert_eq!(size_of::<AffinityEntry>(), 16);
        assert_eq!(size_of::<EndpointInfo>(), 48);
        assert_eq!(size_of::<DatapathConfig>(), 8);
        assert_eq!(size_of::<TunnelEndpoint>(), 20);
        assert_eq!(core::mem::offset_of!(EndpointInfo, ifindex), 32);
        assert_eq!(core::mem::offset_of!(EndpointInfo, mac), 36);
        assert_eq!(core::mem::offset_of!(EndpointInfo, host_mac), 42);
    }
}
