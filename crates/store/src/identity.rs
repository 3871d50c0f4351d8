//! Cluster-wide identities in etcd, allocated with transactions, in the manner of
//! Cilium's kvstore allocator: a master key per number (`identities/id/<n>` → labels),
//! a reverse index (`identities/labels/<labels>` → n), and one hold per node that uses
//! the identity (`identities/holds/<n>/<node>`) under that node's lease.
//!
//! Binding a number creates the master key and the index key in one transaction that
//! requires both to be absent: two agents racing for one label set or for one number
//! cannot both win, so one label set never gets two numbers and one number never two
//! label sets. An identity with no hold left gets a release mark (`identities/released/
//! <n>` → since when); the collector deletes it after the grace period, in a transaction
//! that requires it still unheld and unchanged since it looked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use myelin_policy::identity::{CLUSTER_MAX, CLUSTER_MIN};
use myelin_policy::{Identity, IdentityError, IdentityStore, LabelSet, Retention};

use crate::client::Conn;
use crate::keys::{corrupt, labels_value, parse_labels};
use crate::session::{NodeSession, Owned};
use crate::{Store, StoreError};

/// How often a transaction is tried again after losing a race before giving up. Every
/// loss means another agent bound a number, so this bounds nothing but pathologies.
const ATTEMPTS: usize = 1000;

/// The first number not in `bound` from `hint` on, wrapping within the cluster range.
pub fn first_free(bound: &BTreeSet<Identity>, hint: Identity) -> Option<Identity> {
    let range = CLUSTER_MAX - CLUSTER_MIN + 1;
    let start = hint.clamp(CLUSTER_MIN, CLUSTER_MAX) - CLUSTER_MIN;
    (0..range)
        .map(|step| CLUSTER_MIN + (start + step) % range)
        .find(|id| !bound.contains(id))
}

fn parse_id(key: &str, value: &[u8]) -> Result<Identity, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| corrupt(key, "value is not an identity number"))
}

impl Store {
    /// The number bound to `labels`, if any.
    pub async fn lookup_identity(&self, labels: &LabelSet) -> Result<Option<Identity>, StoreError> {
        let key = self.keys().identity_labels(labels);
        match self.conn.get(&key).await? {
            Some(kv) => Ok(Some(parse_id(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Every binding.
    pub async fn identities(&self) -> Result<BTreeMap<Identity, LabelSet>, StoreError> {
        let keys = self.keys();
        let (kvs, _) = self.conn.list(&keys.identity_ids(), false).await?;
        kvs.iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Ok((
                    keys.parse_identity_id(&key)?,
                    parse_labels(&key, kv.value())?,
                ))
            })
            .collect()
    }

    /// Who holds which identity.
    pub async fn holds(&self) -> Result<BTreeMap<Identity, BTreeSet<String>>, StoreError> {
        let keys = self.keys();
        let (kvs, _) = self.conn.list(&keys.holds(), true).await?;
        let mut holds: BTreeMap<Identity, BTreeSet<String>> = BTreeMap::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let (id, holder) = keys.parse_hold(&key)?;
            holds.entry(id).or_default().insert(holder.to_string());
        }
        Ok(holds)
    }

    /// Marks unheld identities released as of `now` and deletes those released for at
    /// least `grace_secs`, each only if still unheld and unchanged; returns the deleted.
    /// (Silent holders need no timeout here: their holds go with their lease.)
    pub async fn collect_identities(
        &self,
        now: u64,
        grace_secs: u64,
    ) -> Result<Vec<Identity>, StoreError> {
        let conn = &self.conn;
        let keys = self.keys();
        let (ids, _) = conn.list(&keys.identity_ids(), false).await?;
        let (holds, _) = conn.list(&keys.holds(), true).await?;
        let (marks, _) = conn.list(&keys.released_prefix(), false).await?;
        let held: BTreeSet<Identity> = holds
            .iter()
            .filter_map(|kv| {
                keys.parse_hold(&String::from_utf8_lossy(kv.key()))
                    .ok()
                    .map(|(id, _)| id)
            })
            .collect();
        let mut released = BTreeMap::new();
        for kv in &marks {
            let key = String::from_utf8_lossy(kv.key());
            let id = keys.parse_released(&key)?;
            let since = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| corrupt(&key, "value is not unix seconds"))?;
            released.insert(id, (since, kv.mod_revision()));
        }
        let mut deleted = Vec::new();
        for kv in &ids {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let id = keys.parse_identity_id(&key)?;
            if held.contains(&id) {
                continue;
            }
            let unheld = Compare::version(keys.holds_of(id), CompareOp::Equal, 0).with_prefix();
            match released.get(&id) {
                Some((since, mark_revision)) if now.saturating_sub(*since) >= grace_secs => {
                    let labels = parse_labels(&key, kv.value())?;
                    let done = conn
                        .txn(
                            "delete a released identity",
                            Txn::new()
                                .when([
                                    unheld,
                                    Compare::mod_revision(
                                        keys.released(id),
                                        CompareOp::Equal,
                                        *mark_revision,
                                    ),
                                    Compare::mod_revision(
                                        key.as_str(),
                                        CompareOp::Equal,
                                        kv.mod_revision(),
                                    ),
                                ])
                                .and_then([
                                    TxnOp::delete(key.as_str(), None),
                                    TxnOp::delete(keys.identity_labels(&labels), None),
                                    TxnOp::delete(keys.released(id), None),
                                ]),
                        )
                        .await?;
                    if done.succeeded() {
                        deleted.push(id);
                    }
                }
                Some(_) => {}
                None => {
                    // Its last hold went with a lease (or was never written): the grace
                    // starts now.
                    conn.txn(
                        "mark an identity released",
                        Txn::new()
                            .when([
                                unheld,
                                Compare::create_revision(keys.released(id), CompareOp::Equal, 0),
                            ])
                            .and_then([TxnOp::put(keys.released(id), now.to_string(), None)]),
                    )
                    .await?;
                }
            }
        }
        Ok(deleted)
    }
}

impl NodeSession {
    /// The identity of `labels` — bound already, or bound now to the first free number
    /// from `hint` on — held by `holder` under this session's lease.
    pub async fn acquire_identity(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
    ) -> Result<Identity, StoreError> {
        let result = self.acquire(holder, labels, hint).await;
        self.check(result)
    }

