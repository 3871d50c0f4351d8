//! Removing a lab: by its record when there is one, and by its names in any
//! case, so that a crashed lab leaves nothing behind either. Only processes
//! the lab recorded (same PID and start time) are signalled.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::names::LabNames;
use crate::state::{LabState, ProcessRecord};
use crate::{bpffs, net};

/// Stops processes the lab started: SIGTERM to each one's process group,
/// then SIGKILL to those still there after a grace period.
pub fn stop_processes(processes: &[ProcessRecord]) {
    let live: Vec<&ProcessRecord> = processes.iter().filter(|p| p.alive()).collect();
    for p in &live {
        let _ = killpg(Pid::from_raw(p.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while live.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in live.iter().filter(|p| p.alive()) {
        let _ = killpg(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
}

/// Removes `/etc/netns/<netns>`, the pod's hosts and resolv.conf.
pub fn remove_netns_files(netns: &str) {
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(netns));
}

/// Removes everything of lab `names`: its processes (from `state`, or from
/// the state file), every network namespace and /etc/netns entry with the
/// lab's prefix, its bpffs mount and its run directory. Never fails: each
/// step is attempted and what could not be removed is logged.
pub fn teardown(names: &LabNames, state: Option<&LabState>) {
    let loaded;
    let state = match state {
        Some(state) => Some(state),
        None => {
            loaded = LabState::load(&names.run_dir().join("state.json")).ok();
            loaded.as_ref()
        }
    };
    if let Some(state) = state {
        let mut processes = state.processes();
        // The supervisor itself is stopped by its caller, never by itself.
        if let Some(supervisor) = &state.supervisor
            && supervisor.pid != std::process::id()
        {
            processes.push(supervisor.clone());
        }
        stop_processes(&processes);
    }
    let prefix = names.netns_prefix();
    // Pods first, then nodes, the underlay last: a pod's veth lives in its
    // node, a node's underlay veth in the underlay (the links of both go
    // with the namespaces; none is ever in this machine's own namespace).
    let underlay = names.underlay_netns();
    let mut doomed: Vec<String> = net::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    doomed.sort_by_key(|n| {
        if *n == underlay {
            2
        } else if state.is_some_and(|s| s.nodes.iter().any(|node| &node.netns == n)) {
            1
        } else {
            0
        }
    });
    for netns in doomed {
        if let Err(e) = net::delete_netns(&netns) {
            tracing::warn!("{e:#}");
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    bpffs::unmount(&names.bpffs());
    let _ = std::fs::remove_dir_all(names.run_dir());
}
