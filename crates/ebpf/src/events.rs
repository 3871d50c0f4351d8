//! Events for the agent's observer (traces, drops, policy verdicts), the
//! rate limit of drop events, and the packet counters.

use crate::state::{Context, State};
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::TcContext;
use myelin_common::event::{EVENT_FLAG_REPLY, EVENT_FLAG_SERVICE};
use myelin_common::maps::{DROP_EVENT_BURST, DROP_EVENTS_PER_SECOND};
use myelin_common::{
    Direction, EventKind, ObservationPoint, PacketStats, StatsKey, TraceEvent, TrafficDirection,
    Verdict,
};

/// Unread event bytes from which a new event wakes the reader (see `emit`'s flags).
const EVENT_WAKEUP_BYTES: u64 = 256 * 1024;

/// What an event reports beyond the packet and its context.
pub(crate) struct Outcome {
    pub(crate) kind: EventKind,
    pub(crate) point: ObservationPoint,
    pub(crate) verdict: Verdict,
    pub(crate) drop_reason: u8,
    /// The policy side ([`TrafficDirection`] as u8) of a policy verdict or
    /// drop; 0: the event's own ([`traffic_direction`]).
    pub(crate) direction: u8,
    pub(crate) match_type: u8,
    pub(crate) proxy_port: u16,
    pub(crate) rule_id: u32,
}

impl Outcome {
    /// A trace; its direction is the connection's (see [`traffic_direction`]).
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

    /// A drop; its direction is the packet's (see [`traffic_direction`]).
    fn drop(point: ObservationPoint, reason: u8, rule_id: u32) -> Self {
        Outcome {
            kind: EventKind::Drop,
            verdict: Verdict::Dropped,
            drop_reason: reason,
            rule_id,
            ..Self::trace(point)
        }
    }
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
    if drop_report_allowed() {
        emit(ctx, st, &Outcome::drop(point, reason, rule_id));
    }
    TC_ACT_SHOT as i32
}

/// Drops a packet a policy verdict denies: reports the `verdict` and the
/// drop it explains (its reason, rule and policy side), as one drop for the
/// rate limit.
pub(crate) fn drop_with_verdict(ctx: &TcContext, st: &State, verdict: &Outcome) -> i32 {
    if drop_report_allowed() {
        emit(ctx, st, verdict);
        let mut out = Outcome::drop(verdict.point, verdict.drop_reason, verdict.rule_id);
        out.direction = verdict.direction;
        emit(ctx, st, &out);
    }
    TC_ACT_SHOT as i32
}

/// Time that earns one drop event.
const NS_PER_DROP_EVENT: u64 = 1_000_000_000 / DROP_EVENTS_PER_SECOND;

/// Takes a token from this CPU's drop-event bucket: true when the drop may
/// be reported. An empty bucket counts the drop in [`DROPS_SUPPRESSED`].
/// Every drop is reported while the rate stays under
/// [`DROP_EVENTS_PER_SECOND`] (after a burst of [`DROP_EVENT_BURST`]); the
/// bucket only keeps a flood of drops from filling the ring.
fn drop_report_allowed() -> bool {
    let Some(bucket) = DROP_BUCKET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // A zeroed bucket (the first drop on this CPU) earns a full one.
    let earned = now.saturating_sub(bucket.refilled_ns) / NS_PER_DROP_EVENT;
    if earned > 0 {
        if bucket.tokens + earned >= DROP_EVENT_BURST {
            bucket.tokens = DROP_EVENT_BURST;
            bucket.refilled_ns = now;
        } else {
            bucket.tokens += earned;
            bucket.refilled_ns += earned * NS_PER_DROP_EVENT;
        }
    }
    if bucket.tokens == 0 {
        if let Some(suppressed) = DROPS_SUPPRESSED.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *suppressed += 1 };
        }
        return false;
    }
    bucket.tokens -= 1;
    true
}

/// Hubble's traffic direction of an event, as Cilium's datapath and Hubble's
/// parser give it: a policy verdict's (and a policy drop's) is the policy
/// side's; a drop's is the packet's at the endpoint the program runs for
/// (egress leaving it, ingress entering it); a trace's is the connection's,
/// so a reply has its flow's (a reply entering a pod belongs to the pod's
/// egress connection).
fn traffic_direction(out: &Outcome, meta: &Context) -> u8 {
    if out.direction != 0 {
        out.direction
    } else if out.kind == EventKind::Trace && meta.flags & EVENT_FLAG_REPLY != 0 {
        if meta.direction == TrafficDirection::Egress as u8 {
            TrafficDirection::Ingress as u8
        } else {
            TrafficDirection::Egress as u8
        }
    } else {
        meta.direction
    }
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
    e.traffic_direction = traffic_direction(out, meta);
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

/// A CPU's drop-event token bucket ([`drop_report_allowed`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DropBucket {
    tokens: u64,
    /// When the tokens were last topped up (ktime).
    refilled_ns: u64,
}

/// Each CPU's drop-event bucket. Not pinned: a reload only refills it.
#[map(name = "MYELIN_DROP_BUCKET")]
pub(crate) static DROP_BUCKET: PerCpuArray<DropBucket> = PerCpuArray::with_max_entries(1, 0);

/// Drops whose event the rate limit suppressed (index 0), so the agent can
/// tell when it bites.
#[map(name = "MYELIN_DROPS_SUPPRESSED")]
pub(crate) static DROPS_SUPPRESSED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Scratch space for the event being built: it does not fit the 512-byte
/// stack next to the keys.
#[map(name = "MYELIN_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);
