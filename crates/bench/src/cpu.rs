//! CPU accounting from `/proc`: machine-wide busy time and the run time of process trees.
//!
//! The kernel of these machines has no IRQ time accounting, so softirq work (veth
//! forwarding, the TC programs) is charged to whichever task runs when it happens: a packet
//! sent by the generator is received, forwarded and delivered in the generator's own
//! context. The figure that holds up is therefore the run time of *everything the benchmark
//! started* (system under test, generator, and the ksoftirqd threads that take over when
//! softirq work piles up) per request; at a fixed offered rate the generator's share is the
//! same in every scenario, so differences between scenarios are the mesh's cost. Other work
//! on the machine (the rest of the busy time) is reported as noise, not counted.

use std::path::Path;

use anyhow::Context as _;

/// Nanoseconds per `/proc/stat` tick.
fn tick_nanos() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / u64::try_from(hz).unwrap_or(100)
    } else {
        10_000_000
    }
}

/// Busy time of all CPUs (everything but idle and iowait), in nanoseconds.
pub fn machine_busy_nanos() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no aggregate cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("parsing /proc/stat"))
        .collect::<anyhow::Result<_>>()?;
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok(total.saturating_sub(idle) * tick_nanos())
}

/// Run time of every thread of process `pid`, in nanoseconds (0 if it is gone).
pub fn process_run_nanos(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `pids` and all their descendants, found once by scanning `/proc`.
pub fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(&entry.path()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut all: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for (pid, ppid) in &parents {
            if *ppid == parent && !all.contains(pid) {
                all.push(*pid);
            }
        }
        i += 1;
    }
    all
}

/// The parent pid from `/proc/PID/stat` (the field after the parenthesised command).
fn parent_of(proc_dir: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's per-CPU softirq threads (`ksoftirqd/N`).
pub fn softirq_threads() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with("ksoftirqd/").then_some(pid)
        })
        .collect()
}

/// One reading of the counters a measurement window needs.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Busy time of the whole machine.
    pub busy: u64,
    /// Run time of the generator process.
    pub generator: u64,
    /// Run time of the system under test's processes.
    pub sut_tasks: u64,
    /// Run time of the ksoftirqd threads.
    pub softirqd: u64,
}

impl Reading {
    /// Reads the counters now.
    pub fn take(sut_pids: &[u32], softirqd_pids: &[u32]) -> anyhow::Result<Self> {
        let sum = |pids: &[u32]| pids.iter().map(|p| process_run_nanos(*p)).sum();
        Ok(Self {
            busy: machine_busy_nanos()?,
            generator: process_run_nanos(std::process::id()),
            sut_tasks: sum(sut_pids),
            softirqd: sum(softirqd_pids),
        })
    }
}
