//! The datapath between nodes. With `BPF_PROG_TEST_RUN`: which packets
//! `from_container` sends into the overlay, and `to_container` deciding a
//! packet from the overlay with the identity its mark carries. In network
//! namespaces of our own (`ovl-<pid>-<test>-*`, deleted by name on drop):
//! two node namespaces joined by a veth pair (the underlay, 192.0.2.0/24 and
//! 2001:db8::/64), pods behind each, the programs and the VXLAN device
//! attached through this crate, then TCP between pods of the two nodes in
//! tunnel mode (IPv4 and IPv6 pods over the IPv4 underlay, a capture of the
//! underlay reading the VNI, the receiver's policy decided by the VNI's
//! identity, a ClusterIP whose backend is on the other node, the ICMP
//! answer to a packet too big for the underlay) and in native mode; a flow
//! the receiving pod's ingress policy redirects handed to the receiving
//! node's proxy (a transparent listener) in both modes.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use myelin_common::maps::MARK_OVERLAY_IDENTITY;
use myelin_common::{EventKind, ObservationPoint, TraceEvent};
use myelin_datapath::{
    Datapath, EndpointInfo, EventReader, OVERLAY_DEVICE, PROGRAM_FROM_CONTAINER,
    PROGRAM_TO_CONTAINER, PolicyDirection, PolicyRule, PolicyTable, RoutingMode, RuleAction,
    Service, ServiceProtocol, TunnelRoute, Verdict, drop_reason, pod_mtu,
};
use myelin_test_support::{ScratchBpffs, privileged};
use support::netns::{Namespaces, in_ns, in_thread, ip as run_ip};
use support::proxy::{accept_within, deliver_marked_locally, transparent_listener};
use support::{
    ACK, Harness, POD_ENDPOINT, Pkt, SYN, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TCP, ip,
};

/// The underlay's MTU and the pods' MTU that fits the overlay over it.
const UNDERLAY_MTU: u32 = 1500;
const POD_MTU: u32 = pod_mtu(UNDERLAY_MTU, false);

fn route(cidr: &str, len: u8, endpoint: &str) -> TunnelRoute {
    TunnelRoute {
        pod_cidr: ip(cidr),
        prefix_len: len,
        endpoint: ip(endpoint),
    }
}

fn ingress_allow(peer_identity: u32, protocol: u8, ports: Option<(u16, u16)>) -> PolicyRule {
    PolicyRule {
        direction: PolicyDirection::Ingress,
        peer_identity,
        protocol,
        ports,
        action: RuleAction::Allow,
        rule_id: 7,
    }
}

fn egress_deny_all() -> PolicyTable {
    PolicyTable {
        ingress_enforced: false,
        egress_enforced: true,
        rules: Vec::new(),
    }
}

/// The observation points of the traces among `events`.
fn trace_points(events: &[TraceEvent]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Trace as u8)
        .map(|e| e.observation_point)
        .collect()
}

/// The decision in `from_container`: a packet allowed by the sender's
/// egress policy whose destination is in a remote node's pod CIDR is
/// redirected to the VXLAN device in tunnel mode (IPv4 and IPv6 pods, an
/// IPv4 underlay), reported to-overlay; in native mode, outside every
/// remote CIDR, without the device, or denied by policy, it is not.
#[test]
fn a_packet_to_a_remote_pod_cidr_enters_the_overlay_only_in_tunnel_mode() {
    if !privileged("a_packet_to_a_remote_pod_cidr_enters_the_overlay_only_in_tunnel_mode") {
        return;
    }
    let ns = format!("ovl-{}-decide", std::process::id());
    let guard = Namespaces {
        names: vec![ns.clone()],
    };
    run_ip(&["netns", "add", &ns]);
    in_thread(&ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut h = Harness::with_pod();
            let device = h
                .datapath
                .attach_overlay(OVERLAY_DEVICE, POD_MTU)
                .expect("overlay device");
            assert!(device.created);
            let again = h
                .datapath
                .attach_overlay(OVERLAY_DEVICE, POD_MTU)
                .expect("adopt the overlay device");
            assert!(!again.created && again.readopted, "{again:?}");
            assert_eq!(again.ifindex, device.ifindex);
            let routes = vec![
                route("10.244.2.0", 24, "192.0.2.2"),
                route("fd00:10:244:2::", 64, "192.0.2.2"),
            ];
            h.datapath.sync_tunnel_endpoints(&routes).expect("sync");
            let mut sorted = routes.clone();
            sorted.sort();
            assert_eq!(h.datapath.tunnel_endpoints().expect("read"), sorted);

            let v4 = Pkt::tcp("10.244.1.5", 40000, "10.244.2.7", 80, SYN).build();
            let v6 = Pkt::tcp("fd00:10:244:1::5", 40000, "fd00:10:244:2::7", 80, SYN).build();
            let elsewhere = Pkt::tcp("10.244.1.5", 40001, "10.244.3.7", 80, SYN).build();

            // A fresh datapath routes natively: nothing is encapsulated.
            assert_eq!(
                h.datapath.routing_mode().expect("mode"),
                RoutingMode::Native
            );
            let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &v4).await;
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(trace_points(&events), [ObservationPoint::ToStack as u8]);

            h.datapath
                .set_routing_mode(RoutingMode::Tunnel)
                .expect("tunnel mode");
            let first = Pkt::tcp("10.244.1.5", 39999, "10.244.2.7", 80, SYN).build();
            let (verdict, _, events) = h.run(PROGRAM_FROM_CONTAINER, &first).await;
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_eq!(trace_points(&events), [ObservationPoint::ToOverlay as u8]);
            // New flows, and then the established flow's next packet.
            let ack = Pkt::tcp("10.244.1.5", 40000, "10.244.2.7", 80, ACK).build();
            for frame in [&v4, &ack, &v6] {
                assert_eq!(
                    h.run(PROGRAM_FROM_CONTAINER, frame).await.0,
                    TC_ACT_REDIRECT
                );
            }
            assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &elsewhere).await.0, TC_ACT_OK);

            // The sender's egress policy comes first.
            h.datapath
                .replace_policy(POD_ENDPOINT, &egress_deny_all())
                .expect("policy");
            let denied = Pkt::tcp("10.244.1.5", 40002, "10.244.2.7", 80, SYN).build();
            assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &denied).await.0, TC_ACT_SHOT);
            h.datapath.remove_policy(POD_ENDPOINT).expect("policy off");

            // A set with one CIDR on two nodes is refused whole.
            let bad = vec![
                route("10.244.3.0", 24, "192.0.2.3"),
                route("10.244.2.0", 24, "192.0.2.2"),
                route("10.244.2.0", 24, "192.0.2.4"),
            ];
            assert!(h.datapath.sync_tunnel_endpoints(&bad).is_err());
            assert_eq!(h.datapath.tunnel_endpoints().expect("read"), sorted);
            // A new set replaces the old one.
            let moved = vec![route("10.244.2.0", 24, "2001:db8::2")];
            h.datapath.sync_tunnel_endpoints(&moved).expect("sync");
            assert_eq!(h.datapath.tunnel_endpoints().expect("read"), moved);
            let v6_new = Pkt::tcp("fd00:10:244:1::5", 40003, "fd00:10:244:2::7", 80, SYN).build();
            assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &v6_new).await.0, TC_ACT_OK);
            let v4_new = Pkt::tcp("10.244.1.5", 40004, "10.244.2.7", 80, SYN).build();
            assert_eq!(
                h.run(PROGRAM_FROM_CONTAINER, &v4_new).await.0,
                TC_ACT_REDIRECT,
                "an IPv6 underlay endpoint"
            );

            h.datapath
                .set_routing_mode(RoutingMode::Native)
                .expect("native mode");
            let v4_native = Pkt::tcp("10.244.1.5", 40005, "10.244.2.7", 80, SYN).build();
            assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &v4_native).await.0, TC_ACT_OK);

            // Without the device, tunnel mode has nowhere to send.
            h.datapath
                .set_routing_mode(RoutingMode::Tunnel)
                .expect("tunnel mode");
            h.datapath.detach_overlay(OVERLAY_DEVICE).expect("remove");
            h.datapath
                .detach_overlay(OVERLAY_DEVICE)
                .expect("remove again: idempotent");
            assert!(nix::net::if_::if_nametoindex(OVERLAY_DEVICE).is_err());
            let v4_gone = Pkt::tcp("10.244.1.5", 40006, "10.244.2.7", 80, SYN).build();
            assert_eq!(h.run(PROGRAM_FROM_CONTAINER, &v4_gone).await.0, TC_ACT_OK);
        });
    });
    drop(guard);
}

