//! `myelin bpf ...`: the kernel's maps as the datapath reads them back, in
//! the shape of cilium-dbg's tables (text) or as JSON.

use std::fmt::Write as _;

use std::net::SocketAddr;

use myelin_datapath::{CtRecord, Datapath};
use serde::Serialize;

use crate::api::BpfTable;
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
            return Ok(if as_json {
                conntrack_json(&records)
            } else {
                conntrack_text(&records)
            });
        }
    };
    Ok(if as_json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        out
    })
}

/// The conntrack table as text, one line per entry.
fn conntrack_text(records: &[CtRecord]) -> String {
    let mut out = String::with_capacity(160 * (records.len() + 1));
    let _ = writeln!(
        out,
        "{:<8} {:<6} {:<44} {:<44} {:<10} {:<9} {:<10} EXPIRES",
        "SCOPE", "PROTO", "SOURCE", "DESTINATION", "VERDICT", "IDENTITY", "PACKETS"
    );
    for r in records {
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
    out
}

/// One conntrack entry as `--json` shows it; the fields in the order of
/// serde_json's maps (sorted), as the other tables print theirs.
#[derive(Serialize)]
struct CtRow {
    backend_id: u32,
    bytes: u64,
    destination: SocketAddr,
    expires_in_seconds: Option<u64>,
    from_proxy: bool,
    packets: u64,
    peer_identity: u32,
    protocol: u8,
    rule_id: u32,
    scope: String,
    source: SocketAddr,
    verdict: String,
}

/// The entries, encoded one at a time as they are written out: a full
/// table (262,144 entries) never becomes a tree of JSON values.
struct CtRows<'a>(&'a [CtRecord]);

impl Serialize for CtRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|r| CtRow {
            backend_id: r.backend_id,
            bytes: r.bytes,
            destination: r.destination,
            expires_in_seconds: r.expires_in.map(|d| d.as_secs()),
            from_proxy: r.from_proxy,
            packets: r.packets,
            peer_identity: r.peer_identity,
            protocol: r.protocol,
            rule_id: r.rule_id,
            scope: r.scope.to_string(),
            source: r.source,
            verdict: r.verdict.to_string(),
        }))
    }
}

/// The conntrack table as JSON.
fn conntrack_json(records: &[CtRecord]) -> String {
    serde_json::to_string_pretty(&CtRows(records)).unwrap_or_default()
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_datapath::{CtScope, RuleAction};

    fn record(expires_in: Option<u64>, verdict: RuleAction) -> CtRecord {
        CtRecord {
            scope: CtScope::Service,
            protocol: 6,
            source: "10.244.1.4:42742".parse().expect("addr"),
            destination: "[fd00:10:96::a]:80".parse().expect("addr"),
            expires_in: expires_in.map(std::time::Duration::from_secs),
            packets: 12,
            bytes: 3400,
            verdict,
            peer_identity: 16530,
            rule_id: 3,
            backend_id: 7,
            rev_nat_index: 2,
            flags_forward: 0x12,
            flags_reply: 0x10,
            replied: true,
            closing: false,
            from_proxy: true,
        }
    }

    #[test]
    fn conntrack_json_encoded_entry_by_entry_reads_as_before() {
        let records = [
            record(Some(21_600), RuleAction::Allow),
            record(None, RuleAction::Redirect { proxy_port: 15001 }),
        ];
        // How the table was encoded before: a tree of values, then text.
        let tree = json!(records.iter().map(|r| json!({
            "scope": r.scope.to_string(), "protocol": r.protocol, "source": r.source, "destination": r.destination,
            "verdict": r.verdict.to_string(), "peer_identity": r.peer_identity, "rule_id": r.rule_id,
            "packets": r.packets, "bytes": r.bytes, "backend_id": r.backend_id, "from_proxy": r.from_proxy,
            "expires_in_seconds": r.expires_in.map(|d| d.as_secs()),
        })).collect::<Vec<_>>());
        let before = serde_json::to_string_pretty(&tree).expect("encoded");
        assert_eq!(conntrack_json(&records), before);
        assert_eq!(conntrack_json(&[]), "[]");
        let text = conntrack_text(&records);
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines().nth(2).is_some_and(|l| l.ends_with("expired")),
            "{text}"
        );
    }
}
