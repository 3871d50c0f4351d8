//! The CNI plugin's requests, served by the node's task: ADD wires the
//! container with `myelin_podnet` (the path the lab's pods take) and
//! registers its pod through [`Request::EndpointUpsert`] (the lab's path
//! too); DEL, CHECK and GC undo or verify that; the control plane's pod
//! metadata gives the pod its labels.
//!
//! Attachments are saved before a pod is wired: their addresses are never
//! handed out again, also when the agent dies halfway. An attachment whose
//! veth vanished (the runtime deleted the pod's namespace while the agent
//! was down, or the plugin cleaned up alone) is removed by
//! [`Node::reconcile_attachments`], its addresses freed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use myelin_api::cni::{
    AttachmentKey, CniAdd, CniAttachment, CniReadiness, PodMetadata, host_veth_name,
};
use myelin_api::{ApiError, ErrorKind};

use super::Node;
use crate::api::{EndpointSpec, Request};
use crate::ipam::{PodCidrs, pod_mac};
use crate::state::{self, CniState};

/// The node's own network namespace, as the agent's threads see it.
const NODE_NETNS: &str = "/proc/self/ns/net";

/// The CNI side of the node: the pod CIDRs, the attachments and what the
/// control plane said of pods.
#[derive(Debug, Default)]
pub(super) struct CniNode {
    /// Where pods' addresses come from.
    pub(super) cidrs: PodCidrs,
    /// The MTU pods get when the plugin's configuration names none.
    pub(super) mtu: u32,
    attachments: BTreeMap<AttachmentKey, CniAttachment>,
    pods: BTreeMap<(String, String), PodMetadata>,
}

impl CniNode {
    /// A node with `cidrs` whose pods get `mtu`.
    pub(super) fn new(cidrs: PodCidrs, mtu: u32) -> Self {
        Self {
            cidrs,
            mtu,
            ..Self::default()
        }
    }

    fn stored(&self) -> CniState {
        CniState {
            attachments: self.attachments.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
        }
    }
}

fn unavailable(message: String) -> anyhow::Error {
    ApiError::new(ErrorKind::Unavailable, message).into()
}

fn not_found(message: String) -> anyhow::Error {
    ApiError::new(ErrorKind::NotFound, message).into()
}

impl Node {
    /// Loads the saved attachments and pods (before the endpoints are
    /// restored: their addresses are taken whatever happens next).
    pub(super) fn restore_cni(&mut self) -> anyhow::Result<()> {
        let stored = state::load_cni(&self.state_dir)?;
        self.cni.attachments = stored
            .attachments
            .into_iter()
            .map(|a| (a.key.clone(), a))
            .collect();
        self.cni.pods = stored
            .pods
            .into_iter()
            .map(|p| ((p.namespace.clone(), p.name.clone()), p))
            .collect();
        Ok(())
    }

    fn persist_cni(&self) -> anyhow::Result<()> {
        state::save_cni(&self.state_dir, &self.cni.stored())
    }

    /// Forgets pods the control plane says are gone (their attachments
    /// stay until the runtime's DEL).
    pub(super) fn pods_delete(&mut self, pods: &[(String, String)]) -> anyhow::Result<()> {
        for key in pods {
            self.cni.pods.remove(key);
        }
        self.persist_cni()
    }

    pub(super) fn cni_readiness(&self) -> CniReadiness {
        let reason = self
            .cni
            .cidrs
            .is_empty()
            .then(|| "the agent has no pod CIDR (--pod-cidr)".to_string());
        CniReadiness {
            ready: reason.is_none(),
            reason,
        }
    }

    /// New labels of a pod already attached reach its endpoint (its
    /// identity and policy follow them).
    pub(super) fn pods_upsert(&mut self, pods: &[PodMetadata]) -> anyhow::Result<()> {
        for pod in pods {
            self.cni
                .pods
                .insert((pod.namespace.clone(), pod.name.clone()), pod.clone());
        }
        self.persist_cni()?;
        let attached: Vec<CniAttachment> = self
            .cni
            .attachments
            .values()
            .filter(|a| {
                pods.iter()
                    .any(|p| p.namespace == a.namespace && p.name == a.pod)
            })
            .cloned()
            .collect();
        for attachment in attached {
            self.register(&attachment)?;
        }
        Ok(())
    }

