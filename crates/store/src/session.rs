//! A node's session: its lease, kept alive by a task, and the keys it owns under it.
//!
//! The session remembers every key it wrote: when the lease is lost (it expired while
//! the node was cut off, or etcd came back without its data) a new lease is granted and
//! every owned key is written again; when etcd was merely unreachable, only the writes
//! that failed are made again under the same lease once it answers (an acknowledged
//! write is in etcd). At 1,000 nodes an overload that fails one write of each node must
//! not make every node write all its keys again at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use myelin_policy::{Identity, LabelSet};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

use crate::client::Conn;
use crate::keys::labels_value;
use crate::{Endpoint, Node, Store, StoreError};

/// The lab's default lease TTL: a dead node's entries leave every other node's view
/// within this (Cilium's default is 15 minutes; a lab wants to see it happen).
pub const LAB_LEASE_TTL: Duration = Duration::from_secs(15);

/// What a session rewrites after its lease was lost.
#[derive(Debug, Clone)]
pub(crate) enum Owned {
    /// A plain value.
    Value(Vec<u8>),
    /// A hold on an identity: restored only while the identity still means these
    /// labels (or recreated with them when it was collected meanwhile).
    Hold { id: Identity, labels: LabelSet },
}

#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) lease: i64,
    pub(crate) owned: BTreeMap<String, Owned>,
    /// Owned keys let go while etcd did not answer: deleted on the next sync.
    pending_deletes: BTreeSet<String>,
    /// Owned keys whose last write may not have reached etcd: written again on the next
    /// sync (all of them after a lost lease).
    unwritten: BTreeSet<String>,
    /// Numbers known to be bound, to search free ones without listing every time.
    pub(crate) bound_ids: Option<BTreeSet<Identity>>,
}

/// A node's lease and the keys it owns. Clones share the session. Dropping the last
/// clone stops the keep-alive but does not revoke the lease: a restarted agent's
/// entries stay until it writes them again or the TTL ends. [`NodeSession::close`]
/// revokes it (a node leaving for good).
#[derive(Debug, Clone)]
pub struct NodeSession {
    pub(crate) store: Store,
    node: String,
    ttl: Duration,
    pub(crate) state: Arc<Mutex<SessionState>>,
    /// Wakes the keep-alive early after a failed write: the lease may be gone.
    wake: Arc<Notify>,
    keepalive: Arc<KeepAliveTask>,
}

#[derive(Debug)]
struct KeepAliveTask(JoinHandle<()>);

impl Drop for KeepAliveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl NodeSession {
    /// Grants `node` a lease of `ttl` (whole seconds, at least 2) and keeps it alive.
    pub async fn start(store: &Store, node: &str, ttl: Duration) -> Result<Self, StoreError> {
        store.keys().node(node)?;
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let lease = grant(&store.conn, ttl_secs).await?;
        let state = Arc::new(Mutex::new(SessionState {
            lease,
            owned: BTreeMap::new(),
            pending_deletes: BTreeSet::new(),
            unwritten: BTreeSet::new(),
            bound_ids: None,
        }));
        let wake = Arc::new(Notify::new());
        let task = store.runtime.handle().spawn(keep_alive(
            store.conn.clone(),
            state.clone(),
            wake.clone(),
            ttl_secs,
            node.to_string(),
        ));
        Ok(Self {
            store: store.clone(),
            node: node.to_string(),
            ttl: Duration::from_secs(ttl_secs as u64),
            state,
            wake,
            keepalive: Arc::new(KeepAliveTask(task)),
        })
    }

    /// The node this session is for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current lease (it changes when a lost lease is replaced).
    pub async fn lease(&self) -> i64 {
        self.state.lock().await.lease
    }

    /// The store this session writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes `value` at `key` under the lease and remembers it.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state.pending_deletes.remove(key);
        state
            .owned
            .insert(key.to_string(), Owned::Value(value.clone()));
        let result = self.store.conn.put(key, value, Some(state.lease)).await;
        if result.is_err() {
            state.unwritten.insert(key.to_string());
            self.wake.notify_one();
        } else {
            state.unwritten.remove(key);
        }
        result
    }

    /// Deletes an owned key and forgets it.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state.owned.remove(key);
        state.unwritten.remove(key);
        let result = self.store.conn.delete(key).await;
        if result.is_err() {
            state.pending_deletes.insert(key.to_string());
            self.wake.notify_one();
        }
        result
    }

    /// Wakes the keep-alive when `result` failed (the lease may be gone); passes it on.
    pub(crate) fn check<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.wake.notify_one();
        }
        result
    }

    /// Publishes this node's record.
    pub async fn publish_node(&self, node: &Node) -> Result<(), StoreError> {
        let key = self.store.keys().node(&node.name)?;
        self.put(&key, json(&node)).await
    }

    /// Publishes an endpoint of this node.
    pub async fn publish_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let key = self.store.keys().endpoint(endpoint.ip);
        self.put(&key, json(&endpoint)).await
    }

    /// Withdraws an endpoint of this node.
    pub async fn withdraw_endpoint(&self, ip: IpAddr) -> Result<(), StoreError> {
        self.delete(&self.store.keys().endpoint(ip)).await
    }

    /// Stops the keep-alive and revokes the lease: every key the node owns goes at once.
    pub async fn close(self) -> Result<(), StoreError> {
        self.keepalive.0.abort();
        let lease = self.state.lock().await.lease;
        self.store.revoke_lease(lease).await
    }
}

