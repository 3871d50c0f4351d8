//! Programs the datapath from the agent's desired state: each endpoint's
//! policy table, the ipcache and the services. The policy engine's diffs and
//! the API's changes mark what is dirty; a plan compares only those keys
//! with what was last applied, and only what differs is written, so a
//! change costs what it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use myelin_datapath::{
    Datapath, PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service, ServiceProtocol,
};
use myelin_policy::{
    Action, Changes, Direction, EndpointKey, EndpointPolicy, PolicyEngine, Proto, Provenance,
};

use crate::api::{EndpointSpec, ServiceSpec};
use crate::l7::proxy_port;
use crate::services;

/// Numbers for the rules behind policy entries, as policy-verdict events
/// report them, and back to the rule for flows. Ids are 1, 2, ... in the
/// order rules are first seen, and never reused.
#[derive(Debug, Default)]
pub struct RuleIds {
    ids: BTreeMap<Provenance, u32>,
    /// Rule `n` at `n - 1`.
    rules: Vec<Provenance>,
}

impl RuleIds {
    fn id(&mut self, provenance: &Provenance) -> u32 {
        if let Some(id) = self.ids.get(provenance) {
            return *id;
        }
        self.rules.push(provenance.clone());
        let id = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        self.ids.insert(provenance.clone(), id);
        id
    }

    /// Every rule numbered so far, rule `n` at `n - 1`.
    pub fn rules(&self) -> &[Provenance] {
        &self.rules
    }
}

/// A service frontend as the datapath keys it.
pub type Frontend = (SocketAddr, ServiceProtocol);

/// What changed since the datapath was last brought up to date: the keys of
/// the policy engine's diffs and of the API's own changes. A sync looks at
/// these keys only, so a change costs what it touches.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Endpoints whose resolved policy changed (the engine's diff) or whose
    /// spec changed (an upsert).
    pub endpoints: BTreeSet<EndpointKey>,
    /// Ids of endpoints gone: their policy is removed.
    pub removed: BTreeSet<u32>,
    /// ipcache prefixes the engine changed.
    pub prefixes: BTreeSet<IpNet>,
    /// Services or endpoint specs changed: the frontends and DNS names are
    /// derived again.
    pub specs: bool,
    /// Nothing is known applied (the agent just started): every prefix is
    /// compared, and the caller lists every endpoint.
    pub all: bool,
}

impl Dirty {
    /// Records the keys of one engine diff.
    pub fn record(&mut self, changes: &Changes) {
        self.endpoints.extend(changes.endpoints.keys().cloned());
        self.prefixes
            .extend(changes.ipcache.upsert.iter().map(|(net, _)| *net));
        self.prefixes.extend(changes.ipcache.remove.iter().copied());
    }
}

/// What one sync writes to the datapath: the dirty keys' desired state
/// where it differs from what was applied. The agent's events report it.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// ipcache prefixes to write, with the identity they had before.
    pub ipcache_upserted: Vec<(IpNet, u32, Option<u32>)>,
    /// ipcache prefixes to delete, with the identity they had.
    pub ipcache_deleted: Vec<(IpNet, u32)>,
    /// Whole policy tables to write, by endpoint id (and the endpoint).
    pub policies: Vec<(u32, EndpointKey, PolicyTable)>,
    /// Endpoint ids whose policy goes (their endpoint is gone).
    pub policies_removed: Vec<u32>,
    /// Frontends to write.
    pub services_upserted: Vec<Service>,
    /// Frontends to delete.
    pub services_deleted: Vec<Frontend>,
}

/// The desired state a plan is made from.
pub struct Desired<'a> {
    /// The resolved policies and the engine's ipcache.
    pub engine: &'a PolicyEngine,
    /// The endpoint id of a pod of this node.
    pub endpoint_id: &'a dyn Fn(&EndpointKey) -> Option<u32>,
    /// The frontends, when services or endpoint specs changed.
    pub services: Option<BTreeMap<Frontend, Service>>,
    /// The node's own addresses (the host identity in the ipcache).
    pub node_addresses: &'a [IpAddr],
}

impl Desired<'_> {
    /// The identity a prefix should map to: the host for the node's own
    /// addresses, the engine's otherwise.
    fn ipcache(&self, net: &IpNet) -> Option<u32> {
        let host = self
            .node_addresses
            .iter()
            .any(|ip| IpNet::from(*ip) == *net);
        if host {
            return Some(myelin_policy::identity::HOST);
        }
        self.engine.ipcache().get(net).copied()
    }
}

/// What was last written to the datapath.
#[derive(Debug, Default)]
pub struct Applied {
    policies: BTreeMap<u32, PolicyTable>,
    /// Entries of all the policy tables written.
    policy_rules: usize,
    services: BTreeMap<Frontend, Service>,
    ipcache: BTreeMap<IpNet, u32>,
    /// How many ipcache prefixes map to each identity.
    identities: BTreeMap<u32, usize>,
    /// Rule numbering.
    pub rule_ids: RuleIds,
}

