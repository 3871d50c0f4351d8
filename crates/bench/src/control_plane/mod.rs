//! `myelin-bench control-plane`: many agents without a datapath against a real etcd
//! (Debian's, started here on 127.0.0.1 under a temp dir), each with its endpoints under
//! its lease; churn rounds change a share of every agent's endpoints at once and time
//! until every agent has every change; etcd's CPU, memory, database and request counts;
//! and one full agent's memory for the whole cluster's endpoints. Prints one JSON report.
//!
//! What is real: etcd; every agent's store session (its own connection, lease kept alive,
//! its node record and endpoints written by the store's `NodeSession`); identities
//! allocated by the store's transactions; every agent's own watch stream from etcd; the
//! full agent's whole receiving path (see `cluster_agent`). What is simulated: the agents
//! are tasks of this one process on this machine's two cores (their decoding competes with
//! etcd for CPU, which a real cluster's agents would not), and all but the full agent keep
//! only address → identity (see `light`).

mod churn;
mod etcd_load;
mod full;
mod light;
mod tracker;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use myelin_policy::{Identity, LabelSet};
use myelin_store::server::{EtcdServer, EtcdSpec};
use myelin_store::{Endpoint, Keys, NodeSession, Store, StoreAddress, StoreConfig};
use serde_json::json;
use tokio::task::JoinSet;

use etcd_load::EtcdSample;
use full::{BatchCosts, forward_sightings, start_full_agent};
use light::LightAgent;
use tracker::Tracker;

/// The cluster's name in etcd.
const CLUSTER: &str = "cpbench";
/// The full agent's node name.
const FULL_AGENT: &str = "full-agent";
/// How long one phase of the setup may take before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of `myelin-bench control-plane`.
#[derive(Args, Debug)]
pub struct ControlPlaneArgs {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Endpoints per agent.
    #[arg(long, default_value_t = 100)]
    endpoints: u32,
    /// Share of every agent's endpoints changed per churn round (at least one each).
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// Churn rounds, one after the other, each once every agent had the last.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Distinct identities (label sets) the endpoints take.
    #[arg(long, default_value_t = 1000)]
    identities: u32,
    /// A round's writes are spread evenly over this many milliseconds (0: all at once):
    /// with the default, 1 % churn is 1 % of the endpoints changed per second.
    #[arg(long, default_value_t = 1000)]
    window_ms: u64,
    /// Pause between churn rounds, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Diagnostic: the full agent leaves out the proxy's view of remote identities.
    #[arg(long)]
    without_proxy_view: bool,
    /// Agents writing at once while the cluster is populated.
    #[arg(long, default_value_t = 64)]
    writers: usize,
}

/// Runs the benchmark; prints the JSON report on stdout.
pub fn run(args: &ControlPlaneArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.endpoints == 0 || args.endpoints > 200 || args.identities < 2 {
        bail!(
            "--agents must be positive, --endpoints 1 to 200 (addresses per agent: 256) and \
             --identities at least 2"
        );
    }
    myelin_proxy::fd_limit::raise_open_file_limit().context("raising the open-file limit")?;
    let dir = TempDir::create()?;
    let mut etcd = EtcdServer::start(&EtcdSpec {
        unix_socket: false,
        ..EtcdSpec::new(&dir.0, 1)
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    // Ctrl-C or SIGTERM ends the run with an error, so that etcd (a process group of its
    // own) is stopped here too.
    // The agents' watches decode on threads of their own, so that a flood of events delays
    // the writers only as much as the kernel's scheduler does, not a shared task queue.
    let watch_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("watchers")
        .enable_all()
        .build()
        .context("building the watchers' runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = bench(args, &etcd, &dir.0, watch_runtime.handle()) => report,
            stopped = crate::wait_for_stop() => stopped.and_then(|()| bail!("stopped by a signal")),
        }
    });
    // The agents' connections go before etcd does.
    watch_runtime.shutdown_timeout(Duration::from_secs(5));
    runtime.shutdown_timeout(Duration::from_secs(5));
    etcd.stop();
    println!("{}", serde_json::to_string(&report?)?);
    Ok(())
}

