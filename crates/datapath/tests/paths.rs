//! The kernel programs' decisions on crafted frames (BPF_PROG_TEST_RUN):
//! conntrack, replies, services (DNAT, reverse NAT, checksums), policy,
//! anti-spoofing, ICMP, malformed input, and the events each one reports.
//! The test pod is registered on ifindex 1, where test runs execute.

mod support;

use std::net::SocketAddr;

use aya::maps::MapData;
use myelin_common::event::{
    EVENT_FLAG_FRAGMENT, EVENT_FLAG_FROM_PROXY, EVENT_FLAG_RELATED, EVENT_FLAG_REPLY,
    EVENT_FLAG_SERVICE,
};
use myelin_common::maps::{DROP_EVENT_BURST, names};
use myelin_common::{AffinityEntry, AffinityKey};
use myelin_datapath::{
    CtScope, EventKind, ObservationPoint, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
    PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service, ServiceProtocol, TraceEvent,
    TrafficDirection, Verdict, drop_reason,
};
use myelin_test_support::privileged;
use support::*;

const PEER_IDENTITY: u32 = 2002;

fn kind(e: &TraceEvent) -> Option<EventKind> {
    EventKind::from_u8(e.kind)
}

fn find(events: &[TraceEvent], k: EventKind) -> TraceEvent {
    *events
        .iter()
        .find(|e| kind(e) == Some(k))
        .unwrap_or_else(|| panic!("no {k:?} event in {events:#?}"))
}

fn rule(
    direction: PolicyDirection,
    peer: u32,
    protocol: u8,
    ports: Option<(u16, u16)>,
    action: RuleAction,
    rule_id: u32,
) -> PolicyRule {
    PolicyRule {
        direction,
        peer_identity: peer,
        protocol,
        ports,
        action,
        rule_id,
    }
}

fn egress_policy(rules: Vec<PolicyRule>) -> PolicyTable {
    PolicyTable {
        ingress_enforced: false,
        egress_enforced: true,
        rules,
    }
}

fn ingress_policy(rules: Vec<PolicyRule>) -> PolicyTable {
    PolicyTable {
        ingress_enforced: true,
        egress_enforced: false,
        rules,
    }
}

/// A harness whose pod talks to a peer 10.244.2.7 of identity PEER_IDENTITY.
fn harness() -> Harness {
    let mut h = Harness::with_pod();
    h.datapath
        .ipcache_upsert(ip("10.244.2.0"), 24, PEER_IDENTITY)
        .expect("ipcache v4");
    h.datapath
        .ipcache_upsert(ip("fd00:10:244:2::"), 64, PEER_IDENTITY)
        .expect("ipcache v6");
    h
}

#[tokio::test]
async fn a_new_tcp_flow_is_tracked_and_its_established_packets_aggregated() {
    if !privileged("a_new_tcp_flow_is_tracked_and_its_established_packets_aggregated") {
        return;
    }
    let mut h = harness();
    let syn = Pkt::tcp(POD_V4, 40000, "10.244.2.7", 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_OK);
    let trace = find(&events, EventKind::Trace);
    assert_eq!(
        ObservationPoint::from_u8(trace.observation_point),
        Some(ObservationPoint::ToStack)
    );
    assert_eq!(trace.endpoint_id, POD_ENDPOINT);
    assert_eq!(
        (trace.source_identity, trace.destination_identity),
        (POD_IDENTITY, PEER_IDENTITY)
    );
    assert_eq!((trace.source_port, trace.destination_port), (40000, 80));
    assert_eq!(trace.tcp_flags, SYN);
    assert_eq!(trace.verdict, Verdict::Forwarded as u8);
    // No policy installed: no policy-verdict event.
    assert!(
        events
            .iter()
            .all(|e| kind(e) != Some(EventKind::PolicyVerdict))
    );

    let ct = h.datapath.conntrack().expect("conntrack");
    let entry = ct
        .iter()
        .find(|c| c.scope == CtScope::Egress && c.destination.port() == 80)
        .expect("an egress entry");
    assert_eq!(entry.peer_identity, PEER_IDENTITY);
    assert!(entry.expires_in.is_some());

    // Same flags again: aggregated, no event.
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert!(
        events.is_empty(),
        "a repeated SYN is aggregated: {events:?}"
    );
    // A new flag (ACK) is reported.
    let ack = Pkt::tcp(POD_V4, 40000, "10.244.2.7", 80, ACK).build();
    let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &ack).await;
    assert_eq!(events.len(), 1);
    let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &ack).await;
    assert!(events.is_empty(), "established packets are aggregated");
    assert_eq!(h.datapath.conntrack_gc().expect("gc"), 0, "nothing expired");
}

#[tokio::test]
async fn replies_of_an_allowed_flow_pass_without_a_policy_lookup() {
    if !privileged("replies_of_an_allowed_flow_pass_without_a_policy_lookup") {
        return;
    }
    let mut h = harness();
    // Ingress enforced with no rule: only replies may come in.
    h.datapath
        .replace_policy(POD_ENDPOINT, &ingress_policy(vec![]))
        .expect("policy");
    let syn = Pkt::tcp(POD_V4, 40001, "10.244.2.7", 443, SYN).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &syn).await.0, TC_ACT_OK);
    let syn_ack = Pkt::tcp("10.244.2.7", 443, POD_V4, 40001, SYN_ACK).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &syn_ack).await;
    assert_eq!(verdict, TC_ACT_OK);
    let trace = find(&events, EventKind::Trace);
    assert_ne!(trace.flags & EVENT_FLAG_REPLY, 0);
    assert_eq!(
        ObservationPoint::from_u8(trace.observation_point),
        Some(ObservationPoint::ToEndpoint)
    );
    assert_eq!(trace.source_identity, PEER_IDENTITY);
    assert!(
        events
            .iter()
            .all(|e| kind(e) != Some(EventKind::PolicyVerdict))
    );
    // A new connection from the same peer is not a reply: denied.
    let other = Pkt::tcp("10.244.2.7", 5555, POD_V4, 22, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &other).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    let drop = find(&events, EventKind::Drop);
    assert_eq!(drop.drop_reason, drop_reason::POLICY_DENIED);
    let pv = find(&events, EventKind::PolicyVerdict);
    assert_eq!(pv.traffic_direction, TrafficDirection::Ingress as u8);
    assert_eq!(pv.verdict, Verdict::Dropped as u8);
    // FIN both ways closes the entry to the short timeout.
    let fin = Pkt::tcp(POD_V4, 40001, "10.244.2.7", 443, FIN_ACK).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &fin).await.0, TC_ACT_OK);
    let fin_back = Pkt::tcp("10.244.2.7", 443, POD_V4, 40001, FIN_ACK).build();
    assert_eq!(h.run(PROGRAM_TO_CONTAINER, &fin_back).await.0, TC_ACT_OK);
    let ct = h.datapath.conntrack().expect("conntrack");
    let entry = ct
        .iter()
        .find(|c| c.destination.port() == 443)
        .expect("entry");
    assert!(entry.replied);
    assert!(
        entry.expires_in.expect("live") <= std::time::Duration::from_secs(10),
        "closing timeout"
    );
    // The same tuple reused by a new connection starts afresh.
    let again = Pkt::tcp(POD_V4, 40001, "10.244.2.7", 443, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &again).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(find(&events, EventKind::Trace).tcp_flags, SYN, "reported");
    let ct = h.datapath.conntrack().expect("conntrack");
    let entry = ct
        .iter()
        .find(|c| c.scope == CtScope::Egress && c.destination.port() == 443)
        .expect("entry");
    assert!(!entry.closing && !entry.replied);
    assert!(entry.expires_in.expect("live") > std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn a_forged_source_address_is_dropped() {
    if !privileged("a_forged_source_address_is_dropped") {
        return;
    }
    let mut h = harness();
    for frame in [
        Pkt::tcp("10.244.1.99", 1234, "10.244.2.7", 80, SYN).build(),
        Pkt::udp("fd00:10:244:1::99", 1234, "fd00:10:244:2::7", 53).build(),
    ] {
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &frame).await;
        assert_eq!(verdict, TC_ACT_SHOT);
        let drop = find(&events, EventKind::Drop);
        assert_eq!(drop.drop_reason, drop_reason::INVALID_SOURCE_IP);
        assert_eq!(drop.verdict, Verdict::Dropped as u8);
    }
    // Neighbour discovery from the link-local address passes.
    let ns = Pkt::echo("fe80::5", "ff02::1:ff00:1", 0, false);
    let ns = Pkt {
        icmp: (135, 0),
        ..ns
    }
    .build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &ns).await.0, TC_ACT_OK);
}

