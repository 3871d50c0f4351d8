//! Star Wars demo flows shared by the integration tests, built with the
//! helpers the agent uses.

#![allow(dead_code)] // each test binary uses a different subset

use myelin_observe::flows::{self, PolicyMatch};
use myelin_observe::proto::flow::{
    DropReason, Endpoint, Flow, Http, IpVersion, L7FlowType, Layer4, Layer7, Tcp, TcpFlags,
    TraceObservationPoint, TrafficDirection, Verdict, layer4, layer7,
};
use prost_types::Timestamp;

pub const XWING_ID: u32 = 22654;
pub const TIEFIGHTER_ID: u32 = 17143;
pub const DEATHSTAR_ID: u32 = 16530;
pub const DEATHSTAR_POD: &str = "deathstar-c74d84667-cx5kp";
pub const URL_LANDING: &str = "http://deathstar.default.svc.cluster.local/v1/request-landing";
pub const URL_EXHAUST: &str = "http://deathstar.default.svc.cluster.local/v1/exhaust-port";

/// 2024-05-04 13:23:SS.mmm UTC.
pub fn at(seconds: i64, millis: i32) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_714_828_980 + seconds,
        nanos: millis * 1_000_000,
    })
}

fn endpoint(pod: &str, identity: u32, class: &str, org: &str) -> Endpoint {
    Endpoint {
        id: identity % 1000,
        identity,
        namespace: "default".into(),
        labels: vec![
            format!("k8s:class={class}"),
            format!("k8s:org={org}"),
            "k8s:io.kubernetes.pod.namespace=default".into(),
        ],
        pod_name: pod.into(),
        ..Default::default()
    }
}

pub fn xwing() -> Endpoint {
    endpoint("xwing", XWING_ID, "xwing", "alliance")
}
pub fn tiefighter() -> Endpoint {
    endpoint("tiefighter", TIEFIGHTER_ID, "tiefighter", "empire")
}
pub fn deathstar() -> Endpoint {
    endpoint(DEATHSTAR_POD, DEATHSTAR_ID, "deathstar", "empire")
}

fn tcp(src: u32, dst: u32, flags: TcpFlags) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: src,
            destination_port: dst,
            flags: Some(flags),
        })),
    })
}

fn syn() -> TcpFlags {
    TcpFlags {
        syn: true,
        ..Default::default()
    }
}

fn ip(src: &str, dst: &str) -> Option<myelin_observe::proto::flow::Ip> {
    Some(myelin_observe::proto::flow::Ip {
        source: src.into(),
        destination: dst.into(),
        ip_version: IpVersion::IPv4 as i32,
        encrypted: false,
        source_xlated: String::new(),
    })
}

pub const XWING_IP: &str = "10.0.1.11";
pub const TIEFIGHTER_IP: &str = "10.0.1.12";
pub const DEATHSTAR_IP: &str = "10.0.1.20";

/// xwing's SYN to the deathstar, dropped by policy (no is_reply: "<>").
pub fn xwing_drop() -> Flow {
    let mut f = Flow {
        time: at(47, 852),
        node_name: "node-1".into(),
        ip: ip(XWING_IP, DEATHSTAR_IP),
        l4: tcp(42818, 80, syn()),
        source: Some(xwing()),
        destination: Some(deathstar()),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Default::default()
    };
    flows::mark_drop(&mut f, DropReason::PolicyDenied);
    flows::complete(&mut f);
    f
}

/// The ingress policy verdict denying xwing.
pub fn xwing_verdict() -> Flow {
    let mut f = Flow {
        time: at(47, 852),
        node_name: "node-1".into(),
        ip: ip(XWING_IP, DEATHSTAR_IP),
        l4: tcp(42818, 80, syn()),
        source: Some(xwing()),
        destination: Some(deathstar()),
        ..Default::default()
    };
    flows::mark_policy_verdict(
        &mut f,
        TrafficDirection::Ingress,
        PolicyMatch::None,
        Verdict::Dropped,
    );
    flows::complete(&mut f);
    f
}

/// The ingress policy verdict allowing tiefighter at L3/L4.
pub fn tiefighter_verdict() -> Flow {
    let mut f = Flow {
        time: at(40, 500),
        node_name: "node-1".into(),
        ip: ip(TIEFIGHTER_IP, DEATHSTAR_IP),
        l4: tcp(42690, 80, syn()),
        source: Some(tiefighter()),
        destination: Some(deathstar()),
        is_reply: Some(false),
        ..Default::default()
    };
    flows::mark_policy_verdict(
        &mut f,
        TrafficDirection::Ingress,
        PolicyMatch::L3L4,
        Verdict::Forwarded,
    );
    flows::complete(&mut f);
    f
}

