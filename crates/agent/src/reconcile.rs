//! Programs the datapath from the agent's desired state: each endpoint's
//! policy table, the ipcache and the services. Only what differs from what
//! was last applied is written, so a change costs what it touches.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use myelin_datapath::{
    Datapath, PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service, ServiceProtocol,
};
use myelin_policy::{Action, Direction, EndpointPolicy, Proto, Provenance};

use crate::api::{EndpointSpec, ServiceSpec};
use crate::l7::proxy_port;
use crate::services;

/// Numbers for the rules behind policy entries, as policy-verdict events
/// report them, and back to the rule for flows.
#[derive(Debug, Default)]
pub struct RuleIds {
    ids: BTreeMap<Provenance, u32>,
    rules: BTreeMap<u32, Provenance>,
}

impl RuleIds {
    fn id(&mut self, provenance: &Provenance) -> u32 {
        if let Some(id) = self.ids.get(provenance) {
            return *id;
        }
        let id = self.ids.len() as u32 + 1;
        self.ids.insert(provenance.clone(), id);
        self.rules.insert(id, provenance.clone());
        id
    }

    /// The rule behind an id from an event.
    pub fn rule(&self, id: u32) -> Option<&Provenance> {
        self.rules.get(&id)
    }
}

/// What was last written to the datapath.
#[derive(Debug, Default)]
pub struct Applied {
    policies: BTreeMap<u32, PolicyTable>,
    services: BTreeMap<(SocketAddr, ServiceProtocol), Service>,
    ipcache: BTreeMap<IpNet, u32>,
    /// Rule numbering.
    pub rule_ids: RuleIds,
}

impl Applied {
    /// Whether `policies` differ from what was last written.
    pub fn policies_differ(&self, policies: &BTreeMap<u32, PolicyTable>) -> bool {
        &self.policies != policies
    }

    /// The policy table last written for an endpoint.
    pub fn policy(&self, endpoint: u32) -> Option<&PolicyTable> {
        self.policies.get(&endpoint)
    }

    /// The services last written, by frontend.
    pub fn services(&self) -> &BTreeMap<(SocketAddr, ServiceProtocol), Service> {
        &self.services
    }

    /// The ipcache last written.
    pub fn ipcache(&self) -> &BTreeMap<IpNet, u32> {
        &self.ipcache
    }
}

fn protocol(proto: Proto) -> u8 {
    match proto {
        Proto::Any => 0,
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
        Proto::Icmpv6 => 58,
    }
}

/// The datapath's table for one endpoint's resolved policy.
pub fn policy_table(policy: &EndpointPolicy, rule_ids: &mut RuleIds) -> PolicyTable {
    let mut rules = Vec::new();
    for (direction, table) in [
        (Direction::Ingress, &policy.ingress),
        (Direction::Egress, &policy.egress),
    ] {
        for entry in table.entry_list() {
            let action = match &entry.value.action {
                Action::Allow => RuleAction::Allow,
                Action::Deny => RuleAction::Deny,
                Action::Redirect(_) => RuleAction::Redirect {
                    proxy_port: proxy_port(direction),
                },
            };
            let proto = protocol(entry.key.proto);
            // ICMP entries hold the ICMP type in the port range; the
            // datapath matches ICMP by protocol only.
            let ports = match entry.key.proto {
                Proto::Tcp | Proto::Udp
                    if !(entry.key.ports.start == 0 && entry.key.ports.end == u16::MAX) =>
                {
                    Some((entry.key.ports.start, entry.key.ports.end))
                }
                _ => None,
            };
            let rule_id = entry
                .value
                .provenance
                .iter()
                .next()
                .map_or(0, |p| rule_ids.id(p));
            rules.push(PolicyRule {
                direction: match direction {
                    Direction::Ingress => PolicyDirection::Ingress,
                    Direction::Egress => PolicyDirection::Egress,
                },
                peer_identity: entry.key.peer,
                protocol: proto,
                ports,
                action,
                rule_id,
            });
        }
    }
    PolicyTable {
        ingress_enforced: policy.ingress.enforced,
        egress_enforced: policy.egress.enforced,
        rules,
    }
}

/// The services the datapath should balance: one frontend per cluster IP
/// and port, with the ready backends of that port and the service's session
/// affinity.
pub fn desired_services<'a>(
    services: impl Iterator<Item = &'a ServiceSpec>,
    endpoints: impl Iterator<Item = &'a EndpointSpec> + Clone,
) -> BTreeMap<(SocketAddr, ServiceProtocol), Service> {
    let mut out = BTreeMap::new();
    for service in services {
        let backends = services::backends(service, endpoints.clone());
        for port in &service.ports {
            let proto = if port.protocol == "UDP" {
                ServiceProtocol::Udp
            } else {
                ServiceProtocol::Tcp
            };
            for ip in &service.cluster_ips {
                let same_family: Vec<SocketAddr> = backends
                    .iter()
                    .filter(|b| b.service_port == port.port && b.address.is_ipv4() == ip.is_ipv4())
                    .map(|b| b.address)
                    .collect();
                let frontend = SocketAddr::new(*ip, port.port);
                out.insert(
                    (frontend, proto),
                    Service {
                        frontend,
                        protocol: proto,
                        backends: same_family,
                        affinity_timeout_s: service.affinity_timeout_s,
                    },
                );
            }
        }
    }
    out
}

/// Writes the differences between `applied` and the desired state.
pub fn reconcile(
    datapath: &mut Datapath,
    applied: &mut Applied,
    policies: &BTreeMap<u32, PolicyTable>,
    services: &BTreeMap<(SocketAddr, ServiceProtocol), Service>,
    ipcache: &BTreeMap<IpNet, u32>,
) -> anyhow::Result<()> {
    // The ipcache first: new peers must be known before rules name them.
    for (net, identity) in ipcache {
        if applied.ipcache.get(net) != Some(identity) {
            datapath.ipcache_upsert(net.addr(), net.prefix_len(), *identity)?;
        }
    }
    for (endpoint, table) in policies {
        if applied.policies.get(endpoint) != Some(table) {
            datapath.replace_policy(*endpoint, table)?;
        }
    }
    for (key, service) in services {
        if applied.services.get(key) != Some(service) {
            datapath.upsert_service(service)?;
        }
    }
    for (frontend, protocol) in applied.services.keys() {
        if !services.contains_key(&(*frontend, *protocol)) {
            datapath.delete_service(*frontend, *protocol)?;
        }
    }
    for net in applied.ipcache.keys() {
        if !ipcache.contains_key(net) {
            datapath.ipcache_delete(net.addr(), net.prefix_len())?;
        }
    }
    applied.policies = policies.clone();
    applied.services = services.clone();
    applied.ipcache = ipcache.clone();
    Ok(())
}

/// The ipcache: the policy engine's prefixes (pods, CIDR identities, world)
/// and the node's own addresses as the host.
pub fn desired_ipcache(
    engine_ipcache: &BTreeMap<IpNet, u32>,
    node_addresses: &[IpAddr],
) -> BTreeMap<IpNet, u32> {
    let mut out = engine_ipcache.clone();
    for ip in node_addresses {
        out.insert(IpNet::from(*ip), myelin_policy::identity::HOST);
    }
    out
}
