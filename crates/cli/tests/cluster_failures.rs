//! Failures of a three-node lab on a three-member etcd, while traffic
//! flows: an agent killed with SIGKILL, one etcd member killed, every etcd
//! member killed, a node cut from the underlay, a node deleted. Established
//! connections must not break, new ones must stay policed, nothing the
//! cluster knew may be lost, and everything must come back by itself.
//!
//! One lab walks every drill in turn (the Star Wars app with the deathstar's
//! pods on node1 and node2 and the ships on node3, `sw_l3_l4_policy` in
//! force, tunnel routing).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, MYELIN, lab_state, starwars, starwars_pinned, text};
use myelin_test_support::privileged;

const LANDING: &str = "/v1/request-landing";

/// A keep-alive HTTP client that sends `GET /v1` every 50 ms on one
/// connection for the given seconds, then prints what it saw as JSON:
/// answers, failures, and how many connections it needed (1 when nothing
/// broke: a reconnect would show as a second local port).
const SESSION: &str = r#"
import http.client, json, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
conn = http.client.HTTPConnection(host, 80, timeout=3)
deadline = time.monotonic() + seconds
ports, ok, failures = set(), 0, []
while time.monotonic() < deadline:
    try:
        conn.request("GET", "/v1")
        answer = conn.getresponse()
        answer.read()
        if answer.status == 200:
            ok += 1
        else:
            failures.append("status %d" % answer.status)
        ports.add(conn.sock.getsockname()[1])
    except Exception as e:
        failures.append(repr(e))
        conn.close()
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failures": failures, "connections": len(ports)}))
"#;

/// A pod's long-lived connection, running in the background.
struct Session {
    what: String,
    child: Child,
}

impl Session {
    fn start(lab: &Lab, pod: &str, address: &str, seconds: u32, what: &str) -> Self {
        let child = Command::new(MYELIN)
            .args(["lab", "exec", pod, "--", "python3", "-c", SESSION, address])
            .arg(seconds.to_string())
            .env("MYELIN_LAB", &lab.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the session");
        Self {
            what: what.to_string(),
            child,
        }
    }

    /// Waits for the session's end and asserts that its one connection
    /// carried every request.
    fn assert_unbroken(self) {
        let output = self.child.wait_with_output().expect("session");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}: no report: {}", self.what, text(&output)));
        assert!(
            report["failures"].as_array().is_some_and(Vec::is_empty)
                && report["connections"] == 1
                && report["ok"].as_u64().is_some_and(|n| n > 20),
            "{}: the established connection broke: {report}",
            self.what
        );
    }
}

/// The PID of `node`'s agent.
fn agent_pid(lab: &Lab, node: &str) -> u64 {
    lab_state(lab)["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["agent"]["pid"].as_u64())
        .unwrap_or_else(|| panic!("no agent of {node}"))
}

/// The PIDs of the etcd members.
fn etcd_pids(lab: &Lab) -> Vec<u64> {
    lab_state(lab)["store"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["pid"].as_u64())
        .collect()
}

fn kill9(pid: u64) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
}

/// A `myelin bpf TABLE --node NODE -o json` listing, keyed by `key`, valued
/// by `value`; `None` while the node's agent does not answer.
fn bpf_table(
    lab: &Lab,
    node: &str,
    table: &str,
    key: &str,
    value: &str,
) -> Option<BTreeMap<String, String>> {
    let output = lab.myelin(&["bpf", table, "--node", node, "-o", "json"]);
    if !output.status.success() {
        return None;
    }
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some(
        rows.as_array()?
            .iter()
            .map(|r| (r[key].to_string(), r[value].to_string()))
            .collect(),
    )
}

/// Waits up to `limit` for `done`; returns how long it took, or `None`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Whether `pod` lands on the deathstar at `address` (a new connection).
fn lands(lab: &Lab, pod: &str, address: &str) -> bool {
    let output = lab.exec(
        pod,
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "-X",
            "POST",
            &format!("http://{address}{LANDING}"),
        ],
    );
    String::from_utf8_lossy(&output.stdout).contains("Ship landed")
}

/// New connections are policed: the tiefighter lands on `address`, the
/// xwing does not.
fn assert_policed(lab: &Lab, address: &str, when: &str) {
    assert!(
        within(Duration::from_secs(10), || lands(
            lab,
            "tiefighter",
            address
        ))
        .is_some(),
        "{when}: the tiefighter cannot land on {address}"
    );
    assert!(
        !lands(lab, "xwing", address),
        "{when}: the xwing landed on {address}"
    );
}

