//! Connection tracking: keys, entries, their state and timeouts, and the
//! flows ICMP errors quote.

use crate::parse::{IPPROTO_TCP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::policy::policy_revision;
use aya_ebpf::macros::map;
use aya_ebpf::maps::LruHashMap;
use myelin_common::maps::{
    CT_FLAG_CLOSING, CT_FLAG_FROM_PROXY, CT_FLAG_REPLIED, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS,
    CT_TIMEOUT_CLOSE_NS, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_SYN_NS, CT_TIMEOUT_TCP_NS,
    TRACE_REPORT_INTERVAL_NS,
};
use myelin_common::{CtEntry, CtKey, PolicyAction};

/// The tracked flow an ICMP error quotes, looked up in either scope, either
/// way round (`key` is scratch space, off the stack): `None` when no flow
/// is tracked, else the reverse-NAT index of the pod's own connection to a
/// service (0: none).
// Inlined into its one caller, whose frame it shares.
#[inline(always)]
pub(crate) fn quoted_flow(key: &mut CtKey, pkt: &Packet, now: u64) -> Option<u16> {
    *key = CtKey {
        saddr: pkt.inner_saddr,
        daddr: pkt.inner_daddr,
        sport: pkt.inner_sport,
        dport: pkt.inner_dport,
        protocol: pkt.inner_protocol,
        scope: CT_SCOPE_EGRESS,
        family: pkt.family,
        _pad: 0,
    };
    // The pod's own connection, as it sent it (after DNAT).
    let mut rev_nat_index = 0;
    let mut found = false;
    if let Some(entry) = live_entry(key, now) {
        found = true;
        // SAFETY: entry points into the map value.
        rev_nat_index = unsafe { (*entry).rev_nat_index };
    }
    key.scope = CT_SCOPE_INGRESS;
    if live_entry(key, now).is_some() || live_entry(&swap(key), now).is_some() {
        found = true;
    }
    key.scope = CT_SCOPE_EGRESS;
    if live_entry(&swap(key), now).is_some() {
        found = true;
    }
    found.then_some(rev_nat_index)
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
