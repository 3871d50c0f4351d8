//! The store against Debian's etcd, started per test on free ports under a temp dir.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use myelin_policy::{Allocator, Identity, IdentityStore, LabelSet, Retention};
use myelin_store::server::{EtcdServer, EtcdSpec};
use myelin_store::{
    Endpoint, EtcdIdentityStore, Node, NodeSession, ResourceKey, Store, StoreAddress, StoreConfig,
    Update,
};
use myelin_test_support::require_etcd;

/// An etcd of `members` members for test `name`, removed with its directory on drop.
struct Etcd {
    server: EtcdServer,
    _dir: tempfile::TempDir,
}

fn etcd(name: &str, members: usize) -> Option<Etcd> {
    if !require_etcd(name) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("myelin-store-{name}-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let server = EtcdServer::start(&EtcdSpec::new(dir.path(), members)).expect("start etcd");
    Some(Etcd { server, _dir: dir })
}

fn connect(address: StoreAddress, cluster: &str) -> Store {
    Store::connect(&StoreConfig::new(address, cluster)).expect("connect")
}

fn labels(app: &str) -> LabelSet {
    let mut set = LabelSet::new();
    set.insert("k8s", "app", app);
    set.insert("k8s", "io.kubernetes.pod.namespace", "default");
    set
}

fn endpoint(ip: &str, node: &str, identity: Identity) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        identity,
        node: node.to_string(),
        namespace: "default".into(),
        pod: format!("pod-{ip}"),
        named_ports: BTreeMap::from([("http".to_string(), 80)]),
        named_udp_ports: BTreeMap::new(),
        ready: true,
    }
}

/// Polls `check` until it holds or `timeout` passes (then fails with `what`).
async fn until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watcher's view of the endpoints, and every delete it was told.
#[derive(Default)]
struct View {
    endpoints: BTreeMap<IpAddr, Endpoint>,
    deleted: Vec<IpAddr>,
    synced: usize,
}

fn watch_endpoints(store: &Store) -> Arc<Mutex<View>> {
    let view = Arc::new(Mutex::new(View::default()));
    let mut watch = store.watch_endpoints();
    let shared = view.clone();
    tokio::spawn(async move {
        while let Some(update) = watch.next().await {
            let mut view = shared.lock().expect("view");
            match update {
                Update::Upsert(ip, ep) => {
                    view.endpoints.insert(ip, ep);
                }
                Update::Delete(ip) => {
                    view.endpoints.remove(&ip);
                    view.deleted.push(ip);
                }
                Update::Synced => view.synced += 1,
            }
        }
    });
    view
}

