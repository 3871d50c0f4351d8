//! Events for the agent's observer (traces, drops, policy verdicts), their
//! aggregation per tuple and reason, and the packet counters.

use crate::State;
use crate::conntrack::ct_key;
use crate::policy::Decision;
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::TcContext;
use myelin_common::event::EVENT_FLAG_SERVICE;
use myelin_common::maps::TRACE_REPORT_INTERVAL_NS;
use myelin_common::{
    CtKey, Direction, EndpointInfo, EventKind, L4Addr, ObservationPoint, PacketStats, StatsKey,
    TraceEvent, TrafficDirection, Verdict,
};

/// Unread event bytes from which a new event wakes the reader (see `emit`'s flags).
const EVENT_WAKEUP_BYTES: u64 = 256 * 1024;

/// What an event reports beyond the packet and its context.
pub(crate) struct Outcome {
    pub(crate) kind: EventKind,
    pub(crate) point: ObservationPoint,
    pub(crate) verdict: Verdict,
    pub(crate) drop_reason: u8,
    pub(crate) direction: u8,
    pub(crate) match_type: u8,
    pub(crate) proxy_port: u16,
    pub(crate) rule_id: u32,
}

impl Outcome {
    pub(crate) fn trace(point: ObservationPoint) -> Self {
        Outcome {
            kind: EventKind::Trace,
            point,
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            direction: 0,
            match_type: 0,
            proxy_port: 0,
            rule_id: 0,
        }
    }
}

/// Facts the events carry beyond the packet itself.
#[derive(Clone, Copy)]
pub(crate) struct Context {
    pub(crate) ifindex: u32,
    pub(crate) endpoint_id: u32,
    pub(crate) src_identity: u32,
    pub(crate) dst_identity: u32,
    pub(crate) flags: u8,
    pub(crate) service: L4Addr,
}

pub(crate) fn reset_meta(
    st: &mut State,
    ifindex: u32,
    endpoint: Option<&EndpointInfo>,
    sending: bool,
) {
    let (id, identity) = endpoint.map_or((0, 0), |e| (e.endpoint_id, e.identity));
    st.meta = Context {
        ifindex,
        endpoint_id: id,
        src_identity: if sending { identity } else { 0 },
        dst_identity: if sending { 0 } else { identity },
        flags: 0,
        service: L4Addr::default(),
    };
}

pub(crate) fn count(ifindex: u32, direction: Direction, len: u32) {
    let key = StatsKey {
        ifindex,
        direction: direction as u32,
    };
    match STATS.get_ptr_mut(&key) {
        Some(stats) => {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += u64::from(len);
            }
        }
        None => {
            let first = PacketStats {
                packets: 1,
                bytes: u64::from(len),
            };
            // A full map only loses the count, never the packet.
            let _ = STATS.insert(&key, &first, 0);
        }
    }
}

/// Reports and drops a packet whose IP header could not be parsed: the
/// event carries no addresses.
pub(crate) fn drop_unparsed(
    ctx: &TcContext,
    st: &mut State,
    point: ObservationPoint,
    reason: u8,
) -> i32 {
    st.pkt.family = 0;
    st.pkt.protocol = 0;
    st.pkt.saddr = [0; 16];
    st.pkt.daddr = [0; 16];
    st.pkt.sport = 0;
    st.pkt.dport = 0;
    st.pkt.tcp_flags = 0;
    st.pkt.icmp_type = 0;
    st.pkt.icmp_code = 0;
    drop_packet(ctx, st, point, reason, 0)
}

pub(crate) fn drop_packet(
    ctx: &TcContext,
    st: &State,
    point: ObservationPoint,
    reason: u8,
    rule_id: u32,
) -> i32 {
    if !recently_reported(st, reason) {
        emit_drop(ctx, st, point, reason, rule_id);
    }
    TC_ACT_SHOT as i32
}

fn emit_drop(ctx: &TcContext, st: &State, point: ObservationPoint, reason: u8, rule_id: u32) {
    let mut out = Outcome::trace(point);
    out.kind = EventKind::Drop;
    out.verdict = Verdict::Dropped;
    out.drop_reason = reason;
    out.rule_id = rule_id;
    emit(ctx, st, &out);
}

