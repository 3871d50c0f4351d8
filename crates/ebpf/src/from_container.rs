//! Packets leaving a pod (`from_container`): service DNAT, conntrack, the
//! sender's egress and a local receiver's ingress policy on a new flow,
//! then delivery: to a local pod, into the overlay, or to the stack.

use crate::conntrack::{CONNTRACK, ct_key, ct_update, live_entry, new_entry};
use crate::endpoints::{ENDPOINTS, ENDPOINTS_BY_IP, ip_key};
use crate::events::{Outcome, drop_packet, drop_unparsed, emit};
use crate::fragments::track_fragments;
use crate::host_routing::host_route;
use crate::overlay::{encapsulate, forward_point};
use crate::parse::{
    IPPROTO_TCP, IPPROTO_UDP, Packet, SourceCheck, is_infrastructure_icmpv6, parse, source_check,
};
use crate::policy::{Decision, decide, deny, emit_verdict, identity_of, policy_revision};
use crate::redirect::{reply_to_proxy, to_proxy};
use crate::related::related_error;
use crate::service::{reset_client, service_translate, unreachable_client, unserved_cluster_ip};
use crate::state::{State, reset_meta};
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use myelin_common::event::{EVENT_FLAG_FRAGMENT, EVENT_FLAG_REPLY};
use myelin_common::maps::{CT_FLAG_FROM_PROXY, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS};
use myelin_common::{
    CtEntry, Direction, EndpointInfo, ObservationPoint, PolicyAction, TrafficDirection, drop_reason,
};

/// Returned by `from_container_new` when the caller must hand the packet to
/// the proxy on `State::redirect_port` (kept out of that function's frame:
/// the socket tuples would overflow the stack).
const REDIRECT: i32 = -1;

/// Returned by `from_container_new` for an allowed packet the node forwards
/// (to a local pod: host routing, else the stack).
const FORWARD: i32 = TC_ACT_OK;