/// The direction Hubble gives each event, as Cilium's: policy verdicts
/// and policy drops the policy side's, other drops the packet's at the
/// endpoint (egress leaving it, ingress entering it), traces their
/// connection's (a reply its flow's).
#[tokio::test]
async fn events_carry_their_traffic_direction() {
    if !privileged("events_carry_their_traffic_direction") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &PolicyTable {
                ingress_enforced: true,
                egress_enforced: true,
                rules: vec![
                    rule(
                        PolicyDirection::Egress,
                        PEER_IDENTITY,
                        TCP,
                        Some((80, 80)),
                        RuleAction::Allow,
                        1,
                    ),
                    rule(
                        PolicyDirection::Ingress,
                        PEER_IDENTITY,
                        TCP,
                        Some((8080, 8080)),
                        RuleAction::Allow,
                        2,
                    ),
                ],
            },
        )
        .expect("policy");
    let egress = TrafficDirection::Egress as u8;
    let ingress = TrafficDirection::Ingress as u8;
    let direction = |events: &[TraceEvent], k: EventKind| find(events, k).traffic_direction;

    // The pod's own connection: egress, its reply too.
    let syn = Pkt::tcp(POD_V4, 40000, "10.244.2.7", 80, SYN).build();
    let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(direction(&events, EventKind::PolicyVerdict), egress);
    assert_eq!(direction(&events, EventKind::Trace), egress);
    let syn_ack = Pkt::tcp("10.244.2.7", 80, POD_V4, 40000, SYN_ACK).build();
    let (_, _, events) = h.run(PROGRAM_TO_CONTAINER, &syn_ack).await;
    let reply = find(&events, EventKind::Trace);
    assert_ne!(reply.flags & EVENT_FLAG_REPLY, 0);
    assert_eq!(reply.traffic_direction, egress, "a reply is its flow's");

    // A connection into the pod: ingress, the pod's answer too.
    let syn = Pkt::tcp("10.244.2.7", 50000, POD_V4, 8080, SYN).build();
    let (_, _, events) = h.run(PROGRAM_TO_CONTAINER, &syn).await;
    assert_eq!(direction(&events, EventKind::PolicyVerdict), ingress);
    assert_eq!(direction(&events, EventKind::Trace), ingress);
    let syn_ack = Pkt::tcp(POD_V4, 8080, "10.244.2.7", 50000, SYN_ACK).build();
    let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn_ack).await;
    let reply = find(&events, EventKind::Trace);
    assert_ne!(reply.flags & EVENT_FLAG_REPLY, 0);
    assert_eq!(reply.traffic_direction, ingress, "a reply is its flow's");

    // Policy drops: the policy side, the drop as its verdict.
    let denied_out = Pkt::tcp(POD_V4, 40001, "10.244.2.7", 81, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &denied_out).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(direction(&events, EventKind::PolicyVerdict), egress);
    assert_eq!(direction(&events, EventKind::Drop), egress);
    let denied_in = Pkt::tcp("10.244.2.7", 50001, POD_V4, 8081, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &denied_in).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(direction(&events, EventKind::PolicyVerdict), ingress);
    assert_eq!(direction(&events, EventKind::Drop), ingress);

    // Other drops: the packet's at the pod.
    let spoofed = Pkt::tcp("10.244.1.99", 40002, "10.244.2.7", 80, SYN).build();
    let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &spoofed).await;
    let drop = find(&events, EventKind::Drop);
    assert_eq!(drop.drop_reason, drop_reason::INVALID_SOURCE_IP);
    assert_eq!(drop.traffic_direction, egress);
    let mut truncated = Pkt::tcp("10.244.2.7", 50002, POD_V4, 8080, SYN).build();
    truncated.truncate(14 + 20 + 4);
    let (_, _, events) = h.run(PROGRAM_TO_CONTAINER, &truncated).await;
    let drop = find(&events, EventKind::Drop);
    assert_eq!(
        drop.drop_reason,
        drop_reason::CT_TRUNCATED_OR_INVALID_HEADER
    );
    assert_eq!(drop.traffic_direction, ingress);
}

#[tokio::test]
async fn egress_policy_allow_deny_deny_wins_ranges_and_wildcards() {
    if !privileged("egress_policy_allow_deny_deny_wins_ranges_and_wildcards") {
        return;
    }
    let mut h = harness();
    let e = PolicyDirection::Egress;
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &egress_policy(vec![
                rule(e, PEER_IDENTITY, TCP, Some((80, 80)), RuleAction::Allow, 11),
                rule(
                    e,
                    PEER_IDENTITY,
                    TCP,
                    Some((8000, 8100)),
                    RuleAction::Allow,
                    12,
                ),
                // Any peer, UDP 53.
                rule(e, 0, UDP, Some((53, 53)), RuleAction::Allow, 13),
                // Deny TCP 8080 to anyone: wins over the range above.
                rule(e, 0, TCP, Some((8080, 8080)), RuleAction::Deny, 14),
            ]),
        )
        .expect("policy");
    let cases: [(Pkt, i32, u8, u32, u8); 6] = [
        (
            Pkt::tcp(POD_V4, 41000, "10.244.2.7", 80, SYN),
            TC_ACT_OK,
            0,
            11,
            2,
        ),
        (
            Pkt::tcp(POD_V4, 41001, "10.244.2.7", 8050, SYN),
            TC_ACT_OK,
            0,
            12,
            2,
        ),
        (
            Pkt::tcp(POD_V4, 41002, "10.244.2.7", 8101, SYN),
            TC_ACT_SHOT,
            drop_reason::POLICY_DENIED,
            0,
            0,
        ),
        (
            Pkt::tcp(POD_V4, 41003, "10.244.2.7", 8080, SYN),
            TC_ACT_SHOT,
            drop_reason::POLICY_DENY,
            14,
            3,
        ),
        (Pkt::udp(POD_V4, 41004, "10.9.9.9", 53), TC_ACT_OK, 0, 13, 3),
        (
            Pkt::udp(POD_V6, 41005, "fd00:10:244:2::7", 54),
            TC_ACT_SHOT,
            drop_reason::POLICY_DENIED,
            0,
            0,
        ),
    ];
    for (pkt, want, reason, rule_id, match_type) in cases {
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &pkt.build()).await;
        assert_eq!(verdict, want, "{pkt:?}");
        let pv = find(&events, EventKind::PolicyVerdict);
        assert_eq!(pv.traffic_direction, TrafficDirection::Egress as u8);
        assert_eq!(pv.rule_id, rule_id, "{pkt:?}");
        assert_eq!(pv.match_type, match_type, "{pkt:?}");
        if want == TC_ACT_SHOT {
            assert_eq!(
                find(&events, EventKind::Drop).drop_reason,
                reason,
                "{pkt:?}"
            );
            assert_eq!(pv.verdict, Verdict::Dropped as u8);
        } else {
            assert_eq!(pv.verdict, Verdict::Forwarded as u8);
        }
    }
}

#[tokio::test]
async fn a_wider_deny_beats_a_narrower_allow_of_the_same_peer() {
    if !privileged("a_wider_deny_beats_a_narrower_allow_of_the_same_peer") {
        return;
    }
    let mut h = harness();
    let e = PolicyDirection::Egress;
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &egress_policy(vec![
                rule(e, PEER_IDENTITY, TCP, Some((80, 80)), RuleAction::Allow, 1),
                rule(e, PEER_IDENTITY, 0, None, RuleAction::Deny, 2),
            ]),
        )
        .expect("policy");
    let syn = Pkt::tcp(POD_V4, 42000, "10.244.2.7", 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    let drop = find(&events, EventKind::Drop);
    assert_eq!(
        (drop.drop_reason, drop.rule_id),
        (drop_reason::POLICY_DENY, 2)
    );
}

