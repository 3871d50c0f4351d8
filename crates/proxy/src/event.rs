//! L7 events: one per HTTP request and response, shaped like Hubble's L7 flows so the
//! observer can turn them into `Flow` messages without guessing.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Direction, IdentityEntry};

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum L7EventKind {
    /// A request arrived (Hubble: L7 type REQUEST).
    HttpRequest,
    /// A response was sent back (Hubble: L7 type RESPONSE).
    HttpResponse,
    /// A connection on an HTTP port did not speak HTTP and was refused.
    NonHttp,
}

/// The proxy's verdict, as Hubble names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Passed on to the upstream (or the response passed back).
    Forwarded,
    /// Refused by policy (403) or as non-HTTP.
    Dropped,
}

/// One end of the connection: its address and, when the snapshot knows the address, its
/// security identity. Labels and names are the agent's to add (it has them for every
/// identity), so events stay small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Address and port.
    pub address: SocketAddr,
    /// Security identity, when the snapshot knows the address.
    pub identity: Option<u32>,
}

impl Peer {
    /// A peer described by what the snapshot knows of its address.
    pub fn new(address: SocketAddr, identity: Option<&IdentityEntry>) -> Self {
        Self {
            address,
            identity: identity.map(|i| i.identity),
        }
    }
}

/// One header copied into an event (only names listed in `Snapshot::event_headers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderPair {
    /// Lower-case header name.
    pub key: String,
    /// Value, lossily decoded as UTF-8.
    pub value: String,
}

/// The HTTP part of an event (Hubble's `HTTP` message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpInfo {
    /// Status code; 0 on requests.
    pub code: u16,
    /// Request method.
    pub method: String,
    /// `scheme://host/path?query`.
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Headers allowed by configuration; on responses, the request's `traceparent` and
    /// `x-request-id` come first.
    pub headers: Vec<HeaderPair>,
}

/// An L7 event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Event {
    /// Wall-clock time of the event, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Request, response or refused connection.
    pub kind: L7EventKind,
    /// Forwarded or dropped.
    pub verdict: Verdict,
    /// Direction of the policy that applied, from the local endpoint's point of view.
    pub direction: Direction,
    /// True for responses: source and destination are then swapped, as in Hubble.
    pub is_reply: bool,
    /// The sender of this message (the client for requests, the server for responses).
    pub source: Peer,
    /// The receiver of this message.
    pub destination: Peer,
    /// HTTP details; absent for non-HTTP refusals.
    pub http: Option<HttpInfo>,
    /// Time from request to response headers, on responses.
    pub latency_ns: Option<u64>,
    /// Free-form notes: why a connection was refused, headers whose mismatch was logged.
    /// (Always written: the binary batch encoding has no field names, so a field cannot be
    /// left out.)
    #[serde(default)]
    pub summary: Option<String>,
}

/// Nanoseconds since the Unix epoch, for event timestamps (wall clock, not tokio's clock,
/// because observers compare them with other nodes' flows).
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The sending half of the bounded event queue towards the agent.
///
/// Events are dropped (and counted) rather than queued without bound when the agent reads
/// too slowly or is away: visibility must never cost the proxy its memory.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<L7Event>,
    dropped: Counter,
}

impl EventSink {
    /// A queue holding at most `capacity` events, and the receiving half.
    pub fn new(capacity: usize, dropped: Counter) -> (Self, mpsc::Receiver<L7Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, dropped }, rx)
    }

    /// Queues an event, or counts it as dropped when the queue is full.
    pub fn emit(&self, event: L7Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts_instead_of_growing() {
        let (sink, mut rx) = EventSink::new(2, Counter::default());
        let event = L7Event {
            time_unix_nanos: now_unix_nanos(),
            kind: L7EventKind::HttpRequest,
            verdict: Verdict::Forwarded,
            direction: Direction::Ingress,
            is_reply: false,
            source: Peer::new("127.0.0.1:1".parse().unwrap(), None),
            destination: Peer::new("127.0.0.1:2".parse().unwrap(), None),
            http: None,
            latency_ns: None,
            summary: None,
        };
        for _ in 0..5 {
            sink.emit(event.clone());
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap(), event);
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.contains(r#""kind":"http-request""#) && json.contains(r#""verdict":"FORWARDED""#),
            "{json}"
        );
    }
}
