//! Numeric security identities: Cilium's reserved numbers, a cluster-wide
//! allocator behind a store interface, and node-local CIDR identities.
//!
//! See <https://docs.cilium.io/en/stable/internals/security-identities/>.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};

/// A numeric security identity, as carried in packets and flows.
pub type Identity = u32;

/// The wildcard in policy entries: any peer identity.
pub const ANY: Identity = 0;
/// The local node.
pub const HOST: Identity = 1;
/// Outside the cluster.
pub const WORLD: Identity = 2;
/// Pods not managed by the mesh.
pub const UNMANAGED: Identity = 3;
/// Health-check endpoints.
pub const HEALTH: Identity = 4;
/// Endpoints whose identity is not resolved yet.
pub const INIT: Identity = 5;
/// Other nodes.
pub const REMOTE_NODE: Identity = 6;
/// The Kubernetes API server.
pub const KUBE_APISERVER: Identity = 7;
/// The ingress proxy.
pub const INGRESS: Identity = 8;
/// IPv4 outside the cluster (dual-stack Cilium; Myelin maps the world to
/// [`WORLD`] and keeps this number reserved so flows read the same).
pub const WORLD_IPV4: Identity = 9;
/// IPv6 outside the cluster (see [`WORLD_IPV4`]).
pub const WORLD_IPV6: Identity = 10;
/// First identity of the cluster-wide range.
pub const CLUSTER_MIN: Identity = 256;
/// Last identity of the cluster-wide range.
pub const CLUSTER_MAX: Identity = 65535;
/// Bit 24 marks node-local identities (CIDR-derived), as in Cilium.
pub const LOCAL_SCOPE: Identity = 1 << 24;

/// The reserved identities with their names, in number order.
pub const RESERVED: &[(Identity, &str)] = &[
    (HOST, "host"),
    (WORLD, "world"),
    (UNMANAGED, "unmanaged"),
    (HEALTH, "health"),
    (INIT, "init"),
    (REMOTE_NODE, "remote-node"),
    (KUBE_APISERVER, "kube-apiserver"),
    (INGRESS, "ingress"),
    (WORLD_IPV4, "world-ipv4"),
    (WORLD_IPV6, "world-ipv6"),
];

/// The labels of a reserved identity (`reserved:NAME`; the world variants
/// also carry `reserved:world`, as in Cilium).
pub fn reserved_labels(id: Identity) -> Option<LabelSet> {
    let (_, name) = RESERVED.iter().find(|(n, _)| *n == id)?;
    let mut set = LabelSet::new();
    set.insert(SOURCE_RESERVED, name, "");
    if matches!(id, WORLD_IPV4 | WORLD_IPV6) {
        set.insert(SOURCE_RESERVED, "world", "");
    }
    Some(set)
}

/// The labels of a CIDR identity: the prefix, and `reserved:world` because
/// every CIDR peer lies outside the cluster.
pub fn cidr_labels(prefix: &IpNet) -> LabelSet {
    let mut set = LabelSet::new();
    set.insert(SOURCE_CIDR, &prefix.to_string(), "");
    set.insert(SOURCE_RESERVED, "world", "");
    set
}

/// When identities nobody holds are deleted ([`IdentityStore::collect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long an identity stays after its last holder let go, so that a pod coming back
    /// with the same labels (a restart, a rollout) keeps its number and flows keep reading
    /// the same; also covers holders that refresh late.
    pub grace_secs: u64,
    /// A holder (an agent) that has not refreshed its holds for this long is taken for
    /// gone (a removed node) and its holds dropped.
    pub holder_timeout_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        // Cilium's identity GC defaults: an unused identity lives for at least 15 minutes.
        Self {
            grace_secs: 15 * 60,
            holder_timeout_secs: 30 * 60,
        }
    }
}

