//! The endpoints (pods of this node) the agent manages, by host veth and
//! by address (pinned; names are the agent's, `MYELIN_*`).

use aya_ebpf::macros::map;
use aya_ebpf::maps::HashMap;
use myelin_common::{EndpointInfo, IpKey};

/// Endpoints the agent manages, by host-side veth ifindex.
#[map(name = "MYELIN_ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(16384, 0);

/// The same endpoints by address: identity of local peers, and the ingress
/// policy of a local destination.
#[map(name = "MYELIN_EP_BY_IP")]
pub(crate) static ENDPOINTS_BY_IP: HashMap<IpKey, EndpointInfo> = HashMap::pinned(32768, 0);

/// The [`ENDPOINTS_BY_IP`] key of an address.
pub(crate) fn ip_key(family: u8, addr: &[u8; 16]) -> IpKey {
    IpKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    }
}
