//! The node proxy's configuration, derived from resolved policy: one
//! transparent listener per direction and family, an L7 policy for every
//! (endpoint address, port, direction) whose entry redirects to the proxy,
//! and the identities of the node's pods.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use myelin_policy::{Action, Direction, EndpointPolicy, PolicyEngine};
use myelin_proxy::config::{
    self as proxy, HeaderMatch, HttpRule, IdentityEntry, L7Policy, Listener, ListenerUpstream,
    MismatchAction, MissingPolicy, PolicyKey, Snapshot,
};

use crate::api::EndpointSpec;

/// The proxy port that ingress redirects go to.
pub const INGRESS_PROXY_PORT: u16 = 15001;
/// The proxy port that egress redirects go to.
pub const EGRESS_PROXY_PORT: u16 = 15002;

/// The request header that carries W3C trace context. The proxy always reports it, so
/// that flows carry `trace_context` whichever headers they show.
pub const TRACEPARENT: &str = "traceparent";

/// A name given as an HTTP header name that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not an HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ only, e.g. x-request-id"
)]
pub struct InvalidHeaderName(String);

/// The request (and response) headers L7 flows carry in `l7.http.headers`
/// (`myelin agent --hubble-http-headers`), lower-case as HTTP/2 and Hubble write them.
/// The proxy copies only these, and `traceparent`, into its events: each one costs it a
/// copy per request, and headers nobody named (cookies, tokens) never leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowHeaders {
    names: Vec<String>,
}

impl FlowHeaders {
    /// The headers named, in any case; empty names are skipped, so that an empty list
    /// can be given.
    pub fn new<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidHeaderName> {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() {
                continue;
            }
            // RFC 9110's token: the proxy refuses a whole snapshot that names anything
            // else, so a bad name must stop the agent at its start instead.
            let token = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(InvalidHeaderName(name.to_string()));
            }
            let name = name.to_ascii_lowercase();
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(Self { names: out })
    }

    /// Whether flows show a header (`name` in lower case, as events carry it).
    pub fn shows(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// What the proxy is asked to report: the headers shown, and `traceparent`.
    fn event_headers(&self) -> Vec<String> {
        let mut names = self.names.clone();
        if !self.shows(TRACEPARENT) {
            names.push(TRACEPARENT.to_string());
        }
        names
    }
}

impl Default for FlowHeaders {
    fn default() -> Self {
        Self {
            names: vec![TRACEPARENT.to_string()],
        }
    }
}

/// The proxy port for a direction.
pub fn proxy_port(direction: Direction) -> u16 {
    match direction {
        Direction::Ingress => INGRESS_PROXY_PORT,
        Direction::Egress => EGRESS_PROXY_PORT,
    }
}

