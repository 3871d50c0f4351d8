//! `myelin bpf ...`: the kernel's maps as the datapath reads them back, in
//! the shape of cilium-dbg's tables (text) or as JSON.

use std::fmt::Write as _;

use crate::api::BpfTable;
use myelin_datapath::Datapath;
use serde_json::json;

fn protocol_name(protocol: u8) -> String {
    match protocol {
        0 => "ANY".into(),
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        other => other.to_string(),
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Renders one table; `endpoint` names the endpoint id for `Policy`.
pub fn render(
    datapath: &Datapath,
    table: BpfTable,
    endpoint: Option<u32>,
    as_json: bool,
) -> Result<String, String> {
    let mut out = String::new();
    let value = match table {
        BpfTable::Endpoints => {
            let records = datapath.endpoints().map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:<8} {:<6} {:<9} {:<16} {:<24} {:<8} {:<8} ROUTING",
                "IFINDEX", "ID", "IDENTITY", "IPv4", "IPv6", "INGRESS", "EGRESS"
            );
            for r in &records {
                let _ = writeln!(
                    out,
                    "{:<8} {:<6} {:<9} {:<16} {:<24} {:<8} {:<8} {}",
                    r.ifindex,
                    r.endpoint_id,
                    r.identity,
                    or_dash(r.ipv4),
                    or_dash(r.ipv6),
                    if r.ingress_enforced {
                        "Enabled"
                    } else {
                        "Disabled"
                    },
                    if r.egress_enforced {
                        "Enabled"
                    } else {
                        "Disabled"
                    },
                    // Host: other pods of the node reach it by bpf_redirect_peer; stack:
                    // through the node's IP stack (no MAC registered).
                    if r.host_routed { "host" } else { "stack" },
                );
            }
            json!(records.iter().map(|r| json!({
                "ifindex": r.ifindex, "id": r.endpoint_id, "identity": r.identity,
                "ipv4": r.ipv4, "ipv6": r.ipv6,
                "mac": r.mac.map(format_mac), "host_mac": r.host_mac.map(format_mac),
                "host_routed": r.host_routed,
                "ingress_enforced": r.ingress_enforced, "egress_enforced": r.egress_enforced,
                "policy_generation": r.policy_generation,
            })).collect::<Vec<_>>())
        }
        BpfTable::Ipcache => {
            let records = datapath.ipcache().map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{:<44} IDENTITY", "PREFIX");
            for r in &records {
                let _ = writeln!(
                    out,
                    "{:<44} {}",
                    format!("{}/{}", r.address, r.prefix_len),
                    r.identity
                );
            }
            json!(
                records
                    .iter()
                    .map(|r| json!({
                        "prefix": format!("{}/{}", r.address, r.prefix_len), "identity": r.identity,
                    }))
                    .collect::<Vec<_>>()
            )
        }
        BpfTable::Policy => {
            let id = endpoint.ok_or("name the endpoint: myelin bpf policy POD")?;
            let records = datapath.policy(id).map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:<9} {:<9} {:<7} {:<13} {:<14} {:<9} RULE",
                "DIRECTION", "IDENTITY", "PROTO", "PORTS", "ACTION", "MATCH"
            );
            for r in &records {
                let ports = if r.ports == (0, u16::MAX) {
                    "ANY".to_string()
                } else if r.ports.0 == r.ports.1 {
                    r.ports.0.to_string()
                } else {
                    format!("{}-{}", r.ports.0, r.ports.1)
                };
                let _ = writeln!(
                    out,
                    "{:<9} {:<9} {:<7} {:<13} {:<14} {:<9} {}",
                    format!("{:?}", r.direction),
                    if r.peer_identity == 0 {
                        "ANY".to_string()
                    } else {
                        r.peer_identity.to_string()
                    },
                    protocol_name(r.protocol),
                    ports,
                    r.action.to_string(),
                    r.match_type,
                    r.rule_id,
                );
            }
            json!(records.iter().map(|r| json!({
                "direction": format!("{:?}", r.direction), "peer_identity": r.peer_identity,
                "protocol": r.protocol, "ports": [r.ports.0, r.ports.1], "action": r.action.to_string(),
                "match_type": r.match_type, "rule_id": r.rule_id,
            })).collect::<Vec<_>>())
        }
        BpfTable::Services => {
            let records = datapath.services().map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:<30} {:<6} {:<8} {:<16} BACKENDS",
                "FRONTEND", "PROTO", "REVNAT", "AFFINITY"
            );
            for r in &records {
                let backends: Vec<String> = r
                    .backends
                    .iter()
                    .map(|b| format!("{} (#{})", b.address, b.id))
                    .collect();
                let affinity = match r.affinity_timeout_s {
                    Some(timeout) => format!("ClientIP/{timeout}s"),
                    None => "None".to_string(),
                };
                let _ = writeln!(
                    out,
                    "{:<30} {:<6} {:<8} {:<16} {}",
                    r.frontend.to_string(),
                    format!("{:?}", r.protocol).to_uppercase(),
                    r.rev_nat_index,
                    affinity,
                    backends.join(", ")
                );
            }
            json!(records.iter().map(|r| json!({
                "frontend": r.frontend, "protocol": format!("{:?}", r.protocol), "rev_nat_index": r.rev_nat_index,
                "affinity_timeout_s": r.affinity_timeout_s,
                "backends": r.backends.iter().map(|b| json!({"id": b.id, "address": b.address})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>())
        }
        BpfTable::Conntrack => {
            let records = datapath.conntrack().map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:<8} {:<6} {:<44} {:<44} {:<10} {:<9} {:<10} EXPIRES",
                "SCOPE", "PROTO", "SOURCE", "DESTINATION", "VERDICT", "IDENTITY", "PACKETS"
            );
            for r in &records {
                let _ = writeln!(
                    out,
                    "{:<8} {:<6} {:<44} {:<44} {:<10} {:<9} {:<10} {}",
                    r.scope.to_string(),
                    protocol_name(r.protocol),
                    r.source.to_string(),
                    r.destination.to_string(),
                    r.verdict.to_string(),
                    r.peer_identity,
                    r.packets,
                    r.expires_in
                        .map_or_else(|| "expired".to_string(), |d| format!("{}s", d.as_secs())),
                );
            }
            json!(records.iter().map(|r| json!({
                "scope": r.scope.to_string(), "protocol": r.protocol, "source": r.source, "destination": r.destination,
                "verdict": r.verdict.to_string(), "peer_identity": r.peer_identity, "rule_id": r.rule_id,
                "packets": r.packets, "bytes": r.bytes, "backend_id": r.backend_id, "from_proxy": r.from_proxy,
                "expires_in_seconds": r.expires_in.map(|d| d.as_secs()),
            })).collect::<Vec<_>>())
        }
    };
    Ok(if as_json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        out
    })
}

/// `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}
