//! What the agent keeps on disk so that a restart resumes where it stopped:
//! the endpoints (with their ids) and the services in one file, and each
//! resource policy is resolved from in a file of its own under
//! `resources/`, so that applying or deleting one resource writes that
//! resource only, whatever the number of others.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use myelin_model::{Document, ResourceKey};
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
    /// On disk only in state files of agents before `resources/`: read
    /// once, then moved there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Document>,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("agent-state.json")
}

fn resources_dir(dir: &Path) -> PathBuf {
    dir.join("resources")
}

/// The file of one resource: `KIND_NAMESPACE_NAME.json`, every byte but
/// letters, digits, `-` and `.` written `%XX`, so that no name can reach
/// outside the directory or collide with another.
fn resource_file(dir: &Path, key: &ResourceKey) -> PathBuf {
    let escape = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' || (byte == b'.' && !out.is_empty()) {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    };
    resources_dir(dir).join(format!(
        "{}_{}_{}.json",
        escape(&key.kind),
        escape(&key.namespace),
        escape(&key.name)
    ))
}

/// Loads the state; an absent file is an empty state. Resources come from
/// `resources/`, and from the state file of an older agent (moved to
/// `resources/` now, the file's own copy dropped at the next [`save`]).
pub fn load(dir: &Path) -> anyhow::Result<StoredState> {
    let path = state_file(dir);
    let mut state = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; move it away to start the agent afresh",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredState::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut resources: std::collections::BTreeMap<ResourceKey, Document> = Default::default();
    for document in std::mem::take(&mut state.resources) {
        save_resource(dir, &document)?;
        resources.insert(document.resource.key(), document);
    }
    let folder = resources_dir(dir);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("reading {}", folder.display()))?;
    for entry in entries {
        let file = entry.path();
        if file.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let document: Document = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; delete it and apply that resource again",
                file.display()
            )
        })?;
        resources.insert(document.resource.key(), document);
    }
    state.resources = resources.into_values().collect();
    Ok(state)
}

/// Writes `bytes` to `path` atomically (write, fsync, rename), readable by
/// root only: the state names every pod, address and policy of the node.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Saves the endpoints and services (`state.resources` are saved one by
/// one, by [`save_resource`]).
pub fn save(dir: &Path, state: &StoredState) -> anyhow::Result<()> {
    let state = StoredState {
        endpoints: state.endpoints.clone(),
        services: state.services.clone(),
        resources: Vec::new(),
    };
    write_atomically(&state_file(dir), &serde_json::to_vec_pretty(&state)?)
}

/// The CNI plugin's attachments and the pods the control plane told of,
/// kept apart from the endpoints: an attachment is saved before its pod is
/// wired, so that its addresses are never handed out again, also after a
/// crash between the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniState {
    /// Attachments, by the runtime's key.
    pub attachments: Vec<myelin_api::cni::CniAttachment>,
    /// Pods' metadata.
    pub pods: Vec<myelin_api::cni::PodMetadata>,
}

fn cni_state_file(dir: &Path) -> PathBuf {
    dir.join("cni-state.json")
}

