//! The success result of ADD (and what CHECK and DEL read back as
//! `prevResult`), shaped for the configuration's spec version: 1.1.0 adds
//! the interfaces' MTU, 1.0.0 has no such field.

use myelin_api::cni::CniAttachment;
use serde::{Deserialize, Serialize};

/// A result, in the spec's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CniResult {
    /// The spec version it is shaped for.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces the plugins created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes set in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings (the plugin sets none; kept from a previous plugin).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub dns: serde_json::Value,
}

/// An interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (spec 1.1.0 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's namespace it is in; absent for the node's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: String,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The index in `interfaces` of the interface holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    /// The destination prefix.
    pub dst: String,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

impl CniResult {
    /// The result of `attachment`'s ADD, after `previous` (chaining: the
    /// previous plugins' interfaces and addresses are kept, ours follow),
    /// shaped for `cni_version`.
    pub fn of_attachment(
        attachment: &CniAttachment,
        previous: Option<CniResult>,
        cni_version: &str,
    ) -> Self {
        let mut result = previous.unwrap_or_default();
        result.cni_version = cni_version.to_string();
        let with_mtu = cni_version != "1.0.0";
        let mtu = with_mtu.then_some(attachment.mtu);
        result.interfaces.push(Interface {
            name: attachment.host_veth.clone(),
            mac: None,
            mtu,
            sandbox: None,
        });
        let pod_interface = result.interfaces.len();
        result.interfaces.push(Interface {
            name: attachment.key.ifname.clone(),
            mac: Some(attachment.mac.clone()),
            mtu,
            sandbox: Some(attachment.netns.clone()),
        });
        if let Some(v4) = attachment.ipv4 {
            result.ips.push(IpConfig {
                address: format!("{v4}/32"),
                gateway: attachment.gateway_v4.map(|g| g.to_string()),
                interface: Some(pod_interface),
            });
            result.routes.push(Route {
                dst: "0.0.0.0/0".into(),
                gw: attachment.gateway_v4.map(|g| g.to_string()),
            });
        }
        if let Some(v6) = attachment.ipv6 {
            result.ips.push(IpConfig {
                address: format!("{v6}/128"),
                gateway: attachment.gateway_v6.map(|g| g.to_string()),
                interface: Some(pod_interface),
            });
            result.routes.push(Route {
                dst: "::/0".into(),
                gw: attachment.gateway_v6.map(|g| g.to_string()),
            });
        }
        if !with_mtu {
            for interface in &mut result.interfaces {
                interface.mtu = None;
            }
        }
        result
    }

    /// The addresses of `attachment` this result lacks (CHECK compares
    /// ADD's result, given back as `prevResult`, with the agent's record).
    pub fn missing_addresses(&self, attachment: &CniAttachment) -> Vec<String> {
        let ours = [
            attachment.ipv4.map(|a| format!("{a}/32")),
            attachment.ipv6.map(|a| format!("{a}/128")),
        ];
        ours.into_iter()
            .flatten()
            .filter(|address| !self.ips.iter().any(|ip| &ip.address == address))
            .collect()
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self) -> String {
        // Strings, numbers and a JSON value: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_api::cni::AttachmentKey;

    fn attachment() -> CniAttachment {
        CniAttachment {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            namespace: "default".into(),
            pod: "web".into(),
            netns: "/run/netns/cni-1".into(),
            host_veth: "myc0123456789ab".into(),
            mac: "0a:58:0a:f4:07:02".into(),
            mtu: 1450,
            ipv4: Some("10.244.7.2".parse().expect("v4")),
            ipv6: Some("fd00:10:244:7::2".parse().expect("v6")),
            gateway_v4: Some("10.244.7.1".parse().expect("v4")),
            gateway_v6: Some("fe80::1".parse().expect("v6")),
        }
    }

    #[test]
    fn a_1_0_0_result_has_the_specs_fields_and_no_mtu() {
        let result = CniResult::of_attachment(&attachment(), None, "1.0.0");
        let json: serde_json::Value = serde_json::from_str(&result.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "myc0123456789ab"},
                    {"name": "eth0", "mac": "0a:58:0a:f4:07:02", "sandbox": "/run/netns/cni-1"}
                ],
                "ips": [
                    {"address": "10.244.7.2/32", "gateway": "10.244.7.1", "interface": 1},
                    {"address": "fd00:10:244:7::2/128", "gateway": "fe80::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.244.7.1"},
                    {"dst": "::/0", "gw": "fe80::1"}
                ]
            })
        );
    }

    #[test]
    fn a_1_1_0_result_gives_the_interfaces_mtu() {
        let result = CniResult::of_attachment(&attachment(), None, "1.1.0");
        assert_eq!(result.cni_version, "1.1.0");
        assert!(result.interfaces.iter().all(|i| i.mtu == Some(1450)));
    }

    #[test]
    fn chained_after_another_plugin_its_interfaces_come_first_and_indices_follow() {
        let previous = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "net1".into(),
                sandbox: Some("/run/netns/cni-1".into()),
                ..Interface::default()
            }],
            ips: vec![IpConfig {
                address: "192.168.5.3/24".into(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: serde_json::json!({"nameservers": ["10.96.0.10"]}),
        };
        let result = CniResult::of_attachment(&attachment(), Some(previous), "1.0.0");
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(result.ips[0].address, "192.168.5.3/24");
        assert_eq!(result.ips[1].interface, Some(2));
        assert_eq!(result.dns["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn check_finds_addresses_the_previous_result_lacks() {
        let result = CniResult::of_attachment(&attachment(), None, "1.0.0");
        assert!(result.missing_addresses(&attachment()).is_empty());
        let mut moved = attachment();
        moved.ipv4 = Some("10.244.7.9".parse().expect("v4"));
        assert_eq!(result.missing_addresses(&moved), ["10.244.7.9/32"]);
    }
}
