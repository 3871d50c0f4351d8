//! The programs attached to a real veth in network namespaces of our own:
//! a pod's TCP connection redirected to a transparent proxy listener with
//! `bpf_sk_assign`, kept across a datapath reload (pins re-adopted, no
//! detach, conntrack kept). Namespaces are named `mdp-<pid>-*` and deleted
//! by name on drop, also when the test fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use myelin_datapath::{
    CtScope, Datapath, EndpointInfo, PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service,
    ServiceProtocol, Verdict, drop_reason,
};
use myelin_test_support::{ScratchBpffs, pin_hash_map, privileged};
use support::netns::{Namespaces, enter, in_ns, in_thread, ip};
use support::proxy::{accept_within, deliver_marked_locally, sockaddr, transparent_listener};

mod support;

const PROXY_PORT: u16 = 15001;

/// An upstream connection as the proxy opens it when it keeps its client's
/// address: from `source` (not one of the node's: IP_TRANSPARENT), with the
/// proxy's mark for `identity`, to `target`; connecting gives up after 2 s.
fn transparent_upstream(
    source: [u8; 4],
    identity: u32,
    target: SocketAddrV4,
) -> std::io::Result<TcpStream> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket syscalls on a descriptor we own (wrapped at once
    // so it is closed on every path); errors checked.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0))?;
        let stream = TcpStream::from_raw_fd(fd);
        let set = |level, name, value: *const libc::c_void, len: usize| {
            check(libc::setsockopt(
                fd,
                level,
                name,
                value,
                len as libc::socklen_t,
            ))
        };
        let one: libc::c_int = 1;
        let mark: u32 = 0xb00 | identity << 16;
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        set(
            libc::SOL_IP,
            libc::IP_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>(),
        )?;
        set(
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            size_of::<u32>(),
        )?;
        set(
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>(),
        )?;
        let local = sockaddr(source, 0);
        check(libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        let remote = sockaddr(target.ip().octets(), target.port());
        check(libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        Ok(stream)
    }
}

#[test]
fn a_redirected_ipv4_connection_reaches_the_proxy_and_survives_a_reload() {
    if !privileged("a_redirected_ipv4_connection_reaches_the_proxy_and_survives_a_reload") {
        return;
    }
    redirected_connection(false);
}

#[test]
fn a_redirected_ipv6_connection_reaches_the_proxy_and_survives_a_reload() {
    if !privileged("a_redirected_ipv6_connection_reaches_the_proxy_and_survives_a_reload") {
        return;
    }
    redirected_connection(true);
}

/// A node namespace with a pod behind a routed veth (as the lab builds
/// them), the programs attached, an egress policy redirecting the pod's TCP
/// to port 80 of 10.244.9.0/24 (fd00:10:244:9::/64) to a transparent proxy
/// listener, and a connection to an address nobody has: only the redirect
/// can answer it.
fn redirected_connection(v6: bool) {
    let pid = std::process::id();
    let tag = if v6 { "6" } else { "4" };
    let node = format!("mdp-{pid}-n{tag}");
    let pod = format!("mdp-{pid}-p{tag}");
    let host_veth = format!("mdp{pid}h{tag}");
    let guard = Namespaces {
        names: vec![node.clone(), pod.clone()],
    };
    for ns in &guard.names {
        ip(&["netns", "add", ns]);
        in_ns(ns, &["ip", "link", "set", "lo", "up"]);
        in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
    }
    in_ns(
        &node,
        &[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ],
    );
    in_ns(&node, &["ip", "link", "set", &host_veth, "up"]);
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        in_ns(&node, &["sysctl", "-qw", sysctl]);
    }
    in_ns(&pod, &["ip", "link", "set", "eth0", "up"]);
    let (pod_addr, target) = if v6 {
        in_ns(
            &node,
            &[
                "ip",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                &host_veth,
                "nodad",
            ],
        );
        in_ns(
            &node,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "fd00:10:244:1::5/128",
                "dev",
                &host_veth,
            ],
        );
        deliver_marked_locally(&node);
        in_ns(
            &pod,
            &[
                "ip",
                "addr",
                "add",
                "fd00:10:244:1::5/128",
                "dev",
                "eth0",
                "nodad",
            ],
        );
        in_ns(
            &pod,
            &[
                "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ],
        );
        (
            "fd00:10:244:1::5".parse::<IpAddr>().expect("addr"),
            "[fd00:10:244:9::9]:80".parse::<SocketAddr>().expect("addr"),
        )
    } else {
        in_ns(&node, &["ip", "addr", "add", "10.244.1.1/32", "dev", "lo"]);
        in_ns(
            &node,
            &["ip", "route", "add", "10.244.1.5/32", "dev", &host_veth],
        );
        deliver_marked_locally(&node);
        in_ns(&pod, &["ip", "addr", "add", "10.244.1.5/32", "dev", "eth0"]);
        in_ns(
            &pod,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "10.244.1.1",
                "dev",
                "eth0",
                "onlink",
            ],
        );
        (
            "10.244.1.5".parse::<IpAddr>().expect("addr"),
            "10.244.9.9:80".parse::<SocketAddr>().expect("addr"),
        )
    };

    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let pin_dir = bpffs.path_buf();
    let node_for_thread = node.clone();
    let pod_for_client = pod.clone();
    let host_veth_for_thread = host_veth.clone();
    // Everything in the node namespace runs on one thread that entered it.
    let result = std::thread::spawn(move || {
        enter(&node_for_thread);
        let mut datapath = Datapath::load(&pin_dir).expect("load");
        let mut info = EndpointInfo {
            endpoint_id: 5,
            identity: 1001,
            ..EndpointInfo::default()
        };
        match pod_addr {
            IpAddr::V4(v4) => info.ipv4 = v4.octets(),
            IpAddr::V6(v6) => info.ipv6 = v6.octets(),
        }
        let attachment = datapath
            .attach_endpoint(&host_veth_for_thread, &info)
            .expect("attach");
        assert!(!attachment.readopted);
        let (prefix, len) = if v6 {
            ("fd00:10:244:9::", 64)
        } else {
            ("10.244.9.0", 24)
        };
        datapath
            .ipcache_upsert(prefix.parse().expect("addr"), len, 2002)
            .expect("ipcache");
        datapath
            .replace_policy(
                5,
                &PolicyTable {
                    ingress_enforced: false,
                    egress_enforced: true,
                    rules: vec![PolicyRule {
                        direction: PolicyDirection::Egress,
                        peer_identity: 2002,
                        protocol: 6,
                        ports: Some((80, 80)),
                        action: RuleAction::Redirect {
                            proxy_port: PROXY_PORT,
                        },
                        rule_id: 41,
                    }],
                },
            )
            .expect("policy");
        let listener = if v6 {
            // IPv6 needs no IPV6_TRANSPARENT for the assigned socket
            // (reference/l7-redirect.md).
            TcpListener::bind(("::", PROXY_PORT)).expect("listen")
        } else {
            transparent_listener(PROXY_PORT)
        };

        let client = std::thread::spawn(move || {
            enter(&pod_for_client);
            let mut stream =
                TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).expect("first answer");
            assert_eq!(&buf, b"pong");
            stream
        });
        let (mut upstream, original) = accept_within(&listener, Duration::from_secs(5));
        assert_eq!(original, target, "the proxy sees the original destination");
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong").expect("write");
        let mut stream = client.join().expect("client thread");

        let ct = datapath.conntrack().expect("conntrack");
        assert!(ct.iter().any(|c| c.scope == CtScope::Egress
            && matches!(
                c.verdict,
                RuleAction::Redirect {
                    proxy_port: PROXY_PORT
                }
            )));

        // The agent goes away and comes back: programs stay attached, maps
        // and conntrack are re-adopted.
        drop(datapath);
        stream
            .write_all(b"ping")
            .expect("write while the agent is away");
        upstream.read_exact(&mut buf).expect("read while away");
        let mut datapath = Datapath::load(&pin_dir).expect("reload");
        let attachment = datapath
            .attach_endpoint(&host_veth_for_thread, &info)
            .expect("re-attach");
        assert!(attachment.readopted, "pinned programs were kept");
        assert!(!attachment.replaced, "same program object");
        assert!(!datapath.conntrack().expect("conntrack").is_empty());
        upstream.write_all(b"pong").expect("write");
        stream
            .read_exact(&mut buf)
            .expect("answer after the reload");
        assert_eq!(&buf, b"pong");
        assert_eq!(
            datapath.pinned_interfaces(),
            vec![host_veth_for_thread.clone()]
        );
        datapath
            .detach_endpoint(&host_veth_for_thread, attachment.ifindex)
            .expect("detach");
        assert!(datapath.pinned_interfaces().is_empty());
    })
    .join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// In a test run the proxy's listener is found (in the calling thread's
