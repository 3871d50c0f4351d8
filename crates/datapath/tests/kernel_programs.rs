//! The kernel programs run on crafted frames with BPF_PROG_TEST_RUN: the
//! verdict, the event they report, and what they make of odd input.

use myelin_common::{EventKind, ObservationPoint, TraceEvent};
use myelin_datapath::{Datapath, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER};
use myelin_test_support::{ScratchBpffs, privileged};

mod support;

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

fn ipv4_tcp(flags: u8, ihl_words: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = usize::from(ihl_words) * 4;
    let mut ip = vec![0u8; ip_len];
    ip[0] = 0x40 | ihl_words;
    ip[2..4].copy_from_slice(&((ip_len + 20) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 244, 1, 5]);
    ip[16..20].copy_from_slice(&[10, 244, 1, 6]);
    f.extend(ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    f.extend(tcp);
    f
}

fn ipv6_udp() -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&8u16.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(
        &"fd00:10:244:1::5"
            .parse::<std::net::Ipv6Addr>()
            .expect("addr")
            .octets(),
    );
    ip[24..40].copy_from_slice(
        &"fd00:10:244:1::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("addr")
            .octets(),
    );
    f.extend(ip);
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    f.extend(udp);
    f
}

async fn events_after(
    datapath: &mut Datapath,
    program: &'static str,
    frame: &[u8],
) -> (i32, Vec<TraceEvent>) {
    let mut reader = datapath.event_reader().expect("event reader");
    run_and_read(datapath, &mut reader, program, frame).await
}

async fn run_and_read(
    datapath: &mut Datapath,
    reader: &mut myelin_datapath::EventReader,
    program: &'static str,
    frame: &[u8],
) -> (i32, Vec<TraceEvent>) {
    let outcome = datapath.test_run(program, frame, 1).expect("test run");
    let mut events = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), reader.read(&mut events))
        .await
        .expect("an event within 5 s")
        .expect("read events");
    (outcome.verdict, events)
}

#[tokio::test]
async fn tcp_syn_leaving_a_pod_is_passed_and_traced() {
    if !privileged("tcp_syn_leaving_a_pod_is_passed_and_traced") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let mut datapath = Datapath::load(bpffs.path()).expect("load programs");
    let (verdict, events) =
        events_after(&mut datapath, PROGRAM_FROM_CONTAINER, &ipv4_tcp(0x02, 5)).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(EventKind::from_u8(e.kind), Some(EventKind::Trace));
    assert_eq!(
        ObservationPoint::from_u8(e.observation_point),
        Some(ObservationPoint::ToStack)
    );
    assert_eq!(e.ip_version, 4);
    assert_eq!(e.protocol, 6);
    assert_eq!(e.tcp_flags, 0x02);
    assert_eq!((e.source_port, e.destination_port), (40000, 80));
    assert_eq!(&e.source[..4], &[10, 244, 1, 5]);
    assert_eq!(&e.destination[..4], &[10, 244, 1, 6]);
}

#[tokio::test]
async fn ip_options_shift_the_ports() {
    if !privileged("ip_options_shift_the_ports") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let mut datapath = Datapath::load(bpffs.path()).expect("load programs");
    // IHL 6: four bytes of options before TCP.
    let (verdict, events) =
        events_after(&mut datapath, PROGRAM_TO_CONTAINER, &ipv4_tcp(0x12, 6)).await;
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        ObservationPoint::from_u8(events[0].observation_point),
        Some(ObservationPoint::ToEndpoint)
    );
    assert_eq!(
        (
            events[0].source_port,
            events[0].destination_port,
            events[0].tcp_flags
        ),
        (40000, 80, 0x12)
    );
}

#[tokio::test]
async fn ipv6_udp_is_traced() {
    if !privileged("ipv6_udp_is_traced") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let mut datapath = Datapath::load(bpffs.path()).expect("load programs");
    let (verdict, events) = events_after(&mut datapath, PROGRAM_FROM_CONTAINER, &ipv6_udp()).await;
    assert_eq!(verdict, TC_ACT_OK);
    let e = events[0];
    assert_eq!(
        (e.ip_version, e.protocol, e.source_port, e.destination_port),
        (6, 17, 5353, 53)
    );
    assert_eq!(e.destination[15], 1);
}

