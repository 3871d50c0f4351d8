//! The mesh in the lab, as Cilium's Star Wars guide tells it: ClusterIP load
//! balancing, L3/L4 policy in the kernel, L7 policy in the node's proxy, and
//! what the flows say about it — through real sockets, curl and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, lab_state, starwars, text};
use myelin_test_support::privileged;

const URL: &str = "http://deathstar.default.svc.cluster.local/v1";

fn policy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/starwars")
        .join(name)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// curl's body, or its exit code when it failed (28: timed out).
fn request(lab: &Lab, pod: &str, args: &[&str]) -> Result<String, i32> {
    let mut command = vec!["curl", "-s", "-m", "3"];
    command.extend_from_slice(args);
    let output = lab.exec(pod, &command);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(output.status.code().unwrap_or(-1))
    }
}

fn land(lab: &Lab, pod: &str) -> Result<String, i32> {
    request(lab, pod, &["-XPOST", &format!("{URL}/request-landing")])
}

fn node_process_pid(lab: &Lab, which: &str) -> i32 {
    let state = lab_state(lab);
    state["nodes"][0][which]["pid"].as_i64().expect("pid") as i32
}

/// Stops a node process the lab started (recorded in its state) and waits
/// until the supervisor has started a new one.
fn restart(lab: &Lab, which: &str) {
    let old = node_process_pid(lab, which);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_process_pid(lab, which) == old {
        assert!(
            Instant::now() < deadline,
            "the {which} was not started again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn l3_l4_policy_over_the_cluster_ip() {
    if !privileged("l3_l4_policy_over_the_cluster_ip") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    // No policy: both land, through the service, spread over both pods.
    assert_eq!(land(&lab, "xwing").as_deref(), Ok("Ship landed\n"));
    let mut hosts = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let listing = request(&lab, "tiefighter", &[URL]).expect("GET /v1");
        let listing: serde_json::Value = serde_json::from_str(&listing).expect("json");
        hosts.insert(listing["hostname"].as_str().unwrap_or_default().to_string());
        if hosts.len() == 2 {
            break;
        }
    }
    assert_eq!(hosts.len(), 2, "requests went to {hosts:?} only");

    // A second service over the same pods with ClientIP session affinity: every new
    // connection of one client goes to the backend of its first.
    let dir = tempfile::tempdir().expect("tempdir");
    let sticky = dir.path().join("sticky.yaml");
    std::fs::write(
        &sticky,
        "apiVersion: v1\nkind: Service\nmetadata: {name: deathstar-sticky}\n\
         spec:\n  selector: {org: empire, class: deathstar}\n  ports: [{port: 80}]\n  \
         sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n",
    )
    .expect("write manifest");
    lab.ok(&["apply", "-f", path(&sticky)]);
    let services = lab.ok(&["bpf", "services"]);
    assert!(services.contains("ClientIP/600s"), "{services}");
    let listed = lab.ok(&["lab", "status"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("deathstar-sticky") && l.ends_with("ClientIP/600s")),
        "{listed}"
    );
    let sticky_hosts: std::collections::BTreeSet<String> = (0..12)
        .map(|_| {
            let listing = request(
                &lab,
                "tiefighter",
                &["http://deathstar-sticky.default.svc.cluster.local/v1"],
            )
            .expect("GET /v1 through the sticky service");
            let listing: serde_json::Value = serde_json::from_str(&listing).expect("json");
            listing["hostname"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        sticky_hosts.len(),
        1,
        "one client, one backend: {sticky_hosts:?}"
    );
    lab.ok(&["delete", "-f", path(&sticky)]);
    // IPv6 through the IPv6 cluster IP. Up to three tries: once in a CI run (six labs on
    // two busy cores) this request ran into curl's 3 s limit, DNS included, and did not
    // fail again in ten runs; a lasting fault still fails every try.
    let mut v6 = Err(0);
    for _ in 0..3 {
        v6 = request(
            &lab,
            "tiefighter",
            &["-6", "-XPOST", &format!("{URL}/request-landing")],
        );
        match &v6 {
            Ok(_) => break,
            Err(code) => eprintln!("IPv6 landing through the cluster IP: curl {code}, again"),
        }
    }
    assert_eq!(v6.as_deref(), Ok("Ship landed\n"));

    let applied = lab.ok(&["apply", "-f", path(&policy("sw_l3_l4_policy.yaml"))]);
    assert!(applied.contains("rule1 created"), "{applied}");
    let status = lab.status();
    assert_eq!(
        status["policies"][0], "CiliumNetworkPolicy default/rule1",
        "{status}"
    );

    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));
    assert_eq!(land(&lab, "xwing"), Err(28), "xwing's SYN must be dropped");
    let drops = lab.ok(&[
        "observe",
        "--last",
        "500",
        "--verdict",
        "DROPPED",
        "--from-pod",
        "default/xwing",
    ]);
    assert!(
        drops.lines().any(|l| l.contains("<> default/deathstar-")
            && l.contains("Policy denied DROPPED (TCP Flags: SYN)")),
        "{drops}"
    );

    lab.ok(&["delete", "-f", path(&policy("sw_l3_l4_policy.yaml"))]);
    assert_eq!(
        land(&lab, "xwing").as_deref(),
        Ok("Ship landed\n"),
        "deleting the policy restores xwing"
    );
}

#[test]
fn a_service_without_backends_fails_fast() {
    if !privileged("a_service_without_backends_fails_fast") {
        return;
    }
    let lab = Lab::named();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("lonely.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ghost}\nspec:\n  selector: {app: nobody}\n  ports: [{port: 80}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  containers: [{name: c, image: quay.io/cilium/json-mock:v1}]\n",
    )
    .expect("write");
    lab.up(&manifest);
    let started = Instant::now();
    let outcome = request(&lab, "client", &["http://ghost.default.svc.cluster.local/"]);
    assert_eq!(outcome, Err(7), "connection refused, not a timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_pod_forging_its_source_is_dropped() {
    if !privileged("a_pod_forging_its_source_is_dropped") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let target = lab.pod_address("deathstar-", 4);
    // xwing claims an address that is not its own.
    let netns = format!("ml-{}_default_xwing", lab.name);
    let added = Command::new("ip")
        .args([
            "-n",
            &netns,
            "addr",
            "add",
            "10.244.1.250/32",
            "dev",
            "eth0",
        ])
        .status()
        .expect("ip");
    assert!(added.success());
    let forged = request(
        &lab,
        "xwing",
        &[
            "--interface",
            "10.244.1.250",
            &format!("http://{target}/v1"),
        ],
    );
    assert_eq!(forged, Err(28), "the forged SYN must not get through");
    let drops = lab.ok(&["observe", "--last", "500", "--verdict", "DROPPED"]);
    assert!(drops.contains("Invalid source ip DROPPED"), "{drops}");
    // Its own address still works.
    assert!(request(&lab, "xwing", &[&format!("http://{target}/v1")]).is_ok());
}

#[test]
fn connections_survive_an_agent_restart_and_a_policy_that_still_allows_them() {
    if !privileged("connections_survive_an_agent_restart_and_a_policy_that_still_allows_them") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    lab.ok(&["apply", "-f", path(&policy("sw_l3_l4_policy.yaml"))]);
    let target = lab.pod_address("deathstar-", 4);
    // A long-lived connection: one slow upload of 8 s, paced by curl.
    let upload = Command::new(common::MYELIN)
        .env("MYELIN_LAB", &lab.name)
        .args(["lab", "exec", "tiefighter", "--", "sh", "-c"])
        .arg(format!(
            "head -c 80000 /dev/zero | curl -s -m 30 --limit-rate 10000 -XPOST --data-binary @- -o /dev/null -w '%{{http_code}}' http://{target}/v1/request-landing"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the upload");
    std::thread::sleep(Duration::from_secs(1));
    restart(&lab, "agent");
    // A policy change that still allows tiefighter (rule1 re-applied with L7 on another rule name).
    let dir = tempfile::tempdir().expect("tempdir");
    let also = dir.path().join("also.yaml");
    std::fs::write(
        &also,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule2}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {class: tiefighter}}]\n",
    )
    .expect("write");
    lab.ok(&["apply", "-f", path(&also)]);
    let output = upload.wait_with_output().expect("upload");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200",
        "the long-lived connection broke"
    );
    // New connections follow the policy in force.
    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));
    assert_eq!(land(&lab, "xwing"), Err(28));
}

