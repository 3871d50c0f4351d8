//! Redirection to the L7 proxy: `bpf_sk_assign` to the connection's
//! socket or the proxy's listener, and the listener registry the
//! `proxy_lookup` program reads.

use crate::events::{Outcome, drop_packet, emit};
use crate::parse::Packet;
use crate::skb::mark;
use crate::state::State;
use aya_ebpf::bindings::{
    BPF_ANY, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, TC_ACT_OK, bpf_sock, bpf_sock_tuple,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
};
use aya_ebpf::helpers::{
    bpf_map_lookup_elem, bpf_map_update_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp,
};
use aya_ebpf::macros::map;
use aya_ebpf::maps::SockHash;
use aya_ebpf::programs::TcContext;
use myelin_common::maps::{FAMILY_IPV4, PROXY_MARK_EGRESS, PROXY_MARK_MASK, PROXY_MARK_TO_PROXY};
use myelin_common::{ObservationPoint, Verdict, drop_reason};

/// Hands the packet's connection to the proxy listening on `proxy_port`
/// (reference/l7-redirect.md): the connection's own socket if the proxy
/// already has one (request or established), else the listener.
pub(crate) fn to_proxy(ctx: &TcContext, st: &mut State, proxy_port: u16, report: bool) -> i32 {
    if mark(ctx) & PROXY_MARK_MASK == PROXY_MARK_EGRESS {
        // The proxy's own traffic is never redirected again.
        return TC_ACT_OK;
    }
    if let Err(reason) = assign_to_proxy(ctx, &st.pkt, proxy_port) {
        return drop_packet(ctx, st, ObservationPoint::ToProxy, reason, 0);
    }
    ctx.set_mark(PROXY_MARK_TO_PROXY);
    if report {
        let mut out = Outcome::trace(ObservationPoint::ToProxy);
        out.verdict = Verdict::Redirected;
        out.proxy_port = proxy_port;
        emit(ctx, st, &out);
    }
    TC_ACT_OK
}

/// Sizes of a `bpf_sock_tuple` for IPv4 and IPv6 lookups.
const TUPLE_V4_SIZE: u32 = 12;
const TUPLE_V6_SIZE: u32 = 36;

fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// The size of `pkt`'s socket lookup tuple. Kept apart from the tuple: a
/// size returned inside a struct goes through the stack, where the
/// verifier loses its value and refuses the lookup.
#[inline(always)]
fn tuple_size(pkt: &Packet) -> u32 {
    if pkt.family == FAMILY_IPV4 {
        TUPLE_V4_SIZE
    } else {
        TUPLE_V6_SIZE
    }
}

/// Fills `tuple` for a socket lookup; a not `exact` one looks up a listener
/// (any address).
// A separate BPF function: its arrays get their own frame.
#[inline(never)]
fn fill_tuple(pkt: &Packet, exact: bool, dport: u16, tuple: &mut bpf_sock_tuple) {
    let (saddr, daddr, sport) = if exact {
        (words(&pkt.saddr), words(&pkt.daddr), pkt.sport.to_be())
    } else {
        ([0; 4], [0; 4], 0)
    };
    if pkt.family == FAMILY_IPV4 {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: saddr[0],
            daddr: daddr[0],
            sport,
            dport: dport.to_be(),
        };
    } else {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr,
            daddr,
            sport,
            dport: dport.to_be(),
        };
    }
}

/// An all-zero socket tuple: the helper reads the whole union, and bytes an
/// IPv4 tuple leaves unset would otherwise be uninitialised to the verifier.
fn zeroed_tuple() -> bpf_sock_tuple {
    // SAFETY: bpf_sock_tuple is plain data; all-zero is a valid value.
    unsafe { core::mem::zeroed() }
}

