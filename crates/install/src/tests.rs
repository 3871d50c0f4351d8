//! The printed stream read back as a cluster would: every document into its API type,
//! nothing lost on the way.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

/// The documents of `yaml`, each as JSON.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).expect("the output is YAML")
}

/// `document` as a `T`, checked to write back as the same JSON: a field the type does
/// not know (misspelt, misplaced) would be dropped on the way and show here.
fn typed<T: DeserializeOwned + Serialize>(document: &serde_json::Value) -> T {
    let object: T =
        serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{e}: {document:#}"));
    let back = serde_json::to_value(&object).expect("serialises");
    assert_eq!(&back, document, "the round trip changed the document");
    object
}

/// Every document of `yaml`, checked by kind; the kinds in order.
fn check_round_trip(yaml: &str) -> Vec<String> {
    documents(yaml)
        .iter()
        .map(|document| {
            let kind = document["kind"].as_str().expect("a kind").to_owned();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(document)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(document)),
                "ClusterRole" => drop(typed::<ClusterRole>(document)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(document)),
                "ConfigMap" => drop(typed::<ConfigMap>(document)),
                "DaemonSet" => drop(typed::<DaemonSet>(document)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(document)),
                other => panic!("unexpected kind {other}"),
            }
            kind
        })
        .collect()
}

fn all_options() -> Options {
    Options {
        namespace: "mesh".into(),
        image: "registry.example/myelin:1.2.3".into(),
        cluster_name: "prod-eu-1".into(),
        routing: "native".into(),
        pod_mtu: Some(8950),
        with_cilium_crds: true,
    }
}

/// The one document of `kind` (and `name`, for CRDs) in `yaml`, typed.
fn find<T: DeserializeOwned + Serialize>(yaml: &str, kind: &str) -> T {
    let mut found = documents(yaml)
        .into_iter()
        .filter(|document| document["kind"] == kind);
    let document = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "two of {kind}");
    typed(&document)
}

fn pod_spec(yaml: &str) -> PodSpec {
    find::<DaemonSet>(yaml, "DaemonSet")
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod spec")
}

#[test]
fn every_document_reads_back_into_its_type_unchanged() {
    let default = render(&Options::default()).expect("renders");
    assert_eq!(
        check_round_trip(&default),
        [
            "Namespace",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ]
    );
    let with_cilium = render(&all_options()).expect("renders");
    assert_eq!(check_round_trip(&with_cilium).len(), 11);
}

#[test]
fn the_round_trip_check_catches_a_misspelt_field() {
    let yaml = render(&Options::default())
        .expect("renders")
        .replace("hostNetwork: true", "hostNetwrok: true");
    let document = documents(&yaml)
        .into_iter()
        .find(|document| document["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let object: DaemonSet = serde_json::from_value(document.clone()).expect("still decodes");
    assert_ne!(serde_json::to_value(object).expect("serialises"), document);
}

#[test]
fn the_output_opens_with_what_does_not_work_yet_and_explains_each_rule() {
    let yaml = render(&Options::default()).expect("renders");
    assert!(yaml.starts_with(HEADER));
    assert!(yaml.contains("NOT YET FUNCTIONAL"));
    for grant in rbac::grants() {
        assert!(
            yaml.contains(&format!("# {}\n", grant.reason)),
            "{}",
            grant.reason
        );
    }
    let role: ClusterRole = find(&yaml, "ClusterRole");
    let grants: Vec<_> = rbac::grants().into_iter().map(|grant| grant.rule).collect();
    assert_eq!(role.rules, Some(grants));
}

/// Every path `args` names under `/`, so that mounts can be checked to hold them.
fn absolute_paths(args: &[String]) -> Vec<&str> {
    args.iter()
        .flat_map(|arg| arg.split_whitespace())
        .filter(|word| word.starts_with('/'))
        .collect()
}

fn mounted(container: &Container) -> Vec<String> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| mount.mount_path.clone())
        .collect()
}

