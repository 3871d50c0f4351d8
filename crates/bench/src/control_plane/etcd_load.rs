//! What etcd spends: its process's CPU time and resident memory from `/proc`, its database
//! file, and request counters from its own `/metrics` (served on the client port, here
//! 127.0.0.1).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// Counters and gauges read from `/metrics`, by name (and gRPC method where it has one).
const METRICS: [&str; 10] = [
    "grpc_server_handled_total",
    "grpc_server_msg_sent_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_server_proposals_committed_total",
];

/// The series of [`METRICS`] that are levels, not counts.
const GAUGES: [&str; 2] = [
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_watcher_total",
];

/// One look at etcd.
#[derive(Debug, Clone, Serialize)]
pub struct EtcdSample {
    /// CPU time of all its threads, in seconds.
    pub cpu_seconds: f64,
    /// Its resident set, in bytes.
    pub rss_bytes: u64,
    /// Its database file (`member/snap/db`), in bytes.
    pub db_bytes: u64,
    /// The selected series of `/metrics`.
    pub metrics: BTreeMap<String, f64>,
}

impl EtcdSample {
    /// Reads etcd with process id `pid`, data dir `data` and client port `port`.
    pub fn take(pid: u32, data: &Path, port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            cpu_seconds: crate::cpu::process_run_nanos(pid) as f64 / 1e9,
            rss_bytes: crate::soak::rss(pid)?,
            db_bytes: std::fs::metadata(data.join("member/snap/db")).map_or(0, |m| m.len()),
            metrics: read_metrics(port),
        })
    }

    /// What grew from `earlier` to this sample: CPU and every counter (gauges as now);
    /// series that did not move are left out.
    pub fn since(&self, earlier: &Self) -> EtcdSample {
        let metrics = self
            .metrics
            .iter()
            .map(|(k, v)| {
                let before = if GAUGES.contains(&k.as_str()) {
                    0.0
                } else {
                    earlier.metrics.get(k).copied().unwrap_or(0.0)
                };
                (k.clone(), v - before)
            })
            .filter(|(_, v)| *v != 0.0)
            .collect();
        EtcdSample {
            cpu_seconds: self.cpu_seconds - earlier.cpu_seconds,
            rss_bytes: self.rss_bytes,
            db_bytes: self.db_bytes,
            metrics,
        }
    }
}

/// The selected series of etcd's `/metrics`, summed per name and gRPC method (empty when
/// etcd does not answer: the figures then say so by their absence).
fn read_metrics(port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(text) = get(port, "/metrics") else {
        return out;
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if !METRICS.contains(&name) {
            continue;
        }
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches(['"', '}']));
        let key = match method {
            Some(method) => format!("{name}{{{method}}}"),
            None => name.to_string(),
        };
        if value != 0.0 {
            *out.entry(key).or_insert(0.0) += value;
        }
    }
    out
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` (1.0: no chunked body to undo); the body.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}
