//! The Star Wars demo across three nodes that share the lab's etcd, as a
//! user walks it: the deathstar's two pods on node1 and node2, the ships on
//! node3, the ClusterIP reaching both backends from node3, and the demo's
//! L3/L4 and L7 policies enforced by identity across nodes — natively
//! routed and through the VXLAN overlay. Flows come from the lab's relay.

mod common;

use std::collections::BTreeSet;

use common::{Lab, curl, starwars, starwars_pinned, text};
use myelin_test_support::privileged;

const DEATHSTAR: &str = "http://deathstar.default.svc.cluster.local";

/// A file of the Star Wars example.
fn example(name: &str) -> std::path::PathBuf {
    starwars().with_file_name(name)
}

/// The node of every pod whose name starts with `prefix`.
fn nodes_of(lab: &Lab, prefix: &str) -> BTreeSet<String> {
    lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|p| p["node"].as_str().expect("node").to_string())
        .collect()
}

/// The hostnames of the deathstar pods that answered `GET /v1` from `pod`
/// through the ClusterIP, over `tries` new connections.
fn backends_answering(lab: &Lab, pod: &str, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| {
            let body = curl(lab, pod, "GET", &format!("{DEATHSTAR}/v1"));
            let listing: serde_json::Value = serde_json::from_str(&body).ok()?;
            listing["hostname"].as_str().map(str::to_string)
        })
        .collect()
}

/// Where the lab serves `what` (`observer`, `servicemap`) on this machine.
fn exposed(lab: &Lab, what: &str) -> Option<String> {
    lab.status()["exposed"]
        .as_array()?
        .iter()
        .find(|e| e[0] == what)
        .and_then(|e| e[1].as_str().map(str::to_string))
}

/// Which of the lab's nodes (by the suffix of their names) the JSON lines
/// of `observe -o json` saw flows on.
fn flow_nodes(lines: &str) -> BTreeSet<String> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|f| {
            let name = f["flow"]["node_name"].as_str()?;
            ["node1", "node2", "node3"]
                .into_iter()
                .find(|n| name.ends_with(n))
                .map(str::to_string)
        })
        .collect()
}

/// This machine's 127.0.0.1:4245 is the lab's relay, behind mutual TLS with
/// the lab's client certificate, and 127.0.0.1:12000 the whole cluster's
/// service map: flows of every node, and an edge seen on node3 alone (the
/// tiefighter knocking on the xwing, both on node3). A lab that is not
/// alone may find the ports held by an earlier one; in CI it is alone.
fn relay_on_this_machine(lab: &Lab, routing: &str) {
    let (Some(observer), Some(servicemap)) = (exposed(lab, "observer"), exposed(lab, "servicemap"))
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the lab does not hold this machine's relay ports: {}",
            lab.status()
        );
        eprintln!("cluster: another lab holds 127.0.0.1:4245/12000; relay ports not checked");
        return;
    };
    let xwing = lab.pod_address("xwing", 4);
    // Refused (the xwing serves nothing): a flow on node3 only.
    let _ = lab.exec(
        "tiefighter",
        &["curl", "-s", "-m", "2", &format!("http://{xwing}:80/")],
    );
    let tls = myelin_lab::LabNames::new(&lab.name).observer_tls();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.client_cert), path(&tls.client_key));
    let server = observer.replace("127.0.0.1", "localhost");
    let observe = [
        "observe",
        "--server",
        &server,
        "--tls",
        "--tls-ca-cert-files",
        &ca,
        "--tls-client-cert-file",
        &cert,
        "--tls-client-key-file",
        &key,
        "--last",
        "5000",
        "-o",
        "json",
    ];
    let all = BTreeSet::from(["node1".into(), "node2".into(), "node3".into()]);
    let flows = lab.ok_until(&observe, |out| flow_nodes(out) == all);
    assert_eq!(
        flow_nodes(&flows),
        all,
        "{routing}: flows of every node through {observer}"
    );
    let plaintext = lab.myelin(&["observe", "--server", &server, "--last", "1"]);
    assert!(
        !plaintext.status.success(),
        "{routing}: the relay's TCP port answered without TLS: {}",
        text(&plaintext)
    );

    let map = lab.ok_until(
        &["servicemap", "--server", &servicemap, "-o", "json"],
        |out| has_edge(out, "default/tiefighter", "default/xwing"),
    );
    assert!(
        has_edge(&map, "default/tiefighter", "default/xwing")
            && has_edge(&map, "default/tiefighter", "default/deathstar"),
        "{routing}: the cluster's service map at {servicemap} lacks node3's edges:\n{map}"
    );
}

/// Whether the service map JSON `map` has an edge `source` → `destination`.
fn has_edge(map: &str, source: &str, destination: &str) -> bool {
    serde_json::from_str::<myelin_observe::servicemap::MapView>(map).is_ok_and(|view| {
        view.edges
            .iter()
            .any(|e| e.source == source && e.destination == destination)
    })
}

