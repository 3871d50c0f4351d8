//! Security-relevant labels and Cilium-style selectors over them.
//!
//! Cilium keys labels by name and tags each with a source (`k8s`,
//! `reserved`, `cidr`, ...). A selector key may name a source (`k8s:org`)
//! or not (`org`, read as `any`), see
//! <https://docs.cilium.io/en/stable/policy/language/#endpoints-based>.

use std::collections::BTreeMap;
use std::fmt;

use myelin_model::meta::{LabelSelector, SelectorOperator};
use myelin_model::policy::split_source;
use serde::{Deserialize, Serialize};

/// The namespace label Cilium gives every pod identity.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels on a pod identity.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The service-account label of a pod identity.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The service account of a pod that names none, as Kubernetes assigns it.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The cluster label of a pod identity.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The cluster's name, Cilium's default: one cluster, no cluster mesh.
pub const CLUSTER_NAME: &str = "default";
/// Source of labels from Kubernetes.
pub const SOURCE_K8S: &str = "k8s";
/// Source of the labels of reserved identities.
pub const SOURCE_RESERVED: &str = "reserved";
/// Source of the labels of CIDR identities.
pub const SOURCE_CIDR: &str = "cidr";

/// A set of labels keyed by name, each with its source: the identity of a
/// workload. Ordered and hashable so it can key an identity store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(BTreeMap<String, (String, String)>);

impl LabelSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `source:key=value`.
    pub fn insert(&mut self, source: &str, key: &str, value: &str) {
        self.0
            .insert(key.to_string(), (source.to_string(), value.to_string()));
    }

    /// The source and value of `key`, when present.
    pub fn get(&self, key: &str) -> Option<(&str, &str)> {
        self.0.get(key).map(|(s, v)| (s.as_str(), v.as_str()))
    }

    /// The labels of `source`, key to value (a pod's own labels are those
    /// of `k8s`, beside its namespace's and service account's).
    pub fn of_source(&self, source: &str) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|(_, (s, _))| s == source)
            .map(|(key, (_, value))| (key.clone(), value.clone()))
            .collect()
    }

    /// The security-relevant labels of a pod, as Cilium gives them: its own
    /// labels (minus the volatile ones, see [`is_security_relevant`]) with
    /// source `k8s`, its namespace, its namespace's labels, its service
    /// account (`default` when it names none) and the cluster.
    pub fn for_pod(
        namespace: &str,
        labels: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
    ) -> Self {
        let mut set = Self::new();
        for (k, v) in labels {
            if is_security_relevant(k) {
                set.insert(SOURCE_K8S, k, v);
            }
        }
        for (k, v) in namespace_labels {
            set.insert(SOURCE_K8S, &format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
        }
        set.insert(SOURCE_K8S, NAMESPACE_LABEL, namespace);
        set.insert(
            SOURCE_K8S,
            SERVICE_ACCOUNT_LABEL,
            service_account.unwrap_or(DEFAULT_SERVICE_ACCOUNT),
        );
        set.insert(SOURCE_K8S, CLUSTER_LABEL, CLUSTER_NAME);
        set
    }

    /// The labels as Cilium writes them, sorted: `source:key=value`, or
    /// `source:key` when the value is empty (`reserved:host`).
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, (s, v))| {
                if v.is_empty() {
                    format!("{s}:{k}")
                } else {
                    format!("{s}:{k}={v}")
                }
            })
            .collect()
    }

    /// Parses `source:key=value` strings (the inverse of [`Self::to_strings`]).
    pub fn from_strings<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut set = Self::new();
        for item in items {
            let item = item.as_ref();
            let (source, rest) = item
                .split_once(':')
                .ok_or_else(|| format!("label `{item}` has no `source:`"))?;
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            set.insert(source, key, value);
        }
        Ok(set)
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

impl Serialize for LabelSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(deserializer)?;
        Self::from_strings(&items).map_err(serde::de::Error::custom)
    }
}

