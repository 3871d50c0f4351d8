//! Manifests and states the control plane's tests start from.

use myelin_model::Document;

use crate::state::LabState;

pub fn parse(yaml: &str) -> Vec<Document> {
    let parsed = myelin_model::parse_str("t.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed.documents
}

pub fn policies(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}}}\n\
                 spec:\n  endpointSelector: {{matchLabels: {{app: a}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

pub fn lab_state() -> LabState {
    LabState {
        namespaces: ["default".to_string()].into(),
        ..LabState::default()
    }
}
