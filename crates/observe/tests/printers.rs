//! Compact, dict, table and JSON output of the Star Wars flows, line by line.

mod common;

use common::*;
use myelin_observe::printer::{self, OutputFormat, PrintOptions, Printer, TimeFormat};
use myelin_observe::proto::observer::{GetFlowsResponse, get_flows_response};

fn response(flow: myelin_observe::proto::flow::Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        time: flow.time,
        node_name: flow.node_name.clone(),
        response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
    }
}

fn print(
    format: OutputFormat,
    node_name: bool,
    flows: Vec<myelin_observe::proto::flow::Flow>,
) -> Vec<String> {
    print_with(
        PrintOptions {
            format,
            node_name,
            ..PrintOptions::default()
        },
        flows,
    )
}

fn print_with(opts: PrintOptions, flows: Vec<myelin_observe::proto::flow::Flow>) -> Vec<String> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut printer = Printer::new(&mut out, &mut err, opts);
    for flow in flows {
        printer.write_response(&response(flow)).expect("write");
    }
    printer.finish().expect("finish");
    drop(printer);
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn compact_lines_match_hubble() {
    let expected = [
        "May  4 13:23:40.500: default/tiefighter:42690 (ID:17143) -> default/deathstar-c74d84667-cx5kp:80 (ID:16530) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)",
        "May  4 13:23:40.501: default/tiefighter:42690 (ID:17143) <- default/deathstar-c74d84667-cx5kp:80 (ID:16530) to-endpoint FORWARDED (TCP Flags: SYN, ACK)",
        "May  4 13:23:40.501: default/tiefighter:42690 (ID:17143) -> default/deathstar-c74d84667-cx5kp:80 (ID:16530) http-request FORWARDED (HTTP/1.1 POST http://deathstar.default.svc.cluster.local/v1/request-landing)",
        "May  4 13:23:40.502: default/tiefighter:42690 (ID:17143) <- default/deathstar-c74d84667-cx5kp:80 (ID:16530) http-response FORWARDED (HTTP/1.1 200 0ms (POST http://deathstar.default.svc.cluster.local/v1/request-landing))",
        "May  4 13:23:43.791: default/tiefighter:42742 (ID:17143) -> default/deathstar-c74d84667-cx5kp:80 (ID:16530) http-request DROPPED (HTTP/1.1 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port)",
        "May  4 13:23:43.792: default/tiefighter:42742 (ID:17143) <- default/deathstar-c74d84667-cx5kp:80 (ID:16530) http-response FORWARDED (HTTP/1.1 403 1ms (PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port))",
        "May  4 13:23:47.852: default/xwing:42818 (ID:22654) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)",
        "May  4 13:23:47.852: default/xwing:42818 (ID:22654) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) Policy denied DROPPED (TCP Flags: SYN)",
    ];
    let lines = print(OutputFormat::Compact, false, demo());
    assert_eq!(lines.len(), expected.len());
    for (line, want) in lines.iter().zip(expected) {
        assert_eq!(line, want);
    }
}

#[test]
fn compact_with_node_name_and_reserved_identities() {
    let mut flow = xwing_drop();
    flow.source.as_mut().expect("source").identity = 2;
    flow.source.as_mut().expect("source").pod_name.clear();
    let lines = print(OutputFormat::Compact, true, vec![flow]);
    assert_eq!(
        lines,
        [
            "May  4 13:23:47.852 [node-1]: 10.0.1.11:42818 (world) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) Policy denied DROPPED (TCP Flags: SYN)"
        ]
    );
}

#[test]
fn ipv6_and_numeric_output() {
    let mut flow = xwing_drop();
    flow.ip.as_mut().expect("ip").source = "fd00::11".into();
    let opts = PrintOptions {
        ip_translation: false,
        ..PrintOptions::default()
    };
    let (src, dst) = printer::host_names(&flow, &opts);
    assert_eq!(src, "[fd00::11]:42818");
    assert_eq!(dst, "10.0.1.20:80");
}

#[test]
fn time_format_applies_to_compact_dict_and_table() {
    let opts = |format| PrintOptions {
        format,
        node_name: true,
        time_format: TimeFormat::Rfc3339Milli,
        ..PrintOptions::default()
    };
    assert_eq!(
        print_with(opts(OutputFormat::Compact), vec![xwing_drop()]),
        [
            "2024-05-04T13:23:47.852Z [node-1]: default/xwing:42818 (ID:22654) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) Policy denied DROPPED (TCP Flags: SYN)"
        ]
    );
    let dict = print_with(opts(OutputFormat::Dict), vec![xwing_drop()]);
    assert_eq!(
        dict[..2],
        [
            "  TIMESTAMP: 2024-05-04T13:23:47.852Z",
            "       NODE: node-1"
        ]
    );
    assert_eq!(
        print_with(opts(OutputFormat::Table), vec![xwing_drop()]),
        [
            "TIMESTAMP                  NODE     SOURCE                DESTINATION                            TYPE            VERDICT   SUMMARY",
            "2024-05-04T13:23:47.852Z   node-1   default/xwing:42818   default/deathstar-c74d84667-cx5kp:80   Policy denied   DROPPED   TCP Flags: SYN",
        ]
    );
}

