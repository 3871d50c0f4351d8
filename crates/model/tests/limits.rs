//! Input a Kubernetes API server would refuse for its size is refused before it is parsed,
//! so that reading stays within bounded memory.

use myelin_model::limits::{MAX_OBJECT_BYTES, MAX_REQUEST_BYTES};
use myelin_model::{load_path, parse_str};

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: small}\n";

/// A CiliumNetworkPolicy of at least `bytes` bytes: one ingress rule per peer label value.
/// `tail` ends it (a syntax error there shows whether the document was parsed at all).
fn big_policy(bytes: usize, tail: &str) -> String {
    let mut text = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big}\nspec:\n  endpointSelector: {}\n  ingress:\n",
    );
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(&format!(
            "  - fromEndpoints: [{{matchLabels: {{app: a{i}}}}}]\n"
        ));
        i += 1;
    }
    text.push_str(tail);
    text
}

#[test]
fn a_document_over_the_object_limit_is_refused_unparsed_and_alone() {
    let policy = big_policy(MAX_OBJECT_BYTES + 1, "  - {unclosed\n");
    let size = policy.len();
    let text = format!("{NAMESPACE}---\n{policy}---\n{NAMESPACE}");
    let parsed = parse_str("big.yaml", &text);
    let kept: Vec<_> = parsed.documents.iter().map(|d| d.source.document).collect();
    assert_eq!(kept, [0, 2], "the small neighbours are read");
    assert_eq!(parsed.errors.len(), 1);
    let shown = parsed.errors[0].to_string();
    assert_eq!(
        shown,
        format!(
            "big.yaml: document 1: the document is {} bytes, over the limit of 1572864 bytes \
             (1.5 MiB) that etcd sets on one Kubernetes object; split it into several objects \
             (a policy with many rules into several policies)",
            size + "---\n".len()
        )
    );
}

#[test]
fn a_document_within_the_object_limit_is_read() {
    let policy = big_policy(MAX_OBJECT_BYTES - 1000, "");
    let parsed = parse_str("big.yaml", &policy);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.documents.len(), 1);
}

#[test]
fn a_file_over_the_request_limit_is_refused_unread() {
    let mut text = String::new();
    while text.len() <= MAX_REQUEST_BYTES {
        text.push_str("---\n");
        text.push_str(NAMESPACE);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge.yaml");
    std::fs::write(&path, &text).expect("write");
    let parsed = load_path(&path);
    assert!(parsed.documents.is_empty());
    assert_eq!(parsed.errors.len(), 1);
    let e = &parsed.errors[0];
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(
        e.message,
        format!(
            "the input is {} bytes, over the limit of 3145728 bytes (3 MiB) that the Kubernetes \
             API server sets on one request; split it into several files",
            text.len()
        )
    );
    let parsed = parse_str("huge.yaml", &text);
    assert!(parsed.documents.is_empty());
    assert_eq!(parsed.errors[0].message, e.message);
}

#[test]
fn an_alias_bomb_is_refused_with_its_document() {
    let mut bomb = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for level in 1..10 {
        let aliases = vec![format!("*x{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("x{level}: &x{level} [{aliases}]\n"));
    }
    let parsed = parse_str("bomb.yaml", &format!("{NAMESPACE}---\n{bomb}"));
    assert_eq!(parsed.documents.len(), 1);
    let e = &parsed.errors[0];
    assert_eq!((e.file.as_str(), e.document), ("bomb.yaml", 1));
    assert!(
        e.message
            .starts_with("not valid YAML: YAML document too large or too complex"),
        "{e}"
    );
    assert!(
        e.message
            .contains("aliases (`*name`) may copy at most 100000 nodes"),
        "{e}"
    );
}
