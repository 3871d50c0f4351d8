//! Hubble fidelity in a running lab, as an operator hunting a drop sees it:
//! curl in the pods, `myelin observe` against the agent. Drops and traces carry
//! their traffic direction, every dropped SYN is a flow, the ring is in time
//! order, endpoints carry Cilium's labels (and policies select on them), and an
//! L7 request through the node's proxy is one policy verdict, not two.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Lab, starwars, text};
use myelin_test_support::privileged;
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/starwars")
        .join(name)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `myelin observe ARGS -o json`, one flow per line.
fn flows(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["observe", "-o", "json"];
    all.extend_from_slice(args);
    parse_flows(&lab.ok(&all))
}

fn parse_flows(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

/// Polls `myelin observe ARGS -o json` until `done` holds of its flows (the
/// agent reads the kernel's events every few milliseconds); the last answer.
fn flows_until(lab: &Lab, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut all = vec!["observe", "-o", "json"];
    all.extend_from_slice(args);
    parse_flows(&lab.ok_until(&all, |out| done(&parse_flows(out))))
}

fn direction(flow: &Value) -> &str {
    flow["traffic_direction"]
        .as_str()
        .unwrap_or("TRAFFIC_DIRECTION_UNKNOWN")
}

fn tcp_source_port(flow: &Value) -> u64 {
    flow["l4"]["TCP"]["source_port"].as_u64().unwrap_or(0)
}

fn uuids(flows: &[Value]) -> BTreeSet<String> {
    flows
        .iter()
        .filter_map(|f| f["uuid"].as_str().map(str::to_owned))
        .collect()
}

fn labels(endpoint: &Value) -> Vec<&str> {
    endpoint["labels"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A flow's time as (seconds text, nanoseconds): `2026-12-07T17:35:35.123Z`
/// has a fraction of 0, 3, 6 or 9 digits.
fn time_key(flow: &Value) -> (String, u32) {
    let time = flow["time"].as_str().expect("time");
    let time = time.strip_suffix('Z').expect("UTC");
    let (seconds, fraction) = time.split_once('.').unwrap_or((time, ""));
    let nanos = format!("{fraction:0<9}").parse().expect("fraction");
    (seconds.to_string(), nanos)
}

/// Filter flags and what every flow they return must satisfy.
type FilterCheck<'a> = (&'a [&'a str], &'a dyn Fn(&Value) -> bool);

/// curl's exit code (0: answered; 28: timed out).
fn curl_code(lab: &Lab, pod: &str, args: &[&str]) -> i32 {
    let mut command = vec!["curl", "-s", "-o", "/dev/null"];
    command.extend_from_slice(args);
    lab.exec(pod, &command).status.code().unwrap_or(-1)
}

#[test]
fn drops_traces_labels_order_and_verdicts_as_hubble_shows_them() {
    if !privileged("drops_traces_labels_order_and_verdicts_as_hubble_shows_them") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let dir = tempfile::tempdir().expect("tempdir");
    let deathstar = lab.pod_address("deathstar-", 4);
    let landing = format!("http://{deathstar}/v1/request-landing");

    // Item 5: every dropped SYN is a flow. xwing's curl retransmits its SYN
    // at about +1 s and +3 s; each is dropped by rule1 and each is reported
    // (one per 5 s per connection before).
    lab.ok(&["apply", "-f", path(&example("sw_l3_l4_policy.yaml"))]);
    assert_eq!(
        curl_code(&lab, "xwing", &["-m", "5", "-XPOST", &landing]),
        28,
        "xwing's SYNs must be dropped"
    );
    let drops = flows_until(
        &lab,
        &[
            "--last",
            "500",
            "--type",
            "drop",
            "--from-pod",
            "default/xwing",
        ],
        |f| {
            let mut per_port = BTreeMap::<u64, usize>::new();
            for flow in f {
                *per_port.entry(tcp_source_port(flow)).or_default() += 1;
            }
            per_port.values().any(|n| *n >= 2)
        },
    );
    let mut per_port = BTreeMap::<u64, usize>::new();
    for flow in &drops {
        *per_port.entry(tcp_source_port(flow)).or_default() += 1;
    }
    assert!(
        per_port.values().any(|n| *n >= 2),
        "one connection's retransmitted SYNs must each be a drop flow: {per_port:?}\n{drops:#?}"
    );

    // Item 4: the drops carry their direction (ingress: rule1 is the
    // deathstar's ingress policy), so Hubble's direction filter finds them.
    assert!(
        drops.iter().all(|f| direction(f) == "INGRESS"),
        "{drops:#?}"
    );
    let ingress = flows(
        &lab,
        &[
            "--last",
            "500",
            "--type",
            "drop",
            "--from-pod",
            "default/xwing",
            "--traffic-direction",
            "ingress",
        ],
    );
    // (More of the later SYNs' drops may have arrived meanwhile.)
    assert!(uuids(&drops).is_subset(&uuids(&ingress)), "{ingress:#?}");
    let egress_filter = [
        "--last",
        "500",
        "--verdict",
        "DROPPED",
        "--from-pod",
        "default/xwing",
        "--traffic-direction",
        "egress",
    ];
    assert!(flows(&lab, &egress_filter).is_empty());
    // A drop by xwing's own egress policy is an egress drop.
    let egress_policy = dir.path().join("xwing-egress.yaml");
    std::fs::write(
        &egress_policy,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: xwing-egress}\n\
         spec:\n  endpointSelector: {matchLabels: {class: xwing}}\n  \
         egress:\n  - toEndpoints:\n    - matchLabels: {class: tiefighter}\n",
    )
    .expect("write policy");
    lab.ok(&["apply", "-f", path(&egress_policy)]);
    assert_eq!(
        curl_code(&lab, "xwing", &["-m", "2", "-XPOST", &landing]),
        28
    );
    let egress_drops = flows_until(&lab, &egress_filter, |f| !f.is_empty());
    assert!(!egress_drops.is_empty(), "no egress drop of xwing");
    assert!(
        egress_drops
            .iter()
            .all(|f| f["drop_reason_desc"] == "POLICY_DENIED"),
        "{egress_drops:#?}"
    );
    lab.ok(&["delete", "-f", path(&egress_policy)]);
    // Traces too: tiefighter's landing leaves tiefighter (egress) and enters
    // the deathstar (ingress); no trace of it is without a direction.
    assert_eq!(
        curl_code(&lab, "tiefighter", &["-m", "5", "-XPOST", &landing]),
        0
    );
    let traces = flows_until(
        &lab,
        &[
            "--last",
            "500",
            "--type",
            "trace",
            "--from-pod",
            "default/tiefighter",
            "--to-pod",
            "default/deathstar",
        ],
        |f| {
            f.iter().any(|t| direction(t) == "EGRESS")
                && f.iter().any(|t| direction(t) == "INGRESS")
        },
    );
    assert!(
        traces.iter().any(|t| direction(t) == "EGRESS")
            && traces.iter().any(|t| direction(t) == "INGRESS")
            && traces
                .iter()
                .all(|t| direction(t) != "TRAFFIC_DIRECTION_UNKNOWN"),
        "{traces:#?}"
    );
    // Suppressed drop events (the rate limit) are counted where an operator
    // looks: the node's metrics.
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("ml-{}_node1", lab.name),
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:9965/metrics",
        ])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("myelin_datapath_drop_events_suppressed_total")),
        "{metrics}"
    );

    // Item 7: labels as Cilium writes them, and policies that select on them.
    let from_tiefighter = flows(&lab, &["--all", "--from-pod", "default/tiefighter"]);
    let source = &from_tiefighter.first().expect("a flow of tiefighter")["source"];
    let tiefighter_labels = labels(source);
    for want in [
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:class=tiefighter",
    ] {
        assert!(tiefighter_labels.contains(&want), "{want}: {source:#}");
    }
    assert_eq!(source["cluster_name"], "default", "{source:#}");
    // `--cluster` takes hubble's patterns; endpoints of the lab are in `default`.
    // (Flows are only added meanwhile: every earlier flow must be found.)
    for cluster in ["default", "def*"] {
        let found = flows(
            &lab,
            &[
                "--all",
                "--from-pod",
                "default/tiefighter",
                "--from-cluster",
                cluster,
            ],
        );
        assert!(
            uuids(&from_tiefighter).is_subset(&uuids(&found)),
            "--from-cluster {cluster}: {} of {}",
            found.len(),
            from_tiefighter.len()
        );
    }
    assert!(
        flows(
            &lab,
            &[
                "--all",
                "--from-pod",
                "default/tiefighter",
                "--cluster",
                "prod-*"
            ]
        )
        .is_empty()
    );
    // The node itself: its flows' source is `reserved:host`, without `=`.
    let node = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("ml-{}_node1", lab.name),
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "3",
            &format!("http://{deathstar}/v1/"),
        ])
        .output()
        .expect("curl from the node");
    eprintln!("curl from the node: {}", text(&node));
    let from_host = flows_until(&lab, &["--last", "500", "--from-identity", "host"], |f| {
        !f.is_empty()
    });
    let host = &from_host.first().expect("a flow from the host")["source"];
    assert_eq!(labels(host), ["reserved:host"], "{host:#}");

    // A policy on the service account and the cluster (both labels must be
    // on the peer's identity): only pods of `imperial` may land.
    let probe = dir.path().join("probe.yaml");
    std::fs::write(
        &probe,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: probe, labels: {app: probe}}\n\
         spec:\n  serviceAccountName: imperial\n  \
         containers:\n  - {name: c, image: quay.io/cilium/json-mock:v1.3.8}\n",
    )
    .expect("write pod");
    lab.ok(&["apply", "-f", path(&probe)]);
    lab.ok(&["delete", "-f", path(&example("sw_l3_l4_policy.yaml"))]);
    let by_account = dir.path().join("by-account.yaml");
    std::fs::write(
        &by_account,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: by-account}\n\
         spec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  \
         ingress:\n  - fromEndpoints:\n    - matchLabels:\n        io.cilium.k8s.policy.serviceaccount: imperial\n        \
         io.cilium.k8s.policy.cluster: default\n",
    )
    .expect("write policy");
    lab.ok(&["apply", "-f", path(&by_account)]);
    assert_eq!(
        curl_code(&lab, "probe", &["-m", "5", "-XPOST", &landing]),
        0,
        "the imperial service account may land"
    );
    assert_eq!(
        curl_code(&lab, "tiefighter", &["-m", "2", "-XPOST", &landing]),
        28,
        "tiefighter's service account is `default`"
    );
    let probe_flows = flows(&lab, &["--last", "50", "--from-pod", "default/probe"]);
    let probe_source = &probe_flows.first().expect("a flow of probe")["source"];
    assert!(
        labels(probe_source).contains(&"k8s:io.cilium.k8s.policy.serviceaccount=imperial"),
        "{probe_source:#}"
    );
    lab.ok(&["delete", "-f", path(&by_account)]);

    // Item 8: through the node's proxy, one policy verdict per request's
    // connection (the proxy's upstream connection reports none).
    lab.ok(&["apply", "-f", path(&example("sw_l3_l4_l7_policy.yaml"))]);
    let before = flows(&lab, &["--last", "1"]);
    let since = before
        .first()
        .and_then(|f| f["time"].as_str())
        .expect("a flow")
        .to_string();
    const REQUESTS: usize = 3;
    for _ in 0..REQUESTS {
        assert_eq!(
            curl_code(&lab, "tiefighter", &["-m", "5", "-XPOST", &landing]),
            0
        );
    }
    let verdict_filter = [
        "--since",
        since.as_str(),
        "--type",
        "policy-verdict",
        "--from-pod",
        "default/tiefighter",
        "--to-pod",
        "default/deathstar",
    ];
    let l7 = flows_until(
        &lab,
        &[
            "--since",
            since.as_str(),
            "--type",
            "l7",
            "--pod",
            "default/tiefighter",
        ],
        |f| f.len() >= 2 * REQUESTS,
    );
    assert_eq!(
        l7.len(),
        2 * REQUESTS,
        "a request and a response each: {l7:#?}"
    );
    // The newest flow before the requests may be a denied SYN of tiefighter's
    // (the step above) at exactly `since`: only allowed verdicts count.
    let verdicts: Vec<Value> = flows(&lab, &verdict_filter)
        .into_iter()
        .filter(|v| v["verdict"] != "DROPPED")
        .collect();
    let ports: BTreeSet<u64> = verdicts.iter().map(tcp_source_port).collect();
    assert_eq!(
        (verdicts.len(), ports.len()),
        (REQUESTS, REQUESTS),
        "one verdict per connection of curl: {verdicts:#?}"
    );

    // Item 6: the ring is in time order, L7 flows among their packets.
    let ring = flows(&lab, &["--all"]);
    assert!(ring.len() > 50, "{}", ring.len());
    for pair in ring.windows(2) {
        assert!(
            time_key(&pair[0]) <= time_key(&pair[1]),
            "out of order:\n{:#}\n{:#}",
            pair[0],
            pair[1]
        );
    }

    // Items 1-3 through the CLI: the filters hubble used to get every flow or
    // none for, each answered by the flows it names.
    let tiefighter_flows = flows(&lab, &["--all", "--from-pod", "default/tiefighter"]);
    let veth = tiefighter_flows
        .iter()
        .find_map(|f| f["interface"]["name"].as_str())
        .expect("a kernel flow of tiefighter with its interface")
        .to_string();
    let checks: [FilterCheck; 8] = [
        (&["-A"], &|_| true),
        (&["--from-all-namespaces"], &|f| {
            !f["source"]["namespace"].is_null()
        }),
        (&["--pod", "/tiefighter"], &|f| {
            f["source"]["pod_name"] == "tiefighter" || f["destination"]["pod_name"] == "tiefighter"
        }),
        (&["--node-name", "default/node1"], &|f| {
            f["node_name"] == "node1"
        }),
        (&["--node-name", "node*"], &|f| f["node_name"] == "node1"),
        (&["--node-label", "kubernetes.io/hostname=node1"], &|f| {
            f["node_name"] == "node1"
        }),
        (&["--interface", veth.as_str()], &|f| {
            f["interface"]["name"] == veth.as_str()
        }),
        (
            &[
                "--cel-expression",
                "_flow.source.pod_name == 'tiefighter' && _flow.verdict == 1",
            ],
            &|f| f["source"]["pod_name"] == "tiefighter" && f["verdict"] == "FORWARDED",
        ),
    ];
    for (args, holds) in checks {
        let mut all = vec!["--last", "100"];
        all.extend_from_slice(args);
        let found = flows(&lab, &all);
        assert!(!found.is_empty(), "{args:?} found nothing");
        assert!(found.iter().all(holds), "{args:?}: {found:#?}");
    }

    // Item 1 through the CLI: a filter the agent cannot honour is an error
    // naming it, never every flow.
    let snat = lab.myelin(&["observe", "--snat-ip", "10.0.0.1"]);
    assert!(!snat.status.success());
    assert!(
        text(&snat).contains("source_ip_xlated") && text(&snat).contains("--snat-ip"),
        "{}",
        text(&snat)
    );
}
