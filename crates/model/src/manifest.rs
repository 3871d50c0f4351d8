//! Reading manifests: files and directories of multi-document YAML (or JSON),
//! dispatched on `apiVersion` and `kind`, every error located.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ManifestError;
use crate::limits::{MAX_REQUEST_BYTES, object_too_large, request_too_large};
use crate::meta::{check_labels, check_selector, is_dns1123_label, is_dns1123_subdomain};
use crate::policy::is_port_name;
use crate::policy::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, NetworkPolicy};
use crate::workload::{
    Deployment, IntOrString, MAX_AFFINITY_TIMEOUT_SECONDS, Namespace, Pod, PodSpec, Protocol,
    Service, ServicePort, ServiceSpec,
};
use crate::yaml;

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// File path as given by the user.
    pub file: String,
    /// Zero-based document index in the file.
    pub document: usize,
}

/// One parsed, validated resource and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Where it came from.
    pub source: Source,
    /// The resource.
    pub resource: Resource,
}

/// Every kind Myelin understands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    /// `v1` Namespace.
    Namespace(Namespace),
    /// `v1` Pod.
    Pod(Pod),
    /// `apps/v1` Deployment.
    Deployment(Deployment),
    /// `v1` Service.
    Service(Service),
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy(CiliumNetworkPolicy),
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy(CiliumClusterwideNetworkPolicy),
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
}

/// The identity of a resource: kind, namespace (empty for cluster-scoped
/// kinds) and name. Applying a resource with the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The kind, as in manifests.
    pub kind: String,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Resource {
    /// The kind as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Pod(_) => "Pod",
            Resource::Deployment(_) => "Deployment",
            Resource::Service(_) => "Service",
            Resource::CiliumNetworkPolicy(_) => "CiliumNetworkPolicy",
            Resource::CiliumClusterwideNetworkPolicy(_) => "CiliumClusterwideNetworkPolicy",
            Resource::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    /// The key that identifies this resource.
    pub fn key(&self) -> ResourceKey {
        let (namespace, name) = match self {
            Resource::Namespace(n) => (String::new(), &n.metadata.name),
            Resource::Pod(p) => (namespace_of(&p.metadata), &p.metadata.name),
            Resource::Deployment(d) => (namespace_of(&d.metadata), &d.metadata.name),
            Resource::Service(s) => (namespace_of(&s.metadata), &s.metadata.name),
            Resource::CiliumNetworkPolicy(p) => (namespace_of(&p.metadata), &p.metadata.name),
            Resource::CiliumClusterwideNetworkPolicy(p) => (String::new(), &p.metadata.name),
            Resource::NetworkPolicy(p) => (namespace_of(&p.metadata), &p.metadata.name),
        };
        ResourceKey {
            kind: self.kind().to_string(),
            namespace,
            name: name.clone(),
        }
    }
}

fn namespace_of(metadata: &crate::meta::Metadata) -> String {
    metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The outcome of reading manifests: the documents that are valid and the
/// errors of those that are not. Callers decide whether one bad document
/// rejects the whole set (the lab does) or only itself (policy does).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid documents, in file order.
    pub documents: Vec<Document>,
    /// One error per invalid document (or per unreadable file).
    pub errors: Vec<ManifestError>,
}

/// Reads a manifest file, or every `.yaml`, `.yml` and `.json` file of a
/// directory (sorted by name, not recursive). `-` reads standard input. A file
/// or standard input over [`MAX_REQUEST_BYTES`] is refused unread.
pub fn load_path(path: &Path) -> Parsed {
    let label = path.display().to_string();
    if label == "-" {
        return match read_bounded(std::io::stdin().lock()) {
            Ok(text) => parse_str(&label, &text),
            Err(message) => file_error(&label, format!("standard input: {message}")),
        };
    }
    if path.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => return file_error(&label, format!("cannot read directory: {e}")),
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return file_error(
                &label,
                "the directory holds no .yaml, .yml or .json file".to_string(),
            );
        }
        let mut all = Parsed::default();
        for file in files {
            let one = load_path(&file);
            all.documents.extend(one.documents);
            all.errors.extend(one.errors);
        }
        return all;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if let Some(message) = request_too_large(size) {
        return file_error(&label, message);
    }
    match std::fs::File::open(path)
        .map_err(|e| format!("cannot read file: {e}"))
        .and_then(read_bounded)
    {
        Ok(text) => parse_str(&label, &text),
        Err(message) => file_error(&label, message),
    }
}

