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
//! port unreachable) back through the same veth. Events are aggregated per
//! flow (conntrack) or per tuple and reason (drops).
//!
//! Everything per endpoint comes from maps; the agent never recompiles.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        sk_action::SK_PASS,
    },
    helpers::{
        bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_map_lookup_elem,
        bpf_map_update_elem, bpf_redirect, bpf_redirect_peer, bpf_sk_assign, bpf_sk_release,
        bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
        bpf_skc_lookup_tcp,
    },
    macros::{classifier, map, sk_lookup},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash,
        lpm_trie::Key,
    },
    programs::{SkLookupContext, TcContext},
};
use myelin_common::{
    CtEntry, CtKey, Direction, EndpointInfo, EndpointPolicy, EventKind, IpKey, IpcacheEntry,
    IpcacheKey, L4Addr, ObservationPoint, PacketStats, PolicyAction, PolicyEntry, PolicyKey,
    ServiceEntry, ServiceKey, StatsKey, TraceEvent, TrafficDirection, Verdict, drop_reason,
    event::{
        EVENT_FLAG_FRAGMENT, EVENT_FLAG_FROM_PROXY, EVENT_FLAG_RELATED, EVENT_FLAG_REPLY,
        EVENT_FLAG_SERVICE,
    },
    maps::{
        CT_FLAG_CLOSING, CT_FLAG_REPLIED, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS, CT_SCOPE_SERVICE,
        CT_TIMEOUT_CLOSE_NS, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_SYN_NS, CT_TIMEOUT_TCP_NS,
        FAMILY_IPV4, FAMILY_IPV6, POLICY_FLAG_EGRESS, POLICY_FLAG_INGRESS, POLICY_PREFIX_FULL,
        PROXY_MARK_EGRESS, PROXY_MARK_MASK, PROXY_MARK_TO_PROXY, TRACE_REPORT_INTERVAL_NS,
    },
};

/// Endpoints the agent manages, by host-side veth ifindex.
#[map(name = "MYELIN_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(16384, 0);

/// The same endpoints by address: identity of local peers, and the ingress
/// policy of a local destination.
#[map(name = "MYELIN_EP_BY_IP")]
static ENDPOINTS_BY_IP: HashMap<IpKey, EndpointInfo> = HashMap::pinned(32768, 0);

/// Policy generation and enforcement per endpoint id.
#[map(name = "MYELIN_EP_POLICY")]
static ENDPOINT_POLICY: HashMap<u32, EndpointPolicy> = HashMap::pinned(16384, 0);

/// Policy entries; LPM so protocol and port ranges are prefixes.
#[map(name = "MYELIN_POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(262144, BPF_F_NO_PREALLOC);

/// Prefix → identity.
#[map(name = "MYELIN_IPCACHE")]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheEntry> = LpmTrie::pinned(65536, BPF_F_NO_PREALLOC);

/// Frontends (slot 0) and their backend slots.
#[map(name = "MYELIN_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(65536, 0);

/// Backend id → address.
#[map(name = "MYELIN_BACKENDS")]
static BACKENDS: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// Reverse-NAT index → the frontend replies must appear to come from.
#[map(name = "MYELIN_REV_NAT")]
static REV_NAT: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// The policy revision (index 0), bumped by the agent on every policy
/// change: flows decided under an older revision are checked again.
#[map(name = "MYELIN_POLICY_REV")]
static POLICY_REVISION: Array<u32> = Array::pinned(1, 0);

/// Connection tracking; LRU so a full table evicts the oldest flows instead
/// of refusing new ones.
#[map(name = "MYELIN_CT")]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262144, 0);

/// The proxy's listeners by [`listener_key`] (family, proxy port), registered
/// by `assign_to_proxy` the first time it hands a connection to one (a
/// closed listener leaves the map by itself). `proxy_lookup` needs them to
/// steer a SYN that reopens a tuple in TIME_WAIT.
#[map(name = "MYELIN_PROXY_LISTENERS")]
static PROXY_LISTENERS: SockHash<u32> = SockHash::pinned(64, 0);

/// Packet counters per endpoint and direction.
#[map(name = "MYELIN_STATS")]
static STATS: PerCpuHashMap<StatsKey, PacketStats> = PerCpuHashMap::pinned(32768, 0);

/// Events for the agent's observer.
#[map(name = "MYELIN_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(1 << 22, 0);

/// Unread event bytes from which a new event wakes the reader (see `emit`'s flags).
const EVENT_WAKEUP_BYTES: u64 = 256 * 1024;

/// Events that found the ring full (index 0), so the agent can report loss.
#[map(name = "MYELIN_LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// When events without a conntrack entry to aggregate them (drops,
/// fragments) were last reported, per tuple and reason: a denied flood or
/// a fragment storm reports once per interval instead of filling the ring.
/// Not pinned: losing it on reload only repeats a report.
#[map(name = "MYELIN_REPORTS")]
static REPORTS: LruHashMap<CtKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Tag of fragment traces in [`REPORTS`] (drop reasons are the other tags).
const REPORT_TAG_FRAGMENT: u8 = 255;

/// Scratch space for the event being built: it does not fit the 512-byte
/// stack next to the keys.
#[map(name = "MYELIN_SCRATCH")]
static SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working state of one program run (the parsed packet and what the
/// events will say), kept off the 512-byte stack. TC programs do not nest on
/// a CPU, so one slot suffices.
#[map(name = "MYELIN_STATE")]
static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);

/// LPM tries must be created without preallocation.
const BPF_F_NO_PREALLOC: u32 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up (drop 156).
const MAX_IPV6_EXTENSIONS: usize = 6;
const IDENTITY_WORLD: u32 = 2;

