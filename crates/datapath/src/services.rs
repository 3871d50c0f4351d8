//! The service tables (`MYELIN_SERVICES`, `MYELIN_BACKENDS`, `MYELIN_REV_NAT`)
//! and user space's index of them. The index is read from the pinned maps
//! at load (left-overs of an interrupted write are removed then) and kept
//! in step with every write, so writing a frontend costs what it touches:
//! no map walk per frontend, ids taken from a cursor.
//!
//! A Kubernetes Service ([`ServiceGroup`]) is programmed all or nothing: its
//! needs are checked against the maps' free room before anything is
//! written, and a write that fails anyway is undone for the whole group.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use myelin_common::maps::names;
use myelin_common::{AffinityEntry, AffinityKey, L4Addr, ServiceEntry, ServiceKey};

use crate::error::DatapathError;
use crate::maps::{Maps, capacity, map_error, removed};
use crate::tables::{
    BackendRecord, Service, ServiceProtocol, ServiceRecord, addr_bytes, family_of, ip_from,
    l4_addr, service_protocol, socket_from,
};

/// Most backends one frontend can have (slots are u16, and the kernel picks
/// among `count` of them).
const MAX_BACKENDS: usize = 4096;

/// A frontend's identity: VIP, port and protocol.
pub(crate) type FrontendKey = (SocketAddr, ServiceProtocol);

/// The frontends of one Kubernetes Service, programmed all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGroup {
    /// The Service's name (`namespace/name`), for errors.
    pub name: String,
    /// One per cluster IP, port and protocol.
    pub frontends: Vec<Service>,
}

/// What [`crate::Datapath::sync_services`] did with one [`ServiceGroup`].
#[derive(Debug)]
pub struct ServiceOutcome {
    /// The group's name.
    pub name: String,
    /// How many of its frontends were written (0: the kernel had them
    /// already); on error none of the new state is in force and the group's
    /// previous frontends, if any, are as they were.
    pub result: Result<usize, DatapathError>,
}

/// Room in the three service maps.
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    services: usize,
    backends: usize,
    rev_nat: usize,
}

/// User space's copy of what the service maps hold.
pub(crate) struct ServiceIndex {
    frontends: BTreeMap<FrontendKey, ServiceRecord>,
    /// Backend ids in `MYELIN_BACKENDS` (of frontends, or reserved by a
    /// write in progress).
    backend_ids: BTreeSet<u32>,
    /// Reverse-NAT indexes in `MYELIN_REV_NAT`.
    rev_nat: BTreeSet<u16>,
    /// Frontends per cluster IP: the address's marker entry lives while
    /// this is non-zero.
    cluster_ips: BTreeMap<IpAddr, usize>,
    /// Entries in `MYELIN_SERVICES`: frontends, their slots and markers.
    service_entries: usize,
    capacity: Needs,
    next_backend: u32,
    next_rev_nat: u16,
}