#[tokio::test]
async fn enforcement_off_is_allow_all_and_replacing_policy_flips_generations() {
    if !privileged("enforcement_off_is_allow_all_and_replacing_policy_flips_generations") {
        return;
    }
    let mut h = harness();
    let deny_all = egress_policy(vec![]);
    h.datapath
        .replace_policy(POD_ENDPOINT, &deny_all)
        .expect("policy");
    let syn = Pkt::tcp(POD_V4, 43000, "10.244.2.7", 80, SYN).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &syn).await.0, TC_ACT_SHOT);
    // Same rules, enforcement off: everything passes, no verdict events.
    let open = PolicyTable {
        egress_enforced: false,
        rules: vec![rule(
            PolicyDirection::Egress,
            9,
            TCP,
            Some((1, 1)),
            RuleAction::Allow,
            1,
        )],
        ..PolicyTable::default()
    };
    h.datapath
        .replace_policy(POD_ENDPOINT, &open)
        .expect("policy");
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert!(
        events
            .iter()
            .all(|e| kind(e) != Some(EventKind::PolicyVerdict))
    );
    let endpoints = h.datapath.endpoints().expect("endpoints");
    let ep = endpoints
        .iter()
        .find(|e| e.endpoint_id == POD_ENDPOINT)
        .expect("the pod");
    assert_eq!(ep.policy_generation, 2);
    assert!(!ep.egress_enforced);
    // Only the new generation's entries remain.
    let policy = h.datapath.policy(POD_ENDPOINT).expect("policy");
    assert_eq!(policy.len(), 1);
    assert_eq!(policy[0].peer_identity, 9);
    // Removing the endpoint removes its policy.
    h.datapath.delete_endpoint(TEST_IFINDEX).expect("delete");
    assert!(h.datapath.policy(POD_ENDPOINT).expect("policy").is_empty());
    assert!(h.datapath.endpoints().expect("endpoints").is_empty());
}

#[tokio::test]
async fn ingress_uses_the_ipcache_identity_and_the_proxy_mark() {
    if !privileged("ingress_uses_the_ipcache_identity_and_the_proxy_mark") {
        return;
    }
    let mut h = harness();
    let i = PolicyDirection::Ingress;
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &ingress_policy(vec![rule(
                i,
                PEER_IDENTITY,
                TCP,
                Some((80, 80)),
                RuleAction::Allow,
                21,
            )]),
        )
        .expect("policy");
    let from_peer = Pkt::tcp("10.244.2.7", 50000, POD_V4, 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &from_peer).await;
    assert_eq!(verdict, TC_ACT_OK);
    let pv = find(&events, EventKind::PolicyVerdict);
    assert_eq!((pv.rule_id, pv.source_identity), (21, PEER_IDENTITY));
    // From the world: denied.
    let from_world = Pkt::tcp("192.0.2.1", 50000, POD_V4, 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &from_world).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(find(&events, EventKind::Drop).source_identity, 2);
    // The proxy's upstream, from the node's address, acting for the peer.
    let from_proxy = Pkt::tcp("192.0.2.1", 50001, POD_V4, 80, SYN).build();
    let mark = 0xb00 | (PEER_IDENTITY << 16);
    let (verdict, _, events) = h.run_marked(PROGRAM_TO_CONTAINER, &from_proxy, mark).await;
    assert_eq!(verdict, TC_ACT_OK);
    let trace = find(&events, EventKind::Trace);
    assert_eq!(trace.source_identity, PEER_IDENTITY);
    assert_ne!(trace.flags & EVENT_FLAG_FROM_PROXY, 0);
}

/// A request through the proxy is reported once: the client's connection
/// has its policy verdict (redirected) where it leaves the client; the
/// proxy's upstream connection to the pod, with the proxy's mark, has its
/// trace (flagged from-proxy) but no second verdict.
#[tokio::test]
async fn the_proxys_upstream_connection_reports_no_second_policy_verdict() {
    if !privileged("the_proxys_upstream_connection_reports_no_second_policy_verdict") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &ingress_policy(vec![
                rule(
                    PolicyDirection::Ingress,
                    PEER_IDENTITY,
                    TCP,
                    Some((80, 80)),
                    RuleAction::Redirect { proxy_port: 15001 },
                    71,
                ),
                rule(
                    PolicyDirection::Ingress,
                    PEER_IDENTITY,
                    TCP,
                    Some((8080, 8080)),
                    RuleAction::Allow,
                    72,
                ),
            ]),
        )
        .expect("policy");
    let mark = 0xb00 | (PEER_IDENTITY << 16);
    // Upstream connections for a redirect rule and for an allow rule (the
    // client's egress was redirected): neither is a new decision.
    for (port, sport) in [(80, 53000), (8080, 53001)] {
        let upstream = Pkt::tcp("10.244.2.7", sport, POD_V4, port, SYN).build();
        let (verdict, _, events) = h.run_marked(PROGRAM_TO_CONTAINER, &upstream, mark).await;
        assert_eq!(verdict, TC_ACT_OK);
        assert!(
            events
                .iter()
                .all(|e| kind(e) != Some(EventKind::PolicyVerdict)),
            "port {port}: {events:?}"
        );
        let trace = find(&events, EventKind::Trace);
        assert_ne!(trace.flags & EVENT_FLAG_FROM_PROXY, 0);
        assert_eq!(trace.source_identity, PEER_IDENTITY);
    }
    // Without the mark the same connection is the client's own: its verdict.
    let direct = Pkt::tcp("10.244.2.7", 53002, POD_V4, 8080, SYN).build();
    let (_, _, events) = h.run(PROGRAM_TO_CONTAINER, &direct).await;
    let pv = find(&events, EventKind::PolicyVerdict);
    assert_eq!((pv.verdict, pv.rule_id), (Verdict::Forwarded as u8, 72));
    // A proxy connection the policy denies is still reported, verdict and drop.
    let denied = Pkt::tcp("10.244.2.7", 53003, POD_V4, 9090, SYN).build();
    let (verdict, _, events) = h.run_marked(PROGRAM_TO_CONTAINER, &denied, mark).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::PolicyVerdict).verdict,
        Verdict::Dropped as u8
    );
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::POLICY_DENIED
    );
}

#[tokio::test]
async fn ipv4_tcp_service_is_dnated_and_replies_reverse_nated_with_valid_checksums() {
    if !privileged("ipv4_tcp_service_is_dnated_and_replies_reverse_nated_with_valid_checksums") {
        return;
    }
    let mut h = harness();
    let vip: SocketAddr = "10.96.0.10:80".parse().expect("vip");
    let backend: SocketAddr = "10.244.2.7:8080".parse().expect("backend");
    let record = h
        .datapath
        .upsert_service(&Service {
            frontend: vip,
            protocol: ServiceProtocol::Tcp,
            backends: vec![backend],
            affinity_timeout_s: None,
        })
        .expect("service");
    assert_eq!(record.backends.len(), 1);
    let syn = Pkt::tcp(POD_V4, 44000, "10.96.0.10", 80, SYN)
        .with_payload(b"hello")
        .build();
    let (verdict, out, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        tuple(&out),
        (ip(POD_V4), ip("10.244.2.7"), 44000, 8080),
        "DNAT to the backend"
    );
    assert!(checksums_valid(&out), "IPv4 and TCP checksums after DNAT");
    let trace = find(&events, EventKind::Trace);
    assert_ne!(trace.flags & EVENT_FLAG_SERVICE, 0);
    assert_eq!(&trace.service_address[..4], &[10, 96, 0, 10]);
    assert_eq!(trace.service_port, 80);
    assert_eq!(trace.destination_port, 8080);
    assert_eq!(trace.destination_identity, PEER_IDENTITY);

    let reply = Pkt::tcp("10.244.2.7", 8080, POD_V4, 44000, SYN_ACK)
        .with_payload(b"world")
        .build();
    let (verdict, out, events) = h.run(PROGRAM_TO_CONTAINER, &reply).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        tuple(&out),
        (ip("10.96.0.10"), ip(POD_V4), 80, 44000),
        "reverse NAT to the VIP"
    );
    assert!(checksums_valid(&out), "checksums after reverse NAT");
    let trace = find(&events, EventKind::Trace);
    assert_ne!(trace.flags & EVENT_FLAG_REPLY, 0);
    assert_ne!(trace.flags & EVENT_FLAG_SERVICE, 0);

    // IPv4 options before TCP: the same translation, checksums still right.
    let mut with_options = Pkt::tcp(POD_V4, 44001, "10.96.0.10", 80, SYN);
    with_options.ip_options = vec![1, 1, 1, 0];
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &with_options.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple(&out), (ip(POD_V4), ip("10.244.2.7"), 44001, 8080));
    assert!(checksums_valid(&out), "checksums with IPv4 options");

    let services = h.datapath.services().expect("services");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].frontend, vip);
    h.datapath
        .delete_service(vip, ServiceProtocol::Tcp)
        .expect("delete");
    assert!(h.datapath.services().expect("services").is_empty());
}

