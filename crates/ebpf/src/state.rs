//! The working state of one program run: the parsed packet, what its events
//! will say, and the records being written, kept per CPU off the 512-byte
//! stack.

use crate::parse::Packet;
use crate::zero::zero_words;
use aya_ebpf::macros::map;
use aya_ebpf::maps::PerCpuArray;
use myelin_common::{CtEntry, CtKey, EndpointInfo, L4Addr, TrafficDirection};

/// The working state of one run.
pub(crate) struct State {
    pub(crate) pkt: Packet,
    pub(crate) meta: Context,
    /// The proxy port when a new flow is to be redirected.
    pub(crate) redirect_port: u16,
    /// Whether that redirect is reported (a new flow, or a conntrack report
    /// due): set by `remote_redirect`.
    pub(crate) redirect_report: bool,
    /// Conntrack key and entry being written (off the stack).
    pub(crate) key: CtKey,
    pub(crate) entry: CtEntry,
    /// The local pod a packet is handed to by [`host_route`].
    ///
    /// [`host_route`]: crate::host_routing::host_route
    pub(crate) peer: EndpointInfo,
}

/// Facts the events carry beyond the packet itself. Word-aligned, so that
/// [`zero_words`] clears it.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct Context {
    pub(crate) ifindex: u32,
    pub(crate) endpoint_id: u32,
    pub(crate) src_identity: u32,
    pub(crate) dst_identity: u32,
    pub(crate) flags: u8,
    /// [`TrafficDirection`] as u8 of the packet at the endpoint the program
    /// runs for: egress leaving it, ingress entering it.
    pub(crate) direction: u8,
    pub(crate) service: L4Addr,
}

/// Starts a run's event context: the veth `ifindex`, its endpoint, and
/// whether the endpoint is `sending` (`from_container`) or receiving.
pub(crate) fn reset_meta(
    st: &mut State,
    ifindex: u32,
    endpoint: Option<&EndpointInfo>,
    sending: bool,
) {
    let (id, identity) = endpoint.map_or((0, 0), |e| (e.endpoint_id, e.identity));
    // SAFETY: a context of zeros is valid (integers, a zero address); the
    // service stays so, the rest is set below.
    unsafe { zero_words(&mut st.meta) };
    let meta = &mut st.meta;
    meta.ifindex = ifindex;
    meta.endpoint_id = id;
    if sending {
        meta.src_identity = identity;
        meta.direction = TrafficDirection::Egress as u8;
    } else {
        meta.dst_identity = identity;
        meta.direction = TrafficDirection::Ingress as u8;
    }
}

/// Per-CPU working state of one program run. TC programs do not nest on a
/// CPU, so one slot suffices.
#[map(name = "MYELIN_STATE")]
pub(crate) static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);
