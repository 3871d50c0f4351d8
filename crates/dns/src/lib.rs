//! The node's DNS responder: answers A and AAAA queries for the cluster's
//! names (`<svc>.<ns>.svc.cluster.local`, `<a-b-c-d>.<ns>.pod.cluster.local`)
//! from a table the agent keeps current. Names outside the cluster domain are
//! refused at once, since the lab has no upstream to forward them to; the DNS
//! proxy issue turns this into the policy-enforcing DNS proxy.
//!
//! Messages are read and written with `hickory-proto` (`wire` holds the
//! little glue). What a client gets:
//! - a known name: its addresses of the asked family, authoritative, TTL
//!   [`TTL_SECONDS`]; a known name without addresses of that family or a type
//!   other than A/AAAA: NOERROR with no records (NODATA);
//! - an unknown name in [`CLUSTER_DOMAIN`]: NXDOMAIN; a name outside it, or a
//!   class other than IN: REFUSED;
//! - a header followed by a body that does not decode (truncated, a bad or
//!   over-long name, a compression loop, two OPT records) or a question count
//!   other than one: FORMERR; another opcode: NOTIMP; EDNS above version 0:
//!   BADVERS;
//! - less than a header, or a response: nothing (dropped).
//!
//! The id and question are echoed, RD and CD copied, and a query with EDNS
//! gets an OPT record back. A reply larger than the client takes (512 bytes,
//! or its EDNS size up to [`MAX_UDP_PAYLOAD`]) goes out with the TC bit and
//! no records. Only UDP is served.

#![forbid(unsafe_code)]

mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

pub use wire::{
    MAX_UDP_PAYLOAD, Query, RecordType, ResponseCode, WireError, answer, error_reply, parse_query,
};

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// TTL of the answers, short so that changes are seen quickly.
pub const TTL_SECONDS: u32 = 5;

/// Names the responder knows, lower-case and without the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    records: BTreeMap<String, Vec<IpAddr>>,
}

impl Zone {
    /// Adds `address` to `name`.
    pub fn insert(&mut self, name: &str, address: IpAddr) {
        let entry = self.records.entry(normalize(name)).or_default();
        if !entry.contains(&address) {
            entry.push(address);
        }
    }

