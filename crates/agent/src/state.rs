//! What the agent keeps on disk so that a restart resumes where it stopped:
//! the endpoints (with their ids) and the services.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::api::{EndpointSpec, ServiceSpec};

/// An endpoint and the id the agent gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEndpoint {
    /// Endpoint id.
    pub id: u32,
    /// The endpoint as it was last upserted.
    pub spec: EndpointSpec,
}

/// The agent's persistent state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredState {
    /// Endpoints.
    pub endpoints: Vec<StoredEndpoint>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// Resources policy is resolved from (policies, namespaces, services).
    #[serde(default)]
    pub resources: Vec<myelin_model::Document>,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("agent-state.json")
}

/// Loads the state; an absent file is an empty state.
pub fn load(dir: &Path) -> anyhow::Result<StoredState> {
    let path = state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; move it away to start the agent afresh",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoredState::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Saves the state atomically (write, fsync, rename).
pub fn save(dir: &Path, state: &StoredState) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = state_file(dir);
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(state)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("empty"), StoredState::default());
        let state = StoredState {
            endpoints: vec![],
            services: vec![ServiceSpec {
                namespace: "default".into(),
                name: "s".into(),
                cluster_ips: vec![],
                ports: vec![],
                selector: None,
                affinity_timeout_s: Some(10_800),
            }],
            resources: vec![],
        };
        save(dir.path(), &state).expect("save");
        assert_eq!(load(dir.path()).expect("load"), state);
        std::fs::write(dir.path().join("agent-state.json"), b"{").expect("write");
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("corrupt")
        );
    }
}
