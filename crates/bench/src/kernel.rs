//! Myelin's kernel programs on the benchmark's pod veths (the L3/L4 and L7 scenarios).
//!
//! The programs are loaded and attached exactly as the agent does
//! ([`myelin_datapath::Datapath`]), the endpoints get an ingress policy (identity-based
//! allow rules, or a redirect to the node's L7 proxy) and ClusterIP services, and the trace
//! and policy-verdict events are read from the ring buffer as the agent's observer does, so
//! the figures include conntrack, service translation, policy and visibility.
//! With `--routing` the node has a peer (the cross-node scenarios, [`crate::nodes`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use myelin_common::EndpointInfo;
use myelin_datapath::{
    Datapath, PolicyDirection, PolicyRule, PolicyTable, RuleAction, Service, ServiceProtocol,
};

/// A pod's host-side veth, its IPv4 address and optionally the MAC address of the
/// pod's own interface, written `IFNAME=IP` or `IFNAME=IP@MAC`. With the MAC the
/// datapath delivers packets from the other pod straight into this one (host routing).
#[derive(Debug, Clone)]
pub struct Endpoint {
    ifname: String,
    ipv4: Ipv4Addr,
    mac: Option<[u8; 6]>,
}

/// Why an `--endpoint` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error(
    "--endpoint {0:?}: expected IFNAME=IPV4[@MAC], for example mb123c=10.250.1.2@0a:58:0a:fa:01:02"
)]
pub struct BadEndpoint(String);

impl FromStr for Endpoint {
    type Err = BadEndpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEndpoint(s.into());
        let (ifname, rest) = s.split_once('=').ok_or_else(bad)?;
        let (ip, mac) = match rest.split_once('@') {
            Some((ip, mac)) => (ip, Some(myelin_datapath::parse_mac(mac).ok_or_else(bad)?)),
            None => (rest, None),
        };
        let ipv4 = ip.parse().map_err(|_| bad())?;
        if ifname.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            ifname: ifname.into(),
            ipv4,
            mac,
        })
    }
}

/// An ingress rule, written `DEST_IF:PEER:PORT[:PROXY_PORT]`: the endpoint behind
/// `DEST_IF` accepts TCP to `PORT` from `PEER` (the endpoint behind that interface, a pod of
/// the other node by its IPv4 address, or `any`: every identity); with `PROXY_PORT` the
/// connection is redirected to the node's L7 proxy.
#[derive(Debug, Clone)]
pub struct IngressRule {
    dest: String,
    peer: Peer,
    port: u16,
    proxy_port: Option<u16>,
}

/// Whom an ingress rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    /// Every identity.
    Any,
    /// The endpoint behind this interface of the node.
    Local(String),
    /// The other node's pod at this address (`--remote-pod`).
    Remote(Ipv4Addr),
}

impl Peer {
    fn parse(text: &str) -> Self {
        match text {
            "any" => Self::Any,
            _ => text
                .parse()
                .map_or_else(|_| Self::Local(text.to_string()), Self::Remote),
        }
    }
}

/// Why an `--ingress` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error(
    "--ingress {0:?}: expected DEST_IF:PEER_IF|PEER_IPV4|any:PORT[:PROXY_PORT], for example mb1s:mb1c:80"
)]
pub struct BadIngress(String);

impl FromStr for IngressRule {
    type Err = BadIngress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadIngress(s.into());
        let parts: Vec<&str> = s.split(':').collect();
        let (dest, peer, port, proxy) = match parts.as_slice() {
            [dest, peer, port] => (*dest, *peer, *port, None),
            [dest, peer, port, proxy] => (*dest, *peer, *port, Some(*proxy)),
            _ => return Err(bad()),
        };
        if dest.is_empty() || peer.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            dest: dest.into(),
            peer: Peer::parse(peer),
            port: port.parse().map_err(|_| bad())?,
            proxy_port: proxy.map(str::parse).transpose().map_err(|_| bad())?,
        })
    }
}

/// A ClusterIP service with one backend, written `VIP:PORT=BACKEND:PORT` (TCP).
#[derive(Debug, Clone)]
pub struct ServiceArg {
    frontend: SocketAddr,
    backend: SocketAddr,
}

/// Why a `--service` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--service {0:?}: expected VIP:PORT=BACKEND:PORT, for example 10.96.0.10:80=10.250.2.2:80")]
pub struct BadService(String);

impl FromStr for ServiceArg {
    type Err = BadService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadService(s.into());
        let (frontend, backend) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            frontend: frontend.parse().map_err(|_| bad())?,
            backend: backend.parse().map_err(|_| bad())?,
        })
    }
}

