//! The overlay between nodes (tunnel mode): packets `from_container`
//! forwards to a pod of another node are encapsulated by the node's VXLAN
//! device (collect-metadata mode) with the sender's security identity as the
//! VNI, as Cilium does (`encapsulate`; what the node's stack routes into
//! the device gets its key in `to_overlay`); on the receiving node `from_overlay`
//! (the VXLAN device's ingress) takes that identity from the VNI and hands
//! it, in the packet's mark, to the destination pod's `to_container`, which
//! decides its ingress policy with it.

use crate::events::drop_packet;
use crate::host_routing::host_route;
use crate::node_ingress::{PASS_ON, REDIRECT, remote_redirect};
use crate::parse::parse;
use crate::policy::{IDENTITY_WORLD, identity_of};
use crate::redirect::to_proxy;
use crate::skb::ifindex;
use crate::state::{State, reset_meta};
use crate::zero::zero_words;
use aya_ebpf::bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_OK, bpf_tunnel_key};
use aya_ebpf::helpers::{
    bpf_check_mtu, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_type, bpf_skb_get_tunnel_key,
    bpf_skb_set_tunnel_key,
};
use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie};
use aya_ebpf::programs::TcContext;
use myelin_common::maps::{FAMILY_IPV4, MARK_OVERLAY_IDENTITY, ROUTING_TUNNEL};
use myelin_common::{DatapathConfig, IpcacheKey, ObservationPoint, TunnelEndpoint, drop_reason};

/// The node-wide settings (index 0): routing mode and the overlay device.
#[map(name = "MYELIN_CONFIG")]
pub(crate) static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Remote nodes' pod CIDRs (keyed as the ipcache) → their underlay address.
#[map(name = "MYELIN_TUNNEL")]
pub(crate) static TUNNEL_ENDPOINTS: LpmTrie<IpcacheKey, TunnelEndpoint> =
    LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);

/// LPM tries must be created without preallocation.
const BPF_F_NO_PREALLOC: u32 = 1;

/// `skb->pkt_type` of a packet addressed to this host.
const PACKET_HOST: u32 = 0;

/// The size of the tunnel key the helpers read and write.
const TUNNEL_KEY_SIZE: u32 = core::mem::size_of::<bpf_tunnel_key>() as u32;

/// A tunnel key, word-aligned so that [`zero_words`] clears it.
#[repr(C, align(8))]
struct TunnelKey(bpf_tunnel_key);

impl TunnelKey {
    /// Clears `slot` and returns the key in it, to fill in or to read into
    /// (cleared in place: a key returned by value came back as a `memset`).
    // Inlined: the slot is in the caller's frame.
    #[inline(always)]
    fn zeroed_in(slot: &mut core::mem::MaybeUninit<TunnelKey>) -> &mut bpf_tunnel_key {
        // SAFETY: the slot's own memory; all zero is a valid value of every
        // field of the plain-old-data key.
        unsafe {
            zero_words(slot.as_mut_ptr());
            &mut slot.assume_init_mut().0
        }
    }
}

/// Hop limit of the outer (underlay) header.
const UNDERLAY_TTL: u8 = 64;

/// In tunnel mode, sends a packet whose destination lies in a remote node's
/// pod CIDR to that node through the overlay: the tunnel key (the node's
/// underlay address, VNI = the sending pod's identity) is attached and the
/// packet redirected to the VXLAN device's egress, which encapsulates it.
/// The inner frame keeps the pod's Ethernet header; the receiving
/// `from_overlay` marks it as addressed to its host, so its MACs do not
/// matter there.
///
/// `TC_ACT_OK` — the stack routes the packet — in native mode, without an
/// overlay device, when no remote node's CIDR covers the destination (the
/// map holds only other nodes' CIDRs, never this node's), or when the
/// packet is bigger than the device's MTU: the stack's route to the remote
/// CIDR through the device answers it (ICMP fragmentation needed / packet
/// too big) or fragments it, and `to_overlay` encapsulates what fits.
// A separate BPF function: its locals get their own frame.
#[inline(never)]
pub(crate) fn encapsulate(ctx: &TcContext, st: &mut State) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    if config.routing_mode != ROUTING_TUNNEL || config.overlay_ifindex == 0 {
        return TC_ACT_OK;
    }
    let ifindex = config.overlay_ifindex;
    let Some(remote) = tunnel_endpoint(st.pkt.family, &st.pkt.daddr) else {
        return TC_ACT_OK;
    };
    let mut mtu = 0u32;
    // SAFETY: the context's skb, an out pointer on the stack.
    let fits = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), ifindex, &mut mtu, 0, 0) } == 0;
    if !fits {
        return TC_ACT_OK;
    }
    if !set_tunnel(ctx, &remote, st.meta.src_identity) {
        return drop_packet(
            ctx,
            st,
            ObservationPoint::ToStack,
            drop_reason::WRITE_ERROR,
            0,
        );
    }
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Where `from_container` reports a packet it forwards: to-overlay when
/// [`encapsulate`] will send it to another node (tunnel mode, a device, a
/// remote node's CIDR), else to-stack.
#[inline(never)]
pub(crate) fn forward_point(st: &State) -> ObservationPoint {
    let tunnel = CONFIG
        .get(0)
        .is_some_and(|c| c.routing_mode == ROUTING_TUNNEL && c.overlay_ifindex != 0);
    if tunnel && tunnel_endpoint(st.pkt.family, &st.pkt.daddr).is_some() {
        ObservationPoint::ToOverlay
    } else {
        ObservationPoint::ToStack
    }
}

