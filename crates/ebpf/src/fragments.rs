//! Fragmented datagrams: only the first fragment carries the L4 header, so
//! it registers its ports under the datagram's identity and the later
//! fragments take them from there. With the ports, every fragment meets
//! conntrack, policy and service translation like an unfragmented packet
//! (a large UDP datagram to a ClusterIP arrives whole at its backend).

use crate::parse::Packet;
use aya_ebpf::macros::map;
use aya_ebpf::maps::LruHashMap;
use myelin_common::drop_reason;

/// A fragmented datagram as one hook sees it: addresses, protocol and
/// identification (RFC 791 and 8200 make the four unique while in flight).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FragmentKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    id: u32,
    protocol: u8,
    family: u8,
    pad: [u8; 2],
}

/// The ports of a fragmented datagram's first fragment (host order).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FragmentPorts {
    sport: u16,
    dport: u16,
}

fn key(pkt: &Packet) -> FragmentKey {
    FragmentKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.fragment_id,
        protocol: pkt.protocol,
        family: pkt.family,
        pad: [0; 2],
    }
}

/// Registers a first fragment's ports, or gives a later fragment the ports
/// of its first. A later fragment whose first was not seen (reordered, or
/// lost) cannot be told apart from one of any other flow: it is dropped.
pub(crate) fn track_fragments(pkt: &mut Packet) -> Result<(), u8> {
    if pkt.first_fragment {
        let ports = FragmentPorts {
            sport: pkt.sport,
            dport: pkt.dport,
        };
        // A full LRU map evicts the oldest datagram: its later fragments are
        // dropped, this one goes on.
        let _ = FRAGMENTS.insert(&key(pkt), &ports, 0);
    } else if pkt.fragment {
        // SAFETY: read-only lookup; the ports are copied out at once.
        match unsafe { FRAGMENTS.get(&key(pkt)) } {
            Some(ports) => {
                pkt.sport = ports.sport;
                pkt.dport = ports.dport;
            }
            None => return Err(drop_reason::FRAG_NOT_FOUND),
        }
    }
    Ok(())
}

/// The ports of fragmented datagrams in flight, registered by their first
/// fragment ([`crate::fragments`]). Not pinned: a datagram's fragments pass
/// within milliseconds, and a reload loses at most one in flight.
#[map(name = "MYELIN_FRAGMENTS")]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(8192, 0);
