//! The lab as a user drives it: `myelin lab up`, `exec`, `apply`, `delete`,
//! `status`, `down`, with real namespaces, processes, curl and DNS.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use common::{Lab, curl, lab_state, starwars, text};
use myelin_test_support::privileged;

#[test]
fn lab_up_exec_down_round_trip() {
    if !privileged("lab_up_exec_down_round_trip") {
        return;
    }
    let lab = Lab::named();
    let created = lab.up(&starwars());
    assert!(created.contains("service/deathstar created"), "{created}");
    assert!(
        created.contains("deployment.apps/deathstar created"),
        "{created}"
    );
    assert!(created.contains("pod/xwing created"), "{created}");
    let status = lab.status();
    let pods = status["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 4, "{status}");
    assert!(pods.iter().all(|p| p["ready"] == true), "{status}");
    assert_eq!(lab.netns().len(), 6, "one node, the underlay and four pods");

    // Pod to pod, IPv4 and IPv6.
    let v4 = lab.pod_address("deathstar-", 4);
    let v6 = lab.pod_address("deathstar-", 6);
    assert_eq!(
        curl(
            &lab,
            "tiefighter",
            "POST",
            &format!("http://{v4}/v1/request-landing")
        ),
        "Ship landed\n"
    );
    assert_eq!(
        curl(
            &lab,
            "xwing",
            "POST",
            &format!("http://[{v6}]/v1/request-landing")
        ),
        "Ship landed\n"
    );
    let explosion = curl(
        &lab,
        "tiefighter",
        "PUT",
        &format!("http://{v4}/v1/exhaust-port"),
    );
    assert!(
        explosion.starts_with("Panic: deathstar exploded"),
        "{explosion}"
    );

    // Names resolve through the node's DNS responder, full and short.
    let full = text(&lab.exec(
        "xwing",
        &["getent", "ahostsv4", "deathstar.default.svc.cluster.local"],
    ));
    assert!(full.contains("10.96.0.10"), "{full}");
    let short = text(&lab.exec("xwing", &["getent", "ahostsv6", "deathstar"]));
    assert!(short.contains("fd00:10:96::a"), "{short}");
    let pod_name = format!("{}.default.pod.cluster.local", v4.replace('.', "-"));
    assert!(text(&lab.exec("xwing", &["getent", "hosts", &pod_name])).contains(&v4));
    let hosts = text(&lab.exec("xwing", &["cat", "/etc/hosts"]));
    assert!(hosts.contains("xwing"), "{hosts}");

    // The agent's programs saw the traffic.
    let status = lab.status();
    let agent = &status["nodes"][0]["agent"]["Ok"];
    assert!(agent["events"]["seen"].as_u64().unwrap_or(0) > 0, "{agent}");
    let xwing = agent["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["pod"] == "xwing")
        .expect("xwing endpoint");
    assert!(xwing["packets_from"].as_u64().unwrap_or(0) > 0, "{xwing}");

    lab.ok(&["lab", "down"]);
    lab.assert_gone();
}

#[test]
fn nodes_have_no_route_out_of_the_lab() {
    if !privileged("nodes_have_no_route_out_of_the_lab") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("one.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lone}\nspec:\n  containers:\n  - {name: c, image: quay.io/cilium/json-mock:v1.3.8}\n",
    )
    .expect("write");
    lab.up(&manifest);
    // A route lookup sends nothing; it only asks where a packet would go.
    let node = format!("ml-{}_node1", lab.name);
    let lookup = Command::new("ip")
        .args(["-n", &node, "route", "get", "192.0.2.1"])
        .output()
        .expect("ip");
    assert!(
        !lookup.status.success(),
        "the node has a route out: {}",
        text(&lookup)
    );
    let lookup6 = Command::new("ip")
        .args(["-n", &node, "-6", "route", "get", "2001:db8::1"])
        .output()
        .expect("ip");
    assert!(
        !lookup6.status.success(),
        "the node has an IPv6 route out: {}",
        text(&lookup6)
    );
}

#[test]
fn pods_are_added_and_removed_while_the_lab_runs() {
    if !privileged("pods_are_added_and_removed_while_the_lab_runs") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = dir.path().join("extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: rebels}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: falcon, namespace: rebels, labels: {org: alliance}}\n\
         spec:\n  containers:\n  - {name: ship, image: quay.io/cilium/starwars:v2.1}\n",
    )
    .expect("write");
    let applied = lab.ok(&["apply", "-f", extra.to_str().expect("utf-8")]);
    assert!(
        applied.contains("namespace/rebels created") && applied.contains("pod/falcon created"),
        "{applied}"
    );
    let falcon = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "falcon")
        .expect("falcon")["addresses"][0]
        .as_str()
        .expect("ip")
        .to_string();
    assert_eq!(
        curl(
            &lab,
            "xwing",
            "POST",
            &format!("http://{falcon}/v1/request-landing")
        ),
        "Ship landed\n"
    );
    assert!(lab.netns().iter().any(|n| n.ends_with("_rebels_falcon")));

    // Scale the deathstar down to one and back up.
    let scaled = dir.path().join("scaled.yaml");
    let app = std::fs::read_to_string(starwars()).expect("read");
    std::fs::write(&scaled, app.replace("replicas: 2", "replicas: 1")).expect("write");
    let applied = lab.ok(&["apply", "-f", scaled.to_str().expect("utf-8")]);
    assert!(
        applied.contains("deployment.apps/deathstar configured"),
        "{applied}"
    );
    let count = |lab: &Lab| {
        lab.status()["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .filter(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("deathstar-"))
            })
            .count()
    };
    assert_eq!(count(&lab), 1);

    let deleted = lab.ok(&["delete", "-f", extra.to_str().expect("utf-8")]);
    assert!(
        deleted.contains("pod \"falcon\" deleted")
            || deleted.contains("namespace \"rebels\" deleted"),
        "{deleted}"
    );
    assert!(!lab.netns().iter().any(|n| n.contains("_rebels_")));
    let gone = curl(
        &lab,
        "xwing",
        "POST",
        &format!("http://{falcon}/v1/request-landing"),
    );
    assert!(!gone.contains("Ship landed"));

    // Deleting the app removes its pods and its service, down to the kernel's service map.
    let deleted = lab.ok(&["delete", "-f", starwars().to_str().expect("utf-8")]);
    assert!(
        deleted.contains("service \"deathstar\" deleted"),
        "{deleted}"
    );
    let status = lab.status();
    assert_eq!(status["pods"].as_array().map(Vec::len), Some(0), "{status}");
    assert_eq!(
        status["services"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    let frontends = lab.ok(&["bpf", "services"]);
    assert_eq!(
        frontends.lines().count(),
        1,
        "only the header is left:\n{frontends}"
    );
}

#[test]
fn a_killed_lab_is_cleaned_up_by_down() {
    if !privileged("a_killed_lab_is_cleaned_up_by_down") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let state = lab_state(&lab);
    let supervisor = state["supervisor"]["pid"].as_i64().expect("pid") as i32;
    // SIGKILL: no chance to clean up. This is the test's own child's child,
    // recorded by the lab; nothing else is signalled.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let pod_pids: Vec<i32> = state["pods"]
        .as_object()
        .expect("pods")
        .values()
        .flat_map(|p| p["processes"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert!(!pod_pids.is_empty());
    // kill() returns before the process is gone; until it has exited (a zombie
    // holds no sockets) its socket may still take a connection.
    let exited = || {
        std::fs::read_to_string(format!("/proc/{supervisor}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !exited() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = lab.myelin(&["lab", "status"]);
    assert!(!status.status.success(), "status of a dead lab says so");
    assert!(text(&status).contains("not running"), "{}", text(&status));

    lab.ok(&["lab", "down"]);
    lab.assert_gone();
    for pid in pod_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pod process {pid} survived"
        );
    }
}

#[test]
fn bad_manifests_create_nothing() {
    if !privileged("bad_manifests_create_nothing") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Lab::named();

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers:\n  - {name: c, image: quay.io/cilium/json-mock:v1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: 80\n    targetPrt: 8080\n",
    )
    .expect("write");
    let output = lab.myelin(&["lab", "up", "-f", typo.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("typo.yaml: document 1: field `spec.ports[0].targetPrt`"),
        "{message}"
    );
    assert!(lab.netns().is_empty());
    assert!(!Path::new(&format!("/run/myelin/labs/{}", lab.name)).exists());

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: nginx, image: nginx:1.27}\n",
    )
    .expect("write");
    let output = lab.myelin(&["lab", "up", "-f", unknown.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("Pod default/web") && message.contains("nginx:1.27"),
        "{message}"
    );
    lab.assert_gone();

    // In a running lab, a bad apply changes nothing either.
    lab.up(&starwars());
    let before = lab.netns();
    let output = lab.myelin(&["apply", "-f", unknown.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("nothing was applied"),
        "{}",
        text(&output)
    );
    assert_eq!(lab.netns(), before);
}

#[test]
fn flows_and_metrics_come_from_the_agent() {
    if !privileged("flows_and_metrics_come_from_the_agent") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let v4 = lab.pod_address("deathstar-", 4);
    assert_eq!(
        curl(
            &lab,
            "tiefighter",
            "POST",
            &format!("http://{v4}/v1/request-landing")
        ),
        "Ship landed\n"
    );

    // Through the observer API, as `hubble observe` would ask. The agent reads
    // the kernel's events every few milliseconds, so the flows may trail the reply.
    let is_syn = |l: &str| l.contains("TCP Flags: SYN") && !l.contains("ACK");
    let compact = lab.ok_until(
        &[
            "observe",
            "--last",
            "200",
            "--from-pod",
            "default/tiefighter",
            "--protocol",
            "tcp",
        ],
        |out| out.lines().any(is_syn),
    );
    let syn = compact
        .lines()
        .find(|l| is_syn(l))
        .unwrap_or_else(|| panic!("no SYN of tiefighter in:\n{compact}"));
    assert!(syn.contains("default/tiefighter:"), "{syn}");
    assert!(syn.contains(":80 "), "{syn}");
    let json = lab.ok(&[
        "observe",
        "--last",
        "50",
        "--to-pod",
        "default/tiefighter",
        "-o",
        "json",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a JSON line")).expect("JSON flow");
    assert_eq!(
        first["flow"]["destination"]["pod_name"], "tiefighter",
        "{first}"
    );

    // Hubble's metric families, scraped inside the node.
    let node = format!("ml-{}_node1", lab.name);
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node,
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:9965/metrics",
        ])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let processed = metrics
        .lines()
        .find(|l| {
            l.starts_with("hubble_flows_processed_total{") && l.contains("verdict=\"FORWARDED\"")
        })
        .unwrap_or_else(|| panic!("no hubble_flows_processed_total in:\n{metrics}"));
    let count: f64 = processed
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(count > 0.0, "{processed}");
    // Myelin's own families: what the node runs, how full its maps are.
    assert!(
        metrics.lines().any(|l| l == "myelin_endpoints 4"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("myelin_datapath_map_entries{map=\"services\"} ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // The kernel's maps as `myelin bpf` reads them back.
    let endpoints = lab.ok(&["bpf", "endpoints"]);
    assert_eq!(
        endpoints.lines().count(),
        5,
        "a header and four endpoints:\n{endpoints}"
    );
    assert!(
        endpoints.lines().skip(1).all(|l| l.ends_with(" host")),
        "the lab registers every pod's MAC, so pods of the node reach each other by host \
         routing:\n{endpoints}"
    );
    let services = lab.ok(&["bpf", "services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_str(&services).expect("json");
    let frontends: Vec<&str> = services
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["frontend"].as_str())
        .collect();
    assert!(
        frontends.contains(&"10.96.0.10:80") && frontends.contains(&"[fd00:10:96::a]:80"),
        "{services}"
    );
    let ct = lab.ok(&["bpf", "ct"]);
    assert!(ct.lines().any(|l| l.contains(&format!("{v4}:80"))), "{ct}");
}

/// A pod of the idle spaceship image, labelled `app: NAME`.
fn idle_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n\
         spec:\n  containers:\n  - {{name: c, image: quay.io/cilium/json-mock:v1.3.8}}\n"
    )
}

/// An ingress policy for the pods labelled `app: TARGET`.
fn policy_for(name: &str, target: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {target}}}}}\n  ingress:\n  \
         - fromEndpoints: [{{matchLabels: {{app: nobody}}}}]\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8").to_string()
}

fn agent_policies(lab: &Lab) -> String {
    lab.status()["nodes"][0]["agent"]["Ok"]["policies"].to_string()
}

#[test]
fn repeated_files_are_one_apply() {
    if !privileged("repeated_files_are_one_apply") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write(dir.path(), "app.yaml", &idle_pod("lone"));
    let policy = write(dir.path(), "policy.yaml", &policy_for("guard", "lone"));
    let created = lab.ok(&["lab", "up", "-f", &app, "-f", &policy]);
    assert!(
        created.contains("pod/lone created")
            && created.contains("ciliumnetworkpolicy.cilium.io/guard created"),
        "{created}"
    );
    assert!(agent_policies(&lab).contains("guard"));

    // Any bad file refuses them all: the good one is not applied either.
    let more = write(dir.path(), "more.yaml", &policy_for("extra", "lone"));
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: nginx, image: nginx:1.27}\n",
    );
    let output = lab.myelin(&["apply", "-f", &more, "-f", &bad]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("pod/web failed:") && message.contains("nginx:1.27"),
        "{message}"
    );
    assert!(message.contains("nothing was applied"), "{message}");
    assert!(!lab.status()["policies"].to_string().contains("extra"));
    assert!(!agent_policies(&lab).contains("extra"));

    // A user who is not root is told why the lab does not answer.
    let as_nobody = Command::new(common::MYELIN)
        .args(["lab", "status"])
        .env("MYELIN_LAB", &lab.name)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run myelin as nobody");
    assert!(!as_nobody.status.success());
    let message = text(&as_nobody);
    assert!(message.contains("permission denied"), "{message}");
    assert!(!message.contains("not running"), "{message}");

    let deleted = lab.ok(&["delete", "-f", &policy, "-f", &app]);
    assert!(
        deleted.contains("pod \"lone\" deleted")
            && deleted.contains("ciliumnetworkpolicy.cilium.io \"guard\" deleted"),
        "{deleted}"
    );
    assert!(!agent_policies(&lab).contains("guard"));
}

#[test]
fn a_failed_apply_leaves_nothing_behind() {
    if !privileged("a_failed_apply_leaves_nothing_behind") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    lab.up(Path::new(&write(
        dir.path(),
        "lone.yaml",
        &idle_pod("lone"),
    )));
    let before = lab.netns();
    // The pod's command exits at once: the pod fails after the namespace, the
    // service and the policy reached the agent.
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: tx}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: txsvc}}\n\
         spec: {{selector: {{app: lone}}, ports: [{{port: 80}}]}}\n---\n{}---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: quitter}}\n\
         spec:\n  containers:\n  - {{name: c, image: busybox, command: [\"false\"]}}\n",
        policy_for("txpolicy", "lone")
    );
    let output = lab.myelin(&["apply", "-f", &write(dir.path(), "tx.yaml", &manifest)]);
    let message = text(&output);
    assert!(!output.status.success(), "{message}");
    assert_eq!(
        message.matches("pod/quitter failed:").count(),
        1,
        "{message}"
    );
    assert_eq!(message.matches("txpolicy").count(), 1, "{message}");
    assert!(
        message.contains("ciliumnetworkpolicy.cilium.io/txpolicy not applied"),
        "{message}"
    );
    assert!(message.contains("service/txsvc not applied"), "{message}");
    assert!(!message.contains("created"), "{message}");

    let status = lab.status();
    assert!(!status["pods"].to_string().contains("quitter"), "{status}");
    assert!(
        !status["services"].to_string().contains("txsvc"),
        "{status}"
    );
    assert!(
        !status["policies"].to_string().contains("txpolicy"),
        "{status}"
    );
    let agent = &status["nodes"][0]["agent"]["Ok"];
    assert!(
        !agent["policies"].to_string().contains("txpolicy"),
        "{agent}"
    );
    assert!(!agent["services"].to_string().contains("txsvc"), "{agent}");
    let resolved = lab.ok(&["policy", "get", "lone"]);
    assert!(!resolved.contains("txpolicy"), "{resolved}");
    assert_eq!(lab.netns(), before);
    // The lab and its agents agree: the policy is nowhere, so deleting it finds nothing.
    let output = lab.myelin(&[
        "delete",
        "-f",
        &write(dir.path(), "p.yaml", &policy_for("txpolicy", "lone")),
    ]);
    assert!(
        text(&output).contains("\"txpolicy\" not found"),
        "{}",
        text(&output)
    );
}

#[test]
fn observe_takes_an_explicit_server_over_the_lab() {
    if !privileged("observe_takes_an_explicit_server_over_the_lab") {
        return;
    }
    // A lab that seems to run: its observer socket is there (a plain file, so
    // connecting to it fails and says where it tried).
    let lab = Lab::named();
    let socket = myelin_lab::LabNames::new(&lab.name).observer_socket("node1");
    std::fs::create_dir_all(socket.parent().expect("node dir")).expect("mkdir");
    std::fs::write(&socket, "").expect("write");
    let socket_text = socket.display().to_string();
    let implicit = text(&lab.myelin(&["observe", "--last", "1"]));
    assert!(implicit.contains(&socket_text), "{implicit}");
    let explicit = text(&lab.myelin(&["observe", "--server", "localhost:4245", "--last", "1"]));
    assert!(!explicit.contains(&socket_text), "{explicit}");
    std::fs::remove_dir_all(myelin_lab::LabNames::new(&lab.name).run_dir()).expect("cleanup");
}

#[test]
fn status_answers_while_an_apply_brings_pods_up() {
    if !privileged("status_answers_while_an_apply_brings_pods_up") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    lab.up(Path::new(&write(
        dir.path(),
        "lone.yaml",
        &idle_pod("lone"),
    )));
    const PODS: usize = 8;
    let many: Vec<String> = (0..PODS).map(|i| idle_pod(&format!("many{i}"))).collect();
    let manifest = write(dir.path(), "many.yaml", &many.join("---\n"));
    let mut apply = Command::new(common::MYELIN)
        .args(["apply", "-f", &manifest])
        .env("MYELIN_LAB", &lab.name)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the apply");
    // Pods come up one after the other; a status while they do shows some of
    // them. (A status held up until the apply ends would see all or none.)
    let seen = loop {
        let pods = lab.status()["pods"].to_string();
        let seen = (0..PODS)
            .filter(|i| pods.contains(&format!("\"many{i}\"")))
            .count();
        if seen > 0 || apply.try_wait().expect("apply").is_some() {
            break seen;
        }
    };
    assert!(apply.wait().expect("apply").success());
    assert!(
        (1..PODS).contains(&seen),
        "a status during the apply saw {seen} of its {PODS} pods"
    );
}
