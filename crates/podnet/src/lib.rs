//! A pod's network, wired through the kernel's routing netlink API
//! (rtnetlink) rather than by running `ip`: the veth between the node's
//! network namespace and the pod's, created with its pod end already in the
//! pod's namespace and named `eth0`, the pod's addresses, its routes both
//! ways, and the pod's sysctls. The lab's kubelet wires its pods with it;
//! the CNI plugin is meant to share it, so that both kinds of pods are wired
//! by one path.
//!
//! The layout is the one Myelin's datapath expects: no bridge, a /32 and a
//! /128 route in the node to the pod's veth (for each family the pod has),
//! the node's router address as the pod's IPv4 gateway (on-link) and
//! `fe80::1` on the node's end as its IPv6 gateway.

#![forbid(unsafe_code)]

pub mod netns;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The name of the pod's end of its veth.
pub const POD_INTERFACE: &str = "eth0";

/// The node end's IPv6 link-local address: the pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// What went wrong wiring a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {what}: {source}", path.display())]
    Namespace {
        /// The namespace's file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{what}: {source}")]
    Netlink {
        /// The request, in `ip`'s words.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A link the request created is not there.
    #[error("link {name} not found in {}", netns.display())]
    NoLink {
        /// Its name.
        name: String,
        /// The namespace searched.
        netns: PathBuf,
    },
    /// A sysctl could not be written.
    #[error("sysctl {key} = {value}: {source}")]
    Sysctl {
        /// Its key, `net/ipv6/...`.
        key: String,
        /// The value.
        value: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The worker thread could not run.
    #[error("the netlink worker thread failed: {0}")]
    Worker(String),
}

/// One pod's interface and addresses: both families, or one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The name of the node's end of the veth (at most 15 bytes).
    pub host_veth: String,
    /// The MTU of both ends.
    pub mtu: u32,
    /// The MAC address of the pod's end, if chosen.
    pub mac: Option<[u8; 6]>,
    /// The pod's IPv4 address and gateway, if it has IPv4.
    pub ipv4: Option<PodIpv4>,
    /// The pod's IPv6 address (a /128), if it has IPv6; its gateway is
    /// [`GATEWAY_V6`].
    pub ipv6: Option<Ipv6Addr>,
}

/// A pod's IPv4 side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIpv4 {
    /// The pod's address (a /32).
    pub address: Ipv4Addr,
    /// The node's address the pod routes IPv4 through (on-link).
    pub gateway: Ipv4Addr,
}

/// Opens a network namespace's file (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
fn open(path: &Path) -> Result<File, PodNetError> {
    File::open(path).map_err(|source| PodNetError::Namespace {
        path: path.to_path_buf(),
        what: "open",
        source,
    })
}

/// Moves the calling thread into the namespace of `file`.
fn enter(file: &File, path: &Path) -> Result<(), PodNetError> {
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        PodNetError::Namespace {
            path: path.to_path_buf(),
            what: "enter",
            source: errno.into(),
        }
    })
}

/// Sets link `name` of the namespace at `netns` up (a node's `lo`).
pub fn link_up(netns: &Path, name: &str) -> Result<(), PodNetError> {
    let (netns, name) = (netns.to_path_buf(), name.to_string());
    on_thread_in(netns.clone(), move |runtime| {
        let handle = connect(&netns)?;
        runtime.block_on(set_up(&handle, &netns, &name))
    })
}

/// Whether link `name` exists in the namespace at `netns`.
pub fn link_exists(netns: &Path, name: &str) -> Result<bool, PodNetError> {
    let (netns, name) = (netns.to_path_buf(), name.to_string());
    on_thread_in(netns.clone(), move |runtime| {
        let handle = connect(&netns)?;
        runtime.block_on(async {
            match index_of(&handle, &name, &netns).await {
                Ok(_) => Ok(true),
                Err(PodNetError::NoLink { .. }) => Ok(false),
                Err(other) => Err(other),
            }
        })
    })
}

/// The names of the links of the namespace at `netns` (one dump, however
/// many links: the agent looks for its pods' veths with it).
pub fn link_names(netns: &Path) -> Result<std::collections::BTreeSet<String>, PodNetError> {
    let netns = netns.to_path_buf();
    on_thread_in(netns.clone(), move |runtime| {
        let handle = connect(&netns)?;
        runtime.block_on(async {
            let mut links = handle.link().get().execute();
            let mut names = std::collections::BTreeSet::new();
            loop {
                match links.try_next().await {
                    Ok(Some(link)) => {
                        names.extend(link.attributes.into_iter().filter_map(|attribute| {
                            match attribute {
                                rtnetlink::packet_route::link::LinkAttribute::IfName(name) => {
                                    Some(name)
                                }
                                _ => None,
                            }
                        }))
                    }
                    Ok(None) => return Ok(names),
                    Err(source) => {
                        return Err(PodNetError::Netlink {
                            what: "ip link show".into(),
                            source,
                        });
                    }
                }
            }
        })
    })
}

