//! Giving memory back to the system after a connection storm.
//!
//! glibc's allocator keeps what the proxy frees: the buffers and tasks of 10,000 closed
//! connections stay in its free lists (in the middle of the heap, between chunks still in
//! use, where its automatic trim at the top of the heap never reaches), so the proxy's
//! resident set stayed at its peak until a restart (12 MB, 378 MB after one storm, 578 MB
//! after three). `malloc_trim` hands every free page back. It walks the heap, so it runs
//! when the number of open connections has dropped well below its peak since the last
//! trim, not on every close: under a steady load the freed memory is reused at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use tracing::debug;

/// Fewest connections that must have closed (from the peak) before a trim: below this the
/// memory given back (about 20-40 KB a connection) is not worth walking the heap.
const MIN_CLOSED_FOR_TRIM: usize = 64;

/// Tracks open client connections against their peak since the last trim and trims the
/// heap when they have fallen to half of it (and by [`MIN_CLOSED_FOR_TRIM`]): a storm of
/// 10,000 that closes is trimmed at 5,000, 2,500, ... down to its last few dozen.
#[derive(Debug)]
pub(crate) struct MemoryTrim {
    /// Client connections open now.
    open: AtomicUsize,
    /// Most connections open at once since the last trim.
    peak: AtomicUsize,
    /// A trim is running (they are not stacked).
    trimming: AtomicBool,
    /// `myelin_proxy_memory_trims_total`.
    trims: Counter,
}

impl MemoryTrim {
    /// A tracker counting its trims in `trims`.
    pub(crate) fn new(trims: Counter) -> Self {
        Self {
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            trimming: AtomicBool::new(false),
            trims,
        }
    }

    /// A client connection opened.
    pub(crate) fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    /// A client connection closed (and freed its buffers). Starts a trim when the open
    /// connections fell far enough.
    pub(crate) fn closed(self: &Arc<Self>) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        if !self.due(open) {
            return;
        }
        let trim = self.clone();
        // Connections that closed while the heap was walked are looked at again after it.
        let run = move || {
            let mut open = open;
            loop {
                let started = std::time::Instant::now();
                release_free_memory();
                debug!(open, elapsed = ?started.elapsed(), "handed freed memory back to the system");
                trim.trims.inc();
                trim.trimming.store(false, Ordering::Release);
                open = trim.open.load(Ordering::Relaxed);
                if !trim.due(open) {
                    break;
                }
            }
        };
        // The heap walk takes milliseconds: off the runtime's workers.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Whether a trim is due with `open` connections open; when it is, the peak restarts
    /// from `open` and the caller must trim.
    fn due(&self, open: usize) -> bool {
        let peak = self.peak.load(Ordering::Relaxed);
        let closed = peak.saturating_sub(open);
        if closed < MIN_CLOSED_FOR_TRIM || closed < peak / 2 {
            return false;
        }
        if self.trimming.swap(true, Ordering::Acquire) {
            return false;
        }
        // A concurrent open may have raised the peak meanwhile: it is kept.
        let _ = self
            .peak
            .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed);
        true
    }
}

/// Returns the allocator's free pages to the system (glibc's `malloc_trim`); elsewhere
/// nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> MemoryTrim {
        MemoryTrim::new(Counter::default())
    }

    fn open(trim: &MemoryTrim, connections: usize) {
        for _ in 0..connections {
            trim.opened();
        }
    }

    #[test]
    fn a_trim_is_due_once_half_of_the_peak_closed() {
        let trim = tracker();
        open(&trim, 10_000);
        assert!(!trim.due(9_950), "fewer than 64 closed");
        assert!(!trim.due(5_001), "more than half still open");
        assert!(trim.due(5_000));
        assert!(!trim.due(4_000), "one trim at a time");
        trim.trimming.store(false, Ordering::Release);
        assert!(!trim.due(4_000), "the peak restarted at 5,000");
        assert!(trim.due(2_500));
    }

    #[test]
    fn a_steady_load_never_trims() {
        let trim = Arc::new(tracker());
        open(&trim, 1_000);
        for _ in 0..10_000 {
            trim.closed();
            trim.opened();
        }
        assert_eq!(trim.trims.get(), 0);
    }

    #[test]
    fn a_small_storm_does_not_trim() {
        let trim = Arc::new(tracker());
        open(&trim, 60);
        for _ in 0..60 {
            trim.closed();
        }
        assert_eq!(trim.trims.get(), 0);
    }

    #[test]
    fn a_storm_that_closes_is_trimmed_down_to_its_last_connections() {
        // No runtime here: the trims run inline, one after another.
        let trim = Arc::new(tracker());
        open(&trim, 10_000);
        for _ in 0..10_000 {
            trim.closed();
        }
        // At 5,000, 2,500, 1,250, 625, 312, 156 and 78 open, and at 14 (64 closed since
        // the peak of 78): what the last 14 freed stays for the next trim.
        assert_eq!(trim.trims.get(), 8);
        assert!(!trim.trimming.load(Ordering::Acquire));
    }
}
