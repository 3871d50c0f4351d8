//! Hubble's filters that were silently ignored or misread: one table per
//! filter, the expected matches written from Hubble's documented semantics,
//! over a fixed set of flows.

mod common;

use common::*;
use myelin_observe::cel_filter::CelError;
use myelin_observe::proto::flow::flow_filter::Experimental;
use myelin_observe::proto::flow::{Flow, FlowFilter, Ip, NetworkInterface, Policy, Service};
use myelin_observe::{FilterError, FilterSet};

/// 0: tiefighter verdict on node1 (cluster-less name), labels zone=a, eth0,
/// cluster c1 -> c2, to `api.cilium.io`/`cilium.io` and service
/// default/deathstar; 1: xwing drop on `mesh/node2`, zone=b, lxc1, from
/// `www.example.com`; 2: landing request in namespace empire, no interface,
/// encrypted, from service empire/empire-api.
fn flows() -> Vec<Flow> {
    let mut a = tiefighter_verdict();
    a.node_name = "node1".into();
    a.node_labels = vec!["zone=a".into(), "kubernetes.io/os=linux".into()];
    a.interface = Some(NetworkInterface {
        index: 2,
        name: "eth0".into(),
    });
    a.source.as_mut().expect("source").cluster_name = "c1".into();
    a.destination.as_mut().expect("destination").cluster_name = "c2".into();
    a.destination_names = vec!["api.cilium.io".into(), "cilium.io".into()];
    a.ingress_allowed_by = vec![Policy {
        name: "rule1".into(),
        namespace: "default".into(),
        kind: "CiliumNetworkPolicy".into(),
        ..Default::default()
    }];
    a.destination_service = Some(Service {
        name: "deathstar".into(),
        namespace: "default".into(),
    });

    let mut b = xwing_drop();
    b.node_name = "mesh/node2".into();
    b.node_labels = vec!["zone=b".into()];
    b.interface = Some(NetworkInterface {
        index: 7,
        name: "lxc1".into(),
    });
    b.source.as_mut().expect("source").cluster_name = "c2".into();
    b.source_names = vec!["www.example.com".into()];

    let mut c = landing_request();
    c.node_name = "node3.example.com".into();
    c.source.as_mut().expect("source").namespace = "empire".into();
    c.destination.as_mut().expect("destination").namespace = "empire".into();
    c.source_service = Some(Service {
        name: "empire-api".into(),
        namespace: "empire".into(),
    });
    let ip = c.ip.get_or_insert_with(Ip::default);
    ip.encrypted = true;
    vec![a, b, c]
}

fn matching(filter: &FlowFilter) -> Result<Vec<usize>, FilterError> {
    let set = FilterSet::new(std::slice::from_ref(filter), &[])?;
    Ok(flows()
        .iter()
        .enumerate()
        .filter(|(_, f)| set.matches(f))
        .map(|(i, _)| i)
        .collect())
}

fn check(table: &[(&str, FlowFilter, &[usize])]) {
    for (name, filter, want) in table {
        let got = matching(filter).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert_eq!(&got, want, "{name}");
    }
}

fn ff(f: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
    let mut filter = FlowFilter::default();
    f(&mut filter);
    filter
}

#[test]
fn all_namespaces() {
    check(&[
        // -A / --pod /: any namespace, any pod.
        (
            "--pod / (source)",
            ff(|f| f.source_pod = vec!["/".into()]),
            &[0, 1, 2],
        ),
        (
            "--to-all-namespaces",
            ff(|f| f.destination_pod = vec!["/".into()]),
            &[0, 1, 2],
        ),
        // Any namespace, pod prefix.
        (
            "--pod /tie",
            ff(|f| f.source_pod = vec!["/tie".into()]),
            &[0, 2],
        ),
        (
            "--namespace empire",
            ff(|f| f.source_pod = vec!["empire/".into()]),
            &[2],
        ),
        (
            "--from-service / (any service of any namespace)",
            ff(|f| f.source_service = vec!["/".into()]),
            &[2],
        ),
    ]);
}

