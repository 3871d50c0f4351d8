//! Watching a prefix: list, then watch from the list's revision; after a broken stream or
//! a compacted revision, list again and deliver only what changed against what the
//! consumer last saw.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher as _};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use myelin_policy::{Identity, LabelSet};
use tokio::sync::mpsc;

use crate::client::Conn;
use crate::keys::parse_labels;
use crate::{Endpoint, Keys, Node, ResourceKey, Store, StoreError};

/// A change under a watched prefix, as raw keys and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// The key was created or its value changed.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// The key was deleted (or expired with its lease).
    Delete {
        /// The key.
        key: String,
    },
    /// Everything up to now was delivered: sent after the first listing and after every
    /// resync, so the consumer knows its view is complete.
    Synced,
}

/// What the consumer has seen: key → a digest of its value. The consumer keeps the
/// decoded entries; a digest is all a resync by difference needs, so a watch of 100,000
/// endpoints does not hold a second, raw copy of each (key and JSON, ~0.3 KB).
pub type Seen = BTreeMap<Box<str>, u64>;

/// The digest of a value. Two values with one digest (a 64-bit hash; odds of 2⁻⁶⁴ per
/// change) would read as a value written again.
pub fn digest(value: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(value);
    hasher.finish()
}

/// A listing compared with what the consumer saw, entry by entry as the listing is read,
/// so that it is never held twice: a put for every new or changed key, then a delete for
/// every key gone; nothing for what is unchanged.
#[derive(Debug)]
pub struct Resync {
    before: Seen,
    after: Seen,
}

impl Resync {
    /// A resync of a consumer that saw `before`.
    pub fn new(before: Seen) -> Self {
        Self {
            before,
            after: Seen::new(),
        }
    }

    /// One entry of the listing: the event to deliver, if it is new or changed.
    pub fn listed(&mut self, key: String, value: Vec<u8>) -> Option<RawEvent> {
        let digest = digest(&value);
        let unchanged = self.before.remove(key.as_str()) == Some(digest);
        self.after.insert(key.as_str().into(), digest);
        (!unchanged).then_some(RawEvent::Put { key, value })
    }

    /// A listing that broke off: what the consumer has seen by then, the entries listed
    /// so far as listed and the others as before.
    pub fn abandon(mut self) -> Seen {
        self.before.append(&mut self.after);
        self.before
    }

    /// After the last entry: the deletes of the keys the listing no longer has, and what
    /// the consumer has seen once they are delivered.
    pub fn finish(self) -> (Vec<RawEvent>, Seen) {
        let deletes = self
            .before
            .into_keys()
            .map(|key| RawEvent::Delete { key: key.into() })
            .collect();
        (deletes, self.after)
    }
}

/// Applies `event` to `seen`; false when it changes nothing (a value written again).
fn apply(seen: &mut Seen, event: &RawEvent) -> bool {
    match event {
        RawEvent::Put { key, value } => {
            let digest = digest(value);
            match seen.get_mut(key.as_str()) {
                Some(old) if *old == digest => false,
                Some(old) => {
                    *old = digest;
                    true
                }
                None => {
                    seen.insert(key.as_str().into(), digest);
                    true
                }
            }
        }
        RawEvent::Delete { key } => seen.remove(key.as_str()).is_some(),
        RawEvent::Synced => true,
    }
}

/// The raw events under a prefix; ends when the store's runtime stops.
#[derive(Debug)]
pub struct RawWatch {
    events: mpsc::Receiver<RawEvent>,
}

impl RawWatch {
    /// The next event.
    pub async fn next(&mut self) -> Option<RawEvent> {
        self.events.recv().await
    }
}

impl Store {
    /// Watches every key under `prefix` (see the module's doc).
    pub fn watch_prefix(&self, prefix: &str) -> RawWatch {
        let (tx, rx) = mpsc::channel(1024);
        self.runtime
            .handle()
            .spawn(run_watch(self.conn.clone(), prefix.to_string(), tx));
        RawWatch { events: rx }
    }

    /// Watches the nodes.
    pub fn watch_nodes(&self) -> Watch<NodeKind> {
        Watch::new(self, self.keys().nodes())
    }

    /// Watches the endpoints of every node.
    pub fn watch_endpoints(&self) -> Watch<EndpointKind> {
        Watch::new(self, self.keys().endpoints())
    }

    /// Watches the identity bindings.
    pub fn watch_identities(&self) -> Watch<IdentityKind> {
        Watch::new(self, self.keys().identity_ids())
    }

    /// Watches the resources.
    pub fn watch_resources(&self) -> Watch<ResourceKind> {
        Watch::new(self, self.keys().resources())
    }
}

