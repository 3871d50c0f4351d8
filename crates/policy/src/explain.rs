//! Explaining a flow: the verdict and the rules that decide it, and the
//! renderings of an endpoint's resolved policy for `myelin policy get`.

use std::fmt::Write as _;
use std::net::IpAddr;

use myelin_model::Document;
use myelin_model::policy::{HttpRule, full_match};
use serde::Serialize;

use crate::error::PolicyError;
use crate::identity::{ANY, Identity};
use crate::resolve::{
    Action, Decision, EndpointKey, EndpointPolicy, Entry, L7Policy, PolicyEngine,
};
use crate::rules::{Direction, Proto, Provenance};

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Target {
    /// A pod.
    Endpoint(EndpointKey),
    /// An address (a pod's, or one outside the cluster).
    Ip(IpAddr),
}

/// An HTTP request, to evaluate L7 rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Host header, when known.
    pub host: Option<String>,
    /// Headers (name, value).
    pub headers: Vec<(String, String)>,
}

/// A flow to explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    /// Source.
    pub from: Target,
    /// Destination.
    pub to: Target,
    /// Protocol.
    pub proto: Proto,
    /// Destination port (ICMP type for ICMP).
    pub port: u16,
    /// The request, when L7 rules should be evaluated.
    pub http: Option<HttpRequest>,
}

/// The outcome of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Forwarded.
    Allowed,
    /// Dropped at L3/L4.
    Denied,
    /// Forwarded to the proxy; no request was given to evaluate its rules.
    Redirected,
    /// Forwarded to the proxy, which refuses the request (HTTP 403).
    L7Denied,
}

/// The check at one end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The endpoint whose policy is checked.
    pub endpoint: EndpointKey,
    /// Egress at the source, ingress at the destination.
    pub direction: Direction,
    /// The peer's identity as the datapath sees it.
    pub peer: Identity,
    /// Whether the direction is enforced.
    pub enforced: bool,
    /// The L3/L4 decision.
    pub decision: Decision,
    /// The entries that decide it.
    pub entries: Vec<Entry>,
    /// The L7 rules that allowed the request, when one was evaluated.
    pub l7_matched: Vec<Provenance>,
}

/// The verdict of a flow with the checks behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The verdict.
    pub verdict: Verdict,
    /// The source's egress check (absent when the source is not a pod).
    pub egress: Option<Step>,
    /// The destination's ingress check (absent when it is not a pod).
    pub ingress: Option<Step>,
}

/// Explains `query` against `engine`; with `proposed` manifests, against
/// the engine as it would be once they are applied (what-if), leaving
/// `engine` untouched.
pub fn explain(
    engine: &PolicyEngine,
    query: &Query,
    proposed: &[Document],
) -> Result<Explanation, PolicyError> {
    if proposed.is_empty() {
        return explain_now(engine, query);
    }
    let mut what_if = engine.clone();
    for doc in proposed {
        what_if.apply(&doc.resource)?;
    }
    explain_now(&what_if, query)
}

fn resolve_target(
    engine: &PolicyEngine,
    target: &Target,
) -> Result<(Option<EndpointKey>, Identity), PolicyError> {
    match target {
        Target::Endpoint(key) => {
            let policy = engine
                .policy(key)
                .ok_or_else(|| PolicyError::UnknownEndpoint(key.to_string()))?;
            Ok((Some(key.clone()), policy.identity))
        }
        Target::Ip(ip) => Ok((engine.endpoint_of_ip(*ip), engine.identity_of_ip(*ip))),
    }
}

fn explain_now(engine: &PolicyEngine, query: &Query) -> Result<Explanation, PolicyError> {
    let (from_ep, from_id) = resolve_target(engine, &query.from)?;
    let (to_ep, to_id) = resolve_target(engine, &query.to)?;
    let step = |ep: &Option<EndpointKey>, direction: Direction, peer: Identity| -> Option<Step> {
        let policy = engine.policy(ep.as_ref()?)?;
        let table = policy.direction(direction);
        let (decision, entries) = table.lookup(peer, query.proto, query.port);
        let l7_matched = match (&decision, &query.http) {
            (Decision::Redirect(l7), Some(req)) => l7_matches(l7, req),
            _ => Vec::new(),
        };
        Some(Step {
            endpoint: policy.endpoint.clone(),
            direction,
            peer,
            enforced: table.enforced,
            decision,
            entries,
            l7_matched,
        })
    };
    let egress = step(&from_ep, Direction::Egress, to_id);
    let ingress = step(&to_ep, Direction::Ingress, from_id);
    let mut verdict = Verdict::Allowed;
    for s in egress.iter().chain(ingress.iter()) {
        let v = match &s.decision {
            Decision::Deny | Decision::DefaultDeny => Verdict::Denied,
            Decision::Allow | Decision::NotEnforced => Verdict::Allowed,
            Decision::Redirect(l7) => match &query.http {
                None => Verdict::Redirected,
                Some(_) if l7.allow_all || !s.l7_matched.is_empty() => Verdict::Allowed,
                Some(_) => Verdict::L7Denied,
            },
        };
        verdict = worse(verdict, v);
    }
    Ok(Explanation {
        verdict,
        egress,
        ingress,
    })
}