fn listeners() -> Vec<Listener> {
    let mut out = Vec::new();
    for (direction, port, name) in [
        (proxy::Direction::Ingress, INGRESS_PROXY_PORT, "ingress"),
        (proxy::Direction::Egress, EGRESS_PROXY_PORT, "egress"),
    ] {
        for (family, ip) in [
            ("v4", IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ("v6", IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ] {
            out.push(Listener {
                name: format!("{name}-{family}"),
                address: SocketAddr::new(ip, port),
                upstream: ListenerUpstream::Transparent,
                direction,
                missing_policy: MissingPolicy::Deny,
                // The server of an ingress redirect is a pod of this node, whose replies the
                // datapath hands back to the proxy: it sees its client's address. An egress
                // redirect's server may be anywhere; its replies would reach the client pod.
                original_source: direction == proxy::Direction::Ingress,
            });
        }
    }
    out
}

fn rule(model: &myelin_model::policy::HttpRule, peer: u32) -> HttpRule {
    HttpRule {
        peers: if peer == myelin_policy::identity::ANY {
            Vec::new()
        } else {
            vec![peer]
        },
        method: model.method.clone(),
        path: model.path.clone(),
        host: model.host.clone(),
        headers: model.headers.clone(),
        header_matches: model
            .header_matches
            .iter()
            .map(|m| HeaderMatch {
                name: m.name.clone(),
                value: m.value.clone().unwrap_or_default(),
                mismatch: m.mismatch.as_ref().map(|a| match a {
                    myelin_model::policy::MismatchAction::Log => MismatchAction::Log,
                    myelin_model::policy::MismatchAction::Add => MismatchAction::Add,
                    myelin_model::policy::MismatchAction::Delete => MismatchAction::Delete,
                    myelin_model::policy::MismatchAction::Replace => MismatchAction::Replace,
                }),
            })
            .collect(),
    }
}

/// The L7 policies of one endpoint, keyed by (address, port, direction).
fn endpoint_policies(
    policy: &EndpointPolicy,
    addresses: &[IpAddr],
    out: &mut BTreeMap<PolicyKey, Vec<HttpRule>>,
) {
    for (direction, table) in [
        (Direction::Ingress, &policy.ingress),
        (Direction::Egress, &policy.egress),
    ] {
        for (key, value) in &table.entries {
            let Action::Redirect(l7) = &value.action else {
                continue;
            };
            let rules: Vec<HttpRule> = if l7.allow_all {
                vec![rule(&myelin_model::policy::HttpRule::default(), key.peer)]
            } else {
                l7.http.iter().map(|r| rule(&r.rule, key.peer)).collect()
            };
            for address in addresses {
                for port in key.ports.start..=key.ports.end {
                    let key = PolicyKey {
                        endpoint: *address,
                        port,
                        direction: match direction {
                            Direction::Ingress => proxy::Direction::Ingress,
                            Direction::Egress => proxy::Direction::Egress,
                        },
                    };
                    add_rules(out.entry(key).or_default(), &rules);
                }
            }
        }
    }
}

fn add_rules(slot: &mut Vec<HttpRule>, rules: &[HttpRule]) {
    for r in rules {
        if !slot.contains(r) {
            slot.push(r.clone());
        }
    }
}

/// What one endpoint puts in the proxy's snapshot.
#[derive(Debug, Clone, PartialEq)]
struct Contribution {
    policies: BTreeMap<PolicyKey, Vec<HttpRule>>,
    identities: Vec<IdentityEntry>,
}

impl Contribution {
    fn of(engine: &PolicyEngine, spec: &EndpointSpec) -> Option<Self> {
        let policy = engine.policy(&myelin_policy::EndpointKey::new(&spec.namespace, &spec.pod))?;
        let addresses: Vec<IpAddr> = [spec.ipv4.map(IpAddr::V4), spec.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect();
        let mut policies = BTreeMap::new();
        endpoint_policies(policy, &addresses, &mut policies);
        let labels = engine
            .identity_labels(policy.identity)
            .map(|l| l.to_strings())
            .unwrap_or_default();
        let identities = addresses
            .into_iter()
            .map(|ip| IdentityEntry {
                ip,
                identity: policy.identity,
                labels: labels.clone(),
                namespace: Some(spec.namespace.clone()),
                pod_name: Some(spec.pod.clone()),
            })
            .collect();
        Some(Self {
            policies,
            identities,
        })
    }
}

/// What the proxy sees of another node's pod: its identity and names (the
/// engine's own shared copies; the identity's labels are read when a
/// snapshot is taken, once per identity).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemotePod {
    identity: u32,
    namespace: Arc<str>,
    pod: Arc<str>,
}

/// The node proxy's configuration, kept per endpoint: a change recomputes
/// the endpoints it touched only, and a new snapshot goes out only when
/// what the proxy sees (its L7 policies and the identities of the node's
/// pods) changed.
#[derive(Debug, Default)]
pub struct ProxyConfig {
    endpoints: BTreeMap<myelin_policy::EndpointKey, Contribution>,
    /// Other nodes' pods: the proxy serves their connections to this node's
    /// pods too (the node's ingress hands them over) and matches its rules'
    /// peers against their identities. By address.
    remote: BTreeMap<IpAddr, RemotePod>,
    /// Whether the proxy has not been sent what it holds now.
    unsent: bool,
}

impl ProxyConfig {
    /// Recomputes endpoint `key` from its spec on this node (`None` when it
    /// is gone) and its resolved policy.
    pub fn update(
        &mut self,
        engine: &PolicyEngine,
        key: &myelin_policy::EndpointKey,
        spec: Option<&EndpointSpec>,
    ) {
        let new = spec.and_then(|spec| Contribution::of(engine, spec));
        if self.endpoints.get(key) == new.as_ref() {
            return;
        }
        match new {
            Some(contribution) => self.endpoints.insert(key.clone(), contribution),
            None => self.endpoints.remove(key),
        };
        self.unsent = true;
    }

    /// Takes the other nodes' pods at `addresses` from the engine (its
    /// remote endpoints): the addresses whose pod may have come, changed or
    /// left; a change makes a new snapshot due. Only these are looked at, so
    /// a batch of events costs what it touched, not every remote pod.
    pub fn update_remote(
        &mut self,
        engine: &PolicyEngine,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) {
        for ip in addresses {
            let now = engine.remote_endpoint(ip).map(|ep| RemotePod {
                identity: ep.identity,
                namespace: ep.namespace.clone(),
                pod: ep.pod.clone(),
            });
            if self.remote.get(&ip) == now.as_ref() {
                continue;
            }
            match now {
                Some(pod) => self.remote.insert(ip, pod),
                None => self.remote.remove(&ip),
            };
            self.unsent = true;
        }
    }

    /// Marks the configuration as not sent (a fresh start: the proxy may
    /// hold an older agent's).
    pub fn mark_unsent(&mut self) {
        self.unsent = true;
    }

    /// The snapshot at `version`, when the proxy has not been sent what the
    /// configuration holds now; its events carry `headers`, other nodes'
    /// pods the labels `engine` gives their identities.
    pub fn take_snapshot(
        &mut self,
        engine: &PolicyEngine,
        headers: &FlowHeaders,
        version: u64,
    ) -> Option<Snapshot> {
        if !std::mem::take(&mut self.unsent) {
            return None;
        }
        let mut policies: BTreeMap<PolicyKey, Vec<HttpRule>> = BTreeMap::new();
        let mut identities = Vec::new();
        for contribution in self.endpoints.values() {
            for (key, rules) in &contribution.policies {
                add_rules(policies.entry(*key).or_default(), rules);
            }
            identities.extend(contribution.identities.iter().cloned());
        }
        let mut labels: HashMap<u32, Vec<String>> = HashMap::new();
        for (ip, pod) in &self.remote {
            let labels = labels.entry(pod.identity).or_insert_with(|| {
                engine
                    .identity_labels(pod.identity)
                    .map(|l| l.to_strings())
                    .unwrap_or_default()
            });
            identities.push(IdentityEntry {
                ip: *ip,
                identity: pod.identity,
                labels: labels.clone(),
                namespace: Some(pod.namespace.to_string()),
                pod_name: Some(pod.pod.to_string()),
            });
        }
        Some(Snapshot {
            version,
            listeners: listeners(),
            clusters: Vec::new(),
            l7_policies: policies
                .into_iter()
                .map(|(key, http)| L7Policy { key, http })
                .collect(),
            identities,
            event_headers: headers.event_headers(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{allow, apply, engine_with, pod};

    const LANDING: &str = "        - method: POST\n          path: /v1/request-landing\n";

    #[test]
    fn only_a_change_the_proxy_sees_sends_a_snapshot() {
        let deathstar = pod("deathstar", "deathstar", None, 2);
        let pods = [
            (1, deathstar.clone()),
            (2, pod("tiefighter", "tiefighter", None, 3)),
        ];
        let mut engine = engine_with(&pods);
        let mut config = ProxyConfig::default();
        config.mark_unsent();
        let key = myelin_policy::EndpointKey::new("default", "deathstar");
        let headers = FlowHeaders::default();
        let update =
            |config: &mut ProxyConfig, engine: &PolicyEngine, changes: &myelin_policy::Changes| {
                for key in changes.endpoints.keys() {
                    let spec = pods.iter().map(|(_, s)| s).find(|s| s.pod == key.name);
                    config.update(engine, key, spec);
                }
            };
        let first = config
            .take_snapshot(&engine, &headers, 1)
            .expect("a fresh start sends");
        assert!(first.l7_policies.is_empty() && first.identities.is_empty());
        config.update(&engine, &key, Some(&deathstar));
        let second = config
            .take_snapshot(&engine, &headers, 2)
            .expect("a new pod's identity");
        assert_eq!(second.identities.len(), 2, "both families");

        let changes = apply(
            &mut engine,
            &allow("l7", "tiefighter", "deathstar", 80, Some(LANDING)),
        );
        assert!(changes.endpoints.contains_key(&key));
        update(&mut config, &engine, &changes);
        let third = config
            .take_snapshot(&engine, &headers, 3)
            .expect("an L7 rule");
        assert_eq!(third.version, 3);
        assert_eq!(third.l7_policies.len(), 2, "port 80 of both addresses");
        assert_eq!(
            third.l7_policies[0].http[0].path.as_deref(),
            Some("/v1/request-landing")
        );

        // An L3/L4 rule changes the endpoint's policy but nothing the proxy sees.
        let changes = apply(
            &mut engine,
            &allow("l4", "tiefighter", "deathstar", 443, None),
        );
        assert!(
            changes.endpoints.contains_key(&key),
            "the policy did change"
        );
        update(&mut config, &engine, &changes);
        assert_eq!(config.take_snapshot(&engine, &headers, 4), None);

        let gone = engine.remove_policy(&myelin_policy::PolicyKey {
            kind: myelin_policy::PolicyKind::CiliumNetworkPolicy,
            namespace: "default".into(),
            name: "l7".into(),
        });
        update(&mut config, &engine, &gone);
        let fourth = config
            .take_snapshot(&engine, &headers, 4)
            .expect("the L7 rule went");
        assert!(fourth.l7_policies.is_empty());
        assert_eq!(fourth.identities, second.identities);
    }

    fn remote_pod(ip: &str, identity: u32, pod: &str) -> myelin_policy::RemoteEndpoint {
        myelin_policy::RemoteEndpoint {
            ip: ip.parse().expect("ip"),
            identity,
            ports: Vec::new().into(),
            node: "node2".into(),
            namespace: "default".into(),
            pod: pod.into(),
        }
    }

    fn app(name: &str) -> myelin_policy::LabelSet {
        let mut labels = myelin_policy::LabelSet::new();
        labels.insert("k8s", "app", name);
        labels
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn other_nodes_pods_reach_the_proxy_once_and_only_when_they_change() {
        let mut engine = engine_with(&[]);
        let labels = app("remote");
        let (a, b) = (ip("10.244.2.2"), ip("10.244.2.3"));
        for (address, pod) in [("10.244.2.2", "a"), ("10.244.2.3", "b")] {
            engine
                .upsert_remote_endpoint(remote_pod(address, 300, pod), &labels)
                .expect("remote pod");
        }
        let mut config = ProxyConfig::default();
        let headers = FlowHeaders::default();
        config.update_remote(&engine, [a, b]);
        let first = config
            .take_snapshot(&engine, &headers, 1)
            .expect("two remote pods");
        assert_eq!(first.identities.len(), 2);
        assert_eq!(
            first.identities[0].labels,
            vec!["k8s:app=remote".to_string()]
        );

        config.update_remote(&engine, [a, b]);
        assert_eq!(
            config.take_snapshot(&engine, &headers, 2),
            None,
            "nothing changed"
        );

        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.3", 300, "c"), &labels)
            .expect("the address moved to another pod");
        config.update_remote(&engine, [b]);
        let third = config
            .take_snapshot(&engine, &headers, 3)
            .expect("a pod changed");
        assert_eq!(third.identities[1].pod_name.as_deref(), Some("c"));
        assert_eq!(third.identities[0], first.identities[0]);

        engine.remove_remote_endpoint(a);
        config.update_remote(&engine, [a]);
        let fourth = config
            .take_snapshot(&engine, &headers, 4)
            .expect("a pod went");
        assert_eq!(fourth.identities.len(), 1);
        assert_eq!(fourth.identities[0].ip, b);

        // An address named again after it went, and one never known: nothing.
        config.update_remote(&engine, [a, ip("10.244.9.9")]);
        assert_eq!(config.take_snapshot(&engine, &headers, 5), None);
    }

    #[test]
    fn only_the_addresses_named_are_looked_at_again() {
        let mut engine = engine_with(&[]);
        let (a, b) = (ip("10.244.2.2"), ip("10.244.2.3"));
        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.2", 300, "a"), &app("one"))
            .expect("remote pod");
        let mut config = ProxyConfig::default();
        let headers = FlowHeaders::default();
        config.update_remote(&engine, [a]);
        config.take_snapshot(&engine, &headers, 1).expect("one pod");
        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.3", 301, "b"), &app("two"))
            .expect("remote pod");
        // A batch that touched only `a` does not bring `b` in...
        config.update_remote(&engine, [a]);
        assert_eq!(config.take_snapshot(&engine, &headers, 2), None);
        // ...the batch that brought `b` does.
        config.update_remote(&engine, [b]);
        let snapshot = config.take_snapshot(&engine, &headers, 3).expect("b came");
        assert_eq!(
            snapshot
                .identities
                .iter()
                .map(|i| (i.ip, i.identity))
                .collect::<Vec<_>>(),
            [(a, 300), (b, 301)]
        );
    }

    #[test]
    fn a_pod_moved_to_another_identity_carries_that_identitys_labels() {
        let mut engine = engine_with(&[]);
        let a = ip("10.244.2.2");
        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.2", 300, "a"), &app("one"))
            .expect("remote pod");
        let mut config = ProxyConfig::default();
        let headers = FlowHeaders::default();
        config.update_remote(&engine, [a]);
        let first = config.take_snapshot(&engine, &headers, 1).expect("a");
        assert_eq!(first.identities[0].labels, ["k8s:app=one"]);

        // Same address and pod, a new identity (its labels changed).
        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.2", 301, "a"), &app("two"))
            .expect("relabelled");
        config.update_remote(&engine, [a]);
        let second = config.take_snapshot(&engine, &headers, 2).expect("moved");
        assert_eq!(second.identities[0].identity, 301);
        assert_eq!(second.identities[0].labels, ["k8s:app=two"]);

        // Identity 300 released and bound again to other labels: the pod
        // that takes it shows the new ones, as the engine knows them.
        engine
            .upsert_remote_endpoint(remote_pod("10.244.2.2", 300, "a"), &app("three"))
            .expect("renumbered");
        config.update_remote(&engine, [a]);
        let third = config.take_snapshot(&engine, &headers, 3).expect("back");
        assert_eq!(third.identities[0].identity, 300);
        assert_eq!(third.identities[0].labels, ["k8s:app=three"]);
    }

    #[test]
    fn header_names_are_case_insensitive_and_traceparent_is_always_asked_for() {
        let headers = FlowHeaders::new(["X-Request-Id", "", "x-request-id", "User-Agent"])
            .expect("valid names");
        assert!(headers.shows("x-request-id") && headers.shows("user-agent"));
        assert!(!headers.shows(TRACEPARENT));
        assert_eq!(
            headers.event_headers(),
            ["x-request-id", "user-agent", "traceparent"]
        );
        assert_eq!(FlowHeaders::default().event_headers(), ["traceparent"]);
        let none = FlowHeaders::new([""]).expect("an empty list");
        assert!(!none.shows(TRACEPARENT));
        assert_eq!(none.event_headers(), ["traceparent"]);
    }

    #[test]
    fn a_name_that_is_not_a_header_name_is_refused() {
        for bad in ["x request", "x:y", "é"] {
            let error = FlowHeaders::new([bad]).expect_err(bad);
            assert_eq!(
                error.to_string(),
                format!(
                    "{bad:?} is not an HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ only, e.g. x-request-id"
                )
            );
        }
    }
}
