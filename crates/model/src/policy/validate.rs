//! Validation of policy kinds: every error names the field path, the value
//! and what to do. Unsupported fields are rejected by name.

use crate::manifest::FieldError;
use crate::meta::{Ignored, LabelSelector, check_labels, check_selector};
use crate::workload::{IntOrString, Protocol};

use super::cilium::*;
use super::k8s::*;
use super::{PortSpec, full_match, icmp_type, is_fqdn, parse_cidr};

type Check = Result<(), FieldError>;

fn fail(field: impl Into<String>, value: Option<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(field, value, message)
}

/// Rejects a field Myelin does not enforce yet, by name.
/// Rejects the peer selectors every rule kind may carry but Myelin does not
/// support: `<side>Requires`, `<side>Nodes`, `<side>Groups` (side: from/to).
fn unsupported_peer_selectors(
    at: &str,
    side: &str,
    requires: &Option<Ignored>,
    nodes: &Option<Ignored>,
    groups: &Option<Ignored>,
) -> Check {
    unsupported(
        requires,
        at,
        &format!("{side}Requires"),
        &format!("it is deprecated in Cilium; use {side}Endpoints with matchExpressions"),
    )?;
    unsupported(
        nodes,
        at,
        &format!("{side}Nodes"),
        "node selection needs node identities, which Myelin does not allocate",
    )?;
    unsupported(
        groups,
        at,
        &format!("{side}Groups"),
        "cloud provider groups are not read",
    )
}