#[test]
fn the_daemon_set_mounts_what_its_containers_use() {
    let yaml = render(&Options::default()).expect("renders");
    let pod = pod_spec(&yaml);
    let volumes: BTreeSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .map(|volume| volume.name.clone())
        .collect();
    let containers: Vec<Container> = pod
        .init_containers
        .clone()
        .into_iter()
        .flatten()
        .chain(pod.containers.clone())
        .collect();
    let mut used = BTreeSet::new();
    for container in &containers {
        for mount in container.volume_mounts.iter().flatten() {
            assert!(volumes.contains(&mount.name), "{} unknown", mount.name);
            used.insert(mount.name.clone());
        }
        // Each file the container names on its command line lies under one of its mounts
        // or is in the image (the binaries).
        let words: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .cloned()
            .collect();
        let mounts = mounted(container);
        for path in absolute_paths(&words) {
            let in_image =
                [node_agent::MYELIN_BINARY, node_agent::CNI_BINARY, "/bin/sh"].contains(&path);
            assert!(
                in_image || mounts.iter().any(|mount| path.starts_with(mount.as_str())),
                "{}: {path} is on no mount",
                container.name
            );
        }
    }
    assert_eq!(used, volumes, "every volume is mounted");
    let agent = &pod.containers[0];
    assert_eq!(agent.name, "agent");
    assert_eq!(
        agent.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let propagation = |path: &str| {
        agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| mount.mount_path == path)
            .and_then(|mount| mount.mount_propagation.clone())
    };
    assert_eq!(
        propagation("/sys/fs/bpf").as_deref(),
        Some("HostToContainer")
    );
    assert_eq!(
        propagation("/run/netns").as_deref(),
        Some("HostToContainer")
    );
    // The init container copies the conflist the ConfigMap holds.
    let config: ConfigMap = find(&yaml, "ConfigMap");
    let conflist = &config.data.expect("data")[node_agent::CONFLIST];
    let conflist: serde_json::Value = serde_json::from_str(conflist).expect("JSON");
    assert_eq!(conflist["plugins"][0]["type"], "myelin-cni");
    assert_eq!(
        conflist["plugins"][0]["agentSocket"],
        node_agent::AGENT_SOCKET
    );
    assert!(node_agent::agent_args().contains(&node_agent::AGENT_SOCKET.to_owned()));
}

#[test]
fn the_daemon_set_runs_on_every_node_one_node_at_a_time() {
    let yaml = render(&Options::default()).expect("renders");
    let daemon_set: DaemonSet = find(&yaml, "DaemonSet");
    let spec = daemon_set.spec.expect("spec");
    let update = spec.update_strategy.expect("update strategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        serde_json::to_value(
            update
                .rolling_update
                .expect("rolling update")
                .max_unavailable
        )
        .expect("serialises"),
        1
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.expect("tolerations");
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    assert_eq!(tolerations[0].key, None);
    let agent = &pod.containers[0];
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("GET");
        (
            get.path.expect("path"),
            serde_json::to_value(get.port).expect("port"),
        )
    };
    let port = serde_json::Value::from(node_agent::AGENT_METRICS_PORT);
    assert_eq!(
        probe_path(&agent.liveness_probe),
        ("/healthz".into(), port.clone())
    );
    assert_eq!(probe_path(&agent.readiness_probe), ("/readyz".into(), port));
    let args = agent.args.clone().expect("args");
    let metrics = args
        .iter()
        .position(|arg| arg == "--metrics")
        .expect("--metrics");
    assert_eq!(
        args[metrics + 1],
        format!("127.0.0.1:{}", node_agent::AGENT_METRICS_PORT)
    );
    // No flag the agent does not have.
    assert!(!args.iter().any(|arg| arg.contains("kubernetes")));
}

