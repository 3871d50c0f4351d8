//! The lab as a user drives it: `myelin lab up`, `exec`, `apply`, `delete`,
//! `status`, `down`, with real namespaces, processes, curl and DNS.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Lab, curl, starwars, text};
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
    assert_eq!(lab.netns().len(), 5, "one node and four pods");

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
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/myelin/labs/{}/state.json", lab.name)).expect("state file"),
    )
    .expect("json");
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
