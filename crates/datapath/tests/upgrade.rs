//! An agent upgraded in place finds the maps an older build pinned: what it can
//! carry over it carries over, what it cannot read it refuses with a way out.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use myelin_common::maps::{CtEntry, CtKey, ServiceEntry, ServiceKey};
use myelin_datapath::{Datapath, MapLayout, Service, ServiceProtocol};
use myelin_test_support::{ScratchBpffs, pin_hash_map, privileged};

/// A new bpffs and its `maps/` directory, where the loader looks for pins.
fn scratch_maps() -> (ScratchBpffs, PathBuf) {
    let bpffs = ScratchBpffs::mount().expect("mount bpffs");
    let maps = bpffs.path().join("maps");
    std::fs::create_dir_all(&maps).expect("maps dir");
    (bpffs, maps)
}

/// An endpoint record as builds before host routing wrote it: endpoint id,
/// identity, IPv4, flags, IPv6 (32 bytes).
fn record_v1(endpoint_id: u32, identity: u32, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Vec<u8> {
    let mut record = Vec::with_capacity(32);
    record.extend_from_slice(&endpoint_id.to_ne_bytes());
    record.extend_from_slice(&identity.to_ne_bytes());
    record.extend_from_slice(&ipv4.octets());
    record.extend_from_slice(&0u32.to_ne_bytes());
    record.extend_from_slice(&ipv6.octets());
    record
}

/// The by-address key of `address`: 16 address bytes, the family, padding.
fn ip_key_v4(address: Ipv4Addr) -> Vec<u8> {
    let mut key = vec![0u8; 20];
    key[..4].copy_from_slice(&address.octets());
    key[16] = 4;
    key
}

#[test]
fn endpoints_pinned_by_a_build_before_host_routing_are_carried_over() {
    if !privileged("endpoints_pinned_by_a_build_before_host_routing_are_carried_over") {
        return;
    }
    let (bpffs, maps) = scratch_maps();
    let ipv4 = Ipv4Addr::new(10, 244, 1, 9);
    let ipv6: Ipv6Addr = "fd00:10:244:1::9".parse().expect("ipv6");
    let old = record_v1(42, 51234, ipv4, ipv6);
    pin_hash_map(
        &maps,
        "MYELIN_ENDPOINTS",
        4,
        32,
        &[(&7u32.to_ne_bytes(), &old)],
    );
    pin_hash_map(
        &maps,
        "MYELIN_EP_BY_IP",
        20,
        32,
        &[(&ip_key_v4(ipv4), &old)],
    );

    let datapath = Datapath::load(bpffs.path()).expect("load over the old pins");
    let endpoints = datapath.endpoints().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let endpoint = &endpoints[0];
    assert_eq!(
        (endpoint.ifindex, endpoint.endpoint_id, endpoint.identity),
        (7, 42, 51234)
    );
    assert_eq!((endpoint.ipv4, endpoint.ipv6), (Some(ipv4), Some(ipv6)));
    // The old records had no MACs: the pod is reached through the stack until the
    // agent registers it again.
    assert_eq!((endpoint.mac, endpoint.host_routed), (None, false));
    drop(datapath);

    // The maps pinned now have this build's layout: the next load reuses them as they are.
    let again = Datapath::load(bpffs.path()).expect("second load");
    assert_eq!(again.endpoints().expect("endpoints").len(), 1);
}

#[test]
fn endpoints_pinned_by_an_unknown_build_are_refused_with_a_way_out() {
    if !privileged("endpoints_pinned_by_an_unknown_build_are_refused_with_a_way_out") {
        return;
    }
    let (bpffs, maps) = scratch_maps();
    pin_hash_map(
        &maps,
        "MYELIN_ENDPOINTS",
        4,
        20,
        &[(&7u32.to_ne_bytes(), &[0u8; 20])],
    );

    let error = Datapath::load(bpffs.path())
        .err()
        .expect("a layout this build does not know is refused")
        .to_string();
    assert!(error.contains("MYELIN_ENDPOINTS"), "{error}");
    assert!(error.contains("records of 20 bytes"), "{error}");
    assert!(
        error.contains("remove the node's bpffs directory"),
        "{error}"
    );
}

#[test]
fn maps_pinned_with_another_layout_are_created_anew_and_matching_ones_kept() {
    if !privileged("maps_pinned_with_another_layout_are_created_anew_and_matching_ones_kept") {
        return;
    }
    let (bpffs, maps) = scratch_maps();
    let service_key = size_of::<ServiceKey>() as u32;
    let ct_key = size_of::<CtKey>() as u32;
    let ct_entry = size_of::<CtEntry>() as u32;
    // Records of a size no build used, and the right sizes in a map of the wrong type.
    pin_hash_map(&maps, "MYELIN_SERVICES", service_key, 3, &[]);
    pin_hash_map(&maps, "MYELIN_CT", ct_key, ct_entry, &[]);

    let mut datapath = Datapath::load(bpffs.path()).expect("load over the old pins");
    let replaced: Vec<(&str, MapLayout, MapLayout)> = datapath
        .replaced_pins()
        .iter()
        .map(|r| (r.name.as_str(), r.pinned, r.expected))
        .collect();
    let hash = 1;
    let lru_hash = 9;
    assert_eq!(
        replaced,
        vec![
            (
                "MYELIN_CT",
                MapLayout {
                    map_type: hash,
                    key_size: ct_key,
                    value_size: ct_entry
                },
                MapLayout {
                    map_type: lru_hash,
                    key_size: ct_key,
                    value_size: ct_entry
                },
            ),
            (
                "MYELIN_SERVICES",
                MapLayout {
                    map_type: hash,
                    key_size: service_key,
                    value_size: 3
                },
                MapLayout {
                    map_type: hash,
                    key_size: service_key,
                    value_size: size_of::<ServiceEntry>() as u32
                },
            ),
        ]
    );
    assert!(
        datapath.replaced_pins()[1].to_string().contains(&format!(
            "MYELIN_SERVICES was pinned with type 1, {service_key}-byte keys, 3-byte values"
        )),
        "{}",
        datapath.replaced_pins()[1]
    );
    // The new maps work, and are what is pinned now.
    let service = Service {
        frontend: "10.96.0.10:80".parse().expect("frontend"),
        protocol: ServiceProtocol::Tcp,
        backends: vec!["10.244.1.9:8080".parse().expect("backend")],
        affinity_timeout_s: None,
    };
    datapath.upsert_service(&service).expect("service");
    drop(datapath);

    let again = Datapath::load(bpffs.path()).expect("second load");
    assert_eq!(again.replaced_pins(), &[], "matching pins are kept");
    let services = again.services().expect("services");
    assert_eq!(
        services.len(),
        1,
        "the content of a kept map survives: {services:?}"
    );
    assert_eq!(services[0].frontend, service.frontend);
}