    /// The addresses of `name`, of the family `record_type` asks for.
    /// `None` when the name is unknown (NXDOMAIN), an empty list when it
    /// exists without addresses of that family (NODATA).
    pub fn lookup(&self, name: &str, record_type: RecordType) -> Option<Vec<IpAddr>> {
        let addresses = self.records.get(&normalize(name))?;
        Some(
            addresses
                .iter()
                .copied()
                .filter(|a| match record_type {
                    RecordType::A => a.is_ipv4(),
                    RecordType::Aaaa => a.is_ipv6(),
                    RecordType::Other(_) => false,
                })
                .collect(),
        )
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the zone has no names.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A zone shared between the responder and whoever updates it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// Answers one query datagram. `None` when the datagram gets no reply: less
/// than a DNS header, a response, or a reply that failed to encode (logged).
pub fn respond(zone: &Zone, datagram: &[u8]) -> Option<Vec<u8>> {
    let reply = match parse_query(datagram) {
        Ok(query) => answer_from(zone, &query),
        Err(error) => {
            tracing::debug!("DNS query not answerable: {error}");
            error_reply(&error)?
        }
    };
    reply
        .inspect_err(|e| tracing::warn!("DNS reply dropped: {e}"))
        .ok()
}

/// The reply to a well-formed query, from `zone`.
fn answer_from(zone: &Zone, query: &Query) -> Result<Vec<u8>, WireError> {
    let name = normalize(&query.name);
    let in_cluster = name == CLUSTER_DOMAIN || name.ends_with(&format!(".{CLUSTER_DOMAIN}"));
    if !in_cluster || !query.is_internet_class() {
        return answer(query, ResponseCode::Refused, &[]);
    }
    match zone.lookup(&name, query.record_type) {
        Some(addresses) => answer(query, ResponseCode::NoError, &addresses),
        None => answer(query, ResponseCode::NXDomain, &[]),
    }
}

/// Serves DNS over UDP on `address` until the task is dropped.
pub async fn serve_udp(address: SocketAddr, zone: SharedZone) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::bind(address).await?;
    serve_socket(socket, zone).await
}

/// Serves DNS on an already bound socket.
pub async fn serve_socket(socket: tokio::net::UdpSocket, zone: SharedZone) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 4096];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer).await?;
        let reply = match zone.read() {
            Ok(zone) => respond(&zone, &buffer[..len]),
            Err(poisoned) => respond(&poisoned.into_inner(), &buffer[..len]),
        };
        if let Some(reply) = reply
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!(%peer, "DNS reply not sent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut zone = Zone::default();
        zone.insert(
            "deathstar.default.svc.cluster.local",
            "10.96.0.10".parse().expect("ip"),
        );
        zone.insert(
            "deathstar.default.svc.cluster.local.",
            "fd00:10:96::a".parse().expect("ip"),
        );
        zone
    }

    #[test]
    fn lookups_by_family() {
        let zone = zone();
        assert_eq!(
            zone.lookup("Deathstar.default.svc.cluster.local", RecordType::A)
                .map(|a| a.len()),
            Some(1)
        );
        assert_eq!(
            zone.lookup("deathstar.default.svc.cluster.local", RecordType::Aaaa)
                .map(|a| a.len()),
            Some(1)
        );
        assert_eq!(
            zone.lookup("deathstar.default.svc.cluster.local", RecordType::Other(16)),
            Some(vec![])
        );
        assert_eq!(
            zone.lookup("xwing.default.svc.cluster.local", RecordType::A),
            None
        );
    }

    #[tokio::test]
    async fn answers_over_udp() {
        let zone: SharedZone = Arc::new(RwLock::new(zone()));
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(serve_socket(server, zone));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let query = wire::tests::query_bytes(0x1234, "deathstar.default.svc.cluster.local", 1);
        client.send_to(&query, addr).await.expect("send");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("reply in time")
            .expect("recv");
        let reply = &buf[..n];
        assert_eq!(&reply[0..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[n - 4..], &[10, 96, 0, 10]);
    }

    #[test]
    fn outside_names_are_refused_and_unknown_cluster_names_do_not_exist() {
        let zone = zone();
        let refused =
            respond(&zone, &wire::tests::query_bytes(1, "example.com", 1)).expect("reply");
        assert_eq!(refused[3] & 0x0f, 5);
        let missing = respond(
            &zone,
            &wire::tests::query_bytes(1, "nope.default.svc.cluster.local", 1),
        )
        .expect("reply");
        assert_eq!(missing[3] & 0x0f, 3);
        assert!(respond(&zone, &[1, 2, 3]).is_none());
    }

    fn response_code(reply: &[u8]) -> u8 {
        reply[3] & 0x0f
    }

    #[test]
    fn other_types_and_classes() {
        let zone = zone();
        let name = "deathstar.default.svc.cluster.local";
        // TXT for a known name: NOERROR, no records (NODATA).
        let nodata = respond(&zone, &wire::tests::query_bytes(2, name, 16)).expect("reply");
        assert_eq!(response_code(&nodata), 0);
        assert_eq!(u16::from_be_bytes([nodata[6], nodata[7]]), 0);
        // Class CH (3) is not where the cluster's names live.
        let mut chaos = wire::tests::query_bytes(2, name, 1);
        let class_at = chaos.len() - 1;
        chaos[class_at] = 3;
        assert_eq!(response_code(&respond(&zone, &chaos).expect("reply")), 5);
    }

    #[test]
    fn broken_queries_get_formerr_and_edns_queries_an_opt_record() {
        let zone = zone();
        let good = wire::tests::query_bytes(0x77, "deathstar.default.svc.cluster.local", 1);
        let broken = respond(&zone, &good[..good.len() - 3]).expect("reply");
        assert_eq!((&broken[0..2], response_code(&broken)), (&[0, 0x77][..], 1));

        let edns = wire::tests::with_edns(good, 1232, 0);
        let reply = respond(&zone, &edns).expect("reply");
        assert_eq!(response_code(&reply), 0);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(
            u16::from_be_bytes([reply[10], reply[11]]),
            1,
            "the OPT record"
        );
    }
}
