//! A whole cluster on one machine, out of network namespaces.
//!
//! `lab up` starts a supervisor daemon that creates the lab's nodes (each a
//! network namespace running its agent and proxy, joined to the lab's
//! underlay bridge and routing the other nodes' pod CIDRs over it), then
//! applies the manifests: each pod is placed on a node and becomes a
//! network namespace with a veth to that node, dual-stack addresses from the
//! node's pod CIDRs, its own `/etc/hosts` and `resolv.conf`, and its
//! containers' processes. Nodes have no route out of the lab. Everything the
//! lab creates carries the lab's name, and `lab down` removes exactly that.

mod agent_specs;
mod bpffs;
mod control;
pub mod ipam;
mod kubelet;
pub mod names;
mod net;
mod node;
pub mod placement;
pub mod state;
mod stored_resources;
mod supervisor;
mod teardown;
#[cfg(test)]
mod test_manifests;
mod underlay;
mod vocabulary;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use myelin_api::ClientError;
use myelin_api::lab::{LabRequest, LabResponse};
use myelin_model::{Document, ResourceKey};

pub use myelin_api::lab::{Change, LabStatus};
pub use names::{LabNames, MAX_NODES};
pub use supervisor::supervise;

/// Reads the manifests of every path (`-f`, repeatable), in order, and
/// refuses the whole set if any document of any file is bad.
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let parsed = myelin_model::load_path(path);
        if parsed.errors.is_empty() && parsed.documents.is_empty() {
            errors.push(format!("{}: no resources found", path.display()));
        }
        errors.extend(parsed.errors.iter().map(ToString::to_string));
        documents.extend(parsed.documents);
    }
    if !errors.is_empty() {
        bail!(
            "nothing was applied; fix these first:\n{}",
            errors.join("\n")
        );
    }
    Ok(documents)
}

fn names_for(lab: &str) -> anyhow::Result<LabNames> {
    names::validate_lab_name(lab).map_err(|e| anyhow!(e))?;
    Ok(LabNames::new(lab))
}

async fn request(names: &LabNames, request: &LabRequest) -> anyhow::Result<LabResponse> {
    myelin_api::call(&names.socket(), request)
        .await
        .map_err(|e| match e {
            ClientError::Connect { cause, path } => unreachable_lab(&names.lab, &path, &cause),
            other => anyhow!(other),
        })
}

/// Why lab `lab` cannot be reached at `socket`, and what to do.
fn unreachable_lab(lab: &str, socket: &str, cause: &std::io::Error) -> anyhow::Error {
    if cause.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow!(
            "permission denied on {socket}: lab {lab:?} belongs to root (it creates network \
             namespaces); run this command as root, e.g. with sudo"
        )
    } else {
        anyhow!("lab {lab:?} is not running; start it with `myelin lab up -f DIR`")
    }
}

/// Whether any change is an error the command must report.
pub fn any_failed(changes: &[Change]) -> bool {
    changes.iter().any(|c| c.outcome.is_error())
}

/// The changes as kubectl prints them, one a line.
fn render(changes: &[Change]) -> String {
    let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Whether lab `lab` answers.
pub async fn is_up(lab: &str) -> bool {
    match names_for(lab) {
        Ok(names) => request(&names, &LabRequest::Status).await.is_ok(),
        Err(_) => false,
    }
}

/// What a lab is made of when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabShape {
    /// How many nodes (`node1` ... `nodeN`, at most [`MAX_NODES`]).
    pub nodes: u8,
    /// How packets travel between nodes.
    pub routing: myelin_datapath::RoutingMode,
    /// How many etcd members the cluster store has: 1, 3 or 5.
    pub etcd_members: u8,
}

impl LabShape {
    /// Refuses a shape no lab can have, naming the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!("--nodes {}: a lab runs 1 to {MAX_NODES} nodes", self.nodes);
        }
        if ![1, 3, 5].contains(&self.etcd_members) {
            bail!(
                "--etcd-members {}: etcd runs 1, 3 or 5 members (an odd number keeps a majority \
                 when one fails)",
                self.etcd_members
            );
        }
        Ok(())
    }
}