    pub(super) fn cni_add(&mut self, add: &CniAdd) -> anyhow::Result<CniAttachment> {
        if let Some(reason) = self.cni_readiness().reason {
            // The agent's configuration: waiting would not change it.
            anyhow::bail!("the agent cannot wire pods: {reason}");
        }
        let pod_key = (add.namespace.clone(), add.pod.clone());
        if !self.cni.pods.contains_key(&pod_key) {
            return Err(unavailable(format!(
                "pod {}/{} is not known to this node's agent: its control plane has not told \
                 of it (its labels decide its identity)",
                add.namespace, add.pod
            )));
        }
        if let Some(existing) = self.cni.attachments.get(&add.key).cloned() {
            // A repeated ADD (the runtime retries) gets what the first one made.
            if existing.netns == add.netns
                && myelin_podnet::link_exists(Path::new(NODE_NETNS), &existing.host_veth)?
            {
                self.register(&existing)?;
                return Ok(existing);
            }
            self.detach(&existing)?;
        }
        let started = std::time::Instant::now();
        let attachment = self.allocate(add)?;
        // Saved first: the addresses are taken from here on.
        self.cni
            .attachments
            .insert(add.key.clone(), attachment.clone());
        self.persist_cni()?;
        let wired = self
            .wire(&attachment)
            .and_then(|()| self.register(&attachment));
        if let Err(error) = wired {
            if let Err(undo) = self.detach(&attachment) {
                tracing::warn!(veth = %attachment.host_veth, "undoing a failed ADD: {undo:#}");
            }
            return Err(error);
        }
        tracing::info!(
            pod = %format!("{}/{}", attachment.namespace, attachment.pod),
            veth = %attachment.host_veth,
            ipv4 = ?attachment.ipv4,
            ipv6 = ?attachment.ipv6,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CNI ADD: pod wired and its policy in force"
        );
        Ok(attachment)
    }

    /// Addresses for `add`, none in use by an attachment or an endpoint.
    fn allocate(&self, add: &CniAdd) -> anyhow::Result<CniAttachment> {
        let used: BTreeSet<IpAddr> = self
            .cni
            .attachments
            .values()
            .flat_map(|a| [a.ipv4.map(IpAddr::V4), a.ipv6.map(IpAddr::V6)])
            .chain(
                self.endpoints
                    .values()
                    .flat_map(|e| [e.spec.ipv4.map(IpAddr::V4), e.spec.ipv6.map(IpAddr::V6)]),
            )
            .flatten()
            .collect();
        let addresses = self.cni.cidrs.allocate(&used)?;
        let mac = pod_mac(&addresses);
        Ok(CniAttachment {
            key: add.key.clone(),
            namespace: add.namespace.clone(),
            pod: add.pod.clone(),
            netns: add.netns.clone(),
            host_veth: host_veth_name(&add.key),
            mac: crate::inspect::format_mac(mac),
            mtu: add.mtu.unwrap_or(self.cni.mtu),
            ipv4: addresses.ipv4,
            ipv6: addresses.ipv6,
            gateway_v4: self.cni.cidrs.gateway_v4(),
            gateway_v6: addresses.ipv6.map(|_| myelin_podnet::GATEWAY_V6),
        })
    }

    /// The veth, addresses and routes, through `myelin_podnet`.
    fn wire(&self, attachment: &CniAttachment) -> anyhow::Result<()> {
        let ipv4 = attachment
            .ipv4
            .zip(attachment.gateway_v4)
            .map(|(address, gateway)| myelin_podnet::PodIpv4 { address, gateway });
        let interface = myelin_podnet::PodInterface {
            host_veth: attachment.host_veth.clone(),
            mtu: attachment.mtu,
            mac: myelin_datapath::parse_mac(&attachment.mac),
            ipv4,
            ipv6: attachment.ipv6,
        };
        if !Path::new(&attachment.netns).exists() {
            return Err(not_found(format!(
                "the container's network namespace {} does not exist",
                attachment.netns
            )));
        }
        myelin_podnet::wire(
            Path::new(NODE_NETNS),
            Path::new(&attachment.netns),
            &interface,
        )
        .with_context(|| format!("wiring pod {}/{}", attachment.namespace, attachment.pod))
    }

    /// Registers the attachment's pod as an endpoint, as the lab registers
    /// its pods: the answer comes once its policy is in the kernel.
    fn register(&mut self, attachment: &CniAttachment) -> anyhow::Result<()> {
        let pod = self
            .cni
            .pods
            .get(&(attachment.namespace.clone(), attachment.pod.clone()))
            .cloned()
            .ok_or_else(|| {
                unavailable(format!(
                    "pod {}/{} is no longer known to the agent",
                    attachment.namespace, attachment.pod
                ))
            })?;
        let spec = EndpointSpec {
            namespace: attachment.namespace.clone(),
            pod: attachment.pod.clone(),
            labels: pod.labels,
            service_account: pod.service_account,
            ifname: attachment.host_veth.clone(),
            ipv4: attachment.ipv4,
            ipv6: attachment.ipv6,
            mac: Some(attachment.mac.clone()),
            ports: Vec::new(),
            ready: true,
        };
        self.handle(Request::EndpointUpsert(spec)).map(drop)
    }