#[tokio::test]
async fn ipv6_udp_service_is_translated_both_ways() {
    if !privileged("ipv6_udp_service_is_translated_both_ways") {
        return;
    }
    let mut h = harness();
    let vip: SocketAddr = "[fd00:10:96::a]:53".parse().expect("vip");
    let backend: SocketAddr = "[fd00:10:244:2::7]:5353".parse().expect("backend");
    h.datapath
        .upsert_service(&Service {
            frontend: vip,
            protocol: ServiceProtocol::Udp,
            backends: vec![backend],
            affinity_timeout_s: None,
        })
        .expect("service");
    let query = Pkt::udp(POD_V6, 45000, "fd00:10:96::a", 53)
        .with_payload(b"query")
        .build();
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &query).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        tuple(&out),
        (ip(POD_V6), ip("fd00:10:244:2::7"), 45000, 5353)
    );
    assert!(checksums_valid(&out), "UDP checksum after IPv6 DNAT");
    let answer = Pkt::udp("fd00:10:244:2::7", 5353, POD_V6, 45000)
        .with_payload(b"answer!")
        .build();
    let (verdict, out, _) = h.run(PROGRAM_TO_CONTAINER, &answer).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple(&out), (ip("fd00:10:96::a"), ip(POD_V6), 53, 45000));
    assert!(checksums_valid(&out), "UDP checksum after IPv6 reverse NAT");
}

#[tokio::test]
async fn backends_are_sticky_and_removing_one_disturbs_only_its_connections() {
    if !privileged("backends_are_sticky_and_removing_one_disturbs_only_its_connections") {
        return;
    }
    let mut h = harness();
    let vip: SocketAddr = "10.96.0.20:80".parse().expect("vip");
    let a: SocketAddr = "10.244.2.7:80".parse().expect("a");
    let b: SocketAddr = "10.244.2.8:80".parse().expect("b");
    let service = |backends: Vec<SocketAddr>| Service {
        frontend: vip,
        protocol: ServiceProtocol::Tcp,
        backends,
        affinity_timeout_s: None,
    };
    h.datapath
        .upsert_service(&service(vec![a, b]))
        .expect("service");
    // Many connections: each sticks to its first choice; both backends used.
    let mut chosen = Vec::new();
    for port in 46000..46032u16 {
        let syn = Pkt::tcp(POD_V4, port, "10.96.0.20", 80, SYN).build();
        let (_, out, _) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        let first = tuple(&out).1;
        let (_, out, _) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        assert_eq!(tuple(&out).1, first, "sticky");
        chosen.push((port, first));
    }
    assert!(chosen.iter().any(|(_, d)| *d == a.ip()));
    assert!(chosen.iter().any(|(_, d)| *d == b.ip()));
    // Remove b: a's connections stay on a, b's move to a.
    let record = h
        .datapath
        .upsert_service(&service(vec![a]))
        .expect("update");
    assert_eq!(record.backends.len(), 1);
    for (port, before) in chosen {
        let ack = Pkt::tcp(POD_V4, port, "10.96.0.20", 80, ACK).build();
        let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &ack).await;
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(tuple(&out).1, a.ip(), "was {before}");
    }
}

/// The session affinity map, opened from its pin as another process would:
/// the tests read the kernel's entries and age them.
fn affinity_map(h: &Harness) -> aya::maps::HashMap<MapData, AffinityKey, AffinityEntry> {
    let pin = h.datapath.pin_dir().join("maps").join(names::AFFINITY);
    let data = MapData::from_pin(&pin).expect("the affinity map is pinned");
    let map = aya::maps::Map::from_map_data(data).expect("a map");
    aya::maps::HashMap::try_from(map).expect("a hash map of affinity entries")
}

fn affinity_key(client: &str, rev_nat_index: u16) -> AffinityKey {
    let std::net::IpAddr::V4(v4) = ip(client) else {
        panic!("an IPv4 client")
    };
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&v4.octets());
    AffinityKey {
        client: addr,
        rev_nat_index,
        family: 4,
        _pad: 0,
    }
}

/// A new TCP connection from `client:port` to 10.96.0.40:80; the backend
/// address it was translated to.
async fn connect(h: &mut Harness, client: &str, port: u16) -> std::net::IpAddr {
    let syn = Pkt::tcp(client, port, "10.96.0.40", 80, SYN).build();
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_OK, "{client}:{port}");
    tuple(&out).1
}

#[tokio::test]
async fn client_ip_affinity_keeps_each_client_on_its_backend_until_stale_or_removed() {
    if !privileged("client_ip_affinity_keeps_each_client_on_its_backend_until_stale_or_removed") {
        return;
    }
    // No pod on the test interface: clients of any address pass
    // anti-spoofing, as traffic from the node does.
    let mut h = Harness::new();
    let vip: SocketAddr = "10.96.0.40:80".parse().expect("vip");
    let backends: Vec<SocketAddr> = (7..11)
        .map(|i| format!("10.244.2.{i}:8080").parse().expect("backend"))
        .collect();
    const TIMEOUT_S: u32 = 60;
    let service = |backends: Vec<SocketAddr>, affinity_timeout_s| Service {
        frontend: vip,
        protocol: ServiceProtocol::Tcp,
        backends,
        affinity_timeout_s,
    };
    let record = h
        .datapath
        .upsert_service(&service(backends.clone(), Some(TIMEOUT_S)))
        .expect("service");
    assert_eq!(record.affinity_timeout_s, Some(TIMEOUT_S));
    assert_eq!(
        h.datapath.services().expect("services")[0].affinity_timeout_s,
        Some(TIMEOUT_S),
        "read back from the frontend record"
    );
    let id_of = |address: std::net::IpAddr| {
        record
            .backends
            .iter()
            .find(|b| b.address.ip() == address)
            .map(|b| b.id)
            .expect("a backend of the service")
    };
    let key = affinity_key(POD_V4, record.rev_nat_index);

    // One client: every new connection goes to the backend of its first.
    let first = connect(&mut h, POD_V4, 48000).await;
    for port in 48001..48016 {
        assert_eq!(connect(&mut h, POD_V4, port).await, first, "port {port}");
    }
    let entry = affinity_map(&h).get(&key, 0).expect("the client's entry");
    assert_eq!(entry.backend_id, id_of(first));
    // Other clients each keep theirs, and are spread over the backends.
    let mut seen = std::collections::BTreeSet::new();
    for i in 20..52u16 {
        let client = format!("10.244.1.{i}");
        let chosen = connect(&mut h, &client, 48100).await;
        assert_eq!(connect(&mut h, &client, 48101).await, chosen, "{client}");
        seen.insert(chosen);
    }
    assert!(seen.len() > 1, "clients spread over the backends: {seen:?}");

    // A fresh entry is followed (wherever it points) and refreshed on use.
    let other = backends
        .iter()
        .map(SocketAddr::ip)
        .find(|b| *b != first)
        .expect("another backend");
    let aged = entry.last_used_ns - u64::from(TIMEOUT_S / 2) * 1_000_000_000;
    let mut map = affinity_map(&h);
    map.insert(
        key,
        AffinityEntry {
            last_used_ns: aged,
            backend_id: id_of(other),
            _pad: 0,
        },
        0,
    )
    .expect("age the entry");
    assert_eq!(connect(&mut h, POD_V4, 48200).await, other, "fresh entry");
    let refreshed = map.get(&key, 0).expect("entry");
    assert_eq!(refreshed.backend_id, id_of(other));
    assert!(refreshed.last_used_ns > aged, "refreshed on use");

    // A stale entry (no new connection for longer than the timeout) is
    // ignored: the backend is picked at random, then remembered.
    let mut elsewhere = 0;
    for port in 48300..48308 {
        let stale = map.get(&key, 0).expect("entry").last_used_ns
            - u64::from(TIMEOUT_S + 1) * 1_000_000_000;
        map.insert(
            key,
            AffinityEntry {
                last_used_ns: stale,
                backend_id: id_of(other),
                _pad: 0,
            },
            0,
        )
        .expect("make the entry stale");
        let chosen = connect(&mut h, POD_V4, port).await;
        if chosen != other {
            elsewhere += 1;
        }
        let entry = map.get(&key, 0).expect("entry");
        assert_eq!(
            entry.backend_id,
            id_of(chosen),
            "the new choice is remembered"
        );
        assert!(entry.last_used_ns > stale);
    }
    // Each round picks `other` again with probability 1/4.
    assert!(elsewhere > 0, "a stale entry is not followed");

    // The client's backend leaves the service: its next connection goes to
    // a remaining backend, and no entry leads to the removed one.
    let current = connect(&mut h, POD_V4, 48400).await;
    let removed_id = id_of(current);
    let remaining: Vec<SocketAddr> = backends
        .iter()
        .copied()
        .filter(|b| b.ip() != current)
        .collect();
    h.datapath
        .upsert_service(&service(remaining.clone(), Some(TIMEOUT_S)))
        .expect("remove the client's backend");
    assert!(
        map.iter()
            .filter_map(Result::ok)
            .all(|(_, e)| e.backend_id != removed_id),
        "the removed backend's entries are gone"
    );
    let moved = connect(&mut h, POD_V4, 48401).await;
    assert_ne!(moved, current);
    assert!(remaining.iter().any(|b| b.ip() == moved));
    for port in 48402..48406 {
        assert_eq!(connect(&mut h, POD_V4, port).await, moved, "sticks again");
    }

    // Affinity switched off: the frontend's entries go, clients spread again.
    h.datapath
        .upsert_service(&service(remaining, None))
        .expect("no affinity");
    assert_eq!(
        h.datapath.services().expect("services")[0].affinity_timeout_s,
        None
    );
    assert!(
        map.iter()
            .filter_map(Result::ok)
            .all(|(k, _)| k.rev_nat_index != record.rev_nat_index),
        "no entry of the frontend is left"
    );
    let mut spread = std::collections::BTreeSet::new();
    for port in 48500..48532 {
        spread.insert(connect(&mut h, POD_V4, port).await);
    }
    assert!(
        spread.len() > 1,
        "without affinity one client spreads: {spread:?}"
    );
}

