//! The agent's writes to the datapath's maps and the reads behind
//! `myelin bpf`: endpoints, ipcache, policy, services, conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::lpm_trie::Key;
use myelin_common::maps::{FAMILY_IPV4, POLICY_FLAG_EGRESS, POLICY_FLAG_INGRESS, names};
use myelin_common::{EndpointInfo, EndpointPolicy, IpKey, IpcacheEntry, IpcacheKey, PolicyKey};

use crate::error::DatapathError;
use crate::loader::Datapath;
use crate::maps::{Hash, map_error, removed};
use crate::services::{
    FrontendKey, ServiceGroup, ServiceOutcome, delete_frontend, read_services, write_group,
};
use crate::tables::{
    CtRecord, EndpointRecord, IpcacheRecord, PolicyRecord, PolicyTable, Service, ServiceProtocol,
    ServiceRecord, addr_bytes, compile_policy, ct_record, endpoint_addresses, family_of, ip_from,
    ip_key, policy_entry, policy_flags, policy_key, policy_prefix, policy_record,
};

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl Datapath {
    /// Registers (or updates) the endpoint behind host-side ifindex
    /// `ifindex` without touching attachments: its id, identity and
    /// addresses (for anti-spoofing and lookups by address). Enforcement is
    /// not part of the record: it comes with [`Datapath::replace_policy`], so
    /// re-registering an endpoint never opens its policy.
    ///
    /// The record's `ifindex` is set to `ifindex`; a zero `host_mac` is
    /// read from that interface (in the calling thread's network namespace).
    /// `mac`, the pod's own interface's address, only the caller knows (it
    /// lives in the pod's namespace). With both MACs known the kernel hands
    /// packets from other pods of the node straight into this pod (host
    /// routing); without them they go through the node's IP stack.
    pub fn upsert_endpoint(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError> {
        let mut record = EndpointInfo {
            flags: 0,
            ifindex,
            ..*info
        };
        if record.host_mac == [0; 6] {
            record.host_mac = interface_mac(ifindex).unwrap_or_default();
        }
        let previous = self.maps.endpoints.get(&ifindex, 0).ok();
        let by_ip = &mut self.maps.endpoints_by_ip;
        let addresses = endpoint_addresses(&record);
        if let Some(old) = previous {
            for address in endpoint_addresses(&old) {
                if !addresses.contains(&address) {
                    forget_address(by_ip, &address, old.endpoint_id)?;
                }
            }
        }
        for address in &addresses {
            by_ip
                .insert(ip_key(address), record, 0)
                .map_err(map_error(names::ENDPOINTS_BY_IP))?;
        }
        self.maps
            .endpoints
            .insert(ifindex, record, 0)
            .map_err(map_error(names::ENDPOINTS))
    }

    /// Forgets the endpoint behind `ifindex`: its records, its policy and
    /// its counters. Idempotent.
    pub fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let Ok(old) = self.maps.endpoints.get(&ifindex, 0) else {
            return Ok(());
        };
        for address in endpoint_addresses(&old) {
            forget_address(&mut self.maps.endpoints_by_ip, &address, old.endpoint_id)?;
        }
        removed(self.maps.endpoints.remove(&ifindex), names::ENDPOINTS)?;
        let still_used = self
            .maps
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .any(|(_, e)| e.endpoint_id == old.endpoint_id);
        if !still_used {
            self.remove_policy(old.endpoint_id)?;
        }
        Ok(())
    }

    /// The registered endpoints, by ifindex.
    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, DatapathError> {
        let policies = &self.maps.endpoint_policy;
        let mut out: Vec<EndpointRecord> = self
            .maps
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .map(|(ifindex, e)| {
                let policy = policies.get(&e.endpoint_id, 0).unwrap_or_default();
                EndpointRecord {
                    ifindex,
                    endpoint_id: e.endpoint_id,
                    identity: e.identity,
                    ipv4: (e.ipv4 != [0; 4]).then(|| Ipv4Addr::from(e.ipv4)),
                    ipv6: (e.ipv6 != [0; 16]).then(|| Ipv6Addr::from(e.ipv6)),
                    mac: (e.mac != [0; 6]).then_some(e.mac),
                    host_mac: (e.host_mac != [0; 6]).then_some(e.host_mac),
                    host_routed: e.host_routable(),
                    ingress_enforced: policy.flags & POLICY_FLAG_INGRESS != 0,
                    egress_enforced: policy.flags & POLICY_FLAG_EGRESS != 0,
                    policy_generation: policy.generation,
                }
            })
            .collect();
        out.sort_by_key(|e| e.ifindex);
        Ok(out)
    }

    /// Maps the prefix `address/prefix_len` to `identity` (IPv4 or IPv6).
    pub fn ipcache_upsert(
        &mut self,
        address: IpAddr,
        prefix_len: u8,
        identity: u32,
    ) -> Result<(), DatapathError> {
        let key = ipcache_key(&address, prefix_len)?;
        self.maps
            .ipcache
            .insert(&key, IpcacheEntry { identity }, 0)
            .map_err(map_error(names::IPCACHE))
    }

    /// Removes the prefix `address/prefix_len`. Idempotent.
    pub fn ipcache_delete(&mut self, address: IpAddr, prefix_len: u8) -> Result<(), DatapathError> {
        let key = ipcache_key(&address, prefix_len)?;
        removed(self.maps.ipcache.remove(&key), names::IPCACHE)
    }

    /// The ipcache, sorted by prefix.
    pub fn ipcache(&self) -> Result<Vec<IpcacheRecord>, DatapathError> {
        let mut out: Vec<IpcacheRecord> = self
            .maps
            .ipcache
            .iter()
            .filter_map(Result::ok)
            .map(|(key, entry)| {
                let (address, prefix_len) = key_prefix(&key);
                IpcacheRecord {
                    address,
                    prefix_len,
                    identity: entry.identity,
                }
            })
            .collect();
        out.sort_by_key(|r| (r.address, r.prefix_len));
        Ok(out)
    }

    /// Replaces the whole L3/L4 policy of `endpoint_id` atomically: the new
    /// entries are written under a new generation, then the endpoint's
    /// generation and enforcement flags flip in one map update, then the old
    /// generation's entries are deleted. A packet sees either the old policy
    /// or the new one, never a mix; on error the old policy stays in force.
    pub fn replace_policy(
        &mut self,
        endpoint_id: u32,
        table: &PolicyTable,
    ) -> Result<(), DatapathError> {
        let slots = compile_policy(table)?;
        let current = self.maps.endpoint_policy.get(&endpoint_id, 0).ok();
        let generation = current.map_or(1, |c| c.generation.wrapping_add(1).max(1));
        let mut written = Vec::with_capacity(slots.len());
        let policy = &mut self.maps.policy;
        let result = (|| {
            for (slot, (action, rule_id)) in &slots {
                let key = Key::new(
                    policy_prefix(slot),
                    policy_key(endpoint_id, generation, slot),
                );
                policy
                    .insert(&key, policy_entry(slot, *action, *rule_id), 0)
                    .map_err(map_error(names::POLICY))?;
                written.push(key);
            }
            Ok::<(), DatapathError>(())
        })();
        if let Err(e) = result {
            // Leave no half-written generation behind; the old one is in force.
            for key in &written {
                let _ = self.maps.policy.remove(key);
            }
            return Err(e);
        }
        self.maps
            .endpoint_policy
            .insert(
                endpoint_id,
                EndpointPolicy {
                    generation,
                    flags: policy_flags(table),
                },
                0,
            )
            .map_err(map_error(names::ENDPOINT_POLICY))?;
        self.bump_policy_revision()?;
        self.delete_policy_entries(endpoint_id, Some(generation))
    }

    /// Makes every established flow check its policy again on its next
    /// packet from the originator: policy changes apply to existing
    /// connections too (a denied one is cut, an allowed one goes on).
    fn bump_policy_revision(&mut self) -> Result<(), DatapathError> {
        let revision = &mut self.maps.policy_revision;
        let current = revision
            .get(&0, 0)
            .map_err(map_error(names::POLICY_REVISION))?;
        revision
            .set(0, current.wrapping_add(1), 0)
            .map_err(map_error(names::POLICY_REVISION))
    }

    /// Removes the endpoint's policy: both directions become allow-all.
    pub fn remove_policy(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        removed(
            self.maps.endpoint_policy.remove(&endpoint_id),
            names::ENDPOINT_POLICY,
        )?;
        self.bump_policy_revision()?;
        self.delete_policy_entries(endpoint_id, None)
    }

    /// Deletes the endpoint's policy entries except generation `keep`.
    fn delete_policy_entries(
        &mut self,
        endpoint_id: u32,
        keep: Option<u32>,
    ) -> Result<(), DatapathError> {
        let stale: Vec<Key<PolicyKey>> = self
            .maps
            .policy
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let data = k.data();
                u32::from_be_bytes(data.endpoint_id) == endpoint_id
                    && Some(u32::from_be_bytes(data.generation)) != keep
            })
            .collect();
        for key in &stale {
            removed(self.maps.policy.remove(key), names::POLICY)?;
        }
        Ok(())
    }

    /// The policy entries in force for `endpoint_id` (empty when none).
    pub fn policy(&self, endpoint_id: u32) -> Result<Vec<PolicyRecord>, DatapathError> {
        let Ok(state) = self.maps.endpoint_policy.get(&endpoint_id, 0) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<PolicyRecord> = self
            .maps
            .policy
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| {
                let data = k.data();
                u32::from_be_bytes(data.endpoint_id) == endpoint_id
                    && u32::from_be_bytes(data.generation) == state.generation
            })
            .map(|(k, e)| policy_record(k.prefix_len(), &k.data(), &e))
            .collect();
        out.sort_by(|a, b| {
            (a.direction, a.peer_identity, a.protocol, a.ports).cmp(&(
                b.direction,
                b.peer_identity,
                b.protocol,
                b.ports,
            ))
        });
        Ok(out)
    }

    /// Programs the services: `desired` is the whole desired state. Every
    /// frontend in the kernel that no group lists is removed first (also
    /// those an earlier agent left behind), then each group whose frontends
    /// differ from the kernel's is written all or nothing. One group's
    /// failure (too big for the maps' free room, invalid) leaves the others
    /// untouched: the outcome of each comes back in `desired`'s order. Err
    /// only when a removal fails.
    pub fn sync_services(
        &mut self,
        desired: &[ServiceGroup],
    ) -> Result<Vec<ServiceOutcome>, DatapathError> {
        let wanted: BTreeSet<FrontendKey> = desired
            .iter()
            .flat_map(|g| g.frontends.iter().map(|s| (s.frontend, s.protocol)))
            .collect();
        for key in self.service_index.keys() {
            if !wanted.contains(&key) {
                delete_frontend(&mut self.maps, &mut self.service_index, &key)?;
            }
        }
        let mut owners: BTreeMap<FrontendKey, &str> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(desired.len());
        for group in desired {
            let taken = group.frontends.iter().find_map(|s| {
                let owner = owners.get(&(s.frontend, s.protocol))?;
                Some(DatapathError::InvalidService {
                    frontend: s.frontend,
                    reason: format!("{} is also a frontend of service {owner}", s.protocol),
                })
            });
            let result = match taken {
                Some(e) => Err(e),
                None => {
                    for s in &group.frontends {
                        owners.insert((s.frontend, s.protocol), &group.name);
                    }
                    write_group(
                        &mut self.maps,
                        &mut self.service_index,
                        &group.name,
                        &group.frontends,
                    )
                    .map(|written| written.len())
                }
            };
            outcomes.push(ServiceOutcome {
                name: group.name.clone(),
                result,
            });
        }
        Ok(outcomes)
    }

    /// Creates or updates one service frontend with its backends, all or
    /// nothing. Backends kept keep their ids, so connections to them are
    /// undisturbed; a connection whose backend was removed is given a new
    /// one on its next packet.
    pub fn upsert_service(&mut self, service: &Service) -> Result<ServiceRecord, DatapathError> {
        let name = format!("{} {}", service.protocol, service.frontend);
        write_group(
            &mut self.maps,
            &mut self.service_index,
            &name,
            std::slice::from_ref(service),
        )?;
        self.service_index
            .record(&(service.frontend, service.protocol))
            .cloned()
            .ok_or_else(|| DatapathError::InvalidService {
                frontend: service.frontend,
                reason: "not found after writing it".into(),
            })
    }

    /// Removes a service frontend, its backends, its session affinities and
    /// its reverse NAT. Idempotent.
    pub fn delete_service(
        &mut self,
        frontend: SocketAddr,
        protocol: ServiceProtocol,
    ) -> Result<(), DatapathError> {
        delete_frontend(
            &mut self.maps,
            &mut self.service_index,
            &(frontend, protocol),
        )
    }

    /// All service frontends, sorted, as the kernel's maps have them.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, DatapathError> {
        Ok(read_services(&self.maps))
    }

    /// The conntrack table (expired entries included, with `expires_in`
    /// `None`).
    pub fn conntrack(&self) -> Result<Vec<CtRecord>, DatapathError> {
        let now = monotonic_ns();
        Ok(self
            .maps
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .map(|(k, e)| ct_record(&k, &e, now))
            .collect())
    }

    /// Deletes expired conntrack entries; returns how many. The kernel
    /// already ignores them; this returns their room before LRU eviction
    /// has to.
    pub fn conntrack_gc(&mut self) -> Result<usize, DatapathError> {
        let collected =
            crate::conntrack::collect_expired(&mut self.maps.conntrack, monotonic_ns())?;
        Ok(collected.removed)
    }
}