pub(crate) fn from_container_inner(ctx: &TcContext, st: &mut State, ifindex: u32) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: read-only lookup; the value is copied out at once.
    let endpoint = unsafe { ENDPOINTS.get(&ifindex) }.copied();
    reset_meta(st, ifindex, endpoint.as_ref(), true);
    match parse(ctx, &mut st.pkt) {
        Ok(true) => {}
        // Not IP (ARP): nothing to police.
        Ok(false) => return TC_ACT_OK,
        Err(reason) => return drop_unparsed(ctx, st, point, reason),
    }
    if let Some(ep) = endpoint.as_ref() {
        match source_check(ep, &st.pkt) {
            SourceCheck::Valid => {}
            // Neighbour discovery and other link-local traffic: the node
            // never forwards it, so it needs no policy.
            SourceCheck::LinkLocal => return TC_ACT_OK,
            SourceCheck::Spoofed => {
                return drop_packet(ctx, st, point, drop_reason::INVALID_SOURCE_IP, 0);
            }
        }
    }
    if is_infrastructure_icmpv6(&st.pkt) {
        return TC_ACT_OK;
    }
    if st.pkt.fragment {
        st.meta.flags |= EVENT_FLAG_FRAGMENT;
    }
    // A later fragment takes its first fragment's ports, and goes on as one
    // packet of that flow.
    if let Err(reason) = track_fragments(&mut st.pkt) {
        return drop_packet(ctx, st, point, reason, 0);
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };

    // Service: choose (or recall) the backend and DNAT to it.
    let mut rev_nat_index = 0u16;
    if st.pkt.protocol == IPPROTO_TCP || st.pkt.protocol == IPPROTO_UDP {
        match service_translate(ctx, st, now) {
            Ok(index) => rev_nat_index = index,
            Err(drop_reason::NO_SERVICE) => return refuse(ctx, st, ifindex),
            Err(reason) => return drop_packet(ctx, st, point, reason, 0),
        }
    }

    if st.pkt.icmp_error {
        let verdict = related_error(ctx, st, point);
        if verdict != TC_ACT_OK {
            return verdict;
        }
        return encapsulate(ctx, st);
    }

    let forward = ct_key(&st.pkt, CT_SCOPE_EGRESS, false);
    if let Some(entry) = live_entry(&forward, now) {
        // SAFETY: entry points into the map value, valid for this run.
        if unsafe { (*entry).policy_revision } != policy_revision() {
            let verdict = recheck_from_container(ctx, st, endpoint.as_ref(), entry);
            if verdict != TC_ACT_OK {
                let _ = CONNTRACK.remove(&forward);
                return verdict;
            }
        }
        let report = ct_update(entry, &st.pkt, ctx.len(), false, now);
        // SAFETY: entry points into the map value, valid for this run.
        let (verdict, proxy_port, peer) = unsafe {
            (
                (*entry).verdict,
                (*entry).proxy_port,
                (*entry).peer_identity,
            )
        };
        st.meta.dst_identity = peer;
        if verdict == PolicyAction::Redirect as u8 {
            return to_proxy(ctx, st, proxy_port, report);
        }
        if report {
            emit(ctx, st, &Outcome::trace(forward_point(st)));
        }
        return deliver(ctx, st, now);
    }
    let reply = ct_key(&st.pkt, CT_SCOPE_INGRESS, true);
    if let Some(entry) = live_entry(&reply, now) {
        // A reply of a flow the pod accepted: no policy lookup.
        let report = ct_update(entry, &st.pkt, ctx.len(), true, now);
        // SAFETY: as above.
        let (peer, state) = unsafe { ((*entry).peer_identity, (*entry).state) };
        let from_proxy = state & CT_FLAG_FROM_PROXY != 0;
        if report {
            st.meta.flags |= EVENT_FLAG_REPLY;
            st.meta.dst_identity = peer;
            let to = if from_proxy {
                ObservationPoint::ToProxy
            } else {
                forward_point(st)
            };
            emit(ctx, st, &Outcome::trace(to));
        }
        if from_proxy {
            return reply_to_proxy(ctx, &st.pkt);
        }
        return deliver(ctx, st, now);
    }
    // A new flow to a port of a cluster IP that no frontend serves.
    if rev_nat_index == 0 && unserved_cluster_ip(&st.pkt) {
        return refuse(ctx, st, ifindex);
    }
    match from_container_new(ctx, st, endpoint.as_ref(), rev_nat_index, now) {
        REDIRECT => to_proxy(ctx, st, st.redirect_port, true),
        FORWARD => deliver(ctx, st, now),
        verdict => verdict,
    }
}

/// Forwards an allowed packet: into a pod of this node (host routing), into
/// the overlay to a pod of another node (tunnel mode), or to the stack.
// Inlined: the steps are siblings under the caller's frame.
#[inline(always)]
fn deliver(ctx: &TcContext, st: &mut State, now: u64) -> i32 {
    let verdict = host_route(ctx, st, now);
    if verdict != TC_ACT_OK {
        return verdict;
    }
    encapsulate(ctx, st)
}

/// Drops a packet to a service that cannot serve it ("Service backend not
/// found"): a frontend without backends, or a cluster IP port without a
/// frontend. Fail fast: the client gets a reset (TCP SYN) or a port
/// unreachable (UDP) instead of retrying into the void.
// Inlined, calling two frames one after the other: nested, the drop's and
// the answer's frames would not fit the 512-byte stack with the caller's.
#[inline(always)]
fn refuse(ctx: &TcContext, st: &mut State, ifindex: u32) -> i32 {
    let verdict = drop_refused(ctx, st);
    answer_refused(ctx, &st.pkt, ifindex).unwrap_or(verdict)
}

/// The drop (and its report) of a refused packet.
#[inline(never)]
fn drop_refused(ctx: &TcContext, st: &mut State) -> i32 {
    drop_packet(
        ctx,
        st,
        ObservationPoint::ToStack,
        drop_reason::NO_SERVICE,
        0,
    )
}

