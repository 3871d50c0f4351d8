//! Services: ClusterIP lookup, backend choice and DNAT, reverse NAT of
//! ICMP errors, and the refusal of clients of a service without backends.

use crate::conntrack::{CONNTRACK, ct_key, ct_update, live_entry, new_entry};
use crate::parse::{
    ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet, TCP_ACK, TCP_RST,
    TCP_SYN,
};
use crate::state::State;
use aya_ebpf::bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_NET;
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT};
use aya_ebpf::helpers::{
    bpf_csum_diff, bpf_get_prandom_u32, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail,
    bpf_skb_load_bytes, bpf_skb_store_bytes,
};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LruHashMap};
use aya_ebpf::programs::TcContext;
use myelin_common::event::EVENT_FLAG_SERVICE;
use myelin_common::maps::{CT_SCOPE_SERVICE, FAMILY_IPV4};
use myelin_common::{AffinityEntry, AffinityKey, L4Addr, ServiceEntry, ServiceKey, drop_reason};

/// Rewrites an ICMP error about a service connection so that it quotes the
/// packet the pod sent (to the frontend) and, when the backend itself
/// reports, comes from the frontend: the quoted destination, the quoted IPv4
/// header checksum, the outer source, and the ICMP checksum over all of it.
#[inline(never)]
pub(crate) fn rev_nat_error(ctx: &TcContext, st: &mut State, index: u16) -> Result<(), u8> {
    // SAFETY: read-only lookup, copied out.
    let Some(frontend) = (unsafe { REV_NAT.get(&u32::from(index)) }).copied() else {
        return Ok(());
    };
    let pkt = &mut st.pkt;
    let icmp_csum = pkt.l4_offset + 2;
    let backend = pkt.inner_daddr;
    let from_backend = pkt.saddr == backend;
    if pkt.family == FAMILY_IPV4 {
        let old = u32::from_ne_bytes([backend[0], backend[1], backend[2], backend[3]]);
        let new = u32::from_ne_bytes([
            frontend.addr[0],
            frontend.addr[1],
            frontend.addr[2],
            frontend.addr[3],
        ]);
        let inner_csum = pkt.inner_l3 + 10;
        let before: u16 = ctx.load(inner_csum).map_err(|_| drop_reason::WRITE_ERROR)?;
        ctx.l3_csum_replace(inner_csum, u64::from(old), u64::from(new), 4)
            .map_err(|_| drop_reason::CSUM_L3)?;
        let after: u16 = ctx.load(inner_csum).map_err(|_| drop_reason::WRITE_ERROR)?;
        ctx.store(pkt.inner_l3 + 16, &new, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
        // ICMPv4 sums the message only: the quoted address and checksum.
        ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4)
            .map_err(|_| drop_reason::CSUM_L4)?;
        ctx.l4_csum_replace(icmp_csum, u64::from(before), u64::from(after), 2)
            .map_err(|_| drop_reason::CSUM_L4)?;
        if from_backend {
            ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 4)
                .map_err(|_| drop_reason::CSUM_L3)?;
            ctx.store(ETH_HLEN + 12, &new, 0)
                .map_err(|_| drop_reason::WRITE_ERROR)?;
        }
    } else {
        let mut old = backend;
        let mut new = frontend.addr;
        // SAFETY: both buffers are 16 bytes on this stack frame.
        let diff =
            unsafe { bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0) };
        if diff < 0 {
            return Err(drop_reason::CSUM_L4);
        }
        ctx.store(pkt.inner_l3 + 24, &new, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff as u64, 0)
            .map_err(|_| drop_reason::CSUM_L4)?;
        if from_backend {
            // The outer source is in ICMPv6's pseudo-header.
            ctx.l4_csum_replace(icmp_csum, 0, diff as u64, u64::from(BPF_F_PSEUDO_HDR))
                .map_err(|_| drop_reason::CSUM_L4)?;
            ctx.store(ETH_HLEN + 8, &new, 0)
                .map_err(|_| drop_reason::WRITE_ERROR)?;
        }
    }
    if pkt.inner_dport != frontend.port
        && (pkt.inner_protocol == IPPROTO_TCP || pkt.inner_protocol == IPPROTO_UDP)
    {
        let from = u16::from_ne_bytes(pkt.inner_dport.to_be_bytes());
        let to = u16::from_ne_bytes(frontend.port.to_be_bytes());
        ctx.l4_csum_replace(icmp_csum, u64::from(from), u64::from(to), 2)
            .map_err(|_| drop_reason::CSUM_L4)?;
        ctx.store(pkt.inner_l4 + 2, &to, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
    }
    if from_backend {
        pkt.saddr = frontend.addr;
    }
    st.meta.flags |= EVENT_FLAG_SERVICE;
    st.meta.service = frontend;
    Ok(())
}

