//! Myelin's kernel programs: TC classifiers on the host side of every pod's
//! veth. `from_container` sees packets leaving the pod (the veth's ingress),
//! `to_container` packets entering it (the veth's egress).
//!
//! from_container: parse → anti-spoofing → service lookup and DNAT →
//! conntrack → on a new flow the source's egress policy and, when the
//! destination is a pod of this node, that pod's ingress policy (so a
//! redirect-to-proxy on ingress can still use `bpf_sk_assign`, which only
//! works at TC ingress) → redirect to the L7 proxy or pass to the stack.
//!
//! to_container: parse → conntrack (replies of the pod's own flows get
//! reverse NAT; flows already admitted by a local sender's from_container
//! pass) → on a new flow (from the node, the proxy or elsewhere) the pod's
//! ingress policy → deliver.
//!
//! Established flows skip policy until the agent bumps the policy revision;
//! then each is checked once more on its next packet from the originator.
//! A service without backends refuses the client at once (TCP reset, ICMP
//! port unreachable) back through the same veth. Traces are aggregated per
//! flow (conntrack); every drop is reported, under a per-CPU rate limit.
//!
//! from_overlay (the node's VXLAN device, tunnel mode): the sender's
//! identity from the VNI into the packet's mark, for the destination's
//! to_container; from_container sends packets to other nodes' pod CIDRs
//! into the overlay with the sender's identity as the VNI.
//!
//! from_overlay, and from_underlay (the node's underlay-facing link, native
//! routing): a new TCP flow from another node to a pod of this node whose
//! ingress policy redirects it is handed to the node's proxy at the node's
//! ingress, and so are its later packets (`node_ingress`).
//!
//! Everything per endpoint comes from maps; the agent never recompiles.
#![no_std]
#![no_main]

mod conntrack;
mod endpoints;
mod events;
mod fragments;
mod from_container;
mod host_routing;
mod node_ingress;
mod overlay;
mod parse;
mod policy;
mod redirect;
mod related;
mod service;
mod skb;
mod state;
mod to_container;
mod zero;

use crate::conntrack::live_entry;
use crate::events::count;
use crate::from_container::from_container_inner;
use crate::node_ingress::from_underlay_inner;
use crate::overlay::{from_overlay_inner, to_overlay_inner};
use crate::parse::IPPROTO_TCP;
use crate::redirect::{PROXY_LISTENERS, listener_key};
use crate::skb::ifindex;
use crate::state::STATE;
use crate::to_container::to_container_inner;
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::bindings::sk_action::SK_PASS;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::{classifier, sk_lookup};
use aya_ebpf::programs::{SkLookupContext, TcContext};
use myelin_common::maps::{CT_SCOPE_EGRESS, FAMILY_IPV4, FAMILY_IPV6};
use myelin_common::{CtKey, Direction, PolicyAction};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let ifindex = ifindex(&ctx);
    count(ifindex, Direction::FromContainer, ctx.len());
    let Some(st) = STATE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU during the run.
    from_container_inner(&ctx, unsafe { &mut *st }, ifindex)
}

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    let ifindex = ifindex(&ctx);
    count(ifindex, Direction::ToContainer, ctx.len());
    let Some(st) = STATE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU during the run.
    to_container_inner(&ctx, unsafe { &mut *st }, ifindex)
}

/// On the node's VXLAN device (ingress): packets from other nodes' pods,
/// decapsulated, with the sender's identity in the VNI (`overlay`).
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    let Some(st) = STATE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU during the run.
    from_overlay_inner(&ctx, unsafe { &mut *st })
}

/// On the node's VXLAN device (egress): the tunnel key of packets the
/// node's stack routes into the overlay (`overlay`).
#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    let Some(st) = STATE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU during the run.
    to_overlay_inner(&ctx, unsafe { &mut *st })
}

/// On the node's underlay-facing link (ingress, native routing): flows from
/// other nodes' pods that a local pod's ingress policy redirects go to the
/// node's proxy (`node_ingress`).
#[classifier]
pub fn from_underlay(ctx: TcContext) -> i32 {
    let Some(st) = STATE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU during the run.
    from_underlay_inner(&ctx, unsafe { &mut *st })
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// The node's listener lookups (`BPF_SK_LOOKUP`, attached to the node's
/// network namespace). The one that matters: a SYN reopening a redirected
/// tuple whose previous connection the proxy holds in TIME_WAIT reaches the
/// TIME_WAIT socket (`assign_to_proxy`), and the kernel then looks for a
/// listener on the packet's destination port to take it over (TCP_TW_SYN).
/// Nothing listens there — the proxy listens on its own port — so without
/// this the TIME_WAIT socket answers with an ACK of the old connection and
/// the client pays a RST and a retransmission. Here a flow conntrack
/// redirects to the proxy gets the proxy's listener; all others pass
/// untouched.
#[sk_lookup]
pub fn proxy_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: the context is valid for the run; fields are read one by one
    // (the verifier checks every context access).
    let (family, protocol) = unsafe { ((*lookup).family, (*lookup).protocol) };
    if protocol != u32::from(IPPROTO_TCP) {
        return SK_PASS;
    }
    let mut key = CtKey {
        saddr: [0; 16],
        daddr: [0; 16],
        // SAFETY: as above.
        sport: u16::from_be(unsafe { (*lookup).remote_port }),
        // SAFETY: as above; host order, 16 bits wide.
        dport: unsafe { (*lookup).local_port } as u16,
        protocol: IPPROTO_TCP,
        scope: CT_SCOPE_EGRESS,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    if family == AF_INET {
        // SAFETY: as above.
        let (remote, local) = unsafe { ((*lookup).remote_ip4, (*lookup).local_ip4) };
        key.saddr[..4].copy_from_slice(&remote.to_ne_bytes());
        key.daddr[..4].copy_from_slice(&local.to_ne_bytes());
    } else if family == AF_INET6 {
        key.family = FAMILY_IPV6;
        let mut i = 0;
        while i < 4 {
            // SAFETY: as above.
            let (remote, local) = unsafe { ((*lookup).remote_ip6[i], (*lookup).local_ip6[i]) };
            key.saddr[i * 4..i * 4 + 4].copy_from_slice(&remote.to_ne_bytes());
            key.daddr[i * 4..i * 4 + 4].copy_from_slice(&local.to_ne_bytes());
            i += 1;
        }
    } else {
        return SK_PASS;
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(entry) = live_entry(&key, now) else {
        return SK_PASS;
    };
    // SAFETY: entry points into the map value, valid for this run.
    let (verdict, proxy_port) = unsafe { ((*entry).verdict, (*entry).proxy_port) };
    if verdict == PolicyAction::Redirect as u8 {
        // No registered listener: the kernel's own lookup goes on.
        let _ = PROXY_LISTENERS.redirect_sk_lookup(&ctx, listener_key(key.family, proxy_port), 0);
    }
    SK_PASS
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
