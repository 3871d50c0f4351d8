//! Churn rounds: every agent changes its share of endpoints through its own session, and
//! the round waits until every watcher saw every change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use myelin_policy::Identity;
use serde_json::json;
use tokio::task::JoinSet;

use super::light::LightAgent;
use super::tracker::{Round, Tracker};
use super::{ControlPlaneArgs, address_of, round3};
use crate::cluster_agent::monotonic_ns;

/// How long after its window a churn round may take to reach every agent before the run
/// stops churning and reports what it has, with the round marked as not converged.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// One churn round: every agent changes its share of endpoints (even rounds give an
/// endpoint another identity, odd ones replace it by a new address), the writes spread
/// over the round's window; waits until every watcher saw every change.
pub async fn churn(
    args: &ControlPlaneArgs,
    agents: &mut [LightAgent],
    identities: &[Identity],
    tracker: &Tracker,
    r: u32,
    watchers: usize,
) -> anyhow::Result<(serde_json::Value, Arc<Round>)> {
    let per_agent =
        ((f64::from(args.endpoints) * args.churn).round() as u32).clamp(1, args.endpoints);
    // (agent, slot, old address if replaced, new entry)
    let mut plan = Vec::new();
    for (a, agent) in agents.iter_mut().enumerate() {
        for c in 0..per_agent {
            let slot = ((r * per_agent + c) % args.endpoints) as usize;
            let mut endpoint = agent.endpoints[slot].clone();
            let old = if r.is_multiple_of(2) {
                let at = identities
                    .iter()
                    .position(|i| *i == endpoint.identity)
                    .unwrap_or(0);
                // Another identity, never the same one (an unchanged value is no change).
                let step = 1 + a % (identities.len() - 1);
                endpoint.identity = identities[(at + step) % identities.len()];
                None
            } else {
                let old = endpoint.ip;
                if agent.next_address >= 256 {
                    bail!("agent {a} ran out of addresses: fewer rounds or endpoints");
                }
                endpoint.ip = address_of(a as u32, agent.next_address);
                agent.next_address += 1;
                endpoint.pod = format!("{}-r{r}", endpoint.pod);
                Some(old)
            };
            agent.endpoints[slot] = endpoint.clone();
            plan.push((a, old, endpoint));
        }
    }
    let round = Arc::new(Round::new(
        &plan
            .iter()
            .map(|(_, _, e)| (e.ip, e.identity))
            .collect::<Vec<_>>(),
    ));
    tracker.start(round.clone());
    let started = monotonic_ns();
    let start = tokio::time::Instant::now();
    let changes = plan.len().max(1) as u64;
    let mut tasks = JoinSet::new();
    for (index, (a, old, endpoint)) in plan.into_iter().enumerate() {
        let (session, round) = (agents[a].session.clone(), round.clone());
        let at = start + Duration::from_millis(args.window_ms * index as u64 / changes);
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            round.issue(index, monotonic_ns());
            // As the agent's writer: a write etcd did not answer in time is logged and
            // written again by the session once etcd answers; the change counts as seen
            // only when every agent has it.
            let mut failed = 0;
            if let Some(old) = old
                && let Err(error) = session.withdraw_endpoint(old).await
            {
                tracing::warn!(%error, "a withdrawal is late");
                failed += 1;
            }
            if let Err(error) = session.publish_endpoint(&endpoint).await {
                tracing::warn!(%error, "a publish is late");
                failed += 1;
            }
            failed
        });
    }
    let mut late_writes = 0;
    while let Some(done) = tasks.join_next().await {
        late_writes += done.context("a churn write")?;
    }
    let written = monotonic_ns();
    let wanted = round.len() * watchers;
    tracing::debug!(round = r, changes = round.len(), "written");
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut report = Instant::now() + Duration::from_secs(5);
    while round.observations() < wanted && Instant::now() < deadline {
        if Instant::now() > report {
            tracing::info!(
                round = r,
                seen = round.observations(),
                wanted,
                "waiting for the agents"
            );
            report += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ms = |ns: u64| round3(ns as f64 / 1e6);
    let summary = json!({
        "round": r,
        "converged": round.observations() >= wanted,
        "sightings": round.observations(),
        "sightings_wanted": wanted,
        "kind": if r.is_multiple_of(2) { "identity changed" } else { "replaced" },
        "changes": round.len(),
        "window_ms": args.window_ms,
        "writes_ms": ms(written - started),
        "late_writes": late_writes,
        "converged_ms": ms(round.last_sighting().saturating_sub(started)),
    });
    Ok((summary, round))
}
