//! The service writer against real maps on a scratch bpffs: a Service is
//! programmed all or nothing within the maps' room, one Service's failure
//! blocks no other, and frontends nobody wants leave the kernel, also
//! those a previous agent left behind.

use std::net::SocketAddr;

use aya::maps::{HashMap, Map, MapData};
use myelin_common::L4Addr;
use myelin_common::maps::names;
use myelin_datapath::{Datapath, DatapathError, Service, ServiceGroup, ServiceProtocol};
use myelin_test_support::{ScratchBpffs, privileged};

fn frontend(vip: &str, port: u16, backend: &str) -> Service {
    Service {
        frontend: SocketAddr::new(vip.parse().expect("vip"), port),
        protocol: ServiceProtocol::Tcp,
        backends: vec![format!("{backend}:8080").parse().expect("backend")],
        affinity_timeout_s: None,
    }
}

fn group(name: &str, vip: &str, ports: std::ops::Range<u16>, backend: &str) -> ServiceGroup {
    ServiceGroup {
        name: name.to_string(),
        frontends: ports.map(|p| frontend(vip, p, backend)).collect(),
    }
}

/// The backend ids in the pinned backends map, read without the datapath.
fn pinned_backends(bpffs: &ScratchBpffs) -> Vec<u32> {
    let data = MapData::from_pin(bpffs.path().join("maps").join(names::BACKENDS)).expect("pin");
    let map: HashMap<MapData, u32, L4Addr> =
        HashMap::try_from(Map::HashMap(data)).expect("hash map");
    map.keys().filter_map(Result::ok).collect()
}

#[test]
fn an_oversized_service_writes_nothing_and_blocks_no_other() {
    if !privileged("an_oversized_service_writes_nothing_and_blocks_no_other") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let mut datapath =
        Datapath::load_with_capacities(bpffs.path(), &[(names::SERVICES, 64)]).expect("load");
    let desired = [
        group("default/small", "10.96.1.1", 80..82, "10.244.2.1"),
        // 40 frontends of one backend: 80 entries and a marker, in 64.
        group("default/huge", "10.96.1.2", 1000..1040, "10.244.2.2"),
        group("default/other", "10.96.1.3", 53..54, "10.244.2.3"),
    ];
    let outcomes = datapath.sync_services(&desired).expect("sync");
    let names: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["default/small", "default/huge", "default/other"]);
    assert_eq!(outcomes[0].result.as_ref().ok(), Some(&2));
    assert_eq!(outcomes[2].result.as_ref().ok(), Some(&1));
    match &outcomes[1].result {
        Err(
            e @ DatapathError::ServiceCapacity {
                map,
                needed,
                capacity,
                ..
            },
        ) => {
            assert_eq!(*map, names::SERVICES);
            assert_eq!((*needed, *capacity), (81, 64));
            assert!(e.to_string().contains("default/huge"), "{e}");
        }
        other => panic!("the huge service must be refused for room: {other:?}"),
    }
    let programmed: Vec<SocketAddr> = datapath
        .services()
        .expect("services")
        .iter()
        .map(|s| s.frontend)
        .collect();
    assert_eq!(
        programmed,
        [
            "10.96.1.1:80".parse().expect("addr"),
            "10.96.1.1:81".parse().expect("addr"),
            "10.96.1.3:53".parse().expect("addr"),
        ],
        "nothing of the huge service in the kernel"
    );
    assert_eq!(pinned_backends(&bpffs).len(), 3);

    // The same desired state again writes nothing; a change to one group
    // writes only that group.
    let again = datapath.sync_services(&desired).expect("sync");
    assert_eq!(again[0].result.as_ref().ok(), Some(&0));
    assert_eq!(again[2].result.as_ref().ok(), Some(&0));
}

#[test]
fn frontends_nobody_wants_leave_the_kernel_also_after_a_restart() {
    if !privileged("frontends_nobody_wants_leave_the_kernel_also_after_a_restart") {
        return;
    }
    let bpffs = ScratchBpffs::mount().expect("bpffs");
    let kept = group("default/kept", "10.96.2.1", 80..82, "10.244.3.1");
    let gone = group("default/gone", "10.96.2.2", 80..90, "10.244.3.2");
    {
        let mut datapath = Datapath::load(bpffs.path()).expect("load");
        let outcomes = datapath
            .sync_services(&[kept.clone(), gone.clone()])
            .expect("sync");
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        assert_eq!(datapath.services().expect("services").len(), 12);
        // The agent stops; the maps stay pinned.
    }
    let mut datapath = Datapath::load(bpffs.path()).expect("reload");
    assert_eq!(
        datapath.services().expect("services").len(),
        12,
        "the kernel keeps serving while the agent is away"
    );
    let outcomes = datapath
        .sync_services(std::slice::from_ref(&kept))
        .expect("sync");
    assert_eq!(outcomes[0].result.as_ref().ok(), Some(&0), "kept unchanged");
    let left: Vec<SocketAddr> = datapath
        .services()
        .expect("services")
        .iter()
        .map(|s| s.frontend)
        .collect();
    let wanted: Vec<SocketAddr> = kept.frontends.iter().map(|s| s.frontend).collect();
    assert_eq!(left, wanted, "the other service's frontends are gone");
    assert_eq!(pinned_backends(&bpffs).len(), 2, "and their backends");

    // A new service on the freed cluster IP reaches its own backend only.
    let reused = group("default/new", "10.96.2.2", 80..81, "10.244.3.9");
    let outcomes = datapath.sync_services(&[kept, reused]).expect("sync");
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    let record = datapath
        .services()
        .expect("services")
        .into_iter()
        .find(|s| s.frontend.ip() == "10.96.2.2".parse::<std::net::IpAddr>().expect("ip"))
        .expect("new service");
    let backends: Vec<SocketAddr> = record.backends.iter().map(|b| b.address).collect();
    assert_eq!(backends, ["10.244.3.9:8080".parse().expect("addr")]);
}
