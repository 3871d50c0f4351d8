//! Compiled configuration: regexes built once per snapshot, references checked, lookups
//! indexed. A snapshot that does not compile is rejected as a whole.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::{Regex, RegexBuilder};

use crate::config::{
    HeaderMatch, HttpRule, IdentityEntry, L7Policy, Listener, ListenerUpstream, MismatchAction,
    PolicyKey, Snapshot,
};

/// Upper bound on the compiled size of one regex, so a hostile or careless pattern cannot
/// make the proxy allocate without limit.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a snapshot was rejected. The message names the policy and field so the operator can
/// find the offending rule in the manifest it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A method, path or host pattern is not a valid regex.
    #[error("L7 policy {key}: rule {rule}: {field} regex {pattern:?} is invalid: {source}")]
    Regex {
        /// The policy the rule belongs to.
        key: KeyDisplay,
        /// Index of the rule in the policy's `http` list.
        rule: usize,
        /// `method`, `path` or `host`.
        field: &'static str,
        /// The pattern as given.
        pattern: String,
        /// The regex compiler's error.
        source: regex::Error,
    },
    /// A header name or value in `headers` or `headerMatches` is not valid HTTP.
    #[error("L7 policy {key}: rule {rule}: header {header:?} is not a valid HTTP header: {reason}")]
    Header {
        /// The policy the rule belongs to.
        key: KeyDisplay,
        /// Index of the rule in the policy's `http` list.
        rule: usize,
        /// The header text as given.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two policies share a key.
    #[error("L7 policy {0} appears twice; merge its rules into one entry")]
    DuplicatePolicy(KeyDisplay),
    /// Two listeners share a name.
    #[error("listener {0:?} appears twice; listener names must be unique")]
    DuplicateListener(String),
    /// A listener names a cluster that does not exist or has no endpoints.
    #[error(
        "listener {listener:?} refers to cluster {cluster:?}, which is missing or has no endpoints"
    )]
    UnknownCluster {
        /// The listener.
        listener: String,
        /// The cluster it names.
        cluster: String,
    },
    /// An entry of `event_headers` is not a header name.
    #[error("event_headers: {0:?} is not a valid header name")]
    EventHeader(String),
}

/// A [`PolicyKey`] printed as `ingress 10.0.0.1:80`.
#[derive(Debug, Clone, Copy)]
pub struct KeyDisplay(pub PolicyKey);

impl std::fmt::Display for KeyDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direction = match self.0.direction {
            crate::config::Direction::Ingress => "ingress",
            crate::config::Direction::Egress => "egress",
        };
        write!(
            f,
            "{direction} {}",
            SocketAddr::new(self.0.endpoint, self.0.port)
        )
    }
}

/// A snapshot after validation, ready to serve.
#[derive(Debug)]
pub struct CompiledSnapshot {
    /// The snapshot as received, kept for persistence.
    pub source: Snapshot,
    listeners: HashMap<String, Listener>,
    clusters: HashMap<String, ClusterState>,
    policies: HashMap<PolicyKey, Arc<CompiledPolicy>>,
    identities: HashMap<IpAddr, IdentityEntry>,
    event_headers: HashSet<HeaderName>,
}