/// One frontend's write, as needed to undo it.
struct Written {
    key: FrontendKey,
    old: Option<ServiceRecord>,
    new: ServiceRecord,
    fresh: Vec<u32>,
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

fn marker_key(ip: &IpAddr) -> ServiceKey {
    ServiceKey::cluster_ip(addr_bytes(ip), family_of(ip))
}

impl ServiceIndex {
    /// Reads the service maps. Whatever no complete frontend uses (slots
    /// past a frontend's count, backends and reverse-NAT entries of no
    /// frontend, markers of addresses without frontends, affinities of
    /// frontends gone) is deleted; missing markers are written.
    pub(crate) fn load(maps: &mut Maps) -> Result<Self, DatapathError> {
        let entries: Vec<(ServiceKey, ServiceEntry)> =
            maps.services.iter().filter_map(Result::ok).collect();
        let backends: BTreeMap<u32, L4Addr> = maps.backends.iter().filter_map(Result::ok).collect();
        let rev_nat: BTreeSet<u32> = maps.rev_nat.keys().filter_map(Result::ok).collect();
        let slots: BTreeMap<ServiceKey, u32> = entries
            .iter()
            .filter(|(k, _)| k.slot != 0)
            .map(|(k, e)| (*k, e.backend_id))
            .collect();
        let mut index = Self {
            frontends: BTreeMap::new(),
            backend_ids: BTreeSet::new(),
            rev_nat: BTreeSet::new(),
            cluster_ips: BTreeMap::new(),
            service_entries: 0,
            capacity: Needs {
                services: capacity(&maps.services, names::SERVICES)?,
                backends: capacity(&maps.backends, names::BACKENDS)?,
                rev_nat: capacity(&maps.rev_nat, names::REV_NAT)?,
            },
            next_backend: 1,
            next_rev_nat: 1,
        };
        let mut kept_slots = BTreeSet::new();
        for (key, entry) in entries.iter().filter(|(k, _)| k.slot == 0) {
            let Some(protocol) = service_protocol(key.protocol).filter(|_| !key.is_cluster_ip())
            else {
                continue;
            };
            let frontend = SocketAddr::new(ip_from(key.family, &key.addr), key.port);
            let mut record = ServiceRecord {
                frontend,
                protocol,
                rev_nat_index: entry.rev_nat_index,
                affinity_timeout_s: Some(entry.affinity_timeout_s()).filter(|t| *t != 0),
                backends: Vec::new(),
            };
            for slot in 1..=entry.count {
                let slot_key = ServiceKey { slot, ..*key };
                let found = slots
                    .get(&slot_key)
                    .and_then(|id| Some((*id, backends.get(id)?)));
                if let Some((id, address)) = found {
                    kept_slots.insert(slot_key);
                    record.backends.push(BackendRecord {
                        id,
                        address: socket_from(address),
                    });
                }
            }
            if record.backends.len() != usize::from(entry.count)
                || !rev_nat.contains(&u32::from(entry.rev_nat_index))
            {
                // Half written: the kernel could pick an empty slot. Taken
                // out whole; the agent's next sync writes it again.
                kept_slots.retain(|k| ServiceKey { slot: 0, ..*k } != *key);
                continue;
            }
            index.commit(&(frontend, protocol), record);
        }
        for (key, _) in &entries {
            let stale = if key.slot != 0 {
                !kept_slots.contains(key)
            } else if key.is_cluster_ip() {
                !index
                    .cluster_ips
                    .contains_key(&ip_from(key.family, &key.addr))
            } else {
                let frontend = SocketAddr::new(ip_from(key.family, &key.addr), key.port);
                service_protocol(key.protocol)
                    .is_none_or(|p| !index.frontends.contains_key(&(frontend, p)))
            };
            if stale {
                removed(maps.services.remove(key), names::SERVICES)?;
            }
        }
        for id in backends.keys().filter(|id| !index.backend_ids.contains(id)) {
            removed(maps.backends.remove(id), names::BACKENDS)?;
        }
        for id in rev_nat
            .iter()
            .filter(|i| u16::try_from(**i).map_or(true, |i| !index.rev_nat.contains(&i)))
        {
            removed(maps.rev_nat.remove(id), names::REV_NAT)?;
        }
        let live = index.rev_nat.clone();
        forget_affinities(maps, |k, _| !live.contains(&k.rev_nat_index))?;
        let markers: Vec<IpAddr> = index.cluster_ips.keys().copied().collect();
        for ip in markers {
            maps.services
                .insert(marker_key(&ip), ServiceEntry::default(), 0)
                .map_err(map_error(names::SERVICES))?;
        }
        index.service_entries = index
            .frontends
            .values()
            .map(|r| 1 + r.backends.len())
            .sum::<usize>()
            + index.cluster_ips.len();
        Ok(index)
    }

    /// The kernel's record of a frontend.
    pub(crate) fn record(&self, key: &FrontendKey) -> Option<&ServiceRecord> {
        self.frontends.get(key)
    }

    /// The frontends the kernel has.
    pub(crate) fn keys(&self) -> Vec<FrontendKey> {
        self.frontends.keys().copied().collect()
    }

