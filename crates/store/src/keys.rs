//! The key layout under `/myelin/<cluster>/` (see the crate README): building keys and
//! reading them back.

use std::net::IpAddr;

use myelin_policy::{Identity, LabelSet};

use crate::StoreError;

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

/// A resource's place: `resources/<kind>/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// The kind (`Pod`, `Service`, `CiliumNetworkPolicy`, ...).
    pub kind: String,
    /// The namespace; `_` for cluster-scoped resources.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// A key component: non-empty, no `/` (it separates components), printable ASCII.
fn component<'a>(what: &'static str, value: &'a str) -> Result<&'a str, StoreError> {
    let why = if value.is_empty() {
        "it is empty"
    } else if value.contains('/') {
        "it contains `/`"
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        "it has characters other than printable ASCII"
    } else {
        return Ok(value);
    };
    Err(StoreError::BadName {
        what,
        value: value.to_string(),
        why,
    })
}

impl Keys {
    /// The keys of cluster `cluster` (a name without `/`).
    pub fn new(cluster: &str) -> Result<Self, StoreError> {
        component("cluster", cluster)?;
        Ok(Self {
            root: format!("/myelin/{cluster}/"),
        })
    }

    /// `/myelin/<cluster>/`: every key of the cluster starts with it.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Prefix of the nodes.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    /// A node's record.
    pub fn node(&self, name: &str) -> Result<String, StoreError> {
        Ok(format!("{}{}", self.nodes(), component("node", name)?))
    }

    /// Prefix of the endpoints.
    pub fn endpoints(&self) -> String {
        format!("{}endpoints/", self.root)
    }

    /// An endpoint's record, by its address.
    pub fn endpoint(&self, ip: IpAddr) -> String {
        format!("{}{ip}", self.endpoints())
    }

    /// Prefix of the identities' master keys.
    pub fn identity_ids(&self) -> String {
        format!("{}identities/id/", self.root)
    }

    /// An identity's master key: number → label set.
    pub fn identity_id(&self, id: Identity) -> String {
        format!("{}{id}", self.identity_ids())
    }

    /// Prefix of the reverse index.
    pub fn identity_labels_prefix(&self) -> String {
        format!("{}identities/labels/", self.root)
    }

    /// The reverse index: label set (its JSON, which is canonical: sorted) → number.
    pub fn identity_labels(&self, labels: &LabelSet) -> String {
        format!("{}{}", self.identity_labels_prefix(), labels_value(labels))
    }

    /// Prefix of every hold.
    pub fn holds(&self) -> String {
        format!("{}identities/holds/", self.root)
    }

    /// Prefix of the holds of one identity.
    pub fn holds_of(&self, id: Identity) -> String {
        format!("{}{id}/", self.holds())
    }

    /// `holder`'s hold on `id`, under the holder's lease.
    pub fn hold(&self, id: Identity, holder: &str) -> Result<String, StoreError> {
        Ok(format!(
            "{}{}",
            self.holds_of(id),
            component("holder", holder)?
        ))
    }

    /// Prefix of the release marks.
    pub fn released_prefix(&self) -> String {
        format!("{}identities/released/", self.root)
    }

    /// Since when (unix seconds) nobody holds `id`, as the collector or the last holder
    /// letting go wrote it.
    pub fn released(&self, id: Identity) -> String {
        format!("{}{id}", self.released_prefix())
    }

    /// Prefix of the resources.
    pub fn resources(&self) -> String {
        format!("{}resources/", self.root)
    }

    /// A resource's manifest.
    pub fn resource(&self, key: &ResourceKey) -> Result<String, StoreError> {
        Ok(format!(
            "{}{}/{}/{}",
            self.resources(),
            component("kind", &key.kind)?,
            component("namespace", &key.namespace)?,
            component("name", &key.name)?
        ))
    }