#[derive(Debug)]
struct ClusterState {
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl CompiledSnapshot {
    /// Validates and compiles a snapshot.
    pub fn compile(source: Snapshot) -> Result<Self, ConfigError> {
        let mut listeners = HashMap::new();
        let clusters: HashMap<String, ClusterState> = source
            .clusters
            .iter()
            .filter(|c| !c.endpoints.is_empty())
            .map(|c| {
                let state = ClusterState {
                    endpoints: c.endpoints.clone(),
                    next: AtomicUsize::new(0),
                };
                (c.name.clone(), state)
            })
            .collect();
        for listener in &source.listeners {
            if let ListenerUpstream::Cluster(cluster) = &listener.upstream
                && !clusters.contains_key(cluster)
            {
                return Err(ConfigError::UnknownCluster {
                    listener: listener.name.clone(),
                    cluster: cluster.clone(),
                });
            }
            if listeners
                .insert(listener.name.clone(), listener.clone())
                .is_some()
            {
                return Err(ConfigError::DuplicateListener(listener.name.clone()));
            }
        }
        let mut policies = HashMap::new();
        for policy in &source.l7_policies {
            let compiled = CompiledPolicy::compile(policy)?;
            if policies.insert(policy.key, Arc::new(compiled)).is_some() {
                return Err(ConfigError::DuplicatePolicy(KeyDisplay(policy.key)));
            }
        }
        let identities = source
            .identities
            .iter()
            .map(|i| (i.ip, i.clone()))
            .collect();
        let event_headers = source
            .event_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ConfigError::EventHeader(h.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            source,
            listeners,
            clusters,
            policies,
            identities,
            event_headers,
        })
    }

    /// The snapshot's version.
    pub fn version(&self) -> u64 {
        self.source.version
    }

    /// The listener of that name.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.get(name)
    }

    /// All listeners.
    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.values()
    }

    /// The next endpoint of a cluster, round-robin.
    pub fn pick_endpoint(&self, cluster: &str) -> Option<SocketAddr> {
        let state = self.clusters.get(cluster)?;
        let index = state.next.fetch_add(1, Ordering::Relaxed) % state.endpoints.len();
        state.endpoints.get(index).copied()
    }

    /// The L7 policy for a key.
    pub fn policy(&self, key: &PolicyKey) -> Option<Arc<CompiledPolicy>> {
        self.policies.get(key).cloned()
    }

    /// What the snapshot knows about an address.
    pub fn identity(&self, ip: IpAddr) -> Option<&IdentityEntry> {
        self.identities.get(&ip)
    }

    /// Whether a header may be copied into L7 events.
    pub fn event_header_allowed(&self, name: &HeaderName) -> bool {
        self.event_headers.contains(name)
    }
}

/// The compiled rules of one [`L7Policy`].
#[derive(Debug)]
pub struct CompiledPolicy {
    rules: Vec<CompiledRule>,
}

#[derive(Debug)]
struct CompiledRule {
    peers: Vec<u32>,
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    header_matches: Vec<CompiledHeaderMatch>,
}

#[derive(Debug)]
struct CompiledHeaderMatch {
    name: HeaderName,
    value: Option<HeaderValue>,
    mismatch: Option<MismatchAction>,
}

/// The parts of a request that rules look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a Method,
    /// Path and query, as in Envoy's `:path`.
    pub path: &'a str,
    /// `Host` header or `:authority`; empty when the request has neither.
    pub host: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Security identity of the remote peer, if known.
    pub peer_identity: Option<u32>,
}

/// A header change a matched rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Append a header.
    Add(HeaderName, HeaderValue),
    /// Remove every header of the name.
    Delete(HeaderName),
    /// Replace every header of the name by one value.
    Replace(HeaderName, HeaderValue),
}

/// The outcome of evaluating a policy against a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may be forwarded.
    pub allowed: bool,
    /// Header changes to apply before forwarding (from every matching rule, in order).
    pub header_ops: Vec<HeaderOp>,
    /// Names of headers whose mismatch was only to be logged.
    pub logged_mismatches: Vec<HeaderName>,
}

impl Decision {
    /// A decision allowing the request unchanged.
    pub fn allow() -> Self {
        Self {
            allowed: true,
            ..Self::default()
        }
    }

    /// A decision denying the request.
    pub fn deny() -> Self {
        Self::default()
    }