impl Applied {
    /// The ipcache prefixes written.
    pub fn ipcache_len(&self) -> usize {
        self.ipcache.len()
    }

    /// The distinct identities of the ipcache written.
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// The entries of every policy table written.
    pub fn policy_rules(&self) -> usize {
        self.policy_rules
    }

    /// The frontends written.
    pub fn services_len(&self) -> usize {
        self.services.len()
    }

    /// What to write for the keys in `dirty`.
    pub fn plan(&mut self, dirty: &Dirty, desired: &Desired<'_>) -> Plan {
        let mut plan = Plan::default();
        let everything: BTreeSet<IpNet>;
        let prefixes = if dirty.all {
            everything = desired
                .engine
                .ipcache()
                .keys()
                .chain(self.ipcache.keys())
                .copied()
                .chain(desired.node_addresses.iter().map(|ip| IpNet::from(*ip)))
                .collect();
            &everything
        } else {
            &dirty.prefixes
        };
        for net in prefixes {
            let old = self.ipcache.get(net).copied();
            match (desired.ipcache(net), old) {
                (Some(identity), old) if old != Some(identity) => {
                    plan.ipcache_upserted.push((*net, identity, old))
                }
                (None, Some(old)) => plan.ipcache_deleted.push((*net, old)),
                _ => {}
            }
        }
        for key in &dirty.endpoints {
            let Some(id) = (desired.endpoint_id)(key) else {
                continue;
            };
            let Some(resolved) = desired.engine.policy(key) else {
                continue;
            };
            let table = policy_table(resolved, &mut self.rule_ids);
            if self.policies.get(&id) != Some(&table) {
                plan.policies.push((id, key.clone(), table));
            }
        }
        plan.policies_removed = dirty
            .removed
            .iter()
            .filter(|id| self.policies.contains_key(id))
            .filter(|id| !plan.policies.iter().any(|(written, _, _)| written == *id))
            .copied()
            .collect();
        if let Some(services) = &desired.services {
            plan.services_upserted = services
                .iter()
                .filter(|(frontend, service)| self.services.get(frontend) != Some(*service))
                .map(|(_, service)| service.clone())
                .collect();
            plan.services_deleted = self
                .services
                .keys()
                .filter(|frontend| !services.contains_key(frontend))
                .copied()
                .collect();
        }
        plan
    }

    fn set_ipcache(&mut self, net: IpNet, identity: Option<u32>) {
        let old = match identity {
            Some(identity) => {
                *self.identities.entry(identity).or_default() += 1;
                self.ipcache.insert(net, identity)
            }
            None => self.ipcache.remove(&net),
        };
        if let Some(old) = old
            && let Some(count) = self.identities.get_mut(&old)
        {
            *count -= 1;
            if *count == 0 {
                self.identities.remove(&old);
            }
        }
    }

    fn set_policy(&mut self, endpoint: u32, table: Option<PolicyTable>) {
        let added = table.as_ref().map_or(0, |t| t.rules.len());
        let old = match table {
            Some(table) => self.policies.insert(endpoint, table),
            None => self.policies.remove(&endpoint),
        };
        self.policy_rules = self.policy_rules + added - old.map_or(0, |t| t.rules.len());
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
) -> BTreeMap<Frontend, Service> {
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

/// Writes a plan, in an order that never leaves a rule naming an unknown
/// peer: the ipcache's new prefixes first, then policy, then services, then
/// what is gone. Each write that succeeds is recorded as applied, so after
/// an error the next plan holds what is left.
pub fn apply(datapath: &mut Datapath, applied: &mut Applied, plan: &Plan) -> anyhow::Result<()> {
    for (net, identity, _) in &plan.ipcache_upserted {
        datapath.ipcache_upsert(net.addr(), net.prefix_len(), *identity)?;
        applied.set_ipcache(*net, Some(*identity));
    }
    for (endpoint, _, table) in &plan.policies {
        datapath.replace_policy(*endpoint, table)?;
        applied.set_policy(*endpoint, Some(table.clone()));
    }
    for service in &plan.services_upserted {
        datapath.upsert_service(service)?;
        applied
            .services
            .insert((service.frontend, service.protocol), service.clone());
    }
    for (frontend, protocol) in &plan.services_deleted {
        datapath.delete_service(*frontend, *protocol)?;
        applied.services.remove(&(*frontend, *protocol));
    }
    for endpoint in &plan.policies_removed {
        datapath.remove_policy(*endpoint)?;
        applied.set_policy(*endpoint, None);
    }
    for (net, _) in &plan.ipcache_deleted {
        datapath.ipcache_delete(net.addr(), net.prefix_len())?;
        applied.set_ipcache(*net, None);
    }
    Ok(())
}
