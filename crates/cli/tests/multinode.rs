//! A lab of several nodes as a user drives it: `lab up --nodes`, placement by
//! `nodeName`, `nodeSelector` and fewest pods, pods reaching each other across
//! nodes over the underlay (IPv4 and IPv6), `lab node add` and `delete`, and
//! `lab down` leaving nothing of the lab behind.

mod common;

use std::process::Command;

use common::{Lab, curl, lab_state, text};
use myelin_test_support::privileged;

/// Three deployment replicas (spread one a node), then a pod pinned to node2
/// by name, one to node3 by hostname selector, and one placed by load.
const PLACED: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 3
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]
---
apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec:
  nodeName: node2
  containers: [{name: c, image: quay.io/cilium/starwars:v2.1}]
---
apiVersion: v1
kind: Pod
metadata: {name: selected}
spec:
  nodeSelector: {kubernetes.io/hostname: node3}
  containers: [{name: c, image: quay.io/cilium/starwars:v2.1}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]
";

/// `ip ARGS`, its output; the command must succeed.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The node of each pod, by name.
fn placement(lab: &Lab) -> Vec<(String, String)> {
    let status = lab.status();
    let mut pods: Vec<(String, String)> = status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["node"].as_str().expect("node").to_string(),
            )
        })
        .collect();
    pods.sort();
    pods
}

fn node_of(lab: &Lab, pod: &str) -> String {
    placement(lab)
        .into_iter()
        .find(|(name, _)| name == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"))
        .1
}

fn write(dir: &tempfile::TempDir, name: &str, manifest: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, manifest).expect("write manifest");
    path.to_str().expect("utf-8").to_string()
}

#[test]
fn three_nodes_place_pods_and_carry_traffic_between_them() {
    if !privileged("three_nodes_place_pods_and_carry_traffic_between_them") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write(&dir, "placed.yaml", PLACED);
    lab.ok(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--routing",
        "native",
        "-f",
        &manifest,
    ]);

    // The replicas spread one a node; the pinned and selected pods go where
    // they say; the last pod goes to the node with the fewest pods (node1:
    // one replica, against two on node2 and node3).
    let placed = placement(&lab);
    let spread: Vec<&str> = placed
        .iter()
        .filter(|(name, _)| name.starts_with("spread-"))
        .map(|(_, node)| node.as_str())
        .collect();
    let mut spread_nodes = spread.clone();
    spread_nodes.sort();
    assert_eq!(spread_nodes, ["node1", "node2", "node3"], "{placed:?}");
    assert_eq!(node_of(&lab, "pinned"), "node2", "{placed:?}");
    assert_eq!(node_of(&lab, "selected"), "node3", "{placed:?}");
    assert_eq!(node_of(&lab, "client"), "node1", "{placed:?}");
    let table = lab.ok(&["lab", "status"]);
    let pinned_row = table
        .lines()
        .find(|l| l.contains(" pinned "))
        .unwrap_or_else(|| panic!("no row for pinned:\n{table}"));
    assert!(pinned_row.contains(" node2 "), "{table}");
    let status = lab.status();
    let nodes: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(nodes, ["node1", "node2", "node3"]);
    assert_eq!(
        status["nodes"][2]["underlay"],
        serde_json::json!(["10.250.0.3", "fd00:10:250::3"])
    );

    // Across nodes, without policy: node1 to node2 and node3, both families.
    for pod in ["pinned", "selected"] {
        for family in [4, 6] {
            let address = lab.pod_address(pod, family);
            let host = if family == 6 {
                format!("[{address}]")
            } else {
                address
            };
            let url = format!("http://{host}/v1/request-landing");
            assert_eq!(
                curl(&lab, "client", "POST", &url),
                "Ship landed\n",
                "{url} from node1"
            );
        }
    }
    // Each node's agent knows its own pods, and the CLI asks the one named.
    let endpoints = lab.ok(&["bpf", "endpoints", "--node", "node2"]);
    let pinned_v4 = lab.pod_address("pinned", 4);
    assert!(
        endpoints.contains(&pinned_v4) && !endpoints.contains(&lab.pod_address("selected", 4)),
        "{endpoints}"
    );
    let flows = lab.ok_until(
        &["observe", "--node", "node2", "--last", "100", "-o", "json"],
        |out| out.contains("\"pinned\""),
    );
    assert!(flows.contains("\"pinned\""), "node2's flows:\n{flows}");
    assert!(flows.contains("\"node_name\":\"node2\""), "{flows}");

    // Each node routes the others' pod CIDRs via their underlay address, and nothing else out.
    let node1 = format!("ml-{}_node1", lab.name);
    let routes = ip(&["-n", &node1, "route"]);
    assert!(
        routes.contains("10.244.2.0/24 via 10.250.0.2 dev underlay")
            && routes.contains("10.244.3.0/24 via 10.250.0.3 dev underlay"),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");
    let routes6 = ip(&["-n", &node1, "-6", "route"]);
    assert!(
        routes6.contains("fd00:10:244:3::/64 via fd00:10:250::3 dev underlay"),
        "{routes6}"
    );
    let lookup = Command::new("ip")
        .args(["-n", &node1, "route", "get", "192.0.2.1"])
        .output()
        .expect("ip");
    assert!(!lookup.status.success(), "a route out: {}", text(&lookup));

    // A pod pinned to a node that does not exist refuses the whole apply.
    let before = placement(&lab);
    let netns_before = lab.netns();
    let lost = write(
        &dir,
        "lost.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: innocent}\nspec:\n  containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec:\n  nodeName: node9\n  containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]\n",
    );
    let refused = lab.myelin(&["apply", "-f", &lost]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains("Pod default/lost: spec.nodeName: node \"node9\" does not exist"),
        "{message}"
    );
    assert!(message.contains("pod/innocent not applied"), "{message}");
    assert_eq!(placement(&lab), before, "nothing of the apply was created");
    assert_eq!(lab.netns(), netns_before);

    lab.ok(&["lab", "down"]);
    lab.assert_gone();
}

