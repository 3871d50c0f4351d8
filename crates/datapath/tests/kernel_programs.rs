//! The kernel programs run on crafted frames with BPF_PROG_TEST_RUN: the
//! verdict, the event they report, and what they make of odd input.

use myelin_common::{EventKind, ObservationPoint, TraceEvent};
use myelin_datapath::{Datapath, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER};
use myelin_test_support::{ScratchBpffs, privileged};

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
