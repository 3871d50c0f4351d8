//! The control channel between the agent and the proxy.
//!
//! The agent listens on a unix socket ([`ControlServer`]); the proxy connects to it
//! ([`run_client`]) and reconnects with backoff whenever the agent goes away, so an agent
//! restart never touches the data path. Frames are a 4-byte big-endian length followed by
//! one JSON message. The agent sends whole [`Snapshot`]s; the proxy answers each with an
//! `Ack` or a `Nack` and streams L7 events back.
//!
//! Events travel in batches: a frame whose JSON is an array (`[event, event, …]`) carries
//! every event queued within [`EVENT_LINGER`] of the first one (at most
//! [`MAX_BATCH_EVENTS`]), so under load one write and one read move many events instead of
//! one each. The agent's side
//! hands them to subscribers one by one as [`ProxyMessage::Event`]; a single `event` object
//! frame is still accepted.

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

/// First delay before reconnecting to the agent; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts, which bounds how long a returning agent
/// waits for its proxy.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Messages from the agent to the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
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
            Step::Frame(Some(Ok(frame))) if is_event_batch(&frame) => {
                match serde_json::from_slice::<Vec<L7Event>>(&frame) {
                    Ok(events) => {
                        for event in events {
                            // No subscriber is fine: events are then simply not observed.
                            let _ = shared.messages.send(ProxyMessage::Event(Box::new(event)));
                        }
                    }
                    Err(e) => warn!(error = %e, "malformed event batch from the proxy"),
                }
            }
            Step::Frame(Some(Ok(frame))) => match serde_json::from_slice::<ProxyMessage>(&frame) {
                Ok(message) => {
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

/// Whether a frame from the proxy is a batch of events (a JSON array) rather than one
/// [`ProxyMessage`] (a JSON object).
fn is_event_batch(frame: &[u8]) -> bool {
    frame
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// Encodes events as one batch frame (a JSON array of events).
fn encode_events(events: &[L7Event]) -> Result<Bytes, serde_json::Error> {
    // Most events encode in a few hundred bytes; one allocation per batch, not per event.
    let mut out = Vec::with_capacity(events.len() * 512);
    serde_json::to_writer(&mut out, events)?;
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
                let frame = encode_events(&batch).map_err(std::io::Error::other);
                batch.clear();
                writer.send(frame?).await?;
                continue;
            }
        };
        writer.send(send(&reply)?).await?;
    }
}
