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