/// `to_container` decides a new flow with the identity `from_overlay`
/// put in the mark (the VNI's), not with the ipcache's identity of the
/// source address; its verdict and drop events say so.
#[test]
fn the_receiver_decides_with_the_identity_the_overlay_mark_carries() {
    if !privileged("the_receiver_decides_with_the_identity_the_overlay_mark_carries") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut h = Harness::with_pod();
        h.datapath
            .ipcache_upsert(ip("10.244.2.0"), 24, 4000)
            .expect("ipcache");
        h.datapath
            .replace_policy(
                POD_ENDPOINT,
                &PolicyTable {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules: vec![ingress_allow(3000, TCP, Some((80, 80)))],
                },
            )
            .expect("policy");
        let mark = |identity: u32| MARK_OVERLAY_IDENTITY | identity << 16;

        let allowed = Pkt::tcp("10.244.2.7", 40000, "10.244.1.5", 80, SYN).build();
        let (verdict, _, events) = h
            .run_marked(PROGRAM_TO_CONTAINER, &allowed, mark(3000))
            .await;
        assert_eq!(verdict, TC_ACT_OK);
        let decided = events
            .iter()
            .find(|e| e.kind == EventKind::PolicyVerdict as u8)
            .expect("a policy verdict");
        assert_eq!(decided.source_identity, 3000);
        assert_eq!(decided.verdict, Verdict::Forwarded as u8);

        let without = Pkt::tcp("10.244.2.7", 40001, "10.244.1.5", 80, SYN).build();
        let (verdict, _, events) = h.run(PROGRAM_TO_CONTAINER, &without).await;
        assert_eq!(verdict, TC_ACT_SHOT, "the ipcache's 4000 is not allowed");
        assert!(events.iter().any(|e| e.source_identity == 4000));

        let other = Pkt::tcp("10.244.2.7", 40002, "10.244.1.5", 80, SYN).build();
        let (verdict, _, events) = h.run_marked(PROGRAM_TO_CONTAINER, &other, mark(4000)).await;
        assert_eq!(verdict, TC_ACT_SHOT);
        let dropped = events
            .iter()
            .find(|e| e.kind == EventKind::Drop as u8)
            .expect("a drop");
        assert_eq!(dropped.drop_reason, drop_reason::POLICY_DENIED);
        assert_eq!(dropped.source_identity, 4000);
    });
}

// ---------------------------------------------------------------------------
// Two nodes in namespaces.

/// What a node's jobs work on: its datapath, its event reader and the
/// runtime the reader is registered with.
struct NodeContext {
    datapath: Datapath,
    reader: EventReader,
    runtime: tokio::runtime::Runtime,
}

impl NodeContext {
    /// Every event the node's programs report within `window`.
    fn events_within(&mut self, window: Duration) -> Vec<TraceEvent> {
        let mut events = Vec::new();
        let reader = &mut self.reader;
        self.runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + window;
            while let Ok(read) = tokio::time::timeout_at(deadline, reader.read(&mut events)).await {
                read.expect("read events");
            }
        });
        events
    }
}

/// A job for a node's datapath thread.
type Job = Box<dyn FnOnce(&mut NodeContext) + Send>;

