//! Services and their backends, and the DNS names derived from both: the
//! pure part of the agent, tested without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use myelin_dns::Zone;

use crate::api::{EndpointSpec, ServiceSpec, TargetPort};

/// One resolved backend of one service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The port on the cluster IP.
    pub service_port: u16,
    /// The backend's address and port.
    pub address: SocketAddr,
}

/// The ready backends of `service` among `endpoints`, every family the pod
/// has, sorted.
pub fn backends<'a>(
    service: &ServiceSpec,
    endpoints: impl Iterator<Item = &'a EndpointSpec> + Clone,
) -> Vec<Backend> {
    let Some(selector) = &service.selector else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for port in &service.ports {
        for endpoint in endpoints.clone() {
            let selected = endpoint.ready
                && endpoint.namespace == service.namespace
                && selector
                    .iter()
                    .all(|(k, v)| endpoint.labels.get(k) == Some(v));
            if !selected {
                continue;
            }
            let target = match &port.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => endpoint
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name) && p.protocol == port.protocol)
                    .map(|p| p.port),
            };
            let Some(target) = target else { continue };
            let addresses = [endpoint.ipv4.map(IpAddr::V4), endpoint.ipv6.map(IpAddr::V6)];
            out.extend(addresses.into_iter().flatten().map(|ip| Backend {
                service_port: port.port,
                address: SocketAddr::new(ip, target),
            }));
        }
    }
    out.sort();
    out
}

/// The DNS names of the cluster: `<svc>.<ns>.svc.cluster.local` for every
/// service, and `<a-b-c-d>.<ns>.pod.cluster.local` for every pod address.
pub fn zone<'a>(
    services: impl Iterator<Item = &'a ServiceSpec>,
    endpoints: impl Iterator<Item = &'a EndpointSpec>,
) -> Zone {
    let mut zone = Zone::default();
    for service in services {
        let name = format!(
            "{}.{}.svc.{}",
            service.name,
            service.namespace,
            myelin_dns::CLUSTER_DOMAIN
        );
        for ip in &service.cluster_ips {
            zone.insert(&name, *ip);
        }
    }
    for endpoint in endpoints {
        let addresses = [endpoint.ipv4.map(IpAddr::V4), endpoint.ipv6.map(IpAddr::V6)];
        for ip in addresses.into_iter().flatten() {
            let label = match ip {
                IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
                IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
            };
            zone.insert(
                &format!(
                    "{label}.{}.pod.{}",
                    endpoint.namespace,
                    myelin_dns::CLUSTER_DOMAIN
                ),
                ip,
            );
        }
    }
    zone
}

/// Services keyed by namespace and name.
pub type ServiceTable = BTreeMap<(String, String), ServiceSpec>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NamedPort, Protocol, ServicePortSpec};

    fn pod(name: &str, class: &str, last: u8, ready: bool) -> EndpointSpec {
        EndpointSpec {
            namespace: "default".into(),
            pod: name.into(),
            labels: [
                ("org".into(), "empire".into()),
                ("class".into(), class.into()),
            ]
            .into_iter()
            .collect(),
            ifname: format!("veth{last}"),
            ipv4: Some(std::net::Ipv4Addr::new(10, 244, 1, last)),
            ipv6: Some(format!("fd00:10:244:1::{last:x}").parse().expect("ipv6")),
            service_account: None,
            mac: None,
            ports: vec![NamedPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            ready,
        }
    }

    fn service(target_port: TargetPort) -> ServiceSpec {
        ServiceSpec {
            namespace: "default".into(),
            name: "deathstar".into(),
            cluster_ips: vec![
                "10.96.0.10".parse().expect("ip"),
                "fd00:10:96::a".parse().expect("ip"),
            ],
            ports: vec![ServicePortSpec {
                name: None,
                port: 80,
                target_port,
                protocol: Protocol::Tcp,
            }],
            selector: Some([("class".into(), "deathstar".into())].into_iter().collect()),
            affinity_timeout_s: None,
        }
    }

    #[test]
    fn selects_ready_pods_of_the_namespace_in_both_families() {
        let mut other_ns = pod("ds-3", "deathstar", 7, true);
        other_ns.namespace = "kube-system".into();
        let pods = [
            pod("ds-1", "deathstar", 5, true),
            pod("ds-2", "deathstar", 6, false),
            pod("tiefighter", "tiefighter", 8, true),
            other_ns,
        ];
        let found = backends(&service(TargetPort::Number(80)), pods.iter());
        let addresses: Vec<String> = found.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addresses, ["10.244.1.5:80", "[fd00:10:244:1::5]:80"]);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pods = [pod("ds-1", "deathstar", 5, true)];
        let found = backends(&service(TargetPort::Name("http".into())), pods.iter());
        assert!(
            found
                .iter()
                .all(|b| b.address.port() == 8080 && b.service_port == 80)
        );
        assert!(backends(&service(TargetPort::Name("grpc".into())), pods.iter()).is_empty());
    }

    #[test]
    fn every_frontend_of_a_client_ip_service_carries_its_affinity() {
        let pods = [pod("ds-1", "deathstar", 5, true)];
        let mut sticky = service(TargetPort::Number(80));
        sticky.affinity_timeout_s = Some(600);
        let groups = crate::reconcile::desired_services([sticky].iter(), pods.iter());
        assert_eq!(groups.len(), 1, "one group per Service: {groups:?}");
        let frontends = &groups[0].frontends;
        assert_eq!(frontends.len(), 2, "one per family: {frontends:?}");
        assert!(
            frontends
                .iter()
                .all(|s| s.affinity_timeout_s == Some(600) && s.backends.len() == 1)
        );
        let plain = [service(TargetPort::Number(80))];
        let groups = crate::reconcile::desired_services(plain.iter(), pods.iter());
        assert!(
            groups
                .iter()
                .flat_map(|g| &g.frontends)
                .all(|s| s.affinity_timeout_s.is_none())
        );
    }

    #[test]
    fn zone_has_services_and_pods() {
        let services = [service(TargetPort::Number(80))];
        let pods = [pod("ds-1", "deathstar", 5, true)];
        let zone = zone(services.iter(), pods.iter());
        let v4 = zone.lookup(
            "deathstar.default.svc.cluster.local",
            myelin_dns::RecordType::A,
        );
        assert_eq!(v4, Some(vec!["10.96.0.10".parse().expect("ip")]));
        assert!(
            zone.lookup(
                "10-244-1-5.default.pod.cluster.local",
                myelin_dns::RecordType::A
            )
            .is_some()
        );
        assert!(
            zone.lookup(
                "fd00-10-244-1--5.default.pod.cluster.local",
                myelin_dns::RecordType::Aaaa
            )
            .is_some()
        );
    }
}