pub(crate) fn assign_to_proxy(ctx: &TcContext, pkt: &Packet, proxy_port: u16) -> Result<(), u8> {
    let mut tuple = zeroed_tuple();
    fill_tuple(pkt, true, pkt.dport, &mut tuple);
    let size = tuple_size(pkt);
    let skb = ctx.skb.skb.cast();
    // SAFETY: the tuple lives on this stack frame for the call; the returned
    // socket is released on every path below.
    let mut sk =
        unsafe { bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        // SAFETY: a non-null socket from the lookup.
        let state = unsafe { (*sk).state };
        // A TIME_WAIT socket of a previous connection on this tuple (the
        // proxy closed first, the client reuses its port) is kept: it must
        // see the packet, as it would without the redirect. Handing a new
        // SYN to the listener instead bypasses the kernel's TIME_WAIT
        // handling, and the listener's request socket then collides with
        // the TIME_WAIT one in the established hash: the kernel frees it
        // without a SYN-ACK or a counter, and the client stalls (SYN
        // retransmissions) until TIME_WAIT ends (60 s). Given to the
        // TIME_WAIT socket, an acceptable SYN makes the kernel look up a
        // listener for the packet's own destination port (TCP_TW_SYN):
        // `proxy_lookup` answers that lookup with the proxy's listener, so
        // the TIME_WAIT socket is retired and the SYN accepted at once, as
        // a server listening on that port would. The other late packets of
        // the old connection (a retransmitted FIN, the last ACK) get
        // TIME_WAIT's answers instead of the listener's RST.
        if state == BPF_TCP_LISTEN {
            // SAFETY: releasing the socket we hold.
            unsafe { bpf_sk_release(sk.cast()) };
            sk = core::ptr::null_mut();
        }
    }
    if sk.is_null() {
        // The proxy's listener: any address, the proxy port.
        fill_tuple(pkt, false, proxy_port, &mut tuple);
        // SAFETY: as above.
        sk = unsafe { bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
        if sk.is_null() {
            return Err(drop_reason::SOCKET_LOOKUP_FAILED);
        }
        // SAFETY: a non-null socket from the lookup.
        if unsafe { (*sk).state } != BPF_TCP_LISTEN {
            // SAFETY: releasing the socket we hold.
            unsafe { bpf_sk_release(sk.cast()) };
            return Err(drop_reason::SOCKET_LOOKUP_FAILED);
        }
        register_listener(pkt.family, proxy_port, sk);
    }
    // SAFETY: sk is a referenced socket; assign takes its own reference.
    let assigned = unsafe { bpf_sk_assign(skb, sk.cast(), 0) };
    // SAFETY: releasing the socket we hold.
    unsafe { bpf_sk_release(sk.cast()) };
    if assigned != 0 {
        return Err(drop_reason::SOCKET_ASSIGN_FAILED);
    }
    Ok(())
}

/// A reply on one of the proxy's upstream connections (a flow with
/// `CT_FLAG_FROM_PROXY`): handed to the proxy's socket and delivered
/// locally, also when it is addressed to a pod of this node, whose address
/// the connection keeps (the listener's `original_source`): routed, it would
/// reach that pod, which knows nothing of the connection. Without a socket
/// (the proxy is gone) the packet is routed as any other.
// A separate BPF function: the socket tuple gets its own frame.
#[inline(never)]
pub(crate) fn reply_to_proxy(ctx: &TcContext, pkt: &Packet) -> i32 {
    let mut tuple = zeroed_tuple();
    fill_tuple(pkt, true, pkt.dport, &mut tuple);
    let size = tuple_size(pkt);
    let skb = ctx.skb.skb.cast();
    // SAFETY: the tuple lives on this stack frame for the call; the returned
    // socket is released below.
    let sk = unsafe { bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return TC_ACT_OK;
    }
    // SAFETY: a non-null socket from the lookup. A listener on the
    // destination port is not the connection's socket.
    let assigned = if unsafe { (*sk).state } == BPF_TCP_LISTEN {
        -1
    } else {
        // SAFETY: sk is a referenced socket; assign takes its own reference.
        unsafe { bpf_sk_assign(skb, sk.cast(), 0) }
    };
    // SAFETY: releasing the socket we hold.
    unsafe { bpf_sk_release(sk.cast()) };
    if assigned == 0 {
        ctx.set_mark(PROXY_MARK_TO_PROXY);
    }
    TC_ACT_OK
}

/// The [`PROXY_LISTENERS`] key of the proxy's listener for `family` on `port`.
pub(crate) fn listener_key(family: u8, port: u16) -> u32 {
    u32::from(family) << 16 | u32::from(port)
}

/// Puts the proxy's listener `sk` into [`PROXY_LISTENERS`] unless one is
/// there already (a restarted proxy's new listener replaces the old one,
/// which left the map when it was closed). Failure only costs the
/// TIME_WAIT fast path.
fn register_listener(family: u8, port: u16, sk: *mut bpf_sock) {
    let key = listener_key(family, port);
    let map = core::ptr::addr_of!(PROXY_LISTENERS).cast_mut().cast();
    // SAFETY: a lookup in our own socket map; a found socket is a reference
    // released at once.
    let found = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(&key).cast()) };
    if !found.is_null() {
        // SAFETY: releasing the reference the lookup took.
        unsafe { bpf_sk_release(found) };
        return;
    }
    // SAFETY: sk is a referenced listening socket; the map takes its own
    // reference.
    let _ = unsafe {
        bpf_map_update_elem(
            map,
            core::ptr::from_ref(&key).cast(),
            sk.cast_const().cast(),
            u64::from(BPF_ANY),
        )
    };
}

/// The proxy's listeners by [`listener_key`] (family, proxy port), registered
/// by `assign_to_proxy` the first time it hands a connection to one (a
/// closed listener leaves the map by itself). `proxy_lookup` needs them to
/// steer a SYN that reopens a tuple in TIME_WAIT.
///
/// [`listener_key`]: crate::redirect::listener_key
#[map(name = "MYELIN_PROXY_LISTENERS")]
pub(crate) static PROXY_LISTENERS: SockHash<u32> = SockHash::pinned(64, 0);
