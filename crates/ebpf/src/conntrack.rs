//! Connection tracking: keys, entries, their state and timeouts, and the
//! ICMP errors related to tracked flows.

use crate::State;
use crate::events::{Outcome, drop_packet, emit};
use crate::parse::{IPPROTO_TCP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::policy::{decide, identity_of, policy_revision};
use crate::service::rev_nat_error;
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::map;
use aya_ebpf::maps::LruHashMap;
use aya_ebpf::programs::TcContext;
use myelin_common::event::EVENT_FLAG_RELATED;
use myelin_common::maps::{
    CT_FLAG_CLOSING, CT_FLAG_FROM_PROXY, CT_FLAG_REPLIED, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS,
    CT_TIMEOUT_CLOSE_NS, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_SYN_NS, CT_TIMEOUT_TCP_NS,
    TRACE_REPORT_INTERVAL_NS,
};
use myelin_common::{CtEntry, CtKey, Direction, ObservationPoint, PolicyAction};

/// An ICMP error passes when it quotes a packet of a tracked flow (in either
/// scope, either way round); otherwise it is policed as ICMP with no port,
/// like a new flow: an endpoint that enforces needs an ICMP rule for it. An
/// error about a pod's connection to a service is reverse-NAT'd like the
/// replies, so the pod's socket recognises it.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
pub(crate) fn related_error(ctx: &TcContext, st: &mut State, point: ObservationPoint) -> i32 {
    let pkt = &st.pkt;
    st.key = CtKey {
        saddr: pkt.inner_saddr,
        daddr: pkt.inner_daddr,
        sport: pkt.inner_sport,
        dport: pkt.inner_dport,
        protocol: pkt.inner_protocol,
        scope: CT_SCOPE_EGRESS,
        family: pkt.family,
        _pad: 0,
    };
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // The pod's own connection, as it sent it (after DNAT).
    let mut rev_nat_index = 0;
    let mut found = false;
    if let Some(entry) = live_entry(&st.key, now) {
        found = true;
        // SAFETY: entry points into the map value.
        rev_nat_index = unsafe { (*entry).rev_nat_index };
    }
    st.key.scope = CT_SCOPE_INGRESS;
    if live_entry(&st.key, now).is_some() || live_entry(&swap(&st.key), now).is_some() {
        found = true;
    }
    st.key.scope = CT_SCOPE_EGRESS;
    if live_entry(&swap(&st.key), now).is_some() {
        found = true;
    }
    st.meta.src_identity = identity_of(st.pkt.family, &st.pkt.saddr);
    st.meta.dst_identity = identity_of(st.pkt.family, &st.pkt.daddr);
    if found {
        st.meta.flags |= EVENT_FLAG_RELATED;
        if rev_nat_index != 0 && point == ObservationPoint::ToEndpoint {
            if let Err(reason) = rev_nat_error(ctx, st, rev_nat_index) {
                return drop_packet(ctx, st, point, reason, 0);
            }
        }
    } else {
        let (direction, peer) = if point == ObservationPoint::ToStack {
            (Direction::FromContainer, st.meta.dst_identity)
        } else {
            (Direction::ToContainer, st.meta.src_identity)
        };
        let decision = decide(st.meta.endpoint_id, direction, peer, &st.pkt);
        let reason = decision.drop_reason();
        if reason != 0 {
            return drop_packet(ctx, st, point, reason, decision.rule_id);
        }
    }
    emit(ctx, st, &Outcome::trace(point));
    TC_ACT_OK
}

fn swap(key: &CtKey) -> CtKey {
    CtKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        ..*key
    }
}

/// The conntrack key of a packet; `reverse` swaps it to find the flow the
/// packet replies to.
pub(crate) fn ct_key(pkt: &Packet, scope: u8, reverse: bool) -> CtKey {
    let key = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        protocol: pkt.protocol,
        scope,
        family: pkt.family,
        _pad: 0,
    };
    if reverse { swap(&key) } else { key }
}

/// A conntrack entry that has not expired (expired ones await user-space GC
/// or LRU eviction and count as absent).
pub(crate) fn live_entry(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: entry points into the map value.
    if unsafe { (*entry).expires_ns } < now {
        return None;
    }
    Some(entry)
}

/// Idle timeout of a flow in its state: closing TCP (RST, FIN both ways)
/// lingers briefly, established TCP long, a handshake and UDP/ICMP shortly.
fn timeout(pkt: &Packet, forward_flags: u8, state: u8) -> u64 {
    if pkt.protocol != IPPROTO_TCP {
        return CT_TIMEOUT_OTHER_NS;
    }
    if state & CT_FLAG_CLOSING != 0 {
        CT_TIMEOUT_CLOSE_NS
    } else if state & CT_FLAG_REPLIED != 0 && forward_flags & TCP_ACK != 0 {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_SYN_NS
    }
}

pub(crate) fn new_entry(pkt: &Packet, len: u32, now: u64) -> CtEntry {
    let mut entry = CtEntry {
        expires_ns: 0,
        last_report_ns: now,
        packets: 1,
        bytes: u64::from(len),
        peer_identity: 0,
        rule_id: 0,
        backend_id: 0,
        rev_nat_index: 0,
        proxy_port: 0,
        verdict: PolicyAction::Allow as u8,
        flags_forward: pkt.tcp_flags,
        flags_reply: 0,
        state: if pkt.tcp_flags & TCP_RST != 0 {
            CT_FLAG_CLOSING
        } else {
            0
        },
        policy_revision: policy_revision(),
    };
    entry.expires_ns = now + timeout(pkt, entry.flags_forward, entry.state);
    entry
}

/// Updates a flow's state with one packet; true when the packet should be
/// reported (new TCP flags in its direction, the first reply, or the report
/// interval passed).
pub(crate) fn ct_update(
    entry: *mut CtEntry,
    pkt: &Packet,
    len: u32,
    reply: bool,
    now: u64,
) -> bool {
    // SAFETY: entry points into the map value; concurrent updates from other
    // CPUs may lose an increment, which only blurs counters.
    let e = unsafe { &mut *entry };
    let flags = pkt.tcp_flags;
    if !reply && flags & (TCP_SYN | TCP_ACK) == TCP_SYN && e.state & CT_FLAG_CLOSING != 0 {
        // The same tuple opens a new connection (port reuse after close):
        // start its state afresh instead of inheriting the close timeout.
        e.flags_forward = 0;
        e.flags_reply = 0;
        e.state &= CT_FLAG_FROM_PROXY;
    }
    let seen = if reply {
        e.flags_reply
    } else {
        e.flags_forward
    };
    let news = flags & !seen & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK);
    // The first answer of a flow is news too (UDP and ICMP have no flags).
    let first_reply = reply && e.state & CT_FLAG_REPLIED == 0;
    if reply {
        e.flags_reply |= flags;
        e.state |= CT_FLAG_REPLIED;
    } else {
        e.flags_forward |= flags;
    }
    if flags & TCP_RST != 0 || e.flags_forward & e.flags_reply & TCP_FIN != 0 {
        e.state |= CT_FLAG_CLOSING;
    }
    e.expires_ns = now + timeout(pkt, e.flags_forward, e.state);
    e.packets += 1;
    e.bytes += u64::from(len);
    let report = news != 0
        || first_reply
        || now.saturating_sub(e.last_report_ns) >= TRACE_REPORT_INTERVAL_NS;
    if report {
        e.last_report_ns = now;
    }
    report
}

/// Connection tracking; LRU so a full table evicts the oldest flows instead
/// of refusing new ones.
#[map(name = "MYELIN_CT")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262144, 0);