#[test]
fn options_change_what_they_name() {
    let default = render(&Options::default()).expect("renders");
    let chosen = render(&all_options()).expect("renders");

    let namespace: Namespace = find(&chosen, "Namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some("mesh"));
    let account: ServiceAccount = find(&chosen, "ServiceAccount");
    assert_eq!(account.metadata.namespace.as_deref(), Some("mesh"));
    let binding: ClusterRoleBinding = find(&chosen, "ClusterRoleBinding");
    assert_eq!(
        binding.subjects.expect("subjects")[0].namespace.as_deref(),
        Some("mesh")
    );
    let daemon_set: DaemonSet = find(&chosen, "DaemonSet");
    assert_eq!(daemon_set.metadata.namespace.as_deref(), Some("mesh"));

    let images = |yaml: &str| -> BTreeSet<String> {
        let pod = pod_spec(yaml);
        pod.init_containers
            .into_iter()
            .flatten()
            .chain(pod.containers)
            .map(|container| container.image.expect("image"))
            .collect()
    };
    assert_eq!(
        images(&chosen),
        BTreeSet::from(["registry.example/myelin:1.2.3".into()])
    );
    assert_eq!(
        images(&default),
        BTreeSet::from([format!("localhost/myelin:{}", env!("CARGO_PKG_VERSION"))])
    );

    let data = |yaml: &str| find::<ConfigMap>(yaml, "ConfigMap").data.expect("data");
    let (default_data, chosen_data) = (data(&default), data(&chosen));
    assert_eq!(default_data["cluster-name"], "default");
    assert_eq!(default_data["routing"], "tunnel");
    assert!(!default_data.contains_key("pod-mtu"));
    assert_eq!(chosen_data["cluster-name"], "prod-eu-1");
    assert_eq!(chosen_data["routing"], "native");
    assert_eq!(chosen_data["pod-mtu"], "8950");
    let mtu = |data: &std::collections::BTreeMap<String, String>| {
        serde_json::from_str::<serde_json::Value>(&data[node_agent::CONFLIST]).expect("JSON")
            ["plugins"][0]["mtu"]
            .clone()
    };
    assert_eq!(mtu(&default_data), serde_json::Value::Null);
    assert_eq!(mtu(&chosen_data), 8950);

    let crd_names = |yaml: &str| -> Vec<String> {
        documents(yaml)
            .iter()
            .filter(|document| document["kind"] == "CustomResourceDefinition")
            .map(|document| {
                document["metadata"]["name"]
                    .as_str()
                    .expect("name")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        crd_names(&default),
        [
            "myelinnodes.myelin.io",
            "myelinendpoints.myelin.io",
            "myelinidentities.myelin.io"
        ]
    );
    let with_cilium = crd_names(&chosen);
    assert_eq!(
        with_cilium[3..],
        [
            "ciliumnetworkpolicies.cilium.io",
            "ciliumclusterwidenetworkpolicies.cilium.io"
        ]
    );
}

#[test]
fn the_cilium_policy_crds_keep_their_specs_as_given() {
    for crd in cilium_crds::definitions() {
        let version = &crd.spec.versions[0];
        assert_eq!(
            (crd.spec.group.as_str(), version.name.as_str()),
            ("cilium.io", "v2")
        );
        let schema = version
            .schema
            .as_ref()
            .and_then(|schema| schema.open_api_v3_schema.as_ref())
            .expect("a schema");
        let properties = schema.properties.as_ref().expect("properties");
        assert_eq!(
            properties["spec"].x_kubernetes_preserve_unknown_fields,
            Some(true)
        );
        assert_eq!(properties["specs"].type_.as_deref(), Some("array"));
    }
}

#[test]
fn a_bad_option_prints_nothing_and_names_itself() {
    let bad = Options {
        namespace: "Myelin_System".into(),
        ..Options::default()
    };
    let error = render(&bad).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "invalid value \"Myelin_System\" for --namespace: not an RFC 1123 DNS label: only \
         lowercase letters, digits and '-' are allowed"
    );
    let bad = Options {
        routing: "vxlan".into(),
        ..Options::default()
    };
    assert!(
        render(&bad)
            .expect_err("refused")
            .to_string()
            .contains("--routing")
    );
}