/// What the parser made of a packet. Addresses and ports as in the packet
/// (ports host order).
struct Packet {
    family: u8,
    protocol: u8,
    /// Non-first fragment: no L4 header.
    fragment: bool,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    /// The packet is an ICMP error; `inner_*` hold the tuple it quotes.
    icmp_error: bool,
    l4_offset: usize,
    /// Offset of the L4 checksum, 0 when NAT cannot touch it.
    csum_offset: usize,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    /// ICMP errors: the quoted packet's tuple as the quoted sender sent it.
    inner_sport: u16,
    inner_dport: u16,
    inner_protocol: u8,
    inner_saddr: [u8; 16],
    inner_daddr: [u8; 16],
    /// Offsets of the quoted IP and L4 headers.
    inner_l3: usize,
    inner_l4: usize,
}

/// A policy decision for one direction.
#[derive(Clone, Copy)]
struct Decision {
    enforced: bool,
    /// PolicyAction as u8, 0 when no entry matched.
    action: u8,
    match_type: u8,
    proxy_port: u16,
    rule_id: u32,
}

impl Decision {
    const OPEN: Decision = Decision {
        enforced: false,
        action: PolicyAction::Allow as u8,
        match_type: 0,
        proxy_port: 0,
        rule_id: 0,
    };

    /// The drop reason when the decision denies, else 0.
    fn drop_reason(&self) -> u8 {
        if !self.enforced {
            0
        } else if self.action == PolicyAction::Deny as u8 {
            drop_reason::POLICY_DENY
        } else if self.action == 0 {
            drop_reason::POLICY_DENIED
        } else {
            0
        }
    }

    fn verdict(&self) -> Verdict {
        if self.drop_reason() != 0 {
            Verdict::Dropped
        } else if self.action == PolicyAction::Redirect as u8 {
            Verdict::Redirected
        } else {
            Verdict::Forwarded
        }
    }
}

/// The working state of one run.
struct State {
    pkt: Packet,
    meta: Context,
    /// The proxy port when a new flow is to be redirected.
    redirect_port: u16,
    /// Conntrack key and entry being written (off the stack).
    key: CtKey,
    entry: CtEntry,
    /// The local pod a packet is handed to by [`host_route`].
    peer: EndpointInfo,
}

/// Returned by `from_container_new` when the caller must hand the packet to
/// the proxy on `State::redirect_port` (kept out of that function's frame:
/// the socket tuples would overflow the stack).
const REDIRECT: i32 = -1;

/// Returned by `to_container_tracked` for a packet of no flow it knows.
const UNTRACKED: i32 = -2;

/// Returned by `from_container_new` for an allowed packet the node forwards
/// (to a local pod: host routing, else the stack).
const FORWARD: i32 = TC_ACT_OK;

/// What an event reports beyond the packet and its context.
struct Outcome {
    kind: EventKind,
    point: ObservationPoint,
    verdict: Verdict,
    drop_reason: u8,
    direction: u8,
    match_type: u8,
    proxy_port: u16,
    rule_id: u32,
}

