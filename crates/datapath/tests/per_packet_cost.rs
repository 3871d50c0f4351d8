//! Per-packet cost of the kernel programs, measured by BPF_PROG_TEST_RUN
//! with `repeat` (the kernel's own average). A benchmark, not a test: it
//! asserts only the verdicts and prints ns/packet.
//!
//! `cargo test -p myelin-datapath --test per_packet_cost -- --ignored --nocapture`

mod support;

use myelin_common::maps::DROP_EVENT_BURST;
use myelin_datapath::{
    PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER, PolicyDirection, PolicyRule, PolicyTable,
    RuleAction, Service, ServiceProtocol,
};
use myelin_test_support::privileged;
use support::*;

const REPEAT: u32 = 200_000;

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn per_packet_cost() {
    if !privileged("per_packet_cost") {
        return;
    }
    pin_to_one_cpu();
    let mut h = Harness::with_pod();
    h.datapath
        .ipcache_upsert(ip("10.244.2.0"), 24, 2002)
        .expect("ipcache");
    let rules = (0..64u16)
        .map(|i| PolicyRule {
            direction: PolicyDirection::Egress,
            peer_identity: 2002,
            protocol: TCP,
            ports: Some((1000 + i * 10, 1005 + i * 10)),
            action: RuleAction::Allow,
            rule_id: u32::from(i),
        })
        .chain(std::iter::once(PolicyRule {
            direction: PolicyDirection::Egress,
            peer_identity: 2002,
            protocol: TCP,
            ports: Some((80, 80)),
            action: RuleAction::Allow,
            rule_id: 100,
        }))
        .collect();
    h.datapath
        .replace_policy(
            POD_ENDPOINT,
            &PolicyTable {
                ingress_enforced: true,
                egress_enforced: true,
                rules,
            },
        )
        .expect("policy");
    h.datapath
        .upsert_service(&Service {
            frontend: "10.96.0.10:80".parse().expect("vip"),
            protocol: ServiceProtocol::Tcp,
            backends: (1..=8)
                .map(|i| format!("10.244.2.{i}:80").parse().expect("backend"))
                .collect(),
            affinity_timeout_s: None,
        })
        .expect("service");

    let established = Pkt::tcp(POD_V4, 40000, "10.244.2.7", 80, ACK)
        .with_payload(&[0u8; 64])
        .build();
    let via_service = Pkt::tcp(POD_V4, 40001, "10.96.0.10", 80, ACK)
        .with_payload(&[0u8; 64])
        .build();
    let reply = Pkt::tcp("10.244.2.7", 80, POD_V4, 40000, ACK)
        .with_payload(&[0u8; 64])
        .build();
    let denied = Pkt::tcp(POD_V4, 40002, "10.244.2.7", 22, SYN).build();
    let ipv6 = Pkt::udp(POD_V6, 40003, "fd00:10:244:2::7", 53)
        .with_payload(&[0u8; 32])
        .build();
    // Baseline: a non-IP frame leaves after the stats update and one load,
    // which approximates the fixed cost of a test run itself.
    let mut arp = vec![0u8; 60];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // First packets create the flows; the measured runs are steady state.
    for frame in [&established, &via_service] {
        h.datapath
            .test_run(PROGRAM_FROM_CONTAINER, frame, 1)
            .expect("warm up");
    }
    // A flood of drops: its first ones are reported, until the drop-event
    // bucket of the CPU is empty; the measured runs are the flood's steady
    // state (each drop counted, not reported).
    h.datapath
        .test_run(PROGRAM_FROM_CONTAINER, &denied, DROP_EVENT_BURST as u32 * 2)
        .expect("warm up");
    let mut reported = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        h.reader.read(&mut reported),
    )
    .await;
    let cases: [(&str, &'static str, &[u8], i32); 6] = [
        (
            "baseline: non-IP frame",
            PROGRAM_FROM_CONTAINER,
            &arp,
            TC_ACT_OK,
        ),
        (
            "egress, established, policy on",
            PROGRAM_FROM_CONTAINER,
            &established,
            TC_ACT_OK,
        ),
        (
            "egress, established, ClusterIP DNAT",
            PROGRAM_FROM_CONTAINER,
            &via_service,
            TC_ACT_OK,
        ),
        (
            "ingress, reply of an egress flow",
            PROGRAM_TO_CONTAINER,
            &reply,
            TC_ACT_OK,
        ),
        (
            "egress, new flow denied (lookups; flood, not reported)",
            PROGRAM_FROM_CONTAINER,
            &denied,
            TC_ACT_SHOT,
        ),
        (
            "egress, IPv6 UDP denied (lookups; flood, not reported)",
            PROGRAM_FROM_CONTAINER,
            &ipv6,
            TC_ACT_SHOT,
        ),
    ];
    println!("per-packet cost, BPF_PROG_TEST_RUN repeat={REPEAT}:");
    for (name, program, frame, verdict) in cases {
        let outcome = h
            .datapath
            .test_run(program, frame, REPEAT)
            .expect("test run");
        assert_eq!(outcome.verdict, verdict, "{name}");
        if frame == via_service.as_slice() {
            assert_ne!(tuple(&outcome.frame).1, ip("10.96.0.10"), "DNAT'd");
        }
        println!("  {name:<48} {:>6} ns/packet", outcome.duration.as_nanos());
    }
}

/// Keeps every test run on one CPU: the drop-event bucket the warm-up empties
/// is that CPU's.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "pin the benchmark to CPU 0");
    }
}
