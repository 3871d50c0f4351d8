//! Who can read a lab's flows: the observer's TCP port requires the lab's
//! client certificate, the service map page its token, the agent's metrics
//! are out of the pods' reach, pods do not see the labs' run directory, and
//! nothing the lab writes is readable by other users. The TCP services are
//! checked inside the node's namespace (the host's forwarded ports may be
//! held by another lab), through the same sockets the host forwards to.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::{Lab, MYELIN, starwars, text};
use myelin_lab::LabNames;
use myelin_test_support::privileged;

/// Runs `program args` inside the lab's node.
fn in_node(lab: &Lab, program: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &format!("ml-{}_node1", lab.name), program])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// Every path under `dir` whose mode lets others than root read, write or
/// enter it.
fn open_to_others(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 && !meta.file_type().is_symlink() {
            found.push(format!(
                "{} {:o}",
                path.display(),
                meta.permissions().mode() & 0o7777
            ));
        }
        if meta.is_dir() {
            open_to_others(&path, found);
        }
    }
}

#[test]
fn flows_metrics_and_state_are_for_root_only() {
    if !privileged("flows_metrics_and_state_are_for_root_only") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let names = LabNames::new(&lab.name);

    // Nothing under the run directory is open to other users; the bpffs
    // root included.
    let run_dir = names.run_dir();
    // (A bpffs root always carries the sticky bit.)
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&run_dir), 0o700);
    assert_eq!(mode(&names.bpffs()), 0o700);
    let mut open = Vec::new();
    open_to_others(&run_dir, &mut open);
    assert!(open.is_empty(), "readable by others: {open:#?}");

    // The observer's TCP port: the lab's client certificate is required.
    let tls = names.observer_tls();
    let ca = tls.ca.to_str().expect("utf-8");
    let with_cert = [
        "--tls",
        "--tls-ca-cert-files",
        ca,
        "--tls-client-cert-file",
        tls.client_cert.to_str().expect("utf-8"),
        "--tls-client-key-file",
        tls.client_key.to_str().expect("utf-8"),
    ];
    // Inside the node, and through the host's forwarded port when this lab
    // holds it.
    let status = lab.status();
    let forwarded = status["exposed"]
        .as_array()
        .expect("exposed")
        .iter()
        .find(|e| e[0] == "observer")
        .map(|e| {
            e[1].as_str()
                .expect("address")
                .replace("127.0.0.1", "localhost")
        });
    let observe = |server: &str, host: bool, extra: &[&str]| {
        let mut args = vec!["observe", "--server", server, "--last", "1"];
        args.extend_from_slice(extra);
        if host {
            Command::new(MYELIN).args(&args).output().expect("myelin")
        } else {
            in_node(&lab, MYELIN, &args)
        }
    };
    let mut servers = vec![("localhost:4245".to_string(), false)];
    servers.extend(forwarded.map(|server| (server, true)));
    for (server, host) in &servers {
        let ok = observe(server, *host, &with_cert);
        assert!(ok.status.success(), "{server}: {}", text(&ok));
        let plaintext = observe(server, *host, &[]);
        assert!(
            !plaintext.status.success(),
            "{server}: {}",
            text(&plaintext)
        );
        let without_cert = observe(server, *host, &["--tls", "--tls-ca-cert-files", ca]);
        assert!(
            !without_cert.status.success(),
            "{server}: {}",
            text(&without_cert)
        );
    }

    // The service map page: 401 without the token, the map with it.
    let token = std::fs::read_to_string(names.servicemap_token()).expect("token file");
    let status_of = |url: &str| {
        let output = in_node(
            &lab,
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                url,
            ],
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(status_of("http://127.0.0.1:12000/"), "401");
    assert_eq!(status_of("http://127.0.0.1:12000/api/servicemap"), "401");
    let page = format!("http://127.0.0.1:12000/?token={}", token.trim());
    assert_eq!(status_of(&page), "200");
    let url = lab.ok(&["servicemap", "--url", "--server", "127.0.0.1:12000"]);
    assert_eq!(url.trim(), page);
    // `lab status` tells root how to get in to the host ports this lab holds.
    let status_text = lab.ok(&["lab", "status"]);
    let holds = |what: &str| {
        status["exposed"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e[0] == what))
    };
    if holds("servicemap") {
        let line = format!("?token={}", token.trim());
        assert!(status_text.contains(&line), "{status_text}");
    }
    if holds("observer") {
        assert!(
            status_text.contains("--tls-client-key-file"),
            "{status_text}"
        );
    }

    // The agent's metrics: on the node's loopback, not on its address.
    let state = myelin_lab::state::LabState::load(&run_dir.join("state.json")).expect("state");
    let node_address = state.nodes[0].router_v4;
    let from_pod = lab.exec(
        "tiefighter",
        &[
            "curl",
            "-s",
            "-m",
            "2",
            &format!("http://{node_address}:9965/metrics"),
        ],
    );
    assert!(
        !from_pod.status.success(),
        "a pod read the agent's metrics: {}",
        text(&from_pod)
    );
    let in_node_metrics = in_node(
        &lab,
        "curl",
        &["-s", "-f", "-m", "5", "http://127.0.0.1:9965/metrics"],
    );
    assert!(
        in_node_metrics.status.success() && !in_node_metrics.stdout.is_empty(),
        "{}",
        text(&in_node_metrics)
    );

    // Pods, and `lab exec`, see no lab: not directly, not through another
    // process's root, and the agent's socket is out of reach.
    let listing = lab.exec("tiefighter", &["ls", "-A", "/run/myelin"]);
    assert!(listing.status.success(), "{}", text(&listing));
    assert_eq!(text(&listing), "", "a pod sees the labs");
    let supervisor = state
        .supervisor
        .as_ref()
        .expect("the supervisor's record")
        .pid;
    let through_proc = lab.exec(
        "tiefighter",
        &["ls", &format!("/proc/{supervisor}/root/run/myelin/labs")],
    );
    assert!(
        !through_proc.status.success(),
        "a pod reached the host's mounts: {}",
        text(&through_proc)
    );
    let socket = names.node_dir("node1").join("agent.sock");
    let agent = lab.exec(
        "tiefighter",
        &["test", "-e", socket.to_str().expect("utf-8")],
    );
    assert!(!agent.status.success(), "a pod sees the agent's socket");
    for pod in state.pods.values() {
        for process in &pod.processes {
            let seen = std::fs::read_dir(format!("/proc/{}/root/run/myelin", process.pid))
                .expect("the container's /run/myelin")
                .count();
            assert_eq!(seen, 0, "{} sees the labs", process.what);
        }
    }
}
