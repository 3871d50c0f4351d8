//! The policy semantics, table-driven. Every case cites the documentation
//! it is written from. Pods (see common.rs): default/tiefighter (empire),
//! default/xwing (alliance), default/deathstar (empire, named port http=80),
//! other/spy (alliance, http=8080), other/droid (empire); namespace `other`
//! is labelled team=rebels.

mod common;

use common::{cluster, verdict};
use myelin_policy::Verdict::{self, Allowed, Denied};

fn cnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n{spec}\n---\n"
    )
}

fn ccnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: {name}}}\n{spec}\n---\n"
    )
}

fn np(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}}}\n{spec}\n---\n"
    )
}

struct Case {
    name: &'static str,
    policies: String,
    flows: &'static [(&'static str, &'static str, &'static str, Verdict)],
}

const DEATHSTAR: &str = "  endpointSelector: {matchLabels: {class: deathstar}}\n";

fn cases() -> Vec<Case> {
    vec![
        // https://docs.cilium.io/en/stable/security/policy/intro/ : with no
        // policy, all communication is allowed.
        Case {
            name: "no policy allows everything",
            policies: String::new(),
            flows: &[("default/xwing", "default/deathstar", "80/TCP", Allowed), ("8.8.8.8", "default/deathstar", "22/TCP", Allowed)],
        },
        // https://docs.cilium.io/en/stable/gettingstarted/demo/#apply-an-l3-l4-policy
        Case {
            name: "star wars L3/L4 policy",
            policies: include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml").to_string(),
            flows: &[
                ("default/tiefighter", "default/deathstar", "80/TCP", Allowed),
                ("default/xwing", "default/deathstar", "80/TCP", Denied),
                ("default/tiefighter", "default/deathstar", "81/TCP", Denied),
                ("default/tiefighter", "default/deathstar", "80/UDP", Denied),
                // Egress of the deathstar is not selected: default deny is per direction.
                ("default/deathstar", "default/xwing", "80/TCP", Allowed),
                // A namespaced policy's peers are in its namespace.
                ("other/droid", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#ingress :
        // `ingress: [{}]` selects for default deny and allows nothing.
        Case {
            name: "star wars default deny",
            policies: include_str!("../../../examples/starwars/sw_deny_policy.yaml").to_string(),
            flows: &[
                ("default/tiefighter", "default/deathstar", "80/TCP", Denied),
                ("default/deathstar", "default/tiefighter", "80/TCP", Denied),
                ("default/tiefighter", "default/xwing", "80/TCP", Allowed),
            ],
        },
        Case {
            name: "default deny plus an allow",
            policies: format!(
                "{}---\n{}",
                include_str!("../../../examples/starwars/sw_deny_policy.yaml"),
                include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml")
            ),
            flows: &[
                ("default/tiefighter", "default/deathstar", "80/TCP", Allowed),
                ("default/xwing", "default/deathstar", "80/TCP", Denied),
                ("default/deathstar", "default/tiefighter", "80/TCP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#layer-4-examples :
        // toPorts without a peer field allows the port from every peer.
        Case {
            name: "L4-only rule",
            policies: cnp("l4", &format!("spec:\n{DEATHSTAR}  ingress:\n  - toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]")),
            flows: &[
                ("default/xwing", "default/deathstar", "80/TCP", Allowed),
                ("8.8.8.8", "default/deathstar", "80/TCP", Allowed),
                ("default/xwing", "default/deathstar", "81/TCP", Denied),
            ],
        },
        // An empty fromEndpoints list selects no endpoint (Cilium's
        // EndpointSelectorSlice: empty is not a wildcard).
        Case {
            name: "fromEndpoints empty list selects nobody",
            policies: cnp("empty", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEndpoints: []\n    toPorts: [{{ports: [{{port: \"80\"}}]}}]")),
            flows: &[("default/tiefighter", "default/deathstar", "80/TCP", Denied)],
        },
        // https://docs.cilium.io/en/stable/security/policy/kubernetes/#namespaces :
        // `{}` in a namespaced policy is every endpoint of the namespace.
        Case {
            name: "fromEndpoints {} in a namespaced policy",
            policies: cnp("ns", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEndpoints: [{{}}]")),
            flows: &[
                ("default/xwing", "default/deathstar", "443/TCP", Allowed),
                ("other/spy", "default/deathstar", "80/TCP", Denied),
                ("8.8.8.8", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // In a clusterwide policy `{}` is the wildcard selector (every identity).
        Case {
            name: "fromEndpoints {} in a clusterwide policy",
            policies: ccnp("all", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEndpoints: [{{}}]")),
            flows: &[("other/spy", "default/deathstar", "80/TCP", Allowed), ("8.8.8.8", "default/deathstar", "80/TCP", Allowed)],
        },
        // https://docs.cilium.io/en/stable/security/policy/kubernetes/#allow-all-endpoints-in-a-namespace-to-communicate :
        // naming k8s:io.kubernetes.pod.namespace reaches across namespaces.
        Case {
            name: "cross-namespace peer",
            policies: cnp("x", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": other, org: alliance}}}}]")),
            flows: &[
                ("other/spy", "default/deathstar", "80/TCP", Allowed),
                ("other/droid", "default/deathstar", "80/TCP", Denied),
                ("default/xwing", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#entities-based
        Case {
            name: "entities world",
            policies: cnp("w", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEntities: [world]")),
            flows: &[("8.8.8.8", "default/deathstar", "80/TCP", Allowed), ("default/tiefighter", "default/deathstar", "80/TCP", Denied)],
        },
        Case {
            name: "entities cluster",
            policies: cnp("c", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEntities: [cluster]")),
            flows: &[
                ("default/tiefighter", "default/deathstar", "80/TCP", Allowed),
                ("other/spy", "default/deathstar", "80/TCP", Allowed),
                ("8.8.8.8", "default/deathstar", "80/TCP", Denied),
            ],
        },
        Case {
            name: "entities all",
            policies: cnp("a", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEntities: [all]")),
            flows: &[("8.8.8.8", "default/deathstar", "80/TCP", Allowed), ("other/spy", "default/deathstar", "1/UDP", Allowed)],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#ip-cidr-based :
        // CIDR rules apply to addresses outside the cluster, not to pods.
        Case {
            name: "toCIDR",
            policies: cnp("cidr", &format!("spec:\n{DEATHSTAR}  egress:\n  - toCIDR: [8.8.8.0/24]")),
            flows: &[
                ("default/deathstar", "8.8.8.8", "53/UDP", Allowed),
                ("default/deathstar", "1.1.1.1", "53/UDP", Denied),
                ("default/deathstar", "default/tiefighter", "80/TCP", Denied),
            ],
        },
        Case {
            name: "toCIDRSet with except",
            policies: cnp("cidrset", &format!("spec:\n{DEATHSTAR}  egress:\n  - toCIDRSet: [{{cidr: 172.16.0.0/12, except: [172.20.0.0/16]}}]")),
            flows: &[
                ("default/deathstar", "172.16.1.1", "443/TCP", Allowed),
                ("default/deathstar", "172.20.1.1", "443/TCP", Denied),
                ("default/deathstar", "172.31.255.1", "443/TCP", Allowed),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#limit-ingress-egress-ports :
        // ports by number, by name and as ranges (endPort).
        Case {
            name: "named port on ingress",
            policies: cnp("named", &format!("spec:\n{DEATHSTAR}  ingress:\n  - toPorts: [{{ports: [{{port: http}}]}}]")),
            flows: &[("default/xwing", "default/deathstar", "80/TCP", Allowed), ("default/xwing", "default/deathstar", "8080/TCP", Denied)],
        },
        Case {
            name: "named port on egress resolves per peer",
            policies: ccnp("named-egress", "spec:\n  endpointSelector: {matchLabels: {class: tiefighter}}\n  egress:\n  - toEndpoints: [{matchLabels: {org: alliance}}]\n    toPorts: [{ports: [{port: http, protocol: TCP}]}]"),
            flows: &[
                ("default/tiefighter", "other/spy", "8080/TCP", Allowed),
                ("default/tiefighter", "other/spy", "80/TCP", Denied),
                ("default/tiefighter", "default/deathstar", "80/TCP", Denied),
            ],
        },
        Case {
            name: "port range",
            policies: cnp("range", &format!("spec:\n{DEATHSTAR}  ingress:\n  - toPorts: [{{ports: [{{port: \"8000\", endPort: 8100, protocol: TCP}}]}}]")),
            flows: &[
                ("default/xwing", "default/deathstar", "8000/TCP", Allowed),
                ("default/xwing", "default/deathstar", "8100/TCP", Allowed),
                ("default/xwing", "default/deathstar", "8101/TCP", Denied),
                ("default/xwing", "default/deathstar", "8050/UDP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#deny-policies :
        // deny wins over allow, whichever policy (or kind) the allow is in.
        Case {
            name: "CNP deny over NetworkPolicy allow",
            policies: np("allow-all", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  ingress: [{}]")
                + &cnp("deny-tie", &format!("spec:\n{DEATHSTAR}  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{class: tiefighter}}}}]")),
            flows: &[("default/tiefighter", "default/deathstar", "80/TCP", Denied), ("default/xwing", "default/deathstar", "80/TCP", Allowed)],
        },
        Case {
            name: "CCNP egress deny over CNP allow",
            policies: ccnp("no-dns", "spec:\n  endpointSelector: {}\n  egressDeny:\n  - toCIDR: [8.8.8.8/32]")
                + &cnp("world", "spec:\n  endpointSelector: {matchLabels: {class: tiefighter}}\n  egress:\n  - toEntities: [world]"),
            flows: &[
                ("default/tiefighter", "8.8.8.8", "53/UDP", Denied),
                ("default/tiefighter", "1.1.1.1", "53/UDP", Allowed),
                // A deny rule selects its endpoints for default deny too.
                ("default/xwing", "1.1.1.1", "53/UDP", Denied),
            ],
        },
        Case {
            name: "deny on a port leaves other ports",
            policies: cnp("p", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  - toPorts: [{{ports: [{{port: \"22\", protocol: TCP}}]}}]")),
            flows: &[("default/xwing", "default/deathstar", "22/TCP", Denied), ("default/xwing", "default/deathstar", "80/TCP", Allowed)],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#selective-policy-enforcement :
        // with enableDefaultDeny false a policy adds rules without default deny.
        Case {
            name: "enableDefaultDeny false",
            policies: cnp("soft", &format!("spec:\n{DEATHSTAR}  enableDefaultDeny: {{ingress: false}}\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{class: xwing}}}}]")),
            flows: &[("default/xwing", "default/deathstar", "80/TCP", Denied), ("default/tiefighter", "default/deathstar", "80/TCP", Allowed)],
        },
        Case {
            name: "enableDefaultDeny false does not weaken another policy's default deny",
            policies: cnp("soft", &format!("spec:\n{DEATHSTAR}  enableDefaultDeny: {{ingress: false}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{class: tiefighter}}}}]"))
                + include_str!("../../../examples/starwars/sw_deny_policy.yaml"),
            flows: &[("default/xwing", "default/deathstar", "80/TCP", Denied), ("default/tiefighter", "default/deathstar", "80/TCP", Allowed)],
        },
        Case {
            name: "egress-only policy leaves ingress open",
            policies: cnp("eg", &format!("spec:\n{DEATHSTAR}  egress:\n  - toEndpoints: [{{matchLabels: {{class: tiefighter}}}}]")),
            flows: &[
                ("default/xwing", "default/deathstar", "80/TCP", Allowed),
                ("default/deathstar", "default/tiefighter", "80/TCP", Allowed),
                ("default/deathstar", "default/xwing", "80/TCP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#icmp-icmpv6
        Case {
            name: "icmps",
            policies: cnp("icmp", &format!("spec:\n{DEATHSTAR}  ingress:\n  - fromEndpoints: [{{matchLabels: {{class: tiefighter}}}}]\n    icmps: [{{fields: [{{type: EchoRequest, family: IPv4}}]}}]")),
            flows: &[
                ("default/tiefighter", "default/deathstar", "8/ICMP", Allowed),
                ("default/tiefighter", "default/deathstar", "0/ICMP", Denied),
                ("default/tiefighter", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // https://docs.cilium.io/en/stable/security/policy/language/#services-based
        Case {
            name: "toServices by name",
            policies: "apiVersion: v1\nkind: Service\nmetadata: {name: deathstar}\nspec:\n  ports: [{port: 80}]\n  selector: {class: deathstar}\n---\n".to_string()
                + &cnp("svc", "spec:\n  endpointSelector: {matchLabels: {class: tiefighter}}\n  egress:\n  - toServices: [{k8sService: {serviceName: deathstar}}]"),
            flows: &[("default/tiefighter", "default/deathstar", "80/TCP", Allowed), ("default/tiefighter", "default/xwing", "80/TCP", Denied)],
        },
        // https://kubernetes.io/docs/concepts/services-networking/network-policies/#default-deny-all-ingress-traffic
        Case {
            name: "NetworkPolicy empty podSelector denies all ingress in its namespace",
            policies: np("deny", "spec:\n  podSelector: {}\n  policyTypes: [Ingress]"),
            flows: &[
                ("default/tiefighter", "default/xwing", "80/TCP", Denied),
                ("default/tiefighter", "other/spy", "80/TCP", Allowed),
                ("default/xwing", "8.8.8.8", "443/TCP", Allowed),
            ],
        },
        // https://kubernetes.io/docs/concepts/services-networking/network-policies/#allow-all-ingress-traffic
        Case {
            name: "NetworkPolicy allow all ingress",
            policies: np("deny", "spec:\n  podSelector: {}\n  policyTypes: [Ingress]") + &np("all", "spec:\n  podSelector: {}\n  ingress: [{}]"),
            flows: &[("other/spy", "default/xwing", "80/TCP", Allowed), ("8.8.8.8", "default/xwing", "80/TCP", Allowed)],
        },
        // https://kubernetes.io/docs/concepts/services-networking/network-policies/#behavior-of-to-and-from-selectors :
        // namespaceSelector and podSelector in one peer: both must match.
        Case {
            name: "NetworkPolicy namespaceSelector+podSelector in one peer",
            policies: np("and", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: rebels}}\n      podSelector: {matchLabels: {org: empire}}"),
            flows: &[
                ("other/droid", "default/deathstar", "80/TCP", Allowed),
                ("other/spy", "default/deathstar", "80/TCP", Denied),
                ("default/tiefighter", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // ... and as two peers: either matches.
        Case {
            name: "NetworkPolicy namespaceSelector and podSelector as two peers",
            policies: np("or", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: rebels}}\n    - podSelector: {matchLabels: {org: empire}}"),
            flows: &[
                ("other/droid", "default/deathstar", "80/TCP", Allowed),
                ("other/spy", "default/deathstar", "80/TCP", Allowed),
                ("default/tiefighter", "default/deathstar", "80/TCP", Allowed),
                ("default/xwing", "default/deathstar", "80/TCP", Denied),
            ],
        },
        // A podSelector alone selects pods of the policy's namespace.
        Case {
            name: "NetworkPolicy podSelector peer stays in the namespace",
            policies: np("pods", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {org: empire}}}]"),
            flows: &[("other/droid", "default/deathstar", "80/TCP", Denied), ("default/tiefighter", "default/deathstar", "80/TCP", Allowed)],
        },
        // https://kubernetes.io/docs/concepts/services-networking/network-policies/#networkpolicy-resource (ipBlock)
        Case {
            name: "NetworkPolicy ipBlock with except",
            policies: np("ip", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.20.0.0/16]}}]\n    ports: [{port: 443}]"),
            flows: &[
                ("default/deathstar", "172.16.0.9", "443/TCP", Allowed),
                ("default/deathstar", "172.20.0.9", "443/TCP", Denied),
                ("default/deathstar", "172.16.0.9", "443/UDP", Denied),
                ("default/deathstar", "172.16.0.9", "80/TCP", Denied),
            ],
        },
        // policyTypes governs: ingress rules of an Egress-only policy have no effect.
        Case {
            name: "NetworkPolicy policyTypes Egress only",
            policies: np("eg", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  policyTypes: [Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {class: tiefighter}}}]"),
            flows: &[("default/xwing", "default/deathstar", "80/TCP", Allowed), ("default/deathstar", "default/xwing", "80/TCP", Denied)],
        },
        // Without policyTypes, Egress is isolated when there are egress rules.
        Case {
            name: "NetworkPolicy default policyTypes",
            policies: np("both", "spec:\n  podSelector: {matchLabels: {class: deathstar}}\n  egress:\n  - to: [{podSelector: {matchLabels: {class: tiefighter}}}]"),
            flows: &[
                ("default/xwing", "default/deathstar", "80/TCP", Denied),
                ("default/deathstar", "default/tiefighter", "80/TCP", Allowed),
                ("default/deathstar", "default/xwing", "80/TCP", Denied),
            ],
        },
    ]
}

#[test]
fn semantics_table() {
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let engine = cluster(&case.policies);
        for (from, to, port, expected) in case.flows {
            let got = verdict(&engine, from, to, port);
            if got != *expected {
                failures.push(format!(
                    "{}: {from} -> {to} {port}: expected {expected:?}, got {got:?}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 30);
}
