//! Hubble agent events, as Cilium's agent sends them to its monitor: agent
//! started, policy updated and deleted, endpoint created, deleted and
//! regenerated, ipcache and service entries upserted and deleted. They go
//! into the observer's agent event ring (GetAgentEvents).
//!
//! Everything here runs on control-plane changes (API requests and the
//! sync after them), never per packet or per flow: the events report the
//! sync's plan, the one diff the datapath writes were made from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use myelin_observe::proto::flow::{
    AgentEvent, AgentEventType, EndpointRegenNotification, EndpointUpdateNotification,
    IpCacheNotification, PolicyUpdateNotification, ServiceDeleteNotification,
    ServiceUpsertNotification, ServiceUpsertNotificationAddr, TimeNotification, agent_event,
};
use myelin_policy::EndpointKey;

use super::Node;
use crate::flows::FlowContext as _;
use crate::reconcile::{Frontend, Plan};
use crate::view::View;

/// What agent events need to remember between changes.
#[derive(Debug)]
pub(super) struct AgentEvents {
    /// The policy revision, as Cilium's policy repository counts it: 1 at
    /// start, one more for every policy added or deleted.
    revision: u64,
    /// Service ids: Cilium numbers every frontend; an id is reused once its
    /// frontend is gone.
    service_ids: BTreeMap<Frontend, u32>,
}

impl Default for AgentEvents {
    fn default() -> Self {
        Self {
            revision: 1,
            service_ids: BTreeMap::new(),
        }
    }
}

impl AgentEvents {
    fn service_id(&mut self, frontend: Frontend) -> u32 {
        if let Some(id) = self.service_ids.get(&frontend) {
            return *id;
        }
        let used: std::collections::BTreeSet<u32> = self.service_ids.values().copied().collect();
        let id = (1..).find(|id| !used.contains(id)).unwrap_or(u32::MAX);
        self.service_ids.insert(frontend, id);
        id
    }
}

fn event(kind: AgentEventType, notification: agent_event::Notification) -> AgentEvent {
    AgentEvent {
        r#type: kind as i32,
        notification: Some(notification),
    }
}

fn service_addr(address: SocketAddr) -> ServiceUpsertNotificationAddr {
    ServiceUpsertNotificationAddr {
        ip: address.ip().to_string(),
        port: u32::from(address.port()),
    }
}

/// Cilium's labels of a policy resource (`k8s:io.cilium.k8s.policy.*`) and
/// its rule count; `None` for resources that are not policies.
fn policy_labels(resource: &myelin_model::Resource) -> Option<(Vec<String>, i64)> {
    use myelin_model::Resource;
    let (kind, rules) = match resource {
        Resource::CiliumNetworkPolicy(p) => ("CiliumNetworkPolicy", p.rules().len()),
        Resource::CiliumClusterwideNetworkPolicy(p) => {
            ("CiliumClusterwideNetworkPolicy", p.rules().len())
        }
        // Cilium turns a NetworkPolicy into one rule.
        Resource::NetworkPolicy(_) => ("NetworkPolicy", 1),
        _ => return None,
    };
    let key = resource.key();
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={kind}"),
        format!("k8s:io.cilium.k8s.policy.name={}", key.name),
    ];
    if !key.namespace.is_empty() {
        labels.push(format!(
            "k8s:io.cilium.k8s.policy.namespace={}",
            key.namespace
        ));
    }
    Some((labels, i64::try_from(rules).unwrap_or(i64::MAX)))
}

impl Node {
    /// AGENT_STARTED, with the time now.
    pub(super) fn agent_started(&self) {
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        self.observer.push_agent_event(event(
            AgentEventType::AgentStarted,
            agent_event::Notification::AgentStart(TimeNotification { time: Some(now) }),
        ));
    }

    /// POLICY_UPDATED or POLICY_DELETED for a policy resource (nothing for
    /// other kinds), with the revision it makes.
    pub(super) fn policy_changed(
        &mut self,
        kind: AgentEventType,
        resource: &myelin_model::Resource,
    ) {
        let Some((labels, rule_count)) = policy_labels(resource) else {
            return;
        };
        self.agent_events.revision += 1;
        self.observer.push_agent_event(event(
            kind,
            agent_event::Notification::PolicyUpdate(PolicyUpdateNotification {
                labels,
                revision: self.agent_events.revision,
                rule_count,
            }),
        ));
    }

    /// The security labels of a pod's identity, as flows carry them.
    pub(super) fn endpoint_labels(&self, namespace: &str, pod: &str) -> Vec<String> {
        self.engine
            .policy(&EndpointKey::new(namespace, pod))
            .and_then(|p| self.engine.identity_labels(p.identity))
            .map(|l| l.to_strings())
            .unwrap_or_default()
    }

    /// ENDPOINT_CREATED or ENDPOINT_DELETED.
    pub(super) fn endpoint_changed(
        &self,
        kind: AgentEventType,
        id: u32,
        namespace: &str,
        pod: &str,
        labels: Vec<String>,
    ) {
        self.observer.push_agent_event(event(
            kind,
            agent_event::Notification::EndpointUpdate(EndpointUpdateNotification {
                id: u64::from(id),
                labels,
                error: String::new(),
                pod_name: pod.to_string(),
                namespace: namespace.to_string(),
            }),
        ));
    }