#[tokio::test]
async fn a_service_without_backends_refuses_tcp_and_udp_clients() {
    if !privileged("a_service_without_backends_refuses_tcp_and_udp_clients") {
        return;
    }
    let mut h = harness();
    for (vip, protocol) in [
        ("10.96.0.30:80", ServiceProtocol::Tcp),
        ("10.96.0.30:53", ServiceProtocol::Udp),
        ("[fd00:10:96::30]:80", ServiceProtocol::Tcp),
    ] {
        h.datapath
            .upsert_service(&Service {
                frontend: vip.parse().expect("vip"),
                protocol,
                backends: vec![],
                affinity_timeout_s: None,
            })
            .expect("service");
    }
    for (client, vip) in [(POD_V4, "10.96.0.30"), (POD_V6, "fd00:10:96::30")] {
        let syn = Pkt::tcp(client, 47000, vip, 80, SYN).build();
        let (verdict, out, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        assert_eq!(verdict, TC_ACT_REDIRECT, "the reset goes back to the pod");
        let drop = find(&events, EventKind::Drop);
        assert_eq!(drop.drop_reason, drop_reason::NO_SERVICE);
        assert_ne!(drop.flags & EVENT_FLAG_SERVICE, 0);
        assert_eq!(drop.service_port, 80);
        assert_eq!(tuple(&out), (ip(vip), ip(client), 80, 47000), "{client}");
        assert!(checksums_valid(&out), "reset checksums ({client})");
        let l4 = out.len() - 20;
        assert_eq!(out[l4 + 13], 0x14, "RST|ACK");
        assert_eq!(
            u32::from_be_bytes(out[l4 + 8..l4 + 12].try_into().expect("4 bytes")),
            1001,
            "acknowledges the SYN"
        );
        assert_eq!(&out[0..6], &syn[6..12], "MACs swapped");
    }
    // UDP: an ICMP port unreachable quoting the datagram, from the VIP.
    h.datapath
        .upsert_service(&Service {
            frontend: "[fd00:10:96::30]:53".parse().expect("vip"),
            protocol: ServiceProtocol::Udp,
            backends: vec![],
            affinity_timeout_s: None,
        })
        .expect("service");
    for (client, vip, proto, kind, code) in [
        (POD_V4, "10.96.0.30", ICMP, 3, 3),
        (POD_V6, "fd00:10:96::30", ICMPV6, 1, 4),
    ] {
        let query = Pkt::udp(client, 47001, vip, 53).with_payload(b"a dns query");
        let frame = query.build();
        let (verdict, out, events) = h.run(PROGRAM_FROM_CONTAINER, &frame).await;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{client}");
        assert_eq!(
            find(&events, EventKind::Drop).drop_reason,
            drop_reason::NO_SERVICE
        );
        let v4 = proto == ICMP;
        let ip_len = if v4 { 20 } else { 40 };
        let l4 = 14 + ip_len;
        assert_eq!(out[if v4 { 23 } else { 20 }], proto);
        assert_eq!((out[l4], out[l4 + 1]), (kind, code), "port unreachable");
        assert!(icmp_checksums_valid(&out), "ICMP checksums ({client})");
        // The quoted packet is the client's datagram as it sent it.
        assert_eq!(&out[l4 + 8..], &frame[14..14 + ip_len + 8]);
        assert_eq!(out.len(), 14 + 2 * ip_len + 16);
        let (src, dst, _, _) = tuple(&out);
        assert_eq!((src, dst), (ip(vip), ip(client)));
    }
}

#[tokio::test]
async fn icmp_echo_and_related_errors_follow_their_flows() {
    if !privileged("icmp_echo_and_related_errors_follow_their_flows") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(POD_ENDPOINT, &ingress_policy(vec![]))
        .expect("policy");
    for (src, dst) in [(POD_V4, "10.244.2.7"), (POD_V6, "fd00:10:244:2::7")] {
        let request = Pkt::echo(src, dst, 77, false).build();
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &request).await;
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(find(&events, EventKind::Trace).source_port, 77, "echo id");
        let reply = Pkt::echo(dst, src, 77, true).build();
        let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &reply).await;
        assert_eq!(verdict, TC_ACT_OK, "echo reply of {src}");
        assert_ne!(find(&events, EventKind::Trace).flags & EVENT_FLAG_REPLY, 0);
        // An unsolicited echo request into the pod is denied.
        let unsolicited = Pkt::echo(dst, src, 78, false).build();
        assert_eq!(
            h.run(PROGRAM_TO_CONTAINER, &unsolicited).await.0,
            TC_ACT_SHOT
        );
    }
    // UDP out, port unreachable back: related, passes.
    let query = Pkt::udp(POD_V4, 48000, "10.244.2.7", 53);
    assert_eq!(
        h.run(PROGRAM_FROM_CONTAINER, &query.build()).await.0,
        TC_ACT_OK
    );
    let error = Pkt::icmp_error("10.244.2.7", POD_V4, 3, 3, &query).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &error).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_ne!(
        find(&events, EventKind::Trace).flags & EVENT_FLAG_RELATED,
        0
    );
    // An error about a flow that never was: policed, denied.
    let stranger = Pkt::udp(POD_V4, 48001, "10.244.2.9", 53);
    let error = Pkt::icmp_error("10.244.2.9", POD_V4, 3, 3, &stranger).build();
    assert_eq!(h.run(PROGRAM_TO_CONTAINER, &error).await.0, TC_ACT_SHOT);
    // IPv6 packet-too-big about a TCP flow of the pod.
    let syn = Pkt::tcp(POD_V6, 48002, "fd00:10:244:2::7", 443, SYN);
    assert_eq!(
        h.run(PROGRAM_FROM_CONTAINER, &syn.build()).await.0,
        TC_ACT_OK
    );
    let ptb = Pkt::icmp_error("fd00:10:244:2::7", POD_V6, 2, 0, &syn).build();
    assert_eq!(h.run(PROGRAM_TO_CONTAINER, &ptb).await.0, TC_ACT_OK);
    // Time exceeded from a router on the way: matched on the quoted tuple.
    let syn = Pkt::tcp(POD_V4, 48003, "10.244.2.7", 443, SYN);
    assert_eq!(
        h.run(PROGRAM_FROM_CONTAINER, &syn.build()).await.0,
        TC_ACT_OK
    );
    let exceeded = Pkt::icmp_error("192.0.2.254", POD_V4, 11, 0, &syn).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &exceeded).await;
    assert_eq!(verdict, TC_ACT_OK);
    let trace = find(&events, EventKind::Trace);
    assert_ne!(trace.flags & EVENT_FLAG_RELATED, 0);
    assert_eq!((trace.icmp_type, trace.icmp_code), (11, 0));
}