/// Loads the CNI state; an absent file is an empty state.
pub fn load_cni(dir: &Path) -> anyhow::Result<CniState> {
    let path = cni_state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; the addresses it holds would be handed out again: repair it \
                 or remove it with the pods it names",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CniState::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Saves the CNI state.
pub fn save_cni(dir: &Path, state: &CniState) -> anyhow::Result<()> {
    write_atomically(&cni_state_file(dir), &serde_json::to_vec_pretty(state)?)
}

/// Saves one resource (replacing the one of the same key).
pub fn save_resource(dir: &Path, document: &Document) -> anyhow::Result<()> {
    let folder = resources_dir(dir);
    create_private_dir(&folder)?;
    let path = resource_file(dir, &document.resource.key());
    write_atomically(&path, &serde_json::to_vec_pretty(document)?)
}

/// Creates `dir` (and its parents) with mode 0700 where it does not exist.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Forgets one resource.
pub fn remove_resource(dir: &Path, key: &ResourceKey) -> anyhow::Result<()> {
    let path = resource_file(dir, key);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceSpec {
        ServiceSpec {
            namespace: "default".into(),
            name: "s".into(),
            cluster_ips: vec![],
            ports: vec![],
            selector: None,
            affinity_timeout_s: Some(10_800),
        }
    }

    fn documents() -> Vec<Document> {
        let yaml = (1..=3)
            .map(|i| crate::testing::allow(&format!("allow-{i}"), "a", "b", 80, None))
            .collect::<Vec<_>>()
            .join("---\n");
        myelin_model::parse_str("test.yaml", &yaml).documents
    }

    #[test]
    fn cni_state_survives_a_restart_and_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_cni(dir.path()).expect("absent"), CniState::default());
        let state = CniState {
            attachments: vec![
                serde_json::from_str(
                    r#"{"key":{"container_id":"c1","ifname":"eth0"},"namespace":"default",
                "pod":"web","netns":"/run/netns/cni-1","host_veth":"myc0123456789ab",
                "mac":"0a:58:0a:f4:07:02","mtu":1450,"ipv4":"10.244.7.2",
                "ipv6":"fd00:10:244:7::2","gateway_v4":"10.244.7.1","gateway_v6":"fe80::1"}"#,
                )
                .expect("an attachment"),
            ],
            pods: vec![
                serde_json::from_str(
                    r#"{"namespace":"default","name":"web","labels":{"app":"web"}}"#,
                )
                .expect("a pod"),
            ],
        };
        save_cni(dir.path(), &state).expect("save");
        assert_eq!(load_cni(dir.path()).expect("load"), state);
        std::fs::write(dir.path().join("cni-state.json"), "{").expect("corrupt");
        let error = load_cni(dir.path()).expect_err("corrupt");
        assert!(
            format!("{error:#}").contains("handed out again"),
            "{error:#}"
        );
    }

    #[test]
    fn state_and_resources_are_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("node");
        create_private_dir(&state_dir).expect("state dir");
        save(&state_dir, &StoredState::default()).expect("save");
        for document in documents() {
            save_resource(&state_dir, &document).expect("save resource");
        }
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(&state_file(&state_dir)), 0o600);
        assert_eq!(mode(&resources_dir(&state_dir)), 0o700);
        for entry in std::fs::read_dir(resources_dir(&state_dir)).expect("resources") {
            let path = entry.expect("entry").path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }

    #[test]
    fn round_trip_and_absent_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("empty"), StoredState::default());
        let state = StoredState {
            endpoints: vec![],
            services: vec![service()],
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

    #[test]
    fn each_resource_is_saved_and_removed_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let documents = documents();
        for document in &documents {
            save_resource(dir.path(), document).expect("saved");
        }
        assert_eq!(load(dir.path()).expect("load").resources, documents);
        remove_resource(dir.path(), &documents[1].resource.key()).expect("removed");
        let files = std::fs::read_dir(dir.path().join("resources"))
            .expect("folder")
            .count();
        assert_eq!(files, 2, "one file per resource left");
        let left = load(dir.path()).expect("load").resources;
        assert_eq!(left, [documents[0].clone(), documents[2].clone()]);
        // Removing what is not there is no error.
        remove_resource(dir.path(), &documents[1].resource.key()).expect("removed");
    }

    #[test]
    fn resources_in_an_older_state_file_move_to_their_own_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = StoredState {
            endpoints: vec![],
            services: vec![service()],
            resources: documents(),
        };
        let path = dir.path().join("agent-state.json");
        std::fs::write(&path, serde_json::to_vec(&old).expect("json")).expect("write");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded, old);
        save(dir.path(), &loaded).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("resources"), "{text}");
        assert_eq!(load(dir.path()).expect("load"), old);
    }

    #[test]
    fn a_name_never_leaves_the_folder() {
        let key = ResourceKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "..".into(),
            name: "../../etc/x_y".into(),
        };
        let path = resource_file(Path::new("/state"), &key);
        assert_eq!(path.parent(), Some(Path::new("/state/resources")));
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("CiliumNetworkPolicy_%2E._%2E.%2F..%2Fetc%2Fx%5Fy.json")
        );
    }
}