#[test]
fn node_name() {
    check(&[
        (
            "bare name matches in any cluster",
            ff(|f| f.node_name = vec!["node1".into()]),
            &[0],
        ),
        (
            "default/ prefix for a bare node name",
            ff(|f| f.node_name = vec!["default/node1".into()]),
            &[0],
        ),
        (
            "cluster/node",
            ff(|f| f.node_name = vec!["mesh/node2".into()]),
            &[1],
        ),
        (
            "wrong cluster",
            ff(|f| f.node_name = vec!["other/node2".into()]),
            &[],
        ),
        (
            "cluster/ is every node of it",
            ff(|f| f.node_name = vec!["default/".into()]),
            &[0, 2],
        ),
        (
            "* spans dots",
            ff(|f| f.node_name = vec!["node3*".into()]),
            &[2],
        ),
        (
            "* in one component",
            ff(|f| f.node_name = vec!["node*".into()]),
            &[0, 1, 2],
        ),
    ]);
    assert!(matches!(
        matching(&ff(|f| f.node_name = vec!["a/b/c".into()])),
        Err(FilterError::Pattern { .. })
    ));
}

#[test]
fn node_labels() {
    check(&[
        (
            "--node-label zone=a",
            ff(|f| f.node_labels = vec!["zone=a".into()]),
            &[0],
        ),
        (
            "--node-label zone in (a,b)",
            ff(|f| f.node_labels = vec!["zone in (a,b)".into()]),
            &[0, 1],
        ),
        (
            "--node-label !zone",
            ff(|f| f.node_labels = vec!["!zone".into()]),
            &[2],
        ),
        (
            "two selectors are ORed",
            ff(|f| f.node_labels = vec!["zone=b".into(), "kubernetes.io/os=linux".into()]),
            &[0, 1],
        ),
    ]);
}

#[test]
fn cluster() {
    check(&[
        (
            "--from-cluster c1",
            ff(|f| f.source_cluster_name = vec!["c1".into()]),
            &[0],
        ),
        (
            "--to-cluster c2",
            ff(|f| f.destination_cluster_name = vec!["c2".into()]),
            &[0],
        ),
        (
            "--from-cluster c2",
            ff(|f| f.source_cluster_name = vec!["c2".into()]),
            &[1],
        ),
        (
            "no such cluster",
            ff(|f| f.source_cluster_name = vec!["c9".into()]),
            &[],
        ),
        (
            "a name without '*' is exact, not a prefix",
            ff(|f| f.source_cluster_name = vec!["c".into()]),
            &[],
        ),
        (
            "--from-cluster 'c*' (a pattern, as hubble's help shows)",
            ff(|f| f.source_cluster_name = vec!["c*".into()]),
            &[0, 1],
        ),
        (
            "--to-cluster '*2'",
            ff(|f| f.destination_cluster_name = vec!["*2".into()]),
            &[0],
        ),
        (
            "'*' matches every endpoint in a cluster, none without one",
            ff(|f| f.destination_cluster_name = vec!["*".into()]),
            &[0],
        ),
        (
            "--from-cluster 'prod-*'",
            ff(|f| f.source_cluster_name = vec!["prod-*".into()]),
            &[],
        ),
    ]);
    assert!(matching(&ff(|f| f.source_cluster_name = vec![String::new()])).is_err());
}

#[test]
fn interface() {
    let iface = |index, name: &str| NetworkInterface {
        index,
        name: name.into(),
    };
    check(&[
        (
            "--interface eth0",
            ff(|f| f.interface = vec![iface(0, "eth0")]),
            &[0],
        ),
        ("index only", ff(|f| f.interface = vec![iface(7, "")]), &[1]),
        (
            "index and name must both match",
            ff(|f| f.interface = vec![iface(7, "eth0")]),
            &[],
        ),
        (
            "any interface",
            ff(|f| f.interface = vec![iface(0, "")]),
            &[0, 1],
        ),
    ]);
}

#[test]
fn encrypted() {
    check(&[
        ("--encrypted", ff(|f| f.encrypted = vec![true]), &[2]),
        ("--unencrypted", ff(|f| f.encrypted = vec![false]), &[0, 1]),
    ]);
}

fn cel(expressions: &[&str]) -> FlowFilter {
    ff(|f| {
        f.experimental = Some(Experimental {
            cel_expression: expressions.iter().map(|e| (*e).to_string()).collect(),
        });
    })
}

