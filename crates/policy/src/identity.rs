//! Numeric security identities: Cilium's reserved numbers, a cluster-wide
//! allocator behind a store interface, and node-local CIDR identities.
//!
//! See <https://docs.cilium.io/en/stable/internals/security-identities/>.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
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

/// What [`IdentityStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The id is now bound to the labels.
    Created,
    /// The labels were already bound (by another agent) to this id.
    LabelsBound(Identity),
    /// The id is bound to other labels; try another.
    IdTaken,
}

/// Where cluster-wide identities live: in process now, etcd or Kubernetes
/// later. `create` is a compare-and-swap: it binds only when neither the
/// labels nor the id are bound, so two agents sharing a store never give one
/// number to two label sets.
pub trait IdentityStore: Send + Sync + std::fmt::Debug {
    /// The id bound to `labels`, if any.
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError>;
    /// Binds `id` to `labels` unless either is bound already.
    fn create(&self, id: Identity, labels: &LabelSet) -> Result<CreateOutcome, IdentityError>;
    /// Every binding.
    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError>;
}

/// The bindings, both ways.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Table {
    ids: BTreeMap<Identity, LabelSet>,
    #[serde(skip)]
    by_labels: HashMap<LabelSet, Identity>,
}

impl Table {
    fn index(&mut self) {
        self.by_labels = self.ids.iter().map(|(id, l)| (l.clone(), *id)).collect();
    }

    fn create(&mut self, id: Identity, labels: &LabelSet) -> CreateOutcome {
        if let Some(bound) = self.by_labels.get(labels) {
            return CreateOutcome::LabelsBound(*bound);
        }
        if self.ids.contains_key(&id) {
            return CreateOutcome::IdTaken;
        }
        self.ids.insert(id, labels.clone());
        self.by_labels.insert(labels.clone(), id);
        CreateOutcome::Created
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
}

impl IdentityStore for MemoryStore {
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError> {
        let table = self.table.lock().map_err(|_| IdentityError::Poisoned)?;
        Ok(table.by_labels.get(labels).copied())
    }

    fn create(&self, id: Identity, labels: &LabelSet) -> Result<CreateOutcome, IdentityError> {
        let mut table = self.table.lock().map_err(|_| IdentityError::Poisoned)?;
        Ok(table.create(id, labels))
    }

    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError> {
        let table = self.table.lock().map_err(|_| IdentityError::Poisoned)?;
        Ok(table.ids.clone())
    }
}

/// A store in a JSON file, so identities survive restarts. Every `create`
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
        let mut file = File::create(&tmp).map_err(|e| self.io("create", &tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io("rename onto", &self.path, e))
    }
}

impl IdentityStore for FileStore {
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError> {
        Ok(self.read()?.by_labels.get(labels).copied())
    }

    fn create(&self, id: Identity, labels: &LabelSet) -> Result<CreateOutcome, IdentityError> {
        let _lock = self.locked()?;
        let mut table = self.read()?;
        let outcome = table.create(id, labels);
        if outcome == CreateOutcome::Created {
            self.write(&table)?;
        }
        Ok(outcome)
    }

    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError> {
        Ok(self.read()?.ids)
    }
}

/// Gives each distinct label set a cluster-wide number in
/// [`CLUSTER_MIN`]..=[`CLUSTER_MAX`] through an [`IdentityStore`], caching
/// what it learnt.
#[derive(Debug, Clone)]
pub struct Allocator {
    store: Arc<dyn IdentityStore>,
    cache: HashMap<LabelSet, Identity>,
    next: Identity,
}

impl Allocator {
    /// An allocator over `store`.
    pub fn new(store: Arc<dyn IdentityStore>) -> Self {
        Self {
            store,
            cache: HashMap::new(),
            next: CLUSTER_MIN,
        }
    }

    /// The identity of `labels`, creating it in the store when new. When
    /// another agent binds the labels first, its number is adopted; when it
    /// takes the candidate number, the next free one is tried.
    pub fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        if let Some(id) = self.cache.get(labels) {
            return Ok(*id);
        }
        if let Some(id) = self.store.lookup(labels)? {
            self.cache.insert(labels.clone(), id);
            return Ok(id);
        }
        let range = CLUSTER_MAX - CLUSTER_MIN + 1;
        for step in 0..range {
            let candidate = CLUSTER_MIN + (self.next - CLUSTER_MIN + step) % range;
            match self.store.create(candidate, labels)? {
                CreateOutcome::Created => {
                    self.next = candidate + 1;
                    if self.next > CLUSTER_MAX {
                        self.next = CLUSTER_MIN;
                    }
                    self.cache.insert(labels.clone(), candidate);
                    return Ok(candidate);
                }
                CreateOutcome::LabelsBound(id) => {
                    self.cache.insert(labels.clone(), id);
                    return Ok(id);
                }
                CreateOutcome::IdTaken => {}
            }
        }
        Err(IdentityError::Exhausted)
    }
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