/// A node namespace whose datapath lives on a thread of its own inside it
/// (the programs attach to, and the device is created in, the calling
/// thread's namespace). Jobs run there in order; dropping the node ends
/// the thread, which drops the datapath and its bpffs.
struct Node {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(ns: &str) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            support::netns::enter(&ns);
            let bpffs = ScratchBpffs::mount().expect("bpffs");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut datapath = Datapath::load(bpffs.path()).expect("load");
            let reader = {
                let _entered = runtime.enter();
                datapath.event_reader().expect("event reader")
            };
            let mut context = NodeContext {
                datapath,
                reader,
                runtime,
            };
            for job in queue {
                job(&mut context);
            }
            drop(context);
            drop(bpffs);
        });
        Node {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the node's thread and returns its result.
    fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut NodeContext) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |context| {
            let _ = tx.send(f(context));
        });
        self.jobs
            .as_ref()
            .expect("node running")
            .send(job)
            .expect("node thread alive");
        rx.recv()
            .expect("the node's job failed (see its panic above)")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A pod: its namespace, host veth in its node, addresses and identity.
struct Pod {
    ns: String,
    v4: &'static str,
    v6: &'static str,
    identity: u32,
}

/// Two nodes, `node1` with pods `a` (identity 1001) and `b` (1002),
/// `node2` with pod `c` (2001). Namespaces first in the struct: the nodes'
/// threads end (dropping their datapaths) before the namespaces go.
struct Cluster {
    node1: Node,
    node2: Node,
    n1: String,
    n2: String,
    a: Pod,
    b: Pod,
    c: Pod,
    _namespaces: Namespaces,
}

impl Cluster {
    /// Builds the namespaces, the underlay and the pods, and attaches the
    /// programs; the routing is the caller's.
    fn build(test: &str, mtu: u32) -> Self {
        let pid = std::process::id();
        let name = |what: &str| format!("ovl-{pid}-{test}-{what}");
        let (n1, n2) = (name("n1"), name("n2"));
        let a = Pod {
            ns: name("a"),
            v4: "10.244.1.5",
            v6: "fd00:10:244:1::5",
            identity: 1001,
        };
        let b = Pod {
            ns: name("b"),
            v4: "10.244.1.6",
            v6: "fd00:10:244:1::6",
            identity: 1002,
        };
        let c = Pod {
            ns: name("c"),
            v4: "10.244.2.5",
            v6: "fd00:10:244:2::5",
            identity: 2001,
        };
        let namespaces = Namespaces {
            names: vec![
                n1.clone(),
                n2.clone(),
                a.ns.clone(),
                b.ns.clone(),
                c.ns.clone(),
            ],
        };
        for ns in &namespaces.names {
            run_ip(&["netns", "add", ns]);
            in_ns(ns, &["ip", "link", "set", "lo", "up"]);
            in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
            in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
        }
        for (node, index) in [(&n1, 1), (&n2, 2)] {
            for sysctl in [
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                in_ns(node, &["sysctl", "-qw", sysctl]);
            }
            in_ns(
                node,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.244.{index}.1/32"),
                    "dev",
                    "lo",
                ],
            );
        }
        // The underlay.
        in_ns(
            &n1,
            &[
                "ip", "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", &n2,
            ],
        );
        for (node, dev, v4, v6) in [
            (&n1, "u1", "192.0.2.1/24", "2001:db8::1/64"),
            (&n2, "u2", "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            in_ns(node, &["ip", "addr", "add", v4, "dev", dev]);
            in_ns(node, &["ip", "addr", "add", v6, "dev", dev, "nodad"]);
            in_ns(
                node,
                &[
                    "ip",
                    "link",
                    "set",
                    dev,
                    "mtu",
                    &UNDERLAY_MTU.to_string(),
                    "up",
                ],
            );
        }
        let node1 = Node::start(&n1);
        let node2 = Node::start(&n2);
        for (node, node_ns, pod, index, veth) in [
            (&node1, &n1, &a, 1, "ha"),
            (&node1, &n1, &b, 1, "hb"),
            (&node2, &n2, &c, 2, "hc"),
        ] {
            add_pod(node_ns, pod, index, veth, mtu);
            let mut info = EndpointInfo {
                endpoint_id: pod.identity,
                identity: pod.identity,
                ..EndpointInfo::default()
            };
            let (IpAddr::V4(v4), IpAddr::V6(v6)) = (ip(pod.v4), ip(pod.v6)) else {
                unreachable!("literals")
            };
            info.ipv4 = v4.octets();
            info.ipv6 = v6.octets();
            info.mac = pod_mac(pod);
            node.run(move |node| {
                let datapath = &mut node.datapath;
                datapath.attach_endpoint(veth, &info).expect("attach");
            });
        }
        Cluster {
            node1,
            node2,
            n1,
            n2,
            a,
            b,
            c,
            _namespaces: namespaces,
        }
    }

    /// Both nodes' ipcaches: every remote pod's identity as given.
    fn ipcache(&self, node1: &[(&'static str, u32)], node2: &[(&'static str, u32)]) {
        for (node, entries) in [(&self.node1, node1), (&self.node2, node2)] {
            let entries = entries.to_vec();
            node.run(move |node| {
                let datapath = &mut node.datapath;
                for (address, identity) in entries {
                    let len = if ip(address).is_ipv4() { 32 } else { 128 };
                    datapath
                        .ipcache_upsert(ip(address), len, identity)
                        .expect("ipcache");
                }
            });
        }
    }

