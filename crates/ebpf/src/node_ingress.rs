//! Packets from other nodes at the node's ingress (`from_overlay` on the
//! VXLAN device, `from_underlay` on the underlay link): a TCP flow to a pod
//! of this node whose ingress policy redirects it is handed to the node's
//! L7 proxy here, with `bpf_sk_assign`, which works only at TC ingress —
//! the pod's `to_container` (its veth's egress) could only drop it.

use crate::conntrack::{CONNTRACK, ct_key, ct_update, live_entry, new_entry};
use crate::endpoints::{ENDPOINTS_BY_IP, ip_key};
use crate::events::drop_packet;
use crate::host_routing::host_route;
use crate::parse::{IPPROTO_TCP, TCP_ACK, TCP_SYN, parse};
use crate::policy::{decide, deny, emit_verdict, identity_of, policy_revision};
use crate::redirect::to_proxy;
use crate::skb::ifindex;
use crate::state::{State, reset_meta};
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use myelin_common::maps::CT_SCOPE_EGRESS;
use myelin_common::{Direction, ObservationPoint, PolicyAction, TrafficDirection, drop_reason};

/// Returned by [`remote_redirect`] when the caller must hand the packet to
/// the proxy on `State::redirect_port` (kept out of that function's frame:
/// the socket tuples would overflow the stack). The report flag is in
/// `State::redirect_report`.
pub(crate) const REDIRECT: i32 = -1;

/// Returned by [`remote_redirect`] for a packet the proxy does not take:
/// it goes on as before (host routing or the stack, then `to_container`).
pub(crate) const PASS_ON: i32 = -2;

/// Whether a packet that came from another node, with source identity
/// `src_identity` (the VNI's or the ipcache's), goes to the node's proxy.
/// A packet of a flow already redirected here does ([`REDIRECT`]); so does
/// the SYN opening a new flow to a pod of this node whose ingress policy
/// redirects it: the flow gets a conntrack entry in the egress scope, keyed
/// on the client's tuple as a local client's `from_container` makes it, so
/// that its later packets, and `proxy_lookup`'s TIME_WAIT steering, find
/// it. Everything else — other protocols, replies, flows allowed or
/// denied, packets of flows not seen opening — passes on ([`PASS_ON`]):
/// the pod's `to_container` decides (and reports) them as before. A flow
/// already redirected whose policy changed is checked once more; if now
/// denied, it is dropped here.
// A separate BPF function: its locals get their own frame.
#[inline(never)]
pub(crate) fn remote_redirect(ctx: &TcContext, st: &mut State, src_identity: u32, now: u64) -> i32 {
    if st.pkt.protocol != IPPROTO_TCP || st.pkt.fragment || st.pkt.icmp_error {
        return PASS_ON;
    }
    // SAFETY: read-only lookup, copied out (into the per-CPU state).
    match unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) } {
        Some(peer) => st.peer = *peer,
        None => return PASS_ON,
    }
    // The events speak for the receiving pod, as its `to_container` would.
    st.meta.ifindex = st.peer.ifindex;
    st.meta.endpoint_id = st.peer.endpoint_id;
    st.meta.src_identity = src_identity;
    st.meta.dst_identity = st.peer.identity;
    st.meta.direction = TrafficDirection::Ingress as u8;
    let point = ObservationPoint::ToProxy;
    st.key = ct_key(&st.pkt, CT_SCOPE_EGRESS, false);
    if let Some(entry) = live_entry(&st.key, now) {
        // SAFETY: entry points into the map value, valid for this run.
        let (verdict, port, revision) = unsafe {
            (
                (*entry).verdict,
                (*entry).proxy_port,
                (*entry).policy_revision,
            )
        };
        if verdict != PolicyAction::Redirect as u8 {
            return PASS_ON;
        }
        if revision != policy_revision() {
            let ingress = decide(
                st.peer.endpoint_id,
                Direction::ToContainer,
                src_identity,
                &st.pkt,
            );
            if ingress.drop_reason() != 0 {
                let _ = CONNTRACK.remove(&st.key);
                return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
            }
            // SAFETY: as above.
            unsafe { (*entry).policy_revision = policy_revision() };
        }
        st.redirect_report = ct_update(entry, &st.pkt, ctx.len(), false, now);
        st.redirect_port = port;
        return REDIRECT;
    }
    if st.pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return PASS_ON;
    }
    let ingress = decide(
        st.peer.endpoint_id,
        Direction::ToContainer,
        src_identity,
        &st.pkt,
    );
    if ingress.drop_reason() != 0 || ingress.action != PolicyAction::Redirect as u8 {
        return PASS_ON;
    }
    if ingress.enforced {
        emit_verdict(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    st.entry = new_entry(&st.pkt, ctx.len(), now);
    st.entry.peer_identity = src_identity;
    st.entry.rule_id = ingress.rule_id;
    st.entry.verdict = PolicyAction::Redirect as u8;
    st.entry.proxy_port = ingress.proxy_port;
    if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
    }
    st.redirect_report = true;
    st.redirect_port = ingress.proxy_port;
    REDIRECT
}

/// On the node's underlay-facing link (ingress, native routing): packets
/// routed here from other nodes' pods, unencapsulated. The source identity
/// is the ipcache's. A flow for the proxy is handed to it
/// ([`remote_redirect`]); a packet of a flow the destination pod already
/// tracks (a reply, or a flow its ingress admitted) is handed straight into
/// the pod by host routing, as `from_overlay` does in tunnel mode, saving
/// the node's stack; everything else — a new flow, a fragment, an ICMP
/// error, the nodes' own traffic, VXLAN packets — passes untouched, and the
/// pod's `to_container` decides a new flow.
pub(crate) fn from_underlay_inner(ctx: &TcContext, st: &mut State) -> i32 {
    reset_meta(st, ifindex(ctx), None, false);
    if !matches!(parse(ctx, &mut st.pkt), Ok(true)) || st.pkt.fragment || st.pkt.icmp_error {
        return TC_ACT_OK;
    }
    let identity = identity_of(st.pkt.family, &st.pkt.saddr);
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    match remote_redirect(ctx, st, identity, now) {
        REDIRECT => to_proxy(ctx, st, st.redirect_port, st.redirect_report),
        PASS_ON => host_route(ctx, st, now),
        verdict => verdict,
    }
}
