//! Benchmark, not a test (run with `--ignored`, as `make bench` does): how
//! many kernel events per second the agent's pipeline consumes without loss
//! (ring buffer → Hubble flow → flow ring), and the delay from a packet to
//! its flow in the ring, where `observe --follow` picks it up. Prints one
//! JSON line; asserts only that numbers were produced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use myelin_agent::flows::{EndpointMeta, FlowContext, KernelClock, kernel_flow};
use myelin_common::EndpointInfo;
use myelin_datapath::{Datapath, PROGRAM_FROM_CONTAINER};
use myelin_observe::{Observer, ObserverConfig};
use myelin_test_support::{ScratchBpffs, privileged};

/// The test run's packets arrive on the test namespace's loopback.
const TEST_IFINDEX: u32 = 1;

struct Node;

impl FlowContext for Node {
    fn endpoint(&self, ip: IpAddr) -> EndpointMeta {
        EndpointMeta {
            identity: 256,
            pod: ip.to_string(),
            namespace: "default".into(),
            ..EndpointMeta::default()
        }
    }
    fn rule(&self, _: u32) -> Option<myelin_policy::Provenance> {
        None
    }
    fn service(&self, _: SocketAddr) -> Option<(String, String)> {
        None
    }
    fn identity_labels(&self, _: u32) -> Vec<String> {
        Vec::new()
    }
    fn local_identity(&self, _: u32) -> Option<EndpointMeta> {
        None
    }
}

/// A TCP SYN from the registered pod (10.244.1.5); the n-th one has its own
/// ports, so every frame is a new flow the datapath reports.
fn syn(n: u64) -> Vec<u8> {
    let source_port = 1024 + (n % 64_000) as u16;
    let destination_port = 1 + (n / 64_000 % 60_000) as u16;
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 244, 1, 5]);
    f[30..34].copy_from_slice(&[10, 244, 2, 7]);
    f[34..36].copy_from_slice(&source_port.to_be_bytes());
    f[36..38].copy_from_slice(&destination_port.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x02;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by make bench"]
async fn kernel_events_per_second_and_delay() {
    if !privileged("kernel_events_per_second_and_delay") {
        return;
    }
    let seconds: u64 = std::env::var("EVENT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let mut datapath = Datapath::load(bpffs.path()).expect("load");
    datapath
        .upsert_endpoint(
            TEST_IFINDEX,
            &EndpointInfo {
                endpoint_id: 7,
                identity: 256,
                ipv4: [10, 244, 1, 5],
                ..EndpointInfo::default()
            },
        )
        .expect("endpoint");
    let mut reader = datapath.event_reader().expect("reader");
    let observer = Observer::new(ObserverConfig::new("bench"));
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    // The consumer: what the agent does with every batch, on a thread of its
    // own so that its CPU time can be measured.
    let consumer = {
        let observer = observer.clone();
        let consumed = consumed.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let cpu_start = thread_cpu();
                let clock = KernelClock::now();
                let mut batch = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    batch.clear();
                    let read =
                        tokio::time::timeout(Duration::from_millis(100), reader.read(&mut batch))
                            .await;
                    if let Ok(Err(e)) = read {
                        panic!("reading events: {e}");
                    }
                    for event in &batch {
                        if let Some(flow) = kernel_flow(event, &clock, &Node) {
                            observer.push(flow);
                        }
                    }
                    consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                (reader, thread_cpu() - cpu_start)
            })
        })
    };

    // The producer: new flows as fast as BPF_PROG_TEST_RUN runs them.
    let started = Instant::now();
    let sent = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut sent = 0u64;
        while !sent.is_multiple_of(1024) || Instant::now() < deadline {
            datapath
                .test_run(PROGRAM_FROM_CONTAINER, &syn(sent), 1)
                .expect("test run");
            sent += 1;
        }
        sent
    })
    .await
    .expect("producer");
    let production = started.elapsed();

    // The delay: one more new flow, timed until its flow is in the ring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Datapath::load(bpffs.path()).expect("second handle on the pinned maps");
    let before = observer.status().seen_flows;
    let probe = Instant::now();
    again
        .test_run(PROGRAM_FROM_CONTAINER, &syn(sent + 1), 1)
        .expect("probe");
    while observer.status().seen_flows == before && probe.elapsed() < Duration::from_secs(5) {
        tokio::task::yield_now().await;
    }
    let delay = probe.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (reader, consumer_cpu) = consumer.join().expect("consumer");
    let consumed = consumed.load(Ordering::Relaxed);
    let lost = reader.lost();
    let cpu_per_event = consumer_cpu.as_secs_f64() / consumed.max(1) as f64;

    assert!(
        sent > 0 && consumed > 0,
        "no events were produced or consumed"
    );
    println!(
        "{{\"events_sent\":{sent},\"events_consumed\":{consumed},\"events_lost\":{lost},\"seconds\":{:.3},\"events_per_second\":{:.0},\"consumer_cpu_us_per_event\":{:.3},\"events_per_second_per_core\":{:.0},\"packet_to_flow_ms\":{:.3}}}",
        production.as_secs_f64(),
        consumed as f64 / production.as_secs_f64(),
        cpu_per_event * 1e6,
        1.0 / cpu_per_event,
        delay.as_secs_f64() * 1000.0,
    );
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}
