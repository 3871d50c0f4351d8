//! FlowFilter semantics on the Star Wars flows.

mod common;

use common::*;
use myelin_observe::FilterSet;
use myelin_observe::flows;
use myelin_observe::proto::flow::{
    DropReason, EventTypeFilter, Flow, FlowFilter, HttpHeader, IpVersion, TcpFlags, TraceContext,
    TraceParent, TrafficDirection, Verdict, Workload, layer7,
};

/// Indexes (into `demo()`) of the flows that pass.
fn passing(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Vec<usize> {
    let set = FilterSet::new(whitelist, blacklist).expect("valid filters");
    demo()
        .iter()
        .enumerate()
        .filter(|(_, f)| set.matches(f))
        .map(|(i, _)| i)
        .collect()
}

fn one(f: FlowFilter) -> Vec<usize> {
    passing(&[f], &[])
}

// demo(): 0 tiefighter verdict, 1 synack reply, 2 POST request, 3 200 response,
// 4 PUT request dropped, 5 403 response, 6 xwing verdict, 7 xwing drop.

#[test]
fn empty_lists_pass_everything() {
    assert_eq!(passing(&[], &[]), (0..8).collect::<Vec<_>>());
}

#[test]
fn pod_prefix_and_namespace() {
    let f = FlowFilter {
        source_pod: vec!["xwing".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![6, 7]);
    let f = FlowFilter {
        source_pod: vec!["default/tie".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 2, 4]);
    let f = FlowFilter {
        destination_pod: vec!["default/".into()],
        ..Default::default()
    };
    assert_eq!(one(f).len(), 8);
    let f = FlowFilter {
        source_pod: vec!["kube-system/".into()],
        ..Default::default()
    };
    assert!(one(f).is_empty());
    // Without a namespace the pod is looked up in "default" only.
    let mut other_ns = xwing_drop();
    other_ns.source.as_mut().expect("source").namespace = "rebels".into();
    let set = FilterSet::new(
        &[FlowFilter {
            source_pod: vec!["xwing".into()],
            ..Default::default()
        }],
        &[],
    )
    .expect("valid");
    assert!(!set.matches(&other_ns));
}

#[test]
fn fields_and_within_filter_or_across_filters() {
    let both = FlowFilter {
        source_pod: vec!["tiefighter".into()],
        verdict: vec![Verdict::Dropped as i32],
        ..Default::default()
    };
    assert_eq!(one(both), vec![4]);
    let xwing = FlowFilter {
        source_pod: vec!["xwing".into()],
        ..Default::default()
    };
    let dropped = FlowFilter {
        verdict: vec![Verdict::Dropped as i32],
        ..Default::default()
    };
    assert_eq!(passing(&[xwing.clone(), dropped], &[]), vec![4, 6, 7]);
    // Blacklist wins over the whitelist.
    let verdicts = FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: flows::MESSAGE_TYPE_POLICY_VERDICT,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(passing(&[xwing], &[verdicts]), vec![7]);
}

#[test]
fn blacklist_alone_and_any_of_its_filters() {
    let forwarded = FlowFilter {
        verdict: vec![Verdict::Forwarded as i32],
        ..Default::default()
    };
    // No whitelist: everything but what the blacklist matches.
    assert_eq!(
        passing(&[], std::slice::from_ref(&forwarded)),
        vec![4, 6, 7]
    );
    // A flow goes if it matches any blacklist filter.
    let xwing = FlowFilter {
        source_pod: vec!["xwing".into()],
        ..Default::default()
    };
    assert_eq!(passing(&[], &[forwarded, xwing]), vec![4]);
}

#[test]
fn labels_identity_ip_port_protocol() {
    let f = FlowFilter {
        source_label: vec!["org=empire".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 1, 2, 3, 4, 5]);
    let f = FlowFilter {
        source_label: vec!["k8s:class in (xwing, tiefighter),org!=empire".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![6, 7]);
    let f = FlowFilter {
        source_label: vec!["reserved:class=xwing".into()],
        ..Default::default()
    };
    assert!(one(f).is_empty());
    let f = FlowFilter {
        destination_label: vec!["!class".into()],
        ..Default::default()
    };
    assert!(one(f).is_empty());
    let f = FlowFilter {
        source_identity: vec![XWING_ID],
        ..Default::default()
    };
    assert_eq!(one(f), vec![6, 7]);
    let f = FlowFilter {
        source_ip: vec!["10.0.1.0/28".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 2, 4, 6, 7]);
    let f = FlowFilter {
        destination_ip: vec![DEATHSTAR_IP.into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 2, 4, 6, 7]);
    let f = FlowFilter {
        destination_port: vec!["80".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 2, 4, 6, 7]);
    let f = FlowFilter {
        source_port: vec!["42742".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![4]);
    let f = FlowFilter {
        protocol: vec!["http".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![2, 3, 4, 5]);
    let f = FlowFilter {
        protocol: vec!["TCP".into()],
        ..Default::default()
    };
    assert_eq!(one(f).len(), 8);
    let f = FlowFilter {
        ip_version: vec![IpVersion::IPv6 as i32],
        ..Default::default()
    };
    assert!(one(f).is_empty());
}

#[test]
fn event_types_and_subtypes() {
    let trace_to_endpoint = FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 0,
        }],
        ..Default::default()
    };
    assert_eq!(one(trace_to_endpoint), vec![1]);
    let trace_to_proxy = FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 1,
        }],
        ..Default::default()
    };
    assert!(one(trace_to_proxy).is_empty());
    let drops = FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(one(drops), vec![7]);
    let l7 = FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: 129,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(one(l7), vec![2, 3, 4, 5]);
}