/// namespace), but `bpf_sk_assign` refuses: the test-run skb is not at TC
/// ingress. That is "Socket assign failed" (179), a verdict real traffic
/// never gets (see the tests above), and a fail-closed one.
#[test]
fn in_a_test_run_the_listener_is_found_and_sk_assign_refused() {
    if !privileged("in_a_test_run_the_listener_is_found_and_sk_assign_refused") {
        return;
    }
    let ns = format!("mdp-{}-t", std::process::id());
    let guard = Namespaces {
        names: vec![ns.clone()],
    };
    ip(&["netns", "add", &ns]);
    in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
    let ns_for_thread = ns.clone();
    let result = std::thread::spawn(move || {
        // Test runs use the calling thread's namespace for socket lookups.
        enter(&ns_for_thread);
        let bpffs = ScratchBpffs::mount().expect("bpffs");
        let mut datapath = Datapath::load(bpffs.path()).expect("load");
        datapath
            .upsert_endpoint(
                1,
                &EndpointInfo {
                    endpoint_id: 5,
                    identity: 1001,
                    ipv4: [10, 244, 1, 5],
                    ..EndpointInfo::default()
                },
            )
            .expect("endpoint");
        let listener = transparent_listener(PROXY_PORT);
        datapath
            .replace_policy(
                5,
                &PolicyTable {
                    ingress_enforced: false,
                    egress_enforced: true,
                    rules: vec![PolicyRule {
                        direction: PolicyDirection::Egress,
                        peer_identity: 0,
                        protocol: 6,
                        ports: Some((80, 80)),
                        action: RuleAction::Redirect {
                            proxy_port: PROXY_PORT,
                        },
                        rule_id: 1,
                    }],
                },
            )
            .expect("policy");
        let mut frame = vec![0u8; 14 + 20 + 20];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&40u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = 6;
        frame[26..30].copy_from_slice(&[10, 244, 1, 5]);
        frame[30..34].copy_from_slice(&[10, 244, 9, 9]);
        frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&80u16.to_be_bytes());
        frame[46] = 5 << 4;
        frame[47] = 0x02;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut reader = runtime.block_on(async { datapath.event_reader().expect("reader") });
        let outcome = datapath
            .test_run(myelin_datapath::PROGRAM_FROM_CONTAINER, &frame, 1)
            .expect("test run");
        let mut events = Vec::new();
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(2), reader.read(&mut events)).await
            })
            .expect("events")
            .expect("read");
        drop(listener);
        (outcome.verdict, events)
    })
    .join();
    drop(guard);
    match result {
        Ok((verdict, events)) => {
            assert_eq!(verdict, 2, "TC_ACT_SHOT");
            let verdicts: Vec<(u8, u8, u8)> = events
                .iter()
                .map(|e| (e.kind, e.verdict, e.drop_reason))
                .collect();
            assert_eq!(
                verdicts,
                vec![
                    (5, Verdict::Redirected as u8, 0),
                    (1, Verdict::Dropped as u8, drop_reason::SOCKET_ASSIGN_FAILED)
                ],
                "policy verdict, then the assign failure (not a lookup failure)"
            );
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Two pods of one node through real sockets: a ClusterIP translated both
/// ways, refused at once when it has no backend (TCP reset, UDP port
/// unreachable), and the server's ingress policy: a long-lived connection
/// survives policy changes, a new connection the new policy denies times
/// out.
#[test]
fn services_and_policy_through_real_sockets() {
    if !privileged("services_and_policy_through_real_sockets") {
        return;
    }
    let pid = std::process::id();
    let node = format!("mdp-{pid}-sn");
    let client_ns = format!("mdp-{pid}-sa");
    let server_ns = format!("mdp-{pid}-sb");
    let (veth_a, veth_b) = (format!("mdp{pid}sa"), format!("mdp{pid}sb"));
    let guard = Namespaces {
        names: vec![node.clone(), client_ns.clone(), server_ns.clone()],
    };
    for ns in &guard.names {
        ip(&["netns", "add", ns]);
        in_ns(ns, &["ip", "link", "set", "lo", "up"]);
    }
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        in_ns(&node, &["sysctl", "-qw", sysctl]);
    }
    in_ns(&node, &["ip", "addr", "add", "10.244.1.1/32", "dev", "lo"]);
    deliver_marked_locally(&node);
    for (veth, pod, addr) in [
        (&veth_a, &client_ns, "10.244.1.5"),
        (&veth_b, &server_ns, "10.244.1.6"),
    ] {
        in_ns(
            &node,
            &[
                "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ],
        );
        in_ns(&node, &["ip", "link", "set", veth, "up"]);
        in_ns(
            &node,
            &["ip", "route", "add", &format!("{addr}/32"), "dev", veth],
        );
        in_ns(pod, &["ip", "link", "set", "eth0", "up"]);
        in_ns(
            pod,
            &["ip", "addr", "add", &format!("{addr}/32"), "dev", "eth0"],
        );
        in_ns(
            pod,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "10.244.1.1",
                "dev",
                "eth0",
                "onlink",
            ],
        );
    }

    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let pin_dir = bpffs.path_buf();
    let (node_t, client_t, server_t) = (node.clone(), client_ns.clone(), server_ns.clone());
    let result = std::thread::spawn(move || {
        enter(&node_t);
        let mut datapath = Datapath::load(&pin_dir).expect("load");
        for (veth, id, identity, addr) in [
            (&veth_a, 5, 1001, [10, 244, 1, 5]),
            (&veth_b, 6, 1002, [10, 244, 1, 6]),
        ] {
            let info = EndpointInfo {
                endpoint_id: id,
                identity,
                ipv4: addr,
                ..EndpointInfo::default()
            };
            datapath.attach_endpoint(veth, &info).expect("attach");
        }
        let allow_from = |peer: u32, rule_id: u32| PolicyRule {
            direction: PolicyDirection::Ingress,
            peer_identity: peer,
            protocol: 6,
            ports: Some((8080, 8080)),
            action: RuleAction::Allow,
            rule_id,
        };
        let ingress = |rules: Vec<PolicyRule>| PolicyTable {
            ingress_enforced: true,
            egress_enforced: false,
            rules,
        };
        let udp_from_client = PolicyRule {
            protocol: 17,
            ports: Some((5353, 5353)),
            ..allow_from(1001, 9)
        };
        datapath
            .replace_policy(6, &ingress(vec![allow_from(1001, 1), udp_from_client]))
            .expect("policy");
        for (frontend, protocol, backends) in [
            (
                "10.96.0.10:80",
                ServiceProtocol::Tcp,
                vec!["10.244.1.6:8080"],
            ),
            ("10.96.0.11:80", ServiceProtocol::Tcp, vec![]),
            ("10.96.0.11:53", ServiceProtocol::Udp, vec![]),
            (
                "10.96.0.12:53",
                ServiceProtocol::Udp,
                vec!["10.244.1.6:5353"],
            ),
        ] {
            datapath
                .upsert_service(&Service {
                    frontend: frontend.parse().expect("frontend"),
                    protocol,
                    backends: backends
                        .iter()
                        .map(|b| b.parse().expect("backend"))
                        .collect(),
                    affinity_timeout_s: None,
                })
                .expect("service");
        }
        // The server echoes every connection until the test ends.
        let listener = in_thread(&server_t, || {
            TcpListener::bind("0.0.0.0:8080").expect("server listens")
        });
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4];
                    while stream.read_exact(&mut buf).is_ok() {
                        if stream.write_all(&buf).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let vip: SocketAddr = "10.96.0.10:80".parse().expect("vip");
        let connect = move || {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            assert_eq!(&buf, b"ping");
            Ok::<_, std::io::Error>(s)
        };
        let mut long_lived = in_thread(&client_t, move || {
            let s = connect().expect("connect through the ClusterIP");
            assert_eq!(s.peer_addr().expect("peer"), vip, "the client sees the VIP");
            s
        });
        let echo = |s: &mut TcpStream| {
            s.write_all(b"more")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        };
        // No backend: refused at once, TCP and UDP.
        let (tcp, udp, elapsed) = in_thread(&client_t, || {
            let started = Instant::now();
            let tcp = TcpStream::connect_timeout(
                &"10.96.0.11:80".parse().expect("vip"),
                Duration::from_secs(3),
            )
            .map(drop)
            .map_err(|e| e.kind());
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
            socket.connect("10.96.0.11:53").expect("connect udp");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            socket.send(b"query").expect("send");
            let mut buf = [0u8; 16];
            let udp = socket.recv(&mut buf).map(drop).map_err(|e| e.kind());
            (tcp, udp, started.elapsed())
        });
        assert_eq!(tcp, Err(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(udp, Err(std::io::ErrorKind::ConnectionRefused));
        assert!(elapsed < Duration::from_secs(1), "fails fast: {elapsed:?}");

        // The proxy's upstream connection for the client, keeping the client's address:
        // the server's answers are addressed to the client pod, and the datapath must hand
        // them to this socket in the node instead (routed, the pod would reset them).
        let mut upstream = transparent_upstream(
            [10, 244, 1, 5],
            1001,
            "10.244.1.6:8080".parse().expect("server"),
        )
        .expect("the upstream connection completes");
        assert_eq!(
            upstream.local_addr().expect("local").ip(),
            "10.244.1.5".parse::<IpAddr>().expect("ip"),
        );
        upstream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        upstream.write_all(b"prox").expect("send");
        let mut answer = [0u8; 4];
        upstream
            .read_exact(&mut answer)
            .expect("the echo reaches the proxy's socket");
        assert_eq!(&answer, b"prox");
        let proxied = datapath.conntrack().expect("conntrack");
        assert!(
            proxied.iter().any(|c| c.from_proxy
                && c.source.ip().to_string() == "10.244.1.5"
                && c.destination.to_string() == "10.244.1.6:8080"),
            "{proxied:?}"
        );
        drop(upstream);

        // A UDP datagram larger than the veths' MTU travels as fragments, both ways: each
        // fragment is translated (only the first carries the ports) and the datagram
        // arrives whole.
        let server = in_thread(&server_t, || {
            std::net::UdpSocket::bind("0.0.0.0:5353").expect("udp server")
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok((len, from)) = server.recv_from(&mut buf) {
                if server.send_to(&buf[..len], from).is_err() {
                    return;
                }
            }
        });
        let (echoed, from) = in_thread(&client_t, || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp client");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let datagram: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
            socket
                .send_to(&datagram, "10.96.0.12:53")
                .expect("send a large datagram");
            let mut buf = [0u8; 8192];
            let (len, from) = socket
                .recv_from(&mut buf)
                .expect("the whole datagram comes back");
            (buf[..len] == datagram[..], from)
        });
        assert!(echoed, "the echo is the datagram sent");
        assert_eq!(from, "10.96.0.12:53".parse().expect("vip"), "from the VIP");

        // A policy change that still allows the client: nothing changes.
        datapath
            .replace_policy(6, &ingress(vec![allow_from(1001, 2), allow_from(7, 3)]))
            .expect("policy");
        assert_eq!(&echo(&mut long_lived).expect("still flowing"), b"more");
        // A policy that no longer allows it: new connections time out, and
        // the established one is cut on its next packet.
        datapath
            .replace_policy(6, &ingress(vec![allow_from(7, 4)]))
            .expect("policy");
        let denied = in_thread(&client_t, move || connect().map(drop).map_err(|e| e.kind()));
        assert_eq!(denied, Err(std::io::ErrorKind::TimedOut));
        assert!(echo(&mut long_lived).is_err(), "the revoked flow is cut");
        let ct = datapath.conntrack().expect("conntrack");
        assert!(
            ct.iter()
                .any(|c| c.scope == CtScope::Service && c.backend_id != 0)
        );
    })
    .join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Connection churn through the redirect from a few fixed client ports
/// (connect, request, answer, the proxy closes first, close), as a
/// connection-rate benchmark with `Connection: close` does once the client's
/// ports wrap around: every new connection reuses the 4-tuple of one whose
/// proxy-side socket is still in TIME_WAIT. That TIME_WAIT socket must get
/// the new SYN, not the listener: a listener's request socket on the same
/// tuple is refused by the kernel and the client stalls until TIME_WAIT
/// ends. And the reuse must cost nothing, as with a server listening on the
/// port itself: the kernel's TIME_WAIT reopen finds the proxy's listener
/// through the datapath's socket lookup program. Without it the TIME_WAIT
/// socket answers the SYN with an ACK of the old connection, the client
/// resets it and sends its SYN again (a RST and a SYN retransmission per
/// cycle, about 8 ms): the client's namespace must count neither.
#[test]
fn connection_churn_from_reused_ports_through_the_redirect_completes() {
    if !privileged("connection_churn_from_reused_ports_through_the_redirect_completes") {
        return;
    }
    const CYCLES: usize = 2000;
    const PORTS: u16 = 8;
    const FIRST_PORT: u16 = 41000;
    let pid = std::process::id();
    let node = format!("mdp-{pid}-nc");
    let pod = format!("mdp-{pid}-pc");
    let host_veth = format!("mdp{pid}hc");
    let guard = Namespaces {
        names: vec![node.clone(), pod.clone()],
    };
    for ns in &guard.names {
        ip(&["netns", "add", ns]);
        in_ns(ns, &["ip", "link", "set", "lo", "up"]);
    }
    in_ns(
        &node,
        &[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ],
    );
    in_ns(&node, &["ip", "link", "set", &host_veth, "up"]);
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        in_ns(&node, &["sysctl", "-qw", sysctl]);
    }
    in_ns(&node, &["ip", "addr", "add", "10.244.1.1/32", "dev", "lo"]);
    in_ns(
        &node,
        &["ip", "route", "add", "10.244.1.5/32", "dev", &host_veth],
    );
    deliver_marked_locally(&node);
    in_ns(&pod, &["ip", "link", "set", "eth0", "up"]);
    in_ns(&pod, &["ip", "addr", "add", "10.244.1.5/32", "dev", "eth0"]);
    in_ns(
        &pod,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.244.1.1",
            "dev",
            "eth0",
            "onlink",
        ],
    );
    let target: SocketAddr = "10.244.9.9:80".parse().expect("addr");

    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let pin_dir = bpffs.path_buf();
    let node_for_thread = node.clone();
    let pod_for_client = pod.clone();
    let host_veth_for_thread = host_veth.clone();
    let result = std::thread::spawn(move || {
        enter(&node_for_thread);
        let mut datapath = Datapath::load(&pin_dir).expect("load");
        let info = EndpointInfo {
            endpoint_id: 5,
            identity: 1001,
            ipv4: [10, 244, 1, 5],
            ..EndpointInfo::default()
        };
        datapath
            .attach_endpoint(&host_veth_for_thread, &info)
            .expect("attach");
        datapath
            .ipcache_upsert("10.244.9.0".parse().expect("addr"), 24, 2002)
            .expect("ipcache");
        datapath
            .replace_policy(
                5,
                &PolicyTable {
                    ingress_enforced: false,
                    egress_enforced: true,
                    rules: vec![PolicyRule {
                        direction: PolicyDirection::Egress,
                        peer_identity: 2002,
                        protocol: 6,
                        ports: Some((80, 80)),
                        action: RuleAction::Redirect {
                            proxy_port: PROXY_PORT,
                        },
                        rule_id: 41,
                    }],
                },
            )
            .expect("policy");
        let listener = transparent_listener(PROXY_PORT);
        // The proxy: answers each request and closes first, so its side of
        // every connection ends in TIME_WAIT (as a server answering
        // `Connection: close` does).
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).is_ok() {
                    let _ = stream.write_all(b"pong");
                }
            }
        });

        let client = std::thread::spawn(move || {
            enter(&pod_for_client);
            let before = tcp_counters();
            let started = Instant::now();
            for cycle in 0..CYCLES {
                let port = FIRST_PORT + (cycle as u16 % PORTS);
                // The port's previous connection may still be closing on the
                // client's side (LAST_ACK for a moment): wait for it.
                let mut attempts = 0;
                let mut stream = loop {
                    match connect_from(port, target, Duration::from_secs(10)) {
                        Err(e)
                            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && attempts < 1000 =>
                        {
                            attempts += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        result => {
                            break result.unwrap_or_else(|e| {
                                panic!(
                                    "cycle {cycle}: connect from port {port} stalled or failed: {e}"
                                )
                            });
                        }
                    }
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                stream.write_all(b"ping").expect("write");
                let mut answer = Vec::new();
                stream
                    .read_to_end(&mut answer)
                    .unwrap_or_else(|e| panic!("cycle {cycle}: read: {e}"));
                assert_eq!(answer, b"pong", "cycle {cycle}");
            }
            let elapsed = started.elapsed();
            let after = tcp_counters();
            (elapsed, after.0 - before.0, after.1 - before.1)
        });
        let (elapsed, resets, syn_retransmits) = client.join().expect("client thread");
        // Generous: a stalled cycle takes 60 s.
        assert!(
            elapsed < Duration::from_secs(180),
            "{CYCLES} cycles took {elapsed:?}"
        );
        assert_eq!(
            (resets, syn_retransmits),
            (0, 0),
            "the client reset old connections and resent SYNs (RSTs, SYN retransmissions) \
             in {CYCLES} cycles ({elapsed:?}): reused tuples did not reach the listener at once"
        );
        let ct = datapath.conntrack().expect("conntrack");
        assert!(ct.iter().any(|c| c.scope == CtScope::Egress
            && matches!(
                c.verdict,
                RuleAction::Redirect {
                    proxy_port: PROXY_PORT
                }
            )));
    })
    .join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The calling thread's namespace's TCP counters: RSTs sent (`Tcp:
/// OutRsts`) and SYN retransmissions (`TcpExt: TCPSynRetrans`).
fn tcp_counters() -> (u64, u64) {
    let mut counters = (None, None);
    for file in [
        "/proc/thread-self/net/snmp",
        "/proc/thread-self/net/netstat",
    ] {
        let text = std::fs::read_to_string(file).expect("read TCP counters");
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                match name {
                    "OutRsts" if names.starts_with("Tcp:") => {
                        counters.0 = value.parse().ok();
                    }
                    "TCPSynRetrans" => counters.1 = value.parse().ok(),
                    _ => {}
                }
            }
        }
    }
    (
        counters.0.expect("Tcp: OutRsts"),
        counters.1.expect("TcpExt: TCPSynRetrans"),
    )
}