async fn run_watch(conn: Conn, prefix: String, tx: mpsc::Sender<RawEvent>) {
    let retry = Duration::from_millis(500);
    let mut seen = Seen::new();
    loop {
        let revision = match resync(&conn, &prefix, &mut seen, &tx).await {
            Ok(Some(revision)) => revision,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%prefix, error = %e, "store: list failed; retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if let Err(e) = follow(&conn, &prefix, revision + 1, &mut seen, &tx).await {
            if tx.is_closed() {
                return;
            }
            tracing::debug!(%prefix, error = %e, "store: watch broke; listing again");
        }
        tokio::time::sleep(retry).await;
    }
}

/// Lists `prefix` page by page and delivers what changed against `seen`, then `Synced`;
/// the listing's revision, or `None` once the consumer is gone.
async fn resync(
    conn: &Conn,
    prefix: &str,
    seen: &mut Seen,
    tx: &mpsc::Sender<RawEvent>,
) -> Result<Option<i64>, StoreError> {
    let mut listing = conn.listing(prefix, false);
    let mut resync = Resync::new(std::mem::take(seen));
    loop {
        let page = match listing.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                *seen = resync.abandon();
                return Err(e);
            }
        };
        for kv in page {
            let (key, value) = kv.into_key_value();
            let key = String::from_utf8(key)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            if let Some(event) = resync.listed(key, value)
                && tx.send(event).await.is_err()
            {
                return Ok(None);
            }
        }
    }
    let (deletes, listed) = resync.finish();
    for event in deletes {
        if tx.send(event).await.is_err() {
            return Ok(None);
        }
    }
    *seen = listed;
    if tx.send(RawEvent::Synced).await.is_err() {
        return Ok(None);
    }
    Ok(Some(listing.revision()))
}