#[test]
fn l7_policy_through_the_node_proxy() {
    if !privileged("l7_policy_through_the_node_proxy") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    lab.ok(&["apply", "-f", path(&policy("sw_l3_l4_l7_policy.yaml"))]);
    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));
    let denied = request(
        &lab,
        "tiefighter",
        &["-XPUT", &format!("{URL}/exhaust-port")],
    );
    assert_eq!(denied.as_deref(), Ok("Access denied\r\n"));
    assert_eq!(
        land(&lab, "xwing"),
        Err(28),
        "xwing is still dropped at L3/L4"
    );

    // The proxy's upstream connection to the deathstar keeps tiefighter's address (the
    // deathstar sees who lands), and the kernel hands the deathstar's replies back to the
    // proxy rather than to tiefighter.
    let tiefighter: Vec<String> = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "tiefighter")
        .expect("tiefighter")["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let ct: serde_json::Value =
        serde_json::from_str(&lab.ok(&["bpf", "ct", "-o", "json"])).expect("ct json");
    let upstream = ct
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["from_proxy"] == true)
        .unwrap_or_else(|| panic!("no entry of the proxy's upstream connection: {ct:#}"));
    let source: std::net::SocketAddr = upstream["source"]
        .as_str()
        .expect("source")
        .parse()
        .expect("address");
    assert!(
        tiefighter.contains(&source.ip().to_string()),
        "{upstream:#} is not from {tiefighter:?}"
    );
    assert!(
        upstream["destination"]
            .as_str()
            .expect("destination")
            .ends_with(":80")
    );

    // `myelin policy explain` tells the same story, rule by rule.
    let deathstar = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .find(|n| n.starts_with("deathstar-"))
        .expect("a deathstar pod")
        .to_string();
    let explain = |args: &[&str]| {
        let mut all = vec![
            "policy",
            "explain",
            "--to",
            deathstar.as_str(),
            "--port",
            "80/TCP",
        ];
        all.extend_from_slice(args);
        lab.ok(&all)
    };
    let xwing = explain(&["--from", "xwing"]);
    assert!(xwing.starts_with("verdict: Denied"), "{xwing}");
    let landing = explain(&[
        "--from",
        "tiefighter",
        "--http-method",
        "POST",
        "--http-path",
        "/v1/request-landing",
    ]);
    assert!(landing.starts_with("verdict: Allowed"), "{landing}");
    assert!(landing.contains("rule1"), "{landing}");
    let exhaust = explain(&[
        "--from",
        "tiefighter",
        "--http-method",
        "PUT",
        "--http-path",
        "/v1/exhaust-port",
    ]);
    assert!(exhaust.starts_with("verdict: L7Denied"), "{exhaust}");

    // Keep-alive across an allowed and a denied request: one connection.
    let both = request(
        &lab,
        "tiefighter",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-XPOST",
            &format!("{URL}/request-landing"),
            "--next",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-XPUT",
            &format!("{URL}/exhaust-port"),
        ],
    )
    .expect("two requests");
    assert_eq!(
        both, "200 1\n403 0\n",
        "the second request must reuse the connection"
    );

    // HTTP/2 by h2c upgrade through the transparent redirect: the upgrade request is
    // answered on stream 1, under the same rules.
    let h2c = |method: &str, path: &str| {
        request(
            &lab,
            "tiefighter",
            &[
                "--http2",
                "-w",
                " %{http_version}",
                "-X",
                method,
                &format!("{URL}/{path}"),
            ],
        )
    };
    assert_eq!(
        h2c("POST", "request-landing").as_deref(),
        Ok("Ship landed\n 2")
    );
    assert_eq!(
        h2c("PUT", "exhaust-port").as_deref(),
        Ok("Access denied\r\n 2")
    );

    let last_denial = "http-request DROPPED (HTTP/2 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port)";
    let http = lab.ok_until(
        &[
            "observe",
            "--last",
            "500",
            "--protocol",
            "http",
            "--pod",
            "default/tiefighter",
        ],
        |out| out.contains(last_denial),
    );
    assert!(
        http.lines().any(|l| l.contains("http-request FORWARDED (HTTP/1.1 POST http://deathstar.default.svc.cluster.local/v1/request-landing)")),
        "{http}"
    );
    assert!(
        http.lines()
            .any(|l| l.contains("http-response FORWARDED (HTTP/1.1 200 ")),
        "{http}"
    );
    assert!(
        http.lines().any(|l| l.contains("http-request DROPPED (HTTP/1.1 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port)")),
        "{http}"
    );
    // The redirected packets themselves are traced as to-proxy, as Hubble shows them.
    let traces = lab.ok(&[
        "observe",
        "--last",
        "500",
        "--type",
        "trace",
        "--from-pod",
        "default/tiefighter",
    ]);
    assert!(
        traces
            .lines()
            .any(|l| l.contains(":80 (ID:") && l.contains(" to-proxy FORWARDED (TCP Flags: SYN)")),
        "{traces}"
    );
    assert!(
        http.lines().any(|l| l.contains("http-request FORWARDED (HTTP/2 POST http://deathstar.default.svc.cluster.local/v1/request-landing)")),
        "{http}"
    );
    assert!(http.lines().any(|l| l.contains(last_denial)), "{http}");

    // W3C trace context: the request's traceparent names the trace of its request flow
    // and of its response flow, and the header itself is shown (the agent's default).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let traced = request(
        &lab,
        "tiefighter",
        &[
            "-H",
            &format!("traceparent: {traceparent}"),
            "-XPOST",
            &format!("{URL}/request-landing"),
        ],
    );
    assert_eq!(traced.as_deref(), Ok("Ship landed\n"));
    let traced_request = "http-request FORWARDED (HTTP/1.1 POST http://deathstar.default.svc.cluster.local/v1/request-landing)";
    let by_trace = lab.ok_until(&["observe", "--last", "500", "--trace-id", trace], |out| {
        out.contains(traced_request) && out.contains("http-response FORWARDED")
    });
    assert!(by_trace.contains(traced_request), "{by_trace}");
    assert!(
        by_trace
            .lines()
            .any(|l| l.contains("http-response FORWARDED (HTTP/1.1 200 ")),
        "{by_trace}"
    );
    assert!(
        by_trace
            .lines()
            .all(|l| l.contains("http-request FORWARDED (HTTP/1.1 POST")
                || l.contains("http-response FORWARDED (HTTP/1.1 200 ")),
        "only the traced exchange: {by_trace}"
    );
    let by_header = lab.ok(&[
        "observe",
        "--last",
        "500",
        "--http-header",
        &format!("traceparent:{traceparent}"),
    ]);
    assert!(by_header.contains(traced_request), "{by_header}");
}