impl Outcome {
    fn trace(point: ObservationPoint) -> Self {
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
struct Context {
    ifindex: u32,
    endpoint_id: u32,
    src_identity: u32,
    dst_identity: u32,
    flags: u8,
    service: L4Addr,
}

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

fn reset_meta(st: &mut State, ifindex: u32, endpoint: Option<&EndpointInfo>, sending: bool) {
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

fn from_container_inner(ctx: &TcContext, st: &mut State, ifindex: u32) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: read-only lookup; the value is copied out at once.
    let endpoint = unsafe { ENDPOINTS.get(&ifindex) }.copied();
    reset_meta(st, ifindex, endpoint.as_ref(), true);
    match parse(ctx, &mut st.pkt) {
        Ok(true) => {}
        // Not IP (ARP): nothing to police.
        Ok(false) => return TC_ACT_OK,
        Err(reason) => return drop_unparsed(ctx, st, point, reason),
    }
    if let Some(ep) = endpoint.as_ref() {
        match source_check(ep, &st.pkt) {
            SourceCheck::Valid => {}
            // Neighbour discovery and other link-local traffic: the node
            // never forwards it, so it needs no policy.
            SourceCheck::LinkLocal => return TC_ACT_OK,
            SourceCheck::Spoofed => {
                return drop_packet(ctx, st, point, drop_reason::INVALID_SOURCE_IP, 0);
            }
        }
    }
    if is_infrastructure_icmpv6(&st.pkt) {
        return TC_ACT_OK;
    }
    if st.pkt.fragment {
        // No ports: neither conntrack nor port policy can apply. The first
        // fragment carried the verdict; without it the receiver cannot
        // reassemble, and overlapping fragments are discarded by Linux.
        st.meta.flags |= EVENT_FLAG_FRAGMENT;
        if !recently_reported(st, REPORT_TAG_FRAGMENT) {
            st.meta.dst_identity = identity_of(st.pkt.family, &st.pkt.daddr);
            emit(ctx, st, &Outcome::trace(point));
        }
        return TC_ACT_OK;
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };

    // Service: choose (or recall) the backend and DNAT to it.
    let mut rev_nat_index = 0u16;
    if st.pkt.protocol == IPPROTO_TCP || st.pkt.protocol == IPPROTO_UDP {
        match service_translate(ctx, st, now) {
            Ok(index) => rev_nat_index = index,
            Err(reason) => {
                let verdict = drop_packet(ctx, st, point, reason, 0);
                if reason == drop_reason::NO_SERVICE {
                    // Fail fast: the client gets a reset (TCP) or a port
                    // unreachable (UDP) instead of retrying into the void.
                    let refused = if st.pkt.protocol == IPPROTO_TCP {
                        reset_client(ctx, &st.pkt, ifindex)
                    } else {
                        unreachable_client(ctx, &st.pkt, ifindex)
                    };
                    return refused.unwrap_or(verdict);
                }
                return verdict;
            }
        }
    }

    if st.pkt.icmp_error {
        return related_error(ctx, st, point);
    }

    let forward = ct_key(&st.pkt, CT_SCOPE_EGRESS, false);
    if let Some(entry) = live_entry(&forward, now) {
        // SAFETY: entry points into the map value, valid for this run.
        if unsafe { (*entry).policy_revision } != policy_revision() {
            let verdict = recheck_from_container(ctx, st, endpoint.as_ref(), entry);
            if verdict != TC_ACT_OK {
                let _ = CONNTRACK.remove(&forward);
                return verdict;
            }
        }
        let report = ct_update(entry, &st.pkt, ctx.len(), false, now);
        // SAFETY: entry points into the map value, valid for this run.
        let (verdict, proxy_port, peer) = unsafe {
            (
                (*entry).verdict,
                (*entry).proxy_port,
                (*entry).peer_identity,
            )
        };
        st.meta.dst_identity = peer;
        if verdict == PolicyAction::Redirect as u8 {
            return to_proxy(ctx, st, proxy_port, report);
        }
        if report {
            emit(ctx, st, &Outcome::trace(point));
        }
        return host_route(ctx, st, now);
    }
    let reply = ct_key(&st.pkt, CT_SCOPE_INGRESS, true);
    if let Some(entry) = live_entry(&reply, now) {
        // A reply of a flow the pod accepted: no policy lookup.
        if ct_update(entry, &st.pkt, ctx.len(), true, now) {
            st.meta.flags |= EVENT_FLAG_REPLY;
            // SAFETY: as above.
            st.meta.dst_identity = unsafe { (*entry).peer_identity };
            emit(ctx, st, &Outcome::trace(point));
        }
        return host_route(ctx, st, now);
    }
    match from_container_new(ctx, st, endpoint.as_ref(), rev_nat_index, now) {
        REDIRECT => to_proxy(ctx, st, st.redirect_port, true),
        FORWARD => host_route(ctx, st, now),
        verdict => verdict,
    }
}

/// Host routing: a packet `from_container` forwards to a pod of this node
/// skips the node's IP stack (routing, forwarding, neighbour output) and the
/// destination veth's egress: it is handed straight into the pod's network
/// namespace with `bpf_redirect_peer`. What the destination's
/// `to_container` would have done happens here, with its context (its
/// conntrack side, reverse NAT, a re-check of its ingress policy after a
/// policy change, its to-endpoint trace and counters), then the frame gets
/// the addresses a router would give it (to the pod's MAC, from its host
/// veth's) and one hop less.
///
/// Returns `TC_ACT_OK` — the node's stack routes the packet and
/// `to_container` runs as before — when the destination is not a pod of
/// this node, its MACs are unknown (registered without them), the TTL or
/// hop limit would expire (the stack answers with Time Exceeded), or the
/// receiver has not admitted the flow (its ingress policy is to be decided
/// by `to_container`).
// Inlined, so that the three steps are siblings under the caller's frame
// (nested, they would exceed the 512-byte stack of a call chain).
#[inline(always)]
fn host_route(ctx: &TcContext, st: &mut State, now: u64) -> i32 {
    if !host_route_prepare(ctx, st) {
        return TC_ACT_OK;
    }
    let verdict = to_container_tracked(ctx, st, st.peer.endpoint_id, now);
    if verdict == UNTRACKED {
        return TC_ACT_OK;
    }
    host_route_deliver(ctx, st, verdict)
}

/// [`host_route`]'s first step: is the destination a pod of this node with
/// known MACs, and does the packet have a hop left? If so, the pod is in
/// `st.peer` and the event context is the pod's, as its `to_container`
/// would have it.
#[inline(never)]
fn host_route_prepare(ctx: &TcContext, st: &mut State) -> bool {
    // SAFETY: read-only lookup, copied out (into the per-CPU state: the
    // stack is short).
    match unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) } {
        Some(peer) => st.peer = *peer,
        None => return false,
    }
    if !st.peer.host_routable() {
        return false;
    }
    // IPv4 TTL or IPv6 hop limit: the stack answers an expiring one with
    // Time Exceeded.
    let hops_at = ETH_HLEN + if st.pkt.family == FAMILY_IPV4 { 8 } else { 7 };
    match ctx.load::<u8>(hops_at) {
        Ok(hops) if hops > 1 => {}
        _ => return false,
    }
    st.meta.ifindex = st.peer.ifindex;
    st.meta.endpoint_id = st.peer.endpoint_id;
    st.meta.src_identity = 0;
    st.meta.dst_identity = st.peer.identity;
    st.meta.flags = 0;
    true
}