    async fn acquire(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
    ) -> Result<Identity, StoreError> {
        let conn = &self.store.conn;
        let keys = &conn.keys;
        let labels_key = keys.identity_labels(labels);
        let value = labels_value(labels);
        let mut state = self.state.lock().await;
        let mut hint = hint;
        let mut relisted = false;
        for _ in 0..ATTEMPTS {
            if let Some(kv) = conn.get(&labels_key).await? {
                let id = parse_id(&labels_key, kv.value())?;
                let hold = keys.hold(id, holder)?;
                let held = conn
                    .txn(
                        "hold an identity",
                        Txn::new()
                            .when([Compare::value(
                                keys.identity_id(id),
                                CompareOp::Equal,
                                value.as_str(),
                            )])
                            .and_then(hold_ops(conn, &hold, id, state.lease)),
                    )
                    .await?;
                if held.succeeded() {
                    remember_hold(&mut state.owned, hold, id, labels);
                    return Ok(id);
                }
                // Collected between the read and the hold: bind it afresh.
                continue;
            }
            if state.bound_ids.is_none() {
                let (kvs, _) = conn.list(&keys.identity_ids(), true).await?;
                let bound = kvs
                    .iter()
                    .filter_map(|kv| {
                        keys.parse_identity_id(&String::from_utf8_lossy(kv.key()))
                            .ok()
                    })
                    .collect();
                state.bound_ids = Some(bound);
            }
            let bound = state.bound_ids.get_or_insert_default();
            let Some(id) = first_free(bound, hint) else {
                // The cache may hold numbers collected since: list once more, then give up.
                if relisted {
                    return Err(StoreError::Exhausted);
                }
                relisted = true;
                state.bound_ids = None;
                continue;
            };
            let hold = keys.hold(id, holder)?;
            let mut ops = vec![
                TxnOp::put(keys.identity_id(id), value.as_str(), None),
                TxnOp::put(labels_key.as_str(), id.to_string(), None),
            ];
            ops.extend(hold_ops(conn, &hold, id, state.lease));
            let bound = conn
                .txn(
                    "bind an identity",
                    Txn::new()
                        .when([
                            Compare::create_revision(labels_key.as_str(), CompareOp::Equal, 0),
                            Compare::create_revision(keys.identity_id(id), CompareOp::Equal, 0),
                        ])
                        .and_then(ops)
                        .or_else([TxnOp::get(labels_key.as_str(), None)]),
                )
                .await?;
            if let Some(set) = state.bound_ids.as_mut() {
                set.insert(id);
            }
            if bound.succeeded() {
                remember_hold(&mut state.owned, hold, id, labels);
                return Ok(id);
            }
            // Lost the race: either the labels were bound meanwhile (the next round holds
            // them) or the number was taken (the next round searches past it).
            let labels_bound = bound
                .op_responses()
                .iter()
                .any(|r| matches!(r, TxnOpResponse::Get(get) if !get.kvs().is_empty()));
            if !labels_bound {
                hint = if id >= CLUSTER_MAX {
                    CLUSTER_MIN
                } else {
                    id + 1
                };
            }
        }
        Err(StoreError::Contended {
            what: format!("allocate an identity for {labels}"),
            attempts: ATTEMPTS,
        })
    }

