//! A stand-in for the node's proxy: the routing of redirected packets, a
//! transparent listener and accepting within a limit.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use super::netns::in_ns;

/// The recipe's routing for redirected packets in `node`, as a node of the lab has it:
/// packets carrying the redirect mark are delivered locally, to the socket `bpf_sk_assign`
/// chose.
pub fn deliver_marked_locally(node: &str) {
    for route in myelin_datapath::proxy_routing::proxy_delivery_routes() {
        let mut args = vec!["ip"];
        args.extend(route.iter().map(String::as_str));
        in_ns(node, &args);
    }
}

/// An IPv4 socket address for the raw socket calls below.
pub fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    }
}

/// A transparent IPv4 listener (IP_TRANSPARENT: it answers for addresses
/// that are not the node's, as the proxy does).
pub fn transparent_listener(port: u16) -> TcpListener {
    // SAFETY: plain socket syscalls on a descriptor we own; errors checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let one: libc::c_int = 1;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "IP_TRANSPARENT");
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_REUSEADDR");
        let addr = sockaddr([0; 4], port);
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind");
        assert_eq!(libc::listen(fd, 16), 0, "listen");
        TcpListener::from_raw_fd(fd)
    }
}

pub fn accept_within(listener: &TcpListener, limit: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                let local = stream.local_addr().expect("local addr");
                return (stream, local);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no redirected connection within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}
