//! Object metadata and label selectors, shared by every kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::FieldError;
use crate::policy::split_source;

/// A field that manifests from a real cluster carry and that does not concern
/// the network: accepted whatever its value, and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Ignored)
    }
}

/// Kubernetes object metadata: the parts Myelin uses, and the parts it
/// accepts and ignores because a cluster writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Object name; required.
    #[serde(default)]
    pub name: String,
    /// Namespace; `default` when absent for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    uid: Option<Ignored>,
    #[serde(default, skip_serializing)]
    resource_version: Option<Ignored>,
    #[serde(default, skip_serializing)]
    generation: Option<Ignored>,
    #[serde(default, skip_serializing)]
    creation_timestamp: Option<Ignored>,
    #[serde(default, skip_serializing)]
    managed_fields: Option<Ignored>,
    #[serde(default, skip_serializing)]
    owner_references: Option<Ignored>,
    #[serde(default, skip_serializing)]
    finalizers: Option<Ignored>,
    #[serde(default, skip_serializing)]
    self_link: Option<Ignored>,
}

impl Metadata {
    /// Metadata with a name and labels, for objects Myelin creates itself.
    pub fn named(
        name: impl Into<String>,
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace,
            labels,
            ..Self::default()
        }
    }
}

/// A Kubernetes label selector. An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether a set of labels satisfies this selector (plain Kubernetes
    /// semantics: no label sources; policy adds those).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl LabelSelectorRequirement {
    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Whether `key` is a valid label key: an optional DNS-subdomain prefix and
/// `/`, then a name of up to 63 characters.
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// Whether `value` is a valid label value (empty, or a label name).
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// Whether `name` is a DNS-1123 label (lower-case alphanumerics and `-`, at
/// most 63 characters, starting and ending alphanumeric), as Kubernetes
/// requires of namespace, service and pod-template names.
pub fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a DNS-1123 subdomain (dot-separated labels, at most 253
/// characters), as Kubernetes requires of pod and deployment names.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

const LABEL_KEY_RULE: &str = "an optional prefix (a DNS-1123 subdomain of at most 253 characters) and '/', then a name of at most 63 characters of [A-Za-z0-9-_.] starting and ending with a letter or digit";
const LABEL_VALUE_RULE: &str =
    "at most 63 characters of [A-Za-z0-9-_.], starting and ending with a letter or digit, or empty";

/// Checks the keys and values of a label map as the Kubernetes API server does; errors name
/// `at.<key>`.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>, at: &str) -> Result<(), FieldError> {
    for (key, value) in labels {
        if !is_label_key(key) {
            return Err(FieldError::new(
                format!("{at}.{key}"),
                Some(format!("{key:?}")),
                format!("not a valid label key: {LABEL_KEY_RULE}"),
            ));
        }
        check_label_value(value, format!("{at}.{key}"))?;
    }
    Ok(())
}

fn check_label_value(value: &str, field: String) -> Result<(), FieldError> {
    if is_label_value(value) {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        Some(format!("{value:?}")),
        format!("not a valid label value: {LABEL_VALUE_RULE}"),
    ))
}

/// Checks a label selector as the Kubernetes API server does: every key a label key, every
/// value (of `matchLabels` and of `matchExpressions`) a label value, and values exactly where
/// the operator takes them. `sources` allows Cilium's label source prefixes on keys (`k8s:`,
/// `any:`, `reserved:`).
pub(crate) fn check_selector(
    selector: &LabelSelector,
    at: &str,
    sources: bool,
) -> Result<(), FieldError> {
    let key_ok = |key: &str| is_label_key(if sources { split_source(key).1 } else { key });
    let key_rule = if sources {
        format!("an optional source (`k8s:`, `any:`, `reserved:`), then {LABEL_KEY_RULE}")
    } else {
        LABEL_KEY_RULE.to_string()
    };
    for (key, value) in &selector.match_labels {
        let field = format!("{at}.matchLabels.{key}");
        if !key_ok(key) {
            return Err(FieldError::new(
                field,
                Some(format!("{key:?}")),
                format!("not a valid label key: {key_rule}"),
            ));
        }
        check_label_value(value, field)?;
    }
    for (i, r) in selector.match_expressions.iter().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        if !key_ok(&r.key) {
            return Err(FieldError::new(
                format!("{at}.key"),
                Some(format!("{:?}", r.key)),
                format!("not a valid label key: {key_rule}"),
            ));
        }
        match r.operator {
            SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                return Err(FieldError::new(
                    format!("{at}.values"),
                    None,
                    "In and NotIn need at least one value",
                ));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !r.values.is_empty() => {
                return Err(FieldError::new(
                    format!("{at}.values"),
                    Some(r.values.join(",")),
                    "Exists and DoesNotExist take no values",
                ));
            }
            _ => {}
        }
        for (j, value) in r.values.iter().enumerate() {
            check_label_value(value, format!("{at}.values[{j}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("deathstar"));
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("Deathstar"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("org"));
        assert!(!is_label_key("/org"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_x"));
        assert!(!is_label_value("-x"));
    }

    #[test]
    fn selector_operators() {
        let labels: BTreeMap<String, String> = [("org".to_string(), "empire".to_string())]
            .into_iter()
            .collect();
        let req = |operator, values: &[&str]| LabelSelectorRequirement {
            key: "org".into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(req(SelectorOperator::In, &["empire", "x"]).matches(&labels));
        assert!(!req(SelectorOperator::In, &["alliance"]).matches(&labels));
        assert!(req(SelectorOperator::NotIn, &["alliance"]).matches(&labels));
        assert!(!req(SelectorOperator::NotIn, &["empire"]).matches(&labels));
        assert!(req(SelectorOperator::Exists, &[]).matches(&labels));
        assert!(!req(SelectorOperator::DoesNotExist, &[]).matches(&labels));
        assert!(LabelSelector::default().matches(&labels));
    }
}
