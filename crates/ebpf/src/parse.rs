//! Packet parsing: Ethernet, IPv4/IPv6 (options, extension headers), the
//! L4 header and the packet an ICMP error quotes; anti-spoofing and the
//! link-local traffic that needs no policy.

use crate::zero::zero_words;
use aya_ebpf::programs::TcContext;
use myelin_common::maps::{FAMILY_IPV4, FAMILY_IPV6};
use myelin_common::{EndpointInfo, drop_reason};

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up (drop 156).
const MAX_IPV6_EXTENSIONS: usize = 6;

/// What the parser made of a packet. Addresses and ports as in the packet
/// (ports host order). Word-aligned, so that [`zero_words`] can clear it.
#[repr(C, align(8))]
pub(crate) struct Packet {
    pub(crate) family: u8,
    pub(crate) protocol: u8,
    /// Non-first fragment: no L4 header (its ports come from the first one, see
    /// [`crate::fragments`]).
    pub(crate) fragment: bool,
    /// First fragment of a fragmented datagram: it carries the L4 header.
    pub(crate) first_fragment: bool,
    /// Identification of a fragmented datagram (IPv4: 16 bits, IPv6: 32).
    pub(crate) fragment_id: u32,
    pub(crate) tcp_flags: u8,
    pub(crate) icmp_type: u8,
    pub(crate) icmp_code: u8,
    /// The packet is an ICMP error; `inner_*` hold the tuple it quotes.
    pub(crate) icmp_error: bool,
    pub(crate) l4_offset: usize,
    /// Offset of the L4 checksum, 0 when NAT cannot touch it.
    pub(crate) csum_offset: usize,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    /// ICMP errors: the quoted packet's tuple as the quoted sender sent it.
    pub(crate) inner_sport: u16,
    pub(crate) inner_dport: u16,
    pub(crate) inner_protocol: u8,
    pub(crate) inner_saddr: [u8; 16],
    pub(crate) inner_daddr: [u8; 16],
    /// Offsets of the quoted IP and L4 headers.
    pub(crate) inner_l3: usize,
    pub(crate) inner_l4: usize,
}

pub(crate) enum SourceCheck {
    Valid,
    LinkLocal,
    Spoofed,
}

/// Anti-spoofing: the source must be the endpoint's own address. IPv6
/// link-local (and the unspecified address of DAD) towards link-local or
/// multicast destinations is neighbour discovery, which stays on the link.
pub(crate) fn source_check(ep: &EndpointInfo, pkt: &Packet) -> SourceCheck {
    if pkt.family == FAMILY_IPV4 {
        if ep.ipv4 != [0; 4] && pkt.saddr[..4] == ep.ipv4 {
            return SourceCheck::Valid;
        }
        return SourceCheck::Spoofed;
    }
    if ep.ipv6 != [0; 16] && pkt.saddr == ep.ipv6 {
        return SourceCheck::Valid;
    }
    if is_link_local(pkt) {
        return SourceCheck::LinkLocal;
    }
    SourceCheck::Spoofed
}

/// IPv6 link-local or unspecified source towards a link-local or multicast
/// destination.
pub(crate) fn is_link_local(pkt: &Packet) -> bool {
    if pkt.family != FAMILY_IPV6 {
        return false;
    }
    let src_local = (pkt.saddr[0] == 0xfe && pkt.saddr[1] & 0xc0 == 0x80) || pkt.saddr == [0; 16];
    let dst_local = (pkt.daddr[0] == 0xfe && pkt.daddr[1] & 0xc0 == 0x80) || pkt.daddr[0] == 0xff;
    src_local && dst_local
}

/// Router/neighbour discovery and MLD keep the link working whatever the
/// policy says.
pub(crate) fn is_infrastructure_icmpv6(pkt: &Packet) -> bool {
    pkt.protocol == IPPROTO_ICMPV6 && matches!(pkt.icmp_type, 130..=137 | 143)
}