fn star_wars_across_nodes(routing: &str) {
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = starwars_pinned(&dir);
    lab.ok(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--routing",
        routing,
        "-f",
        &app,
    ]);
    assert_eq!(
        nodes_of(&lab, "deathstar-"),
        BTreeSet::from(["node1".into(), "node2".into()])
    );
    assert_eq!(
        nodes_of(&lab, "tiefighter"),
        BTreeSet::from(["node3".into()])
    );
    assert_eq!(nodes_of(&lab, "xwing"), BTreeSet::from(["node3".into()]));

    // Without policy, every ship lands; the ClusterIP takes node3's clients
    // to the deathstar's pods on both other nodes.
    for ship in ["tiefighter", "xwing"] {
        assert_eq!(
            curl(
                &lab,
                ship,
                "POST",
                &format!("{DEATHSTAR}/v1/request-landing")
            ),
            "Ship landed\n",
            "{ship} from node3 ({routing})"
        );
    }
    let answered = backends_answering(&lab, "tiefighter", 24);
    assert_eq!(
        answered.len(),
        2,
        "both deathstar pods answer from node3: {answered:?}"
    );
    relay_on_this_machine(&lab, routing);
    // IPv6 across nodes too, pod to pod.
    let deathstar_v6 = lab.pod_address("deathstar-", 6);
    assert_eq!(
        curl(
            &lab,
            "xwing",
            "POST",
            &format!("http://[{deathstar_v6}]/v1/request-landing")
        ),
        "Ship landed\n"
    );

    // L3/L4: only the empire lands. The xwing's SYN is dropped on the
    // deathstar's node, by policy, with the xwing's identity (from its own
    // node's store entry or the VNI), and the relay shows it.
    lab.ok(&[
        "apply",
        "-f",
        example("sw_l3_l4_policy.yaml").to_str().expect("utf-8"),
    ]);
    assert_eq!(
        curl(
            &lab,
            "tiefighter",
            "POST",
            &format!("{DEATHSTAR}/v1/request-landing")
        ),
        "Ship landed\n"
    );
    let refused = lab.exec(
        "xwing",
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "-X",
            "POST",
            &format!("{DEATHSTAR}/v1/request-landing"),
        ],
    );
    assert!(
        !refused.status.success(),
        "the xwing landed: {}",
        text(&refused)
    );
    let drops = lab.ok_until(
        &[
            "observe",
            "--last",
            "1000",
            "--from-pod",
            "default/xwing",
            "--verdict",
            "DROPPED",
            "-o",
            "json",
        ],
        |out| out.contains("POLICY_DENIED"),
    );
    assert!(
        drops.contains("POLICY_DENIED"),
        "no policy drop of the xwing:\n{drops}"
    );
    let drop_nodes: BTreeSet<&str> = drops
        .lines()
        .filter(|l| l.contains("POLICY_DENIED"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|f| f["flow"]["node_name"].as_str().map(|n| n.to_string()))
        .map(|n| {
            if n.ends_with("node1") {
                "node1"
            } else if n.ends_with("node2") {
                "node2"
            } else {
                "other"
            }
        })
        .collect();
    assert!(
        !drop_nodes.is_empty() && !drop_nodes.contains("other"),
        "the xwing is dropped where the deathstar runs: {drop_nodes:?}\n{drops}"
    );
    assert!(
        drops.contains("\"xwing\""),
        "the drop names the xwing:\n{drops}"
    );

    // L7: the deathstar's node hands the tiefighter's connections to its
    // proxy at the node's ingress; the proxy lands the ship and answers the
    // exhaust port 403.
    lab.ok(&[
        "apply",
        "-f",
        example("sw_l3_l4_l7_policy.yaml").to_str().expect("utf-8"),
    ]);
    assert_eq!(
        curl(
            &lab,
            "tiefighter",
            "POST",
            &format!("{DEATHSTAR}/v1/request-landing")
        ),
        "Ship landed\n"
    );
    let put = lab.exec(
        "tiefighter",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            "-X",
            "PUT",
            &format!("{DEATHSTAR}/v1/exhaust-port"),
        ],
    );
    assert_eq!(
        text(&put).trim(),
        "403",
        "the exhaust port is guarded across nodes"
    );
}

/// One test for both routing modes, one lab after the other: the lab that
/// runs alone holds this machine's relay ports, which the test checks.
#[test]
fn star_wars_across_nodes_natively_routed_and_through_the_overlay() {
    if !privileged("star_wars_across_nodes_natively_routed_and_through_the_overlay") {
        return;
    }
    star_wars_across_nodes("native");
    star_wars_across_nodes("tunnel");
}