/// Whether a pod label takes part in identity. Labels that differ between
/// replicas of one workload (pod-template-hash, controller-revision-hash,
/// the StatefulSet pod name, job controller ids) would give every pod its own
/// identity; Cilium's default label filter drops them, and the
/// `kubernetes.io` / `k8s.io` system prefixes with them.
pub fn is_security_relevant(key: &str) -> bool {
    const VOLATILE: &[&str] = &[
        "pod-template-hash",
        "pod-template-generation",
        "controller-revision-hash",
        "controller-uid",
        "job-name",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-completion-index",
    ];
    !VOLATILE.contains(&key)
        && !key.starts_with("io.kubernetes")
        && !key.starts_with("kubernetes.io")
        && !key.starts_with("k8s.io")
        && !key.contains("beta.kubernetes.io")
        && !key.starts_with("annotation.")
}

/// One requirement of a [`Selector`]: a key with an optional source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    /// `None` matches a label of any source.
    source: Option<String>,
    key: String,
    operator: SelectorOperator,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels
            .get(&self.key)
            .filter(|(source, _)| self.source.as_deref().is_none_or(|s| s == *source))
            .map(|(_, v)| v);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A compiled selector over [`LabelSet`]s: all requirements must hold; no
/// requirement selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// A Cilium endpoint selector: keys may carry a source; `any` or none
    /// matches every source.
    pub fn cilium(selector: &LabelSelector) -> Self {
        Self::compile(selector, |key| {
            let (source, key) = split_source(key);
            (
                source.filter(|s| *s != "any").map(str::to_string),
                key.to_string(),
            )
        })
    }

    /// A Kubernetes pod selector: plain keys, matching pod (`k8s`) labels.
    pub fn pods(selector: &LabelSelector) -> Self {
        Self::compile(selector, |key| {
            (Some(SOURCE_K8S.to_string()), key.to_string())
        })
    }

    /// A Kubernetes namespace selector, as Cilium translates it: over the
    /// namespace labels that pod identities carry, and only pods.
    pub fn namespaces(selector: &LabelSelector) -> Self {
        Self::compile(selector, |key| {
            (
                Some(SOURCE_K8S.to_string()),
                format!("{NAMESPACE_LABELS_PREFIX}{key}"),
            )
        })
        .and(Self::any_pod())
    }

    /// Every pod of every namespace (and nothing reserved or CIDR).
    pub fn any_pod() -> Self {
        Self {
            requirements: vec![Requirement {
                source: Some(SOURCE_K8S.to_string()),
                key: NAMESPACE_LABEL.to_string(),
                operator: SelectorOperator::Exists,
                values: Vec::new(),
            }],
        }
    }

    /// Pods of one namespace.
    pub fn in_namespace(namespace: &str) -> Self {
        Self {
            requirements: vec![Requirement {
                source: Some(SOURCE_K8S.to_string()),
                key: NAMESPACE_LABEL.to_string(),
                operator: SelectorOperator::In,
                values: vec![namespace.to_string()],
            }],
        }
    }

    /// Pods whose `k8s` labels include all of `labels` (a Service selector).
    pub fn exact(labels: &BTreeMap<String, String>) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement {
                    source: Some(SOURCE_K8S.to_string()),
                    key: k.clone(),
                    operator: SelectorOperator::In,
                    values: vec![v.clone()],
                })
                .collect(),
        }
    }

    /// Both selectors must match.
    pub fn and(mut self, other: Selector) -> Self {
        self.requirements.extend(other.requirements);
        self
    }

    /// Whether no requirement constrains the selection.
    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a requirement names `key` (with any source).
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// Whether a requirement names a key of `source`.
    pub fn mentions_source(&self, source: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.source.as_deref() == Some(source))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    fn compile(selector: &LabelSelector, key: impl Fn(&str) -> (Option<String>, String)) -> Self {
        let mut requirements = Vec::new();
        for (k, v) in &selector.match_labels {
            let (source, key) = key(k);
            requirements.push(Requirement {
                source,
                key,
                operator: SelectorOperator::In,
                values: vec![v.clone()],
            });
        }
        for r in &selector.match_expressions {
            let (source, key) = key(&r.key);
            requirements.push(Requirement {
                source,
                key,
                operator: r.operator,
                values: r.values.clone(),
            });
        }
        Self { requirements }
    }
}