/// The refusal's answer to the client, if its packet gets one.
#[inline(never)]
fn answer_refused(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> Option<i32> {
    match pkt.protocol {
        IPPROTO_TCP => reset_client(ctx, pkt, ifindex),
        IPPROTO_UDP => unreachable_client(ctx, pkt, ifindex),
        _ => None,
    }
}

/// A new flow leaving a pod: the sender's egress policy, then a local
/// receiver's ingress policy, then conntrack entries for both sides.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn from_container_new(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    rev_nat_index: u16,
    now: u64,
) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: read-only lookup, copied out.
    let local_peer = unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) }.copied();
    st.meta.dst_identity = match local_peer {
        Some(peer) => peer.identity,
        None => identity_of(st.pkt.family, &st.pkt.daddr),
    };
    let egress = match endpoint {
        Some(ep) => decide(
            ep.endpoint_id,
            Direction::FromContainer,
            st.meta.dst_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if egress.drop_reason() != 0 {
        return deny(ctx, st, point, &egress, TrafficDirection::Egress);
    }
    if egress.enforced {
        emit_verdict(ctx, st, point, &egress, TrafficDirection::Egress);
    }
    let ingress = match local_peer {
        Some(peer) => decide(
            peer.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if ingress.drop_reason() != 0 {
        return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    if ingress.enforced {
        emit_verdict(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    // The egress redirect wins: one proxy on the node serves both sides.
    let redirect = if egress.action == PolicyAction::Redirect as u8 {
        Some(egress.proxy_port)
    } else if ingress.action == PolicyAction::Redirect as u8 {
        Some(ingress.proxy_port)
    } else {
        None
    };
    if redirect.is_some() && st.pkt.protocol != IPPROTO_TCP {
        return drop_packet(ctx, st, point, drop_reason::PROXY_UNSUPPORTED_PROTOCOL, 0);
    }
    st.entry = new_entry(&st.pkt, ctx.len(), now);
    st.entry.peer_identity = st.meta.dst_identity;
    st.entry.rule_id = egress.rule_id;
    st.entry.rev_nat_index = rev_nat_index;
    if let Some(port) = redirect {
        st.entry.verdict = PolicyAction::Redirect as u8;
        st.entry.proxy_port = port;
    }
    st.key = ct_key(&st.pkt, CT_SCOPE_EGRESS, false);
    if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
    }
    if let (Some(_), None) = (local_peer, redirect) {
        // Admit the flow at the receiver's to_container too, so its ingress
        // policy is evaluated once, here.
        st.entry.peer_identity = st.meta.src_identity;
        st.entry.rule_id = ingress.rule_id;
        st.entry.rev_nat_index = 0;
        st.key.scope = CT_SCOPE_INGRESS;
        if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
            return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
        }
    }
    if let Some(port) = redirect {
        st.redirect_port = port;
        return REDIRECT;
    }
    emit(ctx, st, &Outcome::trace(forward_point(st)));
    TC_ACT_OK
}

/// The policy changed since this flow was decided: checks the sender's
/// egress and a local receiver's ingress again. A flow still allowed goes
/// on (keeping its allow or redirect verdict: a connection is not moved to
/// or from the proxy mid-stream); a denied one is dropped.
// A separate BPF function: its locals get their own frame.
#[inline(never)]
pub(crate) fn recheck_from_container(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    entry: *mut CtEntry,
) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: entry points into the map value, valid for this run.
    st.meta.dst_identity = unsafe { (*entry).peer_identity };
    if let Some(ep) = endpoint {
        let egress = decide(
            ep.endpoint_id,
            Direction::FromContainer,
            st.meta.dst_identity,
            &st.pkt,
        );
        if egress.drop_reason() != 0 {
            return deny(ctx, st, point, &egress, TrafficDirection::Egress);
        }
    }
    // SAFETY: read-only lookup, copied out.
    if let Some(peer) = unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) } {
        let ingress = decide(
            peer.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        );
        if ingress.drop_reason() != 0 {
            return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
        }
    }
    // SAFETY: as above.
    unsafe { (*entry).policy_revision = policy_revision() };
    TC_ACT_OK
}