fn unsupported(present: &Option<Ignored>, at: &str, name: &str, why: &str) -> Check {
    if present.is_some() {
        return Err(fail(
            join(at, name),
            None,
            format!(
                "`{name}` is not supported yet: {why}; remove it or keep this policy on Cilium"
            ),
        ));
    }
    Ok(())
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

/// Validates a CiliumNetworkPolicy (`clusterwide` false) or a
/// CiliumClusterwideNetworkPolicy.
pub(crate) fn validate_cilium(p: &CiliumNetworkPolicy, clusterwide: bool) -> Check {
    if p.metadata.name.is_empty() {
        return Err(fail("metadata.name", None, "metadata.name is required"));
    }
    if !crate::meta::is_dns1123_subdomain(&p.metadata.name) {
        return Err(fail(
            "metadata.name",
            Some(p.metadata.name.clone()),
            "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'",
        ));
    }
    if !clusterwide
        && let Some(ns) = &p.metadata.namespace
        && !crate::meta::is_dns1123_label(ns)
    {
        return Err(fail(
            "metadata.namespace",
            Some(ns.clone()),
            "must be a DNS-1123 label",
        ));
    }
    check_labels(&p.metadata.labels, "metadata.labels")?;
    let rules = p.rules();
    if rules.is_empty() {
        return Err(fail(
            "spec",
            None,
            "the policy has neither `spec` nor `specs` with a rule",
        ));
    }
    for (at, rule) in rules {
        validate_rule(rule, &at)?;
    }
    Ok(())
}

fn validate_rule(rule: &Rule, at: &str) -> Check {
    unsupported(
        &rule.node_selector,
        at,
        "nodeSelector",
        "host (node) policies are not enforced by Myelin",
    )?;
    unsupported(
        &rule.log,
        at,
        "log",
        "policy verdict log settings are not implemented",
    )?;
    let Some(selector) = &rule.endpoint_selector else {
        return Err(fail(
            join(at, "endpointSelector"),
            None,
            "a rule needs an endpointSelector (`{}` selects every endpoint in scope)",
        ));
    };
    check_selector(selector, &join(at, "endpointSelector"), true)?;
    for (i, r) in rule.ingress.iter().flatten().enumerate() {
        let at = format!("{at}.ingress[{i}]");
        unsupported_peer_selectors(&at, "from", &r.from_requires, &r.from_nodes, &r.from_groups)?;
        validate_peers(
            &at,
            "from",
            r.from_endpoints.as_deref(),
            r.from_cidr.as_deref(),
            r.from_cidr_set.as_deref(),
        )?;
        for (j, p) in r.to_ports.iter().flatten().enumerate() {
            validate_port_rule(p, &format!("{at}.toPorts[{j}]"), false)?;
        }
        validate_icmps(r.icmps.as_deref(), &at)?;
        validate_auth(r.authentication.as_ref(), &at)?;
    }
    for (i, r) in rule.ingress_deny.iter().flatten().enumerate() {
        let at = format!("{at}.ingressDeny[{i}]");
        unsupported_peer_selectors(&at, "from", &r.from_requires, &r.from_nodes, &r.from_groups)?;
        validate_peers(
            &at,
            "from",
            r.from_endpoints.as_deref(),
            r.from_cidr.as_deref(),
            r.from_cidr_set.as_deref(),
        )?;
        for (j, p) in r.to_ports.iter().flatten().enumerate() {
            validate_ports(&p.ports, &format!("{at}.toPorts[{j}]"))?;
        }
        validate_icmps(r.icmps.as_deref(), &at)?;
    }
    for (i, r) in rule.egress.iter().flatten().enumerate() {
        let at = format!("{at}.egress[{i}]");
        unsupported_peer_selectors(&at, "to", &r.to_requires, &r.to_nodes, &r.to_groups)?;
        validate_peers(
            &at,
            "to",
            r.to_endpoints.as_deref(),
            r.to_cidr.as_deref(),
            r.to_cidr_set.as_deref(),
        )?;
        validate_services(r.to_services.as_deref(), &at)?;
        if let Some(fqdns) = &r.to_fqdns {
            // Cilium's sanitizer refuses toFQDNs next to any other L3 peer:
            // the names resolve to addresses that would overlap them.
            if r.to_endpoints.is_some()
                || r.to_entities.is_some()
                || r.to_cidr.is_some()
                || r.to_cidr_set.is_some()
                || r.to_services.is_some()
            {
                return Err(fail(
                    format!("{at}.toFQDNs"),
                    None,
                    "toFQDNs cannot be combined with toEndpoints, toEntities, toCIDR, toCIDRSet or toServices in one rule; put them in separate egress rules",
                ));
            }
            for (j, f) in fqdns.iter().enumerate() {
                validate_fqdn(f, &format!("{at}.toFQDNs[{j}]"))?;
            }
        }
        for (j, p) in r.to_ports.iter().flatten().enumerate() {
            validate_port_rule(p, &format!("{at}.toPorts[{j}]"), true)?;
        }
        validate_icmps(r.icmps.as_deref(), &at)?;
        validate_auth(r.authentication.as_ref(), &at)?;
    }
    for (i, r) in rule.egress_deny.iter().flatten().enumerate() {
        let at = format!("{at}.egressDeny[{i}]");
        unsupported_peer_selectors(&at, "to", &r.to_requires, &r.to_nodes, &r.to_groups)?;
        validate_peers(
            &at,
            "to",
            r.to_endpoints.as_deref(),
            r.to_cidr.as_deref(),
            r.to_cidr_set.as_deref(),
        )?;
        validate_services(r.to_services.as_deref(), &at)?;
        for (j, p) in r.to_ports.iter().flatten().enumerate() {
            validate_ports(&p.ports, &format!("{at}.toPorts[{j}]"))?;
        }
        validate_icmps(r.icmps.as_deref(), &at)?;
    }
    Ok(())
}

fn validate_peers(
    at: &str,
    prefix: &str,
    endpoints: Option<&[LabelSelector]>,
    cidrs: Option<&[String]>,
    cidr_sets: Option<&[CidrRule]>,
) -> Check {
    for (i, s) in endpoints.into_iter().flatten().enumerate() {
        check_selector(s, &format!("{at}.{prefix}Endpoints[{i}]"), true)?;
    }
    for (i, c) in cidrs.into_iter().flatten().enumerate() {
        parse_cidr(c).map_err(|m| fail(format!("{at}.{prefix}CIDR[{i}]"), Some(c.clone()), m))?;
    }
    for (i, set) in cidr_sets.into_iter().flatten().enumerate() {
        let at = format!("{at}.{prefix}CIDRSet[{i}]");
        unsupported(
            &set.cidr_group_ref,
            &at,
            "cidrGroupRef",
            "CiliumCIDRGroup resources are not read",
        )?;
        unsupported(
            &set.cidr_group_selector,
            &at,
            "cidrGroupSelector",
            "CiliumCIDRGroup resources are not read",
        )?;
        let Some(cidr) = &set.cidr else {
            return Err(fail(format!("{at}.cidr"), None, "a CIDR set needs `cidr`"));
        };
        validate_cidr_except(cidr, &set.except, &at)?;
    }
    Ok(())
}

fn validate_cidr_except(cidr: &str, except: &[String], at: &str) -> Check {
    let net =
        parse_cidr(cidr).map_err(|m| fail(format!("{at}.cidr"), Some(cidr.to_string()), m))?;
    for (i, e) in except.iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        let sub = parse_cidr(e).map_err(|m| fail(field.clone(), Some(e.clone()), m))?;
        if !net.contains(&sub) {
            return Err(fail(
                field,
                Some(e.clone()),
                format!("an exception must lie inside {net}"),
            ));
        }
    }
    Ok(())
}