/// Where cluster-wide identities live: in process or a shared file now, etcd
/// or Kubernetes later. Every agent that uses an identity holds it under its
/// own holder name; an identity no holder has held for the retention's grace
/// is deleted, and its number may later go to other labels. Binding and
/// holding happen in one step ([`IdentityStore::acquire`]), so an identity
/// is never collected between an agent finding it and holding it.
pub trait IdentityStore: Send + Sync + std::fmt::Debug {
    /// The id bound to `labels`, if any.
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError>;
    /// The id of `labels` — bound already, or bound now to the first free
    /// number from `hint` on (wrapping in the cluster range) — held by
    /// `holder` as of `now` (unix seconds).
    fn acquire(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
        now: u64,
    ) -> Result<Identity, IdentityError>;
    /// States the complete set of identities `holder` uses as of `now`: they are held, every
    /// other hold of `holder` is let go.
    fn refresh(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), IdentityError>;
    /// Drops the holds of holders silent for longer than the retention allows and deletes
    /// the identities nobody has held for its grace; returns the deleted ones.
    fn collect(&self, now: u64, retention: Retention) -> Result<Vec<Identity>, IdentityError>;
    /// Every binding.
    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError>;
}

/// The bindings, both ways, and who holds them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Table {
    ids: BTreeMap<Identity, LabelSet>,
    /// Per identity: holder → when it last said it holds it (unix seconds).
    #[serde(default)]
    holders: BTreeMap<Identity, BTreeMap<String, u64>>,
    /// Per identity nobody holds: since when (unix seconds).
    #[serde(default)]
    released: BTreeMap<Identity, u64>,
    #[serde(skip)]
    by_labels: HashMap<LabelSet, Identity>,
}

impl Table {
    fn index(&mut self) {
        self.by_labels = self.ids.iter().map(|(id, l)| (l.clone(), *id)).collect();
    }

    fn acquire(
        &mut self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
        now: u64,
    ) -> Result<Identity, IdentityError> {
        let id = match self.by_labels.get(labels) {
            Some(id) => *id,
            None => {
                let range = CLUSTER_MAX - CLUSTER_MIN + 1;
                let start = hint.clamp(CLUSTER_MIN, CLUSTER_MAX) - CLUSTER_MIN;
                let id = (0..range)
                    .map(|step| CLUSTER_MIN + (start + step) % range)
                    .find(|id| !self.ids.contains_key(id))
                    .ok_or(IdentityError::Exhausted)?;
                self.ids.insert(id, labels.clone());
                self.by_labels.insert(labels.clone(), id);
                id
            }
        };
        self.holders
            .entry(id)
            .or_default()
            .insert(holder.to_owned(), now);
        self.released.remove(&id);
        Ok(id)
    }

    /// Removes `holder` from `id`'s holders; the identity is released when it was the last.
    fn let_go(&mut self, id: Identity, holder: &str, since: u64) {
        if let Some(holders) = self.holders.get_mut(&id) {
            holders.remove(holder);
            if holders.is_empty() {
                self.holders.remove(&id);
                self.released.insert(id, since);
            }
        }
    }

    fn refresh(&mut self, holder: &str, held: &BTreeSet<Identity>, now: u64) {
        let ids: Vec<Identity> = self.ids.keys().copied().collect();
        for id in ids {
            if held.contains(&id) {
                self.holders
                    .entry(id)
                    .or_default()
                    .insert(holder.to_owned(), now);
                self.released.remove(&id);
            } else {
                self.let_go(id, holder, now);
            }
        }
    }

    fn collect(&mut self, now: u64, retention: Retention) -> Vec<Identity> {
        let stale: Vec<(Identity, String, u64)> = self
            .holders
            .iter()
            .flat_map(|(id, holders)| {
                holders
                    .iter()
                    .filter(|(_, seen)| now.saturating_sub(**seen) > retention.holder_timeout_secs)
                    .map(|(holder, seen)| (*id, holder.clone(), *seen))
            })
            .collect();
        for (id, holder, seen) in stale {
            self.let_go(id, &holder, seen);
        }
        // Bindings from before holds were recorded start their grace now.
        for id in self.ids.keys() {
            if !self.holders.contains_key(id) {
                self.released.entry(*id).or_insert(now);
            }
        }
        let expired: Vec<Identity> = self
            .released
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= retention.grace_secs)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.released.remove(id);
            if let Some(labels) = self.ids.remove(id) {
                self.by_labels.remove(&labels);
            }
        }
        expired
    }
}

