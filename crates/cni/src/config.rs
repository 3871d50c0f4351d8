//! The plugin's input: the network configuration on stdin (one plugin's
//! entry of a conflist, with the list's `name` and `cniVersion`, and the
//! previous plugin's result when chained) and the `CNI_*` variables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{CniError, Code};
use crate::result::CniResult;

/// The spec versions this plugin speaks; results are shaped for the
/// configuration's.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// Where the agent's socket is when the configuration names none.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/myelin/agent.sock";

/// How long ADD waits for the agent to learn of the pod by default.
pub const DEFAULT_WAIT_FOR_POD_SECONDS: u64 = 10;

/// The network configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version results are shaped for.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin's name (`myelin-cni`).
    #[serde(rename = "type")]
    pub plugin: String,
    /// The agent's API socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// How long ADD waits for the agent to learn of the pod.
    #[serde(default = "default_wait")]
    pub wait_for_pod_seconds: u64,
    /// The pod namespace of containers whose runtime passes no
    /// `K8S_POD_NAMESPACE` (podman passes only `K8S_POD_NAME`, the
    /// container's name); the kubelet always passes both.
    #[serde(default)]
    pub default_pod_namespace: Option<String>,
    /// The pod interface's MTU; the agent's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The previous plugin's result (chaining; CHECK and DEL get ADD's).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// An IPAM plugin: not supported, the agent owns addresses.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    /// GC's list of the attachments the runtime still has.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_wait() -> u64 {
    DEFAULT_WAIT_FOR_POD_SECONDS
}

/// One attachment GC must keep.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// Its container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface in the container.
    pub ifname: String,
}

impl NetConf {
    /// Reads the configuration, refusing versions this plugin does not
    /// speak and fields it does not support.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                Code::Decode,
                "the network configuration is not valid JSON of a CNI configuration",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!(
                    "myelin-cni speaks CNI {}; set the conflist's cniVersion to one of them",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.ipam.is_some() {
            return Err(CniError::new(
                Code::UnsupportedField,
                "field ipam is not supported",
                "the Myelin agent gives pods their addresses from the node's pod CIDRs; remove \
                 the ipam section",
            ));
        }
        Ok(conf)
    }

    /// The previous plugin's result, when there is one.
    pub fn previous_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .clone()
            .map(|value| {
                serde_json::from_value(value).map_err(|e| {
                    CniError::new(
                        Code::Decode,
                        "prevResult is not a CNI result",
                        e.to_string(),
                    )
                })
            })
            .transpose()
    }
}

/// The `CNI_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
}

impl Environment {
    /// Reads them through `var`.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Self {
        let args = var("CNI_ARGS")
            .map(|text| {
                text.split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        Self {
            command: set("CNI_COMMAND"),
            container_id: set("CNI_CONTAINERID"),
            netns: set("CNI_NETNS"),
            ifname: set("CNI_IFNAME"),
            args,
        }
    }

    /// A variable the command cannot do without.
    pub fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
        value.as_deref().ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("{name} is not set"),
                format!("the runtime must set {name} for this command"),
            )
        })
    }

    /// An argument of `CNI_ARGS` the command cannot do without, or
    /// `fallback` when the runtime passes none.
    pub fn required_arg<'a>(
        &'a self,
        name: &str,
        fallback: Option<&'a str>,
    ) -> Result<&'a str, CniError> {
        self.args
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .or(fallback)
            .ok_or_else(|| {
                CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_ARGS has no {name}"),
                    "Myelin joins a container to its pod by K8S_POD_NAMESPACE and K8S_POD_NAME \
                     in CNI_ARGS, as the kubelet passes them (for a runtime that passes no \
                     namespace, set defaultPodNamespace in the plugin's configuration)",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"myelin","type":"myelin-cni",
        "agentSocket":"/run/myelin/n1/agent.sock","mtu":1450}"#;

    #[test]
    fn a_configuration_reads_with_defaults_for_what_it_leaves_out() {
        let conf = NetConf::parse(CONF.as_bytes()).expect("valid");
        assert_eq!(
            conf.agent_socket,
            PathBuf::from("/run/myelin/n1/agent.sock")
        );
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.wait_for_pod_seconds, DEFAULT_WAIT_FOR_POD_SECONDS);
        assert_eq!(conf.previous_result(), Ok(None));
        let bare = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"myelin-cni"}"#)
            .expect("valid");
        assert_eq!(bare.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
    }

    #[test]
    fn unsupported_versions_fields_and_bad_json_get_their_codes() {
        let old = CONF.replace("1.0.0", "0.4.0");
        let error = NetConf::parse(old.as_bytes()).expect_err("0.4.0");
        assert_eq!(error.code, Code::IncompatibleVersion);
        assert!(error.details.contains("1.0.0, 1.1.0"), "{}", error.details);
        let ipam = CONF.replace(r#""mtu":1450"#, r#""ipam":{"type":"host-local"}"#);
        let error = NetConf::parse(ipam.as_bytes()).expect_err("ipam");
        assert_eq!(error.code, Code::UnsupportedField);
        let error = NetConf::parse(b"{").expect_err("not json");
        assert_eq!(error.code, Code::Decode);
        let error = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).expect_err("no name");
        assert_eq!(error.code, Code::Decode);
    }

    #[test]
    fn gcs_valid_attachments_and_a_prev_result_are_read() {
        let gc = r#"{"cniVersion":"1.1.0","name":"n","type":"myelin-cni",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let conf = NetConf::parse(gc.as_bytes()).expect("valid");
        assert_eq!(
            conf.valid_attachments,
            Some(vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
        let chained = r#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni",
            "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"10.0.0.2/32","interface":0}]}}"#;
        let previous = NetConf::parse(chained.as_bytes())
            .expect("valid")
            .previous_result()
            .expect("a result")
            .expect("present");
        assert_eq!(previous.ips[0].address, "10.0.0.2/32");
        let broken = chained.replace(r#""ips":["#, r#""ips":[7,"#);
        let error = NetConf::parse(broken.as_bytes())
            .expect("valid")
            .previous_result()
            .expect_err("broken");
        assert_eq!(error.code, Code::Decode);
    }

    #[test]
    fn cni_args_and_variables_are_read_and_required() {
        let vars: BTreeMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
            ),
        ]
        .into();
        let env = Environment::read(|name| vars.get(name).map(|v| v.to_string()));
        assert_eq!(env.command.as_deref(), Some("ADD"));
        assert_eq!(env.netns, None, "empty is unset");
        assert_eq!(env.required_arg("K8S_POD_NAME", None), Ok("web"));
        assert_eq!(
            env.required_arg("K8S_POD_NAMESPACE", Some("podman")),
            Ok("default"),
            "the runtime's word first"
        );
        assert_eq!(env.required_arg("K8S_POD_UID", Some("x")), Ok("x"));
        let missing = Environment::required(&env.ifname, "CNI_IFNAME").expect_err("unset");
        assert_eq!(missing.code, Code::InvalidEnvironment);
        let error = env.required_arg("K8S_POD_UID", None).expect_err("absent");
        assert_eq!(error.code, Code::InvalidEnvironment);
        assert!(error.msg.contains("K8S_POD_UID"));
    }
}