#[test]
fn every_time_format_prints_go_layouts() {
    // 13:23:40.500 (trailing zeros) and 13:23:47.000 (no fraction at all).
    let half = at(0, 500);
    let whole = at(7, 0);
    let cases = [
        (
            TimeFormat::StampMilli,
            "May  4 13:23:00.500",
            "May  4 13:23:07.000",
        ),
        (TimeFormat::YearMonthDay, "2024-05-04", "2024-05-04"),
        (
            TimeFormat::YearMonthDayHour,
            "2024-05-04T13Z",
            "2024-05-04T13Z",
        ),
        (
            TimeFormat::YearMonthDayHourMinute,
            "2024-05-04T13:23Z",
            "2024-05-04T13:23Z",
        ),
        (
            TimeFormat::Rfc3339,
            "2024-05-04T13:23:00Z",
            "2024-05-04T13:23:07Z",
        ),
        (
            TimeFormat::Rfc3339Milli,
            "2024-05-04T13:23:00.5Z",
            "2024-05-04T13:23:07Z",
        ),
        (
            TimeFormat::Rfc3339Micro,
            "2024-05-04T13:23:00.5Z",
            "2024-05-04T13:23:07Z",
        ),
        (
            TimeFormat::Rfc3339Nano,
            "2024-05-04T13:23:00.5Z",
            "2024-05-04T13:23:07Z",
        ),
        (
            TimeFormat::Rfc1123Z,
            "Sat, 04 May 2024 13:23:00 +0000",
            "Sat, 04 May 2024 13:23:07 +0000",
        ),
    ];
    for (format, want_half, want_whole) in cases {
        assert_eq!(format.format(half.as_ref()), want_half, "{format:?}");
        assert_eq!(format.format(whole.as_ref()), want_whole, "{format:?}");
    }
    // Fractions are truncated, not rounded, as Go does.
    let fine = prost_types::Timestamp {
        seconds: 1_714_828_980,
        nanos: 123_456_789,
    };
    assert_eq!(
        TimeFormat::Rfc3339Milli.format(Some(&fine)),
        "2024-05-04T13:23:00.123Z"
    );
    assert_eq!(
        TimeFormat::Rfc3339Micro.format(Some(&fine)),
        "2024-05-04T13:23:00.123456Z"
    );
    assert_eq!(
        TimeFormat::Rfc3339Nano.format(Some(&fine)),
        "2024-05-04T13:23:00.123456789Z"
    );
    assert_eq!(
        TimeFormat::StampMilli.format(Some(&fine)),
        "May  4 13:23:00.123"
    );
    let invalid = prost_types::Timestamp {
        seconds: 0,
        nanos: -1,
    };
    assert_eq!(TimeFormat::Rfc3339.format(Some(&invalid)), "N/A");
    assert_eq!(TimeFormat::Rfc3339.format(None), "N/A");
}