fn validate_services(services: Option<&[ServicePeer]>, at: &str) -> Check {
    for (i, s) in services.into_iter().flatten().enumerate() {
        let at = format!("{at}.toServices[{i}]");
        match (&s.k8s_service, &s.k8s_service_selector) {
            (Some(n), None) => {
                if !crate::meta::is_dns1123_label(&n.service_name) {
                    return Err(fail(
                        format!("{at}.k8sService.serviceName"),
                        Some(n.service_name.clone()),
                        "a service name (DNS-1123 label) is required",
                    ));
                }
            }
            (None, Some(sel)) => check_selector(
                &sel.selector,
                &format!("{at}.k8sServiceSelector.selector"),
                false,
            )?,
            _ => {
                return Err(fail(
                    at,
                    None,
                    "give exactly one of k8sService and k8sServiceSelector",
                ));
            }
        }
    }
    Ok(())
}

fn validate_fqdn(f: &FqdnSelector, at: &str) -> Check {
    if f.match_name.is_none() && f.match_pattern.is_none() {
        return Err(fail(at, None, "give matchName or matchPattern"));
    }
    if let Some(n) = &f.match_name
        && !is_fqdn(n, false)
    {
        return Err(fail(
            format!("{at}.matchName"),
            Some(n.clone()),
            "not a DNS name: letters, digits, '-', '_' and '.' only (use matchPattern for wildcards)",
        ));
    }
    if let Some(p) = &f.match_pattern
        && !is_fqdn(p, true)
    {
        return Err(fail(
            format!("{at}.matchPattern"),
            Some(p.clone()),
            "not a DNS pattern: letters, digits, '-', '_', '.' and '*' only",
        ));
    }
    Ok(())
}

/// Port numbers, ranges, names and protocols; returns each port's spec.
fn validate_ports(
    ports: &[PortProtocol],
    at: &str,
) -> Result<Vec<(PortSpec, L4Proto)>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{at}.ports[{i}]");
        let proto = p.protocol.unwrap_or(L4Proto::Any);
        let bad_proto = |why: &str| {
            Err(fail(
                format!("{at}.protocol"),
                Some(format!("{proto:?}").to_uppercase()),
                why.to_string(),
            ))
        };
        match proto {
            L4Proto::Tcp | L4Proto::Udp | L4Proto::Any => {}
            L4Proto::Sctp => {
                return bad_proto(
                    "SCTP is not supported (this kernel has no SCTP); use TCP, UDP or ANY",
                );
            }
            L4Proto::Icmp | L4Proto::Icmpv6 => {
                return bad_proto("ICMP is not a port protocol; use `icmps` with the ICMP types");
            }
            L4Proto::Vrrp | L4Proto::Igmp => {
                return bad_proto("VRRP and IGMP are not supported; use TCP, UDP or ANY");
            }
        }
        let end = match &p.end_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(s)) => Some(s.parse::<i64>().map_err(|_| {
                fail(
                    format!("{at}.endPort"),
                    Some(s.clone()),
                    "endPort must be a number",
                )
            })?),
        };
        let spec = PortSpec::parse(p.port.as_ref(), end).map_err(|m| {
            let value = p.port.as_ref().map(|v| match v {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("{s:?}"),
            });
            fail(format!("{at}.port"), value, m)
        })?;
        out.push((spec, proto));
    }
    Ok(out)
}

