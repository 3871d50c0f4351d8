//! Policy decisions: security identities of addresses, the LPM lookups of
//! an endpoint's rules, and the verdict events of a decision.

use crate::endpoints::{ENDPOINTS_BY_IP, ip_key};
use crate::events::{Outcome, drop_with_verdict, emit};
use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, Packet};
use crate::state::State;
use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie};
use aya_ebpf::programs::TcContext;
use myelin_common::maps::{
    FAMILY_IPV4, POLICY_FLAG_EGRESS, POLICY_FLAG_INGRESS, POLICY_PREFIX_FULL,
};
use myelin_common::{
    Direction, EndpointPolicy, EventKind, IpcacheEntry, IpcacheKey, ObservationPoint, PolicyAction,
    PolicyEntry, PolicyKey, TrafficDirection, Verdict, drop_reason,
};

/// The reserved identity of addresses outside the cluster (and of senders
/// whose identity is not known).
pub(crate) const IDENTITY_WORLD: u32 = 2;

/// A policy decision for one direction.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) enforced: bool,
    /// PolicyAction as u8, 0 when no entry matched.
    pub(crate) action: u8,
    pub(crate) match_type: u8,
    pub(crate) proxy_port: u16,
    pub(crate) rule_id: u32,
}

impl Decision {
    pub(crate) const OPEN: Decision = Decision {
        enforced: false,
        action: PolicyAction::Allow as u8,
        match_type: 0,
        proxy_port: 0,
        rule_id: 0,
    };

    /// The drop reason when the decision denies, else 0.
    pub(crate) fn drop_reason(&self) -> u8 {
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

    pub(crate) fn verdict(&self) -> Verdict {
        if self.drop_reason() != 0 {
            Verdict::Dropped
        } else if self.action == PolicyAction::Redirect as u8 {
            Verdict::Redirected
        } else {
            Verdict::Forwarded
        }
    }

    /// The policy-verdict event of this decision, taken at `point` for the
    /// endpoint's `direction`.
    fn verdict_event(&self, point: ObservationPoint, direction: TrafficDirection) -> Outcome {
        Outcome {
            kind: EventKind::PolicyVerdict,
            point,
            verdict: self.verdict(),
            drop_reason: self.drop_reason(),
            direction: direction as u8,
            match_type: self.match_type,
            proxy_port: self.proxy_port,
            rule_id: self.rule_id,
        }
    }
}

/// Drops a new flow the policy denies, reporting the policy verdict and the
/// drop (every time, as any drop: a denied flow has no conntrack entry to
/// aggregate its reports).
pub(crate) fn deny(
    ctx: &TcContext,
    st: &State,
    point: ObservationPoint,
    decision: &Decision,
    direction: TrafficDirection,
) -> i32 {
    drop_with_verdict(ctx, st, &decision.verdict_event(point, direction))
}

/// Reports the policy verdict of a new flow the policy lets through.
pub(crate) fn emit_verdict(
    ctx: &TcContext,
    st: &State,
    point: ObservationPoint,
    decision: &Decision,
    direction: TrafficDirection,
) {
    emit(ctx, st, &decision.verdict_event(point, direction));
}

pub(crate) fn policy_revision() -> u32 {
    POLICY_REVISION.get(0).copied().unwrap_or(0)
}

/// Security identity of an address: a local endpoint, else the ipcache's
/// longest prefix, else world.
pub(crate) fn identity_of(family: u8, addr: &[u8; 16]) -> u32 {
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
pub(crate) fn decide(endpoint_id: u32, direction: Direction, peer: u32, pkt: &Packet) -> Decision {
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

/// Policy generation and enforcement per endpoint id.
#[map(name = "MYELIN_EP_POLICY")]
pub(crate) static ENDPOINT_POLICY: HashMap<u32, EndpointPolicy> = HashMap::pinned(16384, 0);

/// Policy entries; LPM so protocol and port ranges are prefixes.
#[map(name = "MYELIN_POLICY")]
pub(crate) static POLICY: LpmTrie<PolicyKey, PolicyEntry> =
    LpmTrie::pinned(262144, BPF_F_NO_PREALLOC);

/// Prefix → identity.
#[map(name = "MYELIN_IPCACHE")]
pub(crate) static IPCACHE: LpmTrie<IpcacheKey, IpcacheEntry> =
    LpmTrie::pinned(65536, BPF_F_NO_PREALLOC);

/// The policy revision (index 0), bumped by the agent on every policy
/// change: flows decided under an older revision are checked again.
#[map(name = "MYELIN_POLICY_REV")]
pub(crate) static POLICY_REVISION: Array<u32> = Array::pinned(1, 0);

/// LPM tries must be created without preallocation.
const BPF_F_NO_PREALLOC: u32 = 1;