#[tokio::test]
async fn malformed_and_unusual_headers() {
    if !privileged("malformed_and_unusual_headers") {
        return;
    }
    let mut h = harness();
    // IPv4 options: ports still found.
    let mut opts = Pkt::tcp(POD_V4, 49000, "10.244.2.7", 80, SYN);
    opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &opts.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(find(&events, EventKind::Trace).destination_port, 80);
    // IPv6 hop-by-hop and destination options before TCP.
    let mut ext = Pkt::tcp(POD_V6, 49001, "fd00:10:244:2::7", 8443, SYN);
    ext.ipv6_extensions = vec![
        (0, vec![0, 1, 4, 0, 0, 0, 0]),
        (60, vec![0, 1, 4, 0, 0, 0, 0]),
    ];
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &ext.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    let trace = find(&events, EventKind::Trace);
    assert_eq!((trace.protocol, trace.destination_port), (TCP, 8443));
    // Too many extension headers: dropped.
    let mut many = Pkt::udp(POD_V6, 49002, "fd00:10:244:2::7", 53);
    many.ipv6_extensions = (0..8).map(|_| (60, vec![0, 1, 4, 0, 0, 0, 0])).collect();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &many.build()).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::INVALID_IPV6_EXTENSION_HEADER
    );
    // A truncated extension header.
    let mut cut = ext.build();
    cut.truncate(14 + 40 + 1);
    let (verdict, _, _) = h.run(PROGRAM_FROM_CONTAINER, &cut).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    // Later fragments whose first fragment was never seen (IPv4, then an IPv6 fragment
    // header): their ports are unknown, so they are dropped.
    let mut frag = Pkt::udp(POD_V4, 0, "10.244.2.7", 0).with_payload(&[7u8; 16]);
    frag.fragment = (185, false);
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &frag.build()).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    let drop = find(&events, EventKind::Drop);
    assert_eq!(drop.drop_reason, drop_reason::FRAG_NOT_FOUND);
    assert_ne!(drop.flags & EVENT_FLAG_FRAGMENT, 0);
    let mut frag6 = Pkt::udp(POD_V6, 0, "fd00:10:244:2::7", 0).with_payload(&[7u8; 16]);
    frag6.ipv6_extensions = vec![(44, vec![0, 0x05, 0x00, 0, 0, 0, 1])];
    frag6.fragment = (0x05 << 5, false);
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &frag6.build()).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::FRAG_NOT_FOUND
    );
    // Zero-length payloads (bare UDP header, bare TCP header).
    let empty = Pkt::udp(POD_V4, 49003, "10.244.2.7", 9).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &empty).await.0, TC_ACT_OK);
    // A truncated UDP header.
    let mut short = empty.clone();
    short.truncate(14 + 20 + 4);
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &short).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::CT_TRUNCATED_OR_INVALID_HEADER
    );
    // (An IPv4 header shorter than 20 bytes cannot be tested here:
    // BPF_PROG_TEST_RUN itself refuses such frames with EINVAL. The parser
    // loads the header in one piece and drops it as "Invalid packet".)
    // ARP passes untouched and unreported.
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &arp).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert!(events.is_empty());
}

#[tokio::test]
async fn fragmented_datagrams_to_a_service_are_translated_whole() {
    if !privileged("fragmented_datagrams_to_a_service_are_translated_whole") {
        return;
    }
    let mut h = harness();
    for (vip, backend) in [
        ("10.96.0.20:53", "10.244.2.7:5353"),
        ("[fd00:10:96::b]:53", "[fd00:10:244:2::7]:5353"),
    ] {
        h.datapath
            .upsert_service(&Service {
                frontend: vip.parse().expect("vip"),
                protocol: ServiceProtocol::Udp,
                backends: vec![backend.parse().expect("backend")],
                affinity_timeout_s: None,
            })
            .expect("service");
    }

    // IPv4: the first fragment (more fragments, id 7) carries the UDP header; the later
    // one (offset 16 bytes) only data.
    let mut first = Pkt::udp(POD_V4, 46000, "10.96.0.20", 53).with_payload(&[1u8; 8]);
    (first.fragment, first.ip_id) = ((0, true), 7);
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &first.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple(&out), (ip(POD_V4), ip("10.244.2.7"), 46000, 5353));
    assert!(
        checksums_valid(&out),
        "first fragment's checksums after DNAT"
    );
    let mut later = Pkt::udp(POD_V4, 0, "10.96.0.20", 0).with_payload(&[2u8; 24]);
    (later.fragment, later.ip_id) = ((2, false), 7);
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &later.build()).await;
    assert_eq!(verdict, TC_ACT_OK, "the later fragment follows its first");
    let (src, dst, ..) = tuple(&out);
    assert_eq!(
        (src, dst),
        (ip(POD_V4), ip("10.244.2.7")),
        "DNAT of the later fragment"
    );
    assert!(ipv4_header_checksum_valid(&out));
    assert_eq!(&out[34..], &[2u8; 24], "its data untouched");
    // (No trace: like any packet of an established flow, it is counted, not reported.)

    // The backend's answer, fragmented too: reverse NAT on both fragments.
    let mut first = Pkt::udp("10.244.2.7", 5353, POD_V4, 46000).with_payload(&[3u8; 8]);
    (first.fragment, first.ip_id) = ((0, true), 9);
    let (verdict, out, _) = h.run(PROGRAM_TO_CONTAINER, &first.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple(&out), (ip("10.96.0.20"), ip(POD_V4), 53, 46000));
    assert!(checksums_valid(&out), "checksums after reverse NAT");
    let mut later = Pkt::udp("10.244.2.7", 0, POD_V4, 0).with_payload(&[4u8; 16]);
    (later.fragment, later.ip_id) = ((2, false), 9);
    let (verdict, out, _) = h.run(PROGRAM_TO_CONTAINER, &later.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, ..) = tuple(&out);
    assert_eq!((src, dst), (ip("10.96.0.20"), ip(POD_V4)), "reverse NAT");
    assert!(ipv4_header_checksum_valid(&out));
    assert_eq!(&out[34..], &[4u8; 16]);

    // Another datagram's later fragment (id 8) finds no first: dropped.
    let mut stray = Pkt::udp(POD_V4, 0, "10.96.0.20", 0).with_payload(&[5u8; 8]);
    (stray.fragment, stray.ip_id) = ((2, false), 8);
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &stray.build()).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::FRAG_NOT_FOUND
    );

    // IPv6: a fragment header (id 0x01020304) before UDP in the first fragment (M set)
    // and before data in the later one (offset 16 bytes).
    let mut first = Pkt::udp(POD_V6, 46001, "fd00:10:96::b", 53).with_payload(&[6u8; 8]);
    first.ipv6_extensions = vec![(44, vec![0, 0x00, 0x01, 1, 2, 3, 4])];
    let (verdict, out, _) = h.run(PROGRAM_FROM_CONTAINER, &first.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, ..) = tuple(&out);
    assert_eq!((src, dst), (ip(POD_V6), ip("fd00:10:244:2::7")));
    let mut later = Pkt::udp(POD_V6, 0, "fd00:10:96::b", 0).with_payload(&[7u8; 16]);
    later.ipv6_extensions = vec![(44, vec![0, 0x00, 0x10, 1, 2, 3, 4])];
    later.fragment = (2, false);
    let (verdict, out, events) = h.run(PROGRAM_FROM_CONTAINER, &later.build()).await;
    assert_eq!(verdict, TC_ACT_OK);
    let (src, dst, ..) = tuple(&out);
    assert_eq!(
        (src, dst),
        (ip(POD_V6), ip("fd00:10:244:2::7")),
        "IPv6 DNAT"
    );
    assert_eq!(&out[14 + 40 + 8..], &[7u8; 16]);
    assert!(events.iter().all(|e| kind(e) != Some(EventKind::Drop)));
}