/// Arguments of `myelin-bench datapath`.
#[derive(clap::Args, Debug, Clone)]
pub struct DatapathArgs {
    /// A directory on a bpffs for the pins (the caller mounts and removes it).
    #[arg(long)]
    pin_dir: PathBuf,
    /// Endpoints to attach, `IFNAME=IPV4`, in the current network namespace.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<Endpoint>,
    /// Ingress rules; an endpoint with at least one has its ingress enforced (default deny).
    #[arg(long = "ingress")]
    ingress: Vec<IngressRule>,
    /// ClusterIP services (TCP).
    #[arg(long = "service")]
    services: Vec<ServiceArg>,
    /// The endpoints' security identities are BASE+1, BASE+2, … in `--endpoint` order;
    /// two nodes take bases far enough apart, as a cluster allocates identities
    /// cluster-wide.
    #[arg(long, default_value_t = 10_000)]
    identity_base: u32,
    /// The node's peer, for the cross-node scenarios.
    #[command(flatten)]
    node: crate::nodes::NodeArgs,
}

/// Endpoint id and identity of the endpoint behind `ifname`, numbered in `--endpoint` order.
fn numbering(endpoints: &[Endpoint], base: u32, ifname: &str) -> anyhow::Result<(u32, u32)> {
    let n = (1_u32..)
        .zip(endpoints)
        .find(|(_, e)| e.ifname == ifname)
        .map(|(n, _)| n)
        .with_context(|| format!("{ifname} is not one of the --endpoint interfaces"))?;
    Ok((n, identity(base, n)))
}

/// The security identity the benchmark gives endpoint number `n`.
fn identity(base: u32, n: u32) -> u32 {
    base + n
}

/// Writes the ingress policies and the services.
fn program(datapath: &mut Datapath, args: &DatapathArgs) -> anyhow::Result<()> {
    let mut tables: Vec<(u32, PolicyTable)> = Vec::new();
    for (rule_id, rule) in (1_u32..).zip(&args.ingress) {
        let (endpoint_id, _) = numbering(&args.endpoints, args.identity_base, &rule.dest)?;
        let peer_identity = match &rule.peer {
            Peer::Any => 0,
            Peer::Local(peer) => numbering(&args.endpoints, args.identity_base, peer)?.1,
            Peer::Remote(ip) => args
                .node
                .remote_identity(IpAddr::V4(*ip))
                .with_context(|| format!("--ingress names {ip}, which no --remote-pod gives"))?,
        };
        let rule = PolicyRule {
            direction: PolicyDirection::Ingress,
            peer_identity,
            protocol: 6,
            ports: Some((rule.port, rule.port)),
            action: match rule.proxy_port {
                Some(proxy_port) => RuleAction::Redirect { proxy_port },
                None => RuleAction::Allow,
            },
            rule_id,
        };
        match tables.iter_mut().find(|(id, _)| *id == endpoint_id) {
            Some((_, table)) => table.rules.push(rule),
            None => tables.push((
                endpoint_id,
                PolicyTable {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules: vec![rule],
                },
            )),
        }
    }
    for (endpoint_id, table) in &tables {
        datapath
            .replace_policy(*endpoint_id, table)
            .with_context(|| format!("writing the policy of endpoint {endpoint_id}"))?;
    }
    for service in &args.services {
        datapath
            .upsert_service(&Service {
                frontend: service.frontend,
                protocol: ServiceProtocol::Tcp,
                backends: vec![service.backend],
                affinity_timeout_s: None,
            })
            .with_context(|| format!("writing service {}", service.frontend))?;
    }
    Ok(())
}

/// Counts of the events read, by kind, and drops by reason.
#[derive(Debug, Default)]
struct EventTally {
    traces: u64,
    verdicts: u64,
    other: u64,
    drops: std::collections::BTreeMap<u8, u64>,
}

impl EventTally {
    fn add(&mut self, event: &myelin_common::TraceEvent) {
        match myelin_common::EventKind::from_u8(event.kind) {
            Some(myelin_common::EventKind::Trace) => self.traces += 1,
            Some(myelin_common::EventKind::PolicyVerdict) => self.verdicts += 1,
            Some(myelin_common::EventKind::Drop) => {
                *self.drops.entry(event.drop_reason).or_default() += 1;
            }
            None => self.other += 1,
        }
    }
}

impl std::fmt::Display for EventTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events read: {} trace, {} policy-verdict, {} other, drops by reason {:?}",
            self.traces, self.verdicts, self.other, self.drops
        )
    }
}

