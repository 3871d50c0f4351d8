//! The socket buffer's metadata the programs read: the interface a packet
//! is on and its mark.

use aya_ebpf::programs::TcContext;

/// The interface the program runs on (the pod's host-side veth).
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The packet's mark (the proxy's marks, see `PROXY_MARK_*`).
pub(crate) fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).mark }
}