#[test]
fn http_fields() {
    let f = FlowFilter {
        http_method: vec!["put".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![4, 5]);
    let f = FlowFilter {
        http_path: vec!["^/v1/request-.*$".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![2, 3]);
    let f = FlowFilter {
        http_status_code: vec!["4+".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![5]);
    let f = FlowFilter {
        http_status_code: vec!["200".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![3]);
    let f = FlowFilter {
        http_status_code: vec!["5+".into()],
        ..Default::default()
    };
    assert!(one(f).is_empty());
    for bad in ["6xx", "2000", "+", "0+"] {
        let f = FlowFilter {
            http_status_code: vec![bad.into()],
            ..Default::default()
        };
        assert!(FilterSet::new(&[f], &[]).is_err(), "{bad} must be rejected");
    }
}

#[test]
fn direction_reply_node_and_flags() {
    let f = FlowFilter {
        traffic_direction: vec![TrafficDirection::Egress as i32],
        ..Default::default()
    };
    assert_eq!(one(f), vec![1]);
    let f = FlowFilter {
        reply: vec![true],
        ..Default::default()
    };
    assert_eq!(one(f), vec![1, 3, 5]);
    // Drops have no is_reply; they count as non-replies.
    let f = FlowFilter {
        reply: vec![false],
        ..Default::default()
    };
    assert_eq!(one(f), vec![0, 2, 4, 6, 7]);
    let f = FlowFilter {
        node_name: vec!["node-*".into()],
        ..Default::default()
    };
    assert_eq!(one(f).len(), 8);
    let f = FlowFilter {
        node_name: vec!["other".into()],
        ..Default::default()
    };
    assert!(one(f).is_empty());
    let f = FlowFilter {
        tcp_flags: vec![TcpFlags {
            syn: true,
            ack: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(one(f), vec![1]);
}

#[test]
fn http_url_uuid_and_ip_version_as_hubble() {
    // --http-url: a regular expression over the whole URL, scheme and host included.
    let f = FlowFilter {
        http_url: vec![r"^http://deathstar\.default\.svc\.cluster\.local/v1/exhaust".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![4, 5]);
    let f = FlowFilter {
        http_url: vec!["request-landing$".into()],
        ..Default::default()
    };
    assert_eq!(one(f), vec![2, 3]);
    let bad = FlowFilter {
        http_url: vec!["(".into()],
        ..Default::default()
    };
    let err = FilterSet::new(&[bad], &[]).expect_err("bad regex");
    assert!(err.to_string().contains("in http_url"), "{err}");

    // --uuid: exact identifiers.
    let mut flows = demo();
    flows[3].uuid = "a8c7e7a4-4a40-4a31-9c5e-0d2b8f5f3c11".into();
    let set = FilterSet::new(
        &[FlowFilter {
            uuid: vec![flows[3].uuid.clone(), "not-there".into()],
            ..Default::default()
        }],
        &[],
    )
    .expect("valid");
    let matched: Vec<usize> = (0..flows.len())
        .filter(|i| set.matches(&flows[*i]))
        .collect();
    assert_eq!(matched, vec![3]);

    // --ip-version none: as in Hubble, a flow without an IP header has IP_NOT_USED.
    let none = FilterSet::new(
        &[FlowFilter {
            ip_version: vec![IpVersion::IpNotUsed as i32],
            ..Default::default()
        }],
        &[],
    )
    .expect("valid");
    let mut arp = xwing_drop();
    arp.ip = None;
    assert!(none.matches(&arp));
    assert!(!none.matches(&xwing_drop()));
    let f = FlowFilter {
        ip_version: vec![IpVersion::IPv4 as i32],
        ..Default::default()
    };
    assert_eq!(one(f).len(), 8);
}

#[test]
fn invalid_values_are_errors() {
    let cases = [
        FlowFilter {
            source_ip: vec!["10.0.0.300".into()],
            ..Default::default()
        },
        FlowFilter {
            destination_port: vec!["http".into()],
            ..Default::default()
        },
        FlowFilter {
            http_path: vec!["(".into()],
            ..Default::default()
        },
        FlowFilter {
            source_label: vec!["a in (b".into()],
            ..Default::default()
        },
        FlowFilter {
            protocol: vec!["quic".into()],
            ..Default::default()
        },
        FlowFilter {
            source_pod: vec![String::new()],
            ..Default::default()
        },
    ];
    for case in cases {
        assert!(
            FilterSet::new(std::slice::from_ref(&case), &[]).is_err(),
            "{case:?} must be rejected"
        );
    }
}

#[test]
fn flows_without_endpoints_do_not_match_pod_filters() {
    let bare = Flow::default();
    let set = FilterSet::new(
        &[FlowFilter {
            source_pod: vec!["default/".into()],
            ..Default::default()
        }],
        &[],
    )
    .expect("valid");
    assert!(!set.matches(&bare));
}

/// The flows of `demo()` that pass `f`, with `edit` applied to them first.
fn passing_edited(f: FlowFilter, edit: impl Fn(usize, &mut Flow)) -> Vec<usize> {
    let set = FilterSet::new(&[f], &[]).expect("valid filters");
    demo()
        .into_iter()
        .enumerate()
        .filter(|(i, flow)| {
            let mut flow = flow.clone();
            edit(*i, &mut flow);
            set.matches(&flow)
        })
        .map(|(i, _)| i)
        .collect()
}

/// The deathstar's pods belong to the Deployment "deathstar", as the agent
/// reports them.
fn deathstar_in_deployment(_: usize, flow: &mut Flow) {
    for endpoint in [flow.source.as_mut(), flow.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        if endpoint.pod_name == DEATHSTAR_POD {
            endpoint.workloads = vec![Workload {
                name: "deathstar".into(),
                kind: "Deployment".into(),
            }];
        }
    }
}

#[test]
fn workloads_by_name_kind_or_both() {
    let workload = |kind: &str, name: &str| Workload {
        kind: kind.into(),
        name: name.into(),
    };
    let to = |w: Workload| FlowFilter {
        destination_workload: vec![w],
        ..Default::default()
    };
    let from = |w: Workload| FlowFilter {
        source_workload: vec![w],
        ..Default::default()
    };
    // The requests and the first packets go to the deathstar, replies come from it.
    let to_deathstar = vec![0, 2, 4, 6, 7];
    let from_deathstar = vec![1, 3, 5];
    for w in [
        workload("Deployment", "deathstar"),
        workload("", "deathstar"),
        workload("Deployment", ""),
        workload("", ""),
    ] {
        assert_eq!(
            passing_edited(to(w.clone()), deathstar_in_deployment),
            to_deathstar,
            "{w:?}"
        );
        assert_eq!(
            passing_edited(from(w.clone()), deathstar_in_deployment),
            from_deathstar,
            "{w:?}"
        );
    }
    for w in [
        workload("StatefulSet", "deathstar"),
        workload("Deployment", "death"),
        workload("deployment", "deathstar"),
    ] {
        assert!(
            passing_edited(to(w.clone()), deathstar_in_deployment).is_empty(),
            "{w:?}: the kind and the name are exact"
        );
    }
    // Endpoints without a workload match no workload filter, not even an empty one.
    assert!(one(to(workload("", ""))).is_empty());
}

#[test]
fn http_headers_key_and_value_exact() {
    let with_headers = |i: usize, flow: &mut Flow| {
        let Some(layer7::Record::Http(http)) = flow.l7.as_mut().and_then(|l| l.record.as_mut())
        else {
            return;
        };
        // The requests carry a request id; the 403 an error header too.
        http.headers = vec![HttpHeader {
            key: "x-request-id".into(),
            value: format!("r{i}"),
        }];
        if i == 5 {
            http.headers.push(HttpHeader {
                key: "x-envoy-error".into(),
                value: "denied".into(),
            });
        }
    };
    let header = |key: &str, value: &str| FlowFilter {
        http_header: vec![HttpHeader {
            key: key.into(),
            value: value.into(),
        }],
        ..Default::default()
    };
    assert_eq!(
        passing_edited(header("x-request-id", "r2"), with_headers),
        [2]
    );
    assert_eq!(
        passing_edited(header("x-request-id", ""), with_headers),
        [2, 3, 4, 5]
    );
    assert_eq!(passing_edited(header("", "denied"), with_headers), [5]);
    for (key, value) in [
        ("x-request-id", "r"),
        ("X-Request-Id", "r2"),
        ("x-request", "r2"),
        ("x-envoy-error", "r5"),
    ] {
        assert!(
            passing_edited(header(key, value), with_headers).is_empty(),
            "{key}:{value} must not match"
        );
    }
    // Two values of one filter are alternatives.
    let either = FlowFilter {
        http_header: vec![
            HttpHeader {
                key: "x-request-id".into(),
                value: "r2".into(),
            },
            HttpHeader {
                key: "x-envoy-error".into(),
                value: "denied".into(),
            },
        ],
        ..Default::default()
    };
    assert_eq!(passing_edited(either, with_headers), [2, 5]);
    // Flows without headers (and L3/L4 flows) match no header filter.
    assert!(one(header("", "")).is_empty());
}

#[test]
fn trace_ids_of_the_trace_context() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = |i: usize, flow: &mut Flow| {
        if i == 2 || i == 3 {
            flow.trace_context = Some(TraceContext {
                parent: Some(TraceParent {
                    trace_id: TRACE.into(),
                }),
            });
        }
    };
    let trace = |id: &str| FlowFilter {
        trace_id: vec![id.into()],
        ..Default::default()
    };
    assert_eq!(passing_edited(trace(TRACE), traced), [2, 3]);
    assert!(passing_edited(trace("00f067aa0ba902b7"), traced).is_empty());
    assert!(
        one(trace(TRACE)).is_empty(),
        "flows without a trace context"
    );
}

#[test]
fn drop_reasons_of_dropped_flows_only() {
    let reason = |r: DropReason| FlowFilter {
        drop_reason_desc: vec![r as i32],
        ..Default::default()
    };
    // The denied L7 request (4) is dropped without a kernel drop reason.
    assert_eq!(one(reason(DropReason::PolicyDenied)), [6, 7]);
    assert!(one(reason(DropReason::CtNoMapFound)).is_empty());
    // A forwarded flow that names a drop reason is not a drop.
    let mut forwarded = xwing_drop();
    forwarded.verdict = Verdict::Forwarded as i32;
    let set = FilterSet::new(&[reason(DropReason::PolicyDenied)], &[]).expect("valid");
    assert!(set.matches(&xwing_drop()));
    assert!(!set.matches(&forwarded));
}