fn validate_port_rule(p: &PortRule, at: &str, egress: bool) -> Check {
    unsupported(
        &p.terminating_tls,
        at,
        "terminatingTLS",
        "TLS interception needs Kubernetes secrets, which Myelin does not read yet",
    )?;
    unsupported(
        &p.originating_tls,
        at,
        "originatingTLS",
        "TLS origination needs Kubernetes secrets, which Myelin does not read yet",
    )?;
    unsupported(
        &p.server_names,
        at,
        "serverNames",
        "TLS SNI matching is not implemented",
    )?;
    unsupported(
        &p.listener,
        at,
        "listener",
        "CiliumEnvoyConfig listeners are not read yet",
    )?;
    let ports = validate_ports(&p.ports, at)?;
    let Some(rules) = &p.rules else { return Ok(()) };
    let at = format!("{at}.rules");
    unsupported(
        &rules.kafka,
        &at,
        "kafka",
        "Kafka L7 policy is not implemented",
    )?;
    unsupported(
        &rules.l7proto,
        &at,
        "l7proto",
        "generic L7 parsers are not implemented",
    )?;
    unsupported(
        &rules.l7,
        &at,
        "l7",
        "generic L7 parsers are not implemented",
    )?;
    if rules.http.is_some() && rules.dns.is_some() {
        return Err(fail(
            at,
            None,
            "one port rule can carry only one L7 protocol; split http and dns into separate toPorts entries",
        ));
    }
    if rules.http.is_some() || rules.dns.is_some() {
        // The proxy listens on one port per redirect: a range or every port
        // cannot be redirected (Cilium refuses the same).
        for (i, (spec, proto)) in ports.iter().enumerate() {
            if matches!(spec, PortSpec::All) || matches!(spec, PortSpec::Range(a, b) if a != b) {
                return Err(fail(
                    at.clone(),
                    None,
                    format!(
                        "L7 rules need single ports; toPorts.ports[{i}] is a range or every port"
                    ),
                ));
            }
            if rules.http.is_some() && *proto == L4Proto::Udp {
                return Err(fail(
                    format!("{at}.http"),
                    None,
                    format!("HTTP rules apply to TCP; toPorts.ports[{i}] is UDP"),
                ));
            }
        }
        if ports.is_empty() {
            return Err(fail(at, None, "L7 rules need at least one port in `ports`"));
        }
    }
    for (i, h) in rules.http.iter().flatten().enumerate() {
        validate_http(h, &format!("{at}.http[{i}]"))?;
    }
    if let Some(dns) = &rules.dns {
        if !egress {
            return Err(fail(
                format!("{at}.dns"),
                None,
                "DNS rules apply to egress only (to the DNS server)",
            ));
        }
        for (i, f) in dns.iter().enumerate() {
            validate_fqdn(f, &format!("{at}.dns[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_http(h: &HttpRule, at: &str) -> Check {
    for (name, value) in [("method", &h.method), ("path", &h.path), ("host", &h.host)] {
        if let Some(v) = value {
            full_match(v).map_err(|e| {
                fail(
                    format!("{at}.{name}"),
                    Some(v.clone()),
                    format!("not a valid regular expression: {e}"),
                )
            })?;
        }
    }
    for (i, header) in h.headers.iter().enumerate() {
        let name = header
            .split_once(':')
            .map_or(header.as_str(), |(n, _)| n)
            .trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(fail(
                format!("{at}.headers[{i}]"),
                Some(header.clone()),
                "a header is `Name` (must be present) or `Name: value` (must have that value)",
            ));
        }
    }
    for (i, m) in h.header_matches.iter().enumerate() {
        let at = format!("{at}.headerMatches[{i}]");
        if m.secret.is_some() {
            return Err(fail(
                format!("{at}.secret"),
                None,
                "header values from Kubernetes secrets are not supported yet (Myelin does not read secrets); put the value in `value`",
            ));
        }
        if m.name.is_empty() || m.name.contains(char::is_whitespace) {
            return Err(fail(
                format!("{at}.name"),
                Some(m.name.clone()),
                "a header name is required",
            ));
        }
        if matches!(
            m.mismatch,
            Some(MismatchAction::Add | MismatchAction::Replace)
        ) && m.value.is_none()
        {
            return Err(fail(
                format!("{at}.value"),
                None,
                "mismatch ADD and REPLACE need a value to write",
            ));
        }
    }
    Ok(())
}

fn validate_icmps(icmps: Option<&[IcmpRule]>, at: &str) -> Check {
    for (i, rule) in icmps.into_iter().flatten().enumerate() {
        let at = format!("{at}.icmps[{i}]");
        if rule.fields.is_empty() {
            return Err(fail(
                format!("{at}.fields"),
                None,
                "an icmps entry needs at least one field",
            ));
        }
        for (j, f) in rule.fields.iter().enumerate() {
            let at = format!("{at}.fields[{j}]");
            let ipv6 = match f.family.as_deref() {
                None | Some("IPv4") => false,
                Some("IPv6") => true,
                Some(other) => {
                    return Err(fail(
                        format!("{at}.family"),
                        Some(other.to_string()),
                        "family is IPv4 or IPv6",
                    ));
                }
            };
            icmp_type(&f.icmp_type, ipv6).map_err(|m| fail(format!("{at}.type"), None, m))?;
        }
    }
    Ok(())
}

fn validate_auth(auth: Option<&Authentication>, at: &str) -> Check {
    if let Some(a) = auth
        && !matches!(
            a.mode.as_str(),
            "disabled" | "required" | "test-always-fail"
        )
    {
        return Err(fail(
            format!("{at}.authentication.mode"),
            Some(a.mode.clone()),
            "mode is `disabled`, `required` or `test-always-fail`",
        ));
    }
    Ok(())
}

/// Validates a Kubernetes NetworkPolicy.
pub(crate) fn validate_network_policy(p: &NetworkPolicy) -> Check {
    if p.metadata.name.is_empty() {
        return Err(fail("metadata.name", None, "metadata.name is required"));
    }
    if !crate::meta::is_dns1123_subdomain(&p.metadata.name) {
        return Err(fail(
            "metadata.name",
            Some(p.metadata.name.clone()),
            "must be a DNS-1123 subdomain",
        ));
    }
    check_labels(&p.metadata.labels, "metadata.labels")?;
    check_selector(&p.spec.pod_selector, "spec.podSelector", false)?;
    let peers_of = |rule_at: String, peers: &[NetworkPolicyPeer]| -> Check {
        for (i, peer) in peers.iter().enumerate() {
            let at = format!("{rule_at}[{i}]");
            match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
                (None, None, None) => {
                    return Err(fail(
                        at,
                        None,
                        "a peer needs podSelector, namespaceSelector or ipBlock",
                    ));
                }
                (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                    return Err(fail(
                        format!("{at}.ipBlock"),
                        None,
                        "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
                    ));
                }
                _ => {}
            }
            if let Some(s) = &peer.pod_selector {
                check_selector(s, &format!("{at}.podSelector"), false)?;
            }
            if let Some(s) = &peer.namespace_selector {
                check_selector(s, &format!("{at}.namespaceSelector"), false)?;
            }
            if let Some(b) = &peer.ip_block {
                validate_cidr_except(&b.cidr, &b.except, &format!("{at}.ipBlock"))?;
            }
        }
        Ok(())
    };
    let ports_of = |at: String, ports: &[NetworkPolicyPort]| -> Check {
        for (i, p) in ports.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if let Some(Err(unsupported)) = p.protocol.map(Protocol::supported) {
                return Err(fail(
                    format!("{at}.protocol"),
                    Some(unsupported.0.to_string()),
                    unsupported.to_string(),
                ));
            }
            PortSpec::parse(p.port.as_ref(), p.end_port.map(i64::from))
                .map_err(|m| fail(format!("{at}.port"), None, m))?;
        }
        Ok(())
    };
    for (i, r) in p.spec.ingress.iter().flatten().enumerate() {
        peers_of(format!("spec.ingress[{i}].from"), &r.from)?;
        ports_of(format!("spec.ingress[{i}].ports"), &r.ports)?;
    }
    for (i, r) in p.spec.egress.iter().flatten().enumerate() {
        peers_of(format!("spec.egress[{i}].to"), &r.to)?;
        ports_of(format!("spec.egress[{i}].ports"), &r.ports)?;
    }
    Ok(())
}
