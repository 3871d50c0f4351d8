//! ICMP errors related to tracked flows: they pass (reverse-NAT'd when they
//! concern a pod's service connection); others are policed like new flows.

use crate::conntrack::quoted_flow;
use crate::events::{Outcome, drop_packet, emit};
use crate::policy::{decide, identity_of};
use crate::service::rev_nat_error;
use crate::state::State;
use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::programs::TcContext;
use myelin_common::event::EVENT_FLAG_RELATED;
use myelin_common::{Direction, ObservationPoint};

/// An ICMP error passes when it quotes a packet of a tracked flow (in either
/// scope, either way round); otherwise it is policed as ICMP with no port,
/// like a new flow: an endpoint that enforces needs an ICMP rule for it. An
/// error about a pod's connection to a service is reverse-NAT'd like the
/// replies, so the pod's socket recognises it.
// A separate BPF function: its locals get their own frame instead of
// adding to the caller's 512 bytes.
#[inline(never)]
pub(crate) fn related_error(ctx: &TcContext, st: &mut State, point: ObservationPoint) -> i32 {
    // SAFETY: the program's own monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let related = quoted_flow(&mut st.key, &st.pkt, now);
    st.meta.src_identity = identity_of(st.pkt.family, &st.pkt.saddr);
    st.meta.dst_identity = identity_of(st.pkt.family, &st.pkt.daddr);
    if let Some(rev_nat_index) = related {
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