    /// States the complete set of identities `holder` uses: they are held under this
    /// session's lease, every other hold of `holder` is let go; an identity left without
    /// holders is marked released as of `now`.
    pub async fn refresh_holds(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), StoreError> {
        let result = self.refresh(holder, held, now).await;
        self.check(result)
    }

    async fn refresh(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), StoreError> {
        let conn = &self.store.conn;
        let keys = &conn.keys;
        let mut state = self.state.lock().await;
        let (holds, _) = conn.list(&keys.holds(), true).await?;
        // The holder's holds with their leases: a restarted agent finds some under its
        // previous process's lease, which will expire; those are taken over.
        let mut current = BTreeMap::new();
        for kv in &holds {
            let key = String::from_utf8_lossy(kv.key());
            let (id, who) = keys.parse_hold(&key)?;
            if who == holder {
                current.insert(id, kv.lease());
            }
        }
        let let_go: Vec<Identity> = current
            .keys()
            .filter(|id| !held.contains(id))
            .copied()
            .collect();
        for id in &let_go {
            let hold = keys.hold(*id, holder)?;
            state.owned.remove(&hold);
            conn.delete(&hold).await?;
            conn.txn(
                "mark an identity released",
                Txn::new()
                    .when([
                        Compare::version(keys.holds_of(*id), CompareOp::Equal, 0).with_prefix(),
                        Compare::create_revision(keys.identity_id(*id), CompareOp::Greater, 0),
                    ])
                    .and_then([TxnOp::put(keys.released(*id), now.to_string(), None)]),
            )
            .await?;
        }
        let lease = state.lease;
        let to_hold: Vec<Identity> = held
            .iter()
            .filter(|id| current.get(id) != Some(&lease))
            .copied()
            .collect();
        for id in &to_hold {
            let id_key = keys.identity_id(*id);
            let Some(kv) = conn.get(&id_key).await? else {
                tracing::warn!(id, "store: cannot hold an identity that is no longer bound");
                continue;
            };
            let labels = parse_labels(&id_key, kv.value())?;
            let hold = keys.hold(*id, holder)?;
            let done = conn
                .txn(
                    "hold an identity",
                    Txn::new()
                        .when([Compare::mod_revision(
                            id_key.as_str(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then(hold_ops(conn, &hold, *id, state.lease)),
                )
                .await?;
            if done.succeeded() {
                remember_hold(&mut state.owned, hold, *id, &labels);
            }
        }
        Ok(())
    }
}

/// Writes the hold under the lease and clears a release mark.
fn hold_ops(conn: &Conn, hold: &str, id: Identity, lease: i64) -> [TxnOp; 2] {
    [
        TxnOp::put(hold, "", Some(PutOptions::new().with_lease(lease))),
        TxnOp::delete(conn.keys.released(id), None),
    ]
}

fn remember_hold(
    owned: &mut BTreeMap<String, Owned>,
    hold: String,
    id: Identity,
    labels: &LabelSet,
) {
    owned.insert(
        hold,
        Owned::Hold {
            id,
            labels: labels.clone(),
        },
    );
}

/// [`IdentityStore`] on etcd, for the agent's synchronous [`myelin_policy::Allocator`].
///
/// The trait is synchronous and the agent calls it from its own code paths, some of them
/// inside tokio tasks. Each call runs as a task on the store's own runtime thread (where
/// the etcd client's connections live) and the calling thread waits for its answer: the
/// etcd I/O never runs on, nor needs, the caller's runtime, so a caller on a
/// current-thread runtime cannot starve the call it waits for, and no
/// `Handle::block_on` inside a runtime (which panics) is involved. The wait is bounded
/// by the store's per-call timeouts. A caller on a tokio worker should still wrap calls
/// in `spawn_blocking` or `block_in_place` so that its other tasks run meanwhile.
///
/// Holds live under the session's lease: a holder's timeout ([`Retention::holder_timeout_secs`])
/// is the lease's TTL, not checked by [`IdentityStore::collect`]; `now` stamps release marks.
///
/// A call that finds etcd unreachable makes the next ones fail at once, until a probe in
/// the background finds etcd answering again: a caller waits for one call's timeout per
/// outage, not for each call's.
#[derive(Debug, Clone)]
pub struct EtcdIdentityStore {
    session: NodeSession,
    /// Set while etcd is known not to answer (a probe runs then).
    unreachable: Arc<AtomicBool>,
}

/// How often the probe asks an unreachable etcd whether it answers again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

impl EtcdIdentityStore {
    /// Identities held under `session`'s lease.
    pub fn new(session: NodeSession) -> Self {
        Self {
            session,
            unreachable: Arc::new(AtomicBool::new(false)),
        }
    }

    fn run<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, IdentityError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(IdentityError::Unavailable(
                "etcd did not answer the last call; waiting for it to answer again".into(),
            ));
        }
        let store = &self.session.store;
        store.runtime.block_on(call).map_err(|e| match e {
            StoreError::Exhausted => IdentityError::Exhausted,
            e => {
                if matches!(e, StoreError::Timeout { .. } | StoreError::Etcd { .. })
                    && !self.unreachable.swap(true, Ordering::SeqCst)
                {
                    // The connection only: the probe must not keep the store's
                    // runtime alive once every handle of it is gone.
                    let (conn, unreachable) = (store.conn.clone(), self.unreachable.clone());
                    store.runtime.handle().spawn(async move {
                        while conn.get(&conn.keys.nodes()).await.is_err() {
                            tokio::time::sleep(PROBE_INTERVAL).await;
                        }
                        unreachable.store(false, Ordering::SeqCst);
                    });
                }
                IdentityError::Unavailable(e.to_string())
            }
        })
    }
}

impl IdentityStore for EtcdIdentityStore {
    fn lookup(&self, labels: &LabelSet) -> Result<Option<Identity>, IdentityError> {
        let (s, labels) = (self.session.clone(), labels.clone());
        self.run(async move { s.store.lookup_identity(&labels).await })
    }

    fn acquire(
        &self,
        holder: &str,
        labels: &LabelSet,
        hint: Identity,
        _now: u64,
    ) -> Result<Identity, IdentityError> {
        let (s, holder, labels) = (self.session.clone(), holder.to_string(), labels.clone());
        self.run(async move { s.acquire_identity(&holder, &labels, hint).await })
    }

    fn refresh(
        &self,
        holder: &str,
        held: &BTreeSet<Identity>,
        now: u64,
    ) -> Result<(), IdentityError> {
        let (s, holder, held) = (self.session.clone(), holder.to_string(), held.clone());
        self.run(async move { s.refresh_holds(&holder, &held, now).await })
    }

    fn collect(&self, now: u64, retention: Retention) -> Result<Vec<Identity>, IdentityError> {
        let s = self.session.clone();
        self.run(async move { s.store.collect_identities(now, retention.grace_secs).await })
    }

    fn list(&self) -> Result<BTreeMap<Identity, LabelSet>, IdentityError> {
        let s = self.session.clone();
        self.run(async move { s.store.identities().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_starts_at_the_hint_and_wraps() {
        let bound = BTreeSet::from([256, 257, 300, CLUSTER_MAX]);
        assert_eq!(first_free(&bound, 0), Some(258));
        assert_eq!(first_free(&bound, 300), Some(301));
        assert_eq!(first_free(&bound, CLUSTER_MAX), Some(258));
        assert_eq!(first_free(&bound, 70_000), Some(258));
        let full: BTreeSet<Identity> = (CLUSTER_MIN..=CLUSTER_MAX).collect();
        assert_eq!(first_free(&full, 400), None);
    }
}
