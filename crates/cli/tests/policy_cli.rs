//! `myelin policy` as a user runs it: offline validation, and get/explain
//! against a lab's agent.

use std::path::Path;
use std::process::Command;

const MYELIN: &str = env!("CARGO_BIN_EXE_myelin");

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starwars")
}

/// `myelin policy validate -f PATH...`, which must succeed; its standard output.
fn validate_ok(paths: &[&Path]) -> String {
    let mut command = Command::new(MYELIN);
    command.args(["policy", "validate"]);
    for path in paths {
        command.arg("-f").arg(path);
    }
    let output = command.output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn validate_accepts_the_star_wars_policies() {
    let stdout = validate_ok(&[&examples()]);
    assert!(
        stdout.contains("valid: CiliumNetworkPolicy default/rule1"),
        "{stdout}"
    );
}

#[test]
fn validate_rejects_a_bad_policy_alone_with_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a-good.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: good}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b-bad.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: SCTP}]\n",
    )
    .expect("write");
    let output = Command::new(MYELIN)
        .args(["policy", "validate", "-f"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("valid: CiliumNetworkPolicy default/good"),
        "{stdout}"
    );
    assert!(stderr.contains("b-bad.yaml: document 0"), "{stderr}");
    assert!(
        stderr.contains("spec.ingress[0].toPorts[0].ports[0].protocol"),
        "{stderr}"
    );
}

#[test]
fn validate_takes_several_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |name: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: a}}}}\n"
            ),
        )
        .expect("write");
        path
    };
    let (first, second) = (policy("first"), policy("second"));
    let stdout = validate_ok(&[&first, &second]);
    assert!(
        stdout.contains("valid: CiliumNetworkPolicy default/first")
            && stdout.contains("valid: CiliumNetworkPolicy default/second"),
        "{stdout}"
    );
}