    /// Tunnel mode on both nodes: the overlay device at `mtu`, each node's
    /// tunnel endpoints (the other's pod CIDRs via its underlay address in
    /// `underlay`), and the nodes' routes to them into the device.
    fn tunnel(&self, underlay: [&'static str; 2], mtu: u32) {
        for (node, remote, endpoint) in [
            (&self.node1, ("10.244.2.0", "fd00:10:244:2::"), underlay[1]),
            (&self.node2, ("10.244.1.0", "fd00:10:244:1::"), underlay[0]),
        ] {
            node.run(move |node| {
                let datapath = &mut node.datapath;
                let device = datapath
                    .attach_overlay(OVERLAY_DEVICE, mtu)
                    .expect("overlay device");
                assert!(device.created);
                datapath
                    .set_routing_mode(RoutingMode::Tunnel)
                    .expect("tunnel mode");
                datapath
                    .sync_tunnel_endpoints(&[
                        route(remote.0, 24, endpoint),
                        route(remote.1, 64, endpoint),
                    ])
                    .expect("tunnel endpoints");
            });
        }
        for (ns, remote) in [
            (&self.n1, ("10.244.2.0/24", "fd00:10:244:2::/64")),
            (&self.n2, ("10.244.1.0/24", "fd00:10:244:1::/64")),
        ] {
            in_ns(ns, &["ip", "route", "add", remote.0, "dev", OVERLAY_DEVICE]);
            in_ns(
                ns,
                &["ip", "-6", "route", "add", remote.1, "dev", OVERLAY_DEVICE],
            );
        }
    }

    /// Pod `c` admits TCP 8080 and ICMP from identity 1001 only.
    fn police_c(&self) {
        let id = self.c.identity;
        self.node2.run(move |node| {
            let datapath = &mut node.datapath;
            datapath
                .replace_policy(
                    id,
                    &PolicyTable {
                        ingress_enforced: true,
                        egress_enforced: false,
                        rules: vec![
                            ingress_allow(1001, TCP, Some((8080, 8080))),
                            ingress_allow(1001, 17, Some((9001, 9001))),
                            ingress_allow(1001, 1, None),
                            ingress_allow(1001, 58, None),
                        ],
                    },
                )
                .expect("policy");
        });
    }
}

/// The MAC of a pod's `eth0`, as the lab picks it: `0a:58:` and its IPv4
/// address.
fn pod_mac(pod: &Pod) -> [u8; 6] {
    let IpAddr::V4(v4) = ip(pod.v4) else {
        unreachable!("an IPv4 literal")
    };
    let [a, b, c, d] = v4.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// Pod `pod` behind veth `veth` of node namespace `node` (as the lab builds
/// them: routed, the node's address as gateway), both ends at `mtu`.
fn add_pod(node: &str, pod: &Pod, index: u8, veth: &str, mtu: u32) {
    let mtu = mtu.to_string();
    let mac = pod_mac(pod)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    in_ns(
        node,
        &[
            "ip", "link", "add", veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "address", &mac, "netns", &pod.ns,
        ],
    );
    in_ns(node, &["ip", "link", "set", veth, "up"]);
    in_ns(
        node,
        &["ip", "addr", "add", "fe80::1/64", "dev", veth, "nodad"],
    );
    in_ns(
        node,
        &["ip", "route", "add", &format!("{}/32", pod.v4), "dev", veth],
    );
    in_ns(
        node,
        &[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/128", pod.v6),
            "dev",
            veth,
        ],
    );
    in_ns(&pod.ns, &["ip", "link", "set", "eth0", "up"]);
    in_ns(
        &pod.ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/32", pod.v4),
            "dev",
            "eth0",
        ],
    );
    in_ns(
        &pod.ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/128", pod.v6),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let gateway = format!("10.244.{index}.1");
    in_ns(
        &pod.ns,
        &[
            "ip", "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
        ],
    );
    in_ns(
        &pod.ns,
        &[
            "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ],
    );
}

/// An echo server in pod namespace `ns` on `port` (both families): each
/// connection gets back what it sends, until it closes.
fn echo_server(ns: &str, port: u16) {
    let listener = in_thread(ns, move || TcpListener::bind(("::", port)).expect("listen"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// From pod namespace `ns`: connects to `target`, sends `size` bytes and
/// reads them back. Err when it cannot connect within 3 s.
fn exchange(ns: &str, target: SocketAddr, size: usize) -> std::io::Result<()> {
    in_thread(ns, move || {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut stream = stream.try_clone()?;
            let data = data.clone();
            std::thread::spawn(move || stream.write_all(&data))
        };
        let mut back = vec![0u8; size];
        stream.read_exact(&mut back)?;
        writer.join().expect("writer")?;
        assert!(back == data, "the echo differs from what was sent");
        Ok(())
    })
}

/// An AF_PACKET socket on one interface: every frame it carries.
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens on `ifname` of node namespace `ns`.
    fn open(ns: &str, ifname: &'static str) -> Self {
        in_thread(ns, move || {
            let all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket syscalls on a descriptor we own at once;
            // errors checked.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
                assert!(fd >= 0, "AF_PACKET socket");
                let fd = OwnedFd::from_raw_fd(fd);
                let size: libc::c_int = 8 << 20;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
                let index = nix::net::if_::if_nametoindex(ifname).expect("underlay interface");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = all;
                addr.sll_ifindex = index as i32;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "bind AF_PACKET");
                Capture { fd }
            }
        })
    }

    /// The frames captured so far.
    fn frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: a buffer of the length given, on our descriptor.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }

    /// The VXLAN packets captured so far.
    fn vxlan(&self) -> Vec<Vxlan> {
        vxlan(&self.frames())
    }
}

/// A VXLAN packet seen on the underlay.
struct Vxlan {
    /// The outer header is IPv6.
    outer_ipv6: bool,
    vni: u32,
    inner: Vec<u8>,
}

/// The VXLAN packets among `frames` (outer IPv4 or IPv6 without extension
/// headers, UDP 8472).
fn vxlan(frames: &[Vec<u8>]) -> Vec<Vxlan> {
    frames
        .iter()
        .filter_map(|f| {
            let (outer_ipv6, udp) = match (f.get(12..14)?, f.get(14)?) {
                ([0x08, 0x00], _) if f.get(23) == Some(&17) => {
                    (false, 14 + usize::from(f[14] & 0x0f) * 4)
                }
                ([0x86, 0xdd], _) if f.get(20) == Some(&17) => (true, 14 + 40),
                _ => return None,
            };
            let port = u16::from_be_bytes([*f.get(udp + 2)?, *f.get(udp + 3)?]);
            if port != myelin_datapath::VXLAN_PORT {
                return None;
            }
            let vxlan = f.get(udp + 8..)?;
            let vni = u32::from_be_bytes([0, *vxlan.get(4)?, *vxlan.get(5)?, *vxlan.get(6)?]);
            Some(Vxlan {
                outer_ipv6,
                vni,
                inner: vxlan.get(8..)?.to_vec(),
            })
        })
        .collect()
}

/// Asserts that `seen` has VXLAN packets from `source` over an IPv6
/// (`outer_ipv6`) or IPv4 underlay, and that their VNI is `identity`.
fn assert_only_vni(seen: &[Vxlan], source: &str, outer_ipv6: bool, identity: u32) {
    let vnis: Vec<u32> = seen
        .iter()
        .filter(|p| p.outer_ipv6 == outer_ipv6 && inner_source(&p.inner) == Some(ip(source)))
        .map(|p| p.vni)
        .collect();
    assert!(
        !vnis.is_empty(),
        "no VXLAN packet from {source} on the underlay (outer IPv6: {outer_ipv6})"
    );
    assert!(
        vnis.iter().all(|vni| *vni == identity),
        "VNIs of {source}: {vnis:?}"
    );
}

/// The inner frame's source address (IPv4 or IPv6).
fn inner_source(frame: &[u8]) -> Option<IpAddr> {
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let b: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        [0x86, 0xdd] => {
            let b: [u8; 16] = frame.get(22..38)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// From pod namespace `ns`: sends one UDP datagram of `size` bytes (IP
/// header included) to `target`, not to be fragmented, and returns the ICMP
/// answer its socket's error queue gets (origin, type, code, the MTU it
/// reports).
fn too_big_answer(ns: &str, target: SocketAddr, size: usize) -> (u8, u8, u8, u32) {
    in_thread(ns, move || {
        let v4 = target.is_ipv4();
        let (local, header) = if v4 {
            ("0.0.0.0:0", 28)
        } else {
            ("[::]:0", 48)
        };
        let udp = std::net::UdpSocket::bind(local).expect("bind");
        udp.connect(target).expect("connect");
        let fd = udp.as_raw_fd();
        let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
            // SAFETY: an int option on our socket.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "setsockopt {level}/{name}");
        };
        if v4 {
            set(
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            );
            set(libc::IPPROTO_IP, libc::IP_RECVERR, 1);
        } else {
            set(
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            );
            set(libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
        }
        let payload = vec![0u8; size - header];
        udp.send(&payload).expect("the pod's MTU lets it leave");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut data = [0u8; 64];
            let mut control = [0u8; 512];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: zero is a valid msghdr; the pointers set below
            // outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
            // SAFETY: recvmsg on our socket with the buffers above.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if n >= 0 {
                // SAFETY: the kernel filled msg's control buffer; the
                // cmsg macros walk it within msg_controllen.
                unsafe {
                    let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                    while !cmsg.is_null() {
                        let err = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                        let err = err.read_unaligned();
                        if err.ee_errno == libc::EMSGSIZE as u32 {
                            return (err.ee_origin, err.ee_type, err.ee_code, err.ee_info);
                        }
                        cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no ICMP answer within 3 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Bytes interface `dev` of namespace `ns` has transmitted.
fn tx_bytes(ns: &str, dev: &str) -> u64 {
    let output = Command::new("ip")
        .args(["-n", ns, "-j", "-s", "link", "show", "dev", dev])
        .output()
        .expect("ip");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip -json");
    links[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .expect("tx bytes")
}

fn socket(address: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(address), port)
}

/// Waits until `check` holds, polling; panics after `limit` with `what`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tunnel mode end to end. The receiving node's ipcache has `a`'s and
/// `b`'s identities swapped: only the VNI can make `c` admit `a` and refuse
/// `b`.
#[test]
fn pods_of_two_nodes_talk_through_the_overlay_with_the_identity_in_the_vni() {
    if !privileged("pods_of_two_nodes_talk_through_the_overlay_with_the_identity_in_the_vni") {
        return;
    }
    let cluster = Cluster::build("tun", POD_MTU);
    cluster.tunnel(["192.0.2.1", "192.0.2.2"], POD_MTU);
    cluster.ipcache(
        &[("10.244.2.5", 2001), ("fd00:10:244:2::5", 2001)],
        &[
            ("10.244.1.5", 1002),
            ("fd00:10:244:1::5", 1002),
            ("10.244.1.6", 1001),
            ("fd00:10:244:1::6", 1001),
        ],
    );
    cluster.police_c();
    echo_server(&cluster.c.ns, 8080);
    let capture = Capture::open(&cluster.n2, "u2");
    // Drain the events of the set-up.
    cluster
        .node2
        .run(|node| node.events_within(Duration::from_millis(200)));

    // a → c, IPv4 and IPv6 pods over the IPv4 underlay, a megabyte each way
    // at the pods' MTU: nothing is lost to size.
    for target in [cluster.c.v4, cluster.c.v6] {
        exchange(&cluster.a.ns, socket(target, 8080), 1 << 20)
            .unwrap_or_else(|e| panic!("a → {target}: {e}"));
    }
    // The established flows' packets were handed into c by host routing:
    // the two megabytes never crossed its host veth.
    let sent = tx_bytes(&cluster.n2, "hc");
    assert!(sent < 256 << 10, "c's host veth sent {sent} bytes");
    let seen = capture.vxlan();
    for source in [cluster.a.v4, cluster.a.v6] {
        assert_only_vni(&seen, source, false, cluster.a.identity);
    }
    assert_only_vni(&seen, cluster.c.v4, false, cluster.c.identity);

    // b → c: refused, by the VNI's identity.
    for target in [cluster.c.v4, cluster.c.v6] {
        assert!(
            exchange(&cluster.b.ns, socket(target, 8080), 16).is_err(),
            "b reached {target}"
        );
    }
    assert_only_vni(&capture.vxlan(), cluster.b.v4, false, cluster.b.identity);
    let events = cluster
        .node2
        .run(|node| node.events_within(Duration::from_millis(500)));
    let from = |source: &str| {
        let source = ip(source);
        move |e: &&TraceEvent| {
            let addr = if source.is_ipv4() {
                IpAddr::from(<[u8; 4]>::try_from(&e.source[..4]).expect("4 bytes"))
            } else {
                IpAddr::from(e.source)
            };
            addr == source
        }
    };
    let b_drops: Vec<&TraceEvent> = events
        .iter()
        .filter(from(cluster.b.v4))
        .filter(|e| e.kind == EventKind::Drop as u8)
        .collect();
    assert!(!b_drops.is_empty(), "node2 reported b's drops: {events:?}");
    assert!(
        b_drops
            .iter()
            .all(|e| e.drop_reason == drop_reason::POLICY_DENIED && e.source_identity == 1002),
        "{b_drops:?}"
    );

    // A VXLAN packet whose VNI is no identity (0, or above 16 bits), from
    // a's address: the receiver treats its sender as world (2), neither the
    // ipcache's 1002 nor a's 1001.
    for (vni, sport) in [(0u32, 41000u16), (0x10000, 41001)] {
        let inner = Pkt::tcp(cluster.a.v4, sport, cluster.c.v4, 8080, SYN).build();
        let mut datagram = vec![0x08, 0, 0, 0];
        datagram.extend_from_slice(&(vni << 8).to_be_bytes());
        datagram.extend_from_slice(&inner);
        in_thread(&cluster.n1, move || {
            let udp = std::net::UdpSocket::bind("192.0.2.1:0").expect("bind");
            udp.send_to(&datagram, ("192.0.2.2", myelin_datapath::VXLAN_PORT))
                .expect("send");
        });
    }
    let events = cluster
        .node2
        .run(|node| node.events_within(Duration::from_millis(500)));
    let unknown: Vec<u16> = events
        .iter()
        .filter(|e| {
            e.kind == EventKind::Drop as u8
                && e.drop_reason == drop_reason::POLICY_DENIED
                && e.source_identity == 2
        })
        .map(|e| e.source_port)
        .collect();
    assert_eq!(unknown, [41000, 41001], "{events:?}");

    // A ClusterIP on node1 whose backend is c on node2: translated at the
    // client's node, reverse NAT on the answer there.
    cluster.node1.run(|node| {
        let datapath = &mut node.datapath;
        datapath
            .upsert_service(&Service {
                frontend: socket("10.96.0.10", 80),
                protocol: ServiceProtocol::Tcp,
                backends: vec![socket("10.244.2.5", 8080)],
                affinity_timeout_s: None,
            })
            .expect("service");
    });
    exchange(&cluster.a.ns, socket("10.96.0.10", 80), 4096).expect("a → ClusterIP → c");

    // A pod whose MTU is bigger than the overlay's (not sized by the agent):
    // its packet that does not fit goes to the node's stack, whose route
    // into the overlay answers it with "fragmentation needed" (IPv4) or
    // "packet too big" (IPv6) carrying the MTU that fits; a datagram it may
    // fragment crosses in fragments (keyed by `to_overlay`). (At the pods'
    // MTU nothing is too big: the transfers above went through whole.)
    for (ns, dev) in [(&cluster.a.ns, "eth0"), (&cluster.n1, "ha")] {
        in_ns(ns, &["ip", "link", "set", dev, "mtu", "1500"]);
    }
    assert_eq!(
        too_big_answer(&cluster.a.ns, socket(cluster.c.v4, 9000), 1500),
        (libc::SO_EE_ORIGIN_ICMP, 3, 4, POD_MTU),
        "IPv4: ICMP destination unreachable, fragmentation needed"
    );
    assert_eq!(
        too_big_answer(&cluster.a.ns, socket(cluster.c.v6, 9000), 1500),
        (libc::SO_EE_ORIGIN_ICMP6, 2, 0, POD_MTU),
        "IPv6: ICMPv6 packet too big"
    );
    let receiver = in_thread(&cluster.c.ns, || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:9001").expect("bind");
        udp.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        udp
    });
    in_thread(&cluster.a.ns, || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let dont = libc::IP_PMTUDISC_DONT;
        // SAFETY: an int option on our socket.
        let rc = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&dont as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        udp.send_to(&[7u8; 1472], "10.244.2.5:9001").expect("send");
    });
    let mut buf = [0u8; 2048];
    let (n, from) = receiver
        .recv_from(&mut buf)
        .expect("the fragmented datagram arrives");
    assert_eq!((n, from.ip()), (1472, ip(cluster.a.v4)));
    // And TCP from the oversized pod adapts to it.
    exchange(&cluster.a.ns, socket(cluster.c.v4, 8080), 1 << 20).expect("TCP past the MTU");

    let (n1, n2) = (cluster.n1.clone(), cluster.n2.clone());
    for (node, ns) in [(&cluster.node1, n1), (&cluster.node2, n2)] {
        node.run(move |node| {
            let datapath = &mut node.datapath;
            datapath.detach_overlay(OVERLAY_DEVICE).expect("remove");
        });
        eventually(Duration::from_secs(5), "the device is gone", || {
            !Command::new("ip")
                .args(["-n", &ns, "link", "show", OVERLAY_DEVICE])
                .output()
                .expect("ip")
                .status
                .success()
        });
    }
}

/// Native routing: no encapsulation, the node's routes carry the pod CIDRs
/// over the underlay (IPv4 over IPv4, IPv6 over IPv6), and the receiver
/// takes the source identity from its ipcache.
#[test]
fn pods_of_two_nodes_talk_over_native_routes_with_the_identity_from_the_ipcache() {
    if !privileged("pods_of_two_nodes_talk_over_native_routes_with_the_identity_from_the_ipcache") {
        return;
    }
    let cluster = Cluster::build("nat", POD_MTU);
    for (ns, remote, underlay) in [
        (
            &cluster.n1,
            ("10.244.2.0/24", "fd00:10:244:2::/64"),
            ("192.0.2.2", "2001:db8::2"),
        ),
        (
            &cluster.n2,
            ("10.244.1.0/24", "fd00:10:244:1::/64"),
            ("192.0.2.1", "2001:db8::1"),
        ),
    ] {
        in_ns(ns, &["ip", "route", "add", remote.0, "via", underlay.0]);
        in_ns(
            ns,
            &["ip", "-6", "route", "add", remote.1, "via", underlay.1],
        );
    }
    for (node, underlay) in [(&cluster.node1, "u1"), (&cluster.node2, "u2")] {
        node.run(move |node| {
            let datapath = &mut node.datapath;
            datapath
                .set_routing_mode(RoutingMode::Native)
                .expect("native mode");
            datapath.attach_underlay(underlay).expect("from_underlay");
        });
    }
    cluster.ipcache(
        &[("10.244.2.5", 2001), ("fd00:10:244:2::5", 2001)],
        &[
            ("10.244.1.5", 1001),
            ("fd00:10:244:1::5", 1001),
            ("10.244.1.6", 1002),
            ("fd00:10:244:1::6", 1002),
        ],
    );
    cluster.police_c();
    echo_server(&cluster.c.ns, 8080);
    let capture = Capture::open(&cluster.n2, "u2");
    for target in [cluster.c.v4, cluster.c.v6] {
        exchange(&cluster.a.ns, socket(target, 8080), 1 << 20)
            .unwrap_or_else(|e| panic!("a → {target}: {e}"));
        assert!(
            exchange(&cluster.b.ns, socket(target, 8080), 16).is_err(),
            "b reached {target}"
        );
    }
    // `from_underlay` handed the established flows' packets into c by host
    // routing, as `from_overlay` does in tunnel mode: the two megabytes
    // never crossed c's host veth.
    let sent = tx_bytes(&cluster.n2, "hc");
    assert!(sent < 256 << 10, "c's host veth sent {sent} bytes");
    let frames = capture.frames();
    assert!(vxlan(&frames).is_empty() && !frames.is_empty());
    assert!(
        frames
            .iter()
            .any(|f| inner_source(f) == Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)))),
        "a's packets cross the underlay as they are"
    );
    let events = cluster
        .node2
        .run(|node| node.events_within(Duration::from_millis(500)));
    assert!(
        events.iter().any(|e| e.kind == EventKind::Drop as u8
            && e.drop_reason == drop_reason::POLICY_DENIED
            && e.source_identity == 1002),
        "b's drop, by its ipcache identity: {events:?}"
    );
}

/// Tunnel mode over an IPv6 underlay, pods at the MTU that fits it (1430):
/// IPv4 and IPv6 pods talk, the VNI in the IPv6-borne VXLAN header is the
/// sender's identity, and the receiver decides with it.
#[test]
fn pods_of_two_nodes_talk_through_the_overlay_over_an_ipv6_underlay() {
    if !privileged("pods_of_two_nodes_talk_through_the_overlay_over_an_ipv6_underlay") {
        return;
    }
    let mtu = pod_mtu(UNDERLAY_MTU, true);
    let cluster = Cluster::build("tun6", mtu);
    cluster.tunnel(["2001:db8::1", "2001:db8::2"], mtu);
    cluster.ipcache(
        &[("10.244.2.5", 2001), ("fd00:10:244:2::5", 2001)],
        &[("10.244.1.5", 1002), ("10.244.1.6", 1001)],
    );
    cluster.police_c();
    echo_server(&cluster.c.ns, 8080);
    let capture = Capture::open(&cluster.n2, "u2");
    for target in [cluster.c.v4, cluster.c.v6] {
        exchange(&cluster.a.ns, socket(target, 8080), 1 << 20)
            .unwrap_or_else(|e| panic!("a → {target}: {e}"));
        assert!(
            exchange(&cluster.b.ns, socket(target, 8080), 16).is_err(),
            "b reached {target}"
        );
    }
    let seen = capture.vxlan();
    for (source, identity) in [
        (cluster.a.v4, cluster.a.identity),
        (cluster.a.v6, cluster.a.identity),
        (cluster.b.v4, cluster.b.identity),
    ] {
        assert_only_vni(&seen, source, true, identity);
    }
    assert!(
        seen.iter().all(|p| p.outer_ipv6),
        "all over the IPv6 underlay"
    );
}

/// An agent restart: a new load adopts the device, keeps its programs
/// attached, and finds the routing mode and tunnel endpoints where it left
/// them (the programs never stopped using them). A device of the name that
/// is something else is refused and left alone.
#[test]
fn the_overlay_is_adopted_after_a_restart_and_a_foreign_device_refused() {
    if !privileged("the_overlay_is_adopted_after_a_restart_and_a_foreign_device_refused") {
        return;
    }
    let ns = format!("ovl-{}-restart", std::process::id());
    let guard = Namespaces {
        names: vec![ns.clone()],
    };
    run_ip(&["netns", "add", &ns]);
    in_ns(
        &ns,
        &[
            "ip",
            "link",
            "add",
            "notvxlan",
            "type",
            "veth",
            "peer",
            "name",
            "notvxlanp",
        ],
    );
    in_thread(&ns, || {
        let bpffs = ScratchBpffs::mount().expect("bpffs");
        let routes = vec![route("10.244.2.0", 24, "192.0.2.2")];
        let mut datapath = Datapath::load(bpffs.path()).expect("load");
        let first = datapath
            .attach_overlay(OVERLAY_DEVICE, POD_MTU)
            .expect("create");
        datapath
            .set_routing_mode(RoutingMode::Tunnel)
            .expect("tunnel mode");
        datapath.sync_tunnel_endpoints(&routes).expect("sync");
        drop(datapath);

        let mut datapath = Datapath::load(bpffs.path()).expect("reload");
        assert_eq!(datapath.routing_mode().expect("mode"), RoutingMode::Tunnel);
        assert_eq!(datapath.tunnel_endpoints().expect("read"), routes);
        let again = datapath
            .attach_overlay(OVERLAY_DEVICE, POD_MTU)
            .expect("adopt");
        assert!(!again.created && again.readopted, "{again:?}");
        assert_eq!(again.ifindex, first.ifindex);

        let refused = datapath
            .attach_overlay("notvxlan", POD_MTU)
            .expect_err("a veth is no overlay");
        assert!(refused.to_string().contains("veth"), "{refused}");
        assert!(datapath.detach_overlay("notvxlan").is_err());
        assert!(
            nix::net::if_::if_nametoindex("notvxlan").is_ok(),
            "left alone"
        );
        datapath.detach_overlay(OVERLAY_DEVICE).expect("remove");
    });
    drop(guard);
}

/// The port of the stand-in for node2's proxy.
const PROXY_PORT: u16 = 15001;

/// A flow from a pod of node1 that the receiving pod `c`'s ingress policy
/// redirects to L7 is handed to node2's proxy at node2's ingress
/// (`from_overlay` in tunnel mode, `from_underlay` on the underlay link in
/// native mode): the proxy accepts it with the client's address and the
/// original destination, the later packets follow on the accepted
/// connection and the proxy's answers reach the client. Without the hand-over
/// `c`'s `to_container` drops the flow (fail closed) and nothing connects.
fn a_remote_flow_reaches_the_receiving_nodes_proxy(test: &str, mode: RoutingMode) {
    let cluster = Cluster::build(test, POD_MTU);
    match mode {
        RoutingMode::Tunnel => cluster.tunnel(["192.0.2.1", "192.0.2.2"], POD_MTU),
        RoutingMode::Native => {
            for (ns, remote, via) in [
                (&cluster.n1, "10.244.2.0/24", "192.0.2.2"),
                (&cluster.n2, "10.244.1.0/24", "192.0.2.1"),
            ] {
                in_ns(ns, &["ip", "route", "add", remote, "via", via]);
            }
            for node in [&cluster.node1, &cluster.node2] {
                node.run(|node| {
                    let datapath = &mut node.datapath;
                    datapath
                        .set_routing_mode(RoutingMode::Native)
                        .expect("native mode");
                });
            }
            cluster.node2.run(|node| {
                let datapath = &mut node.datapath;
                assert!(!datapath.attach_underlay("u2").expect("from_underlay"));
                assert!(
                    datapath.attach_underlay("u2").expect("again"),
                    "a second attach keeps the link"
                );
            });
        }
    }
    cluster.ipcache(&[("10.244.2.5", 2001)], &[("10.244.1.5", 1001)]);
    let id = cluster.c.identity;
    cluster.node2.run(move |node| {
        let datapath = &mut node.datapath;
        datapath
            .replace_policy(
                id,
                &PolicyTable {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules: vec![PolicyRule {
                        direction: PolicyDirection::Ingress,
                        peer_identity: 1001,
                        protocol: TCP,
                        ports: Some((80, 80)),
                        action: RuleAction::Redirect {
                            proxy_port: PROXY_PORT,
                        },
                        rule_id: 7,
                    }],
                },
            )
            .expect("policy");
    });
    deliver_marked_locally(&cluster.n2);
    let listener = cluster.node2.run(|_| transparent_listener(PROXY_PORT));
    let target = socket(cluster.c.v4, 80);
    let client_ns = cluster.a.ns.clone();
    let client = std::thread::spawn(move || {
        in_thread(&client_ns, move || -> std::io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut answers = Vec::new();
            for _ in 0..2 {
                stream.write_all(b"ping")?;
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf)?;
                answers.extend_from_slice(&buf);
            }
            Ok(answers)
        })
    });
    let (mut accepted, original) = accept_within(&listener, Duration::from_secs(10));
    assert_eq!(original, target, "the proxy sees the original destination");
    assert_eq!(
        accepted.peer_addr().expect("peer").ip(),
        ip(cluster.a.v4),
        "the proxy sees the client's address"
    );
    for _ in 0..2 {
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).expect("the client's bytes");
        assert_eq!(&buf, b"ping");
        accepted.write_all(b"pong").expect("answer");
    }
    let answers = client
        .join()
        .expect("client thread")
        .expect("the client's exchange");
    assert_eq!(answers, b"pongpong");
    let events = cluster
        .node2
        .run(|node| node.events_within(Duration::from_millis(500)));
    assert!(
        events.iter().any(|e| e.kind == EventKind::Trace as u8
            && e.observation_point == ObservationPoint::ToProxy as u8
            && e.source_identity == 1001),
        "the hand-over is reported with the client's identity: {events:?}"
    );
}

#[test]
fn a_remote_flow_reaches_the_receiving_nodes_proxy_through_the_overlay() {
    if !privileged("a_remote_flow_reaches_the_receiving_nodes_proxy_through_the_overlay") {
        return;
    }
    a_remote_flow_reaches_the_receiving_nodes_proxy("l7t", RoutingMode::Tunnel);
}

#[test]
fn a_remote_flow_reaches_the_receiving_nodes_proxy_over_native_routes() {
    if !privileged("a_remote_flow_reaches_the_receiving_nodes_proxy_over_native_routes") {
        return;
    }
    a_remote_flow_reaches_the_receiving_nodes_proxy("l7n", RoutingMode::Native);
}
