//! The agent's writes to the datapath's maps and the reads behind
//! `myelin bpf`: endpoints, ipcache, policy, services, conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::Pod;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};
use myelin_common::maps::{FAMILY_IPV4, POLICY_FLAG_EGRESS, POLICY_FLAG_INGRESS, names};
use myelin_common::{
    AffinityEntry, AffinityKey, CtEntry, CtKey, EndpointInfo, EndpointPolicy, IpKey, IpcacheEntry,
    IpcacheKey, L4Addr, PolicyEntry, PolicyKey, ServiceEntry, ServiceKey,
};

use crate::error::DatapathError;
use crate::loader::Datapath;
use crate::tables::{
    BackendRecord, CtRecord, EndpointRecord, IpcacheRecord, PolicyRecord, PolicyTable, Service,
    ServiceProtocol, ServiceRecord, addr_bytes, compile_policy, ct_record, endpoint_addresses,
    family_of, free_ids, ip_from, ip_key, l4_addr, policy_entry, policy_flags, policy_key,
    policy_prefix, policy_record, service_protocol, socket_from,
};

/// Most backends one frontend can have (slots are u16, and the kernel picks
/// among `count` of them).
const MAX_BACKENDS: usize = 4096;

fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A missing key is what a removal wants anyway.
fn removed(result: Result<(), MapError>, map: &'static str) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source }),
    }
}

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
    fn hash<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    fn hash_mut<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    fn lpm<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<LpmTrie<&MapData, K, V>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(map_error(name))
    }

    fn lpm_mut<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, V>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(map_error(name))
    }

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
        let previous = self
            .hash::<u32, EndpointInfo>(names::ENDPOINTS)?
            .get(&ifindex, 0)
            .ok();
        let mut by_ip = self.hash_mut::<IpKey, EndpointInfo>(names::ENDPOINTS_BY_IP)?;
        let addresses = endpoint_addresses(&record);
        if let Some(old) = previous {
            for address in endpoint_addresses(&old) {
                if !addresses.contains(&address) {
                    forget_address(&mut by_ip, &address, old.endpoint_id)?;
                }
            }
        }
        for address in &addresses {
            by_ip
                .insert(ip_key(address), record, 0)
                .map_err(map_error(names::ENDPOINTS_BY_IP))?;
        }
        self.hash_mut::<u32, EndpointInfo>(names::ENDPOINTS)?
            .insert(ifindex, record, 0)
            .map_err(map_error(names::ENDPOINTS))
    }

    /// Forgets the endpoint behind `ifindex`: its records, its policy and
    /// its counters. Idempotent.
    pub fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let Ok(old) = self
            .hash::<u32, EndpointInfo>(names::ENDPOINTS)?
            .get(&ifindex, 0)
        else {
            return Ok(());
        };
        {
            let mut by_ip = self.hash_mut::<IpKey, EndpointInfo>(names::ENDPOINTS_BY_IP)?;
            for address in endpoint_addresses(&old) {
                forget_address(&mut by_ip, &address, old.endpoint_id)?;
            }
        }
        let mut endpoints = self.hash_mut::<u32, EndpointInfo>(names::ENDPOINTS)?;
        removed(endpoints.remove(&ifindex), names::ENDPOINTS)?;
        let still_used = self
            .hash::<u32, EndpointInfo>(names::ENDPOINTS)?
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
        let policies = self.hash::<u32, EndpointPolicy>(names::ENDPOINT_POLICY)?;
        let mut out: Vec<EndpointRecord> = self
            .hash::<u32, EndpointInfo>(names::ENDPOINTS)?
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
        self.lpm_mut::<IpcacheKey, IpcacheEntry>(names::IPCACHE)?
            .insert(&key, IpcacheEntry { identity }, 0)
            .map_err(map_error(names::IPCACHE))
    }

    /// Removes the prefix `address/prefix_len`. Idempotent.
    pub fn ipcache_delete(&mut self, address: IpAddr, prefix_len: u8) -> Result<(), DatapathError> {
        let key = ipcache_key(&address, prefix_len)?;
        let mut map = self.lpm_mut::<IpcacheKey, IpcacheEntry>(names::IPCACHE)?;
        removed(map.remove(&key), names::IPCACHE)
    }

    /// The ipcache, sorted by prefix.
    pub fn ipcache(&self) -> Result<Vec<IpcacheRecord>, DatapathError> {
        let map = self.lpm::<IpcacheKey, IpcacheEntry>(names::IPCACHE)?;
        let mut out: Vec<IpcacheRecord> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, entry)| {
                let data = key.data();
                IpcacheRecord {
                    address: ip_from(data.family, &data.addr),
                    prefix_len: key.prefix_len().saturating_sub(8) as u8,
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
        let current = self
            .hash::<u32, EndpointPolicy>(names::ENDPOINT_POLICY)?
            .get(&endpoint_id, 0)
            .ok();
        let generation = current.map_or(1, |c| c.generation.wrapping_add(1).max(1));
        let mut written = Vec::with_capacity(slots.len());
        let result = (|| {
            let mut policy = self.lpm_mut::<PolicyKey, PolicyEntry>(names::POLICY)?;
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
            if let Ok(mut policy) = self.lpm_mut::<PolicyKey, PolicyEntry>(names::POLICY) {
                for key in &written {
                    let _ = policy.remove(key);
                }
            }
            return Err(e);
        }
        self.hash_mut::<u32, EndpointPolicy>(names::ENDPOINT_POLICY)?
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
        let map = self
            .ebpf
            .map_mut(names::POLICY_REVISION)
            .ok_or(DatapathError::MissingMap(names::POLICY_REVISION))?;
        let mut revision: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(map_error(names::POLICY_REVISION))?;
        let current = revision
            .get(&0, 0)
            .map_err(map_error(names::POLICY_REVISION))?;
        revision
            .set(0, current.wrapping_add(1), 0)
            .map_err(map_error(names::POLICY_REVISION))
    }

    /// Removes the endpoint's policy: both directions become allow-all.
    pub fn remove_policy(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        let mut state = self.hash_mut::<u32, EndpointPolicy>(names::ENDPOINT_POLICY)?;
        removed(state.remove(&endpoint_id), names::ENDPOINT_POLICY)?;
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
            .lpm::<PolicyKey, PolicyEntry>(names::POLICY)?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let data = k.data();
                u32::from_be_bytes(data.endpoint_id) == endpoint_id
                    && Some(u32::from_be_bytes(data.generation)) != keep
            })
            .collect();
        let mut policy = self.lpm_mut::<PolicyKey, PolicyEntry>(names::POLICY)?;
        for key in &stale {
            removed(policy.remove(key), names::POLICY)?;
        }
        Ok(())
    }

    /// The policy entries in force for `endpoint_id` (empty when none).
    pub fn policy(&self, endpoint_id: u32) -> Result<Vec<PolicyRecord>, DatapathError> {
        let Ok(state) = self
            .hash::<u32, EndpointPolicy>(names::ENDPOINT_POLICY)?
            .get(&endpoint_id, 0)
        else {
            return Ok(Vec::new());
        };
        let mut out: Vec<PolicyRecord> = self
            .lpm::<PolicyKey, PolicyEntry>(names::POLICY)?
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

    /// Creates or updates a service frontend with its backends. Backends
    /// kept keep their ids, so connections to them are undisturbed; a
    /// connection whose backend was removed is given a new one on its next
    /// packet. Order of writes: backends, slots, frontend count, then stale
    /// slots and backends, so the kernel never picks an empty slot. Last,
    /// the session affinities that led to a removed backend (or all of the
    /// frontend's, when it no longer has affinity) are forgotten: the next
    /// connection of such a client picks anew.
    pub fn upsert_service(&mut self, service: &Service) -> Result<ServiceRecord, DatapathError> {
        let invalid = |reason: String| DatapathError::InvalidService {
            frontend: service.frontend,
            reason,
        };
        if service.backends.len() > MAX_BACKENDS {
            return Err(invalid(format!(
                "{} backends; at most {MAX_BACKENDS} per frontend",
                service.backends.len()
            )));
        }
        if let Some(b) = service
            .backends
            .iter()
            .find(|b| b.is_ipv4() != service.frontend.is_ipv4())
        {
            return Err(invalid(format!(
                "backend {b} is of another address family than the frontend (no NAT46/64)"
            )));
        }
        if service.affinity_timeout_s == Some(0) {
            // The kernel reads a timeout of 0 as "no affinity".
            return Err(invalid(
                "a session affinity timeout of 0 s; it must be at least 1 s".into(),
            ));
        }
        let protocol = service.protocol.number();
        let master_key = service_key(&service.frontend, protocol, 0);
        let existing = self.service_record(&master_key)?;
        let rev_nat_index = match &existing {
            Some(record) => record.rev_nat_index,
            None => {
                let used: BTreeSet<u32> = self
                    .hash::<u32, L4Addr>(names::REV_NAT)?
                    .keys()
                    .filter_map(Result::ok)
                    .collect();
                let index = free_ids(&used, 1, u32::from(u16::MAX))
                    .first()
                    .copied()
                    .ok_or_else(|| invalid("no free reverse-NAT index (65535 frontends)".into()))?;
                index as u16
            }
        };
        let old: BTreeMap<SocketAddr, u32> = existing
            .as_ref()
            .map(|r| r.backends.iter().map(|b| (b.address, b.id)).collect())
            .unwrap_or_default();
        let fresh_needed = service
            .backends
            .iter()
            .filter(|b| !old.contains_key(b))
            .count();
        let used: BTreeSet<u32> = self
            .hash::<u32, L4Addr>(names::BACKENDS)?
            .keys()
            .filter_map(Result::ok)
            .collect();
        let mut fresh = free_ids(&used, fresh_needed, u32::MAX).into_iter();
        let mut backends = Vec::with_capacity(service.backends.len());
        {
            let mut map = self.hash_mut::<u32, L4Addr>(names::BACKENDS)?;
            for address in &service.backends {
                let id = match old.get(address) {
                    Some(id) => *id,
                    None => {
                        let id = fresh
                            .next()
                            .ok_or_else(|| invalid("no free backend id".into()))?;
                        map.insert(id, l4_addr(address), 0)
                            .map_err(map_error(names::BACKENDS))?;
                        id
                    }
                };
                backends.push(BackendRecord {
                    id,
                    address: *address,
                });
            }
        }
        self.hash_mut::<u32, L4Addr>(names::REV_NAT)?
            .insert(u32::from(rev_nat_index), l4_addr(&service.frontend), 0)
            .map_err(map_error(names::REV_NAT))?;
        {
            let mut services = self.hash_mut::<ServiceKey, ServiceEntry>(names::SERVICES)?;
            for (slot, backend) in backends.iter().enumerate() {
                let key = service_key(&service.frontend, protocol, slot as u16 + 1);
                services
                    .insert(
                        key,
                        ServiceEntry {
                            backend_id: backend.id,
                            ..ServiceEntry::default()
                        },
                        0,
                    )
                    .map_err(map_error(names::SERVICES))?;
            }
            services
                .insert(
                    master_key,
                    ServiceEntry::frontend(
                        backends.len() as u16,
                        rev_nat_index,
                        service.affinity_timeout_s.unwrap_or(0),
                    ),
                    0,
                )
                .map_err(map_error(names::SERVICES))?;
            let old_count = existing.as_ref().map_or(0, |r| r.backends.len());
            for slot in backends.len()..old_count {
                let key = service_key(&service.frontend, protocol, slot as u16 + 1);
                removed(services.remove(&key), names::SERVICES)?;
            }
        }
        let kept: BTreeSet<u32> = backends.iter().map(|b| b.id).collect();
        let gone: Vec<u32> = old
            .values()
            .filter(|id| !kept.contains(id))
            .copied()
            .collect();
        {
            let mut map = self.hash_mut::<u32, L4Addr>(names::BACKENDS)?;
            for id in &gone {
                removed(map.remove(id), names::BACKENDS)?;
            }
        }
        // Only a frontend that had affinity has entries.
        if existing.is_some_and(|r| r.affinity_timeout_s.is_some()) {
            if service.affinity_timeout_s.is_none() {
                self.forget_affinities(rev_nat_index, |_| true)?;
            } else if !gone.is_empty() {
                // After the backends' removal: an entry the kernel recalls in
                // between finds its backend gone and picks anew.
                self.forget_affinities(rev_nat_index, |e| !kept.contains(&e.backend_id))?;
            }
        }
        Ok(ServiceRecord {
            frontend: service.frontend,
            protocol: service.protocol,
            rev_nat_index,
            affinity_timeout_s: service.affinity_timeout_s,
            backends,
        })
    }

    /// Deletes the session affinity entries of frontend `rev_nat_index`
    /// that `stale` picks. The index and the backend ids are reused once
    /// free, so an entry left behind could send a client to another
    /// service's backend.
    fn forget_affinities(
        &mut self,
        rev_nat_index: u16,
        stale: impl Fn(&AffinityEntry) -> bool,
    ) -> Result<(), DatapathError> {
        let keys: Vec<AffinityKey> = self
            .hash::<AffinityKey, AffinityEntry>(names::AFFINITY)?
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| k.rev_nat_index == rev_nat_index && stale(e))
            .map(|(k, _)| k)
            .collect();
        let mut map = self.hash_mut::<AffinityKey, AffinityEntry>(names::AFFINITY)?;
        for key in &keys {
            removed(map.remove(key), names::AFFINITY)?;
        }
        Ok(())
    }

    /// Removes a service frontend, its backends, its session affinities and
    /// its reverse NAT. Idempotent.
    pub fn delete_service(
        &mut self,
        frontend: SocketAddr,
        protocol: ServiceProtocol,
    ) -> Result<(), DatapathError> {
        let master_key = service_key(&frontend, protocol.number(), 0);
        let Some(record) = self.service_record(&master_key)? else {
            return Ok(());
        };
        {
            let mut services = self.hash_mut::<ServiceKey, ServiceEntry>(names::SERVICES)?;
            // The frontend first: new connections stop finding it at once.
            removed(services.remove(&master_key), names::SERVICES)?;
            for slot in 1..=record.backends.len() {
                let key = service_key(&frontend, protocol.number(), slot as u16);
                removed(services.remove(&key), names::SERVICES)?;
            }
        }
        {
            let mut map = self.hash_mut::<u32, L4Addr>(names::BACKENDS)?;
            for backend in &record.backends {
                removed(map.remove(&backend.id), names::BACKENDS)?;
            }
        }
        if record.affinity_timeout_s.is_some() {
            // Before the reverse-NAT index is freed for another frontend.
            self.forget_affinities(record.rev_nat_index, |_| true)?;
        }
        let mut rev_nat = self.hash_mut::<u32, L4Addr>(names::REV_NAT)?;
        removed(
            rev_nat.remove(&u32::from(record.rev_nat_index)),
            names::REV_NAT,
        )
    }

    fn service_record(
        &self,
        master_key: &ServiceKey,
    ) -> Result<Option<ServiceRecord>, DatapathError> {
        let services = self.hash::<ServiceKey, ServiceEntry>(names::SERVICES)?;
        let Ok(master) = services.get(master_key, 0) else {
            return Ok(None);
        };
        let backends_map = self.hash::<u32, L4Addr>(names::BACKENDS)?;
        let mut backends = Vec::new();
        for slot in 1..=master.count {
            let key = ServiceKey {
                slot,
                ..*master_key
            };
            if let Ok(entry) = services.get(&key, 0)
                && let Ok(address) = backends_map.get(&entry.backend_id, 0)
            {
                backends.push(BackendRecord {
                    id: entry.backend_id,
                    address: socket_from(&address),
                });
            }
        }
        Ok(Some(ServiceRecord {
            frontend: SocketAddr::new(
                ip_from(master_key.family, &master_key.addr),
                master_key.port,
            ),
            protocol: service_protocol(master_key.protocol).unwrap_or(ServiceProtocol::Tcp),
            rev_nat_index: master.rev_nat_index,
            affinity_timeout_s: Some(master.affinity_timeout_s()).filter(|t| *t != 0),
            backends,
        }))
    }

    /// All service frontends, sorted.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, DatapathError> {
        let masters: Vec<ServiceKey> = self
            .hash::<ServiceKey, ServiceEntry>(names::SERVICES)?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == 0)
            .collect();
        let mut out = Vec::with_capacity(masters.len());
        for key in masters {
            if let Some(record) = self.service_record(&key)? {
                out.push(record);
            }
        }
        out.sort_by_key(|r| (r.frontend, r.protocol));
        Ok(out)
    }

    /// The conntrack table (expired entries included, with `expires_in`
    /// `None`).
    pub fn conntrack(&self) -> Result<Vec<CtRecord>, DatapathError> {
        let now = monotonic_ns();
        Ok(self
            .hash::<CtKey, CtEntry>(names::CONNTRACK)?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, e)| ct_record(&k, &e, now))
            .collect())
    }

    /// Deletes expired conntrack entries; returns how many. The kernel
    /// already ignores them; this returns their room before LRU eviction
    /// has to.
    pub fn conntrack_gc(&mut self) -> Result<usize, DatapathError> {
        let now = monotonic_ns();
        let expired: Vec<CtKey> = self
            .hash::<CtKey, CtEntry>(names::CONNTRACK)?
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.expires_ns < now)
            .map(|(k, _)| k)
            .collect();
        let mut map = self.hash_mut::<CtKey, CtEntry>(names::CONNTRACK)?;
        for key in &expired {
            removed(map.remove(key), names::CONNTRACK)?;
        }
        Ok(expired.len())
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
    by_ip: &mut HashMap<&mut MapData, IpKey, EndpointInfo>,
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
    let family = family_of(address);
    let max = if family == FAMILY_IPV4 { 32 } else { 128 };
    if prefix_len > max {
        return Err(DatapathError::InvalidPrefix {
            address: *address,
            prefix_len,
        });
    }
    Ok(Key::new(
        8 + u32::from(prefix_len),
        IpcacheKey {
            family,
            addr: addr_bytes(address),
            _pad: [0; 3],
        },
    ))
}

fn service_key(frontend: &SocketAddr, protocol: u8, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: addr_bytes(&frontend.ip()),
        port: frontend.port(),
        slot,
        protocol,
        family: family_of(&frontend.ip()),
        _pad: [0; 2],
    }
}