    /// The rest of `key` after `prefix`, or a clear error.
    fn rest<'a>(&self, prefix: &str, key: &'a str) -> Result<&'a str, StoreError> {
        key.strip_prefix(prefix)
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| corrupt(key, &format!("is not under {prefix}")))
    }

    /// The node name of a node key.
    pub fn parse_node<'a>(&self, key: &'a str) -> Result<&'a str, StoreError> {
        let rest = self.rest(&self.nodes(), key)?;
        component("node", rest).map_err(|e| corrupt(key, &e.to_string()))
    }

    /// The address of an endpoint key.
    pub fn parse_endpoint(&self, key: &str) -> Result<IpAddr, StoreError> {
        let rest = self.rest(&self.endpoints(), key)?;
        rest.parse()
            .map_err(|_| corrupt(key, "does not end in an IP address"))
    }

    /// The number of an identity's master key.
    pub fn parse_identity_id(&self, key: &str) -> Result<Identity, StoreError> {
        parse_number(key, self.rest(&self.identity_ids(), key)?)
    }

    /// The number of a release mark.
    pub fn parse_released(&self, key: &str) -> Result<Identity, StoreError> {
        parse_number(key, self.rest(&self.released_prefix(), key)?)
    }

    /// The number and holder of a hold key.
    pub fn parse_hold<'a>(&self, key: &'a str) -> Result<(Identity, &'a str), StoreError> {
        let rest = self.rest(&self.holds(), key)?;
        let (id, holder) = rest
            .split_once('/')
            .ok_or_else(|| corrupt(key, "has no `<number>/<holder>`"))?;
        let holder = component("holder", holder).map_err(|e| corrupt(key, &e.to_string()))?;
        Ok((parse_number(key, id)?, holder))
    }

    /// The kind, namespace and name of a resource key.
    pub fn parse_resource(&self, key: &str) -> Result<ResourceKey, StoreError> {
        let rest = self.rest(&self.resources(), key)?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(namespace), Some(name), None)
                if !kind.is_empty() && !namespace.is_empty() && !name.is_empty() =>
            {
                Ok(ResourceKey {
                    kind: kind.to_string(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(corrupt(key, "is not `<kind>/<namespace>/<name>`")),
        }
    }
}

/// A label set as stored: its JSON (an array of `source:key=value`, sorted by key).
pub fn labels_value(labels: &LabelSet) -> String {
    // A list of strings always serializes.
    serde_json::to_string(labels).unwrap_or_default()
}

/// Reads a stored label set back.
pub fn parse_labels(key: &str, value: &[u8]) -> Result<LabelSet, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, &format!("labels: {e}")))
}

fn parse_number(key: &str, text: &str) -> Result<Identity, StoreError> {
    text.parse()
        .map_err(|_| corrupt(key, &format!("`{text}` is not an identity number")))
}

pub(crate) fn corrupt(key: &str, message: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_built_them() {
        let keys = Keys::new("lab").unwrap();
        assert_eq!(keys.root(), "/myelin/lab/");
        assert_eq!(
            keys.parse_node(&keys.node("node1").unwrap()).unwrap(),
            "node1"
        );
        for ip in ["10.244.1.5", "fd00:10:244:1::5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(keys.parse_endpoint(&keys.endpoint(ip)).unwrap(), ip);
        }
        assert_eq!(keys.parse_identity_id(&keys.identity_id(256)).unwrap(), 256);
        assert_eq!(keys.parse_released(&keys.released(300)).unwrap(), 300);
        assert_eq!(
            keys.parse_hold(&keys.hold(257, "node2").unwrap()).unwrap(),
            (257, "node2")
        );
        let resource = ResourceKey {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "deathstar".into(),
        };
        assert_eq!(
            keys.parse_resource(&keys.resource(&resource).unwrap())
                .unwrap(),
            resource
        );
    }

    #[test]
    fn names_that_would_break_the_layout_are_refused() {
        let keys = Keys::new("lab").unwrap();
        assert!(Keys::new("a/b").is_err());
        assert!(keys.node("").is_err());
        assert!(keys.node("x/y").is_err());
        assert!(keys.hold(256, "node 1").is_err());
        let err = keys
            .resource(&ResourceKey {
                kind: "Pod".into(),
                namespace: "default".into(),
                name: "a/b".into(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("\"a/b\""), "{err}");
    }

    #[test]
    fn foreign_keys_are_reported_with_the_key() {
        let keys = Keys::new("lab").unwrap();
        let err = keys
            .parse_endpoint("/myelin/lab/endpoints/nope")
            .unwrap_err();
        assert!(
            err.to_string().contains("/myelin/lab/endpoints/nope"),
            "{err}"
        );
        assert!(keys.parse_hold("/myelin/lab/identities/holds/256").is_err());
        assert!(
            keys.parse_identity_id("/myelin/other/identities/id/256")
                .is_err()
        );
        assert!(
            keys.parse_resource("/myelin/lab/resources/Pod/default")
                .is_err()
        );
    }

    #[test]
    fn label_sets_key_the_index_canonically() {
        let keys = Keys::new("lab").unwrap();
        let mut a = LabelSet::new();
        a.insert("k8s", "app", "x");
        a.insert("k8s", "io.kubernetes.pod.namespace", "default");
        let mut b = LabelSet::new();
        b.insert("k8s", "io.kubernetes.pod.namespace", "default");
        b.insert("k8s", "app", "x");
        assert_eq!(keys.identity_labels(&a), keys.identity_labels(&b));
        let value = labels_value(&a);
        assert_eq!(parse_labels("k", value.as_bytes()).unwrap(), a);
    }
}
