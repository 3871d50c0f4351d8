//! The open-file limit and the connection limit it allows.
//!
//! Every client connection holds two descriptors (the client's socket and its upstream
//! connection), so the inherited soft limit (often 1,024) would cap the proxy at a few
//! hundred connections. At start the proxy raises the soft limit to the hard one and
//! derives its connection limit from it, leaving headroom for listeners, the control and
//! metrics sockets, parked upstream connections and pooled HTTP/2 upstreams.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors one client connection holds: its socket and its upstream connection.
const FDS_PER_CONNECTION: u64 = 2;

/// Descriptors always kept out of the connection budget.
const MIN_RESERVED_FDS: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in
/// force (the old one when raising is refused).
pub fn raise_open_file_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; keeping the soft limit");
            Ok(soft)
        }
    }
}

/// Client connections `open_files` descriptors carry: two each, after reserving an eighth
/// (at least [`MIN_RESERVED_FDS`]) for everything else.
pub fn connection_capacity(open_files: u64) -> usize {
    let reserved = (open_files / 8).max(MIN_RESERVED_FDS);
    let connections = open_files.saturating_sub(reserved) / FDS_PER_CONNECTION;
    usize::try_from(connections).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_headroom_and_counts_two_descriptors_per_connection() {
        assert_eq!(connection_capacity(1_024), (1_024 - 128) / 2);
        assert_eq!(connection_capacity(65_536), (65_536 - 8_192) / 2);
        assert_eq!(connection_capacity(1_048_576), (1_048_576 - 131_072) / 2);
        assert_eq!(connection_capacity(100), 1, "a tiny limit still serves one");
        assert_eq!(connection_capacity(0), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let raised = raise_open_file_limit().expect("getrlimit");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!((raised, soft), (hard, hard));
    }
}
