//! The observer API of a real agent in the lab, through the gRPC client
//! generated from the project's own protos, while Star Wars traffic flows:
//! GetFlows (follow with a filter, and a count), `myelin observe --not`,
//! `myelin observe agent-events`,
//! ServerStatus, GetNodes, GetNamespaces and the gRPC health service on the
//! node's unix socket;
//! then the agent's metrics, scraped inside the node, through
//! `promtool check metrics`, and counters that move with more traffic.
//!
//! promtool comes with Debian's prometheus package; in CI (`CI=true`) a
//! missing promtool fails the test, elsewhere that part is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Lab, starwars, text};
use myelin_observe::cli::{self, TlsArgs};
use myelin_observe::proto::flow::{DropReason, Flow, FlowFilter, Verdict, layer4};
use myelin_observe::proto::observer::{
    GetFlowsRequest, GetNamespacesRequest, GetNodesRequest, ServerStatusRequest, get_flows_response,
};
use myelin_observe::proto::relay::NodeState;
use myelin_test_support::privileged;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const URL: &str = "http://deathstar.default.svc.cluster.local/v1/request-landing";
/// Longest the followed stream may take to bring xwing's drop.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn l3_l4_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starwars/sw_l3_l4_policy.yaml")
}

/// One landing request from `pod`: curl's body, or its exit code (28: timed out).
fn land(lab: &Lab, pod: &str) -> Result<String, i32> {
    let output = lab.exec(pod, &["curl", "-s", "-m", "3", "-XPOST", URL]);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(output.status.code().unwrap_or(-1))
    }
}

/// The node agent's metrics, scraped from inside the node.
fn scrape(lab: &Lab) -> String {
    let node = format!("ml-{}_node1", lab.name);
    let output = Command::new("ip")
        .args(["netns", "exec", &node, "curl", "-s", "-m", "5"])
        .arg("http://127.0.0.1:9965/metrics")
        .output()
        .expect("run curl in the node");
    assert!(output.status.success(), "scrape failed: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The sum of the samples of `family` whose labels contain every one of `labels`.
fn counter(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// `promtool check metrics` over `metrics`: the lines it reports, apart from
/// the one lint expected of OpenMetrics text (explained below).
fn promtool_findings(promtool: &Path, metrics: &str) -> Vec<String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin.write_all(metrics.as_bytes()).expect("write metrics");
    }
    let output = child.wait_with_output().expect("promtool output");
    // promtool 2.42 reads the classic text format, where a counter's HELP
    // names the sample (`x_total`); OpenMetrics names the family (`x`), so
    // promtool says "x_total no help text" although `# HELP x` is there.
    // That lint, and only that lint, is expected (as in crates/observe's
    // tests/metrics.rs); anything else is a finding.
    let report = text(&output);
    report
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            let family = line
                .strip_suffix(" no help text")
                .and_then(|sample| sample.strip_suffix("_total"));
            !family.is_some_and(|family| metrics.contains(&format!("# HELP {family} ")))
        })
        .map(str::to_string)
        .collect()
}

fn flow_of(response: get_flows_response::ResponseTypes) -> Option<Flow> {
    match response {
        get_flows_response::ResponseTypes::Flow(flow) => Some(flow),
        _ => None,
    }
}

fn is_syn(flow: &Flow) -> bool {
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(tcp)) => tcp.flags.is_some_and(|f| f.syn && !f.ack),
        _ => false,
    }
}

