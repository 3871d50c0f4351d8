//! Socket set-up: transparent listeners and marked upstream connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog: connections the kernel queues while the accept loop waits for a
/// connection slot.
const BACKLOG: i32 = 1024;

/// Binds a listener. With `transparent`, sets `IP_TRANSPARENT` (IPv4) or
/// `IPV6_TRANSPARENT` (IPv6) so the kernel can hand it connections addressed to other hosts
/// (`bpf_sk_assign`) and route the SYN-ACK from the original destination's address; this
/// needs `CAP_NET_ADMIN`.
pub fn bind_listener(address: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        // One socket per family: a dual-stack socket would report IPv4 destinations as
        // v4-mapped IPv6 and make policy keys ambiguous.
        socket.set_only_v6(true)?;
    }
    if transparent {
        if address.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Whether a listener socket has the transparent option set.
pub fn is_transparent(listener: &TcpListener) -> io::Result<bool> {
    let socket = SockRef::from(listener);
    match listener.local_addr()? {
        SocketAddr::V4(_) => socket.ip_transparent_v4(),
        SocketAddr::V6(_) => socket.ip_transparent_v6(),
    }
}

/// The original destination of an accepted connection: with TPROXY semantics the kernel
/// delivers it to our socket under the address the client dialled, so `getsockname()` is it.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    stream.local_addr().map(canonical)
}

/// Whether a transparent listener's accepted connection was handed over by the datapath.
///
/// A connection reaches a transparent listener in two ways: the datapath hands it over
/// (`bpf_sk_assign`), and then its local address is the original destination the client
/// dialled, a pod or service address and port; or a client dialled the listener itself, an
/// address of this node and the listener's port, and ordinary routing delivered it. Only
/// the second kind has both the listener's port and an address of the node as its local
/// address (a redirect to a server that listens on the proxy's port keeps the server's
/// address, which is not the node's), so that pair is what gives it away. The address test
/// runs only when the port matches, so handed-over connections pay nothing for it.
pub fn is_handed_over(local: SocketAddr, listener_port: u16) -> bool {
    let local = canonical(local);
    local.port() != listener_port || !is_node_address(local.ip())
}

/// Whether `ip` is an address of this host (its network namespace): a socket without
/// `IP_TRANSPARENT` can bind to it. With the `ip_nonlocal_bind` sysctl set every address
/// binds, so every address counts as the node's (the safe side: such connections are
/// refused).
pub fn is_node_address(ip: IpAddr) -> bool {
    let Ok(socket) = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    ) else {
        return true;
    };
    socket.bind(&SocketAddr::new(ip, 0).into()).is_ok()
}

/// Turns v4-mapped IPv6 addresses into IPv4 so policy keys have one spelling.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}

/// Connects to `address` with `SO_MARK = mark` (skipped when `mark` is 0), so the datapath
/// recognises the proxy's own upstream traffic and does not redirect it again. With a
/// `source`, the connection leaves from that address (any port), which need not be one of
/// this host's: the socket gets `IP_TRANSPARENT` / `IPV6_TRANSPARENT` (`CAP_NET_ADMIN`).
pub async fn connect_marked(
    address: SocketAddr,
    mark: u32,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if mark != 0 {
        SockRef::from(&socket).set_mark(mark)?;
    }
    if let Some(source) = source {
        let sock = SockRef::from(&socket);
        if source.is_ipv4() {
            sock.set_ip_transparent_v4(true)?;
        } else {
            sock.set_ip_transparent_v6(true)?;
        }
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding to the client's address {source}: {e}"),
            )
        })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(address))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {address} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