/// The lab's resources in its etcd, as `etcdctl` lists them: by
/// `kind/namespace/name`.
fn stored_resources(lab: &Lab) -> std::collections::BTreeMap<String, serde_json::Value> {
    let state = lab_state(lab);
    let endpoints = state["store"]["address"].as_str().expect("store address");
    let prefix = format!("/myelin/{}/resources/", lab.name);
    let output = std::process::Command::new("etcdctl")
        .args(["--endpoints", endpoints, "get", "--prefix", &prefix])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (Debian's etcd-client)");
    assert!(output.status.success(), "etcdctl: {}", text(&output));
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    lines
        .chunks(2)
        .filter_map(|pair| {
            let key = pair.first()?.strip_prefix(&prefix)?.to_string();
            Some((key, serde_json::from_str(pair.get(1)?).ok()?))
        })
        .collect()
}

#[test]
fn nodes_are_added_and_drained_while_the_lab_runs() {
    if !privileged("nodes_are_added_and_drained_while_the_lab_runs") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write(
        &dir,
        "start.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  nodeName: node1\n  containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]\n",
    );
    lab.ok(&[
        "lab",
        "up",
        "--nodes",
        "2",
        "--routing",
        "native",
        "-f",
        &manifest,
    ]);

    let added = lab.ok(&["lab", "node", "add"]);
    assert!(added.contains("node/node3 added"), "{added}");
    let status = lab.status();
    let node3 = &status["nodes"][2];
    assert_eq!(node3["name"], "node3", "{status}");
    // The new node's agent learnt what the others know.
    assert_eq!(
        node3["agent"]["Ok"]["services"].as_array().map(Vec::len),
        Some(1),
        "{node3}"
    );
    // Three replicas over three nodes: one lands on node3.
    let spread = write(
        &dir,
        "spread.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: spread}\nspec:\n  replicas: 3\n  \
         selector: {matchLabels: {app: spread}}\n  template:\n    metadata: {labels: {app: spread}}\n    \
         spec:\n      containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]\n",
    );
    lab.ok(&["apply", "-f", &spread]);
    let spread_nodes = |lab: &Lab| {
        let mut nodes: Vec<String> = placement(lab)
            .into_iter()
            .filter(|(name, _)| name.starts_with("spread-"))
            .map(|(_, node)| node)
            .collect();
        nodes.sort();
        nodes
    };
    assert_eq!(spread_nodes(&lab), ["node1", "node2", "node3"]);
    let web = write(
        &dir,
        "web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  nodeName: node3\n  containers: [{name: c, image: quay.io/cilium/starwars:v2.1}]\n",
    );
    lab.ok(&["apply", "-f", &web]);
    assert_eq!(node_of(&lab, "web"), "node3");
    let url = format!("http://{}/v1/request-landing", lab.pod_address("web", 4));
    assert_eq!(curl(&lab, "client", "POST", &url), "Ship landed\n");
    let node1 = format!("ml-{}_node1", lab.name);
    assert!(ip(&["-n", &node1, "route"]).contains("10.244.3.0/24 via 10.250.0.3"));
    // The cluster store holds the lab's resources as an API server keeps
    // them: the pod with the node it was placed on, the Service with its
    // cluster IPs, the Deployment and its pods, the namespaces.
    let resources = stored_resources(&lab);
    let web_pod = &resources["Pod/default/web"];
    assert_eq!(web_pod["spec"]["nodeName"], "node3", "{web_pod}");
    assert!(
        web_pod["status"]["podIPs"][0]["ip"] == lab.pod_address("web", 4).as_str(),
        "{web_pod}"
    );
    let web_service = &resources["Service/default/web"];
    assert!(
        web_service["spec"]["clusterIPs"]
            .as_array()
            .is_some_and(|ips| ips.len() == 2),
        "{web_service}"
    );
    assert!(resources.contains_key("Deployment/default/spread"));
    assert!(resources.contains_key("Namespace/_/default"));
    assert_eq!(
        resources
            .keys()
            .filter(|k| k.starts_with("Pod/default/spread-"))
            .count(),
        3
    );

    // The added node's agent is restarted as the others' are.
    let agent_of_node3 = |lab: &Lab| {
        lab_state(lab)["nodes"][2]["agent"]["pid"]
            .as_i64()
            .expect("pid") as i32
    };
    let old = agent_of_node3(&lab);
    // The lab recorded this process; nothing else is signalled.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while agent_of_node3(&lab) == old {
        assert!(
            std::time::Instant::now() < deadline,
            "node3's agent was not started again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(curl(&lab, "client", "POST", &url), "Ship landed\n");

    // Draining node3 deletes its pods and every trace of the node; the
    // Deployment gets its third pod back on a node left.
    let deleted = lab.ok(&["lab", "node", "delete", "node3"]);
    assert!(
        deleted.contains("pod/default/web deleted") && deleted.contains("node/node3 deleted"),
        "{deleted}"
    );
    assert!(
        deleted.contains("on node2 created (its Deployment's replacement)"),
        "{deleted}"
    );
    assert!(placement(&lab).iter().all(|(name, _)| name != "web"));
    assert!(!stored_resources(&lab).contains_key("Pod/default/web"));
    assert_eq!(spread_nodes(&lab), ["node1", "node2", "node2"]);
    let status = lab.status();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    for node in ["node1", "node2"] {
        let netns = format!("ml-{}_{node}", lab.name);
        assert!(
            ip(&["-n", &netns, "route", "show", "10.244.3.0/24"]).is_empty(),
            "{node} still routes node3's pods"
        );
        assert!(ip(&["-n", &netns, "-6", "route", "show", "fd00:10:244:3::/64"]).is_empty());
    }
    assert!(!lab.netns().iter().any(|n| n.ends_with("_node3")));
    let underlay = format!("ml-{}_underlay", lab.name);
    assert!(!ip(&["-n", &underlay, "link"]).contains("ul3"));
    let pins = format!("/run/myelin/labs/{}/bpf/node3", lab.name);
    assert!(!std::path::Path::new(&pins).exists(), "{pins} is left");
    let first = lab.myelin(&["lab", "node", "delete", "node1"]);
    assert!(!first.status.success());
    assert!(text(&first).contains("first node"), "{}", text(&first));

    // A killed supervisor leaves the nodes and the underlay to `lab down`.
    let state = lab_state(&lab);
    let supervisor = state["supervisor"]["pid"].as_i64().expect("pid") as i32;
    // The lab recorded this process, the test's own child's child; nothing else is signalled.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    lab.ok(&["lab", "down"]);
    lab.assert_gone();
}

#[test]
fn a_lab_of_too_many_nodes_is_refused_before_anything_exists() {
    let lab = Lab::named();
    for nodes in ["0", "17"] {
        let refused = lab.myelin(&["lab", "up", "--nodes", nodes, "-f", "/nonexistent"]);
        assert!(!refused.status.success());
        assert!(text(&refused).contains("1..=16"), "{}", text(&refused));
    }
    assert!(lab.netns().is_empty());
}