/// Attaches the programs, reads trace events until SIGTERM/SIGINT, then detaches.
pub fn run(args: &DatapathArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut datapath = Datapath::load(&args.pin_dir)
            .with_context(|| format!("loading the programs under {}", args.pin_dir.display()))?;
        let joined = args.node.join(&mut datapath)?;
        let mut attached = Vec::new();
        for (n, endpoint) in (1_u32..).zip(&args.endpoints) {
            let info = EndpointInfo {
                endpoint_id: n,
                identity: identity(args.identity_base, n),
                ipv4: endpoint.ipv4.octets(),
                mac: endpoint.mac.unwrap_or_default(),
                ..EndpointInfo::default()
            };
            let attachment = datapath
                .attach_endpoint(&endpoint.ifname, &info)
                .with_context(|| format!("attaching to {}", endpoint.ifname))?;
            attached.push(attachment);
        }
        program(&mut datapath, args)?;
        args.node.program(&mut datapath)?;
        let mut reader = datapath
            .event_reader()
            .context("opening the event ring buffer")?;
        println!(
            "datapath attached to {} endpoints, {} ingress rules, {} services, routing to a peer: {}",
            attached.len(),
            args.ingress.len(),
            args.services.len(),
            joined.routing()
        );
        let mut events = Vec::new();
        let mut tally = EventTally::default();
        let stop = crate::wait_for_stop();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                stopped = &mut stop => {
                    stopped?;
                    break;
                }
                read = reader.read(&mut events) => {
                    read.context("reading trace events")?;
                    events.drain(..).for_each(|e| tally.add(&e));
                }
            }
        }
        for attachment in &attached {
            let (from, to) = datapath.stats(attachment.ifindex).unwrap_or_default();
            eprintln!(
                "datapath: {} from-container {} packets, to-container {} packets",
                attachment.ifname, from.packets, to.packets
            );
            datapath
                .detach_endpoint(&attachment.ifname, attachment.ifindex)
                .with_context(|| format!("detaching from {}", attachment.ifname))?;
        }
        joined.leave(&mut datapath)?;
        eprintln!("datapath: {tally}, {} lost", reader.lost());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e: Endpoint = "mb1c=10.250.1.2".parse().expect("valid");
        assert_eq!(e.ifname, "mb1c");
        assert_eq!(e.ipv4, Ipv4Addr::new(10, 250, 1, 2));
        assert_eq!(e.mac, None);
        let e: Endpoint = "mb1c=10.250.1.2@0a:58:0A:fa:01:02".parse().expect("valid");
        assert_eq!(e.mac, Some([0x0a, 0x58, 0x0a, 0xfa, 0x01, 0x02]));
        for bad in [
            "mb1c",
            "=10.0.0.1",
            "mb1c=10.0.0",
            "mb1c=::1",
            "mb1c=10.0.0.1@0a:58",
            "mb1c=10.0.0.1@0a:58:0a:fa:01:02:03",
            "mb1c=10.0.0.1@zz:58:0a:fa:01:02",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ingress_rules_parse() {
        let r: IngressRule = "mb1s:mb1c:80".parse().expect("valid");
        assert_eq!(
            (r.dest.as_str(), &r.peer, r.port, r.proxy_port),
            ("mb1s", &Peer::Local("mb1c".into()), 80, None)
        );
        let r: IngressRule = "mb1s:any:80:15001".parse().expect("valid");
        assert_eq!((r.peer, r.proxy_port), (Peer::Any, Some(15001)));
        let r: IngressRule = "mb1s:10.244.1.2:80".parse().expect("valid");
        assert_eq!(r.peer, Peer::Remote(Ipv4Addr::new(10, 244, 1, 2)));
        for bad in [
            "mb1s:mb1c",
            "mb1s:mb1c:http",
            "mb1s:mb1c:80:x",
            ":mb1c:80",
            "a:b:1:2:3",
        ] {
            assert!(bad.parse::<IngressRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn services_parse() {
        let s: ServiceArg = "10.96.0.10:80=10.250.2.2:8080".parse().expect("valid");
        assert_eq!(s.frontend, "10.96.0.10:80".parse().expect("addr"));
        assert_eq!(s.backend, "10.250.2.2:8080".parse().expect("addr"));
        for bad in ["10.96.0.10:80", "10.96.0.10=10.250.2.2:80", "x=y"] {
            assert!(bad.parse::<ServiceArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_refer_to_known_endpoints() {
        let endpoints: Vec<Endpoint> = vec![
            "mb1c=10.250.1.2".parse().expect("valid"),
            "mb1s=10.250.2.2".parse().expect("valid"),
        ];
        assert_eq!(
            numbering(&endpoints, 10_000, "mb1s").expect("known"),
            (2, 10_002)
        );
        assert_eq!(
            numbering(&endpoints, 10_100, "mb1c").expect("known"),
            (1, 10_101)
        );
        assert!(numbering(&endpoints, 10_000, "mb9x").is_err());
    }
}