/// The remote node whose pod CIDR covers `addr`, if any.
fn tunnel_endpoint(family: u8, addr: &[u8; 16]) -> Option<TunnelEndpoint> {
    let bits = if family == FAMILY_IPV4 { 32 } else { 128 };
    let key = Key::new(
        8 + bits,
        IpcacheKey {
            family,
            addr: *addr,
            _pad: [0; 3],
        },
    );
    TUNNEL_ENDPOINTS.get(&key).copied()
}

/// Attaches the tunnel key (to `remote`, VNI `identity`); false when the
/// kernel refuses it.
#[inline(never)]
fn set_tunnel(ctx: &TcContext, remote: &TunnelEndpoint, identity: u32) -> bool {
    let mut slot = core::mem::MaybeUninit::uninit();
    let tunnel = TunnelKey::zeroed_in(&mut slot);
    tunnel.tunnel_id = identity;
    tunnel.tunnel_ttl = UNDERLAY_TTL;
    let a = remote.addr;
    let flags = if remote.family == FAMILY_IPV4 {
        // The helper takes the IPv4 address in host order.
        tunnel.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        0
    } else {
        // ... and the IPv6 address as it is on the wire.
        tunnel.__bindgen_anon_1.remote_ipv6 = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        u64::from(BPF_F_TUNINFO_IPV6)
    };
    // SAFETY: the context's skb and a tunnel key of the size given.
    unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, tunnel, TUNNEL_KEY_SIZE, flags) == 0 }
}

/// Reads the packet's tunnel key (either underlay family) into `tunnel`;
/// false when it has none.
fn tunnel_key(ctx: &TcContext, tunnel: &mut bpf_tunnel_key) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the context's skb and a tunnel key of the size given. The
    // helper refuses a key of the other family: IPv4 underlay first.
    unsafe {
        bpf_skb_get_tunnel_key(skb, tunnel, TUNNEL_KEY_SIZE, 0) == 0
            || bpf_skb_get_tunnel_key(skb, tunnel, TUNNEL_KEY_SIZE, u64::from(BPF_F_TUNINFO_IPV6))
                == 0
    }
}

/// On the VXLAN device's egress: packets the node's stack routes into the
/// overlay (too big for `encapsulate`, then answered or fragmented by the
/// stack; or sent by the node itself) get their tunnel key here: the
/// remote node owning the destination, VNI = the source's identity (a
/// local pod's, else the ipcache's, else world). Packets `encapsulate`
/// redirected already have theirs. Without a remote node for the
/// destination the device drops the packet (it has nowhere to send it).
pub(crate) fn to_overlay_inner(ctx: &TcContext, st: &mut State) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    if tunnel_key(ctx, TunnelKey::zeroed_in(&mut slot)) {
        return TC_ACT_OK;
    }
    // Not IP, or not parsable: the device has nowhere to send it.
    if !matches!(parse(ctx, &mut st.pkt), Ok(true)) {
        return TC_ACT_OK;
    }
    let pkt = &st.pkt;
    let Some(remote) = tunnel_endpoint(pkt.family, &pkt.daddr) else {
        return TC_ACT_OK;
    };
    let _ = set_tunnel(ctx, &remote, identity_of(pkt.family, &pkt.saddr));
    TC_ACT_OK
}

/// The security identity a VNI stands for. A VNI that is no identity
/// Myelin allocates (0, or above 16 bits) is `world` (2): the sender is
/// not known, as Cilium treats a packet without a known source identity.
fn vni_identity(vni: u32) -> u32 {
    if vni == 0 || vni > 0xffff {
        IDENTITY_WORLD
    } else {
        vni
    }
}

/// A packet decapsulated by the node's VXLAN device: its source identity is
/// the VNI (never the ipcache's idea of the inner source address), carried
/// in its mark ([`MARK_OVERLAY_IDENTITY`] in bits 0..15, the identity in
/// bits 16..31; marks survive within the node's namespace). A TCP flow to
/// a pod of this node whose ingress policy redirects it goes to the node's
/// proxy here (`remote_redirect`): the pod's `to_container` could not hand
/// it over. A packet of a flow the destination pod already tracks (a reply, or a flow its ingress
/// admitted) is handed straight into the pod by host routing, with the
/// pod's conntrack side, as from a local sender. Every other packet — a new
/// flow, a fragment, an ICMP error, one to the node — goes through the
/// node's stack, which routes it to the pod's veth, where `to_container`
/// decides a new flow with the mark's identity. The inner frame's
/// destination MAC is the sending pod's gateway, not this device: the
/// packet is declared addressed to this host, or the stack would drop it as
/// another host's.
pub(crate) fn from_overlay_inner(ctx: &TcContext, st: &mut State) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let tunnel = TunnelKey::zeroed_in(&mut slot);
    let got = tunnel_key(ctx, tunnel);
    let identity = if got {
        vni_identity(tunnel.tunnel_id)
    } else {
        // No tunnel metadata: not from a VXLAN peer.
        IDENTITY_WORLD
    };
    ctx.set_mark(MARK_OVERLAY_IDENTITY | identity << 16);
    // SAFETY: a helper taking the context's skb and a plain integer.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    reset_meta(st, ifindex(ctx), None, false);
    if !matches!(parse(ctx, &mut st.pkt), Ok(true)) || st.pkt.fragment || st.pkt.icmp_error {
        return TC_ACT_OK;
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    match remote_redirect(ctx, st, identity, now) {
        REDIRECT => to_proxy(ctx, st, st.redirect_port, st.redirect_report),
        PASS_ON => host_route(ctx, st, now),
        verdict => verdict,
    }
}