/// Reads all of `input` as UTF-8 if it is within [`MAX_REQUEST_BYTES`]; past the limit, the
/// rest is counted, not kept, so that the error can give the size.
fn read_bounded(input: impl std::io::Read) -> Result<String, String> {
    let mut input = input.take(MAX_REQUEST_BYTES as u64 + 1);
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_REQUEST_BYTES {
        let mut rest = input.into_inner();
        let more = std::io::copy(&mut rest, &mut std::io::sink())
            .map_err(|e| format!("cannot read: {e}"))?;
        let size = bytes.len() as u64 + more;
        return Err(request_too_large(size).unwrap_or_default());
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

fn file_error(file: &str, message: String) -> Parsed {
    Parsed {
        documents: Vec::new(),
        errors: vec![ManifestError {
            file: file.to_string(),
            document: 0,
            field: String::new(),
            value: None,
            message,
        }],
    }
}

/// Parses every document of a multi-document YAML (or JSON) text. `file` names
/// the source in errors. A text over [`MAX_REQUEST_BYTES`] or a document over
/// [`crate::limits::MAX_OBJECT_BYTES`] is refused before it is parsed.
pub fn parse_str(file: &str, text: &str) -> Parsed {
    if let Some(message) = request_too_large(text.len() as u64) {
        return file_error(file, message);
    }
    let mut parsed = Parsed::default();
    for raw in yaml::split_documents(text) {
        let error = |field: String, value: Option<String>, message: String| ManifestError {
            file: file.to_string(),
            document: raw.index,
            field,
            value,
            message,
        };
        if let Some(message) = object_too_large(raw.text.len()) {
            parsed.errors.push(error(String::new(), None, message));
            continue;
        }
        let value = match yaml::parse_document(&raw) {
            Ok(Some(value)) => value,
            Ok(None) => continue,
            Err(message) => {
                parsed.errors.push(error(
                    String::new(),
                    None,
                    format!("not valid YAML: {message}"),
                ));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let source = Source {
            file: file.to_string(),
            document: raw.index,
        };
        match decode_value(&value) {
            Ok(resources) => parsed
                .documents
                .extend(resources.into_iter().map(|resource| Document {
                    source: source.clone(),
                    resource,
                })),
            Err(e) => parsed.errors.push(error(e.field, e.value, e.message)),
        }
    }
    parsed
}

/// A located problem inside one document, before the file is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path.
    pub field: String,
    /// The value as written.
    pub value: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl FieldError {
    /// An error at `field` with `value`.
    pub fn new(
        field: impl Into<String>,
        value: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value,
            message: message.into(),
        }
    }
}

/// Decodes one document into resources (a `List` gives several).
fn decode_value(value: &Value) -> Result<Vec<Resource>, FieldError> {
    let api_version = string_field(value, "apiVersion")?;
    let kind = string_field(value, "kind")?;
    if api_version == "v1" && kind == "List" {
        let items = value
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| FieldError::new("items", None, "a List needs an `items` sequence"))?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mut inner = decode_value(item).map_err(|e| FieldError {
                field: join_path(&format!("items[{i}]"), &e.field),
                ..e
            })?;
            out.append(&mut inner);
        }
        return Ok(out);
    }
    let resource = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Resource::Namespace(typed(value)?),
        ("v1", "Pod") => Resource::Pod(typed(value)?),
        ("apps/v1", "Deployment") => Resource::Deployment(typed(value)?),
        ("v1", "Service") => Resource::Service(typed(value)?),
        ("cilium.io/v2", "CiliumNetworkPolicy") => Resource::CiliumNetworkPolicy(typed(value)?),
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
            Resource::CiliumClusterwideNetworkPolicy(typed(value)?)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => Resource::NetworkPolicy(typed(value)?),
        (_, "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy") => {
            return Err(FieldError::new(
                "apiVersion",
                Some(api_version.clone()),
                format!(
                    "{kind} is served as `{}`",
                    if kind == "NetworkPolicy" {
                        "networking.k8s.io/v1"
                    } else {
                        "cilium.io/v2"
                    }
                ),
            ));
        }
        (_, "Namespace" | "Pod" | "Service" | "Deployment") => {
            return Err(FieldError::new(
                "apiVersion",
                Some(api_version.clone()),
                format!(
                    "{kind} is served as `{}`",
                    if kind == "Deployment" {
                        "apps/v1"
                    } else {
                        "v1"
                    }
                ),
            ));
        }
        _ => {
            return Err(FieldError::new(
                "kind",
                Some(format!("{api_version}/{kind}")),
                "unknown or unsupported kind; Myelin reads v1 Namespace, Pod, Service, List, apps/v1 Deployment, cilium.io/v2 CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy, and networking.k8s.io/v1 NetworkPolicy",
            ));
        }
    };
    validate(&resource)?;
    Ok(vec![resource])
}