/// Looks up a service frontend for the packet's destination; on a hit picks
/// the connection's backend (recalled from conntrack, else the client's
/// session affinity backend when the service has ClientIP affinity, else at
/// random among the current ones), DNATs to it and records the frontend in
/// the event context. Returns the reverse-NAT index, 0 when the destination
/// is no service.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
pub(crate) fn service_translate(ctx: &TcContext, st: &mut State, now: u64) -> Result<u16, u8> {
    let pkt = &mut st.pkt;
    let mut key = ServiceKey {
        addr: pkt.daddr,
        port: pkt.dport,
        slot: 0,
        protocol: pkt.protocol,
        family: pkt.family,
        _pad: [0; 2],
    };
    // SAFETY: read-only lookup, copied out.
    let Some(frontend) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Ok(0);
    };
    st.meta.flags |= EVENT_FLAG_SERVICE;
    st.meta.service = L4Addr {
        addr: pkt.daddr,
        port: pkt.dport,
        family: pkt.family,
        _pad: 0,
    };
    if frontend.count == 0 {
        return Err(drop_reason::NO_SERVICE);
    }
    st.key = ct_key(pkt, CT_SCOPE_SERVICE, false);
    let mut backend = None;
    if let Some(entry) = live_entry(&st.key, now) {
        // SAFETY: entry points into the map value.
        let id = unsafe { (*entry).backend_id };
        // SAFETY: read-only lookup, copied out.
        if let Some(b) = unsafe { BACKENDS.get(&id) }.copied() {
            // The client's side of the connection's state; the server's
            // comes with its replies ([`service_reply`]).
            ct_update(entry, pkt, ctx.len(), false, now);
            backend = Some(b);
        }
    }
    let backend = match backend {
        Some(b) => b,
        None => {
            // New connection, or its backend was removed: choose again.
            let timeout_s = frontend.affinity_timeout_s();
            let affinity = AffinityKey {
                client: pkt.saddr,
                rev_nat_index: frontend.rev_nat_index,
                family: pkt.family,
                _pad: 0,
            };
            let recalled = if timeout_s != 0 {
                affinity_backend(&affinity, timeout_s, now)
            } else {
                None
            };
            let (backend_id, b) = match recalled {
                Some(chosen) => chosen,
                None => {
                    // SAFETY: a helper without arguments.
                    let random = unsafe { bpf_get_prandom_u32() };
                    key.slot = (random % u32::from(frontend.count)) as u16 + 1;
                    // SAFETY: read-only lookups, copied out.
                    let slot = unsafe { SERVICES.get(&key) }
                        .copied()
                        .ok_or(drop_reason::NO_SERVICE)?;
                    // SAFETY: as above.
                    let b = unsafe { BACKENDS.get(&slot.backend_id) }
                        .copied()
                        .ok_or(drop_reason::NO_SERVICE)?;
                    (slot.backend_id, b)
                }
            };
            if timeout_s != 0 {
                // Recorded, or refreshed: the timeout runs from the client's
                // last new connection (kube-proxy's and Cilium's rule).
                let entry = AffinityEntry {
                    last_used_ns: now,
                    backend_id,
                    _pad: 0,
                };
                // A failed write only costs the affinity of the next connection.
                let _ = AFFINITY.insert(&affinity, &entry, 0);
            }
            // Tracked like the connection itself (handshake, established,
            // closing), so it expires with it.
            st.entry = new_entry(pkt, ctx.len(), now);
            st.entry.backend_id = backend_id;
            st.entry.rev_nat_index = frontend.rev_nat_index;
            CONNTRACK
                .insert(&st.key, &st.entry, 0)
                .map_err(|_| drop_reason::CT_MAP_INSERTION_FAILED)?;
            b
        }
    };
    rewrite(ctx, pkt, false, &backend)?;
    Ok(frontend.rev_nat_index)
}