/// [`host_route`]'s last step, after the pod's conntrack side said
/// `verdict`: the pod's counters, then (allowed) the router's rewrite — to
/// the pod's MAC, from its host veth's, one hop less (IPv4 header checksum
/// updated) — and the redirect into the pod's namespace.
#[inline(never)]
fn host_route_deliver(ctx: &TcContext, st: &mut State, verdict: i32) -> i32 {
    let ifindex = st.peer.ifindex;
    count(ifindex, Direction::ToContainer, ctx.len());
    if verdict != TC_ACT_OK {
        return verdict;
    }
    let point = ObservationPoint::ToEndpoint;
    if ctx.store(0, &st.peer.mac, 0).is_err() || ctx.store(6, &st.peer.host_mac, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    }
    let v4 = st.pkt.family == FAMILY_IPV4;
    let hops_at = ETH_HLEN + if v4 { 8 } else { 7 };
    let Ok(hops) = ctx.load::<[u8; 2]>(hops_at) else {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    };
    let left = hops[0].saturating_sub(1);
    if v4 {
        // The checksummed word is TTL and protocol.
        let from = u16::from_ne_bytes(hops);
        let to = u16::from_ne_bytes([left, hops[1]]);
        if ctx
            .l3_csum_replace(ETH_HLEN + 10, u64::from(from), u64::from(to), 2)
            .is_err()
        {
            return drop_packet(ctx, st, point, drop_reason::CSUM_L3, 0);
        }
    }
    if ctx.store(hops_at, &left, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::WRITE_ERROR, 0);
    }
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// A new flow leaving a pod: the sender's egress policy, then a local
/// receiver's ingress policy, then conntrack entries for both sides.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn from_container_new(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    rev_nat_index: u16,
    now: u64,
) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: read-only lookup, copied out.
    let local_peer = unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) }.copied();
    st.meta.dst_identity = match local_peer {
        Some(peer) => peer.identity,
        None => identity_of(st.pkt.family, &st.pkt.daddr),
    };
    let egress = match endpoint {
        Some(ep) => decide(
            ep.endpoint_id,
            Direction::FromContainer,
            st.meta.dst_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if egress.drop_reason() != 0 {
        return deny(ctx, st, point, &egress, TrafficDirection::Egress);
    }
    if egress.enforced {
        emit_verdict(ctx, st, point, &egress, TrafficDirection::Egress);
    }
    let ingress = match local_peer {
        Some(peer) => decide(
            peer.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if ingress.drop_reason() != 0 {
        return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    if ingress.enforced {
        emit_verdict(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    // The egress redirect wins: one proxy on the node serves both sides.
    let redirect = if egress.action == PolicyAction::Redirect as u8 {
        Some(egress.proxy_port)
    } else if ingress.action == PolicyAction::Redirect as u8 {
        Some(ingress.proxy_port)
    } else {
        None
    };
    if redirect.is_some() && st.pkt.protocol != IPPROTO_TCP {
        return drop_packet(ctx, st, point, drop_reason::PROXY_UNSUPPORTED_PROTOCOL, 0);
    }
    st.entry = new_entry(&st.pkt, ctx.len(), now);
    st.entry.peer_identity = st.meta.dst_identity;
    st.entry.rule_id = egress.rule_id;
    st.entry.rev_nat_index = rev_nat_index;
    if let Some(port) = redirect {
        st.entry.verdict = PolicyAction::Redirect as u8;
        st.entry.proxy_port = port;
    }
    st.key = ct_key(&st.pkt, CT_SCOPE_EGRESS, false);
    if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
    }
    if let (Some(_), None) = (local_peer, redirect) {
        // Admit the flow at the receiver's to_container too, so its ingress
        // policy is evaluated once, here.
        st.entry.peer_identity = st.meta.src_identity;
        st.entry.rule_id = ingress.rule_id;
        st.entry.rev_nat_index = 0;
        st.key.scope = CT_SCOPE_INGRESS;
        if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
            return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
        }
    }
    if let Some(port) = redirect {
        st.redirect_port = port;
        return REDIRECT;
    }
    emit(ctx, st, &Outcome::trace(point));
    TC_ACT_OK
}

/// The policy changed since this flow was decided: checks the sender's
/// egress and a local receiver's ingress again. A flow still allowed goes
/// on (keeping its allow or redirect verdict: a connection is not moved to
/// or from the proxy mid-stream); a denied one is dropped.
// A separate BPF function: its locals get their own frame.
#[inline(never)]
fn recheck_from_container(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    entry: *mut CtEntry,
) -> i32 {
    let point = ObservationPoint::ToStack;
    // SAFETY: entry points into the map value, valid for this run.
    st.meta.dst_identity = unsafe { (*entry).peer_identity };
    if let Some(ep) = endpoint {
        let egress = decide(
            ep.endpoint_id,
            Direction::FromContainer,
            st.meta.dst_identity,
            &st.pkt,
        );
        if egress.drop_reason() != 0 {
            return deny(ctx, st, point, &egress, TrafficDirection::Egress);
        }
    }
    // SAFETY: read-only lookup, copied out.
    if let Some(peer) = unsafe { ENDPOINTS_BY_IP.get(&ip_key(st.pkt.family, &st.pkt.daddr)) } {
        let ingress = decide(
            peer.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        );
        if ingress.drop_reason() != 0 {
            return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
        }
    }
    // SAFETY: as above.
    unsafe { (*entry).policy_revision = policy_revision() };
    TC_ACT_OK
}

/// The receiving side of [`recheck_from_container`]: the pod's ingress
/// policy for a flow into it, against the peer identity it was decided for.
#[inline(never)]
fn recheck_to_container(
    ctx: &TcContext,
    st: &mut State,
    endpoint_id: u32,
    entry: *mut CtEntry,
) -> i32 {
    // SAFETY: entry points into the map value, valid for this run.
    st.meta.src_identity = unsafe { (*entry).peer_identity };
    if endpoint_id != 0 {
        let ingress = decide(
            endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        );
        if ingress.drop_reason() != 0 {
            let point = ObservationPoint::ToEndpoint;
            return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
        }
    }
    // SAFETY: as above.
    unsafe { (*entry).policy_revision = policy_revision() };
    TC_ACT_OK
}

fn to_container_inner(ctx: &TcContext, st: &mut State, ifindex: u32) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    // SAFETY: read-only lookup, copied out.
    let endpoint = unsafe { ENDPOINTS.get(&ifindex) }.copied();
    reset_meta(st, ifindex, endpoint.as_ref(), false);
    match parse(ctx, &mut st.pkt) {
        Ok(true) => {}
        Ok(false) => return TC_ACT_OK,
        Err(reason) => return drop_unparsed(ctx, st, point, reason),
    }
    if is_infrastructure_icmpv6(&st.pkt) || is_link_local(&st.pkt) {
        return TC_ACT_OK;
    }
    let mark = mark(ctx);
    let from_proxy = mark & PROXY_MARK_MASK == PROXY_MARK_EGRESS;
    if from_proxy {
        st.meta.flags |= EVENT_FLAG_FROM_PROXY;
    }
    if st.pkt.fragment {
        st.meta.flags |= EVENT_FLAG_FRAGMENT;
        if !recently_reported(st, REPORT_TAG_FRAGMENT) {
            st.meta.src_identity = identity_of(st.pkt.family, &st.pkt.saddr);
            emit(ctx, st, &Outcome::trace(point));
        }
        return TC_ACT_OK;
    }
    if st.pkt.icmp_error {
        return related_error(ctx, st, point);
    }
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let endpoint_id = endpoint.map_or(0, |e| e.endpoint_id);
    match to_container_tracked(ctx, st, endpoint_id, now) {
        UNTRACKED => to_container_new(ctx, st, endpoint.as_ref(), mark, now),
        verdict => verdict,
    }
}

/// Conntrack on the way into a pod: a reply of a flow the pod started
/// (reverse NAT, no policy) or a packet of a flow already admitted into it
/// (its ingress policy checked again after a policy change). [`UNTRACKED`]
/// when the packet belongs to neither: a new flow for the pod's ingress
/// policy. `endpoint_id` 0: the pod is not registered (no policy).
/// Run by `to_container`, and by a local sender's `from_container` for
/// the packets it hands straight to the pod ([`host_route`]).
// A separate BPF function: its locals get their own frame.
#[inline(never)]
fn to_container_tracked(ctx: &TcContext, st: &mut State, endpoint_id: u32, now: u64) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    // A reply of a flow this pod started: reverse NAT, no policy. (Keys in
    // the per-CPU state: host_route calls this with little stack left.)
    st.key = ct_key(&st.pkt, CT_SCOPE_EGRESS, true);
    if let Some(entry) = live_entry(&st.key, now) {
        let report = ct_update(entry, &st.pkt, ctx.len(), true, now);
        // SAFETY: entry points into the map value, valid for this run.
        let (index, peer) = unsafe { ((*entry).rev_nat_index, (*entry).peer_identity) };
        st.meta.src_identity = peer;
        st.meta.flags |= EVENT_FLAG_REPLY;
        if index != 0 {
            // SAFETY: read-only lookup, copied out.
            if let Some(frontend) = unsafe { REV_NAT.get(&u32::from(index)) }.copied() {
                if let Err(reason) = rewrite(ctx, &mut st.pkt, true, &frontend) {
                    return drop_packet(ctx, st, point, reason, 0);
                }
                st.meta.flags |= EVENT_FLAG_SERVICE;
                st.meta.service = frontend;
            }
        }
        if report {
            emit(ctx, st, &Outcome::trace(point));
        }
        return TC_ACT_OK;
    }
    st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
    let Some(entry) = live_entry(&st.key, now) else {
        return UNTRACKED;
    };
    // SAFETY: entry points into the map value, valid for this run.
    if unsafe { (*entry).policy_revision } != policy_revision() {
        let verdict = recheck_to_container(ctx, st, endpoint_id, entry);
        if verdict != TC_ACT_OK {
            st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
            let _ = CONNTRACK.remove(&st.key);
            return verdict;
        }
    }
    if ct_update(entry, &st.pkt, ctx.len(), false, now) {
        // SAFETY: as above.
        st.meta.src_identity = unsafe { (*entry).peer_identity };
        emit(ctx, st, &Outcome::trace(point));
    }
    TC_ACT_OK
}

/// A new flow into a pod from outside this node's pods (the node, the proxy,
/// elsewhere): the pod's ingress policy.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn to_container_new(
    ctx: &TcContext,
    st: &mut State,
    endpoint: Option<&EndpointInfo>,
    mark: u32,
    now: u64,
) -> i32 {
    let point = ObservationPoint::ToEndpoint;
    let from_proxy = st.meta.flags & EVENT_FLAG_FROM_PROXY != 0;
    // The proxy's upstream connections say whom they act for in the mark's
    // upper half; otherwise the source address tells.
    st.meta.src_identity = if from_proxy && mark >> 16 != 0 {
        mark >> 16
    } else {
        identity_of(st.pkt.family, &st.pkt.saddr)
    };
    let mut ingress = match endpoint {
        Some(ep) => decide(
            ep.endpoint_id,
            Direction::ToContainer,
            st.meta.src_identity,
            &st.pkt,
        ),
        None => Decision::OPEN,
    };
    if from_proxy && ingress.action == PolicyAction::Redirect as u8 {
        // The proxy already applied the L7 rules: never loop back to it.
        ingress.action = PolicyAction::Allow as u8;
    }
    if ingress.drop_reason() != 0 {
        return deny(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    if ingress.enforced {
        emit_verdict(ctx, st, point, &ingress, TrafficDirection::Ingress);
    }
    if ingress.action == PolicyAction::Redirect as u8 {
        // bpf_sk_assign works only at TC ingress: a redirect can be honoured
        // only where a local pod sends (from_container). Fail closed.
        return drop_packet(
            ctx,
            st,
            point,
            drop_reason::PROXY_UNSUPPORTED_PROTOCOL,
            ingress.rule_id,
        );
    }
    st.entry = new_entry(&st.pkt, ctx.len(), now);
    st.entry.peer_identity = st.meta.src_identity;
    st.entry.rule_id = ingress.rule_id;
    st.key = ct_key(&st.pkt, CT_SCOPE_INGRESS, false);
    if CONNTRACK.insert(&st.key, &st.entry, 0).is_err() {
        return drop_packet(ctx, st, point, drop_reason::CT_MAP_INSERTION_FAILED, 0);
    }
    emit(ctx, st, &Outcome::trace(point));
    TC_ACT_OK
}

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).mark }
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

enum SourceCheck {
    Valid,
    LinkLocal,
    Spoofed,
}

/// Anti-spoofing: the source must be the endpoint's own address. IPv6
/// link-local (and the unspecified address of DAD) towards link-local or
/// multicast destinations is neighbour discovery, which stays on the link.
fn source_check(ep: &EndpointInfo, pkt: &Packet) -> SourceCheck {
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
fn is_link_local(pkt: &Packet) -> bool {
    if pkt.family != FAMILY_IPV6 {
        return false;
    }
    let src_local = (pkt.saddr[0] == 0xfe && pkt.saddr[1] & 0xc0 == 0x80) || pkt.saddr == [0; 16];
    let dst_local = (pkt.daddr[0] == 0xfe && pkt.daddr[1] & 0xc0 == 0x80) || pkt.daddr[0] == 0xff;
    src_local && dst_local
}

/// Router/neighbour discovery and MLD keep the link working whatever the
/// policy says.
fn is_infrastructure_icmpv6(pkt: &Packet) -> bool {
    pkt.protocol == IPPROTO_ICMPV6 && matches!(pkt.icmp_type, 130..=137 | 143)
}

/// Parses Ethernet, IPv4 (options) or IPv6 (extension headers), and the L4
/// header. `Ok(None)` for frames that are not IP; `Err(drop reason)` for IP
/// packets too malformed to police.
fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<bool, u8> {
    let ethertype = match ctx.load::<u16>(12) {
        Ok(v) => u16::from_be(v),
        Err(_) => return Ok(false),
    };
    *pkt = Packet {
        family: 0,
        protocol: 0,
        fragment: false,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_error: false,
        l4_offset: 0,
        csum_offset: 0,
        sport: 0,
        dport: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        inner_sport: 0,
        inner_dport: 0,
        inner_protocol: 0,
        inner_saddr: [0; 16],
        inner_daddr: [0; 16],
        inner_l3: 0,
        inner_l4: 0,
    };
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
            pkt.fragment = fragment_offset != 0;
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
            let (protocol, offset, fragment) = ipv6_extensions(ctx, header[6])?;
            pkt.protocol = protocol;
            pkt.l4_offset = offset;
            pkt.fragment = fragment;
        }
        _ => return Ok(false),
    }
    if !pkt.fragment {
        parse_l4(ctx, pkt)?;
    }
    Ok(true)
}

