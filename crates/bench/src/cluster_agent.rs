//! `myelin-bench cluster-agent`: one agent's receiving side of the cluster store, without a
//! datapath, in a process of its own so that its resident memory is its own.
//!
//! It runs the agent's own code: `EtcdCluster` (the node's lease and record, the watches of
//! identities, nodes and endpoints), `RemoteState::apply` into a `PolicyEngine` and the
//! proxy's view of remote identities (`ProxyConfig::update_remote`), batched as the agent's
//! state owner batches cluster events. What it leaves out is what needs a datapath: the
//! kernel maps, the overlay's routes and services' backends.
//!
//! Output, one JSON object per line on stdout: `{"synced": ...}` once every expected remote
//! endpoint is in the engine (with the resident memory before the watches started and
//! then), after that `{"seen": IP, "identity": N, "t": MONOTONIC_NS}` for every remote
//! endpoint change the engine took and `{"batch": {"events": N, "cpu_ns": NS}}` for every
//! batch: the CPU time this thread spent applying it (the state owner's share of a batch;
//! the watches' decoding is not in it).

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use myelin_agent::cluster::{
    Cluster as _, ClusterEvent, EtcdCluster, EtcdClusterConfig, RemoteState,
};
use myelin_agent::l7::ProxyConfig;
use myelin_policy::PolicyEngine;
use myelin_store::{StoreAddress, Update};
use serde_json::json;
use tokio::sync::mpsc;

/// Events taken in one batch, as the agent's state owner takes them.
const EVENT_BATCH: usize = 1024;

/// Options of `myelin-bench cluster-agent`.
#[derive(Args, Debug)]
pub struct ClusterAgentArgs {
    /// etcd's client address (`127.0.0.1:PORT`).
    #[arg(long)]
    store: String,
    /// The cluster's name.
    #[arg(long)]
    cluster: String,
    /// This node's name.
    #[arg(long)]
    node: String,
    /// How many remote endpoints make the view complete.
    #[arg(long)]
    expect: usize,
    /// Diagnostic: leave out the proxy's view of remote identities, to split the memory
    /// and time it costs from the rest.
    #[arg(long)]
    without_proxy_view: bool,
    /// Fail when the view is not complete after this many seconds.
    #[arg(long, default_value_t = 600)]
    sync_timeout_s: u64,
}

/// The monotonic clock in nanoseconds: the same clock in every process of the machine, so
/// the driver compares its times with this process's.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Runs until stdin closes (the driver ends it) or the store's stream ends.
pub fn run(args: &ClusterAgentArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(agent(args))
}

async fn agent(args: &ClusterAgentArgs) -> anyhow::Result<()> {
    let config = EtcdClusterConfig {
        address: StoreAddress::Tcp(vec![args.store.clone()]),
        cluster: args.cluster.clone(),
        node: args.node.clone(),
        addresses: vec![IpAddr::from([10, 99, 255, 254])],
        pod_cidrs: Vec::new(),
        observer_address: None,
        lease_ttl: myelin_agent::cluster::LAB_LEASE_TTL,
    };
    let cluster = EtcdCluster::start(&config).await?;
    let mut engine = PolicyEngine::new(cluster.identity_store(), args.node.clone());
    let mut remote = RemoteState::new(&args.node);
    let mut proxy = ProxyConfig::default();
    let rss_before = crate::soak::rss(std::process::id())?;
    let started = Instant::now();
    let (events, mut queue) = mpsc::channel::<ClusterEvent>(EVENT_BATCH);
    cluster.watch(events);
    // The driver closes our stdin when it is done: stop then.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop_tx.send(());
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.sync_timeout_s);
    let mut out = std::io::stdout().lock();
    let (mut endpoints_synced, mut identities_synced, mut synced) = (false, false, false);
    loop {
        let first = tokio::select! {
            event = queue.recv() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep_until(deadline), if !synced => anyhow::bail!(
                "{} of {} remote endpoints after {} s",
                engine.remote_endpoints().count(), args.expect, args.sync_timeout_s
            ),
        };
        let mut batch = vec![first];
        while batch.len() < EVENT_BATCH
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        let mut seen = Vec::new();
        let mut addresses = Vec::new();
        let events = batch.len();
        let cpu_before = thread_cpu_ns();
        for event in batch {
            match &event {
                ClusterEvent::Endpoint(Update::Synced) => endpoints_synced = true,
                ClusterEvent::Identity(Update::Synced) => identities_synced = true,
                ClusterEvent::Endpoint(Update::Upsert(ip, endpoint)) if synced => {
                    seen.push((*ip, endpoint.identity));
                }
                _ => {}
            }
            addresses.extend(remote.apply(event, &mut engine).addresses);
        }
        if !args.without_proxy_view {
            proxy.update_remote(&engine, addresses);
        }
        let cpu_ns = thread_cpu_ns().saturating_sub(cpu_before);
        let now = monotonic_ns();
        for (ip, identity) in seen {
            if engine.identity_of_ip(ip) == identity {
                writeln!(
                    out,
                    "{}",
                    json!({"seen": ip, "identity": identity, "t": now})
                )?;
            }
        }
        if synced {
            writeln!(
                out,
                "{}",
                json!({"batch": {"events": events, "cpu_ns": cpu_ns}})
            )?;
        }
        if !synced && endpoints_synced && identities_synced {
            let count = engine.remote_endpoints().count();
            if count >= args.expect {
                synced = true;
                let line = json!({"synced": {
                    "remote_endpoints": count,
                    "seconds": round3(started.elapsed()),
                    "rss_before_bytes": rss_before,
                    "rss_synced_bytes": crate::soak::rss(std::process::id())?,
                }});
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
    }
}

/// The CPU time of this thread in nanoseconds.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