    /// Applies the header changes to a request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for op in &self.header_ops {
            match op {
                HeaderOp::Add(name, value) => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderOp::Delete(name) => {
                    headers.remove(name);
                }
                HeaderOp::Replace(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

fn anchored(
    key: PolicyKey,
    rule: usize,
    field: &'static str,
    pattern: &Option<String>,
) -> Result<Option<Regex>, ConfigError> {
    let Some(pattern) = pattern else {
        return Ok(None);
    };
    let build = |text: &str| {
        RegexBuilder::new(text)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|source| ConfigError::Regex {
                key: KeyDisplay(key),
                rule,
                field,
                pattern: pattern.clone(),
                source,
            })
    };
    // The pattern must be a regex by itself: `GET)|(.*` parses only once wrapped below,
    // where it would escape the anchoring group and match every method.
    build(pattern)?;
    // Cilium's patterns are full matches: `/v1/.*` must not match `/x/v1/`.
    build(&format!("^(?:{pattern})$")).map(Some)
}

impl CompiledPolicy {
    /// Compiles the rules of a policy.
    pub fn compile(policy: &L7Policy) -> Result<Self, ConfigError> {
        let rules = policy
            .http
            .iter()
            .enumerate()
            .map(|(index, rule)| CompiledRule::compile(policy.key, index, rule))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Evaluates the rules against a request: allowed when any rule matches (or there are
    /// no rules at all).
    pub fn evaluate(&self, request: &RequestView<'_>) -> Decision {
        if self.rules.is_empty() {
            return Decision::allow();
        }
        let mut decision = Decision::deny();
        for rule in &self.rules {
            rule.evaluate(request, &mut decision);
        }
        decision
    }
}

impl CompiledRule {
    fn compile(key: PolicyKey, index: usize, rule: &HttpRule) -> Result<Self, ConfigError> {
        let header_error = |header: &str, reason: String| ConfigError::Header {
            key: KeyDisplay(key),
            rule: index,
            header: header.to_owned(),
            reason,
        };
        let parse_name = |text: &str, whole: &str| {
            HeaderName::from_bytes(text.trim().as_bytes())
                .map_err(|e| header_error(whole, format!("bad name: {e}")))
        };
        let parse_value = |text: &str, whole: &str| {
            HeaderValue::from_str(text.trim())
                .map_err(|e| header_error(whole, format!("bad value: {e}")))
        };
        let mut headers = Vec::with_capacity(rule.headers.len());
        for header in &rule.headers {
            let entry = match header.split_once(':') {
                Some((name, value)) => {
                    (parse_name(name, header)?, Some(parse_value(value, header)?))
                }
                None => (parse_name(header, header)?, None),
            };
            headers.push(entry);
        }
        let mut header_matches = Vec::with_capacity(rule.header_matches.len());
        for HeaderMatch {
            name,
            value,
            mismatch,
        } in &rule.header_matches
        {
            let value = if value.is_empty() {
                None
            } else {
                Some(parse_value(value, name)?)
            };
            if value.is_none()
                && matches!(
                    mismatch,
                    Some(MismatchAction::Add | MismatchAction::Replace)
                )
            {
                return Err(header_error(
                    name,
                    "ADD and REPLACE need a value".to_owned(),
                ));
            }
            header_matches.push(CompiledHeaderMatch {
                name: parse_name(name, name)?,
                value,
                mismatch: *mismatch,
            });
        }
        Ok(Self {
            peers: rule.peers.clone(),
            method: anchored(key, index, "method", &rule.method)?,
            path: anchored(key, index, "path", &rule.path)?,
            host: anchored(key, index, "host", &rule.host)?,
            headers,
            header_matches,
        })
    }

    fn evaluate(&self, request: &RequestView<'_>, decision: &mut Decision) {
        if !self.peers.is_empty()
            && !request
                .peer_identity
                .is_some_and(|id| self.peers.contains(&id))
        {
            return;
        }
        let full =
            |regex: &Option<Regex>, text: &str| regex.as_ref().is_none_or(|r| r.is_match(text));
        if !full(&self.method, request.method.as_str())
            || !full(&self.path, request.path)
            || !full(&self.host, request.host)
        {
            return;
        }
        let has = |name: &HeaderName, value: &Option<HeaderValue>| match value {
            None => request.headers.contains_key(name),
            Some(value) => request.headers.get_all(name).iter().any(|v| v == value),
        };
        if !self.headers.iter().all(|(name, value)| has(name, value)) {
            return;
        }
        let mut ops = Vec::new();
        let mut logged = Vec::new();
        for m in &self.header_matches {
            if has(&m.name, &m.value) {
                continue;
            }
            match (m.mismatch, &m.value) {
                (None, _) => return,
                (Some(MismatchAction::Log), _) => logged.push(m.name.clone()),
                (Some(MismatchAction::Delete), _) => ops.push(HeaderOp::Delete(m.name.clone())),
                (Some(MismatchAction::Add), Some(value)) => {
                    ops.push(HeaderOp::Add(m.name.clone(), value.clone()));
                }
                (Some(MismatchAction::Replace), Some(value)) => {
                    ops.push(HeaderOp::Replace(m.name.clone(), value.clone()));
                }
                // Rejected at compile time; nothing to add without a value.
                (Some(MismatchAction::Add | MismatchAction::Replace), None) => {}
            }
        }
        decision.allowed = true;
        decision.header_ops.extend(ops);
        decision.logged_mismatches.extend(logged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Direction;

    fn key() -> PolicyKey {
        PolicyKey {
            endpoint: IpAddr::from([10, 0, 0, 1]),
            port: 80,
            direction: Direction::Ingress,
        }
    }

    fn policy(rules: Vec<HttpRule>) -> CompiledPolicy {
        match CompiledPolicy::compile(&L7Policy {
            key: key(),
            http: rules,
        }) {
            Ok(policy) => policy,
            Err(e) => panic!("policy does not compile: {e}"),
        }
    }

    fn check(
        policy: &CompiledPolicy,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Decision {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        policy.evaluate(&RequestView {
            method: &method,
            path,
            host,
            headers: &map,
            peer_identity: Some(7),
        })
    }

    fn rule() -> HttpRule {
        HttpRule::default()
    }

    #[test]
    fn empty_rule_list_allows_everything() {
        assert!(check(&policy(vec![]), "DELETE", "/anything", "x", &[]).allowed);
    }

    #[test]
    fn method_path_and_host_are_full_matches() {
        let p = policy(vec![HttpRule {
            method: Some("GET|HEAD".into()),
            path: Some("/v1/.*".into()),
            host: Some("api\\.example\\.com".into()),
            ..rule()
        }]);
        assert!(check(&p, "GET", "/v1/x", "api.example.com", &[]).allowed);
        assert!(check(&p, "HEAD", "/v1/", "api.example.com", &[]).allowed);
        assert!(!check(&p, "GETX", "/v1/x", "api.example.com", &[]).allowed);
        assert!(!check(&p, "XGET", "/v1/x", "api.example.com", &[]).allowed);
        assert!(!check(&p, "GET", "/x/v1/y", "api.example.com", &[]).allowed);
        assert!(!check(&p, "GET", "/v1", "api.example.com", &[]).allowed);
        assert!(!check(&p, "GET", "/v1/x", "evil.api.example.com", &[]).allowed);
        assert!(!check(&p, "GET", "/v1/x", "api.example.com.evil", &[]).allowed);
    }

    /// Found by the `rules` fuzz target (crates/proxy/fuzz, seed corpus/rules/escape):
    /// a pattern that is only valid inside the anchoring group escaped it, so
    /// `GET)|(.*` became `^(?:GET)|(.*)$` and allowed every method.
    #[test]
    fn patterns_that_escape_the_anchoring_group_are_rejected() {
        for (field, pattern) in [
            ("method", ")("),
            ("method", "GET)|(.*"),
            ("path", "/public)|(.*"),
            ("host", "a)|(?:b"),
        ] {
            let mut http = rule();
            let slot = match field {
                "method" => &mut http.method,
                "path" => &mut http.path,
                _ => &mut http.host,
            };
            *slot = Some(pattern.to_owned());
            let result = CompiledPolicy::compile(&L7Policy {
                key: key(),
                http: vec![http],
            });
            match result {
                Err(ConfigError::Regex {
                    field: f,
                    pattern: p,
                    ..
                }) => assert_eq!((f, p.as_str()), (field, pattern)),
                other => panic!("{field} {pattern:?} must be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn headers_by_presence_and_exact_value() {
        let p = policy(vec![HttpRule {
            headers: vec!["X-Has".into(), "X-Exact: yes".into()],
            ..rule()
        }]);
        assert!(check(&p, "GET", "/", "", &[("x-has", ""), ("x-exact", "yes")]).allowed);
        assert!(!check(&p, "GET", "/", "", &[("x-exact", "yes")]).allowed);
        assert!(!check(&p, "GET", "/", "", &[("x-has", "1"), ("x-exact", "yes!")]).allowed);
        assert!(
            check(
                &p,
                "GET",
                "/",
                "",
                &[("x-has", "1"), ("x-exact", "no"), ("x-exact", "yes")]
            )
            .allowed
        );
    }

    #[test]
    fn rules_are_ored() {
        let p = policy(vec![
            HttpRule {
                method: Some("GET".into()),
                path: Some("/public".into()),
                ..rule()
            },
            HttpRule {
                method: Some("POST".into()),
                path: Some("/submit".into()),
                ..rule()
            },
        ]);
        assert!(check(&p, "GET", "/public", "", &[]).allowed);
        assert!(check(&p, "POST", "/submit", "", &[]).allowed);
        assert!(!check(&p, "POST", "/public", "", &[]).allowed);
    }

    #[test]
    fn peers_restrict_a_rule() {
        let p = policy(vec![HttpRule {
            peers: vec![8],
            ..rule()
        }]);
        assert!(!check(&p, "GET", "/", "", &[]).allowed);
        let p = policy(vec![HttpRule {
            peers: vec![7, 8],
            ..rule()
        }]);
        assert!(check(&p, "GET", "/", "", &[]).allowed);
    }

    fn header_match(name: &str, value: &str, mismatch: Option<MismatchAction>) -> HttpRule {
        HttpRule {
            header_matches: vec![HeaderMatch {
                name: name.into(),
                value: value.into(),
                mismatch,
            }],
            ..rule()
        }
    }

    #[test]
    fn header_match_without_action_must_match() {
        let p = policy(vec![header_match("x-token", "s3cret", None)]);
        assert!(check(&p, "GET", "/", "", &[("x-token", "s3cret")]).allowed);
        assert!(!check(&p, "GET", "/", "", &[("x-token", "guess")]).allowed);
        assert!(!check(&p, "GET", "/", "", &[]).allowed);
    }

    #[test]
    fn header_match_actions_allow_and_rewrite() {
        let name = HeaderName::from_static("x-token");
        let value = HeaderValue::from_static("s3cret");
        let log = check(
            &policy(vec![header_match(
                "x-token",
                "s3cret",
                Some(MismatchAction::Log),
            )]),
            "GET",
            "/",
            "",
            &[],
        );
        assert!(log.allowed);
        assert_eq!(log.logged_mismatches, vec![name.clone()]);
        assert!(log.header_ops.is_empty());

        let add = check(
            &policy(vec![header_match(
                "x-token",
                "s3cret",
                Some(MismatchAction::Add),
            )]),
            "GET",
            "/",
            "",
            &[("x-token", "old")],
        );
        assert!(add.allowed);
        let mut headers = HeaderMap::new();
        headers.insert(name.clone(), HeaderValue::from_static("old"));
        add.apply(&mut headers);
        assert_eq!(headers.get_all(&name).iter().count(), 2);

        let replace = check(
            &policy(vec![header_match(
                "x-token",
                "s3cret",
                Some(MismatchAction::Replace),
            )]),
            "GET",
            "/",
            "",
            &[("x-token", "old")],
        );
        let mut headers = HeaderMap::new();
        headers.append(name.clone(), HeaderValue::from_static("old"));
        headers.append(name.clone(), HeaderValue::from_static("older"));
        replace.apply(&mut headers);
        assert_eq!(
            headers.get_all(&name).iter().collect::<Vec<_>>(),
            vec![&value]
        );

        let delete = check(
            &policy(vec![header_match(
                "x-token",
                "s3cret",
                Some(MismatchAction::Delete),
            )]),
            "GET",
            "/",
            "",
            &[("x-token", "old")],
        );
        assert!(delete.allowed);
        let mut headers = HeaderMap::new();
        headers.insert(name.clone(), HeaderValue::from_static("old"));
        delete.apply(&mut headers);
        assert!(!headers.contains_key(&name));

        // A matching header triggers no action.
        let matched = check(
            &policy(vec![header_match(
                "x-token",
                "s3cret",
                Some(MismatchAction::Replace),
            )]),
            "GET",
            "/",
            "",
            &[("x-token", "s3cret")],
        );
        assert!(matched.allowed && matched.header_ops.is_empty());
    }

    #[test]
    fn bad_regex_rejects_the_snapshot_with_a_located_error() {
        let snapshot = Snapshot {
            version: 3,
            l7_policies: vec![L7Policy {
                key: key(),
                http: vec![
                    rule(),
                    HttpRule {
                        path: Some("/v1/(".into()),
                        ..rule()
                    },
                ],
            }],
            ..Snapshot::default()
        };
        let error = CompiledSnapshot::compile(snapshot).unwrap_err().to_string();
        assert!(error.contains("ingress 10.0.0.1:80"), "{error}");
        assert!(error.contains("rule 1"), "{error}");
        assert!(error.contains("path regex \"/v1/(\""), "{error}");
    }

    #[test]
    fn bad_headers_and_references_are_rejected() {
        let bad_header = Snapshot {
            l7_policies: vec![L7Policy {
                key: key(),
                http: vec![HttpRule {
                    headers: vec!["bad name: x".into()],
                    ..rule()
                }],
            }],
            ..Snapshot::default()
        };
        assert!(matches!(
            CompiledSnapshot::compile(bad_header),
            Err(ConfigError::Header { .. })
        ));
        let add_without_value = Snapshot {
            l7_policies: vec![L7Policy {
                key: key(),
                http: vec![header_match("x", "", Some(MismatchAction::Add))],
            }],
            ..Snapshot::default()
        };
        assert!(matches!(
            CompiledSnapshot::compile(add_without_value),
            Err(ConfigError::Header { .. })
        ));
        let unknown_cluster = Snapshot {
            listeners: vec![Listener {
                name: "l".into(),
                address: "127.0.0.1:0".parse().unwrap(),
                upstream: ListenerUpstream::Cluster("nope".into()),
                direction: Direction::Ingress,
                missing_policy: Default::default(),
                original_source: false,
            }],
            ..Snapshot::default()
        };
        assert!(matches!(
            CompiledSnapshot::compile(unknown_cluster),
            Err(ConfigError::UnknownCluster { .. })
        ));
    }

    #[test]
    fn snapshot_json_round_trips_with_cilium_field_names() {
        let json = r#"{"version":1,"l7_policies":[{"endpoint":"10.0.0.1","port":80,"direction":"ingress",
            "http":[{"method":"POST","path":"/v1/request-landing","headerMatches":[{"name":"x","value":"y","mismatch":"REPLACE"}]}]}]}"#;
        let snapshot: Snapshot = serde_json::from_str(json).unwrap();
        assert_eq!(snapshot.l7_policies[0].key, key());
        assert_eq!(
            snapshot.l7_policies[0].http[0].header_matches[0].mismatch,
            Some(MismatchAction::Replace)
        );
        let again: Snapshot =
            serde_json::from_str(&serde_json::to_string(&snapshot).unwrap()).unwrap();
        assert_eq!(again, snapshot);
    }
}