/// Walks IPv6 extension headers: (upper-layer protocol, its offset, non-first fragment).
fn ipv6_extensions(ctx: &TcContext, first: u8) -> Result<(u8, usize, bool), u8> {
    const BAD: u8 = drop_reason::INVALID_IPV6_EXTENSION_HEADER;
    let mut next = first;
    let mut offset = ETH_HLEN + 40;
    let mut fragment = false;
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
                let h: [u8; 4] = ctx.load(offset).map_err(|_| BAD)?;
                next = h[0];
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    fragment = true;
                }
                offset += 8;
            }
            _ => return Ok((next, offset, fragment)),
        }
        if fragment {
            return Ok((next, offset, true));
        }
    }
    match next {
        0 | 43 | 60 | 51 | 44 => Err(BAD),
        _ => Ok((next, offset, fragment)),
    }
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

/// An ICMP error passes when it quotes a packet of a tracked flow (in either
/// scope, either way round); otherwise it is policed as ICMP with no port,
/// like a new flow: an endpoint that enforces needs an ICMP rule for it. An
/// error about a pod's connection to a service is reverse-NAT'd like the
/// replies, so the pod's socket recognises it.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn related_error(ctx: &TcContext, st: &mut State, point: ObservationPoint) -> i32 {
    let pkt = &st.pkt;
    st.key = CtKey {
        saddr: pkt.inner_saddr,
        daddr: pkt.inner_daddr,
        sport: pkt.inner_sport,
        dport: pkt.inner_dport,
        protocol: pkt.inner_protocol,
        scope: CT_SCOPE_EGRESS,
        family: pkt.family,
        _pad: 0,
    };
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // The pod's own connection, as it sent it (after DNAT).
    let mut rev_nat_index = 0;
    let mut found = false;
    if let Some(entry) = live_entry(&st.key, now) {
        found = true;
        // SAFETY: entry points into the map value.
        rev_nat_index = unsafe { (*entry).rev_nat_index };
    }
    st.key.scope = CT_SCOPE_INGRESS;
    if live_entry(&st.key, now).is_some() || live_entry(&swap(&st.key), now).is_some() {
        found = true;
    }
    st.key.scope = CT_SCOPE_EGRESS;
    if live_entry(&swap(&st.key), now).is_some() {
        found = true;
    }
    st.meta.src_identity = identity_of(st.pkt.family, &st.pkt.saddr);
    st.meta.dst_identity = identity_of(st.pkt.family, &st.pkt.daddr);
    if found {
        st.meta.flags |= EVENT_FLAG_RELATED;
        if rev_nat_index != 0 && point == ObservationPoint::ToEndpoint {
            if let Err(reason) = rev_nat_error(ctx, st, rev_nat_index) {
                return drop_packet(ctx, st, point, reason, 0);
            }
        }
    } else {
        let (direction, peer) = if point == ObservationPoint::ToStack {
            (Direction::FromContainer, st.meta.dst_identity)
        } else {
            (Direction::ToContainer, st.meta.src_identity)
        };
        let decision = decide(st.meta.endpoint_id, direction, peer, &st.pkt);
        let reason = decision.drop_reason();
        if reason != 0 {
            return drop_packet(ctx, st, point, reason, decision.rule_id);
        }
    }
    emit(ctx, st, &Outcome::trace(point));
    TC_ACT_OK
}