/// The temp dir holding etcd's data, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("myelin-cp.{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn bench(
    args: &ControlPlaneArgs,
    etcd: &EtcdServer,
    dir: &Path,
    watch_runtime: &tokio::runtime::Handle,
) -> anyhow::Result<serde_json::Value> {
    let member = &etcd.members()[0];
    let address = member.client_address();
    let pid = member.pid().context("etcd is not running")?;
    let port = etcd.ports()[0].0;
    let data = dir.join("etcd0/data");
    let sample = || EtcdSample::take(pid, &data, port);
    let keys = Keys::new(CLUSTER)?;
    let total = (args.agents * args.endpoints) as usize;
    let started = sample()?;

    // Identities, allocated with the store's transactions and held under one lease.
    let clock = Instant::now();
    let store = blocking_connect(&address).await?;
    let allocator = NodeSession::start(&store, "identities", myelin_store::LAB_LEASE_TTL).await?;
    let mut identities = Vec::new();
    for k in 0..args.identities {
        let labels = sim_labels(k);
        identities.push(
            allocator
                .acquire_identity("identities", &labels, 256 + k)
                .await?,
        );
    }
    let identities_seconds = clock.elapsed().as_secs_f64();
    tracing::info!(
        identities = identities.len(),
        seconds = identities_seconds,
        "identities allocated"
    );

    // The agents, their records and endpoints.
    let clock = Instant::now();
    let agents = populate(args, &address, &identities).await?;
    let population_seconds = clock.elapsed().as_secs_f64();
    let populated = sample()?;
    tracing::info!(
        agents = agents.len(),
        seconds = population_seconds,
        "agents and endpoints written"
    );

    // Every agent's watch, from the populated revision; the full agent lists and watches.
    let clock = Instant::now();
    let revision = current_revision(&address, &keys).await?;
    let tracker = Arc::new(Tracker::default());
    let mut watches = Vec::new();
    for _ in &agents {
        let (address, keys, tracker) = (address.clone(), keys.clone(), tracker.clone());
        let watch = watch_runtime
            .spawn(async move { light::watch(&address, &keys, revision + 1, tracker).await });
        watches.push(watch.await.context("a watcher's task")??);
    }
    let watches_seconds = clock.elapsed().as_secs_f64();
    tracing::info!(seconds = watches_seconds, "watches created");
    let full_address = address.clone();
    let without_proxy_view = args.without_proxy_view;
    let (full, stdout, synced) = tokio::task::spawn_blocking(move || {
        start_full_agent(&full_address, total, without_proxy_view)
    })
    .await??;
    let full_synced = sample()?;
    tracing::info!(?synced, "the full agent has every endpoint");
    let reader_tracker = tracker.clone();
    let batches = Arc::new(BatchCosts::default());
    let reader_batches = batches.clone();
    std::thread::spawn(move || forward_sightings(stdout, &reader_tracker, &reader_batches));

    // Churn rounds.
    let watchers = agents.len() + 1;
    let mut agents = agents;
    let mut rounds = Vec::new();
    let mut all_delays = Vec::new();
    let mut sighting_delays = Vec::new();
    let driver_cpu = crate::cpu::process_run_nanos(std::process::id());
    let full_cpu = crate::cpu::process_run_nanos(full.child.id());
    let before_churn = sample()?;
    for r in 0..args.rounds {
        let (summary, round) =
            churn::churn(args, &mut agents, &identities, &tracker, r, watchers).await?;
        tracing::info!(%summary, "churn round");
        let converged = summary["converged"].as_bool() == Some(true);
        rounds.push(summary);
        if !converged {
            break;
        }
        all_delays.extend(round.all_agents_delays());
        sighting_delays.extend(round.sighting_delays());
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }
    let converged = rounds
        .iter()
        .all(|r| r["converged"].as_bool() == Some(true));
    let after_churn = sample()?;
    let driver_cpu = crate::cpu::process_run_nanos(std::process::id()) - driver_cpu;
    let full_cpu = crate::cpu::process_run_nanos(full.child.id()).saturating_sub(full_cpu);
    let full_rss = crate::soak::rss(full.child.id())?;
    drop(full);
    let batches = batches.take();
    let batch_cpu: Vec<u64> = batches.iter().map(|(_, ns)| *ns).collect();
    for watch in watches {
        watch.abort();
    }

    let changes_per_round = rounds.first().map_or(0, |r: &serde_json::Value| {
        r["changes"].as_u64().unwrap_or(0)
    });
    let rss_before = synced["rss_before_bytes"].as_u64().unwrap_or(0);
    let rss_synced = synced["rss_synced_bytes"].as_u64().unwrap_or(0);
    let grown = rss_synced.saturating_sub(rss_before);
    Ok(json!({
        "agents": args.agents,
        "endpoints_per_agent": args.endpoints,
        "endpoints": total,
        "identities": args.identities,
        "churn": args.churn,
        "window_ms": args.window_ms,
        "changes_per_round": changes_per_round,
        "rounds": args.rounds,
        "watchers": watchers,
        "setup_seconds": {
            "identities": round3(identities_seconds),
            "population": round3(population_seconds),
            "watches": round3(watches_seconds),
            "full_agent_sync": synced["seconds"],
        },
        "converged": converged,
        "convergence_ms": {
            "all_agents": percentiles(&all_delays),
            "each_agent": percentiles(&sighting_delays),
            "rounds": rounds,
        },
        "full_agent": {
            "proxy_view": !args.without_proxy_view,
            "remote_endpoints": synced["remote_endpoints"],
            "rss_before_bytes": rss_before,
            "rss_synced_bytes": rss_synced,
            "rss_after_churn_bytes": full_rss,
            "bytes_per_endpoint": if total > 0 { grown / total as u64 } else { 0 },
            "mib_per_100k_endpoints": round3(grown as f64 * 100_000.0 / total.max(1) as f64 / 1_048_576.0),
            "churn_cpu_seconds": full_cpu as f64 / 1e9,
            "churn_batches": {
                "n": batches.len(),
                "events": batches.iter().map(|(n, _)| n).sum::<u64>(),
                "cpu_ms": percentiles(&batch_cpu),
            },
        },
        "driver_churn_cpu_seconds": driver_cpu as f64 / 1e9,
        "etcd": {
            "population": populated.since(&started),
            "watches_and_full_sync": full_synced.since(&populated),
            "churn": after_churn.since(&before_churn),
            "end": after_churn,
        },
    }))
}