/// Deletes link `name` of the namespace at `netns` (a pod's veth goes with
/// both its ends, and the routes through it). Returns whether it was there:
/// a link already gone is not an error, so that removing a pod twice, or
/// after its namespace went, is done at once.
pub fn delete_link(netns: &Path, name: &str) -> Result<bool, PodNetError> {
    let (netns, name) = (netns.to_path_buf(), name.to_string());
    on_thread_in(netns.clone(), move |runtime| {
        let handle = connect(&netns)?;
        runtime.block_on(async {
            let index = match index_of(&handle, &name, &netns).await {
                Ok(index) => index,
                Err(PodNetError::NoLink { .. }) => return Ok(false),
                Err(other) => return Err(other),
            };
            match handle.link().del(index).execute().await {
                Ok(()) => Ok(true),
                // Gone between the lookup and the delete (its namespace went).
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) =>
                {
                    Ok(false)
                }
                Err(source) => Err(PodNetError::Netlink {
                    what: format!("ip link del {name}"),
                    source,
                }),
            }
        })
    })
}

/// Runs `work` on a thread of its own inside the namespace at `netns`, with
/// a runtime for netlink connections.
fn on_thread_in<T: Send + 'static>(
    netns: PathBuf,
    work: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, PodNetError> + Send + 'static,
) -> Result<T, PodNetError> {
    std::thread::spawn(move || {
        let file = open(&netns)?;
        let runtime = runtime()?;
        let _entered = runtime.enter();
        enter(&file, &netns)?;
        work(&runtime)
    })
    .join()
    .map_err(|_| PodNetError::Worker("it panicked".into()))?
}

fn runtime() -> Result<tokio::runtime::Runtime, PodNetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| PodNetError::Worker(e.to_string()))
}

/// Sets link `name` up.
async fn set_up(handle: &Handle, netns: &Path, name: &str) -> Result<(), PodNetError> {
    let index = index_of(handle, name, netns).await?;
    done(
        || format!("ip link set {name} up"),
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute(),
    )
    .await
}

/// Wires `pod` between the node's namespace and the pod's (both given by
/// their files): the veth, `lo` and `eth0` up, the addresses, the routes,
/// and duplicate address detection off in the pod (its addresses are
/// unique by construction; DAD would hold IPv6 back for a second). Runs on a
/// thread of its own, which enters the namespaces; the caller's are left as
/// they are.
pub fn wire(node_netns: &Path, pod_netns: &Path, pod: &PodInterface) -> Result<(), PodNetError> {
    let (node_netns, pod_netns, pod) = (
        node_netns.to_path_buf(),
        pod_netns.to_path_buf(),
        pod.clone(),
    );
    std::thread::spawn(move || wire_on_this_thread(&node_netns, &pod_netns, &pod))
        .join()
        .map_err(|_| PodNetError::Worker("it panicked".into()))?
}

fn wire_on_this_thread(
    node_path: &Path,
    pod_path: &Path,
    pod: &PodInterface,
) -> Result<(), PodNetError> {
    let (node_ns, pod_ns) = (open(node_path)?, open(pod_path)?);
    let runtime = runtime()?;
    let _entered = runtime.enter();
    // A netlink socket belongs to the namespace it was made in.
    enter(&pod_ns, pod_path)?;
    for key in [
        "net/ipv6/conf/all/accept_dad",
        "net/ipv6/conf/default/accept_dad",
    ] {
        sysctl(key, "0")?;
    }
    let in_pod = connect(pod_path)?;
    enter(&node_ns, node_path)?;
    let in_node = connect(node_path)?;
    runtime.block_on(async {
        wire_node_side(&in_node, node_path, &pod_ns, pod).await?;
        wire_pod_side(&in_pod, pod_path, pod).await
    })
}

/// A netlink connection in the thread's namespace, served on the runtime.
fn connect(netns: &Path) -> Result<Handle, PodNetError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| PodNetError::Namespace {
            path: netns.to_path_buf(),
            what: "open a netlink socket",
            source,
        })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn sysctl(key: &str, value: &str) -> Result<(), PodNetError> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| PodNetError::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// The kernel's answer to `request`, named in `ip`'s words when it fails.