#[tokio::test]
async fn a_redirect_without_a_proxy_listener_fails_closed() {
    if !privileged("a_redirect_without_a_proxy_listener_fails_closed") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &egress_policy(vec![rule(
                PolicyDirection::Egress,
                PEER_IDENTITY,
                TCP,
                Some((80, 80)),
                RuleAction::Redirect { proxy_port: 1 },
                31,
            )]),
        )
        .expect("policy");
    let syn = Pkt::tcp(POD_V4, 50000, "10.244.2.7", 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    let pv = find(&events, EventKind::PolicyVerdict);
    assert_eq!((pv.verdict, pv.proxy_port), (Verdict::Redirected as u8, 1));
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::SOCKET_LOOKUP_FAILED
    );
}

#[tokio::test]
async fn every_drop_is_reported() {
    if !privileged("every_drop_is_reported") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(POD_ENDPOINT, &egress_policy(vec![]))
        .expect("policy");
    // A client retransmitting its denied SYN: each drop is a flow, as
    // Cilium reports it.
    let syn = Pkt::tcp(POD_V4, 51000, "10.244.2.7", 80, SYN).build();
    for attempt in 0..3 {
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        assert_eq!(verdict, TC_ACT_SHOT);
        let kinds: Vec<_> = events.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [Some(EventKind::PolicyVerdict), Some(EventKind::Drop)],
            "attempt {attempt}: {events:?}"
        );
    }
    // Not a policy drop: reported every time too.
    let spoofed = Pkt::tcp("10.244.1.99", 51001, "10.244.2.7", 80, SYN).build();
    for attempt in 0..3 {
        let (_, _, events) = h.run(PROGRAM_FROM_CONTAINER, &spoofed).await;
        let drop = find(&events, EventKind::Drop);
        assert_eq!(
            drop.drop_reason,
            drop_reason::INVALID_SOURCE_IP,
            "attempt {attempt}"
        );
    }
    assert_eq!(h.reader.suppressed_drops(), 0);
}

#[tokio::test]
async fn a_flood_of_drops_is_rate_limited_and_the_rest_counted() {
    if !privileged("a_flood_of_drops_is_rate_limited_and_the_rest_counted") {
        return;
    }
    let mut h = harness();
    let spoofed = Pkt::tcp("10.244.1.99", 51002, "10.244.2.7", 80, SYN).build();
    // One test run repeats on one CPU: one bucket.
    let flood = DROP_EVENT_BURST as u32 + 1_000;
    let outcome = h
        .datapath
        .test_run(PROGRAM_FROM_CONTAINER, &spoofed, flood)
        .expect("test run");
    assert_eq!(outcome.verdict, TC_ACT_SHOT);
    let mut events = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(150),
        h.reader.read(&mut events),
    )
    .await;
    let reported = events
        .iter()
        .filter(|e| kind(e) == Some(EventKind::Drop))
        .count() as u64;
    let suppressed = h.reader.suppressed_drops();
    assert!(
        reported >= DROP_EVENT_BURST,
        "the burst is reported: {reported}"
    );
    assert!(suppressed > 0, "the flood bites");
    assert_eq!(
        reported + suppressed,
        u64::from(flood),
        "each drop reported or counted"
    );
    assert_eq!(h.reader.lost(), 0, "the ring kept up");
}

#[tokio::test]
async fn events_the_ring_cannot_take_are_counted_as_lost() {
    if !privileged("events_the_ring_cannot_take_are_counted_as_lost") {
        return;
    }
    let mut h = harness();
    assert_eq!(h.reader.lost(), 0);
    // Each new flow reports one trace; the 4 MiB ring holds about 37,000
    // records and nobody reads it meanwhile.
    for i in 0..40_000u32 {
        let src_port = 1024 + (i % 60_000) as u16;
        let dst = format!("10.244.2.{}", 1 + i / 60_000);
        let syn = Pkt::tcp(POD_V4, src_port, &dst, 80, SYN).build();
        h.datapath
            .test_run(PROGRAM_FROM_CONTAINER, &syn, 1)
            .expect("test run");
    }
    assert!(h.reader.lost() > 0, "lost events are counted");
}

#[tokio::test]
async fn an_ingress_redirect_for_a_client_off_this_node_fails_closed() {
    if !privileged("an_ingress_redirect_for_a_client_off_this_node_fails_closed") {
        return;
    }
    let mut h = harness();
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &ingress_policy(vec![rule(
                PolicyDirection::Ingress,
                PEER_IDENTITY,
                TCP,
                Some((80, 80)),
                RuleAction::Redirect { proxy_port: 15001 },
                61,
            )]),
        )
        .expect("policy");
    // From a pod of another node: to_container cannot hand it to the proxy.
    let syn = Pkt::tcp("10.244.2.7", 52000, POD_V4, 80, SYN).build();
    let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &syn).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    let drop = find(&events, EventKind::Drop);
    assert_eq!(
        (drop.drop_reason, drop.rule_id),
        (drop_reason::PROXY_UNSUPPORTED_PROTOCOL, 61)
    );
    // The proxy's own upstream for that peer is let in.
    let upstream = Pkt::tcp("192.0.2.1", 52001, POD_V4, 80, SYN).build();
    let mark = 0xb00 | (PEER_IDENTITY << 16);
    let (verdict, _, _) = h.run_marked(PROGRAM_TO_CONTAINER, &upstream, mark).await;
    assert_eq!(verdict, TC_ACT_OK);
}

#[tokio::test]
async fn icmp_errors_about_a_service_connection_are_reverse_nated() {
    if !privileged("icmp_errors_about_a_service_connection_are_reverse_nated") {
        return;
    }
    let mut h = harness();
    for (vip, backend, client, kind, code) in [
        ("10.96.0.40:53", "10.244.2.7:5353", POD_V4, 3, 3),
        (
            "[fd00:10:96::40]:53",
            "[fd00:10:244:2::7]:5353",
            POD_V6,
            1,
            4,
        ),
    ] {
        let vip: SocketAddr = vip.parse().expect("vip");
        let backend: SocketAddr = backend.parse().expect("backend");
        h.datapath
            .upsert_service(&Service {
                frontend: vip,
                protocol: ServiceProtocol::Udp,
                backends: vec![backend],
                affinity_timeout_s: None,
            })
            .expect("service");
        let query = Pkt::udp(client, 47100, &vip.ip().to_string(), 53).with_payload(b"q");
        let (verdict, sent, _) = h.run(PROGRAM_FROM_CONTAINER, &query.build()).await;
        assert_eq!(verdict, TC_ACT_OK);
        // The backend's port is closed: it answers with port unreachable,
        // quoting the datagram as it received it (to the backend).
        let mut as_received = query.clone();
        as_received.dst = backend.ip();
        as_received.dport = backend.port();
        assert_eq!(&as_received.build()[14..], &sent[14..], "DNAT'd datagram");
        let error = Pkt::icmp_error(&backend.ip().to_string(), client, kind, code, &as_received);
        let (verdict, out, events) = h.run(PROGRAM_TO_CONTAINER, &error.build()).await;
        assert_eq!(verdict, TC_ACT_OK);
        let trace = find(&events, EventKind::Trace);
        assert_ne!(trace.flags & EVENT_FLAG_RELATED, 0);
        assert_ne!(trace.flags & EVENT_FLAG_SERVICE, 0);
        // Now it comes from the VIP and quotes the datagram the pod sent.
        assert_eq!(tuple(&out).0, vip.ip(), "outer source");
        let l4 = if vip.is_ipv4() { 34 } else { 54 };
        let quoted = &out[l4 + 8..];
        let original = &query.build()[14..];
        let udp_csum = if vip.is_ipv4() { 26 } else { 46 };
        // Addresses, ports and the quoted IPv4 header checksum are the
        // pod's; the quoted UDP checksum is left as the backend computed it
        // (no stack verifies a quoted L4 checksum).
        assert_eq!(&quoted[..udp_csum], &original[..udp_csum], "quoted as sent");
        assert_eq!(&quoted[udp_csum + 2..], &original[udp_csum + 2..]);
        assert!(icmp_checksums_valid(&out), "ICMP checksum after rewrite");
    }
}

