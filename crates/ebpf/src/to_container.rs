//! Packets entering a pod (`to_container`, and host routing on its behalf):
//! replies with reverse NAT, admitted flows, and the pod's ingress policy on
//! a new flow.

use crate::conntrack::{CONNTRACK, ct_key, ct_update, live_entry, new_entry};
use crate::endpoints::ENDPOINTS;
use crate::events::{Outcome, drop_packet, drop_unparsed, emit};
use crate::fragments::track_fragments;
use crate::parse::{is_infrastructure_icmpv6, is_link_local, parse};
use crate::policy::{Decision, decide, deny, emit_verdict, identity_of, policy_revision};
use crate::related::related_error;
use crate::service::{REV_NAT, rewrite, service_reply};
use crate::skb::mark;
use crate::state::{State, reset_meta};
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use myelin_common::event::{
    EVENT_FLAG_FRAGMENT, EVENT_FLAG_FROM_PROXY, EVENT_FLAG_REPLY, EVENT_FLAG_SERVICE,
};
use myelin_common::maps::{
    CT_FLAG_FROM_PROXY, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS, MARK_OVERLAY_IDENTITY,
    PROXY_MARK_EGRESS, PROXY_MARK_MASK,
};
use myelin_common::{
    CtEntry, Direction, EndpointInfo, ObservationPoint, PolicyAction, TrafficDirection, drop_reason,
};

/// Returned by `to_container_tracked` for a packet of no flow it knows.
pub(crate) const UNTRACKED: i32 = -2;

/// The receiving side of [`recheck_from_container`]: the pod's ingress
/// policy for a flow into it, against the peer identity it was decided for.
///
/// [`recheck_from_container`]: crate::from_container::recheck_from_container
#[inline(never)]
fn recheck_to_container(
    ctx: &TcContext,
    st: &mut State,
    endpoint_id: u32,
    entry: *mut CtEntry,
) -> i32 {
    // SAFETY: entry points into the map value, valid for this run.
    st.meta.src_identity = unsafe { (*entry).peer_identity };
    if endpoint_id != 0 {
        let ingress = decide(
            endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        );
        if ingress.drop_reason() != 0 {
            let point = ObservationPoint::ToEndpoint;
            return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
        }
    }
    // SAFETY: as above.
    unsafe { (*entry).policy_revision = policy_revision() };
    TC_ACT_OK
}

pub(crate) fn to_container_inner(ctx: &TcContext, st: &mut State, ifindex: u32) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    // SAFETY: read-only lookup, copied out.
    let endpoint = unsafe { ENDPOINTS.get(&ifindex) }.copied();
    reset_meta(st, ifindex, endpoint.as_ref(), false);
    match parse(ctx, &mut st.pkt) {
        Ok(true) => {}
        Ok(false) => return TC_ACT_OK,
        Err(reason) => return drop_unparsed(ctx, st, point, reason),
    }
    if is_infrastructure_icmpv6(&st.pkt) || is_link_local(&st.pkt) {
        return TC_ACT_OK;
    }
    let mark = mark(ctx);
    let from_proxy = mark & PROXY_MARK_MASK == PROXY_MARK_EGRESS;
    if from_proxy {
        st.meta.flags |= EVENT_FLAG_FROM_PROXY;
    }
    if st.pkt.fragment {
        st.meta.flags |= EVENT_FLAG_FRAGMENT;
    }
    // A later fragment takes its first fragment's ports, and goes on as one
    // packet of that flow.
    if let Err(reason) = track_fragments(&mut st.pkt) {
        return drop_packet(ctx, st, point, reason, 0);
    }
    if st.pkt.icmp_error {
        return related_error(ctx, st, point);
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let endpoint_id = endpoint.map_or(0, |e| e.endpoint_id);
    match to_container_tracked(ctx, st, endpoint_id, now) {
        UNTRACKED => to_container_new(ctx, st, endpoint.as_ref(), mark, now),
        verdict => verdict,
    }
}

