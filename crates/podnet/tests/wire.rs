//! A pod wired between two scratch namespaces, checked with `ip` as an
//! operator would and with TCP connections: the veth with its pod end named eth0 in
//! the pod, the MAC and MTU asked for, both addresses, the routes both
//! ways, and TCP from the pod to the node over both gateways.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsFd as _;
use std::process::Command;
use std::time::Duration;

use myelin_podnet::{PodInterface, PodIpv4, wire};
use myelin_test_support::privileged;

/// Named network namespaces for one test, deleted by name on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(names: &[&str]) -> Self {
        let tag = format!("mpn{}", std::process::id());
        let names: Vec<String> = names.iter().map(|n| format!("{tag}-{n}")).collect();
        for name in &names {
            ip(&["netns", "add", name]);
        }
        Self(names)
    }

    fn path(&self, i: usize) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.0[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Runs `f` on a thread inside the namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_pod_is_wired_to_its_node_in_both_families() {
    if !privileged("a_pod_is_wired_to_its_node_in_both_families") {
        return;
    }
    let namespaces = Namespaces::new(&["node", "pod"]);
    let (node, pod) = (&namespaces.0[0], &namespaces.0[1]);
    // The node's router address lives on its loopback, as in the lab.
    ip(&["-n", node, "link", "set", "lo", "up"]);
    ip(&["-n", node, "addr", "add", "10.77.1.1/32", "dev", "lo"]);
    let interface = PodInterface {
        host_veth: "mpntest0".into(),
        mtu: 1450,
        mac: Some([0x0a, 0x58, 0x0a, 0x4d, 0x01, 0x02]),
        ipv4: Some(PodIpv4 {
            address: Ipv4Addr::new(10, 77, 1, 2),
            gateway: Ipv4Addr::new(10, 77, 1, 1),
        }),
        ipv6: Some("fd00:77:1::2".parse::<Ipv6Addr>().expect("ipv6")),
    };
    wire(&namespaces.path(0), &namespaces.path(1), &interface).expect("wire");

    let eth0 = ip(&["-n", pod, "-d", "link", "show", "eth0"]);
    assert!(
        eth0.contains("mtu 1450") && eth0.contains("0a:58:0a:4d:01:02"),
        "{eth0}"
    );
    let host = ip(&["-n", node, "link", "show", "mpntest0"]);
    assert!(host.contains("mtu 1450") && host.contains("UP"), "{host}");
    let addresses = ip(&["-n", pod, "addr", "show", "eth0"]);
    assert!(
        addresses.contains("10.77.1.2/32") && addresses.contains("fd00:77:1::2/128"),
        "{addresses}"
    );
    let routes = ip(&["-n", pod, "route"]);
    assert!(
        routes.contains("default via 10.77.1.1 dev eth0"),
        "{routes}"
    );
    let routes6 = ip(&["-n", pod, "-6", "route"]);
    assert!(
        routes6.contains("default via fe80::1 dev eth0"),
        "{routes6}"
    );
    let node_routes = ip(&["-n", node, "route"]);
    assert!(
        node_routes.contains("10.77.1.2 dev mpntest0"),
        "{node_routes}"
    );

    // TCP from the pod to the node over both gateways.
    let listener = in_netns(namespaces.path(0), || {
        std::net::TcpListener::bind("[::]:0").expect("listen in the node")
    });
    let port = listener.local_addr().expect("address").port();
    in_netns(namespaces.path(1), move || {
        let eth0 = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let targets = [
            SocketAddr::from((Ipv4Addr::new(10, 77, 1, 1), port)),
            SocketAddr::V6(SocketAddrV6::new(myelin_podnet::GATEWAY_V6, port, 0, eth0)),
        ];
        for target in targets {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connecting from the pod to {target}: {e}"));
        }
    });

    // A second pod with the same host-side name is refused with the request
    // that failed, and the first stays as it was.
    let error =
        wire(&namespaces.path(0), &namespaces.path(1), &interface).expect_err("the link exists");
    assert!(
        error.to_string().contains("ip link add mpntest0"),
        "{error}"
    );
    assert!(ip(&["-n", pod, "addr", "show", "eth0"]).contains("10.77.1.2/32"));
}

/// A pod with an IPv4 address only, behind the host veth `mpntest1`.
fn ipv4_only_interface() -> PodInterface {
    PodInterface {
        host_veth: "mpntest1".into(),
        mtu: 1500,
        mac: None,
        ipv4: Some(PodIpv4 {
            address: Ipv4Addr::new(10, 77, 2, 2),
            gateway: Ipv4Addr::new(10, 77, 2, 1),
        }),
        ipv6: None,
    }
}

#[test]
fn an_ipv4_only_pod_is_wired_and_its_veth_found_and_deleted_once() {
    if !privileged("an_ipv4_only_pod_is_wired_and_its_veth_found_and_deleted_once") {
        return;
    }
    // Names of its own: the tests of this file run side by side.
    let namespaces = Namespaces::new(&["del-node", "del-pod"]);
    let interface = ipv4_only_interface();
    wire(&namespaces.path(0), &namespaces.path(1), &interface).expect("wire");
    let pod = &namespaces.0[1];
    assert!(ip(&["-n", pod, "addr", "show", "eth0"]).contains("10.77.2.2/32"));
    let v6 = ip(&["-n", pod, "-6", "addr", "show", "eth0"]);
    assert!(!v6.contains("scope global"), "no IPv6 address: {v6}");
    let routes6 = ip(&["-n", pod, "-6", "route"]);
    assert!(!routes6.contains("default"), "no IPv6 route: {routes6}");
    let node = namespaces.path(0);
    assert_eq!(
        myelin_podnet::link_exists(&node, "mpntest1").ok(),
        Some(true)
    );
    let names = myelin_podnet::link_names(&node).expect("links");
    assert!(
        names.contains("mpntest1") && names.contains("lo"),
        "{names:?}"
    );
    assert_eq!(
        myelin_podnet::delete_link(&node, "mpntest1").ok(),
        Some(true)
    );
    // Both ends went: the pod has no eth0 left.
    assert!(!ip(&["-n", pod, "link"]).contains("eth0"));
    assert_eq!(
        myelin_podnet::link_exists(&node, "mpntest1").ok(),
        Some(false)
    );
    assert_eq!(
        myelin_podnet::delete_link(&node, "mpntest1").ok(),
        Some(false)
    );
}

#[test]
fn a_missing_namespace_is_named() {
    let interface = ipv4_only_interface();
    let missing = std::path::Path::new("/run/netns/myelin-no-such-namespace");
    let error = wire(missing, missing, &interface).expect_err("no namespace");
    assert!(
        error
            .to_string()
            .contains("/run/netns/myelin-no-such-namespace"),
        "{error}"
    );
}

#[test]
fn a_named_namespace_is_made_and_removed_in_process() {
    if !privileged("a_named_namespace_is_made_and_removed_in_process") {
        return;
    }
    let name = format!("mpn{}-named", std::process::id());
    // Removed by name however the test ends.
    let _guard = Namespaces(vec![name.clone()]);
    let path = myelin_podnet::netns::create(&name).expect("create");
    // iproute2 sees it as one of its own, and it has a loopback.
    assert!(ip(&["netns", "list"]).contains(&name));
    assert!(ip(&["-n", &name, "link", "show", "lo"]).contains("LOOPBACK"));
    let again = myelin_podnet::netns::create(&name).expect_err("the name is taken");
    assert!(
        again.to_string().contains(&path.display().to_string()),
        "{again}"
    );
    myelin_podnet::netns::delete(&name).expect("delete");
    assert!(!ip(&["netns", "list"]).contains(&name));
    assert!(!path.exists());
    myelin_podnet::netns::delete(&name).expect("deleting an absent namespace is fine");
}