#[test]
fn observer_api_and_metrics_of_a_real_agent() {
    if !privileged("observer_api_and_metrics_of_a_real_agent") {
        return;
    }
    let lab = Arc::new(Lab::named());
    lab.up(&starwars());
    let applied = lab.ok(&["apply", "-f", l3_l4_policy().to_str().expect("utf-8")]);
    assert!(applied.contains("rule1 created"), "{applied}");
    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let socket = myelin_lab::LabNames::new(&lab.name).observer_socket("node1");
    let server = format!("unix://{}", socket.display());
    let mut client = runtime
        .block_on(cli::connect(&server))
        .expect("connect to the node's observer socket");

    // The health service the hubble CLI checks first.
    let health = runtime
        .block_on(async {
            let channel = cli::channel(&server, &TlsArgs::default()).await?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "hubble.server.Observer".to_string(),
                })
                .await?;
            anyhow::Ok(response.into_inner().status)
        })
        .expect("health check");
    assert_eq!(health, ServingStatus::Serving as i32);

    // Follow only xwing's drops; the call is established before xwing tries.
    let started = SystemTime::now();
    let mut stream = runtime
        .block_on(client.get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                source_pod: vec!["default/xwing".to_string()],
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        }))
        .expect("GetFlows follow")
        .into_inner();
    let followed = runtime.spawn(async move {
        tokio::time::timeout(FOLLOW_WAIT, async {
            while let Some(response) = stream.message().await? {
                if let Some(flow) = response.response_types.and_then(flow_of) {
                    return anyhow::Ok(Some(flow));
                }
            }
            Ok(None)
        })
        .await
    });
    let xwing = {
        let lab = Arc::clone(&lab);
        std::thread::spawn(move || land(&lab, "xwing"))
    };
    assert_eq!(
        xwing.join().expect("xwing's curl"),
        Err(28),
        "xwing's SYN must be dropped"
    );
    let flow = runtime
        .block_on(followed)
        .expect("follower task")
        .unwrap_or_else(|_| panic!("no flow within {FOLLOW_WAIT:?} on the followed stream"))
        .expect("the followed stream")
        .expect("the followed stream ended without a flow");
    let source = flow.source.clone().unwrap_or_default();
    let destination = flow.destination.clone().unwrap_or_default();
    assert_eq!(
        (source.namespace.as_str(), source.pod_name.as_str()),
        ("default", "xwing"),
        "{flow:?}"
    );
    assert!(destination.pod_name.starts_with("deathstar-"), "{flow:?}");
    assert_eq!(flow.verdict, Verdict::Dropped as i32, "{flow:?}");
    assert_eq!(
        flow.drop_reason_desc,
        DropReason::PolicyDenied as i32,
        "{flow:?}"
    );
    assert!(is_syn(&flow), "not a SYN: {flow:?}");
    let flow_time = flow
        .time
        .and_then(|t| SystemTime::try_from(t).ok())
        .expect("flow time");
    assert!(
        flow_time >= started,
        "a flow from before the call: {flow_time:?} < {started:?}"
    );

    // `observe --not --verdict FORWARDED`, hubble's negation, through the
    // CLI: the blacklist reaches the agent, which sends no forwarded flow.
    let not_forwarded = lab.ok(&["observe", "--all", "--not", "--verdict", "FORWARDED"]);
    let lines: Vec<&str> = not_forwarded.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("default/xwing:")),
        "xwing's drop is missing:\n{not_forwarded}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" DROPPED (") || l.contains(" DENIED (")),
        "a flow that is not DROPPED:\n{not_forwarded}"
    );

    // `observe agent-events`, hubble's subcommand: the policy applied above
    // and the endpoints it regenerated, the pods' creation, as hubble prints them.
    let events = lab.ok(&["observe", "agent-events", "--last", "50"]);
    let lines: Vec<&str> = events.lines().collect();
    let policy = lines
        .iter()
        .position(|l| {
            l.contains(": POLICY_UPDATED (labels: [k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy,k8s:io.cilium.k8s.policy.name=rule1,k8s:io.cilium.k8s.policy.namespace=default], revision: ")
                && l.ends_with(", count: 1)")
        })
        .unwrap_or_else(|| panic!("no policy update for rule1:\n{events}"));
    assert!(
        lines[policy..]
            .iter()
            .any(|l| l.contains(": ENDPOINT_REGENERATE_SUCCESS (id: ")
                && l.contains("k8s:class=deathstar")),
        "no deathstar regeneration after the policy update:\n{events}"
    );
    let all_events = lab.ok(&["observe", "agent-events", "--all"]);
    assert!(
        all_events
            .lines()
            .next()
            .is_some_and(|l| l.contains(": AGENT_STARTED (start time: ")),
        "the agent's start comes first:\n{all_events}"
    );
    for expected in [
        ", namespace: default, pod name: xwing)",
        ", namespace: default, pod name: tiefighter)",
    ] {
        assert!(
            all_events
                .lines()
                .any(|l| l.contains(": ENDPOINT_CREATED (id: ") && l.ends_with(expected)),
            "no ENDPOINT_CREATED ending {expected:?}:\n{all_events}"
        );
    }
    assert!(
        all_events
            .lines()
            .any(|l| l.contains(": IPCACHE_UPSERTED (cidr: ") && l.contains("/32, identity: ")),
        "no ipcache upsert:\n{all_events}"
    );
    assert!(
        all_events.lines().any(|l| l.contains(": SERVICE_UPSERTED (id: ")
            && l.ends_with(", type: ClusterIP, traffic policy: Cluster, namespace: default, name: deathstar)")),
        "no deathstar service upsert:\n{all_events}"
    );

    // A count: at most that many flows (the ring holds more).
    for number in [1u64, 7] {
        let flows = runtime
            .block_on(async {
                let mut stream = client
                    .get_flows(GetFlowsRequest {
                        number,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let mut flows = 0u64;
                while let Some(response) = stream.message().await? {
                    flows += u64::from(response.response_types.and_then(flow_of).is_some());
                }
                anyhow::Ok(flows)
            })
            .expect("GetFlows number");
        assert!(
            (1..=number).contains(&flows),
            "{flows} flows for number={number}"
        );
    }

    let status = runtime
        .block_on(client.server_status(ServerStatusRequest {}))
        .expect("ServerStatus")
        .into_inner();
    assert!(status.num_flows > 0, "{status:?}");
    assert_eq!(status.max_flows, 4095, "{status:?}");
    assert!(status.seen_flows >= status.num_flows, "{status:?}");

    let nodes = runtime
        .block_on(client.get_nodes(GetNodesRequest {}))
        .expect("GetNodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].name, "node1", "{nodes:?}");
    assert_eq!(nodes[0].state, NodeState::NodeConnected as i32);
    assert!(nodes[0].num_flows > 0, "{nodes:?}");

    let namespaces = runtime
        .block_on(client.get_namespaces(GetNamespacesRequest {}))
        .expect("GetNamespaces")
        .into_inner()
        .namespaces;
    assert!(
        namespaces.iter().any(|n| n.namespace == "default"),
        "{namespaces:?}"
    );

    // Metrics: promtool accepts them, and counters move with traffic.
    let before = scrape(&lab);
    match find_on_path("promtool") {
        Some(promtool) => {
            let findings = promtool_findings(&promtool, &before);
            assert!(
                findings.is_empty(),
                "promtool check metrics:\n{}\n\nmetrics:\n{before}",
                findings.join("\n")
            );
        }
        None => {
            assert!(
                !in_ci(),
                "CI=true requires promtool (apt-get install prometheus)"
            );
            eprintln!("promtool not installed; skipping the promtool check");
        }
    }
    let processed = |m: &str| counter(m, "hubble_flows_processed_total", &[]);
    let denied = |m: &str| {
        counter(
            m,
            "hubble_drop_total",
            &["reason=\"POLICY_DENIED\"", "protocol=\"TCP\""],
        )
    };
    assert!(processed(&before) > 0.0, "{before}");
    assert!(denied(&before) > 0.0, "{before}");

    assert_eq!(land(&lab, "tiefighter").as_deref(), Ok("Ship landed\n"));
    assert_eq!(land(&lab, "xwing"), Err(28));
    let after = scrape(&lab);
    assert!(
        processed(&after) > processed(&before),
        "hubble_flows_processed_total did not move: {} -> {}",
        processed(&before),
        processed(&after)
    );
    assert!(
        denied(&after) > denied(&before),
        "hubble_drop_total{{reason=\"POLICY_DENIED\"}} did not move: {} -> {}",
        denied(&before),
        denied(&after)
    );
}
