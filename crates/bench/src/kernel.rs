//! Myelin's kernel programs on the benchmark's pod veths (the L3/L4 scenario).
//!
//! The programs are loaded and attached exactly as the agent does
//! ([`myelin_datapath::Datapath`]), and their trace events are read from the ring buffer as
//! the agent's observer does, so the figure includes the cost of visibility. Whatever the
//! programs enforce (conntrack, service load balancing, policy) comes with them as they grow.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use myelin_common::EndpointInfo;
use myelin_datapath::Datapath;

/// A pod's host-side veth and its IPv4 address, written `IFNAME=IP`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    ifname: String,
    ipv4: Ipv4Addr,
}

/// Why an `--endpoint` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--endpoint {0:?}: expected IFNAME=IPV4, for example mb123c=10.250.1.2")]
pub struct BadEndpoint(String);

impl FromStr for Endpoint {
    type Err = BadEndpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ifname, ip) = s.split_once('=').ok_or_else(|| BadEndpoint(s.into()))?;
        let ipv4 = ip.parse().map_err(|_| BadEndpoint(s.into()))?;
        if ifname.is_empty() {
            return Err(BadEndpoint(s.into()));
        }
        Ok(Self {
            ifname: ifname.into(),
            ipv4,
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
        let mut attached = Vec::new();
        for (n, endpoint) in (1_u32..).zip(&args.endpoints) {
            let info = EndpointInfo {
                endpoint_id: n,
                identity: 10_000 + n,
                ipv4: endpoint.ipv4.octets(),
                flags: 0,
                ipv6: [0; 16],
            };
            let attachment = datapath
                .attach_endpoint(&endpoint.ifname, &info)
                .with_context(|| format!("attaching to {}", endpoint.ifname))?;
            attached.push(attachment);
        }
        let mut reader = datapath
            .event_reader()
            .context("opening the event ring buffer")?;
        println!("datapath attached to {} endpoints", attached.len());
        let mut events = Vec::new();
        let mut seen = 0_u64;
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
                    seen += events.len() as u64;
                    events.clear();
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
        eprintln!("datapath: {seen} trace events read, {} lost", reader.lost());
        Ok(())
    })
}