/// The backend a client of a frontend with ClientIP affinity was last sent
/// to, unless the client has opened no connection to the frontend for
/// `timeout_s` (the entry is stale) or the backend is gone. The agent
/// deletes the entries of a backend it removes from a service; a backend id
/// missing from [`BACKENDS`] covers the moment in between.
// Inlined: another frame would add to the call chain's 512 bytes of stack.
#[inline(always)]
fn affinity_backend(key: &AffinityKey, timeout_s: u32, now: u64) -> Option<(u32, L4Addr)> {
    // SAFETY: read-only lookup, copied out.
    let entry = unsafe { AFFINITY.get(key) }.copied()?;
    if now.saturating_sub(entry.last_used_ns) > u64::from(timeout_s) * 1_000_000_000 {
        return None;
    }
    // SAFETY: as above.
    let backend = unsafe { BACKENDS.get(&entry.backend_id) }.copied()?;
    Some((entry.backend_id, backend))
}

/// A reply of a service connection, after reverse NAT (its source is the
/// frontend): the connection's service entry sees only the client's
/// packets, so the server's side of the state (its answer, FIN or RST)
/// is added here. A closed connection's entry then expires with the close
/// timeout, not the established one. Called for the replies conntrack
/// reports, which include every one that changes the state.
pub(crate) fn service_reply(st: &mut State, len: u32, now: u64) {
    st.key = ct_key(&st.pkt, CT_SCOPE_SERVICE, true);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&st.key) {
        ct_update(entry, &st.pkt, len, true, now);
    }
}

/// True when the packet is addressed to a cluster IP (an address some
/// frontend uses) at a port and protocol no frontend has: nothing serves
/// it, so it must not open a flow (or a conntrack entry) that the stack
/// would then route elsewhere.
// A separate BPF function: the key gets its own frame.
#[inline(never)]
pub(crate) fn unserved_cluster_ip(pkt: &Packet) -> bool {
    let key = ServiceKey::cluster_ip(pkt.daddr, pkt.family);
    // SAFETY: read-only lookup, nothing kept.
    unsafe { SERVICES.get(&key) }.is_some()
}

/// Rewrites the source (`source`) or destination address and port, fixing
/// the IPv4 header checksum and the L4 checksum (pseudo-header included).
/// A later fragment has no L4 header: only its addresses change (the first
/// fragment's L4 checksum covers the whole datagram and was fixed with it).
pub(crate) fn rewrite(
    ctx: &TcContext,
    pkt: &mut Packet,
    source: bool,
    target: &L4Addr,
) -> Result<(), u8> {
    let addr = &target.addr;
    let port = target.port;
    let old_port = if source { pkt.sport } else { pkt.dport };
    // A UDP checksum of 0 means "none" over IPv4: keep it so.
    let mangled = if pkt.protocol == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    let has_l4 = !pkt.fragment;
    if pkt.family == FAMILY_IPV4 {
        let old = if source { pkt.saddr } else { pkt.daddr };
        let from = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]);
        let to = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let offset = ETH_HLEN + if source { 12 } else { 16 };
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(from), u64::from(to), 4)
            .map_err(|_| drop_reason::CSUM_L3)?;
        if has_l4 {
            ctx.l4_csum_replace(pkt.csum_offset, u64::from(from), u64::from(to), pseudo | 4)
                .map_err(|_| drop_reason::CSUM_L4)?;
        }
        ctx.store(offset, &to, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
    } else {
        let mut old = if source { pkt.saddr } else { pkt.daddr };
        let mut new = *addr;
        // SAFETY: both buffers are 16 bytes on this stack frame.
        let diff =
            unsafe { bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0) };
        if diff < 0 {
            return Err(drop_reason::CSUM_L4);
        }
        if has_l4 {
            ctx.l4_csum_replace(pkt.csum_offset, 0, diff as u64, pseudo)
                .map_err(|_| drop_reason::CSUM_L4)?;
        }
        let offset = ETH_HLEN + if source { 8 } else { 24 };
        ctx.store(offset, &new, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
    }
    if has_l4 && old_port != port {
        let from = u16::from_ne_bytes(old_port.to_be_bytes());
        let to = u16::from_ne_bytes(port.to_be_bytes());
        ctx.l4_csum_replace(pkt.csum_offset, u64::from(from), u64::from(to), mangled | 2)
            .map_err(|_| drop_reason::CSUM_L4)?;
        let offset = pkt.l4_offset + if source { 0 } else { 2 };
        ctx.store(offset, &to, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
    }
    if source {
        pkt.saddr = *addr;
        pkt.sport = port;
    } else {
        pkt.daddr = *addr;
        pkt.dport = port;
    }
    Ok(())
}

