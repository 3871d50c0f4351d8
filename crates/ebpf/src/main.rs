//! Myelin's kernel programs: TC classifiers on the host side of every pod's
//! veth. `from_container` sees packets leaving the pod (the veth's ingress),
//! `to_container` packets entering it (the veth's egress).
//!
//! At this stage they count every packet per endpoint and direction and
//! report it to the event ring; the datapath issue adds conntrack, service
//! load balancing and policy on the same hooks.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use myelin_common::{
    Direction, EndpointInfo, EventKind, ObservationPoint, PacketStats, StatsKey, TraceEvent,
};

/// Endpoints the agent manages, by host-side veth ifindex.
#[map(name = "MYELIN_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(16384, 0);

/// Packet counters per endpoint and direction.
#[map(name = "MYELIN_STATS")]
static STATS: PerCpuHashMap<StatsKey, PacketStats> = PerCpuHashMap::pinned(32768, 0);

/// Events for the agent's observer.
#[map(name = "MYELIN_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(1 << 22, 0);

/// Events that found the ring full (index 0), so the agent can report loss.
#[map(name = "MYELIN_LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::FromContainer, ObservationPoint::ToStack);
    TC_ACT_OK
}

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::ToContainer, ObservationPoint::ToEndpoint);
    TC_ACT_OK
}

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

fn observe(ctx: &TcContext, direction: Direction, point: ObservationPoint) {
    let ifindex = ifindex(ctx);
    let len = ctx.len();
    count(ifindex, direction, len);

    let mut event = TraceEvent {
        // SAFETY: a helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        len,
        endpoint_id: 0,
        kind: EventKind::Trace as u8,
        observation_point: point as u8,
        drop_reason: 0,
        ip_version: 0,
        protocol: 0,
        tcp_flags: 0,
        icmp_code: 0,
        _pad: 0,
        source_port: 0,
        destination_port: 0,
        source: [0; 16],
        destination: [0; 16],
    };
    // SAFETY: read-only lookup of a plain value.
    if let Some(ep) = unsafe { ENDPOINTS.get(&ifindex) } {
        event.endpoint_id = ep.endpoint_id;
    }
    if parse(ctx, &mut event).is_err() {
        // Not IP, or truncated: still reported, with what could be read.
        event.ip_version = 0;
    }
    if EVENTS.output::<TraceEvent>(&event, 0).is_err() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
    }
}

fn count(ifindex: u32, direction: Direction, len: u32) {
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

/// Fills addresses, protocol, ports and flags from the packet headers.
fn parse(ctx: &TcContext, event: &mut TraceEvent) -> Result<(), i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    let (protocol, l4) = match ethertype {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(ETH_HLEN)?;
            let header_len = usize::from(version_ihl & 0x0f) * 4;
            if header_len < 20 {
                return Err(-1);
            }
            event.ip_version = 4;
            let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
            let source: [u8; 4] = ctx.load(ETH_HLEN + 12)?;
            let destination: [u8; 4] = ctx.load(ETH_HLEN + 16)?;
            event.source[..4].copy_from_slice(&source);
            event.destination[..4].copy_from_slice(&destination);
            // Later fragments carry no L4 header.
            let fragment: u16 = u16::from_be(ctx.load(ETH_HLEN + 6)?);
            if fragment & 0x1fff != 0 {
                event.protocol = protocol;
                return Ok(());
            }
            (protocol, ETH_HLEN + header_len)
        }
        ETH_P_IPV6 => {
            event.ip_version = 6;
            let next_header: u8 = ctx.load(ETH_HLEN + 6)?;
            event.source = ctx.load(ETH_HLEN + 8)?;
            event.destination = ctx.load(ETH_HLEN + 24)?;
            (next_header, ETH_HLEN + 40)
        }
        _ => return Ok(()),
    };
    event.protocol = protocol;
    match protocol {
        IPPROTO_TCP => {
            event.source_port = u16::from_be(ctx.load(l4)?);
            event.destination_port = u16::from_be(ctx.load(l4 + 2)?);
            event.tcp_flags = ctx.load(l4 + 13)?;
        }
        IPPROTO_UDP => {
            event.source_port = u16::from_be(ctx.load(l4)?);
            event.destination_port = u16::from_be(ctx.load(l4 + 2)?);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            event.tcp_flags = ctx.load(l4)?;
            event.icmp_code = ctx.load(l4 + 1)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel requires a GPL-compatible license for the helpers these programs use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
