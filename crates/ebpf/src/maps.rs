//! The maps several concepts share: the endpoints (pinned; names are the
//! agent's, `MYELIN_*`) and the per-CPU working state of a run. Every other
//! map lives in the module of its concept.

use crate::State;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, PerCpuArray};
use myelin_common::{EndpointInfo, IpKey};

/// Endpoints the agent manages, by host-side veth ifindex.
#[map(name = "MYELIN_ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(16384, 0);

/// The same endpoints by address: identity of local peers, and the ingress
/// policy of a local destination.
#[map(name = "MYELIN_EP_BY_IP")]
pub(crate) static ENDPOINTS_BY_IP: HashMap<IpKey, EndpointInfo> = HashMap::pinned(32768, 0);

/// Per-CPU working state of one program run (the parsed packet and what the
/// events will say), kept off the 512-byte stack. TC programs do not nest on
/// a CPU, so one slot suffices.
#[map(name = "MYELIN_STATE")]
pub(crate) static STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);
