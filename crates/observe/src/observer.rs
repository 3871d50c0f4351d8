//! The observer: a bounded ring of recent flows that the agent pushes into,
//! and a broadcast that followers read new flows from; and a ring of its own
//! for agent events (endpoint, policy, ipcache and service changes).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::flows;
use crate::metrics::Metrics;
use crate::proto::flow::{AgentEvent, Flow, LostEvent, LostEventSource};
use crate::proto::observer::GetAgentEventsResponse;

/// Hubble's default ring capacity.
pub const DEFAULT_CAPACITY: usize = 4095;
/// Agent events kept for GetAgentEvents (they are rare next to flows).
pub const DEFAULT_AGENT_EVENT_CAPACITY: usize = 1023;
/// Default number of events a follower may fall behind before it loses some.
pub const DEFAULT_FOLLOWER_BUFFER: usize = 1024;
/// How long a namespace stays listed after its last flow (as Hubble: one hour).
const NAMESPACE_TTL: Duration = Duration::from_secs(3600);
/// Bound on remembered namespaces, so that a flood of names cannot grow memory.
const MAX_NAMESPACES: usize = 10_000;

/// Settings of an [`Observer`].
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    /// Name of this node, stamped on flows that have none.
    pub node_name: String,
    /// Number of flows kept for GetFlows (Hubble's default: 4095).
    pub capacity: usize,
    /// Number of agent events kept for GetAgentEvents.
    pub agent_event_capacity: usize,
    /// How many events a follower may lag before it is told it lost some.
    pub follower_buffer: usize,
    /// Version reported by ServerStatus and GetNodes.
    pub version: String,
    /// Metric families updated for every flow, if any.
    pub metrics: Option<Metrics>,
}

impl ObserverConfig {
    /// Defaults for a node named `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            capacity: DEFAULT_CAPACITY,
            agent_event_capacity: DEFAULT_AGENT_EVENT_CAPACITY,
            follower_buffer: DEFAULT_FOLLOWER_BUFFER,
            version: concat!("myelin ", env!("CARGO_PKG_VERSION")).to_string(),
            metrics: None,
        }
    }
}

/// One entry of the ring: a flow, or a notice that events were lost.
#[derive(Debug, Clone)]
pub enum Event {
    /// A flow, shared between the ring and readers.
    Flow(Arc<Flow>),
    /// Events lost before they reached the ring, and when that was noticed.
    Lost(LostEvent, SystemTime),
}

impl Event {
    /// When the flow was observed, or the loss noticed.
    pub fn time(&self) -> SystemTime {
        match self {
            Self::Flow(flow) => flow
                .time
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            Self::Lost(_, at) => *at,
        }
    }
}

/// The span ServerStatus's flow rate covers, as Hubble's.
const FLOW_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Figures ServerStatus reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStatus {
    /// Flows currently in the ring.
    pub num_flows: u64,
    /// Capacity of the ring.
    pub max_flows: u64,
    /// Flows pushed since start.
    pub seen_flows: u64,
    /// Time since the observer started.
    pub uptime: Duration,
}

struct State {
    ring: VecDeque<Event>,
    num_flows: u64,
    seen_flows: u64,
    namespaces: BTreeMap<String, Instant>,
}

/// An agent event as GetAgentEvents sends it (time and node filled in).
pub(crate) type AgentEventEntry = Arc<GetAgentEventsResponse>;

struct Inner {
    config: ObserverConfig,
    started: Instant,
    state: Mutex<State>,
    tx: broadcast::Sender<Event>,
    agent_events: Mutex<VecDeque<AgentEventEntry>>,
    agent_tx: broadcast::Sender<AgentEventEntry>,
}

/// Handle the agent pushes flows into and the gRPC server reads from.
/// Cheap to clone; all clones share one ring.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("node_name", &self.inner.config.node_name)
            .field("status", &self.status())
            .finish()
    }
}

/// What a GetFlows reader starts from: the ring's content at one instant, and
/// (when following) a receiver that gets exactly the events pushed after it.
pub(crate) struct Subscription<T = Event> {
    pub(crate) history: Vec<T>,
    pub(crate) live: Option<broadcast::Receiver<T>>,
}

