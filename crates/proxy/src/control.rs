//! The control channel between the agent and the proxy.
//!
//! The agent listens on a unix socket ([`ControlServer`]); the proxy connects to it
//! ([`run_client`]) and reconnects with backoff whenever the agent goes away, so an agent
//! restart never touches the data path. Frames are a 4-byte big-endian length followed by
//! one JSON message or a binary event batch. The agent greets each proxy with a `Hello` naming the event encodings it
//! reads, then sends whole [`Snapshot`]s; the proxy answers each with an `Ack` or a `Nack`
//! and streams L7 events back.
//!
//! Events travel in batches: one frame carries every event queued within [`EVENT_LINGER`] of
//! the first one (at most [`MAX_BATCH_EVENTS`]), so under load one write and one read move
//! many events instead of one each. A batch is a JSON array (`[event, event, …]`) until the
//! agent's `Hello` offers [`EVENT_ENCODING_POSTCARD_V1`]; then it is the byte
//! [`POSTCARD_V1_BATCH`] followed by the postcard encoding of the events, which costs both
//! sides a fraction of JSON's CPU (the proxy's events are one per request and response).
//! Agents and proxies of different builds meet during upgrades: an agent that sends no
//! `Hello` gets JSON, and the agent reads JSON batches and single `event` objects from
//! proxies that predate the binary batches. The agent's side hands events to subscribers one
//! by one as [`ProxyMessage::Event`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Snapshot;
use crate::event::L7Event;

/// Largest frame either side accepts; a snapshot of a big node is a few MiB.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Most L7 events written in one frame.
pub const MAX_BATCH_EVENTS: usize = 1024;

/// How long the proxy lets events gather after the first one before writing a frame. Every
/// frame wakes the agent, which shares the node's cores with the proxy: at tens of thousands
/// of requests per second, writing whatever happens to be queued meant thousands of wake-ups
/// and context switches per second; a few milliseconds of delay on flows costs nothing.
pub const EVENT_LINGER: Duration = Duration::from_millis(5);

/// The binary event batch encoding: postcard over `Vec<L7Event>` as this build defines it.
/// Postcard writes no field names, so any change to [`L7Event`]'s fields (or the types in
/// it) needs a new encoding name; the `postcard_v1_layout_is_pinned` test fails until then.
/// A new enum variant needs one too (that test cannot see it): an agent of the previous
/// build would refuse every batch holding it.
pub const EVENT_ENCODING_POSTCARD_V1: &str = "postcard-v1";

/// First byte of a postcard-v1 event batch frame. JSON frames start with `{`, `[` or
/// whitespace, so the byte tells the two apart.
pub const POSTCARD_V1_BATCH: u8 = 0x01;

/// First delay before reconnecting to the agent; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts, which bounds how long a returning agent
/// waits for its proxy.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Messages from the agent to the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Sent first on every connection: what the agent reads besides JSON.
    Hello {
        /// Event batch encodings the agent decodes, e.g. [`EVENT_ENCODING_POSTCARD_V1`].
        #[serde(default)]
        event_encodings: Vec<String>,
    },
    /// A complete configuration to apply.
    Snapshot(Snapshot),
}

/// Messages from the proxy to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMessage {
    /// Sent first on every connection: the version the proxy serves now, if any.
    Hello {
        /// Version of the snapshot being served.
        version: Option<u64>,
    },
    /// The snapshot of this version is applied and serving.
    Ack {
        /// The applied version.
        version: u64,
    },
    /// The snapshot of this version was rejected; the previous one keeps serving.
    Nack {
        /// The rejected version.
        version: u64,
        /// Why, for the operator.
        error: String,
    },
    /// An L7 event (boxed: it is much larger than the other messages).
    Event(Box<L7Event>),
}

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be bound, connected, read or written.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A frame was not valid JSON of the expected shape.
    #[error("control channel: malformed message: {0}")]
    Decode(#[from] serde_json::Error),
    /// A binary event batch could not be decoded.
    #[error("control channel: malformed binary event batch: {0}")]
    DecodeEvents(#[from] postcard::Error),
    /// The proxy rejected the snapshot.
    #[error("the proxy rejected snapshot version {version}: {error}")]
    Nacked {
        /// The rejected version.
        version: u64,
        /// The proxy's reason.
        error: String,
    },
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .big_endian()
        .new_codec()
}

fn encode<T: Serialize>(message: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(message).map(Bytes::from)
}

/// What the agent knows about its proxy's acknowledgements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    /// Highest version acknowledged.
    pub acked: Option<u64>,
    /// Last rejected version and the reason.
    pub nacked: Option<(u64, String)>,
}