#[test]
fn cel_expression() {
    check(&[
        (
            "pod name",
            cel(&["_flow.source.pod_name.startsWith('xwing')"]),
            &[1],
        ),
        (
            "verdict number (DROPPED = 2)",
            cel(&["_flow.verdict == 2"]),
            &[1],
        ),
        (
            "nested unset message reads as default",
            cel(&["_flow.l7.http.method == 'POST'"]),
            &[2],
        ),
        (
            "node labels list",
            cel(&["'zone=b' in _flow.node_labels"]),
            &[1],
        ),
        (
            "the policies that allowed a flow",
            cel(&[
                "_flow.ingress_allowed_by.exists(p, p.name == 'rule1' && p.kind == 'CiliumNetworkPolicy')",
            ]),
            &[0],
        ),
        (
            "expressions are ORed",
            cel(&["_flow.verdict == 2", "_flow.IP.encrypted"]),
            &[1, 2],
        ),
    ]);
    for bad in ["_flow.no_such_field == 1", "_flow.node_name", "((("] {
        assert!(
            matches!(matching(&cel(&[bad])), Err(FilterError::Cel(_))),
            "{bad} should be refused"
        );
    }
    // has() on the flow would be true for unset messages here (false in
    // Hubble): refused, naming the field, wherever it sits.
    for (presence, field) in [
        ("has(_flow.l7)", "_flow.l7"),
        ("_flow.verdict == 2 || has(_flow.l7.http)", "_flow.l7.http"),
        (
            "_flow.node_labels.exists(l, l == 'zone=a' && has(_flow.IP.source))",
            "_flow.IP.source",
        ),
    ] {
        match matching(&cel(&[presence])) {
            Err(FilterError::Cel(CelError::Presence { field: got, .. })) => {
                assert_eq!(got, field, "{presence}");
            }
            other => panic!("{presence}: {other:?}"),
        }
    }
    check(&[(
        "has() on a map of the expression's own is CEL's",
        cel(&["has({'a': 1}.a) && _flow.verdict == 2"]),
        &[1],
    )]);
}

#[test]
fn fields_the_agent_cannot_fill_are_refused_by_name() {
    for (filter, field) in [
        (
            ff(|f| f.source_ip_xlated = vec!["10.0.0.1".into()]),
            "source_ip_xlated",
        ),
        (ff(|f| f.ip_trace_id = vec![7]), "ip_trace_id"),
    ] {
        let err = matching(&filter).expect_err("refused");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn fqdn() {
    check(&[
        (
            "--to-fqdn '*.cilium.io'",
            ff(|f| f.destination_fqdn = vec!["*.cilium.io".into()]),
            &[0],
        ),
        (
            "--to-fqdn cilium.io (whole name)",
            ff(|f| f.destination_fqdn = vec!["cilium.io".into()]),
            &[0],
        ),
        (
            "--to-fqdn cilium (not a substring)",
            ff(|f| f.destination_fqdn = vec!["cilium".into()]),
            &[],
        ),
        (
            "upper case and one trailing dot, as Hubble canonicalises",
            ff(|f| f.destination_fqdn = vec![" API.Cilium.IO. ".into()]),
            &[0],
        ),
        (
            "'*' spans dots",
            ff(|f| f.source_fqdn = vec!["www.*".into()]),
            &[1],
        ),
        (
            "--from-fqdn '*.cilium.io' (names of the other side)",
            ff(|f| f.source_fqdn = vec!["*.cilium.io".into()]),
            &[],
        ),
        (
            "two patterns are ORed",
            ff(|f| f.source_fqdn = vec!["*.example.com".into(), "nothing.io".into()]),
            &[1],
        ),
    ]);
    for bad in ["", ".", "cilium.io..", "cilium.io/x", "a b", "ci?ium.io"] {
        assert!(
            matching(&ff(|f| f.destination_fqdn = vec![bad.into()])).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn service() {
    check(&[
        (
            "--to-service default/deathstar",
            ff(|f| f.destination_service = vec!["default/deathstar".into()]),
            &[0],
        ),
        (
            "a name prefix",
            ff(|f| f.destination_service = vec!["default/death".into()]),
            &[0],
        ),
        (
            "namespace exact",
            ff(|f| f.destination_service = vec!["empire/deathstar".into()]),
            &[],
        ),
        (
            "--from-service empire/ (the whole namespace)",
            ff(|f| f.source_service = vec!["empire/".into()]),
            &[2],
        ),
        (
            "--from-service -A: any namespace",
            ff(|f| f.source_service = vec!["/empire".into()]),
            &[2],
        ),
        (
            "flows without a service never match",
            ff(|f| f.source_service = vec!["default/".into()]),
            &[],
        ),
    ]);
}