impl Observer {
    /// Creates an empty observer.
    pub fn new(config: ObserverConfig) -> Self {
        let capacity = config.capacity.max(1);
        let agent_event_capacity = config.agent_event_capacity.max(1);
        let (tx, _) = broadcast::channel(config.follower_buffer.max(1));
        let (agent_tx, _) = broadcast::channel(config.follower_buffer.max(1));
        Self {
            inner: Arc::new(Inner {
                agent_events: Mutex::new(VecDeque::with_capacity(agent_event_capacity)),
                agent_tx,
                config: ObserverConfig {
                    capacity,
                    agent_event_capacity,
                    ..config
                },
                started: Instant::now(),
                state: Mutex::new(State {
                    ring: VecDeque::with_capacity(capacity),
                    num_flows: 0,
                    seen_flows: 0,
                    namespaces: BTreeMap::new(),
                }),
                tx,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the ring consistent (every
        // mutation is a single push/pop), so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration this observer runs with.
    pub fn config(&self) -> &ObserverConfig {
        &self.inner.config
    }

    /// Adds a flow. Fills what the agent left empty: time (now), uuid, node
    /// name, summary, `Type` and the deprecated `reply` flag.
    pub fn push(&self, mut flow: Flow) {
        if flow.time.is_none() {
            flow.time = Some(prost_types::Timestamp::from(SystemTime::now()));
        }
        if flow.uuid.is_empty() {
            flow.uuid = uuid::Uuid::new_v4().to_string();
        }
        if flow.node_name.is_empty() {
            flow.node_name.clone_from(&self.inner.config.node_name);
        }
        flows::complete(&mut flow);
        if let Some(metrics) = &self.inner.config.metrics {
            metrics.observe_flow(&flow);
        }
        let now = Instant::now();
        let flow = Arc::new(flow);
        let mut state = self.state();
        for ep in [&flow.source, &flow.destination].into_iter().flatten() {
            if !ep.namespace.is_empty() {
                remember_namespace(&mut state.namespaces, &ep.namespace, now);
            }
        }
        state.seen_flows += 1;
        state.num_flows += 1;
        self.insert(&mut state, Event::Flow(flow));
    }

    /// Records events lost before they reached the observer (for example in
    /// the kernel ring buffer); readers see them as a LostEvent.
    pub fn record_lost(&self, source: LostEventSource, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(metrics) = &self.inner.config.metrics {
            metrics.observe_lost(source, count);
        }
        let lost = LostEvent {
            source: source as i32,
            num_events_lost: count,
            cpu: None,
            first: None,
            last: None,
        };
        let mut state = self.state();
        self.insert(&mut state, Event::Lost(lost, SystemTime::now()));
    }

    /// Records an agent event, stamped with the time now and this node's
    /// name; the oldest one goes when the agent event ring is full.
    pub fn push_agent_event(&self, event: AgentEvent) {
        let entry = Arc::new(GetAgentEventsResponse {
            agent_event: Some(event),
            node_name: self.inner.config.node_name.clone(),
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
        });
        let mut ring = self
            .inner
            .agent_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= self.inner.config.agent_event_capacity {
            ring.pop_front();
        }
        ring.push_back(entry.clone());
        // Sent under the lock, so a subscription sees each event once.
        let _ = self.inner.agent_tx.send(entry);
    }

    /// Snapshot of the agent event ring and, if `follow`, a receiver of
    /// what comes next.
    pub(crate) fn subscribe_agent_events(&self, follow: bool) -> Subscription<AgentEventEntry> {
        let ring = self
            .inner
            .agent_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Subscription {
            history: ring.iter().cloned().collect(),
            live: follow.then(|| self.inner.agent_tx.subscribe()),
        }
    }

    /// Counts events a follower lost by falling behind.
    pub(crate) fn record_follower_lag(&self, count: u64) {
        if let Some(metrics) = &self.inner.config.metrics {
            metrics.observe_lost(LostEventSource::HubbleRingBuffer, count);
        }
    }

    /// Adds under the lock, so that a subscription taken under the same
    /// lock sees every event exactly once: in its history or live. The ring
    /// stays in time order: an event older than the newest ones (an L7 flow
    /// the proxy reports after the packets of its connection) goes before
    /// them, so that `--first`/`--last` count in time order. Followers get
    /// events as they arrive.
    fn insert(&self, state: &mut State, event: Event) {
        let at = event.time();
        let position = state
            .ring
            .iter()
            .rposition(|e| e.time() <= at)
            .map_or(0, |i| i + 1);
        state.ring.insert(position, event.clone());
        if state.ring.len() > self.inner.config.capacity
            && let Some(Event::Flow(_)) = state.ring.pop_front()
        {
            state.num_flows -= 1;
        }
        // No receivers is normal (nobody follows); that is not an error.
        let _ = self.inner.tx.send(event);
    }

    /// Snapshot of the ring and, if `follow`, a receiver of what comes next.
    pub(crate) fn subscribe(&self, follow: bool) -> Subscription {
        let state = self.state();
        Subscription {
            history: state.ring.iter().cloned().collect(),
            live: follow.then(|| self.inner.tx.subscribe()),
        }
    }

    /// Ring figures for ServerStatus.
    pub fn status(&self) -> RingStatus {
        let state = self.state();
        RingStatus {
            num_flows: state.num_flows,
            max_flows: self.inner.config.capacity as u64,
            seen_flows: state.seen_flows,
            uptime: self.inner.started.elapsed(),
        }
    }

    /// Flows per second over the last minute before `now`, counted from the
    /// flows' times in the ring, as Hubble's `flows_rate`.
    pub fn flows_rate(&self, now: SystemTime) -> f64 {
        let since = now
            .checked_sub(FLOW_RATE_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let state = self.state();
        // The ring is in time order: count back from the newest.
        let recent = state
            .ring
            .iter()
            .rev()
            .filter(|e| matches!(e, Event::Flow(_)))
            .take_while(|e| e.time() >= since)
            .filter(|e| e.time() <= now)
            .count();
        #[allow(clippy::cast_precision_loss)]
        let recent = recent as f64;
        recent / FLOW_RATE_WINDOW.as_secs_f64()
    }

    /// Namespaces seen in flows during the last hour, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let now = Instant::now();
        let mut state = self.state();
        state
            .namespaces
            .retain(|_, seen| now.duration_since(*seen) < NAMESPACE_TTL);
        state.namespaces.keys().cloned().collect()
    }
}

fn remember_namespace(namespaces: &mut BTreeMap<String, Instant>, namespace: &str, now: Instant) {
    if let Some(seen) = namespaces.get_mut(namespace) {
        *seen = now;
        return;
    }
    if namespaces.len() >= MAX_NAMESPACES {
        let oldest = namespaces
            .iter()
            .min_by_key(|(_, seen)| **seen)
            .map(|(name, _)| name.clone());
        if let Some(oldest) = oldest {
            namespaces.remove(&oldest);
        }
    }
    namespaces.insert(namespace.to_string(), now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::Endpoint;

    fn flow(ns: &str) -> Flow {
        Flow {
            source: Some(Endpoint {
                namespace: ns.into(),
                pod_name: "p".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn ring_is_bounded_and_counts() {
        let mut config = ObserverConfig::new("node-a");
        config.capacity = 3;
        let observer = Observer::new(config);
        for _ in 0..5 {
            observer.push(flow("default"));
        }
        let status = observer.status();
        assert_eq!(status.num_flows, 3);
        assert_eq!(status.max_flows, 3);
        assert_eq!(status.seen_flows, 5);
        assert_eq!(observer.subscribe(false).history.len(), 3);
        assert_eq!(observer.namespaces(), vec!["default".to_string()]);
    }

    #[tokio::test]
    async fn push_fills_missing_fields() {
        let observer = Observer::new(ObserverConfig::new("node-a"));
        observer.push(flow("default"));
        let sub = observer.subscribe(false);
        let Some(Event::Flow(f)) = sub.history.first() else {
            panic!("expected a flow");
        };
        assert_eq!(f.node_name, "node-a");
        assert!(f.time.is_some());
        assert_eq!(f.uuid.len(), 36);
        assert_eq!(f.summary, "IP");
    }

    #[tokio::test]
    async fn agent_events_have_a_bounded_ring_of_their_own() {
        use crate::proto::flow::AgentEventType;
        let mut config = ObserverConfig::new("node-a");
        config.agent_event_capacity = 2;
        let observer = Observer::new(config);
        for kind in [
            AgentEventType::AgentStarted,
            AgentEventType::PolicyUpdated,
            AgentEventType::EndpointCreated,
        ] {
            observer.push_agent_event(AgentEvent {
                r#type: kind as i32,
                notification: None,
            });
        }
        let kept: Vec<i32> = observer
            .subscribe_agent_events(false)
            .history
            .iter()
            .map(|e| e.agent_event.as_ref().map_or(0, |a| a.r#type))
            .collect();
        assert_eq!(
            kept,
            [
                AgentEventType::PolicyUpdated as i32,
                AgentEventType::EndpointCreated as i32
            ]
        );
        let first = &observer.subscribe_agent_events(false).history[0];
        assert_eq!(first.node_name, "node-a");
        assert!(first.time.is_some());
        // Flows are not affected.
        assert_eq!(observer.status().num_flows, 0);
        assert!(observer.subscribe(false).history.is_empty());
    }

    #[tokio::test]
    async fn lost_events_are_in_the_ring() {
        let observer = Observer::new(ObserverConfig::new("node-a"));
        observer.record_lost(LostEventSource::PerfEventRingBuffer, 7);
        let sub = observer.subscribe(false);
        assert!(matches!(sub.history.first(), Some(Event::Lost(l, _)) if l.num_events_lost == 7));
        assert_eq!(observer.status().num_flows, 0);
    }

    #[tokio::test]
    async fn ring_is_in_time_order_and_rate_counts_the_last_minute() {
        let observer = Observer::new(ObserverConfig::new("n"));
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64, ns: &str| Flow {
            time: Some(prost_types::Timestamp::from(
                base + Duration::from_secs(secs),
            )),
            ..flow(ns)
        };
        observer.push(at(0, "a"));
        observer.push(at(100, "c"));
        // An L7 flow reported after a later packet goes before it.
        observer.push(at(50, "b"));
        let order: Vec<String> = observer
            .subscribe(false)
            .history
            .iter()
            .filter_map(|e| match e {
                Event::Flow(f) => f.source.as_ref().map(|s| s.namespace.clone()),
                Event::Lost(..) => None,
            })
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        // At base+100 s the last minute holds the flows at 50 s and 100 s.
        let rate = observer.flows_rate(base + Duration::from_secs(100));
        assert!((rate - 2.0 / 60.0).abs() < 1e-9, "{rate}");
    }
}