fn join_path(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

fn string_field(value: &Value, name: &str) -> Result<String, FieldError> {
    match value.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(FieldError::new(
            name,
            Some(render(other)),
            format!("`{name}` must be a string"),
        )),
        None => Err(FieldError::new(
            name,
            None,
            format!("the document has no `{name}`"),
        )),
    }
}

/// Deserializes a document into a typed resource, locating the error.
pub fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    let mut body = value.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let field = path_text(e.path());
        let inner = e.into_inner().to_string();
        let unknown = inner.starts_with("unknown field");
        let shown = if unknown {
            None
        } else {
            value_at(value, &field).map(|v| render(&v))
        };
        let message = if unknown {
            format!("{inner}; remove it or check its spelling and indentation")
        } else {
            inner
        };
        FieldError::new(field, shown, message)
    })
}

fn path_text(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Finds the value at a dotted path such as `spec.ports[0].port`.
fn value_at(root: &Value, path: &str) -> Option<Value> {
    let mut current = root.clone();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?.clone();
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            current = current.get(index)?.clone();
        }
    }
    Some(current)
}

fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn validate(resource: &Resource) -> Result<(), FieldError> {
    match resource {
        Resource::CiliumNetworkPolicy(p) => crate::policy::validate_cilium(p, false)?,
        Resource::CiliumClusterwideNetworkPolicy(p) => crate::policy::validate_cilium(p, true)?,
        Resource::NetworkPolicy(p) => crate::policy::validate_network_policy(p)?,
        Resource::Namespace(n) => {
            check_name(&n.metadata.name, is_dns1123_label, "a DNS-1123 label")?;
            if n.metadata.namespace.is_some() {
                return Err(FieldError::new(
                    "metadata.namespace",
                    n.metadata.namespace.clone(),
                    "a Namespace is cluster-scoped; remove metadata.namespace",
                ));
            }
            check_labels(&n.metadata.labels, "metadata.labels")?;
        }
        Resource::Pod(p) => {
            check_name(
                &p.metadata.name,
                is_dns1123_subdomain,
                "a DNS-1123 subdomain",
            )?;
            check_meta(&p.metadata)?;
            check_pod_spec(&p.spec, "spec")?;
        }
        Resource::Deployment(d) => {
            check_name(&d.metadata.name, is_dns1123_label, "a DNS-1123 label")?;
            check_meta(&d.metadata)?;
            check_labels(
                &d.spec.template.metadata.labels,
                "spec.template.metadata.labels",
            )?;
            check_selector(&d.spec.selector, "spec.selector", false)?;
            if d.spec.selector.match_labels.is_empty()
                && d.spec.selector.match_expressions.is_empty()
            {
                return Err(FieldError::new(
                    "spec.selector",
                    None,
                    "a Deployment needs a non-empty selector that matches its template's labels",
                ));
            }
            if !d.spec.selector.matches(&d.spec.template.metadata.labels) {
                return Err(FieldError::new(
                    "spec.selector",
                    None,
                    "the selector does not match spec.template.metadata.labels; the Deployment would own none of its pods",
                ));
            }
            if d.spec.replicas > 1000 {
                return Err(FieldError::new(
                    "spec.replicas",
                    Some(d.spec.replicas.to_string()),
                    "more than 1000 replicas on one lab node is not supported",
                ));
            }
            check_pod_spec(&d.spec.template.spec, "spec.template.spec")?;
        }
        Resource::Service(s) => {
            check_name(&s.metadata.name, is_dns1123_label, "a DNS-1123 label")?;
            check_meta(&s.metadata)?;
            if let Some(t) = &s.spec.service_type
                && t != "ClusterIP"
            {
                return Err(FieldError::new(
                    "spec.type",
                    Some(t.clone()),
                    "only ClusterIP services are supported yet",
                ));
            }
            match s.spec.session_affinity.as_deref() {
                None | Some("None") => {
                    if s.spec.session_affinity_config.is_some() {
                        return Err(FieldError::new(
                            "spec.sessionAffinityConfig",
                            None,
                            "sessionAffinityConfig applies only to sessionAffinity: ClientIP; \
                             remove it or set sessionAffinity to ClientIP",
                        ));
                    }
                }
                Some("ClientIP") => check_affinity_timeout(&s.spec)?,
                Some(other) => {
                    return Err(FieldError::new(
                        "spec.sessionAffinity",
                        Some(other.into()),
                        "sessionAffinity must be None or ClientIP",
                    ));
                }
            }
            check_service_ports(&s.spec.ports)?;
            if let Some(selector) = &s.spec.selector {
                check_labels(selector, "spec.selector")?;
            }
            if let Some(ip) = &s.spec.cluster_ip
                && ip != "None"
                && !ip.is_empty()
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                return Err(FieldError::new(
                    "spec.clusterIP",
                    Some(ip.clone()),
                    "clusterIP must be an IP address, `None` or absent",
                ));
            }
        }
    }
    Ok(())
}