/// A client connection from a fixed source port (SO_REUSEADDR: the port's
/// previous connection may still be closing) with a connect timeout.
fn connect_from(port: u16, target: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(target) = target else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket syscalls on a descriptor we own; errors checked,
    // the descriptor is closed on every error path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let timeout = libc::timeval {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SO_SNDTIMEO bounds a blocking connect: a stalled handshake fails
        // instead of retrying SYNs for minutes.
        for (option, value, len) in [
            (
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast::<libc::c_void>(),
                size_of::<libc::c_int>(),
            ),
            (
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>(),
            ),
        ] {
            if libc::setsockopt(fd, libc::SOL_SOCKET, option, value, len as libc::socklen_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let local = sockaddr([0; 4], port);
        if libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(target.ip().octets(), target.port());
        if libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// After an upgrade that created a map anew (an older build pinned it with another
/// layout), the programs attached to a veth are swapped for this load's even when their
/// instructions are the same: a program's tag does not say which maps it uses, and the old
/// ones would go on using the old map while the agent fills the new one. Without a replaced
/// map the attached programs are kept.
#[test]
fn programs_over_a_map_created_anew_are_swapped() {
    if !privileged("programs_over_a_map_created_anew_are_swapped") {
        return;
    }
    let pid = std::process::id();
    let ns = format!("mdp-{pid}-up");
    let veth = format!("mdp{pid}u");
    let guard = Namespaces {
        names: vec![ns.clone()],
    };
    ip(&["netns", "add", &ns]);
    in_ns(
        &ns,
        &[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "peer0",
        ],
    );
    in_ns(&ns, &["ip", "link", "set", &veth, "up"]);
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let pins = bpffs.path_buf();
    let (first, second, third) = in_thread(&ns, move || {
        let info = EndpointInfo {
            endpoint_id: 7,
            identity: 51234,
            ipv4: [10, 244, 1, 7],
            ..EndpointInfo::default()
        };
        let load = || Datapath::load(&pins).expect("load");
        let first = load().attach_endpoint(&veth, &info).expect("attach");
        // An older build's services map: records of another size.
        let maps = pins.join("maps");
        std::fs::remove_file(maps.join("MYELIN_SERVICES")).expect("unpin");
        pin_hash_map(
            &maps,
            "MYELIN_SERVICES",
            size_of::<myelin_common::ServiceKey>() as u32,
            3,
            &[],
        );
        let mut upgraded = load();
        assert_eq!(
            upgraded.replaced_pins().len(),
            1,
            "{:?}",
            upgraded.replaced_pins()
        );
        let second = upgraded.attach_endpoint(&veth, &info).expect("attach");
        drop(upgraded);
        let third = load().attach_endpoint(&veth, &info).expect("attach");
        (first, second, third)
    });
    assert!(!first.readopted, "{first:?}");
    assert!(
        second.replaced,
        "programs over a new map must be swapped: {second:?}"
    );
    assert!(third.readopted && !third.replaced, "{third:?}");
    drop(guard);
}