#[derive(Debug)]
struct ServerShared {
    path: PathBuf,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    acks: watch::Sender<AckState>,
    messages: broadcast::Sender<ProxyMessage>,
}

/// The agent's end of the control channel.
///
/// It remembers the latest snapshot and sends it to every proxy that connects, so a proxy
/// that reconnects resynchronises by itself. Dropping the server closes the socket and all
/// connections (the proxy then keeps serving and reconnects with backoff).
#[derive(Debug)]
pub struct ControlServer {
    shared: Arc<ServerShared>,
    cancel: CancellationToken,
}

impl ControlServer {
    /// Binds the socket (replacing a stale one left by a previous agent) and starts accepting
    /// in a task on the current tokio runtime (so it must be called inside one).
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ControlError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io)?;
        let (messages, _) = broadcast::channel(1024);
        let shared = Arc::new(ServerShared {
            path,
            latest: watch::Sender::new(None),
            acks: watch::Sender::new(AckState::default()),
            messages,
        });
        let cancel = CancellationToken::new();
        tokio::spawn(accept_proxies(listener, shared.clone(), cancel.clone()));
        Ok(Self { shared, cancel })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Makes `snapshot` the desired configuration and sends it to the connected proxy (and to
    /// any proxy that connects later).
    pub fn push(&self, snapshot: Snapshot) {
        self.shared.latest.send_replace(Some(Arc::new(snapshot)));
    }

    /// Every message from the proxy (hellos, acks, nacks, events). A receiver that falls
    /// behind loses the oldest messages (`RecvError::Lagged`) instead of growing memory.
    pub fn subscribe(&self) -> broadcast::Receiver<ProxyMessage> {
        self.shared.messages.subscribe()
    }

    /// The acknowledgement state so far.
    pub fn ack_state(&self) -> AckState {
        self.shared.acks.borrow().clone()
    }

    /// Waits until the proxy acknowledges `version` (or a later one), or rejects `version`.
    pub async fn wait_for_ack(&self, version: u64) -> Result<(), ControlError> {
        let mut acks = self.shared.acks.subscribe();
        loop {
            {
                let state = acks.borrow_and_update();
                if let Some((nacked, error)) = &state.nacked
                    && *nacked == version
                {
                    return Err(ControlError::Nacked {
                        version,
                        error: error.clone(),
                    });
                }
                if state.acked.is_some_and(|acked| acked >= version) {
                    return Ok(());
                }
            }
            // The sender lives in `self.shared`, so it cannot be dropped while we wait.
            if acks.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_proxies(
    listener: UnixListener,
    shared: Arc<ServerShared>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                info!(path = %shared.path.display(), "proxy connected to the control socket");
                tokio::spawn(serve_proxy(stream, shared.clone(), cancel.child_token()));
            }
            Err(e) => {
                warn!(error = %e, "accepting a proxy on the control socket failed");
                tokio::time::sleep(MIN_BACKOFF).await;
            }
        }
    }
}