#[tokio::test]
async fn truncated_and_bogus_headers_are_dropped_with_their_reason() {
    if !privileged("truncated_and_bogus_headers_are_dropped_with_their_reason") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let mut datapath = Datapath::load(bpffs.path()).expect("load programs");
    let mut reader = datapath.event_reader().expect("event reader");
    let mut frame = ipv4_tcp(0x02, 5);
    frame.truncate(14 + 20 + 4);
    let (verdict, events) =
        run_and_read(&mut datapath, &mut reader, PROGRAM_FROM_CONTAINER, &frame).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(EventKind::from_u8(events[0].kind), Some(EventKind::Drop));
    assert_eq!(
        events[0].drop_reason, 135,
        "CT: Truncated or invalid header"
    );
    // A bogus IHL below 5 is not parsed as IP at all.
    let mut bogus = ipv4_tcp(0x02, 5);
    bogus[14] = 0x42;
    let (verdict, events) =
        run_and_read(&mut datapath, &mut reader, PROGRAM_FROM_CONTAINER, &bogus).await;
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(events[0].drop_reason, 134, "Invalid packet");
    assert_eq!(events[0].ip_version, 0);
}

#[tokio::test]
async fn maps_are_pinned_and_reused_by_a_second_load() {
    if !privileged("maps_are_pinned_and_reused_by_a_second_load") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let first = Datapath::load(bpffs.path()).expect("first load");
    for map in [
        "MYELIN_ENDPOINTS",
        "MYELIN_STATS",
        "MYELIN_EVENTS",
        "MYELIN_LOST",
    ] {
        assert!(bpffs.path().join("maps").join(map).exists(), "{map} pinned");
    }
    drop(first);
    let second = Datapath::load(bpffs.path()).expect("second load reuses the pins");
    assert_eq!(second.pin_dir(), bpffs.path());
}

/// Host routing: a packet `from_container` forwards to a pod of this node
/// whose MACs are registered is handed into that pod (`bpf_redirect_peer`,
/// TC_ACT_REDIRECT) with the pod's MAC as destination, its host veth's as
/// source and one hop less; the destination's `to_container` work (its
/// conntrack side, reverse NAT, trace, counters) is done on the way.
mod host_routing {
    use myelin_common::event::{EVENT_FLAG_REPLY, EVENT_FLAG_SERVICE};
    use myelin_common::{EventKind, ObservationPoint, TraceEvent, TrafficDirection};
    use myelin_datapath::{
        EndpointInfo, PROGRAM_FROM_CONTAINER, PolicyDirection, PolicyRule, PolicyTable, RuleAction,
        Service, ServiceProtocol,
    };
    use myelin_test_support::privileged;

    use super::support::{
        ACK, Harness, POD_ENDPOINT, POD_IDENTITY, POD_V4, POD_V6, Pkt, SYN, SYN_ACK, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_IFINDEX, checksums_valid, ip, tuple,
    };