    /// The node's own address of the family of `ip`, when `ip` is a pod of
    /// this node (Cilium's host IP of an ipcache entry).
    fn host_ip(&self, view: &View, ip: IpAddr) -> Option<IpAddr> {
        if !view.is_local(ip) {
            return None;
        }
        self.addresses
            .iter()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .copied()
    }

    fn ipcache_event(
        &self,
        view: &View,
        kind: AgentEventType,
        net: IpNet,
        identity: u32,
        old: Option<u32>,
    ) {
        let single = net.prefix_len() == net.max_prefix_len();
        let pod = single.then(|| view.pod_of(net.addr())).flatten();
        let (namespace, pod_name) = pod.map_or_else(Default::default, |(namespace, name)| {
            (namespace.to_string(), name.to_string())
        });
        self.observer.push_agent_event(event(
            kind,
            agent_event::Notification::IpcacheUpdate(IpCacheNotification {
                cidr: net.to_string(),
                identity,
                old_identity: old,
                host_ip: single
                    .then(|| self.host_ip(view, net.addr()))
                    .flatten()
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                namespace,
                pod_name,
                ..Default::default()
            }),
        ));
    }

    /// The events of a sync: what its plan changed when the writes
    /// succeeded, or the endpoints it failed to regenerate. `view` is the
    /// view published after the sync.
    pub(super) fn reconciled(&mut self, plan: &Plan, view: &View, error: Option<&anyhow::Error>) {
        let labels_of =
            |node: &Self, key: &EndpointKey| node.endpoint_labels(&key.namespace, &key.name);
        if let Some(error) = error {
            for (id, key, _) in &plan.policies {
                self.observer.push_agent_event(event(
                    AgentEventType::EndpointRegenerateFailure,
                    agent_event::Notification::EndpointRegenerate(EndpointRegenNotification {
                        id: u64::from(*id),
                        labels: labels_of(self, key),
                        error: format!("{error:#}"),
                    }),
                ));
            }
            return;
        }
        // As the writes: the ipcache first, then policy, then services.
        for (net, identity, old) in &plan.ipcache_upserted {
            self.ipcache_event(view, AgentEventType::IpcacheUpserted, *net, *identity, *old);
        }
        for (id, key, _) in &plan.policies {
            self.observer.push_agent_event(event(
                AgentEventType::EndpointRegenerateSuccess,
                agent_event::Notification::EndpointRegenerate(EndpointRegenNotification {
                    id: u64::from(*id),
                    labels: labels_of(self, key),
                    error: String::new(),
                }),
            ));
        }
        for service in &plan.services_upserted {
            let frontend = (service.frontend, service.protocol);
            let id = self.agent_events.service_id(frontend);
            let (namespace, name) = view.service(service.frontend).unwrap_or_default();
            self.observer.push_agent_event(event(
                AgentEventType::ServiceUpserted,
                agent_event::Notification::ServiceUpsert(ServiceUpsertNotification {
                    id,
                    frontend_address: Some(service_addr(service.frontend)),
                    backend_addresses: service.backends.iter().copied().map(service_addr).collect(),
                    r#type: "ClusterIP".to_string(),
                    // Myelin's services balance over every backend, as
                    // Cilium's "Cluster" traffic policies.
                    traffic_policy: "Cluster".to_string(),
                    name,
                    namespace,
                    ext_traffic_policy: "Cluster".to_string(),
                    int_traffic_policy: "Cluster".to_string(),
                }),
            ));
        }
        for frontend in &plan.services_deleted {
            let Some(id) = self.agent_events.service_ids.remove(frontend) else {
                continue;
            };
            self.observer.push_agent_event(event(
                AgentEventType::ServiceDeleted,
                agent_event::Notification::ServiceDelete(ServiceDeleteNotification { id }),
            ));
        }
        for (net, identity) in &plan.ipcache_deleted {
            self.ipcache_event(view, AgentEventType::IpcacheDeleted, *net, *identity, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_datapath::ServiceProtocol;

    #[test]
    fn policy_labels_are_ciliums() {
        let docs = myelin_model::parse_str(
            "test.yaml",
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: rule1\nspec:\n  endpointSelector: {}\nspecs:\n- endpointSelector: {}\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: wide\nspec:\n  endpointSelector: {}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: empire\n",
        );
        let docs = docs.documents;
        assert_eq!(
            policy_labels(&docs[0].resource),
            Some((
                vec![
                    "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".to_string(),
                    "k8s:io.cilium.k8s.policy.name=rule1".to_string(),
                    "k8s:io.cilium.k8s.policy.namespace=default".to_string(),
                ],
                2
            ))
        );
        assert_eq!(
            policy_labels(&docs[1].resource),
            Some((
                vec![
                    "k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy"
                        .to_string(),
                    "k8s:io.cilium.k8s.policy.name=wide".to_string(),
                ],
                1
            ))
        );
        assert_eq!(policy_labels(&docs[2].resource), None);
    }

    #[test]
    fn service_ids_are_reused_once_free() {
        let mut events = AgentEvents::default();
        let a = ("10.96.0.1:80".parse().expect("addr"), ServiceProtocol::Tcp);
        let b = ("10.96.0.2:80".parse().expect("addr"), ServiceProtocol::Tcp);
        let c = ("10.96.0.3:53".parse().expect("addr"), ServiceProtocol::Udp);
        assert_eq!(events.service_id(a), 1);
        assert_eq!(events.service_id(b), 2);
        assert_eq!(events.service_id(a), 1);
        events.service_ids.remove(&a);
        assert_eq!(events.service_id(c), 1);
    }
}
