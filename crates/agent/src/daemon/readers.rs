//! The readers of the node's events: the kernel's event ring and the
//! proxy's messages become Hubble flows, enriched from the published view
//! they hold (taken once per batch), never from the state owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use myelin_common::{EventKind, ObservationPoint};
use myelin_datapath::EventReader;
use myelin_observe::Observer;
use myelin_observe::proto::flow::LostEventSource;
use myelin_proxy::control::ProxyMessage;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::api::EventCounters;
use crate::flows;
use crate::l7::FlowHeaders;
use crate::view::View;

/// The kernel event counters: the event reader counts, `Status` reads.
#[derive(Debug, Default)]
pub(super) struct EventTally {
    seen: AtomicU64,
    lost: AtomicU64,
    to_stack: AtomicU64,
    to_endpoint: AtomicU64,
    drops: AtomicU64,
}

impl EventTally {
    /// The counts so far.
    pub(super) fn counters(&self) -> EventCounters {
        EventCounters {
            seen: self.seen.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            to_stack: self.to_stack.load(Ordering::Relaxed),
            to_endpoint: self.to_endpoint.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
        }
    }

    fn count(&self, event: &myelin_common::TraceEvent) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let counter = match (
            EventKind::from_u8(event.kind),
            ObservationPoint::from_u8(event.observation_point),
        ) {
            (Some(EventKind::Drop), _) => &self.drops,
            (Some(EventKind::Trace), Some(ObservationPoint::ToStack)) => &self.to_stack,
            (Some(EventKind::Trace), Some(ObservationPoint::ToEndpoint)) => &self.to_endpoint,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns kernel events into flows until the ring fails.
pub(super) async fn read_events(
    mut reader: EventReader,
    views: watch::Receiver<Arc<View>>,
    observer: Observer,
    tally: Arc<EventTally>,
    suppressed_drops: Counter,
) {
    let clock = flows::KernelClock::now();
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch).await {
            tracing::error!("event ring: {e}");
            return;
        }
        let view = views.borrow().clone();
        for event in &batch {
            if let Some(flow) = flows::kernel_flow(event, &clock, &*view) {
                observer.push(flow);
            }
            tally.count(event);
        }
        let lost = reader.lost();
        let before = tally.lost.swap(lost, Ordering::Relaxed);
        if lost > before {
            observer.record_lost(LostEventSource::PerfEventRingBuffer, lost - before);
        }
        // The kernel's count is cumulative; the counter follows it.
        let suppressed = reader.suppressed_drops();
        let reported = suppressed_drops.get();
        if suppressed > reported {
            suppressed_drops.inc_by(suppressed - reported);
        }
    }
}

/// Turns the proxy's L7 events into flows and logs its answers, until the
/// control server goes.
pub(super) async fn read_proxy_messages(
    mut messages: tokio::sync::broadcast::Receiver<ProxyMessage>,
    views: watch::Receiver<Arc<View>>,
    observer: Observer,
    headers: FlowHeaders,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match messages.recv().await {
            Ok(ProxyMessage::Event(event)) => {
                let view = views.borrow().clone();
                observer.push(flows::l7_flow(&event, &*view, &headers));
            }
            Ok(ProxyMessage::Nack { version, error }) => {
                tracing::error!(version, "the proxy rejected its configuration: {error}");
            }
            Ok(ProxyMessage::Ack { version }) => tracing::debug!(version, "proxy configured"),
            Ok(ProxyMessage::Hello { version }) => tracing::info!(?version, "proxy connected"),
            Err(RecvError::Lagged(missed)) => {
                observer.record_lost(LostEventSource::ObserverEventsQueue, missed);
            }
            Err(RecvError::Closed) => return,
        }
    }
}