    /// Records a frontend as written.
    fn commit(&mut self, key: &FrontendKey, record: ServiceRecord) {
        let entries = 1 + record.backends.len();
        if let Some(old) = self.frontends.remove(key) {
            self.service_entries -= 1 + old.backends.len();
            for b in &old.backends {
                self.backend_ids.remove(&b.id);
            }
        } else {
            self.rev_nat.insert(record.rev_nat_index);
            let count = self.cluster_ips.entry(key.0.ip()).or_insert(0);
            if *count == 0 {
                self.service_entries += 1;
            }
            *count += 1;
        }
        self.service_entries += entries;
        self.backend_ids
            .extend(record.backends.iter().map(|b| b.id));
        self.frontends.insert(*key, record);
    }

    /// Forgets a deleted frontend.
    fn forget(&mut self, key: &FrontendKey) {
        let Some(old) = self.frontends.remove(key) else {
            return;
        };
        self.service_entries -= 1 + old.backends.len();
        for b in &old.backends {
            self.backend_ids.remove(&b.id);
        }
        self.rev_nat.remove(&old.rev_nat_index);
        if let Some(count) = self.cluster_ips.get_mut(&key.0.ip()) {
            *count -= 1;
            if *count == 0 {
                self.cluster_ips.remove(&key.0.ip());
                self.service_entries -= 1;
            }
        }
    }

    /// A backend id not in use (from a cursor: linear over many writes).
    fn take_backend_id(&mut self) -> Option<u32> {
        if self.backend_ids.len() >= self.capacity.backends {
            return None;
        }
        loop {
            let id = self.next_backend.max(1);
            self.next_backend = id.wrapping_add(1);
            if self.backend_ids.insert(id) {
                return Some(id);
            }
        }
    }

    /// A reverse-NAT index not in use.
    fn take_rev_nat(&mut self) -> Option<u16> {
        if self.rev_nat.len() >= usize::from(u16::MAX).min(self.capacity.rev_nat) {
            return None;
        }
        loop {
            let index = self.next_rev_nat.max(1);
            self.next_rev_nat = index.wrapping_add(1);
            if !self.rev_nat.contains(&index) {
                return Some(index);
            }
        }
    }

    /// What writing `services` adds to each map at its peak (new slots are
    /// written before stale ones go).
    fn needs(&self, services: &[&Service]) -> Needs {
        let mut needs = Needs::default();
        let mut new_ips = BTreeSet::new();
        for service in services {
            let key = (service.frontend, service.protocol);
            let n = service.backends.len();
            match self.frontends.get(&key) {
                Some(old) => {
                    needs.services += n.saturating_sub(old.backends.len());
                    needs.backends += service
                        .backends
                        .iter()
                        .filter(|b| !old.backends.iter().any(|o| o.address == **b))
                        .count();
                }
                None => {
                    needs.services += 1 + n;
                    needs.backends += n;
                    needs.rev_nat += 1;
                    let ip = service.frontend.ip();
                    if !self.cluster_ips.contains_key(&ip) && new_ips.insert(ip) {
                        needs.services += 1;
                    }
                }
            }
        }
        needs
    }

