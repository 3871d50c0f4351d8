//! The full agent (`myelin-bench cluster-agent`) as a child process: started, waited for
//! until it has every endpoint, its sightings fed to the tracker, ended on drop.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use myelin_policy::Identity;

use super::tracker::Tracker;
use super::{CLUSTER, FULL_AGENT, PHASE_TIMEOUT};

/// The full agent's child process, ended (stdin closed, then killed) on drop.
pub struct FullAgent {
    /// The process.
    pub child: Child,
}

impl Drop for FullAgent {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `myelin-bench cluster-agent` and waits until it has every endpoint.
pub fn start_full_agent(
    address: &str,
    expect: usize,
    without_proxy_view: bool,
) -> anyhow::Result<(FullAgent, BufReader<ChildStdout>, serde_json::Value)> {
    let exe = std::env::current_exe().context("finding myelin-bench")?;
    let child = Command::new(exe)
        .args([
            "cluster-agent",
            "--store",
            address,
            "--cluster",
            CLUSTER,
            "--node",
            FULL_AGENT,
        ])
        .args(["--expect", &expect.to_string()])
        .args(["--sync-timeout-s", &PHASE_TIMEOUT.as_secs().to_string()])
        .args(without_proxy_view.then_some("--without-proxy-view"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the full agent")?;
    let mut full = FullAgent { child };
    let stdout = full
        .child
        .stdout
        .take()
        .context("the full agent's stdout")?;
    let mut lines = BufReader::new(stdout);
    // The full agent gives up by itself after PHASE_TIMEOUT.
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            bail!("the full agent ended before it had every endpoint");
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).context("the full agent's output")?;
        if let Some(synced) = value.get("synced") {
            let synced = synced.clone();
            return Ok((full, lines, synced));
        }
    }
}

/// What each batch of events cost the full agent after its first sync: (events, CPU ns).
#[derive(Debug, Default)]
pub struct BatchCosts(Mutex<Vec<(u64, u64)>>);

impl BatchCosts {
    /// The batches so far.
    pub fn take(&self) -> Vec<(u64, u64)> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

/// Feeds the full agent's sightings to `tracker` and its batches' costs to `batches` until
/// its output ends.
pub fn forward_sightings(stdout: BufReader<ChildStdout>, tracker: &Tracker, batches: &BatchCosts) {
    for line in stdout.lines() {
        let Ok(line) = line else { return };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let (Some(events), Some(cpu_ns)) = (
            value["batch"]["events"].as_u64(),
            value["batch"]["cpu_ns"].as_u64(),
        ) {
            if let Ok(mut b) = batches.0.lock() {
                b.push((events, cpu_ns));
            }
            continue;
        }
        let (Some(ip), Some(identity), Some(t)) = (
            value["seen"]
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok()),
            value["identity"].as_u64(),
            value["t"].as_u64(),
        ) else {
            continue;
        };
        tracker.saw(ip, identity as Identity, t);
    }
}