/// The IPv4 address of the deathstar pod on `node`.
fn deathstar_on(lab: &Lab, node: &str) -> String {
    let status = lab.status();
    status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| {
            p["node"] == node
                && p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("deathstar-"))
        })
        .and_then(|p| {
            p["addresses"]
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str())
                .find(|a| !a.contains(':'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no deathstar pod on {node}: {status}"))
}

/// A pod of a label set no pod had yet (its identity is allocated now, in
/// etcd), pinned to `node`. Applied again, as a user would, while the apply
/// is refused (etcd not answering yet: no new identity can be allocated).
fn new_empire_pod(lab: &Lab, dir: &tempfile::TempDir, name: &str, node: &str) {
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    org: empire\n    \
             class: tiefighter\n    squadron: {name}\nspec:\n  nodeName: {node}\n  containers:\n  \
             - name: spaceship\n    image: quay.io/cilium/json-mock:v1.3.8\n"
        ),
    )
    .expect("write pod");
    let path = path.to_str().expect("utf-8");
    let applied = within(Duration::from_secs(30), || {
        lab.myelin(&["apply", "-f", path]).status.success()
    });
    assert!(
        applied.is_some(),
        "{name} could not be applied: {}",
        text(&lab.myelin(&["apply", "-f", path]))
    );
}