/// An in-process store; share it (`Arc`) between agents of one process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    table: Mutex<Table>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> Result<std::sync::MutexGuard<'_, Table>, IdentityError> {
        self.table.lock().map_err(|_| IdentityError::Poisoned)
    }
}

impl IdentityStore for MemoryStore {
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError> {
        Ok(self.table()?.by_labels.get(labels).copied())
    }

    fn acquire(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
        now: u64,
    ) -> Result<Identity, IdentityError> {
        self.table()?.acquire(holder, labels, hint, now)
    }

    fn refresh(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), IdentityError> {
        self.table()?.refresh(holder, held, now);
        Ok(())
    }

    fn collect(&self, now: u64, retention: Retention) -> Result<Vec<Identity>, IdentityError> {
        Ok(self.table()?.collect(now, retention))
    }

    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError> {
        Ok(self.table()?.ids.clone())
    }
}

/// A store in a JSON file, so identities survive restarts. Every change
/// takes an exclusive lock on `FILE.lock`, re-reads the file and replaces it
/// atomically (write a temporary file, fsync, rename), so several processes
/// may share one file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
}

impl FileStore {
    /// A store at `path`; the file is created on the first allocation.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self {
            path,
            lock_path: PathBuf::from(lock),
        }
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> IdentityError {
        IdentityError::Io {
            what: what.to_string(),
            path: path.display().to_string(),
            source: e,
        }
    }

    fn locked(&self) -> Result<File, IdentityError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io("open the lock file", &self.lock_path, e))?;
        file.lock()
            .map_err(|e| self.io("lock", &self.lock_path, e))?;
        Ok(file)
    }

    fn read(&self) -> Result<Table, IdentityError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Table::default()),
            Err(e) => return Err(self.io("read", &self.path, e)),
        };
        let mut table: Table = serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        table.index();
        Ok(table)
    }

    fn write(&self, table: &Table) -> Result<(), IdentityError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string_pretty(table).map_err(|e| IdentityError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        // The store names every workload of the cluster: root's only.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io("create", &tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io("rename onto", &self.path, e))
    }

    /// Runs `change` on the table under the lock and writes the result.
    fn change<T>(&self, change: impl FnOnce(&mut Table) -> T) -> Result<T, IdentityError> {
        let _lock = self.locked()?;
        let mut table = self.read()?;
        let out = change(&mut table);
        self.write(&table)?;
        Ok(out)
    }
}

impl IdentityStore for FileStore {
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError> {
        Ok(self.read()?.by_labels.get(labels).copied())
    }

    fn acquire(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
        now: u64,
    ) -> Result<Identity, IdentityError> {
        self.change(|table| table.acquire(holder, labels, hint, now))?
    }

    fn refresh(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), IdentityError> {
        self.change(|table| table.refresh(holder, held, now))
    }

    fn collect(&self, now: u64, retention: Retention) -> Result<Vec<Identity>, IdentityError> {
        self.change(|table| table.collect(now, retention))
    }

    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError> {
        Ok(self.read()?.ids)
    }
}

/// Gives each distinct label set a cluster-wide number in
/// [`CLUSTER_MIN`]..=[`CLUSTER_MAX`] through an [`IdentityStore`], holding
/// it under this allocator's holder name and caching what it holds.
#[derive(Debug, Clone)]
pub struct Allocator {
    store: Arc<dyn IdentityStore>,
    holder: String,
    /// Only identities this holder holds in the store: a number it let go may be collected
    /// and given to other labels, so it must be acquired again, not remembered.
    cache: HashMap<LabelSet, Identity>,
    next: Identity,
}

