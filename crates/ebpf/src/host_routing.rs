//! Host routing: delivery to a pod of this node with `bpf_redirect_peer`.

use crate::endpoints::{ENDPOINTS_BY_IP, ip_key};
use crate::events::{count, drop_packet};
use crate::parse::ETH_HLEN;
use crate::state::State;
use crate::to_container::{UNTRACKED, to_container_tracked};
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_redirect_peer;
use aya_ebpf::programs::TcContext;
use myelin_common::maps::FAMILY_IPV4;
use myelin_common::{Direction, ObservationPoint, TrafficDirection, drop_reason};

/// Host routing: a packet `from_container` forwards to a pod of this node
/// skips the node's IP stack (routing, forwarding, neighbour output) and the
/// destination veth's egress: it is handed straight into the pod's network
/// namespace with `bpf_redirect_peer`. What the destination's
/// `to_container` would have done happens here, with its context (its
/// conntrack side, reverse NAT, a re-check of its ingress policy after a
/// policy change, its to-endpoint trace and counters), then the frame gets
/// the addresses a router would give it (to the pod's MAC, from its host
/// veth's) and one hop less.
///
/// Returns `TC_ACT_OK` — the node's stack routes the packet and
/// `to_container` runs as before — when the destination is not a pod of
/// this node, its MACs are unknown (registered without them), the TTL or
/// hop limit would expire (the stack answers with Time Exceeded), or the
/// receiver has not admitted the flow (its ingress policy is to be decided
/// by `to_container`).
// Inlined, so that the three steps are siblings under the caller's frame
// (nested, they would exceed the 512-byte stack of a call chain).
#[inline(always)]
pub(crate) fn host_route(ctx: &TcContext, st: &mut State, now: u64) -> i32 {
    if !host_route_prepare(ctx, st) {
        return TC_ACT_OK;
    }
    let verdict = to_container_tracked(ctx, st, st.peer.endpoint_id, now);
    if verdict == UNTRACKED {
        return TC_ACT_OK;
    }
    host_route_deliver(ctx, st, verdict)
}

/// [`host_route`]'s first step: is the destination a pod of this node with
/// known MACs, and does the packet have a hop left? If so, the pod is in
/// `st.peer` and the event context is the pod's, as its `to_container`
/// would have it.
#[inline(never)]
fn host_route_prepare(ctx: &TcContext, st: &mut State) -> bool {
    // SAFETY: read-only lookup, copied out (into the per-CPU state: the
    // stack is short).
    match unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) } {
        Some(peer) => st.peer = *peer,
        None => return false,
    }
    if !st.peer.host_routable() {
        return false;
    }
    // IPv4 TTL or IPv6 hop limit: the stack answers an expiring one with
    // Time Exceeded.
    let hops_at = ETH_HLEN + if st.pkt.family == FAMILY_IPV4 { 8 } else { 7 };
    match ctx.load::<u8>(hops_at) {
        Ok(hops) if hops > 1 => {}
        _ => return false,
    }
    st.meta.ifindex = st.peer.ifindex;
    st.meta.endpoint_id = st.peer.endpoint_id;
    st.meta.src_identity = 0;
    st.meta.dst_identity = st.peer.identity;
    st.meta.flags = 0;
    st.meta.direction = TrafficDirection::Ingress as u8;
    true
}

/// [`host_route`]'s last step, after the pod's conntrack side said
/// `verdict`: the pod's counters, then (allowed) the router's rewrite — to
/// the pod's MAC, from its host veth's, one hop less (IPv4 header checksum
/// updated) — and the redirect into the pod's namespace.
#[inline(never)]
fn host_route_deliver(ctx: &TcContext, st: &mut State, verdict: i32) -> i32 {
    let ifindex = st.peer.ifindex;
    count(ifindex, Direction::ToContainer, ctx.len());
    if verdict != TC_ACT_OK {
        return verdict;
    }
    let point = ObservationPoint::ToEndpoint;
    if ctx.store(0, &st.peer.mac, 0).is_err() || ctx.store(6, &st.peer.host_mac, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    }
    let v4 = st.pkt.family == FAMILY_IPV4;
    let hops_at = ETH_HLEN + if v4 { 8 } else { 7 };
    let Ok(hops) = ctx.load::<[u8; 2]>(hops_at) else {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    };
    let left = hops[0].saturating_sub(1);
    if v4 {
        // The checksummed word is TTL and protocol.
        let from = u16::from_ne_bytes(hops);
        let to = u16::from_ne_bytes([left, hops[1]]);
        if ctx
            .l3_csum_replace(ETH_HLEN + 10, u64::from(from), u64::from(to), 2)
            .is_err()
        {
            return drop_packet(ctx, st, point, drop_reason::CSUM_L3, 0);
        }
    }
    if ctx.store(hops_at, &left, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    }
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}
