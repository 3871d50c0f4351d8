//! What the lab tells an agent of its pods and services.

use myelin_api::agent::{EndpointSpec, NamedPort, ServicePortSpec, ServiceSpec, TargetPort};
use myelin_model::workload::IntOrString;

use crate::state::{PodRecord, ServiceRecord};
use crate::vocabulary::namespace_of;

/// The agent's view of a pod.
pub fn endpoint_spec(record: &PodRecord) -> EndpointSpec {
    EndpointSpec {
        namespace: namespace_of(&record.pod.metadata),
        pod: record.pod.metadata.name.clone(),
        labels: record.pod.metadata.labels.clone(),
        service_account: record.pod.spec.service_account().map(str::to_string),
        ifname: record.host_veth.clone(),
        ipv4: Some(record.ipv4),
        ipv6: Some(record.ipv6),
        mac: record.mac.clone(),
        ports: record
            .pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .map(|p| NamedPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: p.protocol,
            })
            .collect(),
        ready: record.ready,
    }
}

/// The agent's view of a service.
pub fn service_spec(record: &ServiceRecord) -> ServiceSpec {
    ServiceSpec {
        namespace: namespace_of(&record.service.metadata),
        name: record.service.metadata.name.clone(),
        cluster_ips: record.cluster_ips.clone(),
        ports: record
            .service
            .spec
            .ports
            .iter()
            .map(|p| ServicePortSpec {
                name: p.name.clone(),
                port: p.port,
                // The model accepted only what the API server accepts: absent,
                // 0 and "" mean the service port, a name is a container port's.
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                        Ok(n) if n > 0 => TargetPort::Number(n),
                        _ => TargetPort::Number(p.port),
                    },
                    Some(IntOrString::String(name)) if !name.is_empty() => {
                        TargetPort::Name(name.clone())
                    }
                    _ => TargetPort::Number(p.port),
                },
                protocol: p.protocol,
            })
            .collect(),
        selector: record.service.spec.selector.clone(),
        affinity_timeout_s: record.service.spec.client_ip_affinity_timeout(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_manifests::parse;
    use myelin_model::Resource;

    /// The lab's record of the one Service `yaml` holds, without cluster IPs.
    fn service_record(yaml: &str) -> ServiceRecord {
        let Some(Resource::Service(service)) = parse(yaml).into_iter().next().map(|d| d.resource)
        else {
            panic!("a Service");
        };
        ServiceRecord {
            service,
            cluster_ips: vec![],
        }
    }

    #[test]
    fn a_client_ip_service_reaches_the_agent_with_its_timeout() {
        let record = service_record(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}], \
             sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}}\n",
        );
        assert_eq!(service_spec(&record).affinity_timeout_s, Some(600));
    }

    #[test]
    fn a_pod_reaches_the_agent_with_its_service_account_and_port_protocols() {
        let documents = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: probe}\nspec:\n  serviceAccountName: empire-probe\n  \
             containers: [{name: c, image: nginx, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]\n",
        );
        let Some(Resource::Pod(pod)) = documents.into_iter().next().map(|d| d.resource) else {
            panic!("a Pod");
        };
        let record = PodRecord {
            pod,
            owner: None,
            node: "node1".into(),
            netns: "ns".into(),
            host_veth: "veth1".into(),
            ipv4: "10.244.1.2".parse().expect("ipv4"),
            ipv6: "fd00:10:244:1::2".parse().expect("ipv6"),
            mac: None,
            processes: vec![],
            phase: "Running".into(),
            ready: true,
        };
        let spec = endpoint_spec(&record);
        assert_eq!(spec.service_account.as_deref(), Some("empire-probe"));
        assert_eq!(spec.ports[0].protocol, myelin_api::agent::Protocol::Udp);
    }

    #[test]
    fn a_target_port_of_zero_or_empty_means_the_service_port() {
        let record = service_record(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [\
             {name: a, port: 80, targetPort: 0}, {name: b, port: 81, targetPort: ''}, \
             {name: c, port: 82, targetPort: 8080}, {name: d, port: 83, targetPort: http}]}\n",
        );
        let targets: Vec<TargetPort> = service_spec(&record)
            .ports
            .into_iter()
            .map(|p| p.target_port)
            .collect();
        assert_eq!(
            targets,
            [
                TargetPort::Number(80),
                TargetPort::Number(81),
                TargetPort::Number(8080),
                TargetPort::Name("http".into()),
            ]
        );
    }
}
