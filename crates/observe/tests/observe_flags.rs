//! Hubble 1.19's filter flags through the whole `observe` command line: the
//! request it builds, and which flows the server's filters then pass.

mod common;

use clap::Parser;
use common::*;
use myelin_observe::cli::build_request;
use myelin_observe::proto::flow::{Flow, NetworkInterface};
use myelin_observe::{FilterSet, ObserveArgs};

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: ObserveArgs,
}

fn args(argv: &[&str]) -> ObserveArgs {
    let full = std::iter::once("observe").chain(argv.iter().copied());
    Cmd::try_parse_from(full)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
}

/// 0: the landing request as the agent writes it on node1 (node labels, the
/// deathstar's veth, cluster `default` on both ends); 1: the same on node2,
/// seen on another veth, from a client in no cluster; 2: xwing's drop, in
/// namespace `rebels`, with none of these fields.
fn flows() -> Vec<Flow> {
    let mut a = landing_request();
    a.node_labels = vec!["kubernetes.io/hostname=node1".into()];
    a.interface = Some(NetworkInterface {
        index: 12,
        name: "lxc-deathstar".into(),
    });
    for end in [a.source.as_mut(), a.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        end.cluster_name = "default".into();
    }
    let mut b = a.clone();
    b.node_labels = vec!["kubernetes.io/hostname=node2".into()];
    b.interface = Some(NetworkInterface {
        index: 4,
        name: "lxc-other".into(),
    });
    if let Some(source) = b.source.as_mut() {
        source.cluster_name = String::new();
    }
    let mut c = xwing_drop();
    if let Some(source) = c.source.as_mut() {
        source.namespace = "rebels".into();
    }
    vec![a, b, c]
}

fn shown(argv: &[&str]) -> Vec<usize> {
    let request = build_request(&args(argv)).unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    let set = FilterSet::new(&request.whitelist, &request.blacklist)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    flows()
        .iter()
        .enumerate()
        .filter(|(_, f)| set.matches(f))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn new_flags_select_the_flows_hubble_would() {
    let table: &[(&[&str], &[usize])] = &[
        (&["--node-label", "kubernetes.io/hostname=node1"], &[0]),
        (
            &["--not", "--node-label", "kubernetes.io/hostname=node1"],
            &[1, 2],
        ),
        (&["--interface", "lxc-deathstar"], &[0]),
        (&["--cluster", "default"], &[0, 1]),
        (&["--from-cluster", "default"], &[0]),
        (
            &[
                "--to-cluster",
                "default",
                "--not",
                "--from-cluster",
                "default",
            ],
            &[1],
        ),
        (&["--unencrypted"], &[0, 1, 2]),
        (&["--encrypted"], &[]),
        (&["-A"], &[0, 1, 2]),
        (&["--from-all-namespaces", "--pod", "xwing"], &[2]),
        (&["--cel-expression", "_flow.verdict == 2"], &[2]),
        (
            &[
                "--cel-expression",
                "_flow.interface.name.startsWith('lxc')",
                "-A",
            ],
            &[0, 1],
        ),
    ];
    for (argv, want) in table {
        assert_eq!(shown(argv), *want, "{argv:?}");
    }
}

#[test]
fn snat_ip_and_ip_trace_id_are_in_the_request_filters() {
    let filters = args(&["--snat-ip", "10.0.0.0/24", "--ip-trace-id", "42"])
        .filters
        .whitelist_filters()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(filters.len(), 1);
    assert_eq!(filters[0].source_ip_xlated, ["10.0.0.0/24"]);
    assert_eq!(filters[0].ip_trace_id, [42]);
    // The agent refuses them, naming the flag.
    let err = FilterSet::new(&filters, &[]).expect_err("refused");
    assert!(err.to_string().contains("--snat-ip"), "{err}");
    // The command still sends them: the server answers for itself.
    let request = build_request(&args(&["--snat-ip", "10.0.0.0/24"]))
        .unwrap_or_else(|e| panic!("the request is built: {e:#}"));
    assert_eq!(request.whitelist[0].source_ip_xlated, ["10.0.0.0/24"]);
}
