//! The handle the agent and the HTTP server share: a [`ServiceMap`] behind a
//! lock, timed by tokio's clock, fed by pushes or by following an observer.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::observer::{Event, Observer};
use crate::proto::flow::Flow;

use super::aggregate::{ServiceMap, ServiceMapConfig};
use super::view::MapView;

/// A live service map; cheap to clone, all clones share one map.
///
/// Its clock is tokio's, so tests that pause time (`tokio::time::pause`,
/// `advance`) see rates and expiry move exactly as they advance it.
#[derive(Clone, Debug)]
pub struct SharedServiceMap {
    map: Arc<Mutex<ServiceMap>>,
    origin: Instant,
}

impl SharedServiceMap {
    /// An empty map with these bounds and windows. Must be called within a
    /// tokio runtime (it reads tokio's clock).
    pub fn new(config: ServiceMapConfig) -> Self {
        Self {
            map: Arc::new(Mutex::new(ServiceMap::new(config))),
            origin: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ServiceMap> {
        // Every mutation leaves the map consistent before it can panic, so a
        // poisoned lock is still usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Adds a flow seen now.
    pub fn push(&self, flow: Flow) {
        self.push_shared(Arc::new(flow));
    }

    /// Adds a flow seen now, sharing it with whoever else holds it (the
    /// observer's ring) instead of copying it.
    pub fn push_shared(&self, flow: Arc<Flow>) {
        let now = self.now();
        self.lock().record(flow, now);
    }

    /// The map now.
    pub fn view(&self) -> MapView {
        let now = self.now();
        let mut map = self.lock();
        map.expire(now);
        map.view(now)
    }

    /// Recent flows of edge `id`, oldest first; `None` if there is no such edge.
    pub fn edge_flows(&self, id: u64) -> Option<Vec<Arc<Flow>>> {
        self.lock().edge_flows(id)
    }

    /// Feeds the map with every flow pushed into `observer` from now on,
    /// until the observer is dropped. Flows missed because this reader fell
    /// behind are counted as lost in the view (`lost_flows`). The agent's push
    /// path stays as it is: the map reads the observer's broadcast, like a
    /// `--follow` client.
    pub fn follow(&self, observer: &Observer) -> JoinHandle<()> {
        let live = observer.subscribe(true).live;
        let map = self.clone();
        tokio::spawn(async move {
            let Some(mut live) = live else { return };
            loop {
                match live.recv().await {
                    Ok(Event::Flow(flow)) => map.push_shared(flow),
                    // Lost before the observer: the observer reports those.
                    Ok(Event::Lost(..)) => {}
                    Err(RecvError::Lagged(count)) => map.lock().record_lost(count),
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }
}