/// Turns a TCP SYN into the RST|ACK its destination would have answered
/// and sends it back into the pod through the same veth. Only plain headers
/// (IPv4 without options, IPv6 without extensions) and a SYN without ACK are
/// answered; anything else stays a silent drop (`None`).
// A separate BPF function: the header buffers need their own frame.
#[inline(never)]
pub(crate) fn reset_client(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> Option<i32> {
    if pkt.protocol != IPPROTO_TCP || pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return None;
    }
    let v4 = pkt.family == FAMILY_IPV4;
    let ip_len = if v4 { 20 } else { 40 };
    if pkt.l4_offset != ETH_HLEN + ip_len {
        return None;
    }
    let macs: [u8; 12] = ctx.load(0).ok()?;
    let seq: [u8; 4] = ctx.load(pkt.l4_offset + 4).ok()?;
    let ack = u32::from_be_bytes(seq).wrapping_add(1).to_be_bytes();
    let total = (ETH_HLEN + ip_len + 20) as u32;
    // SAFETY: the context is this program's skb; the helper checks the length.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), total, 0) } != 0 {
        return None;
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).ok()?;
    // Pseudo-header (for the checksum) followed by the TCP header.
    let mut buf = [0u8; 60];
    let tcp_at = if v4 { 12 } else { 40 };
    if v4 {
        buf[..4].copy_from_slice(&pkt.daddr[..4]);
        buf[4..8].copy_from_slice(&pkt.saddr[..4]);
        buf[9] = IPPROTO_TCP;
        buf[11] = 20;
    } else {
        buf[..16].copy_from_slice(&pkt.daddr);
        buf[16..32].copy_from_slice(&pkt.saddr);
        buf[35] = 20;
        buf[39] = IPPROTO_TCP;
    }
    buf[tcp_at..tcp_at + 2].copy_from_slice(&pkt.dport.to_be_bytes());
    buf[tcp_at + 2..tcp_at + 4].copy_from_slice(&pkt.sport.to_be_bytes());
    buf[tcp_at + 8..tcp_at + 12].copy_from_slice(&ack);
    buf[tcp_at + 12] = 5 << 4;
    buf[tcp_at + 13] = TCP_RST | TCP_ACK;
    let sum_len = (tcp_at + 20) as u32;
    let csum = checksum_of(&mut buf, sum_len);
    buf[tcp_at + 16..tcp_at + 18].copy_from_slice(&csum.to_ne_bytes());
    let mut ip = [0u8; 40];
    if v4 {
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&pkt.daddr[..4]);
        ip[16..20].copy_from_slice(&pkt.saddr[..4]);
        let csum = checksum_of(&mut ip, 20);
        ip[10..12].copy_from_slice(&csum.to_ne_bytes());
        let header: [u8; 20] = [
            ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9], ip[10], ip[11],
            ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19],
        ];
        ctx.store(ETH_HLEN, &header, 0).ok()?;
    } else {
        ip[0] = 0x60;
        ip[5] = 20;
        ip[6] = IPPROTO_TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&pkt.daddr);
        ip[24..40].copy_from_slice(&pkt.saddr);
        ctx.store(ETH_HLEN, &ip, 0).ok()?;
    }
    let mut tcp = [0u8; 20];
    tcp.copy_from_slice(&buf[tcp_at..tcp_at + 20]);
    ctx.store(ETH_HLEN + ip_len, &tcp, 0).ok()?;
    // Out of this veth again: towards the pod.
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect(ifindex, 0) };
    Some(TC_ACT_REDIRECT as i32)
}