#[test]
fn a_cluster_survives_its_failures() {
    if !privileged("a_cluster_survives_its_failures") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = starwars_pinned(&dir);
    lab.ok(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--etcd-members",
        "3",
        "-f",
        &app,
    ]);
    let policy = starwars().with_file_name("sw_l3_l4_policy.yaml");
    lab.ok(&["apply", "-f", policy.to_str().expect("utf-8")]);
    let (on_node1, on_node2) = (deathstar_on(&lab, "node1"), deathstar_on(&lab, "node2"));
    assert_policed(&lab, &on_node2, "before the drills");

    // 1. node2's agent killed with SIGKILL while node3 talks to node1 and
    // node2: the connections hold, new ones stay policed, and the agent the
    // supervisor starts again adopts the kernel's state and the store's
    // identities (the same numbers).
    let identities_before =
        bpf_table(&lab, "node2", "endpoints", "ipv4", "identity").expect("node2's endpoints");
    let to_node2 = Session::start(
        &lab,
        "tiefighter",
        &on_node2,
        8,
        "node3 → node2 over the kill",
    );
    let to_node1 = Session::start(
        &lab,
        "tiefighter",
        &on_node1,
        8,
        "node3 → node1 over the kill",
    );
    std::thread::sleep(Duration::from_secs(1));
    let killed = agent_pid(&lab, "node2");
    kill9(killed);
    assert_policed(&lab, &on_node2, "node2's agent killed");
    let back = within(Duration::from_secs(30), || {
        agent_pid(&lab, "node2") != killed
            && bpf_table(&lab, "node2", "endpoints", "ipv4", "identity").is_some()
    });
    assert!(back.is_some(), "node2's agent did not come back");
    assert_eq!(
        bpf_table(&lab, "node2", "endpoints", "ipv4", "identity"),
        Some(identities_before),
        "the restarted agent gave node2's pods other identities"
    );
    to_node2.assert_unbroken();
    to_node1.assert_unbroken();
    assert_policed(&lab, &on_node2, "node2's agent restarted");

    // 2. One etcd member of three killed: no outage. A pod of a new label
    // set gets its identity from the two left, and node2 admits it.
    let ipcache_before =
        bpf_table(&lab, "node3", "ipcache", "prefix", "identity").expect("node3's ipcache");
    let session = Session::start(
        &lab,
        "tiefighter",
        &on_node2,
        6,
        "node3 → node2, an etcd member killed",
    );
    let members = etcd_pids(&lab);
    assert_eq!(members.len(), 3, "three members: {members:?}");
    kill9(members[0]);
    new_empire_pod(&lab, &dir, "squadron-a", "node1");
    assert!(
        within(Duration::from_secs(10), || lands(
            &lab,
            "squadron-a",
            &on_node2
        ))
        .is_some(),
        "a new pod cannot land across nodes with an etcd member down"
    );
    assert!(
        within(Duration::from_secs(15), || !etcd_pids(&lab)
            .contains(&members[0]))
        .is_some(),
        "the supervisor did not start the killed member again"
    );
    session.assert_unbroken();

    // 3. Every member killed (etcd restarted): the datapath keeps the last
    // state, the members come back on their data, the agents reconnect by
    // themselves and nothing the store held is lost.
    let session = Session::start(
        &lab,
        "tiefighter",
        &on_node2,
        8,
        "node3 → node2, etcd restarted",
    );
    for pid in etcd_pids(&lab) {
        kill9(pid);
    }
    assert_policed(&lab, &on_node2, "etcd down");
    // A new label set needs etcd: created once the members are back.
    new_empire_pod(&lab, &dir, "squadron-b", "node1");
    assert!(
        within(Duration::from_secs(30), || lands(
            &lab,
            "squadron-b",
            &on_node2
        ))
        .is_some(),
        "a new pod cannot land across nodes after etcd came back"
    );
    session.assert_unbroken();
    let ipcache_after =
        bpf_table(&lab, "node3", "ipcache", "prefix", "identity").expect("node3's ipcache");
    let lost: Vec<_> = ipcache_before
        .iter()
        .filter(|(prefix, identity)| ipcache_after.get(*prefix) != Some(identity))
        .collect();
    assert!(lost.is_empty(), "node3's ipcache lost or changed {lost:?}");

    // 4. node2 cut from the underlay: its pods are out of reach, and back
    // when the link returns.
    let underlay = myelin_lab::LabNames::new(&lab.name).underlay_netns();
    let port = myelin_lab::names::underlay_port(2);
    let link = |state: &str| {
        let output = Command::new("ip")
            .args(["-n", &underlay, "link", "set", &port, state])
            .output()
            .expect("ip");
        assert!(
            output.status.success(),
            "ip link set {port} {state}: {}",
            text(&output)
        );
    };
    link("down");
    assert!(
        !lands(&lab, "tiefighter", &on_node2),
        "node2's pod answered while node2 was cut off"
    );
    assert!(
        lands(&lab, "tiefighter", &on_node1),
        "node1 is unreachable while node2 is cut off"
    );
    link("up");
    assert!(
        within(Duration::from_secs(15), || lands(
            &lab,
            "tiefighter",
            &on_node2
        ))
        .is_some(),
        "node2 did not come back with its link"
    );

    // 5. node2 deleted: its pods leave node3's ipcache and the deathstar's
    // backends, and the ClusterIP keeps answering from node1.
    lab.ok(&["lab", "node", "delete", "node2"]);
    let gone = format!("\"{on_node2}/32\"");
    // Well inside the lease (15 s, renewed every 5 s, so a dead agent's
    // entries outlive it by 10 s at least): the drained pods' withdrawals
    // land before the agent stops, the lease is not what takes them.
    let took = within(Duration::from_secs(5), || {
        let ipcache = bpf_table(&lab, "node3", "ipcache", "prefix", "identity");
        let services = lab.myelin(&["bpf", "services", "--node", "node3", "-o", "json"]);
        ipcache.is_some_and(|c| !c.contains_key(&gone))
            && services.status.success()
            && !String::from_utf8_lossy(&services.stdout).contains(&format!("\"{on_node2}:"))
    });
    assert!(
        took.is_some(),
        "node2's deathstar is still in node3's ipcache or services 5 s after the delete"
    );
    eprintln!("node2's pods left node3's maps {took:?} after the delete");
    assert!(
        lands(&lab, "tiefighter", "deathstar.default.svc.cluster.local"),
        "the ClusterIP lost its last backend"
    );

    // 6. A pod deleted on a node that lives on: its address leaves the
    // others' ipcache (no lease expires here to take it).
    let squadron = lab.pod_address("squadron-a", 4);
    let path = dir.path().join("squadron-a.yaml");
    lab.ok(&["delete", "-f", path.to_str().expect("utf-8")]);
    let gone = format!("\"{squadron}/32\"");
    assert!(
        within(Duration::from_secs(15), || {
            bpf_table(&lab, "node3", "ipcache", "prefix", "identity")
                .is_some_and(|c| !c.contains_key(&gone))
        })
        .is_some(),
        "a deleted pod of node1 stays in node3's ipcache"
    );
}
