//! Programs the datapath from the agent's desired state: each endpoint's
//! policy table, the ipcache and the services. The policy engine's diffs and
//! the API's changes mark what is dirty; a plan compares only those keys
//! with what was last applied, and only what differs is written, so a
//! change costs what it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use myelin_datapath::{
    Datapath, PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service, ServiceGroup,
    ServiceOutcome, ServiceProtocol,
};
use myelin_policy::{
    Action, Changes, Direction, EndpointKey, EndpointPolicy, PolicyEngine, Proto, Provenance,
};

use crate::api::{EndpointSpec, Protocol, ServiceSpec};
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
    /// Every Service's frontends, when services or endpoint specs changed:
    /// the datapath brings its service maps to exactly these, one Service
    /// at a time and all or nothing.
    pub service_groups: Option<Vec<ServiceGroup>>,
}

/// A Service the datapath could not program (the others were).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFailure {
    /// `namespace/name`.
    pub name: String,
    /// Why, as the datapath said it.
    pub error: String,
}

/// The desired state a plan is made from.
pub struct Desired<'a> {
    /// The resolved policies and the engine's ipcache.
    pub engine: &'a PolicyEngine,
    /// The endpoint id of a pod of this node.
    pub endpoint_id: &'a dyn Fn(&EndpointKey) -> Option<u32>,
    /// Every Service's frontends, when services or endpoint specs changed.
    pub services: Option<Vec<ServiceGroup>>,
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
        if let Some(groups) = &desired.services {
            let wanted: BTreeMap<Frontend, &Service> = groups
                .iter()
                .flat_map(|g| &g.frontends)
                .map(|s| ((s.frontend, s.protocol), s))
                .collect();
            plan.services_upserted = wanted
                .iter()
                .filter(|(frontend, service)| self.services.get(frontend) != Some(**service))
                .map(|(_, service)| (*service).clone())
                .collect();
            plan.services_deleted = self
                .services
                .keys()
                .filter(|frontend| !wanted.contains_key(frontend))
                .copied()
                .collect();
            plan.service_groups = Some(groups.clone());
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

/// The services the datapath should balance, one group per Service: a
/// frontend per cluster IP and port, with the ready backends of that port
/// and the service's session affinity.
pub fn desired_services<'a>(
    services: impl Iterator<Item = &'a ServiceSpec>,
    endpoints: impl Iterator<Item = &'a EndpointSpec> + Clone,
) -> Vec<ServiceGroup> {
    let mut out = Vec::new();
    for service in services {
        let mut by_port: BTreeMap<u16, Vec<SocketAddr>> = BTreeMap::new();
        for backend in services::backends(service, endpoints.clone()) {
            by_port
                .entry(backend.service_port)
                .or_default()
                .push(backend.address);
        }
        let mut frontends = Vec::with_capacity(service.ports.len() * service.cluster_ips.len());
        for port in &service.ports {
            // The API refuses SCTP; were one built in-process, it gets no
            // frontend rather than a TCP one.
            let proto = match port.protocol {
                Protocol::Tcp => ServiceProtocol::Tcp,
                Protocol::Udp => ServiceProtocol::Udp,
                Protocol::Sctp => continue,
            };
            let backends = by_port.get(&port.port).map_or(&[][..], Vec::as_slice);
            for ip in &service.cluster_ips {
                let frontend = SocketAddr::new(*ip, port.port);
                frontends.push(Service {
                    frontend,
                    protocol: proto,
                    backends: backends
                        .iter()
                        .filter(|b| b.is_ipv4() == ip.is_ipv4())
                        .copied()
                        .collect(),
                    affinity_timeout_s: service.affinity_timeout_s,
                });
            }
        }
        out.push(ServiceGroup {
            name: format!("{}/{}", service.namespace, service.name),
            frontends,
        });
    }
    out
}

/// The writes a plan makes: the kernel's maps (or, in tests, a record).
pub trait Writes {
    /// Maps a prefix to an identity.
    fn ipcache_upsert(&mut self, net: IpNet, identity: u32) -> anyhow::Result<()>;
    /// Deletes a prefix.
    fn ipcache_delete(&mut self, net: IpNet) -> anyhow::Result<()>;
    /// Replaces an endpoint's whole policy table atomically.
    fn replace_policy(&mut self, endpoint: u32, table: &PolicyTable) -> anyhow::Result<()>;
    /// Removes an endpoint's policy.
    fn remove_policy(&mut self, endpoint: u32) -> anyhow::Result<()>;
    /// Brings the service maps to exactly `groups`, each group all or
    /// nothing, one outcome per group.
    fn sync_services(&mut self, groups: &[ServiceGroup]) -> anyhow::Result<Vec<ServiceOutcome>>;
}

