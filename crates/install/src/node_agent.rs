//! The node's side: the ConfigMap with the agent's settings and the CNI conflist, and
//! the DaemonSet that runs the agent and the proxy on every node and installs the CNI
//! plugin.
//!
//! The agent has no Kubernetes mode yet (it does not read pods, services or policies
//! from the API server), so the DaemonSet runs it with the flags it has today that make
//! sense on a node: a node alone (`--identity-store`), its API socket where the CNI
//! plugin looks, its proxy's and observer's sockets, metrics and probes on loopback.
//! Left out for now, each needing the Kubernetes mode: `--pod-cidr` (from
//! `Node.spec.podCIDRs`), `--dns-listen` (the node's addresses) and `--cluster-name` and
//! `--routing` (which the agent takes only with a cluster store today); the ConfigMap
//! carries the cluster name and routing for that mode.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::labels;
use crate::options::Checked;

/// The DaemonSet's name.
pub const DAEMONSET: &str = "myelin";

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "myelin-config";

/// The conflist's file name, in the ConfigMap and in the node's `/etc/cni/net.d`.
pub const CONFLIST: &str = "10-myelin.conflist";

/// Where the image holds the `myelin` binary.
pub const MYELIN_BINARY: &str = "/usr/bin/myelin";

/// Where the image holds the CNI plugin.
pub const CNI_BINARY: &str = "/usr/bin/myelin-cni";

/// The node's directory of Myelin's sockets (host and container alike).
pub const RUN_DIR: &str = "/run/myelin";

/// The agent's API socket: the conflist's `agentSocket`.
pub const AGENT_SOCKET: &str = "/run/myelin/agent.sock";

/// The node's directory of the agent's state (CNI attachments, identities).
pub const STATE_DIR: &str = "/var/lib/myelin";

/// The agent's metrics, `/healthz` and `/readyz` port, on loopback.
pub const AGENT_METRICS_PORT: u16 = 9962;

/// The proxy's metrics and `/healthz` port, on loopback (the proxy's default).
pub const PROXY_METRICS_PORT: u16 = 9966;

/// Where the init container sees the ConfigMap.
const CONFIG_MOUNT: &str = "/etc/myelin";

/// Where the init container sees the node's CNI directories.
const HOST_CNI_BIN: &str = "/host/opt/cni/bin";
const HOST_CNI_CONF: &str = "/host/etc/cni/net.d";

/// The ConfigMap's keys.
pub mod keys {
    /// The cluster's name.
    pub const CLUSTER_NAME: &str = "cluster-name";
    /// `tunnel` or `native`.
    pub const ROUTING: &str = "routing";
    /// The pod MTU, when one was chosen.
    pub const POD_MTU: &str = "pod-mtu";
}

/// The conflist the init container installs: the plugin with the agent's socket (and
/// the pod MTU when one was chosen), then the standard `portmap` plugin for `hostPort`s.
pub fn conflist(options: &Checked) -> serde_json::Value {
    let mut myelin = serde_json::json!({
        "type": "myelin-cni",
        "agentSocket": AGENT_SOCKET,
    });
    if let Some(mtu) = options.pod_mtu {
        myelin["mtu"] = mtu.into();
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "myelin",
        "plugins": [
            myelin,
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The ConfigMap: the agent's settings and the conflist.
pub fn config_map(options: &Checked) -> ConfigMap {
    let mut data = BTreeMap::from([
        (keys::CLUSTER_NAME.to_owned(), options.cluster_name.clone()),
        (keys::ROUTING.to_owned(), options.routing.to_string()),
        (
            CONFLIST.to_owned(),
            // Pretty JSON with a final newline, as a file a person reads on the node.
            format!("{:#}\n", conflist(options)),
        ),
    ]);
    if let Some(mtu) = options.pod_mtu {
        data.insert(keys::POD_MTU.to_owned(), mtu.to_string());
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.to_owned()),
            namespace: Some(options.namespace.clone()),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A node directory as a volume; `DirectoryOrCreate` for Myelin's own, `Directory` for
/// what the node must have already.
fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(kind.to_owned()),
        }),
        ..Volume::default()
    }
}

/// Mounts volume `name` at `path`; `HostToContainer` for directories where the node
/// mounts things after the pod started (bpffs, network namespaces).
fn mount(name: &str, path: &str, host_to_container: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        mount_propagation: host_to_container.then(|| "HostToContainer".to_owned()),
        ..VolumeMount::default()
    }
}