/// Delivers the changes from `start` on until the stream breaks or is cancelled.
async fn follow(
    conn: &Conn,
    prefix: &str,
    start: i64,
    seen: &mut Seen,
    tx: &mpsc::Sender<RawEvent>,
) -> Result<(), StoreError> {
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = conn
        .call(format!("watch {prefix}"), |mut c| {
            let (prefix, options) = (prefix.to_string(), options.clone());
            async move { c.watch(prefix, Some(options)).await }
        })
        .await?;
    loop {
        let response = stream
            .message()
            .await
            .map_err(StoreError::etcd(format!("watch {prefix}")))?;
        let Some(response) = response else {
            return Ok(());
        };
        if response.canceled() || response.compact_revision() > 0 {
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let event = match event.event_type() {
                EventType::Put => RawEvent::Put {
                    key,
                    value: kv.value().to_vec(),
                },
                EventType::Delete => RawEvent::Delete { key },
            };
            if apply(seen, &event) && tx.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// How the keys and values under one prefix read.
pub trait Kind {
    /// What names an entry.
    type Key;
    /// The entry.
    type Value;
    /// Reads a key.
    fn key(keys: &Keys, key: &str) -> Result<Self::Key, StoreError>;
    /// Reads a value.
    fn value(key: &str, value: &[u8]) -> Result<Self::Value, StoreError>;
}

/// A typed change.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<K, V> {
    /// Created or changed.
    Upsert(K, V),
    /// Deleted or expired.
    Delete(K),
    /// The view is complete up to now (after the first listing and every resync).
    Synced,
}

/// Typed events under one prefix; entries that do not parse are logged and skipped.
#[derive(Debug)]
pub struct Watch<T: Kind> {
    raw: RawWatch,
    keys: Keys,
    kind: PhantomData<T>,
}

impl<T: Kind> Watch<T> {
    fn new(store: &Store, prefix: String) -> Self {
        Self {
            raw: store.watch_prefix(&prefix),
            keys: store.keys().clone(),
            kind: PhantomData,
        }
    }

    /// The next change.
    pub async fn next(&mut self) -> Option<Update<T::Key, T::Value>> {
        loop {
            let decoded = match self.raw.next().await? {
                RawEvent::Synced => return Some(Update::Synced),
                RawEvent::Put { key, value } => T::key(&self.keys, &key)
                    .and_then(|k| Ok(Update::Upsert(k, T::value(&key, &value)?))),
                RawEvent::Delete { key } => T::key(&self.keys, &key).map(Update::Delete),
            };
            match decoded {
                Ok(update) => return Some(update),
                Err(e) => tracing::warn!(error = %e, "store: skipping an entry"),
            }
        }
    }
}

fn from_json<V: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<V, StoreError> {
    serde_json::from_slice(value).map_err(|e| crate::keys::corrupt(key, &e.to_string()))
}

/// Nodes by name.
#[derive(Debug)]
pub struct NodeKind;
impl Kind for NodeKind {
    type Key = String;
    type Value = Node;
    fn key(keys: &Keys, key: &str) -> Result<String, StoreError> {
        keys.parse_node(key).map(str::to_string)
    }
    fn value(key: &str, value: &[u8]) -> Result<Node, StoreError> {
        from_json(key, value)
    }
}

/// Endpoints by address.
#[derive(Debug)]
pub struct EndpointKind;
impl Kind for EndpointKind {
    type Key = IpAddr;
    type Value = Endpoint;
    fn key(keys: &Keys, key: &str) -> Result<IpAddr, StoreError> {
        keys.parse_endpoint(key)
    }
    fn value(key: &str, value: &[u8]) -> Result<Endpoint, StoreError> {
        from_json(key, value)
    }
}

/// Identity bindings by number.
#[derive(Debug)]
pub struct IdentityKind;
impl Kind for IdentityKind {
    type Key = Identity;
    type Value = LabelSet;
    fn key(keys: &Keys, key: &str) -> Result<Identity, StoreError> {
        keys.parse_identity_id(key)
    }
    fn value(key: &str, value: &[u8]) -> Result<LabelSet, StoreError> {
        parse_labels(key, value)
    }
}

/// Resources' manifests by kind, namespace and name.
#[derive(Debug)]
pub struct ResourceKind;
impl Kind for ResourceKind {
    type Key = ResourceKey;
    type Value = serde_json::Value;
    fn key(keys: &Keys, key: &str) -> Result<ResourceKey, StoreError> {
        keys.parse_resource(key)
    }
    fn value(key: &str, value: &[u8]) -> Result<serde_json::Value, StoreError> {
        from_json(key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entries: &[(&str, &str)]) -> Seen {
        entries
            .iter()
            .map(|(k, v)| (Box::from(*k), digest(v.as_bytes())))
            .collect()
    }

    /// The events of a resync of `before` by `listing`, and what is seen after it.
    fn resync(before: &Seen, listing: &[(&str, &str)]) -> (Vec<RawEvent>, Seen) {
        let mut resync = Resync::new(before.clone());
        let mut events: Vec<RawEvent> = listing
            .iter()
            .filter_map(|(k, v)| resync.listed(k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let (deletes, after) = resync.finish();
        events.extend(deletes);
        (events, after)
    }

    #[test]
    fn a_resync_delivers_only_the_difference() {
        let before = seen(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let listing = [("a", "1"), ("b", "20"), ("d", "4")];
        let (events, after) = resync(&before, &listing);
        assert_eq!(
            events,
            vec![
                RawEvent::Put {
                    key: "b".into(),
                    value: b"20".to_vec()
                },
                RawEvent::Put {
                    key: "d".into(),
                    value: b"4".to_vec()
                },
                RawEvent::Delete { key: "c".into() },
            ]
        );
        assert_eq!(after, seen(&listing));
        let mut view = before.clone();
        for event in &events {
            apply(&mut view, event);
        }
        assert_eq!(view, after);
    }

    #[test]
    fn an_unchanged_listing_delivers_nothing() {
        let listing = [("a", "1"), ("b", "2")];
        let view = seen(&listing);
        let (events, after) = resync(&view, &listing);
        assert!(events.is_empty());
        assert_eq!(after, view);
        assert_eq!(resync(&Seen::new(), &listing).0.len(), 2);
        let (events, after) = resync(&view, &[]);
        assert_eq!(events.len(), 2, "both deleted");
        assert!(after.is_empty());
    }

    #[test]
    fn a_listing_broken_off_keeps_what_was_delivered_and_what_was_not_listed() {
        let before = seen(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut resync = Resync::new(before);
        assert!(resync.listed("a".into(), b"1".to_vec()).is_none());
        assert!(resync.listed("b".into(), b"20".to_vec()).is_some());
        assert_eq!(
            resync.abandon(),
            seen(&[("a", "1"), ("b", "20"), ("c", "3")])
        );
    }

    #[test]
    fn a_value_written_again_is_not_an_event() {
        let mut view = seen(&[("a", "1")]);
        let same = RawEvent::Put {
            key: "a".into(),
            value: b"1".to_vec(),
        };
        assert!(!apply(&mut view, &same));
        let changed = RawEvent::Put {
            key: "a".into(),
            value: b"2".to_vec(),
        };
        assert!(apply(&mut view, &changed));
        assert_eq!(view, seen(&[("a", "2")]));
        assert!(!apply(&mut view, &RawEvent::Delete { key: "x".into() }));
        assert!(apply(&mut view, &RawEvent::Delete { key: "a".into() }));
        assert!(view.is_empty());
    }

    #[test]
    fn typed_kinds_read_the_layout() {
        let keys = Keys::new("lab").unwrap();
        let node = Node {
            name: "node1".into(),
            addresses: vec!["10.99.0.1".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            tunnel_endpoint: None,
            observer_address: None,
        };
        let key = keys.node("node1").unwrap();
        assert_eq!(NodeKind::key(&keys, &key).unwrap(), "node1");
        let value = serde_json::to_vec(&node).unwrap();
        assert_eq!(NodeKind::value(&key, &value).unwrap(), node);
        assert!(NodeKind::value(&key, b"{").is_err());
    }
}
