//! Reading the kernel programs' event ring.

use std::mem::size_of;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use myelin_common::TraceEvent;
use myelin_common::maps::names;
use tokio::io::unix::AsyncFd;

use crate::error::DatapathError;
use crate::maps::map_error;

/// How often the reader looks for events the kernel programs did not wake it for.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Appends every event in `ring` to `out`.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<TraceEvent>) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<TraceEvent>() {
            // SAFETY: the record is at least one TraceEvent long and TraceEvent is plain
            // old data; read_unaligned needs no alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) });
        }
    }
}

/// Drains the event ring as events arrive.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    suppressed: PerCpuArray<MapData, u64>,
}

/// The event maps the reader takes from the loaded object.
pub(crate) struct EventMaps {
    /// The ring buffer.
    pub(crate) ring: Map,
    /// Events the ring had no room for.
    pub(crate) lost: Map,
    /// Drops whose event the rate limit suppressed.
    pub(crate) suppressed: Map,
}

impl EventReader {
    pub(crate) fn new(maps: EventMaps) -> Result<Self, DatapathError> {
        let ring = RingBuf::try_from(maps.ring).map_err(map_error(names::EVENTS))?;
        let lost = PerCpuArray::try_from(maps.lost).map_err(map_error(names::LOST))?;
        let suppressed =
            PerCpuArray::try_from(maps.suppressed).map_err(map_error(names::DROPS_SUPPRESSED))?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
        // the RingBuf, and always returns that same fd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| DatapathError::Events(e.into()))?;
        Ok(Self {
            ring,
            lost,
            suppressed,
        })
    }

    /// Waits for events and appends every one available to `out`: at most
    /// [`POLL_INTERVAL`] after they were written, sooner when the kernel programs wake the
    /// reader (they do only once events pile up, see the kernel crate's `emit`).
    pub async fn read(&mut self, out: &mut Vec<TraceEvent>) -> Result<(), DatapathError> {
        match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
            Ok(ready) => {
                let mut guard = ready.map_err(DatapathError::Events)?;
                drain(guard.get_inner_mut(), out);
                guard.clear_ready();
            }
            Err(_) => drain(self.ring.get_mut(), out),
        }
        Ok(())
    }

    /// Events the kernel could not write because the ring was full, since the
    /// maps were created.
    pub fn lost(&self) -> u64 {
        sum(&self.lost)
    }

    /// Drops the kernel programs did not report because a CPU exceeded its
    /// drop-event rate (`DROP_EVENTS_PER_SECOND`, after a burst of
    /// `DROP_EVENT_BURST`), since the maps were created. Every drop under
    /// that rate is reported.
    pub fn suppressed_drops(&self) -> u64 {
        sum(&self.suppressed)
    }
}

/// The sum over CPUs of a per-CPU counter at index 0 (0 when unreadable: a
/// counter never fails the reader).
fn sum(counter: &PerCpuArray<MapData, u64>) -> u64 {
    counter
        .get(&0, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}