/// A probe asking `path` on loopback's `port` (the pods share the node's network
/// namespace, so the kubelet reaches the loopback the agent listens on).
fn http_probe(path: &str, port: u16, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            host: Some("127.0.0.1".to_owned()),
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The agent's command line: the flags of today's agent that make sense on a node.
pub fn agent_args() -> Vec<String> {
    let metrics = format!("127.0.0.1:{AGENT_METRICS_PORT}");
    strings(&[
        "agent",
        // The kubelet expands `$(NODE_NAME)` from the container's environment.
        "--node",
        "$(NODE_NAME)",
        "--api-socket",
        AGENT_SOCKET,
        "--bpffs",
        "/sys/fs/bpf/myelin",
        "--state-dir",
        STATE_DIR,
        // A node alone: identities numbered by this node's agent only, until the
        // Kubernetes mode allocates them as MyelinIdentity resources.
        "--identity-store",
        "/var/lib/myelin/identities.json",
        "--proxy-socket",
        "/run/myelin/proxy.sock",
        "--observer-socket",
        "/run/myelin/observer.sock",
        "--metrics",
        &metrics,
    ])
}

/// The proxy's command line.
pub fn proxy_args() -> Vec<String> {
    let metrics = format!("127.0.0.1:{PROXY_METRICS_PORT}");
    strings(&[
        "proxy",
        "--control-socket",
        "/run/myelin/proxy.sock",
        "--snapshot-file",
        "/var/lib/myelin/proxy-snapshot.json",
        "--metrics",
        &metrics,
    ])
}

/// The init container's script: copy, then rename, so that a runtime executing the
/// plugin or reading the directory never sees half a file.
fn install_cni_script() -> String {
    format!(
        "cp {CNI_BINARY} {HOST_CNI_BIN}/.myelin-cni.new\n\
         mv -f {HOST_CNI_BIN}/.myelin-cni.new {HOST_CNI_BIN}/myelin-cni\n\
         cp {CONFIG_MOUNT}/{CONFLIST} {HOST_CNI_CONF}/.{CONFLIST}.new\n\
         mv -f {HOST_CNI_CONF}/.{CONFLIST}.new {HOST_CNI_CONF}/{CONFLIST}\n"
    )
}

fn install_cni(image: &str) -> Container {
    Container {
        name: "install-cni".to_owned(),
        image: Some(image.to_owned()),
        command: Some(strings(&["/bin/sh", "-ec", &install_cni_script()])),
        volume_mounts: Some(vec![
            VolumeMount {
                read_only: Some(true),
                ..mount("config", CONFIG_MOUNT, false)
            },
            mount("cni-bin", HOST_CNI_BIN, false),
            mount("cni-conf", HOST_CNI_CONF, false),
        ]),
        ..Container::default()
    }
}

fn agent(image: &str) -> Container {
    Container {
        name: "agent".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![MYELIN_BINARY.to_owned()]),
        args: Some(agent_args()),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        // eBPF programs and maps, links and routes on the node, pods' namespaces.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        liveness_probe: Some(http_probe("/healthz", AGENT_METRICS_PORT, 10)),
        readiness_probe: Some(http_probe("/readyz", AGENT_METRICS_PORT, 5)),
        volume_mounts: Some(vec![
            mount("bpffs", "/sys/fs/bpf", true),
            mount("run", RUN_DIR, false),
            mount("state", STATE_DIR, false),
            mount("netns", "/run/netns", true),
        ]),
        ..Container::default()
    }
}

fn proxy(image: &str) -> Container {
    Container {
        name: "proxy".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![MYELIN_BINARY.to_owned()]),
        args: Some(proxy_args()),
        // Transparent sockets (IP_TRANSPARENT) and packet marks, nothing more.
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN", "NET_RAW"])),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        liveness_probe: Some(http_probe("/healthz", PROXY_METRICS_PORT, 10)),
        volume_mounts: Some(vec![
            mount("run", RUN_DIR, false),
            mount("state", STATE_DIR, false),
        ]),
        ..Container::default()
    }
}

/// The DaemonSet: one agent and one proxy per node, the CNI plugin installed first.
pub fn daemon_set(options: &Checked) -> DaemonSet {
    let pod_labels = labels::agent_pods();
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(DAEMONSET.to_owned()),
            namespace: Some(options.namespace.clone()),
            labels: Some(pod_labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..LabelSelector::default()
            },
            // One node at a time: its pods keep their wiring while its agent restarts.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..RollingUpdateDaemonSet::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(crate::rbac::NAME.to_owned()),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    // Every node, tainted or not: pods there need their network.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_owned()),
                        ..Toleration::default()
                    }]),
                    init_containers: Some(vec![install_cni(&options.image)]),
                    containers: vec![agent(&options.image), proxy(&options.image)],
                    volumes: Some(vec![
                        host_path("bpffs", "/sys/fs/bpf", "DirectoryOrCreate"),
                        host_path("run", RUN_DIR, "DirectoryOrCreate"),
                        host_path("state", STATE_DIR, "DirectoryOrCreate"),
                        host_path("netns", "/run/netns", "DirectoryOrCreate"),
                        host_path("cni-bin", "/opt/cni/bin", "DirectoryOrCreate"),
                        host_path("cni-conf", "/etc/cni/net.d", "DirectoryOrCreate"),
                        Volume {
                            name: "config".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: CONFIG_MAP.to_owned(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}
