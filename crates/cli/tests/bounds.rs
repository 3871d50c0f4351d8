//! Bounds in the lab: a Service too big for the kernel's maps is refused
//! whole and blocks nothing else; closed connections and stray datagrams do
//! not linger in conntrack.

mod common;

use common::{Lab, starwars, text};
use myelin_test_support::privileged;

const LANDING: &str = "http://deathstar.default.svc.cluster.local/v1/request-landing";

/// The frontends the kernel holds, as `myelin bpf services` lists them.
fn frontends(lab: &Lab) -> Vec<String> {
    let services: serde_json::Value =
        serde_json::from_str(&lab.ok(&["bpf", "services", "-o", "json"])).expect("json");
    let mut out: Vec<String> = services
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["frontend"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

fn lands(lab: &Lab) -> bool {
    let output = lab.exec("tiefighter", &["curl", "-s", "-m", "3", "-XPOST", LANDING]);
    String::from_utf8_lossy(&output.stdout).contains("Ship landed")
}

fn cluster_ip(lab: &Lab, service: &str) -> String {
    let status = lab.status();
    status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| s["cluster_ips"][0].as_str())
        .unwrap_or_else(|| panic!("no cluster IP for {service} in {status}"))
        .to_string()
}

#[test]
fn an_oversized_service_is_refused_whole_and_blocks_no_other() {
    if !privileged("an_oversized_service_is_refused_whole_and_blocks_no_other") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    let before = frontends(&lab);
    // 33,000 ports in both families: more frontends than the kernel's
    // service map holds (65,536), in a manifest Kubernetes would accept.
    let ports: Vec<String> = (1..=33_000)
        .map(|p| format!("{{name: p{p}, port: {p}}}"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.yaml");
    std::fs::write(
        &huge,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: huge}}\nspec:\n  selector: {{app: nobody}}\n  ports: [{}]\n",
            ports.join(", ")
        ),
    )
    .expect("write");
    let output = lab.myelin(&["apply", "-f", huge.to_str().expect("utf-8 path")]);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("huge") && said.contains("failed") && said.contains("MYELIN_SERVICES"),
        "the report names the Service and the map:\n{said}"
    );
    assert_eq!(frontends(&lab), before, "nothing of it reached the kernel");
    assert!(
        !lab.status()["services"].to_string().contains("\"huge\""),
        "nor the lab's state"
    );

    // Everything else goes on: a new Service is programmed, the deathstar answers.
    let extra = dir.path().join("extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra}\nspec:\n  selector: {org: empire}\n  ports: [{port: 8080, targetPort: 80}]\n",
    )
    .expect("write");
    lab.ok(&["apply", "-f", extra.to_str().expect("utf-8 path")]);
    let ip = cluster_ip(&lab, "extra");
    assert!(
        frontends(&lab).contains(&format!("{ip}:8080")),
        "{:?}",
        frontends(&lab)
    );
    assert!(lands(&lab), "the deathstar still answers");
}

#[test]
fn closed_connections_and_stray_datagrams_do_not_linger_in_conntrack() {
    if !privileged("closed_connections_and_stray_datagrams_do_not_linger_in_conntrack") {
        return;
    }
    let lab = Lab::named();
    lab.up(&starwars());
    for _ in 0..5 {
        let output = lab.exec(
            "tiefighter",
            &["curl", "-4", "-s", "-m", "3", "-XPOST", LANDING],
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("Ship landed"));
    }
    let tiefighter = lab.pod_address("tiefighter", 4);
    let vip = cluster_ip(&lab, "deathstar");
    let ct = |lab: &Lab| -> Vec<serde_json::Value> {
        let ct: serde_json::Value =
            serde_json::from_str(&lab.ok(&["bpf", "ct", "-o", "json"])).expect("json");
        ct.as_array().expect("list").clone()
    };
    let entries = ct(&lab);
    let service_entries: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| {
            e["scope"] == "service"
                && e["destination"] == format!("{vip}:80")
                && e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{tiefighter}:")))
        })
        .collect();
    assert!(!service_entries.is_empty(), "{entries:?}");
    // Each connection closed (FIN both ways): its TCP entries expire within
    // the close timeout, not the established one (hours).
    let tcp_from_tiefighter = entries.iter().filter(|e| {
        e["protocol"] == 6
            && e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{tiefighter}:")))
    });
    for entry in tcp_from_tiefighter {
        let left = entry["expires_in_seconds"].as_u64();
        assert!(
            left.is_none_or(|s| s <= 10),
            "a closed connection's entry lingers: {entry}"
        );
    }

    // A datagram to a port of the cluster IP that no frontend serves is
    // refused without leaving an entry.
    let sent = lab.exec(
        "tiefighter",
        &["bash", "-c", &format!("echo probe > /dev/udp/{vip}/9999")],
    );
    assert!(
        sent.status.success(),
        "the datagram was not sent: {}",
        text(&sent)
    );
    let stray: Vec<serde_json::Value> = ct(&lab)
        .into_iter()
        .filter(|e| {
            e["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(":9999"))
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