/// A MAC address written `aa:bb:cc:dd:ee:ff` (hex digits in either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC address of interface `ifindex` in the calling thread's network
/// namespace; `None` when it has none (loopback) or is gone.
pub(crate) fn interface_mac(ifindex: u32) -> Option<[u8; 6]> {
    let name = nix::net::if_::if_indextoname(ifindex).ok()?;
    let name = name.to_str().ok()?;
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .filter(|mac| *mac != [0; 6])
}

fn forget_address(
    by_ip: &mut Hash<IpKey, EndpointInfo>,
    address: &IpAddr,
    endpoint_id: u32,
) -> Result<(), DatapathError> {
    let key = ip_key(address);
    // The address may already belong to a newer pod: leave that one alone.
    if by_ip
        .get(&key, 0)
        .is_ok_and(|e| e.endpoint_id == endpoint_id)
    {
        removed(by_ip.remove(&key), names::ENDPOINTS_BY_IP)?;
    }
    Ok(())
}

fn ipcache_key(address: &IpAddr, prefix_len: u8) -> Result<Key<IpcacheKey>, DatapathError> {
    prefix_key(address, prefix_len).ok_or(DatapathError::InvalidPrefix {
        address: *address,
        prefix_len,
    })
}

/// The LPM key of `address/prefix_len` as the ipcache and the tunnel
/// endpoints map share it (the family byte counts in the prefix); `None`
/// when the prefix is longer than the address.
pub(crate) fn prefix_key(address: &IpAddr, prefix_len: u8) -> Option<Key<IpcacheKey>> {
    let family = family_of(address);
    let max = if family == FAMILY_IPV4 { 32 } else { 128 };
    (prefix_len <= max).then(|| {
        Key::new(
            8 + u32::from(prefix_len),
            IpcacheKey {
                family,
                addr: addr_bytes(address),
                _pad: [0; 3],
            },
        )
    })
}

/// The address and prefix length a [`prefix_key`] holds.
pub(crate) fn key_prefix(key: &Key<IpcacheKey>) -> (IpAddr, u8) {
    let data = key.data();
    (
        ip_from(data.family, &data.addr),
        key.prefix_len().saturating_sub(8) as u8,
    )
}
