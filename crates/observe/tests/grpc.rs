//! The real observer server on a unix socket and on 127.0.0.1:0, driven by
//! the generated client, the health client, and hand-written prost messages
//! carrying Hubble's field numbers.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use myelin_observe::proto::flow::{
    AgentEvent, AgentEventType, FlowFilter, LostEventSource, ServiceDeleteNotification, Verdict,
    agent_event,
};
use myelin_observe::proto::observer::observer_client::ObserverClient;
use myelin_observe::proto::observer::{
    GetAgentEventsRequest, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest,
    GetNodesRequest, ServerStatusRequest, get_flows_response,
};
use myelin_observe::{Observer, ObserverConfig, ServeConfig, bind, cli};
use tokio::sync::oneshot;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    observer: Observer,
    tcp: SocketAddr,
    unix: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), myelin_observe::ServeError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: ObserverConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let observer = Observer::new(config);
        let serve = ServeConfig {
            unix_socket: Some(dir.path().join("run/hubble.sock")),
            tcp: Some("127.0.0.1:0".parse().expect("addr")),
        };
        let bound = bind(observer.clone(), &serve).await.expect("bind");
        let tcp = bound.tcp_addr.expect("tcp address");
        let unix = bound.unix_path.clone().expect("unix path");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Self {
            observer,
            tcp,
            unix,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    async fn tcp_client(&self) -> ObserverClient<Channel> {
        cli::connect(&self.tcp.to_string())
            .await
            .expect("connect over TCP")
    }

    async fn unix_client(&self) -> ObserverClient<Channel> {
        cli::connect(&format!("unix://{}", self.unix.display()))
            .await
            .expect("connect over unix socket")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(WAIT, self.server)
            .await
            .expect("server stops");
        result.expect("server task").expect("server ran cleanly");
    }
}

fn flow_of(resp: GetFlowsResponse) -> Option<myelin_observe::proto::flow::Flow> {
    match resp.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => Some(f),
        _ => None,
    }
}