#[test]
fn racing_agents_agree_on_one_number_per_label_set() {
    let Some(etcd) = etcd("identity_race", 1) else {
        return;
    };
    const AGENTS: usize = 8;
    const SHARED: usize = 100;
    const OWN: usize = 100;
    let address = etcd.server.address();
    let start = Arc::new(std::sync::Barrier::new(AGENTS));
    let threads: Vec<_> = (0..AGENTS)
        .map(|agent| {
            let (address, start) = (address.clone(), start.clone());
            std::thread::spawn(move || {
                let store = connect(address, "race");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let node = format!("node{agent}");
                let session = runtime
                    .block_on(NodeSession::start(&store, &node, Duration::from_secs(30)))
                    .expect("session");
                let identities = Arc::new(EtcdIdentityStore::new(session.clone()));
                // Even agents use the agent's own allocator, unchanged, over etcd: its
                // search starts at the bottom of the range, so racers pick the same
                // number. Odd agents search from a number of their own, so racers for one
                // label set pick different numbers: both races must be lost by one side.
                let mut allocator = Allocator::new(identities.clone(), &node);
                let mut hint = 256 + agent as Identity * 4000;
                // Every agent asks for the shared sets in the same order, from the same
                // moment on, so they race for each one; their own sets lie in between.
                let names: Vec<String> = (0..SHARED.max(OWN))
                    .flat_map(|i| [format!("shared-{i}"), format!("own-{agent}-{i}")])
                    .collect();
                start.wait();
                let got: BTreeMap<String, Identity> = names
                    .into_iter()
                    .map(|name| {
                        let id = if agent % 2 == 0 {
                            allocator.allocate(&labels(&name)).expect("allocate")
                        } else {
                            let id = identities
                                .acquire(&node, &labels(&name), hint, 0)
                                .expect("acquire");
                            hint = id + 1;
                            id
                        };
                        (name, id)
                    })
                    .collect();
                (got, session, store)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("agent"))
        .collect();
    let mut number_of: BTreeMap<String, Identity> = BTreeMap::new();
    for (got, _, _) in &results {
        assert_eq!(got.len(), SHARED + OWN);
        for (name, id) in got {
            let first = *number_of.entry(name.clone()).or_insert(*id);
            assert_eq!(first, *id, "{name} got two numbers");
        }
    }
    let mut name_of: BTreeMap<Identity, &String> = BTreeMap::new();
    for (name, id) in &number_of {
        if let Some(other) = name_of.insert(*id, name) {
            panic!("{id} went to both {other} and {name}");
        }
    }
    assert_eq!(number_of.len(), SHARED + AGENTS * OWN);
    // The store holds exactly these bindings, and every agent reads them the same.
    let (_, session, _) = &results[0];
    let stored = EtcdIdentityStore::new(session.clone())
        .list()
        .expect("list");
    let expected: BTreeMap<Identity, LabelSet> = number_of
        .iter()
        .map(|(name, id)| (*id, labels(name)))
        .collect();
    assert_eq!(stored, expected);
    for (_, session, _) in &results {
        let store = EtcdIdentityStore::new(session.clone());
        for name in ["shared-0", "shared-99", "own-3-50"] {
            assert_eq!(
                store.lookup(&labels(name)).expect("lookup"),
                Some(number_of[name])
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_identities_go_only_after_the_grace_and_only_unheld() {
    let Some(etcd) = etcd("identity_gc", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "gc");
    let ttl = Duration::from_secs(2);
    let node1 = NodeSession::start(&store, "node1", ttl)
        .await
        .expect("session");
    let node2 = NodeSession::start(&store, "node2", ttl)
        .await
        .expect("session");
    let retention = Retention {
        grace_secs: 100,
        holder_timeout_secs: 1000,
    };
    let (s1, s2) = (
        EtcdIdentityStore::new(node1.clone()),
        EtcdIdentityStore::new(node2.clone()),
    );
    let (a, b, c) = tokio::task::spawn_blocking(move || {
        let a = s1.acquire("node1", &labels("a"), 256, 0).expect("a");
        let b = s2.acquire("node2", &labels("b"), 256, 0).expect("b");
        assert_eq!(s2.acquire("node2", &labels("a"), 256, 10).expect("a"), a);
        // node1 lets go of a: node2 still holds it.
        s1.refresh("node1", &BTreeSet::new(), 20).expect("refresh");
        assert!(s1.collect(500, retention).expect("collect").is_empty());
        // node2 lets go of a at 600: a stays for the grace, then goes; b is still held.
        s2.refresh("node2", &BTreeSet::from([b]), 600)
            .expect("refresh");
        assert!(s1.collect(699, retention).expect("collect").is_empty());
        assert_eq!(s1.collect(700, retention).expect("collect"), vec![a]);
        assert_eq!(s1.lookup(&labels("a")).expect("lookup"), None);
        assert_eq!(s1.lookup(&labels("b")).expect("lookup"), Some(b));
        // c is released, then held again within the grace: it stays, with its number.
        let c = s1.acquire("node1", &labels("c"), 256, 800).expect("c");
        s1.refresh("node1", &BTreeSet::new(), 810).expect("refresh");
        assert_eq!(s2.acquire("node2", &labels("c"), 256, 850).expect("c"), c);
        assert!(s1.collect(2000, retention).expect("collect").is_empty());
        assert_eq!(s1.lookup(&labels("c")).expect("lookup"), Some(c));
        (a, b, c)
    })
    .await
    .expect("allocations");
    assert_ne!(a, b);
    // node2 dies without letting go: its holds go with its lease; the collector starts
    // the grace when it first sees b and c unheld and deletes them after it.
    drop(node2);
    until(
        Duration::from_secs(30),
        "node2's holds expire with its lease",
        || {
            let store = store.clone();
            async move {
                let holds = store.holds().await.expect("holds");
                !holds.values().any(|holders| holders.contains("node2"))
            }
        },
    )
    .await;
    assert!(
        store
            .collect_identities(3000, 100)
            .await
            .expect("collect")
            .is_empty()
    );
    assert!(
        store
            .collect_identities(3099, 100)
            .await
            .expect("collect")
            .is_empty()
    );
    let collected = store.collect_identities(3100, 100).await.expect("collect");
    assert_eq!(
        collected.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([b, c])
    );
    assert!(store.identities().await.expect("list").is_empty());
    drop(node1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_endpoints_leave_the_watchers_view_within_its_ttl() {
    let Some(etcd) = etcd("lease_expiry", 1) else {
        return;
    };
    // The watcher reaches etcd over its unix socket, as an agent in another network
    // namespace would; the nodes over TCP.
    let socket = etcd.server.members()[0]
        .unix_socket()
        .expect("socket")
        .to_path_buf();
    let watcher = connect(StoreAddress::Unix(vec![socket]), "expiry");
    let store = connect(etcd.server.address(), "expiry");
    let view = watch_endpoints(&watcher);
    let mut nodes = watcher.watch_nodes();
    let ttl = Duration::from_secs(3);
    let dying = NodeSession::start(&store, "node1", ttl)
        .await
        .expect("session");
    let staying = NodeSession::start(&store, "node2", ttl)
        .await
        .expect("session");
    dying
        .publish_node(&Node {
            name: "node1".into(),
            addresses: vec!["10.99.0.1".parse().expect("ip")],
            pod_cidrs: vec!["10.244.1.0/24".parse().expect("cidr")],
            tunnel_endpoint: Some("10.99.0.1".parse().expect("ip")),
            observer_address: None,
        })
        .await
        .expect("node");
    for ip in ["10.244.1.10", "10.244.1.11", "fd00:10:244:1::10"] {
        dying
            .publish_endpoint(&endpoint(ip, "node1", 300))
            .await
            .expect("endpoint");
    }
    staying
        .publish_endpoint(&endpoint("10.244.2.10", "node2", 301))
        .await
        .expect("endpoint");
    until(
        Duration::from_secs(10),
        "the watcher sees four endpoints",
        || {
            let n = view.lock().expect("view").endpoints.len();
            async move { n == 4 }
        },
    )
    .await;
    assert_eq!(nodes.next().await, Some(Update::Synced));
    assert!(matches!(nodes.next().await, Some(Update::Upsert(name, _)) if name == "node1"));
    // node1 dies: no revoke, its keep-alive just stops.
    let died = Instant::now();
    drop(dying);
    until(ttl * 4, "node1's endpoints expire", || {
        let v = view.lock().expect("view");
        let left: Vec<IpAddr> = v.endpoints.keys().copied().collect();
        async move { left == vec!["10.244.2.10".parse::<IpAddr>().expect("ip")] }
    })
    .await;
    eprintln!(
        "node1's endpoints left the view {:?} after it died (TTL {ttl:?})",
        died.elapsed()
    );
    assert_eq!(
        nodes.next().await,
        Some(Update::Delete("node1".to_string()))
    );
    assert_eq!(view.lock().expect("view").deleted.len(), 3);
    drop(staying);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_the_nodes_keys_written_again() {
    let Some(etcd) = etcd("lease_lost", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "lost");
    let view = watch_endpoints(&store);
    let session = NodeSession::start(&store, "node1", Duration::from_secs(3))
        .await
        .expect("session");
    session
        .publish_endpoint(&endpoint("10.244.1.10", "node1", 300))
        .await
        .expect("endpoint");
    let a = EtcdIdentityStore::new(session.clone());
    let id = tokio::task::spawn_blocking(move || a.acquire("node1", &labels("a"), 256, 0))
        .await
        .expect("join")
        .expect("acquire");
    // The lease is lost as if the node had been cut off past its TTL.
    let old = session.lease().await;
    let other = connect(etcd.server.address(), "lost");
    other.revoke_lease(old).await.expect("revoke");
    // A write under the lost lease fails (unless the new lease came first); the session
    // remembers it and writes it with the rest.
    let _ = session
        .publish_endpoint(&endpoint("10.244.1.11", "node1", 300))
        .await;
    until(
        Duration::from_secs(20),
        "the session writes its keys under a new lease",
        || {
            let (store, session) = (store.clone(), session.clone());
            async move {
                session.lease().await != old
                    && store.endpoints().await.expect("endpoints").len() == 2
                    && store
                        .holds()
                        .await
                        .expect("holds")
                        .get(&id)
                        .is_some_and(|h| h.contains("node1"))
            }
        },
    )
    .await;
    until(
        Duration::from_secs(10),
        "the watcher sees both endpoints",
        || {
            let n = view.lock().expect("view").endpoints.len();
            async move { n == 2 }
        },
    )
    .await;
    assert_eq!(
        store.lookup_identity(&labels("a")).await.expect("lookup"),
        Some(id)
    );
}

/// The revision at which `key` was last written, as `etcdctl` reports it.
fn mod_revision(etcd: &Etcd, key: &str) -> Option<u64> {
    let endpoint = etcd.server.members()[0].client_address();
    let output = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "get", key, "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (Debian's etcd-client)");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    answer["kvs"][0]["mod_revision"].as_u64()
}

/// After etcd was away, a session makes again only the writes that failed,
/// not every key it owns: a thousand nodes coming back from an overload must
/// not all rewrite everything at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_only_the_failed_writes_are_made_again() {
    let Some(mut etcd) = etcd("failed_writes", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "rewrites");
    let session = NodeSession::start(&store, "node1", Duration::from_secs(15))
        .await
        .expect("session");
    session
        .publish_endpoint(&endpoint("10.244.1.10", "node1", 300))
        .await
        .expect("endpoint");
    let written = store.keys().endpoint("10.244.1.10".parse().expect("ip"));
    let before = mod_revision(&etcd, &written).expect("written once");
    etcd.server.kill(0).expect("kill");
    assert!(
        session
            .publish_endpoint(&endpoint("10.244.1.11", "node1", 300))
            .await
            .is_err()
    );
    etcd.server.restart(0).expect("restart");
    until(
        Duration::from_secs(30),
        "the failed write is made again",
        || {
            let store = store.clone();
            async move { store.endpoints().await.is_ok_and(|e| e.len() == 2) }
        },
    )
    .await;
    assert_eq!(
        mod_revision(&etcd, &written),
        Some(before),
        "a write etcd had acknowledged was made again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_on_its_data_loses_nothing_and_everyone_reconnects() {
    let Some(mut etcd) = etcd("etcd_restart", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "restart");
    let view = watch_endpoints(&store);
    let session = NodeSession::start(&store, "node1", Duration::from_secs(5))
        .await
        .expect("session");
    session
        .publish_endpoint(&endpoint("10.244.1.10", "node1", 300))
        .await
        .expect("endpoint");
    until(
        Duration::from_secs(10),
        "the watcher sees the endpoint",
        || {
            let n = view.lock().expect("view").endpoints.len();
            async move { n == 1 }
        },
    )
    .await;
    // A crash, then a restart on the same data directory.
    etcd.server.kill(0).expect("kill");
    // Written while etcd is down: fails now, written by the session once etcd is back.
    assert!(
        session
            .publish_endpoint(&endpoint("10.244.1.11", "node1", 300))
            .await
            .is_err()
    );
    etcd.server.restart(0).expect("restart");
    session
        .publish_endpoint(&endpoint("10.244.1.12", "node1", 301))
        .await
        .expect("after restart");
    until(
        Duration::from_secs(30),
        "the watcher's view equals the store's",
        || {
            let (store, view) = (store.clone(), view.clone());
            async move {
                let stored = store.endpoints().await.unwrap_or_default();
                stored.len() == 3 && view.lock().expect("view").endpoints == stored
            }
        },
    )
    .await;
    let v = view.lock().expect("view");
    assert!(v.deleted.is_empty(), "spurious deletes: {:?}", v.deleted);
    assert!(v.synced >= 2, "the watcher resynced after the restart");
}

/// While etcd is down, the identity store waits for one call's timeout, then
/// refuses at once (the agent's state owner calls it and must not stall on
/// every call); once etcd answers again it allocates as before.
#[test]
fn an_unreachable_etcd_costs_the_identity_store_one_timeout() {
    let Some(mut etcd) = etcd("identity_outage", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "outage");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let session = runtime
        .block_on(NodeSession::start(&store, "node1", Duration::from_secs(15)))
        .expect("session");
    let identities = EtcdIdentityStore::new(session);
    let before = identities
        .acquire("node1", &labels("before"), 0, 0)
        .expect("etcd up");
    etcd.server.kill(0).expect("kill");
    let first = identities.acquire("node1", &labels("during"), 0, 0);
    assert!(first.is_err(), "etcd is down: {first:?}");
    let second = identities
        .acquire("node1", &labels("during"), 0, 0)
        .expect_err("etcd is still down");
    assert!(
        second
            .to_string()
            .contains("waiting for it to answer again"),
        "the second call went to etcd again: {second}"
    );
    etcd.server.restart(0).expect("restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    let during = loop {
        match identities.acquire("node1", &labels("during"), 0, 0) {
            Ok(id) => break id,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("etcd is back but the identity store still refuses: {e}"),
        }
    };
    assert_ne!(during, before);
    assert_eq!(
        identities
            .acquire("node1", &labels("before"), 0, 0)
            .expect("known"),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_with_one_killed_go_on_and_the_member_rejoins() {
    let Some(mut etcd) = etcd("member_killed", 3) else {
        return;
    };
    let store = connect(etcd.server.address(), "members");
    let view = watch_endpoints(&store);
    let session = NodeSession::start(&store, "node1", Duration::from_secs(5))
        .await
        .expect("session");
    let identities = EtcdIdentityStore::new(session.clone());
    let allocate = |name: String| {
        let identities = identities.clone();
        async move {
            tokio::task::spawn_blocking(move || identities.acquire("node1", &labels(&name), 256, 0))
                .await
                .expect("join")
                .map_err(|e| e.to_string())
        }
    };
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(allocate(format!("before-{i}")).await.expect("allocate"));
    }
    // The leader crashes: the others elect a new one (calls in between fail or wait, and
    // are retried as an agent would), then writes, reads, allocation and the watch go on
    // with two of three.
    let leader = etcd.server.leader().expect("a leader");
    etcd.server.kill(leader).expect("kill -9 the leader");
    let mut after = Vec::new();
    for i in 0..20 {
        let ip = format!("10.244.1.{}", 10 + i);
        let ep = endpoint(&ip, "node1", 300);
        retry(|| async {
            session
                .publish_endpoint(&ep)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        after.push(retry(|| allocate(format!("after-{i}"))).await);
    }
    let all: BTreeSet<Identity> = before.iter().chain(&after).copied().collect();
    assert_eq!(all.len(), 40, "every label set its own number");
    until(
        Duration::from_secs(20),
        "the watcher sees every endpoint",
        || {
            let n = view.lock().expect("view").endpoints.len();
            async move { n == 20 }
        },
    )
    .await;
    // The member comes back and catches up: a client of it alone reads everything.
    etcd.server.restart(leader).expect("restart the member");
    let only = connect(
        StoreAddress::Tcp(vec![etcd.server.members()[leader].client_address()]),
        "members",
    );
    until(
        Duration::from_secs(20),
        "the restarted member serves every entry",
        || {
            let only = only.clone();
            async move {
                only.endpoints().await.is_ok_and(|e| e.len() == 20)
                    && only.identities().await.is_ok_and(|i| i.len() == 40)
            }
        },
    )
    .await;
    assert!(view.lock().expect("view").deleted.is_empty());
}

/// Retries a call that fails while the members elect a new leader.
async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_is_one_transaction_and_watchers_see_it() {
    let Some(etcd) = etcd("resources", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "resources");
    let mut watch = store.watch_resources();
    assert_eq!(watch.next().await, Some(Update::Synced));
    let key = |kind: &str, name: &str| ResourceKey {
        kind: kind.into(),
        namespace: "default".into(),
        name: name.into(),
    };
    let many: Vec<(ResourceKey, serde_json::Value)> = (0..300)
        .map(|i| {
            (
                key("Pod", &format!("pod-{i}")),
                serde_json::json!({"kind": "Pod", "i": i}),
            )
        })
        .collect();
    store
        .apply_resources(&many, &[])
        .await
        .expect("apply 300 in one transaction");
    assert_eq!(store.resources().await.expect("list").len(), 300);
    let mut seen = 0;
    while seen < 300 {
        match watch.next().await.expect("event") {
            Update::Upsert(k, v) => {
                assert_eq!(v["kind"], "Pod", "{k:?}");
                seen += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    store
        .apply_resources(
            &[(key("Service", "svc"), serde_json::json!({}))],
            &[key("Pod", "pod-0")],
        )
        .await
        .expect("apply");
    let resources = store.resources().await.expect("list");
    assert!(resources.contains_key(&key("Service", "svc")));
    assert!(!resources.contains_key(&key("Pod", "pod-0")));
}

/// More entries than one gRPC answer may carry (the client takes at most 4 MiB per
/// message; 100,000 endpoints are ~20 MB): a listing and a watch's first sync are paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_larger_than_one_answer_arrives_whole() {
    let Some(etcd) = etcd("large_listing", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "large");
    let padding = "x".repeat(1200);
    for batch in 0..5 {
        let resources: Vec<(ResourceKey, serde_json::Value)> = (0..1000)
            .map(|i| {
                let key = ResourceKey {
                    kind: "ConfigMap".into(),
                    namespace: "default".into(),
                    name: format!("cm-{batch}-{i}"),
                };
                (key, serde_json::json!({"data": padding}))
            })
            .collect();
        // etcd takes requests of at most 1.5 MiB: ~1.2 MB per transaction.
        store.apply_resources(&resources, &[]).await.expect("apply");
    }
    assert_eq!(store.resources().await.expect("list").len(), 5000);
    let mut watch = store.watch_resources();
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
            Ok(Some(Update::Upsert(..))) => seen += 1,
            Ok(Some(Update::Synced)) => break,
            other => panic!("after {seen} entries: {other:?}"),
        }
    }
    assert_eq!(seen, 5000);
}

#[test]
fn an_agent_in_another_network_namespace_reaches_etcd_over_its_unix_socket() {
    if !myelin_test_support::privileged("store_netns") {
        return;
    }
    let Some(etcd) = etcd("netns_socket", 1) else {
        return;
    };
    let socket = etcd.server.members()[0]
        .unix_socket()
        .expect("socket")
        .to_path_buf();
    let tcp = etcd.server.address();
    // A thread in a network namespace of its own (anonymous: it goes with the thread),
    // as a lab node's agent: 127.0.0.1 there is not etcd's, the socket's path is.
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = StoreConfig::new(tcp, "netns");
        config.timeout = Duration::from_secs(1);
        let over_tcp = Store::connect(&config).expect("connect");
        let tcp_works = runtime.block_on(over_tcp.healthy());
        let over_socket = connect(StoreAddress::Unix(vec![socket]), "netns");
        let session = runtime
            .block_on(NodeSession::start(
                &over_socket,
                "node1",
                Duration::from_secs(5),
            ))
            .expect("a lease over the socket");
        runtime
            .block_on(session.publish_endpoint(&endpoint("10.244.1.10", "node1", 300)))
            .expect("a write over the socket");
        (tcp_works, session)
    })
    .join()
    .expect("thread");
    assert!(!outcome.0, "127.0.0.1 of another namespace reached etcd");
    let store = connect(etcd.server.address(), "netns");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(
        runtime
            .block_on(store.endpoints())
            .expect("endpoints")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_again_on_its_data_and_ports_has_everything() {
    if !require_etcd("etcd_again") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("myelin-store-etcd_again-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let mut spec = EtcdSpec::new(dir.path(), 1);
    let mut first = EtcdServer::start(&spec).expect("start");
    let store = connect(first.address(), "again");
    let key = ResourceKey {
        kind: "Service".into(),
        namespace: "default".into(),
        name: "deathstar".into(),
    };
    store
        .apply_resources(
            &[(key.clone(), serde_json::json!({"kind": "Service"}))],
            &[],
        )
        .await
        .expect("apply");
    first.stop();
    spec.ports = Some(first.ports());
    drop(first);
    let second = EtcdServer::start(&spec).expect("start again");
    let resources = connect(second.address(), "again")
        .resources()
        .await
        .expect("resources");
    assert_eq!(resources.keys().collect::<Vec<_>>(), vec![&key]);
}

/// A pod as the policy engine sees it.
fn pod(name: &str, app: &str, ip: &str) -> myelin_policy::Endpoint {
    myelin_policy::Endpoint {
        namespace: "default".into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        ips: vec![ip.parse().expect("ip")],
        ports: Vec::new(),
        service_account: None,
    }
}

#[test]
fn policy_engines_of_two_nodes_share_identities_through_etcd() {
    let Some(etcd) = etcd("engines", 1) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = |node: &str| {
        let store = connect(etcd.server.address(), "engines");
        let session = runtime
            .block_on(NodeSession::start(&store, node, Duration::from_secs(15)))
            .expect("session");
        myelin_policy::PolicyEngine::new(Arc::new(EtcdIdentityStore::new(session)), node)
    };
    // The agent's engine, unchanged, on each node.
    let (mut node1, mut node2) = (engine("node1"), engine("node2"));
    node1
        .upsert_endpoint(pod("a-1", "a", "10.244.1.5"))
        .expect("a-1");
    node1
        .upsert_endpoint(pod("b-1", "b", "10.244.1.6"))
        .expect("b-1");
    node2
        .upsert_endpoint(pod("a-2", "a", "10.244.2.5"))
        .expect("a-2");
    let a = node1.identity_of_ip("10.244.1.5".parse().expect("ip"));
    assert_eq!(node2.identity_of_ip("10.244.2.5".parse().expect("ip")), a);
    assert_ne!(node1.identity_of_ip("10.244.1.6".parse().expect("ip")), a);
    let retention = Retention {
        grace_secs: 60,
        holder_timeout_secs: 3600,
    };
    let now = myelin_policy::unix_now();
    // node1's a pod goes: node2 still uses a.
    node1.remove_endpoint(&myelin_policy::EndpointKey::new("default", "a-1"));
    assert!(
        node1
            .collect_identities(now, retention)
            .expect("gc")
            .is_empty()
    );
    assert!(
        node1
            .collect_identities(now + 600, retention)
            .expect("gc")
            .is_empty()
    );
    // node2's goes too: a stays for the grace, then goes; b stays.
    node2.remove_endpoint(&myelin_policy::EndpointKey::new("default", "a-2"));
    assert!(
        node2
            .collect_identities(now + 700, retention)
            .expect("gc")
            .is_empty()
    );
    assert_eq!(
        node2.collect_identities(now + 760, retention).expect("gc"),
        vec![a]
    );
    let left = runtime
        .block_on(connect(etcd.server.address(), "engines").identities())
        .expect("identities");
    assert_eq!(left.len(), 1);
    assert!(
        left.values().all(|l| l.to_string().contains("app=b")),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_takes_its_holds_over_to_its_new_lease() {
    let Some(etcd) = etcd("holds_takeover", 1) else {
        return;
    };
    let store = connect(etcd.server.address(), "takeover");
    let ttl = Duration::from_secs(2);
    let before = NodeSession::start(&store, "node1", ttl)
        .await
        .expect("session");
    let (a, b) = (
        before
            .acquire_identity("node1", &labels("a"), 256)
            .await
            .expect("a"),
        before
            .acquire_identity("node1", &labels("b"), 256)
            .await
            .expect("b"),
    );
    // The agent restarts: a new process, a new lease; the old one runs out.
    drop(before);
    let after = NodeSession::start(&store, "node1", ttl)
        .await
        .expect("session");
    after
        .refresh_holds("node1", &BTreeSet::from([a]), 100)
        .await
        .expect("refresh");
    tokio::time::sleep(ttl * 2).await;
    let holds = store.holds().await.expect("holds");
    assert!(
        holds.get(&a).is_some_and(|h| h.contains("node1")),
        "{holds:?}"
    );
    assert!(!holds.contains_key(&b), "{holds:?}");
    // a is in use; b was let go at 100: collected after the grace, a never.
    let gc = |now| {
        let store = store.clone();
        async move { store.collect_identities(now, 50).await.expect("gc") }
    };
    assert!(gc(149).await.is_empty());
    assert_eq!(gc(150).await, vec![b]);
    assert!(gc(10_000).await.is_empty());
}
