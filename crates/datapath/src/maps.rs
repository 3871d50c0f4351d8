//! Typed handles on the kernel programs' maps, taken from the loaded object
//! once at load: no call looks a map up by name again.

use aya::Ebpf;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuHashMap};
use myelin_common::maps::names;
use myelin_common::{
    AffinityEntry, AffinityKey, CtEntry, CtKey, DatapathConfig, EndpointInfo, EndpointPolicy,
    IpKey, IpcacheEntry, IpcacheKey, L4Addr, PacketStats, PolicyEntry, PolicyKey, ServiceEntry,
    ServiceKey, StatsKey, TunnelEndpoint,
};

use crate::error::DatapathError;
use crate::events::EventMaps;

/// An owned hash (or LRU hash) map handle.
pub(crate) type Hash<K, V> = HashMap<MapData, K, V>;

/// The maps user space reads and writes.
pub(crate) struct Maps {
    pub(crate) endpoints: Hash<u32, EndpointInfo>,
    pub(crate) endpoints_by_ip: Hash<IpKey, EndpointInfo>,
    pub(crate) endpoint_policy: Hash<u32, EndpointPolicy>,
    pub(crate) policy: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    pub(crate) ipcache: LpmTrie<MapData, IpcacheKey, IpcacheEntry>,
    pub(crate) services: Hash<ServiceKey, ServiceEntry>,
    pub(crate) backends: Hash<u32, L4Addr>,
    pub(crate) rev_nat: Hash<u32, L4Addr>,
    pub(crate) affinity: Hash<AffinityKey, AffinityEntry>,
    pub(crate) policy_revision: Array<MapData, u32>,
    pub(crate) conntrack: Hash<CtKey, CtEntry>,
    pub(crate) stats: PerCpuHashMap<MapData, StatsKey, PacketStats>,
    pub(crate) config: Array<MapData, DatapathConfig>,
    pub(crate) tunnel_endpoints: LpmTrie<MapData, IpcacheKey, TunnelEndpoint>,
    /// The event ring and its counters, until the event reader takes them.
    pub(crate) events: Option<EventMaps>,
}

impl Maps {
    /// Takes every map out of the loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            endpoints: typed(ebpf, names::ENDPOINTS)?,
            endpoints_by_ip: typed(ebpf, names::ENDPOINTS_BY_IP)?,
            endpoint_policy: typed(ebpf, names::ENDPOINT_POLICY)?,
            policy: typed(ebpf, names::POLICY)?,
            ipcache: typed(ebpf, names::IPCACHE)?,
            services: typed(ebpf, names::SERVICES)?,
            backends: typed(ebpf, names::BACKENDS)?,
            rev_nat: typed(ebpf, names::REV_NAT)?,
            affinity: typed(ebpf, names::AFFINITY)?,
            policy_revision: typed(ebpf, names::POLICY_REVISION)?,
            conntrack: typed(ebpf, names::CONNTRACK)?,
            stats: typed(ebpf, names::STATS)?,
            config: typed(ebpf, names::CONFIG)?,
            tunnel_endpoints: typed(ebpf, names::TUNNEL_ENDPOINTS)?,
            events: Some(EventMaps {
                ring: untyped(ebpf, names::EVENTS)?,
                lost: untyped(ebpf, names::LOST)?,
                suppressed: untyped(ebpf, names::DROPS_SUPPRESSED)?,
            }),
        })
    }
}

fn untyped(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(untyped(ebpf, name)?).map_err(map_error(name))
}

/// The capacity (`max_entries`) of a map, as the kernel created it.
pub(crate) fn capacity<K: aya::Pod, V: aya::Pod>(
    map: &impl IterableMap<K, V>,
    name: &'static str,
) -> Result<usize, DatapathError> {
    let info = map.map().info().map_err(map_error(name))?;
    Ok(info.max_entries() as usize)
}

/// Wraps a map error with the map's name.
pub(crate) fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A missing key is what a removal wants anyway.
pub(crate) fn removed(
    result: Result<(), MapError>,
    map: &'static str,
) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source }),
    }
}
