//! Rule compilation and matching on arbitrary patterns and requests: must never panic, and
//! must accept only patterns that are regexes by themselves.
//!
//! Input layout, fields separated by NUL: method regex, path regex, host regex, header rule,
//! header-match name=value, then the request's method, path, host and one `name: value`
//! header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use myelin_proxy::config::{Direction, HeaderMatch, HttpRule, L7Policy, MismatchAction, PolicyKey};
use myelin_proxy::rules::{CompiledPolicy, RequestView};

fuzz_target!(|data: &[u8]| {
    let mut parts = data
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut next = || parts.next().unwrap_or_default();
    let optional = |s: String| (!s.is_empty()).then_some(s);
    let (method_re, path_re, host_re, header_rule, header_match) =
        (next(), next(), next(), next(), next());
    let (method, path, host, header) = (next(), next(), next(), next());
    let (match_name, match_value) = header_match.split_once('=').unwrap_or((&header_match, ""));
    let action = match data.first().map(|b| b % 5) {
        Some(1) => Some(MismatchAction::Log),
        Some(2) => Some(MismatchAction::Add),
        Some(3) => Some(MismatchAction::Delete),
        Some(4) => Some(MismatchAction::Replace),
        _ => None,
    };
    let policy = L7Policy {
        key: PolicyKey {
            endpoint: [127, 0, 0, 1].into(),
            port: 80,
            direction: Direction::Ingress,
        },
        http: vec![HttpRule {
            peers: Vec::new(),
            method: optional(method_re),
            path: optional(path_re),
            host: optional(host_re),
            headers: optional(header_rule).into_iter().collect(),
            header_matches: vec![HeaderMatch {
                name: match_name.to_owned(),
                value: match_value.to_owned(),
                mismatch: action,
            }],
        }],
    };
    let Ok(compiled) = CompiledPolicy::compile(&policy) else {
        return;
    };
    // Every accepted pattern is a regex of its own. One that only parses once wrapped in
    // the anchoring group (`/public)|(.*`) escapes the full match and matches more than
    // its author wrote.
    let rule = &policy.http[0];
    for pattern in [&rule.method, &rule.path, &rule.host].into_iter().flatten() {
        assert!(
            regex::Regex::new(pattern).is_ok(),
            "accepted {pattern:?}, which is not a valid regex by itself"
        );
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some((name, value)) = header.split_once(':')
        && let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        )
    {
        headers.insert(name, value);
    }
    let decision = compiled.evaluate(&RequestView {
        method: &method,
        path: &path,
        host: &host,
        headers: &headers,
        peer_identity: None,
    });
    decision.apply(&mut headers);
});