    /// Removes the endpoint (when it is this attachment's), the veth and
    /// the attachment, freeing its addresses.
    fn detach(&mut self, attachment: &CniAttachment) -> anyhow::Result<()> {
        let key = myelin_policy::EndpointKey::new(&attachment.namespace, &attachment.pod);
        if self
            .endpoints
            .get(&key)
            .is_some_and(|e| e.spec.ifname == attachment.host_veth)
        {
            self.handle(Request::EndpointDelete {
                namespace: attachment.namespace.clone(),
                pod: attachment.pod.clone(),
            })?;
        }
        myelin_podnet::delete_link(Path::new(NODE_NETNS), &attachment.host_veth)?;
        self.cni.attachments.remove(&attachment.key);
        self.persist_cni()
    }

    pub(super) fn cni_del(&mut self, key: &AttachmentKey) -> anyhow::Result<()> {
        match self.cni.attachments.get(key).cloned() {
            Some(attachment) => {
                self.detach(&attachment)?;
                tracing::info!(veth = %attachment.host_veth, "CNI DEL: pod removed, addresses freed");
                Ok(())
            }
            // Deleted before, or never added: the veth's name alone is known.
            None => {
                myelin_podnet::delete_link(Path::new(NODE_NETNS), &host_veth_name(key))?;
                Ok(())
            }
        }
    }

    pub(super) fn cni_check(&self, key: &AttachmentKey) -> anyhow::Result<CniAttachment> {
        let attachment = self.cni.attachments.get(key).cloned().ok_or_else(|| {
            not_found(format!(
                "no attachment of container {} ({}) on this node",
                key.container_id, key.ifname
            ))
        })?;
        if !myelin_podnet::link_exists(Path::new(NODE_NETNS), &attachment.host_veth)? {
            return Err(not_found(format!(
                "the pod's veth {} is gone",
                attachment.host_veth
            )));
        }
        let endpoint = self
            .endpoints
            .get(&myelin_policy::EndpointKey::new(
                &attachment.namespace,
                &attachment.pod,
            ))
            .filter(|e| e.spec.ifname == attachment.host_veth);
        if endpoint.is_none() {
            anyhow::bail!(
                "pod {}/{} is not an endpoint of this node (the agent lost it)",
                attachment.namespace,
                attachment.pod
            );
        }
        Ok(attachment)
    }

    pub(super) fn cni_gc(&mut self, valid: &[AttachmentKey]) -> anyhow::Result<Vec<AttachmentKey>> {
        let valid: BTreeSet<&AttachmentKey> = valid.iter().collect();
        let stale: Vec<CniAttachment> = self
            .cni
            .attachments
            .values()
            .filter(|a| !valid.contains(&a.key))
            .cloned()
            .collect();
        for attachment in &stale {
            self.detach(attachment)?;
            tracing::info!(veth = %attachment.host_veth, "CNI GC: attachment the runtime no longer lists removed");
        }
        Ok(stale.into_iter().map(|a| a.key).collect())
    }

    /// Removes attachments whose veth vanished while nobody told the agent
    /// (the plugin's DEL while it was down, a namespace deleted), freeing
    /// their addresses.
    pub(super) fn reconcile_attachments(&mut self) {
        if self.cni.attachments.is_empty() {
            return;
        }
        let links = match myelin_podnet::link_names(Path::new(NODE_NETNS)) {
            Ok(links) => links,
            Err(error) => {
                tracing::warn!("listing the node's links: {error}; retried later");
                return;
            }
        };
        let vanished: Vec<CniAttachment> = self
            .cni
            .attachments
            .values()
            .filter(|a| !links.contains(&a.host_veth))
            .cloned()
            .collect();
        for attachment in vanished {
            match self.detach(&attachment) {
                Ok(()) => tracing::info!(
                    pod = %format!("{}/{}", attachment.namespace, attachment.pod),
                    veth = %attachment.host_veth,
                    "the pod's veth is gone: attachment removed, addresses freed"
                ),
                Err(error) => tracing::warn!(
                    veth = %attachment.host_veth,
                    "removing a vanished attachment: {error:#}; retried later"
                ),
            }
        }
    }
}
