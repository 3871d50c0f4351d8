//! Services, labels and selectors are validated as the Kubernetes API server validates them;
//! every refusal names the field path and the value.

use myelin_model::{ManifestError, parse_str};

fn refusal(text: &str) -> ManifestError {
    let parsed = parse_str("k.yaml", text);
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.documents);
    parsed.errors[0].clone()
}

fn accepted(text: &str) {
    let parsed = parse_str("k.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.documents.len(), 1);
}

/// The error's field path and value.
fn located(e: &ManifestError) -> (&str, Option<&str>) {
    (e.field.as_str(), e.value.as_deref())
}

fn service(ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  selector: {{app: a}}\n  ports: {ports}\n"
    )
}

#[test]
fn service_ports_follow_the_api_server_rules() {
    accepted(&service(
        "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: dns-udp}, {name: dns-tcp, port: 53, targetPort: 0}]",
    ));
    accepted(&service("[{port: 80}]"));
    let cases = [
        ("[{port: 0}]", "spec.ports[0].port", Some("0"), "1-65535"),
        (
            "[{name: a, port: 80}, {port: 81}]",
            "spec.ports[1].name",
            None,
            "needs a name",
        ),
        (
            "[{name: a, port: 80}, {name: '', port: 81}]",
            "spec.ports[1].name",
            None,
            "needs a name",
        ),
        (
            "[{name: Web, port: 80}]",
            "spec.ports[0].name",
            Some("\"Web\""),
            "DNS-1123 label",
        ),
        (
            "[{name: web_1, port: 80}]",
            "spec.ports[0].name",
            Some("\"web_1\""),
            "DNS-1123 label",
        ),
        (
            "[{name: a, port: 80}, {name: a, port: 81}]",
            "spec.ports[1].name",
            Some("\"a\""),
            "spec.ports[0] has it too",
        ),
        (
            "[{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]",
            "spec.ports[1]",
            Some("80/TCP"),
            "spec.ports[0] has the same port and protocol",
        ),
        (
            "[{port: 80, targetPort: 70000}]",
            "spec.ports[0].targetPort",
            Some("70000"),
            "1-65535",
        ),
        (
            "[{port: 80, targetPort: -1}]",
            "spec.ports[0].targetPort",
            Some("-1"),
            "1-65535",
        ),
        (
            "[{port: 80, targetPort: \"8080\"}]",
            "spec.ports[0].targetPort",
            Some("\"8080\""),
            "without quotes",
        ),
        (
            "[{port: 80, targetPort: http--alt}]",
            "spec.ports[0].targetPort",
            Some("\"http--alt\""),
            "not a valid port name",
        ),
        (
            "[{port: 80, targetPort: a-very-long-port-name}]",
            "spec.ports[0].targetPort",
            Some("\"a-very-long-port-name\""),
            "at most 15",
        ),
    ];
    for (ports, field, value, message) in cases {
        let e = refusal(&service(ports));
        assert_eq!(located(&e), (field, value), "{ports}: {e}");
        assert!(e.message.contains(message), "{ports}: {e}");
    }
}

#[test]
fn a_service_with_100000_ports_is_refused() {
    // Unique names need 65,536 ports or more to repeat a (port, protocol) pair, which the
    // rules refuse; 100,000 ports are over the object limit even in flow style.
    let ports: Vec<String> = (0..100_000)
        .map(|i| format!("{{name: p{i}, port: {}}}", i % 65_535 + 1))
        .collect();
    let e = refusal(&service(&format!("[{}]", ports.join(","))));
    assert_eq!((e.document, e.field.as_str()), (0, ""));
    assert!(e.message.contains("over the limit of 1572864 bytes"), "{e}");
}

#[test]
fn label_values_are_kubernetes_label_values_everywhere() {
    let long = "v".repeat(64);
    let ns = |labels: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: n, labels: {labels}}}\n")
    };
    accepted(&ns("{app: x.y_z-1, empty: ''}"));
    for (labels, field, value) in [
        ("{app: \"é\"}", "metadata.labels.app", "\"é\""),
        ("{app: -x}", "metadata.labels.app", "\"-x\""),
        ("{app: 'a b'}", "metadata.labels.app", "\"a b\""),
        (
            &format!("{{app: {long}}}"),
            "metadata.labels.app",
            &format!("{long:?}"),
        ),
    ] {
        let e = refusal(&ns(labels));
        assert_eq!(located(&e), (field, Some(value)), "{e}");
        assert!(e.message.contains("not a valid label value"), "{e}");
    }

    let cnp = |selector: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n  - fromEndpoints: [{selector}]\n"
        )
    };
    let e = refusal(&cnp("{matchLabels: {app: \"é\"}}"));
    assert_eq!(
        located(&e),
        (
            "spec.ingress[0].fromEndpoints[0].matchLabels.app",
            Some("\"é\"")
        )
    );
    let e = refusal(&cnp(
        "{matchExpressions: [{key: app, operator: In, values: [ok, \"not ok\"]}]}",
    ));
    assert_eq!(
        located(&e),
        (
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values[1]",
            Some("\"not ok\"")
        )
    );
    accepted(&cnp("{matchLabels: {k8s:app: a, reserved:host: ''}}"));

    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {matchLabels: {app: ünicode}}\n";
    let e = refusal(np);
    assert_eq!(
        located(&e),
        ("spec.podSelector.matchLabels.app", Some("\"ünicode\""))
    );

    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchExpressions: [{key: app, operator: In, values: [\"a/b\"]}]}\n  template:\n    metadata: {labels: {app: a}}\n    spec: {containers: [{name: c, image: x}]}\n";
    let e = refusal(deployment);
    assert_eq!(
        located(&e),
        (
            "spec.selector.matchExpressions[0].values[0]",
            Some("\"a/b\"")
        )
    );

    let e = refusal(&service("[{port: 80}]").replace("{app: a}", "{app: \"a b\"}"));
    assert_eq!(located(&e), ("spec.selector.app", Some("\"a b\"")));
}

#[test]
fn label_keys_are_qualified_names_everywhere() {
    let ns = |labels: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: n, labels: {labels}}}\n")
    };
    let prefix = format!("{}.io", "a".repeat(250));
    accepted(&ns("{app.kubernetes.io/name: x, A_b.c: y}"));
    let long_name = "n".repeat(64);
    for key in [
        "/org".to_string(),
        "a/b/c".to_string(),
        "Example.com/org".to_string(),
        "-org".to_string(),
        long_name.clone(),
        format!("{prefix}/org"),
    ] {
        let e = refusal(&ns(&format!("{{{key:?}: x}}")));
        assert_eq!(
            located(&e),
            (
                format!("metadata.labels.{key}").as_str(),
                Some(format!("{key:?}").as_str())
            ),
            "{e}"
        );
        assert!(e.message.contains("not a valid label key"), "{e}");
    }

    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, labels: {\"bad key\": x}}\nspec:\n  endpointSelector: {}\n";
    let e = refusal(cnp);
    assert_eq!(
        located(&e),
        ("metadata.labels.bad key", Some("\"bad key\""))
    );
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {matchExpressions: [{key: \"k8s:app\", operator: Exists}]}\n";
    let e = refusal(np);
    assert_eq!(
        located(&e),
        (
            "spec.podSelector.matchExpressions[0].key",
            Some("\"k8s:app\"")
        )
    );
}