async fn serve_proxy(stream: UnixStream, shared: Arc<ServerShared>, cancel: CancellationToken) {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, codec());
    let mut writer = FramedWrite::new(write, codec());
    let hello = AgentMessage::Hello {
        event_encodings: vec![EVENT_ENCODING_POSTCARD_V1.to_owned()],
    };
    match encode(&hello) {
        Ok(frame) => {
            if let Err(e) = writer.send(frame).await {
                debug!(error = %e, "proxy went away before the greeting");
                return;
            }
        }
        Err(e) => warn!(error = %e, "encoding the greeting failed"),
    }
    let mut latest = shared.latest.subscribe();
    latest.mark_changed();
    loop {
        enum Step {
            Send,
            Frame(Option<Result<bytes::BytesMut, std::io::Error>>),
        }
        let step = tokio::select! {
            changed = latest.changed() => match changed {
                Ok(()) => Step::Send,
                Err(_) => return,
            },
            frame = reader.next() => Step::Frame(frame),
            () = cancel.cancelled() => return,
        };
        match step {
            Step::Send => {
                let snapshot = latest.borrow_and_update().clone();
                let Some(snapshot) = snapshot else { continue };
                let frame = match encode(&AgentMessage::Snapshot((*snapshot).clone())) {
                    Ok(frame) => frame,
                    Err(e) => {
                        warn!(error = %e, "encoding a snapshot failed");
                        continue;
                    }
                };
                if let Err(e) = writer.send(frame).await {
                    debug!(error = %e, "proxy went away while sending a snapshot");
                    return;
                }
            }
            Step::Frame(None) => {
                info!("proxy disconnected from the control socket");
                return;
            }
            Step::Frame(Some(Err(e))) => {
                warn!(error = %e, "reading from the proxy failed");
                return;
            }
            Step::Frame(Some(Ok(frame))) => match decode_from_proxy(&frame) {
                Ok(FromProxy::Events(events)) => {
                    for event in events {
                        // No subscriber is fine: events are then simply not observed.
                        let _ = shared.messages.send(ProxyMessage::Event(Box::new(event)));
                    }
                }
                Ok(FromProxy::Message(message)) => {
                    match &message {
                        ProxyMessage::Ack { version } => shared.acks.send_modify(|s| {
                            s.acked = Some(s.acked.map_or(*version, |a| a.max(*version)));
                        }),
                        ProxyMessage::Nack { version, error } => {
                            warn!(version, %error, "proxy rejected a snapshot");
                            shared
                                .acks
                                .send_modify(|s| s.nacked = Some((*version, error.clone())));
                        }
                        ProxyMessage::Hello { .. } | ProxyMessage::Event(_) => {}
                    }
                    // No subscriber is fine: events are then simply not observed.
                    let _ = shared.messages.send(message);
                }
                Err(e) => warn!(error = %e, "malformed message from the proxy"),
            },
        }
    }
}

/// A frame from the proxy, decoded.
#[derive(Debug, PartialEq)]
enum FromProxy {
    /// A batch of events (binary or a JSON array).
    Events(Vec<L7Event>),
    /// One message (a JSON object).
    Message(ProxyMessage),
}

fn decode_from_proxy(frame: &[u8]) -> Result<FromProxy, ControlError> {
    if let Some((&POSTCARD_V1_BATCH, events)) = frame.split_first() {
        return Ok(FromProxy::Events(postcard::from_bytes(events)?));
    }
    if frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        Ok(FromProxy::Events(serde_json::from_slice(frame)?))
    } else {
        Ok(FromProxy::Message(serde_json::from_slice(frame)?))
    }
}

/// How the proxy writes event batches on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventEncoding {
    /// A JSON array: what every agent reads.
    Json,
    /// [`EVENT_ENCODING_POSTCARD_V1`], once the agent has offered it.
    PostcardV1,
}

impl EventEncoding {
    /// The best encoding among those the agent offers.
    fn chosen(offered: &[String]) -> Self {
        if offered.iter().any(|e| e == EVENT_ENCODING_POSTCARD_V1) {
            Self::PostcardV1
        } else {
            Self::Json
        }
    }
}

