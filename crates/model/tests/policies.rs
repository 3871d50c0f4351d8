//! Parsing policy manifests: lenient where Cilium is, strict and located
//! where a rule would otherwise mean less than its author wrote.

use myelin_model::policy::{L4Proto, PortSpec};
use myelin_model::{Resource, parse_str};

fn one(text: &str) -> Resource {
    let parsed = parse_str("p.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.documents.len(), 1);
    parsed.documents[0].resource.clone()
}

fn error(text: &str) -> myelin_model::ManifestError {
    let parsed = parse_str("p.yaml", text);
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.documents);
    parsed.errors[0].clone()
}

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n";

#[test]
fn starwars_policies_parse() {
    for text in [
        include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml"),
        include_str!("../../../examples/starwars/sw_l3_l4_l7_policy.yaml"),
        include_str!("../../../examples/starwars/sw_deny_policy.yaml"),
    ] {
        let Resource::CiliumNetworkPolicy(p) = one(text) else {
            panic!("a CiliumNetworkPolicy")
        };
        assert_eq!(p.rules().len(), 1);
    }
}

#[test]
fn ports_as_numbers_or_strings_and_protocols_in_any_case() {
    let r = one(&format!(
        "{CNP}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports:\n      - {{port: 80, protocol: tcp}}\n      - {{port: \"8080\", endPort: 8090}}\n      - {{port: http}}\n"
    ));
    let Resource::CiliumNetworkPolicy(p) = r else {
        panic!()
    };
    let ports = &p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
        .to_ports
        .as_ref()
        .unwrap()[0]
        .ports;
    assert_eq!(ports[0].protocol, Some(L4Proto::Tcp));
    assert_eq!(
        PortSpec::parse(ports[1].port.as_ref(), Some(8090)),
        Ok(PortSpec::Range(8080, 8090))
    );
    assert_eq!(
        PortSpec::parse(ports[2].port.as_ref(), None),
        Ok(PortSpec::Named("http".into()))
    );
}

#[test]
fn rejections_are_named_and_located() {
    let cases = [
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: SCTP}]\n",
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "SCTP",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"9092\"}]\n      rules: {kafka: [{topic: t}]}\n",
            "spec.ingress[0].toPorts[0].rules.kafka",
            "Kafka",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\"}]\n      rules: {http: [{path: \"/v1/(\"}]}\n",
            "spec.ingress[0].toPorts[0].rules.http[0].path",
            "regular expression",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\"}]\n      rules: {http: [{headerMatches: [{name: X, secret: {name: s}}]}]}\n",
            "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret",
            "secrets",
        ),
        (
            "specs:\n- endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: \"bad name\"}]\n",
            "specs[0].egress[0].toFQDNs[0].matchName",
            "DNS name",
        ),
        (
            "spec:\n  endpointSelector: {}\n  egress:\n  - authentication: {mode: sometimes}\n",
            "spec.egress[0].authentication.mode",
            "required",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n",
            "spec.ingress[0].fromCIDRSet[0].except[0]",
            "inside",
        ),
        (
            "spec:\n  nodeSelector: {}\n",
            "spec.nodeSelector",
            "not supported yet",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [galaxy]\n",
            "spec.ingress[0].fromEntities[0]",
            "unknown variant",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - fromRequires: [{}]\n",
            "spec.ingress[0].fromRequires",
            "deprecated",
        ),
        (
            "spec:\n  endpointSelector: {}\n  egress:\n  - toNodes: [{}]\n",
            "spec.egress[0].toNodes",
            "node identities",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingressDeny:\n  - fromGroups: [{}]\n",
            "spec.ingressDeny[0].fromGroups",
            "cloud provider groups",
        ),
        (
            "spec:\n  endpointSelector: {}\n  egressDeny:\n  - toRequires: [{}]\n",
            "spec.egressDeny[0].toRequires",
            "use toEndpoints",
        ),
    ];

    for (body, field, message) in cases {
        let e = error(&format!("{CNP}{body}"));
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

#[test]
fn one_bad_policy_is_rejected_alone() {
    let text = format!(
        "{CNP}spec: {{endpointSelector: {{}}, ingress: [{{fromCIDR: [nonsense]}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
    );
    let parsed = parse_str("two.yaml", &text);
    assert_eq!(parsed.documents.len(), 1);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].field, "spec.ingress[0].fromCIDR[0]");
    assert_eq!(
        parsed.documents[0].resource.key().to_string(),
        "NetworkPolicy default/np"
    );
}

#[test]
fn network_policy_peers() {
    let e = error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
    );
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock");
}