impl Allocator {
    /// An allocator over `store` holding identities as `holder` (unique per agent: the
    /// node name).
    pub fn new(store: Arc<dyn IdentityStore>, holder: impl Into<String>) -> Self {
        Self {
            store,
            holder: holder.into(),
            cache: HashMap::new(),
            next: CLUSTER_MIN,
        }
    }

    /// The name this allocator holds identities as: the node's.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The identity of `labels`, held by this allocator's holder: the one bound already
    /// (by any agent), or a new one.
    pub fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        if let Some(id) = self.cache.get(labels) {
            return Ok(*id);
        }
        let id = self
            .store
            .acquire(&self.holder, labels, self.next, unix_now())?;
        if id >= self.next {
            self.next = if id >= CLUSTER_MAX {
                CLUSTER_MIN
            } else {
                id + 1
            };
        }
        self.cache.insert(labels.clone(), id);
        Ok(id)
    }

    /// States the identities this holder uses now (see [`IdentityStore::refresh`]) and
    /// forgets the others.
    pub fn refresh(&mut self, in_use: &BTreeSet<Identity>, now: u64) -> Result<(), IdentityError> {
        self.cache.retain(|_, id| in_use.contains(id));
        self.store.refresh(&self.holder, in_use, now)
    }

    /// Collects unheld identities in the store (see [`IdentityStore::collect`]).
    pub fn collect(&self, now: u64, retention: Retention) -> Result<Vec<Identity>, IdentityError> {
        self.store.collect(now, retention)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Node-local identities for CIDR prefixes ([`LOCAL_SCOPE`] and up),
/// reference-counted by the policies that name them.
#[derive(Debug, Clone, Default)]
pub struct LocalIdentities {
    by_prefix: BTreeMap<IpNet, (Identity, usize)>,
    free: Vec<Identity>,
    next: Identity,
}

impl LocalIdentities {
    /// Takes a reference on `prefix`; returns its identity and whether it is new.
    pub fn acquire(&mut self, prefix: IpNet) -> (Identity, bool) {
        if let Some((id, refs)) = self.by_prefix.get_mut(&prefix) {
            *refs += 1;
            return (*id, false);
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            LOCAL_SCOPE + self.next
        });
        self.by_prefix.insert(prefix, (id, 1));
        (id, true)
    }

    /// Drops a reference on `prefix`; returns its identity when it is gone.
    pub fn release(&mut self, prefix: &IpNet) -> Option<Identity> {
        let (id, refs) = self.by_prefix.get_mut(prefix)?;
        *refs -= 1;
        if *refs > 0 {
            return None;
        }
        let id = *id;
        self.by_prefix.remove(prefix);
        self.free.push(id);
        Some(id)
    }

    /// The identity of `prefix`, when some policy names it.
    pub fn get(&self, prefix: &IpNet) -> Option<Identity> {
        self.by_prefix.get(prefix).map(|(id, _)| *id)
    }

    /// Every prefix with its identity.
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, Identity)> {
        self.by_prefix.iter().map(|(p, (id, _))| (p, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> LabelSet {
        let mut set = LabelSet::new();
        set.insert("k8s", "app", app);
        set
    }

    const RETENTION: Retention = Retention {
        grace_secs: 100,
        holder_timeout_secs: 1000,
    };

    #[test]
    fn an_identity_lives_while_held_and_for_the_grace_after() {
        let store = MemoryStore::new();
        let a = store
            .acquire("node1", &labels("a"), CLUSTER_MIN, 0)
            .unwrap();
        let b = store
            .acquire("node2", &labels("b"), CLUSTER_MIN, 0)
            .unwrap();
        assert_ne!(a, b);
        // node2 also uses a; node1 stops using it.
        assert_eq!(
            store
                .acquire("node2", &labels("a"), CLUSTER_MIN, 10)
                .unwrap(),
            a
        );
        store.refresh("node1", &BTreeSet::new(), 20).unwrap();
        assert!(
            store.collect(500, RETENTION).unwrap().is_empty(),
            "node2 holds a"
        );
        // node2 lets go of a at 600: a stays for the grace, then goes; b is still held.
        store.refresh("node2", &BTreeSet::from([b]), 600).unwrap();
        assert!(store.collect(699, RETENTION).unwrap().is_empty());
        assert_eq!(store.collect(700, RETENTION).unwrap(), vec![a]);
        assert_eq!(store.lookup(&labels("a")).unwrap(), None);
        assert_eq!(store.lookup(&labels("b")).unwrap(), Some(b));
        // a's number is free again; acquiring a again inside the grace would have kept it.
        let c = store.acquire("node1", &labels("c"), a, 701).unwrap();
        assert_eq!(c, a);
    }

    #[test]
    fn acquiring_again_within_the_grace_keeps_the_number() {
        let store = MemoryStore::new();
        let a = store
            .acquire("node1", &labels("a"), CLUSTER_MIN, 0)
            .unwrap();
        store.refresh("node1", &BTreeSet::new(), 10).unwrap();
        assert_eq!(
            store
                .acquire("node1", &labels("a"), CLUSTER_MIN, 50)
                .unwrap(),
            a
        );
        // The grace counted from 10 would have ended at 110; a is held again.
        assert!(store.collect(120, RETENTION).unwrap().is_empty());
        assert_eq!(store.lookup(&labels("a")).unwrap(), Some(a));
    }

    #[test]
    fn a_silent_holder_is_taken_for_gone() {
        let store = MemoryStore::new();
        let a = store.acquire("gone", &labels("a"), CLUSTER_MIN, 0).unwrap();
        // Past the holder timeout its hold counts from its last refresh: released at 0,
        // so the grace has long passed.
        assert!(store.collect(1000, RETENTION).unwrap().is_empty());
        assert_eq!(store.collect(1001, RETENTION).unwrap(), vec![a]);
    }

    #[test]
    fn the_file_store_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        FileStore::new(&path)
            .acquire("node1", &labels("a"), CLUSTER_MIN, 0)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn file_store_keeps_holds_across_processes_and_reads_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        // A file written before holds were recorded: bindings only.
        let old = FileStore::new(&path)
            .acquire("node0", &labels("old"), 300, 0)
            .unwrap();
        assert_eq!(old, 300);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("holders");
        object.remove("released");
        std::fs::write(&path, json.to_string()).unwrap();
        let store = FileStore::new(&path);
        assert!(store.list().unwrap().contains_key(&300));
        // Unheld old bindings start their grace at the first collection.
        assert!(store.collect(1000, RETENTION).unwrap().is_empty());
        let a = FileStore::new(&path)
            .acquire("node1", &labels("a"), CLUSTER_MIN, 1000)
            .unwrap();
        assert_eq!(
            FileStore::new(&path).collect(1100, RETENTION).unwrap(),
            vec![300]
        );
        assert_eq!(FileStore::new(&path).lookup(&labels("a")).unwrap(), Some(a));
    }

    #[test]
    fn allocator_forgets_what_it_let_go() {
        let store: Arc<dyn IdentityStore> = Arc::new(MemoryStore::new());
        let mut node1 = Allocator::new(store.clone(), "node1");
        let a = node1.allocate(&labels("a")).unwrap();
        node1.refresh(&BTreeSet::new(), unix_now()).unwrap();
        node1
            .collect(
                unix_now() + 1000,
                Retention {
                    grace_secs: 0,
                    holder_timeout_secs: 10_000,
                },
            )
            .unwrap();
        // Another agent takes the freed number for other labels; node1 must not hand out its
        // stale cached number for "a" now.
        let mut node2 = Allocator::new(store.clone(), "node2");
        let b = node2.allocate(&labels("b")).unwrap();
        assert_eq!(b, a, "the number was free");
        let again = node1.allocate(&labels("a")).unwrap();
        assert_ne!(again, b);
    }
}