/// Turns a UDP datagram into the ICMP port unreachable its destination
/// would have answered (quoting the IP header and the UDP header, as RFC 792
/// and RFC 4443 ask) and sends it back into the pod. Plain headers only
/// (IPv4 without options, IPv6 without extensions); `None` otherwise.
// A separate BPF function: the header buffers need their own frame.
#[inline(never)]
pub(crate) fn unreachable_client(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> Option<i32> {
    let v4 = pkt.family == FAMILY_IPV4;
    let ip_len = if v4 { 20 } else { 40 };
    if pkt.protocol != IPPROTO_UDP || pkt.l4_offset != ETH_HLEN + ip_len {
        return None;
    }
    let macs: [u8; 12] = ctx.load(0).ok()?;
    // Pseudo-header (IPv6 only), ICMP header, quoted IP and UDP headers: the
    // one buffer of this frame, checksummed and stored in place.
    let mut buf = [0u8; 96];
    let icmp_at = if v4 { 0 } else { 40 };
    let quoted_at = icmp_at + 8;
    let quoted_len = ip_len + 8;
    load_slice(ctx, ETH_HLEN, &mut buf[quoted_at..quoted_at + quoted_len])?;
    if v4 {
        buf[icmp_at] = 3; // destination unreachable
        buf[icmp_at + 1] = 3; // port unreachable
    } else {
        buf[..16].copy_from_slice(&pkt.daddr);
        buf[16..32].copy_from_slice(&pkt.saddr);
        buf[35] = (8 + quoted_len) as u8;
        buf[39] = IPPROTO_ICMPV6;
        buf[icmp_at] = 1; // destination unreachable
        buf[icmp_at + 1] = 4; // port unreachable
    }
    let sum_len = (quoted_at + quoted_len) as u32;
    let csum = checksum_of(&mut buf, sum_len);
    buf[icmp_at + 2..icmp_at + 4].copy_from_slice(&csum.to_ne_bytes());

    let skb = ctx.skb.skb.cast();
    // Keep the headers only, then make room for the new IP and ICMP headers
    // right after the old IP header (which becomes the quoted one's place).
    // SAFETY: the context is this program's skb; the helpers check sizes.
    unsafe {
        if bpf_skb_change_tail(skb, (ETH_HLEN + quoted_len) as u32, 0) != 0 {
            return None;
        }
        if bpf_skb_adjust_room(skb, quoted_len as i32, BPF_ADJ_ROOM_NET, 0) != 0 {
            return None;
        }
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).ok()?;
    let total = 8 + quoted_len;
    if v4 {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + total) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_ICMP;
        ip[12..16].copy_from_slice(&pkt.daddr[..4]);
        ip[16..20].copy_from_slice(&pkt.saddr[..4]);
        let csum = checksum_of(&mut ip, 20);
        ip[10..12].copy_from_slice(&csum.to_ne_bytes());
        ctx.store(ETH_HLEN, &ip, 0).ok()?;
    } else {
        let mut head = [0u8; 8];
        head[0] = 0x60;
        head[4..6].copy_from_slice(&(total as u16).to_be_bytes());
        head[6] = IPPROTO_ICMPV6;
        head[7] = 64;
        ctx.store(ETH_HLEN, &head, 0).ok()?;
        // The addresses are the pseudo-header's.
        store_slice(ctx, ETH_HLEN + 8, &buf[..32])?;
    }
    store_slice(ctx, ETH_HLEN + ip_len, &buf[icmp_at..icmp_at + total])?;
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect(ifindex, 0) };
    Some(TC_ACT_REDIRECT as i32)
}

/// Reads exactly `out.len()` packet bytes at `offset` (aya's `load_bytes`
/// may read fewer, which the verifier refuses as a possibly empty read).
fn load_slice(ctx: &TcContext, offset: usize, out: &mut [u8]) -> Option<()> {
    // SAFETY: the slice is valid for its length; the helper bounds-checks
    // the packet side.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            out.as_mut_ptr().cast(),
            out.len() as u32,
        )
    };
    (rc == 0).then_some(())
}

/// Writes `bytes` into the packet at `offset`.
fn store_slice(ctx: &TcContext, offset: usize, bytes: &[u8]) -> Option<()> {
    // SAFETY: the slice is valid for its length; the helper bounds-checks
    // the packet side.
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            bytes.as_ptr().cast(),
            bytes.len() as u32,
            0,
        )
    };
    (rc == 0).then_some(())
}

/// The Internet checksum of the first `len` bytes of `buf` (a buffer on this
/// program's stack), as it goes into a header.
#[inline(always)]
fn checksum_of(buf: &mut [u8], len: u32) -> u16 {
    // SAFETY: the buffer is on the caller's stack frame; every caller passes
    // a `len` within it.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr().cast(), len, 0) };
    !fold_csum(u64::from(sum as u32))
}

/// Folds a 32-bit one's-complement sum to 16 bits (network order in memory).
fn fold_csum(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Frontends (slot 0) and their backend slots.
#[map(name = "MYELIN_SERVICES")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(65536, 0);

/// Backend id → address.
#[map(name = "MYELIN_BACKENDS")]
pub(crate) static BACKENDS: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// Reverse-NAT index → the frontend replies must appear to come from.
#[map(name = "MYELIN_REV_NAT")]
pub(crate) static REV_NAT: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// The backend of each client of a frontend with ClientIP session affinity,
/// and when the client last opened a connection to it. LRU: a full table
/// forgets its least recent clients (who then get a new backend) instead of
/// refusing new ones. Pinned: an agent restart keeps the affinities.
#[map(name = "MYELIN_AFFINITY")]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::pinned(65536, 0);