impl Writes for Datapath {
    fn ipcache_upsert(&mut self, net: IpNet, identity: u32) -> anyhow::Result<()> {
        Ok(Datapath::ipcache_upsert(
            self,
            net.addr(),
            net.prefix_len(),
            identity,
        )?)
    }

    fn ipcache_delete(&mut self, net: IpNet) -> anyhow::Result<()> {
        Ok(Datapath::ipcache_delete(
            self,
            net.addr(),
            net.prefix_len(),
        )?)
    }

    fn replace_policy(&mut self, endpoint: u32, table: &PolicyTable) -> anyhow::Result<()> {
        Ok(Datapath::replace_policy(self, endpoint, table)?)
    }

    fn remove_policy(&mut self, endpoint: u32) -> anyhow::Result<()> {
        Ok(Datapath::remove_policy(self, endpoint)?)
    }

    fn sync_services(&mut self, groups: &[ServiceGroup]) -> anyhow::Result<Vec<ServiceOutcome>> {
        Ok(Datapath::sync_services(self, groups)?)
    }
}

/// Writes a plan, in an order that never leaves a rule naming an unknown
/// peer: the ipcache's new prefixes first, then policy, then services, then
/// what is gone. Each write that succeeds is recorded as applied, so after
/// an error the next plan holds what is left. A Service the datapath cannot
/// program blocks nothing else: it is returned, the others are in force.
pub fn apply(
    datapath: &mut impl Writes,
    applied: &mut Applied,
    plan: &Plan,
) -> anyhow::Result<Vec<ServiceFailure>> {
    for (net, identity, _) in &plan.ipcache_upserted {
        datapath.ipcache_upsert(*net, *identity)?;
        applied.set_ipcache(*net, Some(*identity));
    }
    for (endpoint, _, table) in &plan.policies {
        datapath.replace_policy(*endpoint, table)?;
        applied.set_policy(*endpoint, Some(table.clone()));
    }
    let mut failures = Vec::new();
    if let Some(groups) = &plan.service_groups {
        let outcomes = datapath.sync_services(groups)?;
        for frontend in &plan.services_deleted {
            applied.services.remove(frontend);
        }
        for (group, outcome) in groups.iter().zip(outcomes) {
            match outcome.result {
                Ok(_) => applied.services.extend(
                    group
                        .frontends
                        .iter()
                        .map(|s| ((s.frontend, s.protocol), s.clone())),
                ),
                Err(error) => failures.push(ServiceFailure {
                    name: group.name.clone(),
                    error: error.to_string(),
                }),
            }
        }
    }
    for endpoint in &plan.policies_removed {
        datapath.remove_policy(*endpoint)?;
        applied.set_policy(*endpoint, None);
    }
    for (net, _) in &plan.ipcache_deleted {
        datapath.ipcache_delete(*net)?;
        applied.set_ipcache(*net, None);
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EndpointSpec;
    use crate::testing::{allow, apply as apply_yaml, engine_with, pod};

    /// The writes made, in order; fails the write named by `fail`.
    #[derive(Default)]
    struct Record {
        writes: Vec<String>,
        fail: Option<&'static str>,
        /// A Service whose group the datapath refuses.
        refuse_service: Option<String>,
    }

    impl Record {
        fn write(&mut self, what: &'static str, detail: String) -> anyhow::Result<()> {
            if self.fail == Some(what) {
                anyhow::bail!("{what} refused");
            }
            self.writes.push(format!("{what} {detail}"));
            Ok(())
        }
    }

    impl Writes for Record {
        fn ipcache_upsert(&mut self, net: IpNet, identity: u32) -> anyhow::Result<()> {
            self.write("ipcache_upsert", format!("{net} {identity}"))
        }
        fn ipcache_delete(&mut self, net: IpNet) -> anyhow::Result<()> {
            self.write("ipcache_delete", net.to_string())
        }
        fn replace_policy(&mut self, endpoint: u32, table: &PolicyTable) -> anyhow::Result<()> {
            self.write(
                "replace_policy",
                format!("{endpoint} {}", table.rules.len()),
            )
        }
        fn remove_policy(&mut self, endpoint: u32) -> anyhow::Result<()> {
            self.write("remove_policy", endpoint.to_string())
        }
        fn sync_services(
            &mut self,
            groups: &[ServiceGroup],
        ) -> anyhow::Result<Vec<ServiceOutcome>> {
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            self.write("sync_services", names.join(","))?;
            Ok(groups
                .iter()
                .map(|g| ServiceOutcome {
                    name: g.name.clone(),
                    result: if self.refuse_service.as_deref() == Some(g.name.as_str()) {
                        Err(myelin_datapath::DatapathError::InvalidService {
                            frontend: g.frontends[0].frontend,
                            reason: "refused by the test".into(),
                        })
                    } else {
                        Ok(g.frontends.len())
                    },
                })
                .collect())
        }
    }

    /// `n` pods `pod-<i>` (endpoint id i), each allowed from `client` (id
    /// 100, at .100) by a policy of its own, `allow-<i>`.
    fn node(n: u8) -> (PolicyEngine, Vec<(u32, EndpointSpec)>) {
        let mut pods: Vec<(u32, EndpointSpec)> = (1..=n)
            .map(|i| {
                let spec = pod(&format!("pod-{i}"), &format!("app-{i}"), None, i);
                (u32::from(i), spec)
            })
            .collect();
        pods.push((100, pod("client", "client", None, 100)));
        let mut engine = engine_with(&pods);
        for i in 1..=n {
            let policy = allow(
                &format!("allow-{i}"),
                "client",
                &format!("app-{i}"),
                80,
                None,
            );
            apply_yaml(&mut engine, &policy);
        }
        (engine, pods)
    }

    fn plan(
        applied: &mut Applied,
        dirty: &Dirty,
        engine: &PolicyEngine,
        pods: &[(u32, EndpointSpec)],
    ) -> Plan {
        let endpoint_id = |key: &EndpointKey| {
            pods.iter()
                .find(|(_, s)| s.namespace == key.namespace && s.pod == key.name)
                .map(|(id, _)| *id)
        };
        applied.plan(
            dirty,
            &Desired {
                engine,
                endpoint_id: &endpoint_id,
                services: None,
                node_addresses: &["10.0.0.1".parse().expect("ip")],
            },
        )
    }

    fn everything(pods: &[(u32, EndpointSpec)]) -> Dirty {
        Dirty {
            endpoints: pods
                .iter()
                .map(|(_, s)| EndpointKey::new(&s.namespace, &s.pod))
                .collect(),
            all: true,
            ..Dirty::default()
        }
    }

    fn policy_key(name: &str) -> myelin_policy::PolicyKey {
        myelin_policy::PolicyKey {
            kind: myelin_policy::PolicyKind::CiliumNetworkPolicy,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn after_a_start_every_table_is_written_whole_then_only_what_the_engine_diff_touched() {
        let (mut engine, pods) = node(3);
        let mut applied = Applied::default();
        let mut record = Record::default();
        let first = plan(&mut applied, &everything(&pods), &engine, &pods);
        assert_eq!(first.policies.len(), 4, "three servers and the client");
        assert!(
            first
                .policies
                .iter()
                .filter(|(id, _, _)| *id != 100)
                .all(|(_, _, t)| t.ingress_enforced && !t.rules.is_empty())
        );
        assert!(
            first
                .ipcache_upserted
                .iter()
                .any(|(net, id, _)| net.to_string() == "10.0.0.1/32"
                    && *id == myelin_policy::identity::HOST)
        );
        apply(&mut record, &mut applied, &first).expect("written");
        // Nothing changed: nothing to write.
        assert_eq!(
            plan(&mut applied, &everything(&pods), &engine, &pods),
            Plan::default()
        );

        let mut dirty = Dirty::default();
        dirty.record(&engine.remove_policy(&policy_key("allow-2")));
        let second = plan(&mut applied, &dirty, &engine, &pods);
        let written: Vec<u32> = second.policies.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(written, [2], "only the endpoint the policy selected");
        assert!(second.ipcache_upserted.is_empty() && second.ipcache_deleted.is_empty());
        let before = record.writes.len();
        apply(&mut record, &mut applied, &second).expect("written");
        assert_eq!(record.writes[before..], ["replace_policy 2 0".to_string()]);
    }

    #[test]
    fn deleting_policies_one_by_one_costs_one_table_each() {
        let n = 40;
        let (mut engine, pods) = node(n);
        let mut applied = Applied::default();
        let mut record = Record::default();
        let first = plan(&mut applied, &everything(&pods), &engine, &pods);
        apply(&mut record, &mut applied, &first).expect("written");
        let mut tables = 0;
        for i in 1..=n {
            let mut dirty = Dirty::default();
            dirty.record(&engine.remove_policy(&policy_key(&format!("allow-{i}"))));
            // The tables a sync builds are those of the dirty endpoints.
            tables += dirty.endpoints.len();
            let next = plan(&mut applied, &dirty, &engine, &pods);
            apply(&mut record, &mut applied, &next).expect("written");
        }
        assert_eq!(tables, usize::from(n));
        assert_eq!(applied.policy_rules(), 0);
    }

    #[test]
    fn after_a_failed_write_the_next_plan_holds_what_is_left() {
        let (engine, pods) = node(2);
        let mut applied = Applied::default();
        let mut record = Record {
            fail: Some("replace_policy"),
            ..Record::default()
        };
        let dirty = everything(&pods);
        let first = plan(&mut applied, &dirty, &engine, &pods);
        assert!(apply(&mut record, &mut applied, &first).is_err());
        let retry = plan(&mut applied, &dirty, &engine, &pods);
        assert!(retry.ipcache_upserted.is_empty(), "the ipcache was written");
        assert_eq!(retry.policies, first.policies);
        record.fail = None;
        apply(&mut record, &mut applied, &retry).expect("written");
        assert_eq!(plan(&mut applied, &dirty, &engine, &pods), Plan::default());
    }

    fn group(name: &str, frontend: &str) -> ServiceGroup {
        ServiceGroup {
            name: name.into(),
            frontends: vec![Service {
                frontend: frontend.parse().expect("socket address"),
                protocol: ServiceProtocol::Tcp,
                backends: vec!["10.0.0.5:8080".parse().expect("socket address")],
                affinity_timeout_s: None,
            }],
        }
    }

    #[test]
    fn a_service_the_datapath_refuses_blocks_no_other_and_is_not_recorded() {
        let (engine, _) = node(1);
        let mut applied = Applied::default();
        let mut record = Record {
            refuse_service: Some("default/big".into()),
            ..Record::default()
        };
        let groups = vec![
            group("default/big", "10.96.0.9:80"),
            group("default/web", "10.96.0.10:80"),
        ];
        let endpoint_id = |_: &EndpointKey| None;
        let desired = Desired {
            engine: &engine,
            endpoint_id: &endpoint_id,
            services: Some(groups),
            node_addresses: &[],
        };
        let first = applied.plan(&Dirty::default(), &desired);
        assert_eq!(first.services_upserted.len(), 2);
        let failures = apply(&mut record, &mut applied, &first).expect("others written");
        assert_eq!(
            failures,
            [ServiceFailure {
                name: "default/big".into(),
                error: "service 10.96.0.9:80: refused by the test".into(),
            }]
        );
        assert_eq!(applied.services_len(), 1, "only default/web is in force");
        let again = applied.plan(&Dirty::default(), &desired);
        let pending: Vec<String> = again
            .services_upserted
            .iter()
            .map(|s| s.frontend.to_string())
            .collect();
        assert_eq!(pending, ["10.96.0.9:80"], "the refused one is still wanted");
    }

    #[test]
    fn a_gone_endpoint_loses_its_policy_and_its_prefixes() {
        let (mut engine, pods) = node(2);
        let mut applied = Applied::default();
        let mut record = Record::default();
        let first = plan(&mut applied, &everything(&pods), &engine, &pods);
        apply(&mut record, &mut applied, &first).expect("written");
        let mut dirty = Dirty::default();
        dirty.record(&engine.remove_endpoint(&EndpointKey::new("default", "pod-2")));
        dirty.removed.insert(2);
        let left = &pods[..1];
        let gone = plan(&mut applied, &dirty, &engine, left);
        assert_eq!(gone.policies_removed, [2]);
        let deleted: Vec<String> = gone
            .ipcache_deleted
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(deleted, ["10.244.1.2/32", "fd00:10:244:1::2/128"]);
        apply(&mut record, &mut applied, &gone).expect("written");
        assert_eq!(
            record.writes.last().map(String::as_str),
            Some("ipcache_delete fd00:10:244:1::2/128")
        );
    }
}
