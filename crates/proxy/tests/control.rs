//! The control channel, persistence and the proxy's life cycle through real unix sockets.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use myelin_proxy::config::HttpRule;
use myelin_proxy::control::{
    AgentMessage, ControlError, ControlServer, EVENT_ENCODING_POSTCARD_V1, POSTCARD_V1_BATCH,
    ProxyMessage,
};
use myelin_proxy::event::{L7Event, L7EventKind};
use myelin_proxy::{Proxy, ProxyConfig};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

fn only(path: &str) -> Vec<HttpRule> {
    vec![HttpRule {
        path: Some(path.into()),
        ..HttpRule::default()
    }]
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn nack_on_bad_regex_keeps_the_previous_snapshot_serving() {
    let h = Harness::new(only("/public")).await;
    assert_eq!(h.agent().ack_state().acked, Some(1));
    let mut bad = snapshot(2, &h.upstream, only("/private"));
    bad.l7_policies[0].http.push(HttpRule {
        method: Some("GET(".into()),
        ..HttpRule::default()
    });
    h.agent().push(bad);
    match tokio::time::timeout(WAIT, h.agent().wait_for_ack(2))
        .await
        .unwrap()
    {
        Err(ControlError::Nacked { version: 2, error }) => {
            assert!(error.contains("method regex \"GET(\""), "{error}");
        }
        other => panic!("expected a nack, got {other:?}"),
    }
    assert_eq!(h.proxy.snapshot_version(), Some(1));
    assert_eq!(status(&h, get("/public")).await, StatusCode::OK);
    assert_eq!(status(&h, get("/private")).await, StatusCode::FORBIDDEN);

    h.agent().push(snapshot(3, &h.upstream, only("/private")));
    tokio::time::timeout(WAIT, h.agent().wait_for_ack(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status(&h, get("/private")).await, StatusCode::OK);
    assert_eq!(status(&h, get("/public")).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn proxy_serves_while_the_agent_is_away_and_resynchronises() {
    let mut h = Harness::new(only("/public")).await;
    let addr = h.addr();
    // A stream of requests on one keep-alive connection and on fresh ones, across the restart.
    let traffic = tokio::spawn(async move {
        let mut kept = h1(addr).await;
        for _ in 0..40 {
            assert_eq!(send(&mut kept, get("/public")).await.0, StatusCode::OK);
            let mut fresh = h1(addr).await;
            assert_eq!(send(&mut fresh, get("/public")).await.0, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(h.agent.take());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        status(&h, get("/public")).await,
        StatusCode::OK,
        "serving without the agent"
    );

    let agent = ControlServer::bind(socket_path(&h.dir)).unwrap();
    let mut messages = agent.subscribe();
    agent.push(snapshot(2, &h.upstream, only("/public|/again")));
    tokio::time::timeout(WAIT, agent.wait_for_ack(2))
        .await
        .unwrap()
        .unwrap();
    match tokio::time::timeout(WAIT, messages.recv())
        .await
        .unwrap()
        .unwrap()
    {
        ProxyMessage::Hello { version } => {
            assert_eq!(version, Some(1), "the proxy says what it served")
        }
        other => panic!("expected hello first, got {other:?}"),
    }
    traffic.await.unwrap();
    assert_eq!(status(&h, get("/again")).await, StatusCode::OK);
    assert_eq!(status(&h, get("/other")).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn restarted_proxy_serves_the_persisted_snapshot_without_the_agent() {
    let mut h = Harness::new(only("/public")).await;
    assert!(snapshot_path(&h.dir).exists());
    drop(h.agent.take());
    h.proxy.shutdown();

    let restarted = Proxy::new(config(&h.dir));
    let started = tokio::time::Instant::now();
    restarted.start().unwrap();
    assert_eq!(restarted.snapshot_version(), Some(1));
    let addr = restarted.listener_addr("ingress").unwrap();
    let mut c = h1(addr).await;
    assert_eq!(send(&mut c, get("/public")).await.0, StatusCode::OK);
    assert_eq!(send(&mut c, get("/private")).await.0, StatusCode::FORBIDDEN);
    assert!(started.elapsed() < Duration::from_secs(1));

    // And it still picks up the agent when it comes.
    let agent = ControlServer::bind(socket_path(&h.dir)).unwrap();
    agent.push(snapshot(2, &h.upstream, only("/private")));
    tokio::time::timeout(WAIT, agent.wait_for_ack(2))
        .await
        .unwrap()
        .unwrap();
    let addr = restarted.listener_addr("ingress").unwrap();
    let mut c = h1(addr).await;
    assert_eq!(send(&mut c, get("/private")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn corrupt_persisted_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(snapshot_path(&dir), b"{not json").unwrap();
    let proxy = Proxy::new(config(&dir));
    proxy.start().unwrap();
    assert_eq!(proxy.snapshot_version(), None);
    assert!(proxy.start().is_err(), "start twice is refused");
}

#[tokio::test]
async fn missing_policy_fails_closed() {
    let h = Harness::with(
        upstream().await,
        |_| {},
        |u| {
            let mut s = snapshot(1, u, vec![]);
            s.l7_policies.clear();
            s
        },
    )
    .await;
    assert_eq!(status(&h, get("/")).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ipv6_loopback_end_to_end() {
    let upstream = upstream_on("[::1]:0").await;
    let h = Harness::with(
        upstream,
        |_| {},
        |u| {
            let mut s = snapshot(1, u, only("/v6"));
            s.listeners[0].address = "[::1]:0".parse().unwrap();
            s
        },
    )
    .await;
    assert!(h.addr().is_ipv6());
    assert_eq!(status(&h, get("/v6")).await, StatusCode::OK);
    assert_eq!(status(&h, get("/v4")).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn connection_cap_queues_excess_clients() {
    let h = Harness::with(
        upstream().await,
        |c: &mut ProxyConfig| c.limits.max_connections = 1,
        |u| snapshot(1, u, vec![]),
    )
    .await;
    let mut first = h.h1().await;
    assert_eq!(send(&mut first, get("/")).await.0, StatusCode::OK);
    let addr = h.addr();
    let second = tokio::spawn(async move {
        let mut c = h1(addr).await;
        send(&mut c, get("/")).await.0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second client waits while the only slot is taken"
    );
    drop(first);
    let status = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// An agent written by hand on the raw socket: a stand-in for agents of other builds.
struct RawAgent {
    reader: FramedRead<tokio::net::unix::OwnedReadHalf, LengthDelimitedCodec>,
    writer: FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>,
}

impl RawAgent {
    async fn accept(listener: &tokio::net::UnixListener) -> Self {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let (read, write) = stream.into_split();
        Self {
            reader: FramedRead::new(read, LengthDelimitedCodec::new()),
            writer: FramedWrite::new(write, LengthDelimitedCodec::new()),
        }
    }

    async fn send(&mut self, message: &AgentMessage) {
        let frame = serde_json::to_vec(message).unwrap();
        self.writer.send(bytes::Bytes::from(frame)).await.unwrap();
    }

    async fn frame(&mut self) -> bytes::BytesMut {
        tokio::time::timeout(WAIT, self.reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

/// Upgrades meet agents and proxies of different builds: the proxy writes binary event
/// batches only to an agent that offered them in its greeting, and JSON to one that did not.
#[tokio::test]
async fn event_batches_are_binary_only_for_an_agent_that_offers_it() {
    for offers_binary in [false, true] {
        let upstream = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(socket_path(&dir)).unwrap();
        let proxy = Proxy::new(config(&dir));
        proxy.start().unwrap();
        let mut agent = RawAgent::accept(&listener).await;
        let hello: ProxyMessage = serde_json::from_slice(&agent.frame().await).unwrap();
        assert_eq!(hello, ProxyMessage::Hello { version: None });
        if offers_binary {
            agent
                .send(&AgentMessage::Hello {
                    event_encodings: vec![
                        "a-future-encoding".into(),
                        EVENT_ENCODING_POSTCARD_V1.into(),
                    ],
                })
                .await;
        }
        agent
            .send(&AgentMessage::Snapshot(snapshot(
                1,
                &upstream,
                only("/public"),
            )))
            .await;
        let ack: ProxyMessage = serde_json::from_slice(&agent.frame().await).unwrap();
        assert_eq!(ack, ProxyMessage::Ack { version: 1 });

        let addr = proxy.listener_addr("ingress").unwrap();
        assert_eq!(
            send(&mut h1(addr).await, get("/public")).await.0,
            StatusCode::OK
        );
        let frame = agent.frame().await;
        let events: Vec<L7Event> = if offers_binary {
            assert_eq!(frame[0], POSTCARD_V1_BATCH, "a binary batch");
            postcard::from_bytes(&frame[1..]).unwrap()
        } else {
            assert_eq!(frame[0], b'[', "a JSON array");
            serde_json::from_slice(&frame).unwrap()
        };
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [L7EventKind::HttpRequest, L7EventKind::HttpResponse],
            "offers binary: {offers_binary}"
        );
        assert_eq!(
            events[0].http.as_ref().map(|h| h.url.as_str()),
            Some("http://backend.default/public")
        );
        proxy.shutdown();
    }
}