/// The deathstar's SYN-ACK delivered to tiefighter: a reply, printed "<-".
pub fn synack_to_tiefighter() -> Flow {
    let mut f = Flow {
        time: at(40, 501),
        node_name: "node-1".into(),
        verdict: Verdict::Forwarded as i32,
        ip: ip(DEATHSTAR_IP, TIEFIGHTER_IP),
        l4: tcp(
            80,
            42690,
            TcpFlags {
                syn: true,
                ack: true,
                ..Default::default()
            },
        ),
        source: Some(deathstar()),
        destination: Some(tiefighter()),
        is_reply: Some(true),
        traffic_direction: TrafficDirection::Egress as i32,
        ..Default::default()
    };
    flows::mark_trace(&mut f, TraceObservationPoint::ToEndpoint);
    flows::complete(&mut f);
    f
}

fn http(method: &str, url: &str, code: u32) -> Http {
    Http {
        code,
        method: method.into(),
        url: url.into(),
        protocol: "HTTP/1.1".into(),
        headers: vec![],
    }
}

/// tiefighter's POST /v1/request-landing seen by the proxy.
pub fn landing_request() -> Flow {
    let mut f = Flow {
        time: at(40, 501),
        node_name: "node-1".into(),
        verdict: Verdict::Forwarded as i32,
        ip: ip(TIEFIGHTER_IP, DEATHSTAR_IP),
        l4: tcp(42690, 80, TcpFlags::default()),
        source: Some(tiefighter()),
        destination: Some(deathstar()),
        is_reply: Some(false),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Default::default()
    };
    flows::mark_l7(
        &mut f,
        Layer7 {
            r#type: L7FlowType::Request as i32,
            latency_ns: 0,
            record: Some(layer7::Record::Http(http("POST", URL_LANDING, 0))),
        },
    );
    flows::complete(&mut f);
    f
}

/// The deathstar's 200 to that request.
pub fn landing_response() -> Flow {
    let mut f = Flow {
        time: at(40, 502),
        node_name: "node-1".into(),
        verdict: Verdict::Forwarded as i32,
        ip: ip(DEATHSTAR_IP, TIEFIGHTER_IP),
        l4: tcp(80, 42690, TcpFlags::default()),
        source: Some(deathstar()),
        destination: Some(tiefighter()),
        is_reply: Some(true),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Default::default()
    };
    flows::mark_l7(
        &mut f,
        Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 740_000,
            record: Some(layer7::Record::Http(http("POST", URL_LANDING, 200))),
        },
    );
    flows::complete(&mut f);
    f
}

/// tiefighter's PUT /v1/exhaust-port, denied by the L7 policy.
pub fn exhaust_request_denied() -> Flow {
    let mut f = Flow {
        time: at(43, 791),
        node_name: "node-1".into(),
        verdict: Verdict::Dropped as i32,
        ip: ip(TIEFIGHTER_IP, DEATHSTAR_IP),
        l4: tcp(42742, 80, TcpFlags::default()),
        source: Some(tiefighter()),
        destination: Some(deathstar()),
        is_reply: Some(false),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Default::default()
    };
    flows::mark_l7(
        &mut f,
        Layer7 {
            r#type: L7FlowType::Request as i32,
            latency_ns: 0,
            record: Some(layer7::Record::Http(http("PUT", URL_EXHAUST, 0))),
        },
    );
    flows::complete(&mut f);
    f
}

/// The 403 the proxy answers for the denied PUT.
pub fn exhaust_response_403() -> Flow {
    let mut f = exhaust_request_denied();
    f.time = at(43, 792);
    f.verdict = Verdict::Forwarded as i32;
    f.source = Some(deathstar());
    f.destination = Some(tiefighter());
    f.ip = ip(DEATHSTAR_IP, TIEFIGHTER_IP);
    f.l4 = tcp(80, 42742, TcpFlags::default());
    f.is_reply = Some(true);
    f.summary.clear();
    flows::mark_l7(
        &mut f,
        Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1_000_000,
            record: Some(layer7::Record::Http(http("PUT", URL_EXHAUST, 403))),
        },
    );
    flows::complete(&mut f);
    f
}

/// All of them, in time order of the demo.
pub fn demo() -> Vec<Flow> {
    vec![
        tiefighter_verdict(),
        synack_to_tiefighter(),
        landing_request(),
        landing_response(),
        exhaust_request_denied(),
        exhaust_response_403(),
        xwing_verdict(),
        xwing_drop(),
    ]
}