/// A Service's ports as the Kubernetes API server validates them: at least one; each with a
/// number 1-65535 and a valid `targetPort`; names DNS-1123 labels, unique, and required when
/// there are several ports; no two ports with the same number and protocol.
fn check_service_ports(ports: &[ServicePort]) -> Result<(), FieldError> {
    if ports.is_empty() {
        return Err(FieldError::new(
            "spec.ports",
            None,
            "a Service needs at least one port",
        ));
    }
    let mut names = BTreeMap::new();
    let mut numbers = BTreeMap::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match port.name.as_deref() {
            None | Some("") if ports.len() > 1 => {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    None,
                    "every port of a multi-port Service needs a name",
                ));
            }
            None | Some("") => {}
            Some(name) => {
                if !is_dns1123_label(name) {
                    return Err(FieldError::new(
                        format!("{at}.name"),
                        Some(format!("{name:?}")),
                        "a port name must be a DNS-1123 label: at most 63 lower-case letters, \
                         digits and '-', starting and ending with a letter or digit",
                    ));
                }
                if let Some(first) = names.insert(name, i) {
                    return Err(FieldError::new(
                        format!("{at}.name"),
                        Some(format!("{name:?}")),
                        format!(
                            "port names of a Service must be unique; spec.ports[{first}] has it too"
                        ),
                    ));
                }
            }
        }
        check_port(port.port, port.protocol, &at, "port")?;
        if let Some(first) = numbers.insert((port.port, port.protocol), i) {
            return Err(FieldError::new(
                at,
                Some(format!("{}/{:?}", port.port, port.protocol).to_uppercase()),
                format!(
                    "spec.ports[{first}] has the same port and protocol; a Service exposes each once"
                ),
            ));
        }
        check_target_port(port.target_port.as_ref(), &at)?;
    }
    Ok(())
}

/// A port's number (the field `number_field` of `at`; 0 is refused, the type bounds the rest)
/// and protocol (SCTP is refused).
fn check_port(
    number: u16,
    protocol: Protocol,
    at: &str,
    number_field: &str,
) -> Result<(), FieldError> {
    if number == 0 {
        return Err(FieldError::new(
            format!("{at}.{number_field}"),
            Some("0".into()),
            "port must be 1-65535",
        ));
    }
    if let Err(unsupported) = protocol.supported() {
        return Err(FieldError::new(
            format!("{at}.protocol"),
            Some(protocol.to_string()),
            unsupported.to_string(),
        ));
    }
    Ok(())
}