async fn collect(
    client: &mut ObserverClient<Channel>,
    req: GetFlowsRequest,
) -> Vec<GetFlowsResponse> {
    let mut stream = client.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(resp) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends")
        .expect("stream ok")
    {
        out.push(resp);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_flows_number_first_and_filters_over_both_listeners() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    for flow in demo() {
        running.observer.push(flow);
    }
    let mut unix = running.unix_client().await;
    let mut tcp = running.tcp_client().await;

    let last = collect(
        &mut unix,
        GetFlowsRequest {
            number: 2,
            ..Default::default()
        },
    )
    .await;
    let summaries: Vec<String> = last
        .into_iter()
        .filter_map(flow_of)
        .map(|f| f.summary)
        .collect();
    assert_eq!(summaries, ["TCP Flags: SYN", "TCP Flags: SYN"]);

    let first = collect(
        &mut tcp,
        GetFlowsRequest {
            number: 1,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].node_name, "node-1");
    assert!(first[0].time.is_some());

    let dropped_from_deathstar_pods = GetFlowsRequest {
        number: 100,
        whitelist: vec![
            FlowFilter {
                source_pod: vec!["deathstar".into()],
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            },
            FlowFilter {
                destination_pod: vec!["deathstar".into()],
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let flows: Vec<_> = collect(&mut tcp, dropped_from_deathstar_pods)
        .await
        .into_iter()
        .filter_map(flow_of)
        .collect();
    assert_eq!(flows.len(), 3, "PUT request, xwing verdict and xwing drop");

    // `observe --not --verdict FORWARDED --last 2`: the blacklist is applied
    // before counting, so the two newest flows that are not forwarded.
    let not_forwarded = GetFlowsRequest {
        number: 2,
        blacklist: vec![FlowFilter {
            verdict: vec![Verdict::Forwarded as i32],
            ..Default::default()
        }],
        ..Default::default()
    };
    let flows: Vec<_> = collect(&mut unix, not_forwarded)
        .await
        .into_iter()
        .filter_map(flow_of)
        .collect();
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert!(
        flows.iter().all(|f| f.verdict == Verdict::Dropped as i32),
        "{flows:?}"
    );
    // Whitelist and blacklist together: tiefighter's flows, minus the forwarded ones.
    let tiefighter_not_forwarded = GetFlowsRequest {
        number: 100,
        whitelist: vec![FlowFilter {
            source_pod: vec!["tiefighter".into()],
            ..Default::default()
        }],
        blacklist: vec![FlowFilter {
            verdict: vec![Verdict::Forwarded as i32],
            ..Default::default()
        }],
        ..Default::default()
    };
    let flows: Vec<_> = collect(&mut tcp, tiefighter_not_forwarded)
        .await
        .into_iter()
        .filter_map(flow_of)
        .collect();
    assert_eq!(
        flows.iter().map(|f| f.summary.as_str()).collect::<Vec<_>>(),
        ["HTTP/1.1 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port"],
    );

    let bad = unix
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                http_status_code: vec!["nope".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_delivers_new_flows_that_match() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    running.observer.push(landing_request());
    let mut client = running.unix_client().await;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                source_pod: vec!["default/xwing".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    // Pushed after the call: must arrive; the tiefighter flow must not.
    running.observer.push(landing_response());
    running.observer.push(xwing_drop());
    let resp = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a flow arrives")
        .expect("ok")
        .expect("open");
    let flow = flow_of(resp).expect("a flow");
    assert_eq!(flow.source.map(|s| s.pod_name), Some("xwing".to_string()));
    assert_eq!(flow.summary, "TCP Flags: SYN");
    drop(stream);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nodes_namespaces_agent_events_and_health() {
    let mut config = ObserverConfig::new("node-1");
    config.capacity = 4;
    let running = Running::start(config).await;
    for flow in demo() {
        running.observer.push(flow);
    }
    let mut client = running.tcp_client().await;
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus")
        .into_inner();
    assert_eq!(status.num_flows, 4);
    assert_eq!(status.max_flows, 4);
    assert_eq!(status.seen_flows, 8);
    assert!(status.uptime_ns > 0);
    // `hubble status` shows flows_rate: flows of the last minute, not since
    // the start (the demo's flows are from 2024).
    assert_eq!(status.flows_rate, 0.0);
    for _ in 0..2 {
        running.observer.push(xwing_drop_now());
    }
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus")
        .into_inner();
    assert!(
        (status.flows_rate - 2.0 / 60.0).abs() < 1e-9,
        "{}",
        status.flows_rate
    );

    let nodes = client
        .get_nodes(GetNodesRequest {})
        .await
        .expect("GetNodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].name, "node-1");
    assert_eq!(nodes.nodes[0].num_flows, 4);

    let namespaces = client
        .get_namespaces(GetNamespacesRequest {})
        .await
        .expect("GetNamespaces")
        .into_inner();
    let names: Vec<_> = namespaces
        .namespaces
        .into_iter()
        .map(|n| n.namespace)
        .collect();
    assert_eq!(names, ["default"]);

    let mut events = client
        .get_agent_events(GetAgentEventsRequest::default())
        .await
        .expect("GetAgentEvents")
        .into_inner();
    assert!(
        tokio::time::timeout(WAIT, events.message())
            .await
            .expect("ends")
            .expect("ok")
            .is_none()
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.tcp))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hubble.server.Observer".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    running.stop().await;
}

fn agent_event(kind: AgentEventType, id: u32) -> AgentEvent {
    AgentEvent {
        r#type: kind as i32,
        notification: Some(agent_event::Notification::ServiceDelete(
            ServiceDeleteNotification { id },
        )),
    }
}

/// The service ids of the agent events a GetAgentEvents call returns.
async fn agent_event_ids(
    client: &mut ObserverClient<Channel>,
    request: GetAgentEventsRequest,
) -> Vec<u32> {
    let mut stream = client
        .get_agent_events(request)
        .await
        .expect("GetAgentEvents")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(resp) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream ends")
        .expect("ok")
    {
        assert_eq!(resp.node_name, "node-1");
        assert!(resp.time.is_some());
        match resp.agent_event.and_then(|e| e.notification) {
            Some(agent_event::Notification::ServiceDelete(d)) => ids.push(d.id),
            other => panic!("unexpected agent event {other:?}"),
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_events_number_first_since_and_follow() {
    let mut config = ObserverConfig::new("node-1");
    config.agent_event_capacity = 5;
    let running = Running::start(config).await;
    let mut middle = None;
    for id in 1..=6 {
        if id == 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            middle = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
            .observer
            .push_agent_event(agent_event(AgentEventType::ServiceDeleted, id));
    }
    // Flows are kept apart: agent events never appear in GetFlows.
    running.observer.push(xwing_drop());
    let mut client = running.unix_client().await;
    // The ring holds the last 5; number picks the last ones, first the first.
    assert_eq!(
        agent_event_ids(&mut client, GetAgentEventsRequest::default()).await,
        [2, 3, 4, 5, 6]
    );
    let last = GetAgentEventsRequest {
        number: 2,
        ..Default::default()
    };
    assert_eq!(agent_event_ids(&mut client, last).await, [5, 6]);
    let first = GetAgentEventsRequest {
        number: 2,
        first: true,
        ..Default::default()
    };
    assert_eq!(agent_event_ids(&mut client, first).await, [2, 3]);
    let since = GetAgentEventsRequest {
        since: middle,
        ..Default::default()
    };
    assert_eq!(agent_event_ids(&mut client, since).await, [4, 5, 6]);
    let until = GetAgentEventsRequest {
        until: middle,
        ..Default::default()
    };
    assert_eq!(agent_event_ids(&mut client, until).await, [2, 3]);
    let err = client
        .get_agent_events(GetAgentEventsRequest {
            first: true,
            follow: true,
            ..Default::default()
        })
        .await
        .expect_err("first with follow");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // follow with number: the last one stored, then events that come later.
    let mut stream = client
        .get_agent_events(GetAgentEventsRequest {
            number: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("GetAgentEvents follow")
        .into_inner();
    running
        .observer
        .push_agent_event(agent_event(AgentEventType::ServiceDeleted, 7));
    let mut followed = Vec::new();
    while followed.len() < 2 {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a later agent event arrives")
            .expect("ok")
            .expect("open");
        if let Some(agent_event::Notification::ServiceDelete(d)) =
            resp.agent_event.and_then(|e| e.notification)
        {
            followed.push(d.id);
        }
    }
    assert_eq!(followed, [6, 7]);
    drop(stream);

    let mut flows = client
        .get_flows(GetFlowsRequest::default())
        .await
        .expect("GetFlows")
        .into_inner();
    let mut count = 0;
    while let Some(resp) = flows.message().await.expect("ok") {
        assert!(flow_of(resp).is_some());
        count += 1;
    }
    assert_eq!(count, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_reach_readers() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    running.observer.push(xwing_drop());
    running
        .observer
        .record_lost(LostEventSource::PerfEventRingBuffer, 3);
    let mut client = running.unix_client().await;
    let all = collect(
        &mut client,
        GetFlowsRequest {
            number: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 2);
    match &all[1].response_types {
        Some(get_flows_response::ResponseTypes::LostEvents(lost)) => {
            assert_eq!(lost.num_events_lost, 3);
            assert_eq!(lost.source, LostEventSource::PerfEventRingBuffer as i32);
        }
        other => panic!("expected lost events, got {other:?}"),
    }
    running.stop().await;
}

/// xwing's drop, stamped when it is pushed.
fn xwing_drop_now() -> myelin_observe::proto::flow::Flow {
    myelin_observe::proto::flow::Flow {
        time: None,
        ..xwing_drop()
    }
}

/// The error GetFlows answers `req` with; a test failure if it answers flows.
async fn refusal(client: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> tonic::Status {
    match client.get_flows(req).await {
        Err(status) => status,
        Ok(stream) => match tokio::time::timeout(WAIT, stream.into_inner().message()).await {
            Ok(Err(status)) => status,
            other => panic!("not refused: {other:?}"),
        },
    }
}

/// Request fields the server would otherwise drop are refused by name: a
/// field mask path that names no Flow field (Hubble refuses it too), and
/// extensions (this server reads none). A mask of real paths is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_paths_and_extensions_the_server_cannot_honour_are_refused() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    running.observer.push(xwing_drop());
    let mut tcp = running.tcp_client().await;
    let masked = |paths: &[&str]| GetFlowsRequest {
        number: 5,
        field_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_string()).collect(),
        }),
        ..Default::default()
    };

    let status = refusal(&mut tcp, masked(&["uuid", "source.pod_nmae"])).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("source.pod_nmae")
            && status.message().contains("flow.Endpoint has no field"),
        "{}",
        status.message()
    );

    let answered = collect(&mut tcp, masked(&["uuid", "source.pod_name"])).await;
    let flow = answered
        .into_iter()
        .find_map(flow_of)
        .expect("the masked flow");
    assert!(!flow.uuid.is_empty());
    assert_eq!(flow.source.map(|s| s.pod_name).as_deref(), Some("xwing"));
    assert!(flow.node_name.is_empty(), "not in the mask");

    let status = refusal(
        &mut tcp,
        GetFlowsRequest {
            number: 5,
            extensions: vec![prost_types::Any {
                type_url: "type.example/vendor.Filter".into(),
                value: vec![8, 1],
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("extensions")
            && status.message().contains("type.example/vendor.Filter"),
        "{}",
        status.message()
    );
    running.stop().await;
}

/// A filter the agent cannot honour, sent by a real gRPC client over TCP and the
/// unix socket, on either list: InvalidArgument naming the field and the flag,
/// and no flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_the_agent_cannot_honour_are_refused_over_grpc() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    for flow in demo() {
        running.observer.push(flow);
    }
    let mut tcp = running.tcp_client().await;
    let mut unix = running.unix_client().await;
    let snat = FlowFilter {
        source_ip_xlated: vec!["10.0.0.1".into()],
        ..Default::default()
    };
    let ip_trace = FlowFilter {
        ip_trace_id: vec![7],
        ..Default::default()
    };
    for (filter, field, flag) in [
        (snat, "source_ip_xlated", "--snat-ip"),
        (ip_trace, "ip_trace_id", "--ip-trace-id"),
    ] {
        for (client, list) in [(&mut tcp, "whitelist"), (&mut unix, "blacklist")] {
            let mut req = GetFlowsRequest {
                number: 10,
                ..Default::default()
            };
            if list == "whitelist" {
                req.whitelist = vec![filter.clone()];
            } else {
                req.blacklist = vec![filter.clone()];
            }
            let status = refusal(client, req).await;
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains(field) && status.message().contains(flag),
                "{list}: {}",
                status.message()
            );
        }
    }
    running.stop().await;
}

/// A newer hubble sends a FlowFilter field this server lacks (here number 41,
/// where a newer Hubble keeps `ip_trace_option`): refused with InvalidArgument
/// naming the field number, where prost alone would drop it and answer every
/// flow. The same filter without the field is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_from_a_newer_client_is_refused_over_grpc() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    running.observer.push(landing_request());
    running.observer.push(xwing_drop());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.tcp))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = || http::uri::PathAndQuery::from_static("/observer.Observer/GetFlows");
    let codec = || {
        tonic_prost::ProstCodec::<hubble::NewerGetFlowsRequest, hubble::GetFlowsResponse>::default()
    };
    let request = |option: Vec<u32>| hubble::NewerGetFlowsRequest {
        number: 5,
        whitelist: vec![hubble::NewerFlowFilter {
            source_pod: vec!["default/xwing".into()],
            ip_trace_option: option,
        }],
    };

    grpc.ready().await.expect("ready");
    let refused = grpc
        .server_streaming(tonic::Request::new(request(vec![136])), path(), codec())
        .await;
    let status = match refused {
        Err(status) => status,
        Ok(stream) => match tokio::time::timeout(WAIT, stream.into_inner().message()).await {
            Ok(Err(status)) => status,
            other => panic!("field 41 not refused: {other:?}"),
        },
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("unknown field number 41 in flow.FlowFilter"),
        "{}",
        status.message()
    );

    grpc.ready().await.expect("ready");
    let mut answered = grpc
        .server_streaming(tonic::Request::new(request(Vec::new())), path(), codec())
        .await
        .expect("without the field")
        .into_inner();
    let flow = tokio::time::timeout(WAIT, answered.message())
        .await
        .expect("answer")
        .expect("ok")
        .and_then(|r| r.flow)
        .expect("xwing's flow");
    assert_eq!(flow.source.map(|s| s.pod_name).as_deref(), Some("xwing"));
    running.stop().await;
}

/// Hubble's messages written by hand from Hubble's field numbers, independent
/// of our .proto files: decoding our server's bytes with them proves the
/// numbers match.
mod hubble {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FlowFilter {
        #[prost(string, repeated, tag = "2")]
        pub source_pod: Vec<String>,
        #[prost(int32, repeated, tag = "5")]
        pub verdict: Vec<i32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetFlowsRequest {
        #[prost(uint64, tag = "1")]
        pub number: u64,
        #[prost(message, repeated, tag = "6")]
        pub whitelist: Vec<FlowFilter>,
    }
    /// A FlowFilter of a client newer than this server: field 41 is not in
    /// our protos.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NewerFlowFilter {
        #[prost(string, repeated, tag = "2")]
        pub source_pod: Vec<String>,
        #[prost(uint32, repeated, tag = "41")]
        pub ip_trace_option: Vec<u32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NewerGetFlowsRequest {
        #[prost(uint64, tag = "1")]
        pub number: u64,
        #[prost(message, repeated, tag = "6")]
        pub whitelist: Vec<NewerFlowFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Endpoint {
        #[prost(uint32, tag = "2")]
        pub identity: u32,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(string, repeated, tag = "4")]
        pub labels: Vec<String>,
        #[prost(string, tag = "5")]
        pub pod_name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TcpFlags {
        #[prost(bool, tag = "2")]
        pub syn: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tcp {
        #[prost(uint32, tag = "1")]
        pub source_port: u32,
        #[prost(uint32, tag = "2")]
        pub destination_port: u32,
        #[prost(message, optional, tag = "3")]
        pub flags: Option<TcpFlags>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Layer4 {
        #[prost(message, optional, tag = "1")]
        pub tcp: Option<Tcp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ip {
        #[prost(string, tag = "1")]
        pub source: String,
        #[prost(string, tag = "2")]
        pub destination: String,
        #[prost(int32, tag = "3")]
        pub ip_version: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventType {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(int32, tag = "2")]
        pub sub_type: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Flow {
        #[prost(message, optional, tag = "1")]
        pub time: Option<prost_types::Timestamp>,
        #[prost(int32, tag = "2")]
        pub verdict: i32,
        #[prost(uint32, tag = "3")]
        pub drop_reason: u32,
        #[prost(message, optional, tag = "5")]
        pub ip: Option<Ip>,
        #[prost(message, optional, tag = "6")]
        pub l4: Option<Layer4>,
        #[prost(message, optional, tag = "8")]
        pub source: Option<Endpoint>,
        #[prost(message, optional, tag = "9")]
        pub destination: Option<Endpoint>,
        #[prost(int32, tag = "10")]
        pub r#type: i32,
        #[prost(string, tag = "11")]
        pub node_name: String,
        #[prost(message, optional, tag = "19")]
        pub event_type: Option<EventType>,
        #[prost(int32, tag = "22")]
        pub traffic_direction: i32,
        #[prost(int32, tag = "25")]
        pub drop_reason_desc: i32,
        #[prost(message, optional, tag = "26")]
        pub is_reply: Option<bool>,
        #[prost(string, tag = "34")]
        pub uuid: String,
        #[prost(string, tag = "100000")]
        pub summary: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetFlowsResponse {
        #[prost(message, optional, tag = "1")]
        pub flow: Option<Flow>,
        #[prost(string, tag = "1000")]
        pub node_name: String,
        #[prost(message, optional, tag = "1001")]
        pub time: Option<prost_types::Timestamp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerStatusRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerStatusResponse {
        #[prost(uint64, tag = "1")]
        pub num_flows: u64,
        #[prost(uint64, tag = "2")]
        pub max_flows: u64,
        #[prost(uint64, tag = "3")]
        pub seen_flows: u64,
        #[prost(uint64, tag = "4")]
        pub uptime_ns: u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_decode_with_hubble_field_numbers() {
    let running = Running::start(ObserverConfig::new("node-1")).await;
    running.observer.push(landing_request());
    running.observer.push(xwing_drop());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.tcp))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);

    grpc.ready().await.expect("ready");
    let request = hubble::GetFlowsRequest {
        number: 5,
        whitelist: vec![hubble::FlowFilter {
            source_pod: vec!["default/xwing".into()],
            verdict: vec![2],
        }],
    };
    let codec =
        tonic_prost::ProstCodec::<hubble::GetFlowsRequest, hubble::GetFlowsResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/observer.Observer/GetFlows");
    let mut stream = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .expect("GetFlows by Hubble's path")
        .into_inner();
    let resp = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("answer")
        .expect("ok")
        .expect("one flow");
    assert!(
        tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("end")
            .expect("ok")
            .is_none()
    );
    assert_eq!(resp.node_name, "node-1");
    let flow = resp.flow.expect("flow in field 1");
    assert_eq!(flow.verdict, 2, "DROPPED = 2");
    assert_eq!(flow.drop_reason, 133);
    assert_eq!(flow.drop_reason_desc, 133, "POLICY_DENIED = 133");
    assert_eq!(flow.r#type, 1, "L3_L4 = 1");
    assert_eq!(flow.node_name, "node-1");
    assert_eq!(flow.summary, "TCP Flags: SYN");
    assert_eq!(flow.traffic_direction, 1, "INGRESS = 1");
    assert_eq!(flow.is_reply, None);
    assert_eq!(flow.uuid.len(), 36);
    assert_eq!(
        flow.event_type,
        Some(hubble::EventType {
            r#type: 1,
            sub_type: 133
        })
    );
    let ip = flow.ip.expect("IP");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str(), ip.ip_version),
        (XWING_IP, DEATHSTAR_IP, 1)
    );
    let tcp = flow.l4.and_then(|l| l.tcp).expect("TCP");
    assert_eq!((tcp.source_port, tcp.destination_port), (42818, 80));
    assert_eq!(tcp.flags, Some(hubble::TcpFlags { syn: true }));
    let src = flow.source.expect("source");
    assert_eq!(
        (src.namespace.as_str(), src.pod_name.as_str(), src.identity),
        ("default", "xwing", XWING_ID)
    );
    assert!(src.labels.contains(&"k8s:class=xwing".to_string()));
    assert_eq!(flow.destination.map(|d| d.identity), Some(DEATHSTAR_ID));

    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<hubble::ServerStatusRequest, hubble::ServerStatusResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/observer.Observer/ServerStatus");
    let status = grpc
        .unary(
            tonic::Request::new(hubble::ServerStatusRequest {}),
            path,
            codec,
        )
        .await
        .expect("ServerStatus by Hubble's path")
        .into_inner();
    assert_eq!(
        (status.num_flows, status.max_flows, status.seen_flows),
        (2, 4095, 2)
    );
    running.stop().await;
}
