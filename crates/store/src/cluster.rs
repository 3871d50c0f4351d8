//! Reading the cluster's nodes and endpoints, and the lab's resources (written by apply).

use std::collections::BTreeMap;
use std::net::IpAddr;

use etcd_client::{Txn, TxnOp};

use crate::watch::{EndpointKind, Kind, NodeKind, ResourceKind};
use crate::{Endpoint, Node, ResourceKey, Store, StoreError};

impl Store {
    async fn list_kind<T: Kind>(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<T::Key, T::Value>, StoreError>
    where
        T::Key: Ord,
    {
        let (kvs, _) = self.conn.list(prefix, false).await?;
        kvs.iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Ok((T::key(self.keys(), &key)?, T::value(&key, kv.value())?))
            })
            .collect()
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<BTreeMap<String, Node>, StoreError> {
        self.list_kind::<NodeKind>(&self.keys().nodes()).await
    }

    /// Every endpoint of every node.
    pub async fn endpoints(&self) -> Result<BTreeMap<IpAddr, Endpoint>, StoreError> {
        self.list_kind::<EndpointKind>(&self.keys().endpoints())
            .await
    }

    /// Every resource.
    pub async fn resources(&self) -> Result<BTreeMap<ResourceKey, serde_json::Value>, StoreError> {
        self.list_kind::<ResourceKind>(&self.keys().resources())
            .await
    }

    /// Writes `put` and deletes `delete` in one transaction: every node sees all of an
    /// apply or none of it. etcd bounds a transaction's operations (`--max-txn-ops`; the
    /// servers this crate starts allow [`crate::server::MAX_TXN_OPS`]).
    pub async fn apply_resources(
        &self,
        put: &[(ResourceKey, serde_json::Value)],
        delete: &[ResourceKey],
    ) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(put.len() + delete.len());
        for (key, manifest) in put {
            let value = serde_json::to_vec(manifest).map_err(|e| StoreError::Corrupt {
                key: format!("{}/{}/{}", key.kind, key.namespace, key.name),
                message: e.to_string(),
            })?;
            ops.push(TxnOp::put(self.keys().resource(key)?, value, None));
        }
        for key in delete {
            ops.push(TxnOp::delete(self.keys().resource(key)?, None));
        }
        self.conn
            .txn("apply resources", Txn::new().and_then(ops))
            .await?;
        Ok(())
    }

    /// Deletes every key of the cluster (a lab torn down, a test's cleanup).
    pub async fn delete_cluster(&self) -> Result<(), StoreError> {
        self.conn.delete_prefix(self.keys().root()).await
    }
}