    /// Checks that `needs` fits the maps' free room.
    fn reserve(&self, name: &str, needs: Needs) -> Result<(), DatapathError> {
        let maps = [
            (
                names::SERVICES,
                needs.services,
                self.service_entries,
                self.capacity.services,
            ),
            (
                names::BACKENDS,
                needs.backends,
                self.backend_ids.len(),
                self.capacity.backends,
            ),
            (
                names::REV_NAT,
                needs.rev_nat,
                self.rev_nat.len(),
                self.capacity.rev_nat.min(usize::from(u16::MAX)),
            ),
        ];
        for (map, needed, used, capacity) in maps {
            if needed > capacity.saturating_sub(used) {
                return Err(DatapathError::ServiceCapacity {
                    service: name.to_string(),
                    map,
                    needed,
                    free: capacity.saturating_sub(used),
                    capacity,
                });
            }
        }
        Ok(())
    }
}

/// Refuses a frontend the kernel cannot serve as written.
fn validate(service: &Service) -> Result<(), DatapathError> {
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
    Ok(())
}

/// Whether the kernel's frontend already is `service`.
fn unchanged(record: &ServiceRecord, service: &Service) -> bool {
    record.affinity_timeout_s == service.affinity_timeout_s
        && record.backends.len() == service.backends.len()
        && record
            .backends
            .iter()
            .zip(&service.backends)
            .all(|(r, s)| r.address == *s)
}

/// Programs a group's changed frontends all or nothing; returns how many
/// were written.
pub(crate) fn write_group(
    maps: &mut Maps,
    index: &mut ServiceIndex,
    name: &str,
    frontends: &[Service],
) -> Result<Vec<ServiceRecord>, DatapathError> {
    let mut seen = BTreeSet::new();
    for service in frontends {
        validate(service)?;
        if !seen.insert((service.frontend, service.protocol)) {
            return Err(DatapathError::InvalidService {
                frontend: service.frontend,
                reason: format!("listed twice in service {name}"),
            });
        }
    }
    let changed: Vec<&Service> = frontends
        .iter()
        .filter(|s| {
            index
                .frontends
                .get(&(s.frontend, s.protocol))
                .is_none_or(|r| !unchanged(r, s))
        })
        .collect();
    index.reserve(name, index.needs(&changed))?;
    let mut done: Vec<Written> = Vec::with_capacity(changed.len());
    for service in changed {
        match write_frontend(maps, index, service) {
            Ok(written) => done.push(written),
            Err(e) => {
                for written in done.into_iter().rev() {
                    undo(maps, index, written);
                }
                return Err(DatapathError::ServiceWrite {
                    service: name.to_string(),
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(done.into_iter().map(|w| w.new).collect())
}

/// Writes one frontend: fresh backends, slots, the frontend record (count),
/// then stale slots and backends, so the kernel never picks an empty slot.
/// Last, the session affinities that led to a removed backend (or all of
/// the frontend's, when it no longer has affinity) are forgotten. On error
/// what it wrote is undone.
fn write_frontend(
    maps: &mut Maps,
    index: &mut ServiceIndex,
    service: &Service,
) -> Result<Written, DatapathError> {
    let key = (service.frontend, service.protocol);
    let old = index.frontends.get(&key).cloned();
    let no_room = |map: &'static str| DatapathError::InvalidService {
        frontend: service.frontend,
        reason: format!("no free entry in {map}"),
    };
    let rev_nat_index = match &old {
        Some(record) => record.rev_nat_index,
        None => index
            .take_rev_nat()
            .ok_or_else(|| no_room(names::REV_NAT))?,
    };
    let mut written = Written {
        key,
        old,
        new: ServiceRecord {
            frontend: service.frontend,
            protocol: service.protocol,
            rev_nat_index,
            affinity_timeout_s: service.affinity_timeout_s,
            backends: Vec::with_capacity(service.backends.len()),
        },
        fresh: Vec::new(),
    };
    let result = fill_frontend(maps, index, service, &mut written);
    match result {
        Ok(()) => {
            let new = written.new.clone();
            index.commit(&key, new);
            forget_removed_affinities(maps, &written)?;
            Ok(written)
        }
        Err(e) => {
            undo_unfinished(maps, index, &written);
            Err(e)
        }
    }
}

fn fill_frontend(
    maps: &mut Maps,
    index: &mut ServiceIndex,
    service: &Service,
    written: &mut Written,
) -> Result<(), DatapathError> {
    let protocol = service.protocol.number();
    let old: BTreeMap<SocketAddr, u32> = written
        .old
        .as_ref()
        .map(|r| r.backends.iter().map(|b| (b.address, b.id)).collect())
        .unwrap_or_default();
    for address in &service.backends {
        let id = match old.get(address) {
            Some(id) => *id,
            None => {
                let id = index
                    .take_backend_id()
                    .ok_or(DatapathError::InvalidService {
                        frontend: service.frontend,
                        reason: format!("no free entry in {}", names::BACKENDS),
                    })?;
                written.fresh.push(id);
                maps.backends
                    .insert(id, l4_addr(address), 0)
                    .map_err(map_error(names::BACKENDS))?;
                id
            }
        };
        written.new.backends.push(BackendRecord {
            id,
            address: *address,
        });
    }
    if written.old.is_none() {
        maps.rev_nat
            .insert(
                u32::from(written.new.rev_nat_index),
                l4_addr(&service.frontend),
                0,
            )
            .map_err(map_error(names::REV_NAT))?;
    }
    for (slot, backend) in written.new.backends.iter().enumerate() {
        let key = service_key(&service.frontend, protocol, slot as u16 + 1);
        let entry = ServiceEntry {
            backend_id: backend.id,
            ..ServiceEntry::default()
        };
        maps.services
            .insert(key, entry, 0)
            .map_err(map_error(names::SERVICES))?;
    }
    write_master(maps, &written.new)?;
    if written.old.is_none() {
        maps.services
            .insert(
                marker_key(&service.frontend.ip()),
                ServiceEntry::default(),
                0,
            )
            .map_err(map_error(names::SERVICES))?;
    }
    let old_count = written.old.as_ref().map_or(0, |r| r.backends.len());
    for slot in written.new.backends.len()..old_count {
        let key = service_key(&service.frontend, protocol, slot as u16 + 1);
        removed(maps.services.remove(&key), names::SERVICES)?;
    }
    let kept: BTreeSet<u32> = written.new.backends.iter().map(|b| b.id).collect();
    for id in old.values().filter(|id| !kept.contains(id)) {
        removed(maps.backends.remove(id), names::BACKENDS)?;
    }
    Ok(())
}

fn write_master(maps: &mut Maps, record: &ServiceRecord) -> Result<(), DatapathError> {
    let key = service_key(&record.frontend, record.protocol.number(), 0);
    let entry = ServiceEntry::frontend(
        record.backends.len() as u16,
        record.rev_nat_index,
        record.affinity_timeout_s.unwrap_or(0),
    );
    maps.services
        .insert(key, entry, 0)
        .map_err(map_error(names::SERVICES))
}

/// Session affinities that lead to a backend the write removed (all of the
/// frontend's, when it no longer has affinity). The index and the backend
/// ids are reused once free, so an entry left behind could send a client to
/// another service's backend.
fn forget_removed_affinities(maps: &mut Maps, written: &Written) -> Result<(), DatapathError> {
    let Some(old) = written
        .old
        .as_ref()
        .filter(|o| o.affinity_timeout_s.is_some())
    else {
        return Ok(());
    };
    let index = old.rev_nat_index;
    if written.new.affinity_timeout_s.is_none() {
        return forget_affinities(maps, |k, _| k.rev_nat_index == index);
    }
    let kept: BTreeSet<u32> = written.new.backends.iter().map(|b| b.id).collect();
    if old.backends.iter().all(|b| kept.contains(&b.id)) {
        return Ok(());
    }
    forget_affinities(maps, |k, e| {
        k.rev_nat_index == index && !kept.contains(&e.backend_id)
    })
}

/// Deletes the session affinity entries `stale` picks.
fn forget_affinities(
    maps: &mut Maps,
    stale: impl Fn(&AffinityKey, &AffinityEntry) -> bool,
) -> Result<(), DatapathError> {
    let keys: Vec<AffinityKey> = maps
        .affinity
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| stale(k, e))
        .map(|(k, _)| k)
        .collect();
    for key in &keys {
        removed(maps.affinity.remove(key), names::AFFINITY)?;
    }
    Ok(())
}

/// Takes back a frontend write that failed half way (best effort: the
/// error that made it fail is the one reported).
fn undo_unfinished(maps: &mut Maps, index: &mut ServiceIndex, written: &Written) {
    let protocol = written.key.1.number();
    let frontend = written.key.0;
    match &written.old {
        Some(old) => {
            for (slot, backend) in old.backends.iter().enumerate() {
                let key = service_key(&frontend, protocol, slot as u16 + 1);
                let entry = ServiceEntry {
                    backend_id: backend.id,
                    ..ServiceEntry::default()
                };
                let _ = maps.services.insert(key, entry, 0);
            }
            let _ = write_master(maps, old);
            for slot in old.backends.len()..service_slots(written) {
                let _ = maps
                    .services
                    .remove(&service_key(&frontend, protocol, slot as u16 + 1));
            }
        }
        None => {
            let _ = maps.services.remove(&service_key(&frontend, protocol, 0));
            for slot in 0..service_slots(written) {
                let _ = maps
                    .services
                    .remove(&service_key(&frontend, protocol, slot as u16 + 1));
            }
            let _ = maps.rev_nat.remove(&u32::from(written.new.rev_nat_index));
            if !index.cluster_ips.contains_key(&frontend.ip()) {
                let _ = maps.services.remove(&marker_key(&frontend.ip()));
            }
        }
    }
    for id in &written.fresh {
        let _ = maps.backends.remove(id);
        index.backend_ids.remove(id);
    }
}

/// Slots a write may have filled.
fn service_slots(written: &Written) -> usize {
    written
        .new
        .backends
        .len()
        .max(written.fresh.len())
        .max(written.old.as_ref().map_or(0, |o| o.backends.len()))
}

/// Takes back a finished frontend write: the old frontend again, or none.
fn undo(maps: &mut Maps, index: &mut ServiceIndex, written: Written) {
    match &written.old {
        Some(old) => {
            let service = Service {
                frontend: old.frontend,
                protocol: old.protocol,
                backends: old.backends.iter().map(|b| b.address).collect(),
                affinity_timeout_s: old.affinity_timeout_s,
            };
            let _ = write_frontend(maps, index, &service);
        }
        None => {
            let _ = delete_frontend(maps, index, &written.key);
        }
    }
}

/// Removes a frontend, its backends, its session affinities, its reverse
/// NAT and (with the address's last frontend) its cluster IP marker.
/// Idempotent.
pub(crate) fn delete_frontend(
    maps: &mut Maps,
    index: &mut ServiceIndex,
    key: &FrontendKey,
) -> Result<(), DatapathError> {
    let Some(record) = index.frontends.get(key).cloned() else {
        return Ok(());
    };
    let protocol = key.1.number();
    // The frontend first: new connections stop finding it at once.
    removed(
        maps.services.remove(&service_key(&key.0, protocol, 0)),
        names::SERVICES,
    )?;
    for slot in 1..=record.backends.len() {
        let slot_key = service_key(&key.0, protocol, slot as u16);
        removed(maps.services.remove(&slot_key), names::SERVICES)?;
    }
    for backend in &record.backends {
        removed(maps.backends.remove(&backend.id), names::BACKENDS)?;
    }
    if record.affinity_timeout_s.is_some() {
        // Before the reverse-NAT index is freed for another frontend.
        let rev_nat_index = record.rev_nat_index;
        forget_affinities(maps, |k, _| k.rev_nat_index == rev_nat_index)?;
    }
    removed(
        maps.rev_nat.remove(&u32::from(record.rev_nat_index)),
        names::REV_NAT,
    )?;
    if index.cluster_ips.get(&key.0.ip()) == Some(&1) {
        removed(
            maps.services.remove(&marker_key(&key.0.ip())),
            names::SERVICES,
        )?;
    }
    index.forget(key);
    Ok(())
}

/// The kernel's services: every frontend, its reverse-NAT index, affinity
/// and backends in slot order (read from the maps, not the index).
pub(crate) fn read_services(maps: &Maps) -> Vec<ServiceRecord> {
    let entries: BTreeMap<ServiceKey, ServiceEntry> =
        maps.services.iter().filter_map(Result::ok).collect();
    let mut out = Vec::new();
    for (key, master) in entries.iter().filter(|(k, _)| k.slot == 0) {
        let Some(protocol) = service_protocol(key.protocol).filter(|_| !key.is_cluster_ip()) else {
            continue;
        };
        let backends = (1..=master.count)
            .filter_map(|slot| {
                let id = entries.get(&ServiceKey { slot, ..*key })?.backend_id;
                let address = maps.backends.get(&id, 0).ok()?;
                Some(BackendRecord {
                    id,
                    address: socket_from(&address),
                })
            })
            .collect();
        out.push(ServiceRecord {
            frontend: SocketAddr::new(ip_from(key.family, &key.addr), key.port),
            protocol,
            rev_nat_index: master.rev_nat_index,
            affinity_timeout_s: Some(master.affinity_timeout_s()).filter(|t| *t != 0),
            backends,
        });
    }
    out.sort_by_key(|r| (r.frontend, r.protocol));
    out
}