/// Encodes events as one batch frame.
fn encode_events(events: &[L7Event], encoding: EventEncoding) -> std::io::Result<Bytes> {
    // Events encode in at most a few hundred bytes; one allocation per batch, not per event.
    let mut out = Vec::with_capacity(events.len() * 512);
    match encoding {
        EventEncoding::Json => serde_json::to_writer(&mut out, events)?,
        EventEncoding::PostcardV1 => {
            out.push(POSTCARD_V1_BATCH);
            out = postcard::to_extend(events, out).map_err(std::io::Error::other)?;
        }
    }
    Ok(Bytes::from(out))
}

/// The proxy's side of snapshot handling: what [`run_client`] calls for each snapshot.
pub trait SnapshotSink: Send + Sync + 'static {
    /// Applies a snapshot; `Err` carries the reason sent back in the `Nack`.
    fn apply(&self, snapshot: Snapshot) -> Result<(), String>;
    /// Version of the snapshot being served, if any.
    fn version(&self) -> Option<u64>;
}

/// The proxy's end of the control channel: connects to the agent's socket at `path`,
/// applies snapshots through `sink`, answers with acks and nacks, and forwards events from
/// `events`. Reconnects with exponential backoff until `cancel` fires. While disconnected,
/// events wait in their bounded queue and newer ones are dropped by the sender.
pub async fn run_client(
    path: PathBuf,
    sink: Arc<dyn SnapshotSink>,
    mut events: mpsc::Receiver<L7Event>,
    cancel: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            connected = UnixStream::connect(&path) => connected,
            () = cancel.cancelled() => return,
        };
        match connected {
            Ok(stream) => {
                info!(path = %path.display(), "connected to the agent");
                backoff = MIN_BACKOFF;
                match client_session(stream, sink.as_ref(), &mut events, &cancel).await {
                    Ok(()) => info!("agent closed the control connection"),
                    Err(e) => warn!(error = %e, "control connection to the agent failed"),
                }
            }
            Err(e) => debug!(path = %path.display(), error = %e, "agent not reachable yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn client_session(
    stream: UnixStream,
    sink: &dyn SnapshotSink,
    events: &mut mpsc::Receiver<L7Event>,
    cancel: &CancellationToken,
) -> Result<(), std::io::Error> {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, codec());
    let mut writer = FramedWrite::new(write, codec());
    let send = |message: &ProxyMessage| encode(message).map_err(std::io::Error::other);
    writer
        .send(send(&ProxyMessage::Hello {
            version: sink.version(),
        })?)
        .await?;
    let mut batch = Vec::with_capacity(MAX_BATCH_EVENTS);
    let mut events_open = true;
    // JSON until the agent says it reads more: an agent of an older build never will.
    let mut encoding = EventEncoding::Json;
    loop {
        enum Step {
            Frame(Option<Result<bytes::BytesMut, std::io::Error>>),
            Events,
        }
        let step = tokio::select! {
            frame = reader.next() => Step::Frame(frame),
            // Everything queued so far, in one frame.
            received = events.recv_many(&mut batch, MAX_BATCH_EVENTS), if events_open => {
                if received == 0 {
                    // Every sender is gone: only snapshots are left to serve.
                    events_open = false;
                    continue;
                }
                Step::Events
            }
            () = cancel.cancelled() => return Ok(()),
        };
        let reply = match step {
            Step::Frame(None) => return Ok(()),
            Step::Frame(Some(frame)) => match serde_json::from_slice::<AgentMessage>(&frame?) {
                Ok(AgentMessage::Hello { event_encodings }) => {
                    encoding = EventEncoding::chosen(&event_encodings);
                    debug!(?encoding, "agent greeted");
                    continue;
                }
                Ok(AgentMessage::Snapshot(snapshot)) => {
                    let version = snapshot.version;
                    match sink.apply(snapshot) {
                        Ok(()) => ProxyMessage::Ack { version },
                        Err(error) => ProxyMessage::Nack { version, error },
                    }
                }
                Err(e) => {
                    warn!(error = %e, "malformed message from the agent");
                    continue;
                }
            },
            Step::Events => {
                if batch.len() < MAX_BATCH_EVENTS {
                    tokio::time::sleep(EVENT_LINGER).await;
                    while batch.len() < MAX_BATCH_EVENTS {
                        match events.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                }
                let frame = encode_events(&batch, encoding);
                batch.clear();
                writer.send(frame?).await?;
                continue;
            }
        };
        writer.send(send(&reply)?).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Direction;
    use crate::event::{HeaderPair, HttpInfo, L7EventKind, Peer, Verdict};

    fn events() -> Vec<L7Event> {
        let request = L7Event {
            time_unix_nanos: 1_764_115_200_000_000_123,
            kind: L7EventKind::HttpRequest,
            verdict: Verdict::Forwarded,
            direction: Direction::Ingress,
            is_reply: false,
            source: Peer {
                address: "10.0.1.7:40000".parse().unwrap(),
                identity: Some(4242),
            },
            destination: Peer {
                address: "[fd00::1]:80".parse().unwrap(),
                identity: None,
            },
            http: Some(HttpInfo {
                code: 0,
                method: "POST".into(),
                url: "http://deathstar/v1/request-landing".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![HeaderPair {
                    key: "x-request-id".into(),
                    value: "ab\"c".into(),
                }],
            }),
            latency_ns: None,
            summary: None,
        };
        let refused = L7Event {
            kind: L7EventKind::NonHttp,
            verdict: Verdict::Dropped,
            direction: Direction::Egress,
            is_reply: true,
            http: None,
            latency_ns: Some(1_500),
            summary: Some("not HTTP".into()),
            ..request.clone()
        };
        vec![request, refused]
    }

    #[test]
    fn both_batch_encodings_and_single_events_decode_to_the_same_events() {
        for encoding in [EventEncoding::Json, EventEncoding::PostcardV1] {
            let frame = encode_events(&events(), encoding).unwrap();
            assert_eq!(
                decode_from_proxy(&frame).unwrap(),
                FromProxy::Events(events()),
                "{encoding:?}"
            );
        }
        // A proxy of a build before batches sent each event as its own message.
        let single = encode(&ProxyMessage::Event(Box::new(events()[1].clone()))).unwrap();
        assert_eq!(
            decode_from_proxy(&single).unwrap(),
            FromProxy::Message(ProxyMessage::Event(Box::new(events()[1].clone())))
        );
        let truncated = encode_events(&events(), EventEncoding::PostcardV1).unwrap();
        assert!(matches!(
            decode_from_proxy(&truncated[..truncated.len() - 3]),
            Err(ControlError::DecodeEvents(_))
        ));
    }

    #[test]
    fn the_best_offered_encoding_is_chosen() {
        assert_eq!(EventEncoding::chosen(&[]), EventEncoding::Json);
        assert_eq!(
            EventEncoding::chosen(&["cbor".into()]),
            EventEncoding::Json,
            "unknown names are skipped"
        );
        assert_eq!(
            EventEncoding::chosen(&["cbor".into(), EVENT_ENCODING_POSTCARD_V1.into()]),
            EventEncoding::PostcardV1
        );
    }

    /// The bytes of a postcard-v1 batch. When this fails, `L7Event` (or a type in it)
    /// changed shape: agents of the previous build would misread the new batches, so give
    /// the encoding a new name (and first byte), keep reading the old one, then update this.
    #[test]
    fn postcard_v1_layout_is_pinned() {
        let frame = encode_events(&events(), EventEncoding::PostcardV1).unwrap();
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "0102fb80f8f6d7add9bd1800000000000a000107c0b80201922101fd00000000",
                "00000000000000000000015000010004504f535423687474703a2f2f64656174",
                "68737461722f76312f726571756573742d6c616e64696e6708485454502f312e",
                "31010c782d726571756573742d696404616222630000fb80f8f6d7add9bd1802",
                "010101000a000107c0b80201922101fd00000000000000000000000000000150",
                "000001dc0b01086e6f742048545450",
            )
        );
    }
}