#[tokio::test]
async fn expired_entries_are_garbage_collected() {
    if !privileged("expired_entries_are_garbage_collected") {
        return;
    }
    let mut h = harness();
    let syn = Pkt::tcp(POD_V4, 53000, "10.244.2.7", 80, SYN).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &syn).await.0, TC_ACT_OK);
    let rst = Pkt::tcp("10.244.2.7", 80, POD_V4, 53000, 0x14).build();
    assert_eq!(h.run(PROGRAM_TO_CONTAINER, &rst).await.0, TC_ACT_OK);
    let find_entry = |h: &Harness| {
        h.datapath
            .conntrack()
            .expect("conntrack")
            .into_iter()
            .find(|c| c.source.port() == 53000)
    };
    assert!(find_entry(&h).expect("entry").closing);
    // The close timeout is 10 s.
    tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
    assert_eq!(find_entry(&h).expect("still there").expires_in, None);
    assert!(h.datapath.conntrack_gc().expect("gc") >= 1);
    assert!(find_entry(&h).is_none(), "collected");
}

#[tokio::test]
async fn a_policy_change_is_applied_to_established_flows() {
    if !privileged("a_policy_change_is_applied_to_established_flows") {
        return;
    }
    let mut h = harness();
    let e = PolicyDirection::Egress;
    let allow_80 = |rule_id| {
        rule(
            e,
            PEER_IDENTITY,
            TCP,
            Some((80, 80)),
            RuleAction::Allow,
            rule_id,
        )
    };
    h.datapath
        .replace_policy(POD_ENDPOINT, &egress_policy(vec![allow_80(1)]))
        .expect("policy");
    let syn = Pkt::tcp(POD_V4, 54000, "10.244.2.7", 80, SYN).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &syn).await.0, TC_ACT_OK);
    let ack = Pkt::tcp(POD_V4, 54000, "10.244.2.7", 80, ACK).build();
    // Still allowed under a new policy: goes on, silently.
    h.datapath
        .replace_policy(POD_ENDPOINT, &egress_policy(vec![allow_80(2)]))
        .expect("policy");
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &ack).await.0, TC_ACT_OK);
    // No longer allowed: the next packet of the flow is dropped and reported.
    h.datapath
        .replace_policy(POD_ENDPOINT, &egress_policy(vec![]))
        .expect("policy");
    let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &ack).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(
        find(&events, EventKind::Drop).drop_reason,
        drop_reason::POLICY_DENIED
    );
    assert_eq!(
        find(&events, EventKind::PolicyVerdict).traffic_direction,
        TrafficDirection::Egress as u8
    );
    assert!(
        h.datapath
            .conntrack()
            .expect("conntrack")
            .iter()
            .all(|c| c.source.port() != 54000),
        "the revoked flow's entry is gone"
    );
}

/// Runs a TCP packet through the service flow of `port`: from the pod to
/// the VIP 10.96.0.50:80 (`reply` false) or from the backend back.
async fn service_packet(h: &mut Harness, port: u16, reply: bool, flags: u8) {
    let (program, frame) = if reply {
        let pkt = Pkt::tcp("10.244.2.7", 8080, POD_V4, port, flags);
        (PROGRAM_TO_CONTAINER, pkt.build())
    } else {
        let pkt = Pkt::tcp(POD_V4, port, "10.96.0.50", 80, flags);
        (PROGRAM_FROM_CONTAINER, pkt.build())
    };
    assert_eq!(h.run(program, &frame).await.0, TC_ACT_OK, "port {port}");
}

#[tokio::test]
async fn closed_service_connections_leave_conntrack_with_the_close_timeout() {
    if !privileged("closed_service_connections_leave_conntrack_with_the_close_timeout") {
        return;
    }
    let mut h = harness();
    h.datapath
        .upsert_service(&Service {
            frontend: "10.96.0.50:80".parse().expect("vip"),
            protocol: ServiceProtocol::Tcp,
            backends: vec!["10.244.2.7:8080".parse().expect("backend")],
            affinity_timeout_s: None,
        })
        .expect("service");
    const RST: u8 = 0x04;
    const RST_ACK: u8 = 0x14;
    // Established: SYN, SYN-ACK, ACK.
    for port in [47001, 47002, 47003, 47004] {
        service_packet(&mut h, port, false, SYN).await;
        service_packet(&mut h, port, true, SYN_ACK).await;
        service_packet(&mut h, port, false, ACK).await;
    }
    // 47001: FIN both ways and the last ACK; 47002: the server resets;
    // 47003: the client resets; 47004 stays open.
    service_packet(&mut h, 47001, false, FIN_ACK).await;
    service_packet(&mut h, 47001, true, FIN_ACK).await;
    service_packet(&mut h, 47001, false, ACK).await;
    service_packet(&mut h, 47002, true, RST_ACK).await;
    service_packet(&mut h, 47003, false, RST).await;
    // 47005: a SYN never answered.
    service_packet(&mut h, 47005, false, SYN).await;

    let entries = h.datapath.conntrack().expect("conntrack");
    let of = |port: u16, scope: CtScope| {
        entries
            .iter()
            .find(|c| c.source.port() == port && c.scope == scope)
            .unwrap_or_else(|| panic!("no {scope} entry of port {port} in {entries:#?}"))
    };
    let close = std::time::Duration::from_secs(10);
    for port in [47001, 47002, 47003] {
        for scope in [CtScope::Egress, CtScope::Service] {
            let entry = of(port, scope);
            assert!(entry.closing, "{scope} entry of {port} closing: {entry:#?}");
            let left = entry.expires_in.expect("not expired yet");
            assert!(left <= close, "{scope} entry of {port} expires in {left:?}");
        }
    }
    let open = of(47004, CtScope::Service);
    assert!(!open.closing);
    assert!(
        open.expires_in.expect("live") > std::time::Duration::from_secs(3600),
        "an open connection keeps the established timeout: {open:#?}"
    );
    let unanswered = of(47005, CtScope::Service);
    assert!(
        unanswered.expires_in.expect("live") <= std::time::Duration::from_secs(60),
        "a handshake keeps the SYN timeout: {unanswered:#?}"
    );
}

#[tokio::test]
async fn a_cluster_ip_port_without_a_frontend_is_refused_without_a_conntrack_entry() {
    if !privileged("a_cluster_ip_port_without_a_frontend_is_refused_without_a_conntrack_entry") {
        return;
    }
    let mut h = harness();
    for (frontend, protocol) in [
        ("10.96.0.60:53", ServiceProtocol::Udp),
        ("10.96.0.60:80", ServiceProtocol::Tcp),
        ("[fd00:10:96::60]:53", ServiceProtocol::Udp),
    ] {
        h.datapath
            .upsert_service(&Service {
                frontend: frontend.parse().expect("vip"),
                protocol,
                backends: Vec::new(),
                affinity_timeout_s: None,
            })
            .expect("service");
    }
    let cases = [
        (Pkt::udp(POD_V4, 48001, "10.96.0.60", 9999), TC_ACT_REDIRECT),
        (Pkt::udp(POD_V4, 48002, "10.96.0.60", 80), TC_ACT_REDIRECT),
        (
            Pkt::tcp(POD_V4, 48003, "10.96.0.60", 53, SYN),
            TC_ACT_REDIRECT,
        ),
        (
            Pkt::udp(POD_V6, 48004, "fd00:10:96::60", 9999),
            TC_ACT_REDIRECT,
        ),
        (Pkt::echo(POD_V4, "10.96.0.60", 48005, false), TC_ACT_SHOT),
    ];
    for (pkt, expected) in &cases {
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &pkt.build()).await;
        assert_eq!(verdict, *expected, "{pkt:?}: refused");
        let drop = find(&events, EventKind::Drop);
        assert_eq!(drop.drop_reason, drop_reason::NO_SERVICE);
    }
    let entries = h.datapath.conntrack().expect("conntrack");
    assert!(
        entries
            .iter()
            .all(|c| !(48001..=48005).contains(&c.source.port())),
        "no entries: {entries:#?}"
    );
    // Without frontends the address is no cluster IP any more.
    for service in h.datapath.services().expect("services") {
        h.datapath
            .delete_service(service.frontend, service.protocol)
            .expect("delete");
    }
    let again = Pkt::udp(POD_V4, 48006, "10.96.0.60", 9999).build();
    assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &again).await.0, TC_ACT_OK);
}