/// Rewrites an ICMP error about a service connection so that it quotes the
/// packet the pod sent (to the frontend) and, when the backend itself
/// reports, comes from the frontend: the quoted destination, the quoted IPv4
/// header checksum, the outer source, and the ICMP checksum over all of it.
#[inline(never)]
fn rev_nat_error(ctx: &TcContext, st: &mut State, index: u16) -> Result<(), u8> {
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
fn ct_key(pkt: &Packet, scope: u8, reverse: bool) -> CtKey {
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
fn live_entry(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
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

fn new_entry(pkt: &Packet, len: u32, now: u64) -> CtEntry {
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
fn ct_update(entry: *mut CtEntry, pkt: &Packet, len: u32, reply: bool, now: u64) -> bool {
    // SAFETY: entry points into the map value; concurrent updates from other
    // CPUs may lose an increment, which only blurs counters.
    let e = unsafe { &mut *entry };
    let flags = pkt.tcp_flags;
    if !reply && flags & (TCP_SYN | TCP_ACK) == TCP_SYN && e.state & CT_FLAG_CLOSING != 0 {
        // The same tuple opens a new connection (port reuse after close):
        // start its state afresh instead of inheriting the close timeout.
        e.flags_forward = 0;
        e.flags_reply = 0;
        e.state = 0;
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

fn policy_revision() -> u32 {
    POLICY_REVISION.get(0).copied().unwrap_or(0)
}

fn ip_key(family: u8, addr: &[u8; 16]) -> IpKey {
    IpKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    }
}

/// Security identity of an address: a local endpoint, else the ipcache's
/// longest prefix, else world.
fn identity_of(family: u8, addr: &[u8; 16]) -> u32 {
    // SAFETY: read-only lookup, copied out.
    if let Some(ep) = unsafe { ENDPOINTS_BY_IP.get(&ip_key(family, addr)) } {
        return ep.identity;
    }
    let bits = if family == FAMILY_IPV4 { 32 } else { 128 };
    let key = Key::new(
        8 + bits,
        IpcacheKey {
            family,
            addr: *addr,
            _pad: [0; 3],
        },
    );
    IPCACHE.get(&key).map_or(IDENTITY_WORLD, |e| e.identity)
}

/// The policy decision of endpoint `endpoint_id` in `direction` for traffic
/// with `peer`: two LPM lookups (the peer, any peer), each finding the most
/// specific protocol/port entry; a deny in either wins, then a redirect,
/// then the peer-specific allow. The agent folds wider denies into narrower
/// entries of the same peer, so the longest match never hides a deny.
fn decide(endpoint_id: u32, direction: Direction, peer: u32, pkt: &Packet) -> Decision {
    // SAFETY: read-only lookup, copied out.
    let Some(state) = (unsafe { ENDPOINT_POLICY.get(&endpoint_id) }).copied() else {
        return Decision::OPEN;
    };
    let flag = match direction {
        Direction::FromContainer => POLICY_FLAG_EGRESS,
        Direction::ToContainer => POLICY_FLAG_INGRESS,
    };
    if state.flags & flag == 0 {
        return Decision::OPEN;
    }
    let port = if pkt.protocol == IPPROTO_TCP || pkt.protocol == IPPROTO_UDP {
        pkt.dport
    } else {
        0
    };
    let mut key = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKey {
            endpoint_id: endpoint_id.to_be_bytes(),
            generation: state.generation.to_be_bytes(),
            direction: direction as u8,
            peer_identity: peer.to_be_bytes(),
            protocol: pkt.protocol,
            port: port.to_be_bytes(),
        },
    );
    let specific = POLICY.get(&key).copied();
    key.data.peer_identity = [0; 4];
    let any = POLICY.get(&key).copied();
    let chosen = pick(specific, any);
    match chosen {
        Some(e) => Decision {
            enforced: true,
            action: e.action,
            match_type: e.match_type,
            proxy_port: e.proxy_port,
            rule_id: e.rule_id,
        },
        None => Decision {
            enforced: true,
            action: 0,
            match_type: 0,
            proxy_port: 0,
            rule_id: 0,
        },
    }
}

fn pick(specific: Option<PolicyEntry>, any: Option<PolicyEntry>) -> Option<PolicyEntry> {
    let is = |e: &Option<PolicyEntry>, a: PolicyAction| e.is_some_and(|e| e.action == a as u8);
    for action in [PolicyAction::Deny, PolicyAction::Redirect] {
        if is(&specific, action) {
            return specific;
        }
        if is(&any, action) {
            return any;
        }
    }
    specific.or(any)
}

/// Looks up a service frontend for the packet's destination; on a hit picks
/// the connection's backend (recalled from conntrack, else at random among
/// the current ones), DNATs to it and records the frontend in the event
/// context. Returns the reverse-NAT index, 0 when the destination is no
/// service.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
fn service_translate(ctx: &TcContext, st: &mut State, now: u64) -> Result<u16, u8> {
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
            // SAFETY: as above.
            unsafe { (*entry).expires_ns = now + service_timeout(pkt) };
            backend = Some(b);
        }
    }
    let backend = match backend {
        Some(b) => b,
        None => {
            // New connection, or its backend was removed: choose again.
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
            st.entry = CtEntry {
                expires_ns: now + service_timeout(pkt),
                backend_id: slot.backend_id,
                rev_nat_index: frontend.rev_nat_index,
                ..CtEntry::default()
            };
            CONNTRACK
                .insert(&st.key, &st.entry, 0)
                .map_err(|_| drop_reason::CT_MAP_INSERTION_FAILED)?;
            b
        }
    };
    rewrite(ctx, pkt, false, &backend)?;
    Ok(frontend.rev_nat_index)
}

fn service_timeout(pkt: &Packet) -> u64 {
    if pkt.protocol == IPPROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

/// Rewrites the source (`source`) or destination address and port, fixing
/// the IPv4 header checksum and the L4 checksum (pseudo-header included).
fn rewrite(ctx: &TcContext, pkt: &mut Packet, source: bool, target: &L4Addr) -> Result<(), u8> {
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
    if pkt.family == FAMILY_IPV4 {
        let old = if source { pkt.saddr } else { pkt.daddr };
        let from = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]);
        let to = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let offset = ETH_HLEN + if source { 12 } else { 16 };
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(from), u64::from(to), 4)
            .map_err(|_| drop_reason::CSUM_L3)?;
        ctx.l4_csum_replace(pkt.csum_offset, u64::from(from), u64::from(to), pseudo | 4)
            .map_err(|_| drop_reason::CSUM_L4)?;
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
        ctx.l4_csum_replace(pkt.csum_offset, 0, diff as u64, pseudo)
            .map_err(|_| drop_reason::CSUM_L4)?;
        let offset = ETH_HLEN + if source { 8 } else { 24 };
        ctx.store(offset, &new, 0)
            .map_err(|_| drop_reason::WRITE_ERROR)?;
    }
    if old_port != port {
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
fn reset_client(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> Option<i32> {
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
    // SAFETY: the buffer is on this stack frame and at least sum_len bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            sum_len,
            0,
        )
    };
    let csum = !fold_csum(u64::from(sum as u32));
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
        // SAFETY: as above, 20 bytes.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr().cast(), 20, 0) };
        let csum = !fold_csum(u64::from(sum as u32));
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
fn unreachable_client(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> Option<i32> {
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
    // SAFETY: the buffer is on this stack frame and at least sum_len bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            sum_len,
            0,
        )
    };
    let csum = !fold_csum(u64::from(sum as u32));
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
        // SAFETY: as above, 20 bytes.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr().cast(), 20, 0) };
        let csum = !fold_csum(u64::from(sum as u32));
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

/// Folds a 32-bit one's-complement sum to 16 bits (network order in memory).
fn fold_csum(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Hands the packet's connection to the proxy listening on `proxy_port`
/// (reference/l7-redirect.md): the connection's own socket if the proxy
/// already has one (request or established), else the listener.
fn to_proxy(ctx: &TcContext, st: &mut State, proxy_port: u16, report: bool) -> i32 {
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

fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// A socket lookup tuple; `None` addresses look up a listener (any address).
fn sock_tuple(pkt: &Packet, exact: bool, dport: u16) -> (bpf_sock_tuple, u32) {
    let (saddr, daddr, sport) = if exact {
        (words(&pkt.saddr), words(&pkt.daddr), pkt.sport.to_be())
    } else {
        ([0; 4], [0; 4], 0)
    };
    // Zeroed first: the helper reads the whole union, and bytes an IPv4
    // tuple leaves unset would otherwise be uninitialised to the verifier.
    // SAFETY: bpf_sock_tuple is plain data; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    if pkt.family == FAMILY_IPV4 {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: saddr[0],
            daddr: daddr[0],
            sport,
            dport: dport.to_be(),
        };
        (tuple, 12)
    } else {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr,
            daddr,
            sport,
            dport: dport.to_be(),
        };
        (tuple, 36)
    }
}

fn assign_to_proxy(ctx: &TcContext, pkt: &Packet, proxy_port: u16) -> Result<(), u8> {
    let (mut tuple, size) = sock_tuple(pkt, true, pkt.dport);
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
        let (mut listener, _) = sock_tuple(pkt, false, proxy_port);
        // SAFETY: as above.
        sk = unsafe { bpf_skc_lookup_tcp(skb, &mut listener, size, BPF_F_CURRENT_NETNS as u64, 0) };
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

/// The [`PROXY_LISTENERS`] key of the proxy's listener for `family` on `port`.
fn listener_key(family: u8, port: u16) -> u32 {
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

/// Reports and drops a packet whose IP header could not be parsed: the
/// event carries no addresses.
fn drop_unparsed(ctx: &TcContext, st: &mut State, point: ObservationPoint, reason: u8) -> i32 {
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

fn drop_packet(
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
fn deny(
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

fn emit_verdict(
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
fn emit(ctx: &TcContext, st: &State, out: &Outcome) {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel requires a GPL-compatible license for the helpers these programs use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
