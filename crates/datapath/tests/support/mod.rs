//! Crafted frames with valid checksums, checksum verification by
//! recomputation, and a harness that runs a program and collects the events
//! it wrote.
#![allow(dead_code)] // each test binary uses a different part of the kit

pub mod netns;
pub mod proxy;

use std::net::IpAddr;
use std::time::Duration;

use myelin_common::TraceEvent;
use myelin_datapath::{Datapath, EndpointInfo, EventReader};
use myelin_test_support::ScratchBpffs;

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = 0x12;
pub const FIN_ACK: u8 = 0x11;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// One's-complement sum folded to 16 bits.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: &IpAddr, dst: &IpAddr, protocol: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        _ => panic!("mixed families"),
    }
    acc + u32::from(protocol) + len as u32
}

/// A packet description; `build` makes the Ethernet frame.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP type/code; for echo the id is `sport`.
    pub icmp: (u8, u8),
    pub payload: Vec<u8>,
    /// IPv4 options (multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers to insert: (next-header value, raw bytes
    /// without the first byte, which is filled in).
    pub ipv6_extensions: Vec<(u8, Vec<u8>)>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag; a non-zero offset
    /// (IPv4 or IPv6) makes `build` emit the payload alone, without an L4 header.
    pub fragment: (u16, bool),
    /// IPv4 identification.
    pub ip_id: u16,
}

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Pkt {
            src: ip(src),
            dst: ip(dst),
            protocol: TCP,
            sport,
            dport,
            tcp_flags: flags,
            icmp: (0, 0),
            payload: Vec::new(),
            ip_options: Vec::new(),
            ipv6_extensions: Vec::new(),
            fragment: (0, false),
            ip_id: 0,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Pkt {
            protocol: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    /// ICMP (v4 or v6 by address) echo request (`reply` false) or reply.
    pub fn echo(src: &str, dst: &str, id: u16, reply: bool) -> Self {
        let v4 = ip(src).is_ipv4();
        let kind = match (v4, reply) {
            (true, false) => 8,
            (true, true) => 0,
            (false, false) => 128,
            (false, true) => 129,
        };
        Pkt {
            protocol: if v4 { ICMP } else { ICMPV6 },
            icmp: (kind, 0),
            payload: b"ping".to_vec(),
            ..Self::tcp(src, id, dst, 0, 0)
        }
    }

    /// An ICMP error of type/code quoting `quoted` (built as a full packet).
    pub fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, quoted: &Pkt) -> Self {
        let v4 = ip(src).is_ipv4();
        let inner = quoted.build();
        Pkt {
            protocol: if v4 { ICMP } else { ICMPV6 },
            icmp: (kind, code),
            payload: inner[14..].to_vec(),
            ..Self::tcp(src, 0, dst, 0, 0)
        }
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = match self.protocol {
            TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..8].copy_from_slice(&1000u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            ICMP | ICMPV6 => {
                let mut h = vec![0u8; 8];
                h[0] = self.icmp.0;
                h[1] = self.icmp.1;
                if matches!(self.icmp.0, 0 | 8 | 128 | 129) {
                    h[4..6].copy_from_slice(&self.sport.to_be_bytes());
                    h[6..8].copy_from_slice(&1u16.to_be_bytes());
                }
                h
            }
            _ => Vec::new(),
        };
        l4.extend_from_slice(&self.payload);
        let csum_at = match self.protocol {
            TCP => Some(16),
            UDP => Some(6),
            ICMP | ICMPV6 => Some(2),
            _ => None,
        };
        if let Some(at) = csum_at {
            let acc = if self.protocol == ICMP {
                0
            } else {
                pseudo(&self.src, &self.dst, self.protocol, l4.len())
            };
            let mut csum = !fold(sum16(&l4, acc));
            if self.protocol == UDP && csum == 0 {
                csum = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        }
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        let l4 = if self.fragment.0 != 0 {
            // A later fragment: just data.
            self.payload.clone()
        } else {
            self.l4()
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                let hlen = 20 + self.ip_options.len();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | (hlen / 4) as u8;
                h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                let frag = self.fragment.0 | if self.fragment.1 { 0x2000 } else { 0 };
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = 64;
                h[9] = self.protocol;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h.extend_from_slice(&self.ip_options);
                let csum = !fold(sum16(&h, 0));
                h[10..12].copy_from_slice(&csum.to_be_bytes());
                frame.extend(h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
                let kinds: Vec<u8> = self.ipv6_extensions.iter().map(|(k, _)| *k).collect();
                let first = kinds.first().copied().unwrap_or(self.protocol);
                let mut ext = Vec::new();
                for (i, (_, body)) in self.ipv6_extensions.iter().enumerate() {
                    ext.push(kinds.get(i + 1).copied().unwrap_or(self.protocol));
                    ext.extend_from_slice(body);
                }
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                h[6] = first;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                frame.extend(h);
                frame.extend(ext);
            }
            _ => panic!("mixed families"),
        }
        frame.extend(l4);
        frame
    }
}

/// Offsets of a parsed frame, for the checks below (no extension headers).
fn layout(frame: &[u8]) -> (bool, usize) {
    let v4 = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800;
    let l4 = if v4 {
        14 + usize::from(frame[14] & 0x0f) * 4
    } else {
        14 + 40
    };
    (v4, l4)
}

/// (source, destination, sport, dport) of a frame as it is now.
pub fn tuple(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let (v4, l4) = layout(frame);
    let (src, dst) = if v4 {
        let s: [u8; 4] = frame[26..30].try_into().expect("4 bytes");
        let d: [u8; 4] = frame[30..34].try_into().expect("4 bytes");
        (IpAddr::from(s), IpAddr::from(d))
    } else {
        let s: [u8; 16] = frame[22..38].try_into().expect("16 bytes");
        let d: [u8; 16] = frame[38..54].try_into().expect("16 bytes");
        (IpAddr::from(s), IpAddr::from(d))
    };
    let sport = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
    let dport = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
    (src, dst, sport, dport)
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum over the
/// frame as the program left it: both must verify.
pub fn checksums_valid(frame: &[u8]) -> bool {
    let (v4, l4) = layout(frame);
    let (src, dst, _, _) = tuple(frame);
    let protocol = if v4 { frame[23] } else { frame[20] };
    if v4 && fold(sum16(&frame[14..l4], 0)) != 0xffff {
        return false;
    }
    let segment = &frame[l4..];
    fold(sum16(segment, pseudo(&src, &dst, protocol, segment.len()))) == 0xffff
}

/// Verifies the IPv4 header checksum alone (a later fragment has no L4 header).
pub fn ipv4_header_checksum_valid(frame: &[u8]) -> bool {
    let (_, l4) = layout(frame);
    fold(sum16(&frame[14..l4], 0)) == 0xffff
}

/// Verifies the IPv4 header checksum and the ICMP (no pseudo-header) or
/// ICMPv6 (pseudo-header) checksum of a frame.
pub fn icmp_checksums_valid(frame: &[u8]) -> bool {
    let (v4, l4) = layout(frame);
    let segment = &frame[l4..];
    if v4 {
        fold(sum16(&frame[14..l4], 0)) == 0xffff && fold(sum16(segment, 0)) == 0xffff
    } else {
        let s: [u8; 16] = frame[22..38].try_into().expect("16 bytes");
        let d: [u8; 16] = frame[38..54].try_into().expect("16 bytes");
        let acc = pseudo(&IpAddr::from(s), &IpAddr::from(d), ICMPV6, segment.len());
        fold(sum16(segment, acc)) == 0xffff
    }
}

/// A loaded datapath on a scratch bpffs with its event reader.
pub struct Harness {
    pub datapath: Datapath,
    pub reader: EventReader,
    _bpffs: ScratchBpffs,
}

/// The endpoint test runs see: BPF_PROG_TEST_RUN runs on loopback (ifindex 1).
pub const TEST_IFINDEX: u32 = 1;
pub const POD_V4: &str = "10.244.1.5";
pub const POD_V6: &str = "fd00:10:244:1::5";
pub const POD_IDENTITY: u32 = 1001;
pub const POD_ENDPOINT: u32 = 5;

impl Harness {
    pub fn new() -> Self {
        let bpffs = ScratchBpffs::mount().expect("mount bpffs");
        let mut datapath = Datapath::load(bpffs.path()).expect("load programs");
        let reader = datapath.event_reader().expect("event reader");
        Harness {
            datapath,
            reader,
            _bpffs: bpffs,
        }
    }

    /// A harness with the test pod registered on ifindex 1.
    pub fn with_pod() -> Self {
        let mut h = Self::new();
        let info = EndpointInfo {
            endpoint_id: POD_ENDPOINT,
            identity: POD_IDENTITY,
            ipv4: [10, 244, 1, 5],
            ipv6: match ip(POD_V6) {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(_) => unreachable!("IPv6 literal"),
            },
            ..EndpointInfo::default()
        };
        h.datapath
            .upsert_endpoint(TEST_IFINDEX, &info)
            .expect("register the test pod");
        h
    }

    /// Runs `program` on `frame` and returns the verdict, the frame after
    /// the program and the events it reported.
    pub async fn run(
        &mut self,
        program: &'static str,
        frame: &[u8],
    ) -> (i32, Vec<u8>, Vec<TraceEvent>) {
        self.run_marked(program, frame, 0).await
    }

    pub async fn run_marked(
        &mut self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
    ) -> (i32, Vec<u8>, Vec<TraceEvent>) {
        let outcome = self
            .datapath
            .test_run_marked(program, frame, mark, 1)
            .expect("test run");
        let mut events = Vec::new();
        // Events are in the ring when the run returns; a short wait tells
        // "none" from "some".
        let _ =
            tokio::time::timeout(Duration::from_millis(150), self.reader.read(&mut events)).await;
        (outcome.verdict, outcome.frame, events)
    }
}