/// `targetPort`: absent, 0 or empty (the port itself, as Kubernetes defaults it), a number
/// 1-65535, or a container port name (IANA service name syntax).
fn check_target_port(target: Option<&IntOrString>, at: &str) -> Result<(), FieldError> {
    let field = || format!("{at}.targetPort");
    match target {
        None => Ok(()),
        Some(IntOrString::Int(n)) if (0..=65535).contains(n) => Ok(()),
        Some(IntOrString::Int(n)) => Err(FieldError::new(
            field(),
            Some(n.to_string()),
            "targetPort must be a port number 1-65535 or the name of a container port",
        )),
        Some(IntOrString::String(s)) if s.is_empty() || is_port_name(s) => Ok(()),
        Some(IntOrString::String(s)) => Err(FieldError::new(
            field(),
            Some(format!("{s:?}")),
            if s.parse::<i64>().is_ok() {
                "a quoted targetPort is a port name, and a name needs a letter; write the number without quotes"
            } else {
                "not a valid port name: at most 15 lower-case letters, digits and '-', with at least one letter, not starting or ending with '-' nor holding '--'"
            },
        )),
    }
}

/// `spec.sessionAffinityConfig.clientIP.timeoutSeconds` of a ClientIP Service: absent (the
/// default), or 1..=86400 as Kubernetes accepts.
fn check_affinity_timeout(spec: &ServiceSpec) -> Result<(), FieldError> {
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
        Some(t) if !(1..=i64::from(MAX_AFFINITY_TIMEOUT_SECONDS)).contains(&t) => {
            Err(FieldError::new(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                Some(t.to_string()),
                "timeoutSeconds must be 1-86400 (seconds); leave it out for the default 10800",
            ))
        }
        _ => Ok(()),
    }
}

fn check_name(name: &str, valid: fn(&str) -> bool, what: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(
            "metadata.name",
            None,
            "metadata.name is required",
        ));
    }
    if !valid(name) {
        return Err(FieldError::new(
            "metadata.name",
            Some(name.to_string()),
            format!(
                "must be {what}: lower-case letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn check_meta(metadata: &crate::meta::Metadata) -> Result<(), FieldError> {
    if let Some(ns) = &metadata.namespace
        && !is_dns1123_label(ns)
    {
        return Err(FieldError::new(
            "metadata.namespace",
            Some(ns.clone()),
            "must be a DNS-1123 label",
        ));
    }
    check_labels(&metadata.labels, "metadata.labels")
}

fn check_pod_spec(spec: &PodSpec, at: &str) -> Result<(), FieldError> {
    if spec.host_network == Some(true) {
        return Err(FieldError::new(
            format!("{at}.hostNetwork"),
            Some("true".into()),
            "pods on the host network are outside the mesh and not supported",
        ));
    }
    if let Some(node) = spec.pinned_node()
        && !is_dns1123_subdomain(node)
    {
        return Err(FieldError::new(
            format!("{at}.nodeName"),
            Some(format!("{node:?}")),
            "a node name must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit",
        ));
    }
    check_labels(&spec.node_selector, &format!("{at}.nodeSelector"))?;
    if spec.containers.is_empty() {
        return Err(FieldError::new(
            format!("{at}.containers"),
            None,
            "a pod needs at least one container",
        ));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name.is_empty() {
            return Err(FieldError::new(
                format!("{at}.containers[{i}].name"),
                None,
                "a container needs a name",
            ));
        }
        if c.image.is_empty() && c.command.is_none() {
            return Err(FieldError::new(
                format!("{at}.containers[{i}].image"),
                None,
                "a container needs an image or a command",
            ));
        }
        for (j, p) in c.ports.iter().enumerate() {
            check_port(
                p.container_port,
                p.protocol,
                &format!("{at}.containers[{i}].ports[{j}]"),
                "containerPort",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_over_the_request_limit_is_refused_with_its_whole_size() {
        let over = vec![b'#'; MAX_REQUEST_BYTES + 4096];
        let message = read_bounded(over.as_slice()).expect_err("over the limit");
        assert!(
            message.starts_with(&format!("the input is {} bytes, over", over.len())),
            "{message}"
        );
        let within = vec![b'#'; MAX_REQUEST_BYTES];
        assert_eq!(
            read_bounded(within.as_slice()).map(|t| t.len()),
            Ok(MAX_REQUEST_BYTES)
        );
    }
}
