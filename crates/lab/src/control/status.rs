//! `myelin lab status`: the state read at once, then each agent asked.

use std::net::IpAddr;

use myelin_api::agent::{Request, Response};
use myelin_api::lab::{LabStatus, NodeStatus, PodStatus, ServiceSummary};

use crate::ipam;
use crate::state::{PodRecord, ServiceRecord};
use crate::supervisor::Lab;
use crate::vocabulary::namespace_of;

/// How long `lab status` waits for an agent that is busy.
const AGENT_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The lab as `lab status` shows it. The state is read at once; the agents
/// are asked after, each for at most [`AGENT_STATUS_TIMEOUT`].
pub async fn status(lab: &Lab) -> LabStatus {
    let mut status = lab.read(|state| LabStatus {
        lab: state.lab.clone(),
        nodes: Vec::new(),
        pods: state.pods.values().map(pod_status).collect(),
        services: state.services.values().map(service_summary).collect(),
        exposed: lab.exposed(),
        policies: state.policies.keys().cloned().collect(),
    });
    for node in lab.nodes() {
        let asked = tokio::time::timeout(AGENT_STATUS_TIMEOUT, node.agent(&Request::Status)).await;
        let agent = match asked {
            Ok(Ok(Response::Status(status))) => Ok(status),
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!(
                "busy: no answer within {} s",
                AGENT_STATUS_TIMEOUT.as_secs()
            )),
        };
        status.nodes.push(NodeStatus {
            name: node.name().to_string(),
            netns: node.record.netns.clone(),
            pod_cidrs: ipam::node_pod_cidrs(node.record.index).to_vec(),
            underlay: vec![
                IpAddr::V4(ipam::node_underlay_v4(node.record.index)),
                IpAddr::V6(ipam::node_underlay_v6(node.record.index)),
            ],
            agent,
        });
    }
    status
}

fn pod_status(p: &PodRecord) -> PodStatus {
    PodStatus {
        namespace: namespace_of(&p.pod.metadata),
        name: p.pod.metadata.name.clone(),
        node: p.node.clone(),
        addresses: vec![IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)],
        phase: p.phase.clone(),
        ready: p.ready,
        netns: p.netns.clone(),
    }
}

fn service_summary(s: &ServiceRecord) -> ServiceSummary {
    ServiceSummary {
        namespace: namespace_of(&s.service.metadata),
        name: s.service.metadata.name.clone(),
        cluster_ips: s.cluster_ips.clone(),
        ports: s
            .service
            .spec
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect(),
        affinity_timeout_s: s.service.spec.client_ip_affinity_timeout(),
    }
}