/// Brings lab `lab` up in `shape` with the manifests at `paths`, and returns
/// what was created. `exe` is the myelin binary (for the supervisor, agents
/// and demo apps). All or nothing: if anything fails, the lab is removed.
pub async fn up(
    lab: &str,
    shape: &LabShape,
    paths: &[PathBuf],
    exe: &Path,
) -> anyhow::Result<Vec<Change>> {
    let names = names_for(lab)?;
    shape.check()?;
    let documents = read_manifests(paths)?;
    if is_up(lab).await {
        bail!(
            "lab {lab:?} is already up; add resources with `myelin apply -f`, or run `myelin lab down` first"
        );
    }
    // Leftovers of a lab that crashed go first.
    teardown::teardown(&names, None);
    let run_dir = names.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let log_path = run_dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new(exe)
        .args(["lab", "supervise", "--name", lab, "--nodes"])
        .arg(shape.nodes.to_string())
        .arg("--routing")
        .arg(shape.routing.to_string())
        .arg("--etcd-members")
        .arg(shape.etcd_members.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the lab supervisor")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if request(&names, &LabRequest::Status).await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            teardown::teardown(&names, None);
            bail!("the lab supervisor exited ({status}):\n{}", log.trim());
        }
        if std::time::Instant::now() > deadline {
            down(lab).await?;
            bail!(
                "the lab supervisor did not answer within 30 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match request(&names, &LabRequest::Apply { documents }).await {
        Ok(LabResponse::Changes { changes }) if !any_failed(&changes) => Ok(changes),
        Ok(LabResponse::Changes { changes }) => {
            down(lab).await?;
            bail!(
                "{}\nnothing was applied, and the lab was removed again",
                render(&changes)
            )
        }
        Ok(other) => {
            down(lab).await?;
            bail!("unexpected answer from the supervisor: {other:?}")
        }
        Err(e) => {
            down(lab).await?;
            Err(e.context("the lab was removed again, since not everything could be created"))
        }
    }
}

/// Applies manifests to a running lab; all or nothing. What became of each
/// resource is returned, failures included.
pub async fn apply(lab: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<Change>> {
    let names = names_for(lab)?;
    let documents = read_manifests(paths)?;
    match request(&names, &LabRequest::Apply { documents }).await? {
        LabResponse::Changes { changes } => Ok(changes),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// Deletes the resources named in manifests from a running lab.
pub async fn delete(lab: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<Change>> {
    let names = names_for(lab)?;
    let keys: Vec<ResourceKey> = read_manifests(paths)?
        .iter()
        .map(|d| d.resource.key())
        .collect();
    match request(&names, &LabRequest::Delete { keys }).await? {
        LabResponse::Changes { changes } => Ok(changes),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// The state of a running lab.
pub async fn status(lab: &str) -> anyhow::Result<LabStatus> {
    let names = names_for(lab)?;
    match request(&names, &LabRequest::Status).await? {
        LabResponse::Status(status) => Ok(status),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// Adds a node to the running lab `lab` (named `node<N>` when `name` is
/// `None`) and returns its name.
pub async fn node_add(lab: &str, name: Option<String>) -> anyhow::Result<String> {
    let names = names_for(lab)?;
    if let Some(name) = &name {
        names::validate_node_name(name).map_err(|e| anyhow!(e))?;
    }
    match request(&names, &LabRequest::NodeAdd { name }).await? {
        LabResponse::NodeAdded { name } => Ok(name),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// Drains node `name` of the running lab `lab` and removes it; returns the
/// pods deleted with it and those made in their place (for Deployments).
pub async fn node_delete(lab: &str, name: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let names = names_for(lab)?;
    let delete = LabRequest::NodeDelete {
        name: name.to_string(),
    };
    match request(&names, &delete).await? {
        LabResponse::NodeDeleted { pods, replaced, .. } => Ok((pods, replaced)),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// Removes lab `lab`: asks its supervisor to tear it down, then sweeps by
/// name whatever is left (a crashed lab included). Safe to run twice.
pub async fn down(lab: &str) -> anyhow::Result<()> {
    let names = names_for(lab)?;
    let recorded = state::LabState::load(&names.run_dir().join("state.json")).ok();
    // The supervisor's own teardown is the orderly path; the sweep after it
    // covers a supervisor that is gone or hung.
    let _ = tokio::time::timeout(Duration::from_secs(30), request(&names, &LabRequest::Down)).await;
    if let Some(supervisor) = recorded.as_ref().and_then(|s| s.supervisor.clone()) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while supervisor.alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    teardown::teardown(&names, recorded.as_ref());
    Ok(())
}

/// Runs `command` inside pod `pod` of `namespace` (with the pod's hosts and
/// resolv.conf), replacing this process. Returns only on failure.
pub fn exec(lab: &str, namespace: &str, pod: &str, command: &[String]) -> anyhow::Error {
    let names = match names_for(lab) {
        Ok(names) => names,
        Err(e) => return e,
    };
    let state = match state::LabState::load(&names.run_dir().join("state.json")) {
        Ok(state) => state,
        Err(_) => {
            return anyhow!("lab {lab:?} is not running; start it with `myelin lab up -f DIR`");
        }
    };
    let Some(record) = state.pods.get(&state::key(namespace, pod)) else {
        let known: Vec<&String> = state.pods.keys().collect();
        return anyhow!("pod {namespace}/{pod} not found in lab {lab:?}; pods: {known:?}");
    };
    if command.is_empty() {
        return anyhow!("no command given: myelin lab exec {pod} -- CMD [ARGS...]");
    }
    let error = std::process::Command::new("ip")
        .args(["netns", "exec", &record.netns])
        .args(command)
        .exec();
    anyhow!(
        "running `ip netns exec {} {}`: {error}",
        record.netns,
        command.join(" ")
    )
}
