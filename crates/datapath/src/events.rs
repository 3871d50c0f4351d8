//! Reading the kernel programs' event ring.

use std::mem::size_of;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use myelin_common::TraceEvent;
use myelin_common::maps::names;
use tokio::io::unix::AsyncFd;

use crate::error::DatapathError;

/// Drains the event ring as events arrive.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
}

impl EventReader {
    pub(crate) fn new(ring: Map, lost: Map) -> Result<Self, DatapathError> {
        let ring = RingBuf::try_from(ring).map_err(|source| DatapathError::Map {
            map: names::EVENTS,
            source,
        })?;
        let lost = PerCpuArray::try_from(lost).map_err(|source| DatapathError::Map {
            map: names::LOST,
            source,
        })?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns
        // the RingBuf, and always returns that same fd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| DatapathError::Events(e.into()))?;
        Ok(Self { ring, lost })
    }

    /// Waits for events and appends every one available to `out`.
    pub async fn read(&mut self, out: &mut Vec<TraceEvent>) -> Result<(), DatapathError> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .map_err(DatapathError::Events)?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<TraceEvent>() {
                // SAFETY: the record is at least one TraceEvent long and
                // TraceEvent is plain old data; read_unaligned needs no alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) });
            }
        }
        guard.clear_ready();
        Ok(())
    }

    /// Events the kernel could not write because the ring was full, since the
    /// maps were created.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