/// Parses Ethernet, IPv4 (options) or IPv6 (extension headers), and the L4
/// header. `Ok(None)` for frames that are not IP; `Err(drop reason)` for IP
/// packets too malformed to police.
pub(crate) fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<bool, u8> {
    let ethertype = match ctx.load::<u16>(12) {
        Ok(v) => u16::from_be(v),
        Err(_) => return Ok(false),
    };
    // SAFETY: a parsed packet of zeros is valid (integers, bools, arrays).
    unsafe { zero_words(pkt) };
    match ethertype {
        ETH_P_IP => {
            let header: [u8; 20] = ctx
                .load(ETH_HLEN)
                .map_err(|_| drop_reason::INVALID_PACKET)?;
            let header_len = usize::from(header[0] & 0x0f) * 4;
            if header[0] >> 4 != 4 || header_len < 20 {
                return Err(drop_reason::INVALID_PACKET);
            }
            pkt.family = FAMILY_IPV4;
            pkt.protocol = header[9];
            pkt.saddr[..4].copy_from_slice(&header[12..16]);
            pkt.daddr[..4].copy_from_slice(&header[16..20]);
            let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
            let more_fragments = header[6] & 0x20 != 0;
            pkt.fragment = fragment_offset != 0;
            pkt.first_fragment = fragment_offset == 0 && more_fragments;
            pkt.fragment_id = u32::from(u16::from_be_bytes([header[4], header[5]]));
            pkt.l4_offset = ETH_HLEN + header_len;
        }
        ETH_P_IPV6 => {
            let header: [u8; 8] = ctx
                .load(ETH_HLEN)
                .map_err(|_| drop_reason::INVALID_PACKET)?;
            if header[0] >> 4 != 6 {
                return Err(drop_reason::INVALID_PACKET);
            }
            pkt.family = FAMILY_IPV6;
            pkt.saddr = ctx
                .load(ETH_HLEN + 8)
                .map_err(|_| drop_reason::INVALID_PACKET)?;
            pkt.daddr = ctx
                .load(ETH_HLEN + 24)
                .map_err(|_| drop_reason::INVALID_PACKET)?;
            let walked = ipv6_extensions(ctx, header[6])?;
            pkt.protocol = walked.protocol;
            pkt.l4_offset = walked.offset;
            pkt.fragment = walked.fragment;
            pkt.first_fragment = walked.first_fragment;
            pkt.fragment_id = walked.fragment_id;
        }
        _ => return Ok(false),
    }
    if !pkt.fragment {
        parse_l4(ctx, pkt)?;
    }
    Ok(true)
}

/// What the IPv6 extension headers said.
struct Ipv6Walk {
    /// Upper-layer protocol.
    protocol: u8,
    /// Its offset.
    offset: usize,
    /// Non-first fragment.
    fragment: bool,
    /// First fragment of a fragmented datagram.
    first_fragment: bool,
    /// The fragment header's identification.
    fragment_id: u32,
}

/// Walks IPv6 extension headers to the upper-layer protocol.
fn ipv6_extensions(ctx: &TcContext, first: u8) -> Result<Ipv6Walk, u8> {
    const BAD: u8 = drop_reason::INVALID_IPV6_EXTENSION_HEADER;
    let mut next = first;
    let mut offset = ETH_HLEN + 40;
    let mut fragment = false;
    let mut first_fragment = false;
    let mut fragment_id = 0;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units.
            0 | 43 | 60 => {
                let h: [u8; 2] = ctx.load(offset).map_err(|_| BAD)?;
                next = h[0];
                offset += (usize::from(h[1]) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => {
                let h: [u8; 2] = ctx.load(offset).map_err(|_| BAD)?;
                next = h[0];
                offset += (usize::from(h[1]) + 2) * 4;
            }
            44 => {
                let h: [u8; 8] = ctx.load(offset).map_err(|_| BAD)?;
                next = h[0];
                let offset_and_flags = u16::from_be_bytes([h[2], h[3]]);
                fragment = offset_and_flags >> 3 != 0;
                first_fragment = !fragment && offset_and_flags & 1 != 0;
                fragment_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                offset += 8;
            }
            _ => break,
        }
        if fragment {
            break;
        }
    }
    if !fragment && matches!(next, 0 | 43 | 60 | 51 | 44) {
        return Err(BAD);
    }
    Ok(Ipv6Walk {
        protocol: next,
        offset,
        fragment,
        first_fragment,
        fragment_id,
    })
}

