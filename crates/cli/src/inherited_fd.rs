//! Listening sockets a parent process hands over as numbered descriptors
//! (the lab's supervisor keeps 127.0.0.1:4245 and :12000 across relay
//! restarts this way).

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};
use nix::sys::socket::{getsockopt, sockopt};

/// Takes over the listening TCP socket `fd`, after checking that it is one:
/// a wrong number is refused rather than served. `flag` names it in errors.
pub fn listener(flag: &str, fd: i32) -> anyhow::Result<std::net::TcpListener> {
    if fd < 3 {
        bail!("{flag} {fd}: 0, 1 and 2 are the standard streams, not a listening socket");
    }
    // SAFETY: F_GETFD reads the descriptor's flags and touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("{flag} {fd}: no such open file descriptor (the parent did not pass it)");
    }
    // SAFETY: the descriptor is open and handed to this process to own;
    // nothing else in it uses that number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening = getsockopt(&owned, sockopt::AcceptConn)
        .with_context(|| format!("{flag} {fd}: not a socket"))?;
    if !listening {
        bail!("{flag} {fd}: the socket is not listening");
    }
    Ok(std::net::TcpListener::from(owned))
}

/// The relay's inherited listeners, as its flags name them.
pub fn relay_listeners(
    args: &myelin_observe::relay::RelayArgs,
) -> anyhow::Result<myelin_observe::relay::InheritedListeners> {
    let take = |flag: &str, fd: Option<i32>| fd.map(|fd| listener(flag, fd)).transpose();
    Ok(myelin_observe::relay::InheritedListeners {
        observer: take("--listen-fd", args.listen_fd)?,
        servicemap: take("--servicemap-fd", args.servicemap_fd)?,
    })
}