/// Conntrack on the way into a pod: a reply of a flow the pod started
/// (reverse NAT, no policy) or a packet of a flow already admitted into it
/// (its ingress policy checked again after a policy change). [`UNTRACKED`]
/// when the packet belongs to neither: a new flow for the pod's ingress
/// policy. `endpoint_id` 0: the pod is not registered (no policy).
/// Run by `to_container`, and by a local sender's `from_container` for
/// the packets it hands straight to the pod ([`host_route`]).
///
/// [`host_route`]: crate::host_routing::host_route
// A separate BPF function: its locals get their own frame.
#[inline(never)]
pub(crate) fn to_container_tracked(
    ctx: &TcContext,
    st: &mut State,
    endpoint_id: u32,
    now: u64,
) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    // A reply of a flow this pod started: reverse NAT, no policy. (Keys in
    // the per-CPU state: host_route calls this with little stack left.)
    st.key = ct_key(&st.pkt, CT_SCOPE_EGRESS, true);
    if let Some(entry) = live_entry(&st.key, now) {
        let report = ct_update(entry, &st.pkt, ctx.len(), true, now);
        // SAFETY: entry points into the map value, valid for this run.
        let (index, peer) = unsafe { ((*entry).rev_nat_index, (*entry).peer_identity) };
        st.meta.src_identity = peer;
        st.meta.flags |= EVENT_FLAG_REPLY;
        if index != 0 {
            // SAFETY: read-only lookup, copied out.
            if let Some(frontend) = unsafe { REV_NAT.get(&u32::from(index)) }.copied() {
                if let Err(reason) = rewrite(ctx, &mut st.pkt, true, &frontend) {
                    return drop_packet(ctx, st, point, reason, 0);
                }
                st.meta.flags |= EVENT_FLAG_SERVICE;
                st.meta.service = frontend;
                if report {
                    service_reply(st, ctx.len(), now);
                }
            }
        }
        if report {
            emit(ctx, st, &Outcome::trace(point));
        }
        return TC_ACT_OK;
    }
    st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
    let Some(entry) = live_entry(&st.key, now) else {
        return UNTRACKED;
    };
    // SAFETY: entry points into the map value, valid for this run.
    if unsafe { (*entry).policy_revision } != policy_revision() {
        let verdict = recheck_to_container(ctx, st, endpoint_id, entry);
        if verdict != TC_ACT_OK {
            st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
            let _ = CONNTRACK.remove(&st.key);
            return verdict;
        }
    }
    if ct_update(entry, &st.pkt, ctx.len(), false, now) {
        // SAFETY: as above.
        st.meta.src_identity = unsafe { (*entry).peer_identity };
        emit(ctx, st, &Outcome::trace(point));
    }
    TC_ACT_OK
}

/// A new flow into a pod from outside this node's pods (the node, the proxy,
/// elsewhere): the pod's ingress policy.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn to_container_new(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    mark: u32,
    now: u64,
) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    let from_proxy = st.meta.flags & EVENT_FLAG_FROM_PROXY != 0;
    // The proxy's upstream connections say whom they act for in the mark's
    // upper half, and so does `from_overlay` for packets from other nodes
    // (the VNI's identity); otherwise the source address tells.
    let overlay = mark & PROXY_MARK_MASK == MARK_OVERLAY_IDENTITY;
    st.meta.src_identity = if (from_proxy || overlay) && mark >> 16 != 0 {
        mark >> 16
    } else {
        identity_of(st.pkt.family, &st.pkt.saddr)
    };
    let mut ingress = match endpoint {
        Some(ep) => decide(
            ep.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if from_proxy && ingress.action == PolicyAction::Redirect as u8 {
        // The proxy already applied the L7 rules: never loop back to it.
        ingress.action = PolicyAction::Allow as u8;
    }
    if ingress.drop_reason() != 0 {
        return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    // The proxy's upstream connection carries a flow whose verdicts were
    // reported where it was handed to the proxy (a local client's
    // `from_container`, or `remote_redirect` at the node's ingress for a
    // client of another node): a second verdict would make one request
    // look like two connections.
    if ingress.enforced && !from_proxy {
        emit_verdict(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    if ingress.action == PolicyAction::Redirect as u8 {
        // bpf_sk_assign works only at TC ingress: a redirect is honoured
        // where a local pod sends (from_container) or where another node's
        // flow enters this one (`remote_redirect`). One neither saw open
        // (from the node itself, a link without from_underlay): fail closed.
        return drop_packet(
            ctx,
            st,
            point,
            drop_reason::PROXY_UNSUPPORTED_PROTOCOL,
            ingress.rule_id,
        );
    }
    st.entry = new_entry(&st.pkt, ctx.len(), now);
    st.entry.peer_identity = st.meta.src_identity;
    st.entry.rule_id = ingress.rule_id;
    if from_proxy {
        st.entry.state |= CT_FLAG_FROM_PROXY;
    }
    st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
    if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
    }
    emit(ctx, st, &Outcome::trace(point));
    TC_ACT_OK
}