    /// The other pod of the node: not an interface of the test's namespace,
    /// so its host veth MAC is given, as its own MAC always is.
    const PEER_IFINDEX: u32 = 4000;
    const PEER_V4: &str = "10.244.1.6";
    const PEER_V6: &str = "fd00:10:244:1::6";
    const PEER_ENDPOINT: u32 = 6;
    const PEER_IDENTITY: u32 = 1002;
    const PEER_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x06];
    const PEER_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x06];
    /// The test pod's MACs when it is the destination.
    const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
    const POD_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x05];

    fn v6(s: &str) -> [u8; 16] {
        match ip(s) {
            std::net::IpAddr::V6(a) => a.octets(),
            std::net::IpAddr::V4(_) => unreachable!("IPv6 literal"),
        }
    }

    fn peer(macs: bool) -> EndpointInfo {
        EndpointInfo {
            endpoint_id: PEER_ENDPOINT,
            identity: PEER_IDENTITY,
            ipv4: [10, 244, 1, 6],
            ipv6: v6(PEER_V6),
            mac: if macs { PEER_MAC } else { [0; 6] },
            host_mac: if macs { PEER_HOST_MAC } else { [0; 6] },
            ..EndpointInfo::default()
        }
    }

    fn pod(macs: bool) -> EndpointInfo {
        EndpointInfo {
            endpoint_id: POD_ENDPOINT,
            identity: POD_IDENTITY,
            ipv4: [10, 244, 1, 5],
            ipv6: v6(POD_V6),
            mac: if macs { POD_MAC } else { [0; 6] },
            host_mac: if macs { POD_HOST_MAC } else { [0; 6] },
            ..EndpointInfo::default()
        }
    }

    /// The test pod on ifindex 1 (where test runs execute) and the peer.
    fn harness(peer_macs: bool) -> Harness {
        let mut h = Harness::with_pod();
        h.datapath
            .upsert_endpoint(PEER_IFINDEX, &peer(peer_macs))
            .expect("register the peer");
        h
    }

    /// Swaps the roles: the peer sends (ifindex 1), the test pod receives.
    fn swap_roles(h: &mut Harness) {
        h.datapath.delete_endpoint(PEER_IFINDEX).expect("forget");
        h.datapath
            .upsert_endpoint(TEST_IFINDEX, &peer(true))
            .expect("peer on ifindex 1");
        h.datapath
            .upsert_endpoint(PEER_IFINDEX, &pod(true))
            .expect("pod behind the other veth");
    }

    fn traces(events: &[TraceEvent], point: ObservationPoint) -> Vec<TraceEvent> {
        events
            .iter()
            .filter(|e| {
                EventKind::from_u8(e.kind) == Some(EventKind::Trace)
                    && ObservationPoint::from_u8(e.observation_point) == Some(point)
            })
            .copied()
            .collect()
    }

    fn assert_routed(frame: &[u8], mac: [u8; 6], host_mac: [u8; 6]) {
        assert_eq!(&frame[0..6], &mac, "destination MAC: the pod's");
        assert_eq!(&frame[6..12], &host_mac, "source MAC: its host veth's");
        let v4 = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800;
        let hops = if v4 { frame[22] } else { frame[21] };
        assert_eq!(hops, 63, "one hop less");
        assert!(checksums_valid(frame), "checksums after the rewrite");
    }

    #[tokio::test]
    async fn ipv4_tcp_to_a_local_pod_is_redirected_into_it() {
        if !privileged("ipv4_tcp_to_a_local_pod_is_redirected_into_it") {
            return;
        }
        let mut h = harness(true);
        let syn = Pkt::tcp(POD_V4, 40000, PEER_V4, 80, SYN).build();
        let (verdict, frame, events) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{events:?}");
        assert_routed(&frame, PEER_MAC, PEER_HOST_MAC);
        assert_eq!(
            &frame[14..],
            &{
                let mut f = syn.clone();
                f[22] = 63;
                let csum = u16::from_be_bytes([f[24], f[25]]) + 0x0100;
                f[24..26].copy_from_slice(&csum.to_be_bytes());
                f
            }[14..]
        );
        // The sender's trace as before; the receiver's to_container reports
        // a flow's first packet nothing more (its entry was just made).
        assert_eq!(traces(&events, ObservationPoint::ToStack).len(), 1);
        assert!(traces(&events, ObservationPoint::ToEndpoint).is_empty());

        // The next flag is news on both sides.
        let ack = Pkt::tcp(POD_V4, 40000, PEER_V4, 80, ACK).build();
        let (verdict, frame, events) = h.run(PROGRAM_FROM_CONTAINER, &ack).await;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed(&frame, PEER_MAC, PEER_HOST_MAC);
        let to_stack = traces(&events, ObservationPoint::ToStack);
        assert_eq!(to_stack.len(), 1);
        assert_eq!(to_stack[0].ifindex, TEST_IFINDEX);
        let delivered = traces(&events, ObservationPoint::ToEndpoint);
        assert_eq!(delivered.len(), 1, "{events:?}");
        let e = delivered[0];
        assert_eq!((e.ifindex, e.endpoint_id), (PEER_IFINDEX, PEER_ENDPOINT));
        assert_eq!(
            (e.source_identity, e.destination_identity),
            (POD_IDENTITY, PEER_IDENTITY)
        );
        assert_eq!(
            (e.source_port, e.destination_port, e.tcp_flags),
            (40000, 80, ACK)
        );
        assert_eq!(e.flags, 0);
        // Each side's direction: the sender's egress, the receiver's ingress.
        assert_eq!(
            to_stack[0].traffic_direction,
            TrafficDirection::Egress as u8
        );
        assert_eq!(e.traffic_direction, TrafficDirection::Ingress as u8);
        // The receiver's counters, as its to_container would have kept them.
        let (_, to) = h.datapath.stats(PEER_IFINDEX).expect("stats");
        assert_eq!(to.packets, 2);

        // The reply, from the peer: the test pod's side of the flow.
        swap_roles(&mut h);
        let syn_ack = Pkt::tcp(PEER_V4, 80, POD_V4, 40000, SYN_ACK).build();
        let (verdict, frame, events) = h.run(PROGRAM_FROM_CONTAINER, &syn_ack).await;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{events:?}");
        assert_routed(&frame, POD_MAC, POD_HOST_MAC);
        let delivered = traces(&events, ObservationPoint::ToEndpoint);
        assert_eq!(delivered.len(), 1, "the first reply is news: {events:?}");
        let e = delivered[0];
        assert_eq!((e.ifindex, e.endpoint_id), (PEER_IFINDEX, POD_ENDPOINT));
        assert_eq!(e.flags & EVENT_FLAG_REPLY, EVENT_FLAG_REPLY);
        assert_eq!(
            (e.source_identity, e.destination_identity),
            (PEER_IDENTITY, POD_IDENTITY)
        );
        assert_eq!(
            e.traffic_direction,
            TrafficDirection::Egress as u8,
            "the reply of the pod's own connection"
        );
    }

    #[tokio::test]
    async fn a_service_connection_to_a_local_backend_is_translated_both_ways() {
        if !privileged("a_service_connection_to_a_local_backend_is_translated_both_ways") {
            return;
        }
        let mut h = harness(true);
        let frontend = "10.96.0.10:80".parse().expect("frontend");
        h.datapath
            .upsert_service(&Service {
                frontend,
                protocol: ServiceProtocol::Tcp,
                backends: vec!["10.244.1.6:8080".parse().expect("backend")],
                affinity_timeout_s: None,
            })
            .expect("service");
        let syn = Pkt::tcp(POD_V4, 40001, "10.96.0.10", 80, SYN).build();
        let (verdict, frame, _) = h.run(PROGRAM_FROM_CONTAINER, &syn).await;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed(&frame, PEER_MAC, PEER_HOST_MAC);
        assert_eq!(tuple(&frame), (ip(POD_V4), ip(PEER_V4), 40001, 8080));

        swap_roles(&mut h);
        let syn_ack = Pkt::tcp(PEER_V4, 8080, POD_V4, 40001, SYN_ACK).build();
        let (verdict, frame, events) = h.run(PROGRAM_FROM_CONTAINER, &syn_ack).await;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed(&frame, POD_MAC, POD_HOST_MAC);
        assert_eq!(
            tuple(&frame),
            (ip("10.96.0.10"), ip(POD_V4), 80, 40001),
            "reverse NAT"
        );
        let e = traces(&events, ObservationPoint::ToEndpoint)[0];
        assert_eq!(
            e.flags & (EVENT_FLAG_REPLY | EVENT_FLAG_SERVICE),
            EVENT_FLAG_REPLY | EVENT_FLAG_SERVICE
        );
        assert_eq!(&e.service_address[..4], &[10, 96, 0, 10]);
    }

    #[tokio::test]
    async fn ipv6_udp_to_a_local_pod_is_redirected_into_it() {
        if !privileged("ipv6_udp_to_a_local_pod_is_redirected_into_it") {
            return;
        }
        let mut h = harness(true);
        let udp = Pkt::udp(POD_V6, 5000, PEER_V6, 53)
            .with_payload(b"query")
            .build();
        let (verdict, frame, _) = h.run(PROGRAM_FROM_CONTAINER, &udp).await;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed(&frame, PEER_MAC, PEER_HOST_MAC);
        assert_eq!(&frame[22..], &udp[22..], "only the hop limit changed");

        // A hop limit that would expire: the stack answers (Time Exceeded).
        let mut last_hop = Pkt::udp(POD_V6, 5001, PEER_V6, 53).build();
        last_hop[21] = 1;
        let (verdict, frame, _) = h.run(PROGRAM_FROM_CONTAINER, &last_hop).await;
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(frame, last_hop, "left for the stack untouched");
    }

    #[tokio::test]
    async fn without_macs_a_local_pod_is_reached_through_the_stack() {
        if !privileged("without_macs_a_local_pod_is_reached_through_the_stack") {
            return;
        }
        let mut h = harness(false);
        for packet in [
            Pkt::tcp(POD_V4, 40002, PEER_V4, 80, SYN),
            Pkt::udp(POD_V6, 5002, PEER_V6, 53),
        ] {
            let frame = packet.build();
            let (verdict, after, _) = h.run(PROGRAM_FROM_CONTAINER, &frame).await;
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(after, frame, "untouched");
        }
        // Not a pod of this node: the stack, as always.
        let out = Pkt::tcp(POD_V4, 40003, "10.244.2.7", 80, SYN).build();
        let (verdict, _, _) = h.run(PROGRAM_FROM_CONTAINER, &out).await;
        assert_eq!(verdict, TC_ACT_OK);
    }

    #[tokio::test]
    async fn the_receivers_ingress_policy_still_drops() {
        if !privileged("the_receivers_ingress_policy_still_drops") {
            return;
        }
        let mut h = harness(true);
        h.datapath
            .replace_policy(
                PEER_ENDPOINT,
                &PolicyTable {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules: vec![PolicyRule {
                        direction: PolicyDirection::Ingress,
                        peer_identity: POD_IDENTITY,
                        protocol: 6,
                        ports: Some((80, 80)),
                        action: RuleAction::Allow,
                        rule_id: 7,
                    }],
                },
            )
            .expect("policy");
        let allowed = Pkt::tcp(POD_V4, 40004, PEER_V4, 80, SYN).build();
        let (verdict, _, _) = h.run(PROGRAM_FROM_CONTAINER, &allowed).await;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let denied = Pkt::tcp(POD_V4, 40005, PEER_V4, 81, SYN).build();
        let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &denied).await;
        assert_eq!(verdict, TC_ACT_SHOT);
        assert!(
            events
                .iter()
                .any(|e| EventKind::from_u8(e.kind) == Some(EventKind::Drop))
        );
    }
}