async fn done(
    what: impl FnOnce() -> String,
    request: impl std::future::Future<Output = Result<(), rtnetlink::Error>>,
) -> Result<(), PodNetError> {
    request.await.map_err(|source| PodNetError::Netlink {
        what: what(),
        source,
    })
}

/// The index of link `name`.
async fn index_of(handle: &Handle, name: &str, netns: &Path) -> Result<u32, PodNetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Err(PodNetError::NoLink {
            name: name.to_string(),
            netns: netns.to_path_buf(),
        }),
        Err(source) => Err(PodNetError::Netlink {
            what: format!("ip link show {name}"),
            source,
        }),
    }
}

async fn wire_node_side(
    handle: &Handle,
    node_path: &Path,
    pod_ns: &File,
    pod: &PodInterface,
) -> Result<(), PodNetError> {
    let veth = pod.host_veth.as_str();
    // The pod's end is made in the pod's namespace, named eth0 at once: no
    // temporary name in the node, no rename.
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(POD_INTERFACE)
        .mtu(pod.mtu)
        .setns_by_fd(pod_ns.as_raw_fd());
    if let Some(mac) = pod.mac {
        peer = peer.address(mac.to_vec());
    }
    let message = LinkVeth::new(veth, POD_INTERFACE)
        .mtu(pod.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .up()
        .build();
    done(
        || format!("ip link add {veth} type veth peer name {POD_INTERFACE} netns <pod>"),
        handle.link().add(message).execute(),
    )
    .await?;
    let index = index_of(handle, veth, node_path).await?;
    let mut gateway = handle.address().add(index, IpAddr::V6(GATEWAY_V6), 64);
    no_dad(gateway.message_mut());
    done(
        || format!("ip addr add {GATEWAY_V6}/64 dev {veth} nodad"),
        gateway.execute(),
    )
    .await?;
    if let Some(PodIpv4 { address, .. }) = pod.ipv4 {
        let to_pod_v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        done(
            || format!("ip route add {address}/32 dev {veth}"),
            handle.route().add(to_pod_v4).execute(),
        )
        .await?;
    }
    if let Some(address) = pod.ipv6 {
        let to_pod_v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(address, 128)
            .output_interface(index)
            .build();
        done(
            || format!("ip -6 route add {address}/128 dev {veth}"),
            handle.route().add(to_pod_v6).execute(),
        )
        .await?;
    }
    Ok(())
}

async fn wire_pod_side(
    handle: &Handle,
    pod_path: &Path,
    pod: &PodInterface,
) -> Result<(), PodNetError> {
    for name in ["lo", POD_INTERFACE] {
        set_up(handle, pod_path, name).await?;
    }
    let index = index_of(handle, POD_INTERFACE, pod_path).await?;
    if let Some(ipv4) = pod.ipv4 {
        pod_side_v4(handle, index, ipv4).await?;
    }
    if let Some(address) = pod.ipv6 {
        pod_side_v6(handle, index, address).await?;
    }
    Ok(())
}

/// The pod's IPv4 address, its on-link route to the gateway and its
/// default route through it.
async fn pod_side_v4(handle: &Handle, index: u32, ipv4: PodIpv4) -> Result<(), PodNetError> {
    let PodIpv4 { address, gateway } = ipv4;
    done(
        || format!("ip addr add {address}/32 dev {POD_INTERFACE}"),
        handle
            .address()
            .add(index, IpAddr::V4(address), 32)
            .execute(),
    )
    .await?;
    let on_link = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    done(
        || format!("ip route add {gateway} dev {POD_INTERFACE} scope link"),
        handle.route().add(on_link).execute(),
    )
    .await?;
    let default_v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    done(
        || format!("ip route add default via {gateway} dev {POD_INTERFACE}"),
        handle.route().add(default_v4).execute(),
    )
    .await
}

/// The pod's IPv6 address (no DAD) and its default route through the
/// node end's link-local address.
async fn pod_side_v6(handle: &Handle, index: u32, address: Ipv6Addr) -> Result<(), PodNetError> {
    let mut v6 = handle.address().add(index, IpAddr::V6(address), 128);
    no_dad(v6.message_mut());
    done(
        || format!("ip addr add {address}/128 dev {POD_INTERFACE} nodad"),
        v6.execute(),
    )
    .await?;
    let default_v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .gateway(GATEWAY_V6)
        .output_interface(index)
        .build();
    done(
        || format!("ip -6 route add default via {GATEWAY_V6} dev {POD_INTERFACE}"),
        handle.route().add(default_v6).execute(),
    )
    .await
}

/// Marks an address request `nodad`: usable at once, no duplicate address
/// detection.
fn no_dad(message: &mut rtnetlink::packet_route::address::AddressMessage) {
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
}