fn parse_l4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), u8> {
    const TRUNCATED: u8 = drop_reason::CT_TRUNCATED_OR_INVALID_HEADER;
    let l4 = pkt.l4_offset;
    match pkt.protocol {
        IPPROTO_TCP => {
            let h: [u8; 20] = ctx.load(l4).map_err(|_| TRUNCATED)?;
            pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.dport = u16::from_be_bytes([h[2], h[3]]);
            pkt.tcp_flags = h[13];
            pkt.csum_offset = l4 + 16;
        }
        IPPROTO_UDP => {
            let h: [u8; 8] = ctx.load(l4).map_err(|_| TRUNCATED)?;
            pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.dport = u16::from_be_bytes([h[2], h[3]]);
            pkt.csum_offset = l4 + 6;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h: [u8; 8] = ctx.load(l4).map_err(|_| TRUNCATED)?;
            pkt.icmp_type = h[0];
            pkt.icmp_code = h[1];
            let id = u16::from_be_bytes([h[4], h[5]]);
            let v4 = pkt.protocol == IPPROTO_ICMP;
            match (v4, h[0]) {
                // Echo request: the id plays the source port.
                (true, 8) | (false, 128) => pkt.sport = id,
                // Echo reply: the id is the requester's "port".
                (true, 0) | (false, 129) => pkt.dport = id,
                // Errors quoting a packet of some flow.
                (true, 3 | 11 | 12) | (false, 1..=4) => {
                    pkt.icmp_error = true;
                    parse_quoted(ctx, pkt, l4 + 8)?;
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads the tuple of the packet an ICMP error quotes; the addresses replace
/// nothing in `pkt` (the error's own addresses stay) but are checked against
/// conntrack by the caller through `inner_*` and the swapped outer addresses.
fn parse_quoted(ctx: &TcContext, pkt: &mut Packet, offset: usize) -> Result<(), u8> {
    const TRUNCATED: u8 = drop_reason::CT_TRUNCATED_OR_INVALID_HEADER;
    pkt.inner_l3 = offset;
    let l4 = if pkt.family == FAMILY_IPV4 {
        let h: [u8; 20] = ctx.load(offset).map_err(|_| TRUNCATED)?;
        pkt.inner_protocol = h[9];
        pkt.inner_saddr[..4].copy_from_slice(&h[12..16]);
        pkt.inner_daddr[..4].copy_from_slice(&h[16..20]);
        offset + usize::from(h[0] & 0x0f) * 4
    } else {
        let h: [u8; 8] = ctx.load(offset).map_err(|_| TRUNCATED)?;
        pkt.inner_protocol = h[6];
        pkt.inner_saddr = ctx.load(offset + 8).map_err(|_| TRUNCATED)?;
        pkt.inner_daddr = ctx.load(offset + 24).map_err(|_| TRUNCATED)?;
        offset + 40
    };
    pkt.inner_l4 = l4;
    // ICMP quotes at least 8 bytes of the original L4 header.
    let h: [u8; 8] = ctx.load(l4).map_err(|_| TRUNCATED)?;
    match pkt.inner_protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            pkt.inner_sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.inner_dport = u16::from_be_bytes([h[2], h[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            pkt.inner_sport = u16::from_be_bytes([h[4], h[5]]);
        }
        _ => {}
    }
    Ok(())
}