/// The labels of simulated identity `k`.
fn sim_labels(k: u32) -> LabelSet {
    let labels = std::collections::BTreeMap::from([("app".to_string(), format!("sim-{k}"))]);
    let namespace = std::collections::BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "default".to_string(),
    )]);
    LabelSet::for_pod("default", &labels, &namespace, None)
}

/// Agent `agent`'s `n`th address: 10.128.0.0/9 holds 256 per agent.
pub(crate) fn address_of(agent: u32, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + agent * 256 + n))
}

async fn blocking_connect(address: &str) -> anyhow::Result<Store> {
    let config = StoreConfig::new(StoreAddress::Tcp(vec![address.to_string()]), CLUSTER);
    Ok(tokio::task::spawn_blocking(move || Store::connect(&config)).await??)
}

/// Starts every agent and writes its endpoints, `args.writers` agents at a time.
async fn populate(
    args: &ControlPlaneArgs,
    address: &str,
    identities: &[Identity],
) -> anyhow::Result<Vec<LightAgent>> {
    let identities: Arc<[Identity]> = identities.into();
    let mut agents: Vec<Option<LightAgent>> = (0..args.agents).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    let mut next = 0u32;
    loop {
        while tasks.len() < args.writers && next < args.agents {
            let (address, identities, per_agent) =
                (address.to_string(), identities.clone(), args.endpoints);
            let index = next;
            tasks.spawn(async move {
                let mut agent =
                    LightAgent::start(&address, CLUSTER, format!("sim{index}"), index).await?;
                for slot in 0..per_agent {
                    let n = index * per_agent + slot;
                    let endpoint = Endpoint {
                        ip: address_of(index, slot),
                        identity: identities[n as usize % identities.len()],
                        node: agent.name.clone(),
                        namespace: "default".into(),
                        pod: format!("pod-{index}-{slot}"),
                        named_ports: std::collections::BTreeMap::from([("http".to_string(), 80)]),
                        named_udp_ports: std::collections::BTreeMap::new(),
                        ready: true,
                    };
                    agent.session.publish_endpoint(&endpoint).await?;
                    agent.endpoints.push(endpoint);
                }
                agent.next_address = per_agent;
                anyhow::Ok((index, agent))
            });
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (index, agent) = done.context("an agent's task")??;
        agents[index as usize] = Some(agent);
    }
    Ok(agents.into_iter().flatten().collect())
}

async fn current_revision(address: &str, keys: &Keys) -> anyhow::Result<i64> {
    let mut client = etcd_client::Client::connect([address], None).await?;
    let response = client
        .get(
            keys.root(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?;
    response
        .header()
        .map(|h| h.revision())
        .context("etcd's answer has no revision")
}

/// p50, p99 and max of delays in ns, as milliseconds.
fn percentiles(delays: &[u64]) -> serde_json::Value {
    let mut sorted = delays.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
    };
    json!({"n": sorted.len(), "p50": round_ms(at(50.0)), "p99": round_ms(at(99.0)), "max": round_ms(at(100.0))})
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Three decimals.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
