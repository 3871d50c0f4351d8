//! `myelin install` as a user runs it: its output is YAML a cluster takes, its options
//! reach the manifests, a bad value prints nothing.

use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;

const MYELIN: &str = env!("CARGO_BIN_EXE_myelin");

fn install(args: &[&str]) -> Output {
    Command::new(MYELIN)
        .arg("install")
        .args(args)
        .output()
        .expect("run myelin install")
}

/// The documents `myelin install ARGS` prints, which must succeed.
fn documents(args: &[&str]) -> Vec<serde_json::Value> {
    let output = install(args);
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("# Myelin"), "{stdout}");
    serde_saphyr::from_multiple(&stdout).expect("YAML")
}

/// The one document of `kind`, decoded into its API type.
fn one<T: serde::de::DeserializeOwned>(documents: &[serde_json::Value], kind: &str) -> T {
    let found: Vec<_> = documents.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{kind}");
    serde_json::from_value(found[0].clone()).expect(kind)
}

#[test]
fn the_output_parses_into_the_api_types() {
    let documents = documents(&[]);
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let daemon_set: DaemonSet = one(&documents, "DaemonSet");
    assert_eq!(
        daemon_set.metadata.namespace.as_deref(),
        Some("myelin-system")
    );
}

#[test]
fn options_reach_the_manifests() {
    let documents = documents(&[
        "--namespace",
        "mesh",
        "--image",
        "registry.example/myelin:2",
        "--cluster-name",
        "prod",
        "--routing",
        "native",
        "--with-cilium-crds",
    ]);
    let config: ConfigMap = one(&documents, "ConfigMap");
    assert_eq!(config.metadata.namespace.as_deref(), Some("mesh"));
    let data = config.data.expect("data");
    assert_eq!(
        (data["cluster-name"].as_str(), data["routing"].as_str()),
        ("prod", "native")
    );
    let daemon_set: DaemonSet = one(&documents, "DaemonSet");
    let pod = daemon_set.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/myelin:2")
    );
    let crds = documents
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, 5);
}

#[test]
fn a_bad_value_prints_nothing_and_names_the_option() {
    let output = install(&["--namespace", "Not_A_Label"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--namespace") && stderr.contains("Not_A_Label"),
        "{stderr}"
    );
}

#[test]
fn the_help_says_the_agent_has_no_kubernetes_mode_yet() {
    let output = install(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("NOT YET FUNCTIONAL"), "{help}");
}
