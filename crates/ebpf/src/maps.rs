//! The maps the programs share with the agent (pinned) and their own
//! per-CPU scratch space. Names are the agent's: `MYELIN_*`.

use crate::State;
use crate::fragments::{FragmentKey, FragmentPorts};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{
    Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash,
};
use myelin_common::{
    AffinityEntry, AffinityKey, CtEntry, CtKey, EndpointInfo, EndpointPolicy, IpKey, IpcacheEntry,
    IpcacheKey, L4Addr, PacketStats, PolicyEntry, PolicyKey, ServiceEntry, ServiceKey, StatsKey,
    TraceEvent,
};

/// Endpoints the agent manages, by host-side veth ifindex.
#[map(name = "MYELIN_ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(16384, 0);

/// The same endpoints by address: identity of local peers, and the ingress
/// policy of a local destination.
#[map(name = "MYELIN_EP_BY_IP")]
pub(crate) static ENDPOINTS_BY_IP: HashMap<IpKey, EndpointInfo> = HashMap::pinned(32768, 0);

/// Policy generation and enforcement per endpoint id.
#[map(name = "MYELIN_EP_POLICY")]
pub(crate) static ENDPOINT_POLICY: HashMap<u32, EndpointPolicy> = HashMap::pinned(16384, 0);

/// Policy entries; LPM so protocol and port ranges are prefixes.
#[map(name = "MYELIN_POLICY")]
pub(crate) static POLICY: LpmTrie<PolicyKey, PolicyEntry> =
    LpmTrie::pinned(262144, BPF_F_NO_PREALLOC);

/// Prefix → identity.
#[map(name = "MYELIN_IPCACHE")]
pub(crate) static IPCACHE: LpmTrie<IpcacheKey, IpcacheEntry> =
    LpmTrie::pinned(65536, BPF_F_NO_PREALLOC);

/// Frontends (slot 0) and their backend slots.
#[map(name = "MYELIN_SERVICES")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(65536, 0);

/// Backend id → address.
#[map(name = "MYELIN_BACKENDS")]
pub(crate) static BACKENDS: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// Reverse-NAT index → the frontend replies must appear to come from.
#[map(name = "MYELIN_REV_NAT")]
pub(crate) static REV_NAT: HashMap<u32, L4Addr> = HashMap::pinned(65536, 0);

/// The backend of each client of a frontend with ClientIP session affinity,
/// and when the client last opened a connection to it. LRU: a full table
/// forgets its least recent clients (who then get a new backend) instead of
/// refusing new ones. Pinned: an agent restart keeps the affinities.
#[map(name = "MYELIN_AFFINITY")]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::pinned(65536, 0);

/// The policy revision (index 0), bumped by the agent on every policy
/// change: flows decided under an older revision are checked again.
#[map(name = "MYELIN_POLICY_REV")]
pub(crate) static POLICY_REVISION: Array<u32> = Array::pinned(1, 0);

/// Connection tracking; LRU so a full table evicts the oldest flows instead
/// of refusing new ones.
#[map(name = "MYELIN_CT")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262144, 0);

/// The proxy's listeners by [`listener_key`] (family, proxy port), registered
/// by `assign_to_proxy` the first time it hands a connection to one (a
/// closed listener leaves the map by itself). `proxy_lookup` needs them to
/// steer a SYN that reopens a tuple in TIME_WAIT.
///
/// [`listener_key`]: crate::redirect::listener_key
#[map(name = "MYELIN_PROXY_LISTENERS")]
pub(crate) static PROXY_LISTENERS: SockHash<u32> = SockHash::pinned(64, 0);

/// Packet counters per endpoint and direction.
#[map(name = "MYELIN_STATS")]
pub(crate) static STATS: PerCpuHashMap<StatsKey, PacketStats> = PerCpuHashMap::pinned(32768, 0);

/// Events for the agent's observer.
#[map(name = "MYELIN_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::pinned(1 << 22, 0);

/// Events that found the ring full (index 0), so the agent can report loss.
#[map(name = "MYELIN_LOST")]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// When events without a conntrack entry to aggregate them (drops) were
/// last reported, per tuple and reason: a denied flood reports once per
/// interval instead of filling the ring.
/// Not pinned: losing it on reload only repeats a report.
#[map(name = "MYELIN_REPORTS")]
pub(crate) static REPORTS: LruHashMap<CtKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// The ports of fragmented datagrams in flight, registered by their first
/// fragment ([`crate::fragments`]). Not pinned: a datagram's fragments pass
/// within milliseconds, and a reload loses at most one in flight.
#[map(name = "MYELIN_FRAGMENTS")]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(8192, 0);

/// Scratch space for the event being built: it does not fit the 512-byte
/// stack next to the keys.
#[map(name = "MYELIN_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working state of one program run (the parsed packet and what the
/// events will say), kept off the 512-byte stack. TC programs do not nest on
/// a CPU, so one slot suffices.
#[map(name = "MYELIN_STATE")]
pub(crate) static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);

/// LPM tries must be created without preallocation.
const BPF_F_NO_PREALLOC: u32 = 1;