fn worse(a: Verdict, b: Verdict) -> Verdict {
    let rank = |v: Verdict| match v {
        Verdict::Allowed => 0,
        Verdict::Redirected => 1,
        Verdict::L7Denied => 2,
        Verdict::Denied => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The provenance of the HTTP rules that match `req` (ORed).
fn l7_matches(l7: &L7Policy, req: &HttpRequest) -> Vec<Provenance> {
    l7.http
        .iter()
        .filter(|r| http_matches(&r.rule, req))
        .map(|r| r.from.clone())
        .collect()
}

/// Whether a request satisfies an HTTP rule: method, path and host as
/// full-match regular expressions, headers present or equal; header matches
/// with a mismatch action never refuse the request (they log or rewrite).
pub fn http_matches(rule: &HttpRule, req: &HttpRequest) -> bool {
    let re = |pattern: &Option<String>, value: &str| {
        pattern
            .as_ref()
            .is_none_or(|p| full_match(p).is_ok_and(|r| r.is_match(value)))
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    re(&rule.method, &req.method)
        && re(&rule.path, &req.path)
        && (rule.host.is_none() || req.host.as_deref().is_some_and(|h| re(&rule.host, h)))
        && rule.headers.iter().all(|h| match h.split_once(':') {
            Some((name, value)) => header(name.trim()) == Some(value.trim()),
            None => header(h.trim()).is_some(),
        })
        && rule.header_matches.iter().all(|m| {
            m.mismatch.is_some()
                || match &m.value {
                    Some(v) => header(&m.name) == Some(v.as_str()),
                    None => header(&m.name).is_some(),
                }
        })
}

/// A JSON view of an endpoint's resolved policy, with peer labels.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    /// The endpoint.
    pub endpoint: EndpointKey,
    /// Its identity.
    pub identity: Identity,
    /// Its identity's labels.
    pub labels: Vec<String>,
    /// Ingress.
    pub ingress: DirectionView,
    /// Egress.
    pub egress: DirectionView,
}

/// One direction of a [`PolicyView`].
#[derive(Debug, Clone, Serialize)]
pub struct DirectionView {
    /// Whether unmatched traffic is dropped.
    pub enforced: bool,
    /// The entries with their peers' labels.
    pub entries: Vec<EntryView>,
}

/// One entry of a [`DirectionView`].
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// The peer's labels (`reserved:any` for every peer).
    pub peer_labels: Vec<String>,
}

impl PolicyView {
    /// The view of `policy`, naming peers from `engine`'s identities.
    pub fn new(engine: &PolicyEngine, policy: &EndpointPolicy) -> Self {
        let peer_labels = |id: Identity| {
            if id == ANY {
                vec!["reserved:any".to_string()]
            } else {
                engine
                    .identity_labels(id)
                    .map(|l| l.to_strings())
                    .unwrap_or_default()
            }
        };
        let dir = |d: &crate::resolve::DirectionPolicy| DirectionView {
            enforced: d.enforced,
            entries: d
                .entry_list()
                .into_iter()
                .map(|entry| EntryView {
                    peer_labels: peer_labels(entry.key.peer),
                    entry,
                })
                .collect(),
        };
        Self {
            endpoint: policy.endpoint.clone(),
            identity: policy.identity,
            labels: peer_labels(policy.identity),
            ingress: dir(&policy.ingress),
            egress: dir(&policy.egress),
        }
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A human rendering: one line per entry.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} (identity {}: {})",
            self.endpoint,
            self.identity,
            self.labels.join(",")
        );
        for (name, d) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            let _ = writeln!(
                out,
                "  {name}: {}",
                if d.enforced {
                    "enforced (default deny)"
                } else {
                    "not enforced (default allow)"
                }
            );
            for e in &d.entries {
                let action = match &e.entry.value.action {
                    Action::Allow => "ALLOW".to_string(),
                    Action::Deny => "DENY".to_string(),
                    Action::Redirect(l7) => {
                        let rules: Vec<String> = l7
                            .http
                            .iter()
                            .map(|r| {
                                format!(
                                    "{} {}",
                                    r.rule.method.as_deref().unwrap_or("*"),
                                    r.rule.path.as_deref().unwrap_or("*")
                                )
                            })
                            .chain(l7.dns.iter().map(|r| {
                                format!(
                                    "dns {}",
                                    r.rule
                                        .match_name
                                        .as_deref()
                                        .or(r.rule.match_pattern.as_deref())
                                        .unwrap_or("*")
                                )
                            }))
                            .collect();
                        format!(
                            "REDIRECT [{}{}]",
                            rules.join("; "),
                            if l7.allow_all { "; any" } else { "" }
                        )
                    }
                };
                let from: Vec<String> = e
                    .entry
                    .value
                    .provenance
                    .iter()
                    .map(|p| p.to_string())
                    .collect();
                let _ = writeln!(
                    out,
                    "    {:<8} {:>6} {}/{:<11} {}  <- {}",
                    action,
                    e.entry.key.peer,
                    e.entry.key.proto,
                    e.entry.key.ports.to_string(),
                    e.peer_labels.join(","),
                    from.join("; ")
                );
            }
        }
        out
    }
}

impl Explanation {
    /// A human rendering: the verdict, then each check and its rules.
    pub fn to_text(&self) -> String {
        let mut out = format!("verdict: {:?}\n", self.verdict);
        for s in self.egress.iter().chain(self.ingress.iter()) {
            let _ = writeln!(
                out,
                "  {:?} of {} (peer identity {}, {}): {}",
                s.direction,
                s.endpoint,
                s.peer,
                if s.enforced {
                    "enforced"
                } else {
                    "not enforced"
                },
                match &s.decision {
                    Decision::Allow => "allowed",
                    Decision::Deny => "denied by a deny rule",
                    Decision::DefaultDeny => "denied: no rule allows it (default deny)",
                    Decision::NotEnforced => "allowed: no policy selects it in this direction",
                    Decision::Redirect(_) => "redirected to the L7 proxy",
                }
            );
            for e in &s.entries {
                for p in e.value.provenance.iter() {
                    let _ = writeln!(out, "    by {p}");
                }
            }
            for p in &s.l7_matched {
                let _ = writeln!(out, "    request allowed by HTTP rule of {p}");
            }
        }
        out
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