#[test]
fn the_proxy_path_survives_agent_and_proxy_restarts() {
    if !privileged("the_proxy_path_survives_agent_and_proxy_restarts") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    lab.ok(&["apply", "-f", path(&policy("sw_l3_l4_l7_policy.yaml"))]);
    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));

    // A stream of requests while the agent restarts: none fails.
    let stream = Command::new(common::MYELIN)
        .env("MYELIN_LAB", &lab.name)
        .args(["lab", "exec", "tiefighter", "--", "sh", "-c"])
        .arg(format!(
            "ok=0; for i in $(seq 1 40); do r=$(curl -s -m 3 -XPOST {URL}/request-landing); [ \"$r\" = 'Ship landed' ] && ok=$((ok+1)); sleep 0.1; done; echo $ok"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the stream");
    std::thread::sleep(Duration::from_millis(800));
    restart(&lab, "agent");
    let output = stream.wait_with_output().expect("stream");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "40",
        "requests failed during the agent restart"
    );

    // A restarted proxy serves new requests within a second.
    restart(&lab, "proxy");
    let started = Instant::now();
    let mut landed = false;
    while started.elapsed() < Duration::from_secs(1) {
        if land(&lab, "tiefighter").as_deref() == Ok("Ship landed\n") {
            landed = true;
            break;
        }
    }
    assert!(
        landed,
        "no request through the restarted proxy succeeded within a second"
    );
    let status = lab.myelin(&["lab", "status"]);
    assert!(status.status.success(), "{}", text(&status));
}