#[test]
fn dict_blocks_match_hubble() {
    let lines = print(
        OutputFormat::Dict,
        false,
        vec![xwing_drop(), landing_response()],
    );
    let expected = [
        "  TIMESTAMP: May  4 13:23:47.852",
        "     SOURCE: default/xwing:42818",
        "DESTINATION: default/deathstar-c74d84667-cx5kp:80",
        "       TYPE: Policy denied",
        "    VERDICT: DROPPED",
        "    SUMMARY: TCP Flags: SYN",
        "------------",
        "  TIMESTAMP: May  4 13:23:40.502",
        "     SOURCE: default/deathstar-c74d84667-cx5kp:80",
        "DESTINATION: default/tiefighter:42690",
        "       TYPE: http-response",
        "    VERDICT: FORWARDED",
        "    SUMMARY: HTTP/1.1 200 0ms (POST http://deathstar.default.svc.cluster.local/v1/request-landing)",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn table_is_aligned_like_tabwriter() {
    let lines = print(
        OutputFormat::Table,
        false,
        vec![xwing_drop(), synack_to_tiefighter()],
    );
    let expected = [
        "TIMESTAMP             SOURCE                                 DESTINATION                            TYPE            VERDICT     SUMMARY",
        "May  4 13:23:47.852   default/xwing:42818                    default/deathstar-c74d84667-cx5kp:80   Policy denied   DROPPED     TCP Flags: SYN",
        "May  4 13:23:40.501   default/deathstar-c74d84667-cx5kp:80   default/tiefighter:42690               to-endpoint     FORWARDED   TCP Flags: SYN, ACK",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn json_is_proto3_json_with_proto_names() {
    let mut flow = xwing_drop();
    flow.uuid = "3c4e1a0e-0000-4000-8000-000000000001".into();
    let lines = print(OutputFormat::Jsonpb, false, vec![flow.clone()]);
    assert_eq!(lines.len(), 1);
    let value: serde_json::Value = serde_json::from_str(&lines[0]).expect("valid JSON");
    let expected = serde_json::json!({
        "flow": {
            "time": "2024-05-04T13:23:47.852Z",
            "uuid": "3c4e1a0e-0000-4000-8000-000000000001",
            "verdict": "DROPPED",
            "drop_reason": 133,
            "IP": {"source": "10.0.1.11", "destination": "10.0.1.20", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 42818, "destination_port": 80, "flags": {"SYN": true}}},
            "source": {
                "ID": 654, "identity": 22654, "namespace": "default",
                "labels": ["k8s:class=xwing", "k8s:org=alliance", "k8s:io.kubernetes.pod.namespace=default"],
                "pod_name": "xwing"
            },
            "destination": {
                "ID": 530, "identity": 16530, "namespace": "default",
                "labels": ["k8s:class=deathstar", "k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"],
                "pod_name": "deathstar-c74d84667-cx5kp"
            },
            "Type": "L3_L4",
            "node_name": "node-1",
            "event_type": {"type": 1, "sub_type": 133},
            "traffic_direction": "INGRESS",
            "drop_reason_desc": "POLICY_DENIED",
            "Summary": "TCP Flags: SYN"
        },
        "node_name": "node-1",
        "time": "2024-05-04T13:23:47.852Z"
    });
    assert_eq!(value, expected);
    // -o json is an alias of jsonpb, as in the current hubble CLI.
    assert_eq!(print(OutputFormat::Json, false, vec![flow]), lines);
}

#[test]
fn json_reply_flag_and_l7() {
    let lines = print(OutputFormat::Jsonpb, false, vec![landing_response()]);
    let value: serde_json::Value = serde_json::from_str(&lines[0]).expect("valid JSON");
    assert_eq!(value["flow"]["is_reply"], serde_json::json!(true));
    assert_eq!(value["flow"]["reply"], serde_json::json!(true));
    assert_eq!(value["flow"]["Type"], "L7");
    assert_eq!(value["flow"]["l7"]["type"], "RESPONSE");
    assert_eq!(value["flow"]["l7"]["latency_ns"], "740000");
    assert_eq!(value["flow"]["l7"]["http"]["code"], 200);
    let request = print(OutputFormat::Jsonpb, false, vec![landing_request()]);
    let value: serde_json::Value = serde_json::from_str(&request[0]).expect("valid JSON");
    assert_eq!(value["flow"]["is_reply"], serde_json::json!(false));
    assert!(value["flow"].get("reply").is_none());
}

#[test]
fn lost_events_go_to_stderr() {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut printer = Printer::new(&mut out, &mut err, PrintOptions::default());
    let resp = GetFlowsResponse {
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(
            myelin_observe::proto::flow::LostEvent {
                source: myelin_observe::proto::flow::LostEventSource::HubbleRingBuffer as i32,
                num_events_lost: 12,
                cpu: None,
                first: None,
                last: None,
            },
        )),
        ..Default::default()
    };
    printer.write_response(&resp).expect("write");
    drop(printer);
    assert!(out.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&err),
        "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12\n"
    );
}

mod agent_events {
    use super::*;
    use myelin_observe::proto::flow::{
        AgentEvent, AgentEventType, EndpointRegenNotification, EndpointUpdateNotification,
        IpCacheNotification, PolicyUpdateNotification, ServiceDeleteNotification,
        ServiceUpsertNotification, ServiceUpsertNotificationAddr, TimeNotification, agent_event,
    };
    use myelin_observe::proto::observer::GetAgentEventsResponse;

    fn event(
        seconds: i64,
        kind: AgentEventType,
        n: agent_event::Notification,
    ) -> GetAgentEventsResponse {
        GetAgentEventsResponse {
            agent_event: Some(AgentEvent {
                r#type: kind as i32,
                notification: Some(n),
            }),
            node_name: "node1".into(),
            time: at(seconds, 250),
        }
    }

    fn addr(ip: &str, port: u32) -> ServiceUpsertNotificationAddr {
        ServiceUpsertNotificationAddr {
            ip: ip.into(),
            port,
        }
    }

    fn pod_labels() -> Vec<String> {
        vec![
            "k8s:class=deathstar".into(),
            "k8s:io.kubernetes.pod.namespace=default".into(),
            "k8s:org=empire".into(),
        ]
    }

    /// One event of every kind the agent emits.
    fn events() -> Vec<GetAgentEventsResponse> {
        use agent_event::Notification as N;
        vec![
            event(
                0,
                AgentEventType::AgentStarted,
                N::AgentStart(TimeNotification { time: at(0, 0) }),
            ),
            event(
                1,
                AgentEventType::PolicyUpdated,
                N::PolicyUpdate(PolicyUpdateNotification {
                    labels: vec![
                        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into(),
                        "k8s:io.cilium.k8s.policy.name=rule1".into(),
                        "k8s:io.cilium.k8s.policy.namespace=default".into(),
                    ],
                    revision: 2,
                    rule_count: 1,
                }),
            ),
            event(
                2,
                AgentEventType::EndpointCreated,
                N::EndpointUpdate(EndpointUpdateNotification {
                    id: 3,
                    labels: pod_labels(),
                    error: String::new(),
                    pod_name: DEATHSTAR_POD.into(),
                    namespace: "default".into(),
                }),
            ),
            event(
                3,
                AgentEventType::EndpointRegenerateSuccess,
                N::EndpointRegenerate(EndpointRegenNotification {
                    id: 3,
                    labels: pod_labels(),
                    error: String::new(),
                }),
            ),
            event(
                4,
                AgentEventType::EndpointRegenerateFailure,
                N::EndpointRegenerate(EndpointRegenNotification {
                    id: 3,
                    labels: vec![],
                    error: "map full".into(),
                }),
            ),
            event(
                5,
                AgentEventType::IpcacheUpserted,
                N::IpcacheUpdate(IpCacheNotification {
                    cidr: "10.244.1.5/32".into(),
                    identity: 16530,
                    old_identity: Some(16529),
                    host_ip: "10.244.1.1".into(),
                    namespace: "default".into(),
                    pod_name: DEATHSTAR_POD.into(),
                    ..Default::default()
                }),
            ),
            event(
                6,
                AgentEventType::IpcacheDeleted,
                N::IpcacheUpdate(IpCacheNotification {
                    cidr: "fd00:10:244:1::5/128".into(),
                    identity: 16530,
                    ..Default::default()
                }),
            ),
            event(
                7,
                AgentEventType::ServiceUpserted,
                N::ServiceUpsert(ServiceUpsertNotification {
                    id: 1,
                    frontend_address: Some(addr("10.96.0.10", 80)),
                    backend_addresses: vec![addr("10.244.1.5", 80), addr("fd00:10:244:1::6", 80)],
                    r#type: "ClusterIP".into(),
                    name: "deathstar".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
            ),
            event(
                8,
                AgentEventType::ServiceDeleted,
                N::ServiceDelete(ServiceDeleteNotification { id: 1 }),
            ),
            event(
                9,
                AgentEventType::EndpointDeleted,
                N::EndpointUpdate(EndpointUpdateNotification {
                    id: 3,
                    pod_name: DEATHSTAR_POD.into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
            ),
        ]
    }

    fn print_events(opts: PrintOptions, events: &[GetAgentEventsResponse]) -> Vec<String> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut printer = Printer::for_agent_events(&mut out, &mut err, opts);
        for e in events {
            printer.write_agent_event(e).expect("write");
        }
        printer.finish().expect("finish");
        drop(printer);
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn compact_lines_match_hubble() {
        let expected = [
            "May  4 13:23:00.250: AGENT_STARTED (start time: May  4 13:23:00.000)",
            "May  4 13:23:01.250: POLICY_UPDATED (labels: [k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy,k8s:io.cilium.k8s.policy.name=rule1,k8s:io.cilium.k8s.policy.namespace=default], revision: 2, count: 1)",
            "May  4 13:23:02.250: ENDPOINT_CREATED (id: 3, namespace: default, pod name: deathstar-c74d84667-cx5kp)",
            "May  4 13:23:03.250: ENDPOINT_REGENERATE_SUCCESS (id: 3, labels: [k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=default,k8s:org=empire])",
            "May  4 13:23:04.250: ENDPOINT_REGENERATE_FAILURE (id: 3, labels: [], error: map full)",
            "May  4 13:23:05.250: IPCACHE_UPSERTED (cidr: 10.244.1.5/32, identity: 16530, old identity: 16529, host ip: 10.244.1.1, encrypt key: 0)",
            "May  4 13:23:06.250: IPCACHE_DELETED (cidr: fd00:10:244:1::5/128, identity: 16530, encrypt key: 0)",
            "May  4 13:23:07.250: SERVICE_UPSERTED (id: 1, frontend: 10.96.0.10:80, backends: [10.244.1.5:80,[fd00:10:244:1::6]:80], type: ClusterIP, namespace: default, name: deathstar)",
            "May  4 13:23:08.250: SERVICE_DELETED (id: 1)",
            "May  4 13:23:09.250: ENDPOINT_DELETED (id: 3, namespace: default, pod name: deathstar-c74d84667-cx5kp)",
        ];
        assert_eq!(print_events(PrintOptions::default(), &events()), expected);
        let with_node = PrintOptions {
            node_name: true,
            time_format: TimeFormat::Rfc3339Milli,
            ..PrintOptions::default()
        };
        assert_eq!(
            print_events(with_node, &events()[8..9]),
            ["2024-05-04T13:23:08.25Z [node1]: SERVICE_DELETED (id: 1)"]
        );
    }

    #[test]
    fn dict_and_table_match_hubble() {
        let dict = PrintOptions {
            format: OutputFormat::Dict,
            ..PrintOptions::default()
        };
        assert_eq!(
            print_events(dict, &events()[8..10]),
            [
                "  TIMESTAMP: May  4 13:23:08.250",
                "       TYPE: SERVICE_DELETED",
                "    DETAILS: id: 1",
                "------------",
                "  TIMESTAMP: May  4 13:23:09.250",
                "       TYPE: ENDPOINT_DELETED",
                "    DETAILS: id: 3, namespace: default, pod name: deathstar-c74d84667-cx5kp",
            ]
        );
        let table = PrintOptions {
            format: OutputFormat::Table,
            node_name: true,
            ..PrintOptions::default()
        };
        assert_eq!(
            print_events(table, &events()[8..10]),
            [
                "TIMESTAMP             NODE    TYPE               DETAILS",
                "May  4 13:23:08.250   node1   SERVICE_DELETED    id: 1",
                "May  4 13:23:09.250   node1   ENDPOINT_DELETED   id: 3, namespace: default, pod name: deathstar-c74d84667-cx5kp",
            ]
        );
    }

    #[test]
    fn jsonpb_is_the_response_in_proto3_json() {
        let jsonpb = PrintOptions {
            format: OutputFormat::Jsonpb,
            ..PrintOptions::default()
        };
        let lines = print_events(jsonpb, &events());
        let value = |i: usize| -> serde_json::Value {
            serde_json::from_str(&lines[i]).expect("valid JSON")
        };
        assert_eq!(
            value(1),
            serde_json::json!({
                "agent_event": {
                    "type": "POLICY_UPDATED",
                    "policy_update": {
                        "labels": [
                            "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                            "k8s:io.cilium.k8s.policy.name=rule1",
                            "k8s:io.cilium.k8s.policy.namespace=default"
                        ],
                        "revision": "2",
                        "rule_count": "1"
                    }
                },
                "node_name": "node1",
                "time": "2024-05-04T13:23:01.250Z"
            })
        );
        assert_eq!(
            value(0)["agent_event"]["agent_start"],
            serde_json::json!({"time": "2024-05-04T13:23:00Z"})
        );
        assert_eq!(
            value(5)["agent_event"]["ipcache_update"],
            serde_json::json!({
                "cidr": "10.244.1.5/32",
                "identity": 16530,
                "old_identity": 16529,
                "host_ip": "10.244.1.1",
                "namespace": "default",
                "pod_name": DEATHSTAR_POD
            })
        );
        assert_eq!(
            value(7)["agent_event"]["service_upsert"],
            serde_json::json!({
                "id": 1,
                "frontend_address": {"ip": "10.96.0.10", "port": 80},
                "backend_addresses": [
                    {"ip": "10.244.1.5", "port": 80},
                    {"ip": "fd00:10:244:1::6", "port": 80}
                ],
                "type": "ClusterIP",
                "name": "deathstar",
                "namespace": "default"
            })
        );
        assert_eq!(
            value(2)["agent_event"]["endpoint_update"]["id"],
            serde_json::json!("3"),
            "uint64 is a string in proto3 JSON"
        );
        // -o json prints the same, as hubble does without its legacy switch.
        let json = PrintOptions {
            format: OutputFormat::Json,
            ..PrintOptions::default()
        };
        assert_eq!(print_events(json, &events()), lines);
    }
}
