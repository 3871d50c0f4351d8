//! Datapath errors, phrased for the operator.

use std::path::PathBuf;

/// What can go wrong loading, attaching or reading the kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The binary was built with a stub object (lint-only build).
    #[error(
        "this myelin binary was built without its kernel programs (MYELIN_EBPF_STUB or AYA_BUILD_SKIP was set); rebuild with `make build`"
    )]
    NoKernelPrograms,
    /// The bpffs directory could not be prepared.
    #[error(
        "cannot use bpffs directory {path}: {source}; is a bpffs mounted there (mount -t bpf bpf DIR)?"
    )]
    PinDirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Loading the object or one of its programs failed (verifier, permissions).
    #[error(
        "loading the kernel programs failed: {0}; the agent must run as root on a kernel with eBPF (>= 6.6 for TCX)"
    )]
    Load(#[from] aya::EbpfError),
    /// A program operation failed.
    #[error("kernel program {program}: {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// The cause.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The cause.
        source: aya::maps::MapError,
    },
    /// A map the object must have is missing: the binary and object disagree.
    #[error(
        "the kernel object has no map {0}; the build is inconsistent, rebuild with `make build`"
    )]
    MissingMap(&'static str),
    /// Pinning or unpinning a link failed.
    #[error("pinning {path}: {message}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The kernel object embedded in the binary could not be parsed.
    #[error(
        "the kernel object cannot be read: {0}; the build is inconsistent, rebuild with `make build`"
    )]
    Object(String),
    /// The interface does not exist in this network namespace.
    #[error("interface {name} not found in the agent's network namespace: {source}")]
    Interface {
        /// The interface name.
        name: String,
        /// The cause.
        source: nix::Error,
    },
    /// A policy table the kernel cannot enforce as written.
    #[error("policy rule #{rule} (rule id {rule_id}): {reason}")]
    InvalidPolicy {
        /// Index of the rule in the table.
        rule: usize,
        /// Its rule id.
        rule_id: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A service the kernel cannot serve as written.
    #[error("service {frontend}: {reason}")]
    InvalidService {
        /// The frontend.
        frontend: std::net::SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// A service needs more room in a map than is free: nothing of it was
    /// written.
    #[error(
        "service {service} needs {needed} entries in map {map}, which has {free} free of {capacity}; \
         nothing of the service was written: reduce its ports or backends, or delete other services"
    )]
    ServiceCapacity {
        /// The service (`namespace/name`, or the frontend).
        service: String,
        /// The map.
        map: &'static str,
        /// Entries the service needs.
        needed: usize,
        /// Entries free.
        free: usize,
        /// The map's capacity.
        capacity: usize,
    },
    /// Writing a service failed part way; what was written of it was undone.
    #[error("service {service}: {source}; what was written of it was taken back")]
    ServiceWrite {
        /// The service.
        service: String,
        /// The write that failed.
        source: Box<DatapathError>,
    },
    /// An ipcache prefix longer than its address.
    #[error("ipcache prefix {address}/{prefix_len} is longer than the address")]
    InvalidPrefix {
        /// The address.
        address: std::net::IpAddr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The node's overlay device could not be created, adopted or removed.
    #[error("overlay device {device}: {reason}")]
    Overlay {
        /// The device's name.
        device: String,
        /// What failed, and what to do.
        reason: String,
    },
    /// A tunnel endpoint the datapath cannot use as written: nothing of the
    /// set was written.
    #[error("tunnel endpoint for pod CIDR {cidr}: {reason}; no tunnel endpoint was changed")]
    InvalidTunnelEndpoint {
        /// The pod CIDR, `address/length`.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Setting up the asynchronous event reader failed.
    #[error("event ring: {0}")]
    Events(std::io::Error),
}