/// Drops a new flow the policy denies, reporting the policy verdict and the
/// drop (once per interval for the same tuple).
pub(crate) fn deny(
    ctx: &TcContext,
    st: &State,
    point: ObservationPoint,
    decision: &Decision,
    direction: TrafficDirection,
) -> i32 {
    let reason = decision.drop_reason();
    if !recently_reported(st, reason) {
        emit_verdict(ctx, st, point, decision, direction);
        emit_drop(ctx, st, point, reason, decision.rule_id);
    }
    TC_ACT_SHOT as i32
}

/// True when an event for this packet's tuple and `tag` was reported less
/// than the report interval ago; otherwise records now and returns false.
fn recently_reported(st: &State, tag: u8) -> bool {
    let key = ct_key(&st.pkt, tag, false);
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: read-only lookup, copied out.
    if let Some(last) = unsafe { REPORTS.get(&key) }.copied()
        && now.saturating_sub(last) < TRACE_REPORT_INTERVAL_NS
    {
        return true;
    }
    // A failed insert only means one more report.
    let _ = REPORTS.insert(&key, &now, 0);
    false
}

pub(crate) fn emit_verdict(
    ctx: &TcContext,
    st: &State,
    point: ObservationPoint,
    decision: &Decision,
    direction: TrafficDirection,
) {
    let out = Outcome {
        kind: EventKind::PolicyVerdict,
        point,
        verdict: decision.verdict(),
        drop_reason: decision.drop_reason(),
        direction: direction as u8,
        match_type: decision.match_type,
        proxy_port: decision.proxy_port,
        rule_id: decision.rule_id,
    };
    emit(ctx, st, &out);
}

/// Writes one event to the ring, counting it as lost when the ring is full.
pub(crate) fn emit(ctx: &TcContext, st: &State, out: &Outcome) {
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, no concurrent user on this CPU.
    let e = unsafe { &mut *event };
    let (pkt, meta) = (&st.pkt, &st.meta);
    // SAFETY: a helper without arguments.
    e.ktime_ns = unsafe { bpf_ktime_get_ns() };
    e.ifindex = meta.ifindex;
    e.len = ctx.len();
    e.endpoint_id = meta.endpoint_id;
    e.kind = out.kind as u8;
    e.observation_point = out.point as u8;
    e.drop_reason = out.drop_reason;
    e.ip_version = pkt.family;
    e.protocol = pkt.protocol;
    e.tcp_flags = pkt.tcp_flags;
    e.icmp_code = pkt.icmp_code;
    e.flags = meta.flags;
    e.source_port = pkt.sport;
    e.destination_port = pkt.dport;
    e.source = pkt.saddr;
    e.destination = pkt.daddr;
    e.source_identity = meta.src_identity;
    e.destination_identity = meta.dst_identity;
    e.rule_id = out.rule_id;
    if meta.flags & EVENT_FLAG_SERVICE != 0 {
        e.service_address = meta.service.addr;
        e.service_port = meta.service.port;
    } else {
        e.service_address = [0; 16];
        e.service_port = 0;
    }
    e.proxy_port = out.proxy_port;
    e.verdict = out.verdict as u8;
    e.traffic_direction = out.direction;
    e.match_type = out.match_type;
    e.icmp_type = pkt.icmp_type;
    e._pad = [0; 4];
    // Wake the agent only once events pile up: a wake-up is an irq_work self-IPI, a VM exit
    // in a virtual machine, which cost a third of the sending CPU at 12k new connections/s.
    // Below the mark the agent's periodic poll (`EventReader`) picks the events up.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENT_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<TraceEvent>(&*e, u64::from(flags)).is_err()
        && let Some(lost) = LOST.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *lost += 1 };
    }
}

/// Packet counters per endpoint and direction.
#[map(name = "MYELIN_STATS")]
pub(crate) static STATS: PerCpuHashMap<StatsKey, PacketStats> = PerCpuHashMap::pinned(32768, 0);

/// Events for the agent's observer.
#[map(name = "MYELIN_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::pinned(1 << 22, 0);

/// Events that found the ring full (index 0), so the agent can report loss.
#[map(name = "MYELIN_LOST")]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// When events without a conntrack entry to aggregate them (drops) were
/// last reported, per tuple and reason: a denied flood reports once per
/// interval instead of filling the ring.
/// Not pinned: losing it on reload only repeats a report.
#[map(name = "MYELIN_REPORTS")]
pub(crate) static REPORTS: LruHashMap<CtKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Scratch space for the event being built: it does not fit the 512-byte
/// stack next to the keys.
#[map(name = "MYELIN_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);
