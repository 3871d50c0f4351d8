//! Parsing real manifests, and bad ones with located errors.

use myelin_model::{Resource, load_path, parse_str};

const STARWARS: &str = include_str!("../../../examples/starwars/http-sw-app.yaml");

#[test]
fn starwars_app_parses() {
    let parsed = parse_str("http-sw-app.yaml", STARWARS);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let kinds: Vec<_> = parsed.documents.iter().map(|d| d.resource.kind()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "Pod", "Pod"]);
    let Resource::Deployment(d) = &parsed.documents[1].resource else {
        panic!("second document is the deathstar Deployment");
    };
    assert_eq!(d.spec.replicas, 2);
    assert_eq!(d.spec.template.metadata.labels["class"], "deathstar");
    assert_eq!(
        parsed.documents[2].resource.key().to_string(),
        "Pod default/tiefighter"
    );
    assert_eq!(parsed.documents[3].source.document, 3);
}

fn only_error(text: &str) -> myelin_model::ManifestError {
    let parsed = parse_str("bad.yaml", text);
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    parsed.errors[0].clone()
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let e = only_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: 80\n    targetPrt: 8080\n",
    );
    assert_eq!(e.field, "spec.ports[0].targetPrt");
    assert!(e.message.contains("unknown field `targetPrt`"), "{e}");
    assert_eq!(e.document, 0);
    assert!(
        e.to_string()
            .starts_with("bad.yaml: document 0: field `spec.ports[0].targetPrt`"),
        "{e}"
    );
}

#[test]
fn wrong_type_shows_value() {
    let e = only_error(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n",
    );
    assert_eq!(e.field, "spec.ports[0].port");
    assert_eq!(e.value.as_deref(), Some("\"eighty\""));
}

#[test]
fn unknown_kind_and_bad_api_version() {
    let e = only_error("apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n");
    assert_eq!(e.field, "kind");
    assert_eq!(e.value.as_deref(), Some("v1/Gizmo"));
    let e = only_error("apiVersion: v1\nkind: Deployment\nmetadata: {name: g}\n");
    assert_eq!(e.field, "apiVersion");
    assert!(e.message.contains("apps/v1"));
}

#[test]
fn semantic_checks() {
    let e = only_error(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: c}}\n    spec: {containers: [{name: c, image: x}]}\n",
    );
    assert_eq!(e.field, "spec.selector");
    let e = only_error(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: x}]}\n",
    );
    assert_eq!(e.field, "metadata.name");
    let e = only_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: NodePort, ports: [{port: 80}]}\n",
    );
    assert_eq!(e.field, "spec.type");
    let parsed = myelin_model::parse_str(
        "s.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {sessionAffinity: None, ports: [{port: 80}]}\n",
    );
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let e = only_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n");
    assert_eq!(e.field, "spec.containers");
}

/// The Service of `spec` (a flow mapping's inside) in `affinity.yaml`, or its one error.
fn service_spec(
    spec: &str,
) -> Result<myelin_model::workload::ServiceSpec, myelin_model::ManifestError> {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{ports: [{{port: 80}}], {spec}}}\n"
    );
    let mut parsed = parse_str("affinity.yaml", &text);
    if let Some(e) = parsed.errors.pop() {
        return Err(e);
    }
    match parsed.documents.pop().map(|d| d.resource) {
        Some(Resource::Service(s)) => Ok(s.spec),
        other => panic!("a Service, not {other:?}"),
    }
}

#[test]
fn client_ip_session_affinity_has_a_timeout_and_bad_ones_are_located() {
    let spec = service_spec("sessionAffinity: ClientIP").expect("ClientIP");
    assert_eq!(
        spec.client_ip_affinity_timeout(),
        Some(10_800),
        "the default"
    );
    let spec = service_spec(
        "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}",
    )
    .expect("with a timeout");
    assert_eq!(spec.client_ip_affinity_timeout(), Some(60));
    let spec = service_spec(
        "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}",
    )
    .expect("the longest");
    assert_eq!(spec.client_ip_affinity_timeout(), Some(86_400));
    for none in ["sessionAffinity: None", "type: ClusterIP"] {
        let spec = service_spec(none).expect("no affinity");
        assert_eq!(spec.client_ip_affinity_timeout(), None, "{none}");
    }

    for bad in ["0", "-5", "86401"] {
        let e = service_spec(&format!(
            "sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {bad}}}}}"
        ))
        .expect_err("out of range");
        assert_eq!(e.file, "affinity.yaml");
        assert_eq!(
            e.field,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        );
        assert_eq!(e.value.as_deref(), Some(bad));
        assert!(e.message.contains("1-86400"), "{}", e.message);
    }
    let e = service_spec("sessionAffinity: Cookie").expect_err("unknown affinity");
    assert_eq!(
        (e.field.as_str(), e.value.as_deref()),
        ("spec.sessionAffinity", Some("Cookie"))
    );
    let e = service_spec("sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}")
        .expect_err("a config without ClientIP");
    assert_eq!(e.field, "spec.sessionAffinityConfig");
    let e =
        service_spec("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeout: 60}}")
            .expect_err("an unknown field");
    assert!(e.message.contains("timeout"), "{e}");
}

#[test]
fn bad_yaml_is_located() {
    let parsed = parse_str("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n");
    assert_eq!(parsed.errors.len(), 1);
    assert!(parsed.errors[0].message.contains("not valid YAML"));
}

#[test]
fn a_syntax_error_ends_only_its_document_and_is_located_in_the_file() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
    let parsed = parse_str("x.yaml", text);
    let names: Vec<_> = parsed
        .documents
        .iter()
        .map(|d| (d.source.document, d.resource.key().name))
        .collect();
    assert_eq!(names, [(0, "a".to_string()), (2, "c".to_string())]);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(
        parsed.errors[0].to_string(),
        "x.yaml: document 1: not valid YAML: unclosed bracket '{' at line 7 column 11"
    );
}

#[test]
fn duplicate_keys_are_refused_where_they_repeat() {
    let e = only_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n  ports: [{port: 81}]\n",
    );
    assert_eq!(
        e.message,
        "not valid YAML: duplicate mapping key `ports` is not allowed here at line 6 column 3"
    );
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_are_read() {
    let text = "\u{feff}apiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: a}\r\n---\r\napiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: b}\r\n";
    let parsed = parse_str("x.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.documents.len(), 2);
}

#[test]
fn good_documents_survive_a_bad_neighbour() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: B}\n";
    let parsed = parse_str("x.yaml", text);
    assert_eq!(parsed.documents.len(), 1);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].document, 1);
}

#[test]
fn list_kind_is_flattened() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\n";
    assert_eq!(parse_str("x.yaml", text).documents.len(), 2);
}

#[test]
fn directories_are_read_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("a.yml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
    let parsed = load_path(dir.path());
    assert!(parsed.errors.is_empty());
    let names: Vec<_> = parsed
        .documents
        .iter()
        .map(|d| d.resource.key().name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let missing = load_path(&dir.path().join("nope.yaml"));
    assert!(missing.errors[0].message.contains("cannot read file"));
}