impl Store {
    /// Revokes a lease: every key under it goes at once (a node removed by the lab).
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.conn
            .call("revoke a lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await?;
        Ok(())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and addresses always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

async fn grant(conn: &Conn, ttl_secs: i64) -> Result<i64, StoreError> {
    let response = conn
        .call("grant a lease", |mut c| async move {
            c.lease_grant(ttl_secs, None).await
        })
        .await?;
    Ok(response.id())
}

/// Keeps the lease alive every third of its TTL; replaces it when lost; writes the owned
/// keys again after any doubt.
async fn keep_alive(
    conn: Conn,
    state: Arc<Mutex<SessionState>>,
    wake: Arc<Notify>,
    ttl_secs: i64,
    node: String,
) {
    let period = Duration::from_millis((ttl_secs as u64 * 1000) / 3);
    let retry = Duration::from_millis(500);
    loop {
        let lease = state.lock().await.lease;
        let wait = match conn
            .call("keep the lease alive", |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await
        {
            Ok(_) => {
                let mut state = state.lock().await;
                if state.unwritten.is_empty() && state.pending_deletes.is_empty() {
                    period
                } else if sync(&conn, &mut state).await.is_ok() {
                    tracing::info!(%node, "store: the writes etcd missed are made again");
                    period
                } else {
                    retry
                }
            }
            Err(StoreError::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => {
                let mut state = state.lock().await;
                match grant(&conn, ttl_secs).await {
                    Ok(lease) => {
                        tracing::warn!(%node, old = state.lease, new = lease,
                            "store: the lease was lost; owned keys go under a new one");
                        state.lease = lease;
                        state.unwritten = state.owned.keys().cloned().collect();
                        if sync(&conn, &mut state).await.is_ok() {
                            period
                        } else {
                            retry
                        }
                    }
                    Err(_) => retry,
                }
            }
            Err(e) => {
                // Etcd did not answer: the lease may still stand; the writes that failed
                // are known, and a lost lease shows on the next keep-alive.
                tracing::debug!(%node, error = %e, "store: keep-alive failed; retrying");
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

/// Performs the pending deletes and writes the unwritten owned keys again under the
/// current lease; what succeeded is not done again if a later step fails.
async fn sync(conn: &Conn, state: &mut SessionState) -> Result<(), StoreError> {
    let pending: Vec<String> = state.pending_deletes.iter().cloned().collect();
    for key in pending {
        conn.delete(&key).await?;
        state.pending_deletes.remove(&key);
    }
    let unwritten: Vec<(String, Owned)> = state
        .unwritten
        .iter()
        .filter_map(|k| Some((k.clone(), state.owned.get(k)?.clone())))
        .collect();
    state.unwritten.retain(|k| state.owned.contains_key(k));
    for (key, owned) in unwritten {
        match owned {
            Owned::Value(value) => conn.put(&key, value, Some(state.lease)).await?,
            Owned::Hold { id, labels } => {
                if !restore_hold(conn, &key, id, &labels, state.lease).await? {
                    tracing::error!(id, labels = %labels, "store: identity was rebound to \
                        other labels while this node was away; its hold is dropped");
                    state.owned.remove(&key);
                }
            }
        }
        state.unwritten.remove(&key);
    }
    Ok(())
}

/// Holds `id` again under `lease` if it still means `labels`, or binds it again when it
/// was collected meanwhile (as Cilium recreates a missing master key). False when the
/// number now means other labels.
async fn restore_hold(
    conn: &Conn,
    hold: &str,
    id: Identity,
    labels: &LabelSet,
    lease: i64,
) -> Result<bool, StoreError> {
    let keys = &conn.keys;
    let id_key = keys.identity_id(id);
    let labels_key = keys.identity_labels(labels);
    let value = labels_value(labels);
    let hold_ops = || {
        [
            TxnOp::put(
                hold,
                "",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            ),
            TxnOp::delete(keys.released(id), None),
        ]
    };
    let held = conn
        .txn(
            "hold an identity again",
            Txn::new()
                .when([Compare::value(
                    id_key.as_str(),
                    CompareOp::Equal,
                    value.as_str(),
                )])
                .and_then(hold_ops()),
        )
        .await?;
    if held.succeeded() {
        return Ok(true);
    }
    let mut ops = vec![
        TxnOp::put(id_key.as_str(), value.as_str(), None),
        TxnOp::put(labels_key.as_str(), id.to_string(), None),
    ];
    ops.extend(hold_ops());
    let rebound = conn
        .txn(
            "bind an identity again",
            Txn::new()
                .when([
                    Compare::create_revision(id_key.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(labels_key.as_str(), CompareOp::Equal, 0),
                ])
                .and_then(ops),
        )
        .await?;
    Ok(rebound.succeeded())
}
