//! What every connection of the proxy shares: the served snapshot, the upstream pools, the
//! limits, metrics and events, and the shutdown drain. Lower layers than the listeners and
//! the snapshot machinery, so that neither has to reach into the other.

use std::sync::{Arc, OnceLock};

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::event::EventSink;
use crate::memory::MemoryTrim;
use crate::metrics::Metrics;
use crate::rules::CompiledSnapshot;
use crate::settings::Limits;
use crate::upstream::Upstreams;

/// The proxy-wide services connections use.
pub(crate) struct Services {
    pub(crate) limits: Limits,
    /// Most client connections at once: the configured limit lowered to what the open-file
    /// limit allows.
    pub(crate) max_connections: usize,
    pub(crate) snapshot: watch::Sender<Option<Arc<CompiledSnapshot>>>,
    pub(crate) metrics: Metrics,
    pub(crate) events: EventSink,
    /// The HTTP server for client connections (built by [`crate::listener`]).
    pub(crate) server: auto::Builder<TokioExecutor>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) connection_slots: Arc<Semaphore>,
    pub(crate) admission: Arc<Admission>,
    /// Hands freed memory back to the system once many connections closed.
    pub(crate) memory: Arc<MemoryTrim>,
    pub(crate) drain: Drain,
}

impl Services {
    /// The snapshot being served.
    pub(crate) fn current(&self) -> Option<Arc<CompiledSnapshot>> {
        self.snapshot.borrow().clone()
    }
}

/// The shutdown drain: once started, connections finish their in-flight requests and close;
/// at the deadline the rest is closed.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    started: CancellationToken,
    deadline: OnceLock<Instant>,
}

impl Drain {
    /// Starts the drain with `deadline` (only the first call counts).
    pub(crate) fn start(&self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.started.cancel();
    }

    /// Resolves when the drain starts.
    pub(crate) async fn started(&self) {
        self.started.cancelled().await;
    }

    /// Resolves at the drain's deadline (never before the drain starts).
    pub(crate) async fn deadline(&self) {
        self.started().await;
        if let Some(deadline) = self.deadline.get() {
            tokio::time::sleep_until(*deadline).await;
        }
    }
}
