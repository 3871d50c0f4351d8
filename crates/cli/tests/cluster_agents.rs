//! Two real agents (`myelin agent`, each in a node network namespace of its
//! own, with its datapath) on one real etcd: a pod of node A reaches node
//! B's kernel maps with its cluster identity, leaves them when deleted or
//! when A dies, and B's maps stand while etcd is away.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use myelin_api::agent::{BpfTable, EndpointSpec, Request, Response, call};
use myelin_store::server::{EtcdServer, EtcdSpec};
use myelin_test_support::{ScratchBpffs, privileged, require_etcd};

const MYELIN: &str = env!("CARGO_BIN_EXE_myelin");
const TTL_SECS: u64 = 3;
/// Generous: a loaded shared machine.
const WITHIN: Duration = Duration::from_secs(60);

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run");
    assert!(status.success(), "{args:?}");
}

/// A node: its network namespace (with a veth pair for one pod), bpffs and
/// agent, removed by name and PID on drop.
struct NodeUnderTest {
    name: String,
    netns: String,
    dir: PathBuf,
    /// Unmounted on drop.
    _bpffs: ScratchBpffs,
    agent: Option<Child>,
    args: Vec<String>,
}

impl NodeUnderTest {
    fn new(name: &str, index: u8, dir: &Path, store: &str, cluster: &str) -> Self {
        let netns = format!("mcl-{name}-{}", std::process::id());
        run(&["ip", "netns", "add", &netns]);
        for (host, pod) in [("lxc5", "pod5"), ("lxc10", "pod10")] {
            run(&[
                "ip", "-n", &netns, "link", "add", host, "type", "veth", "peer", "name", pod,
            ]);
            run(&["ip", "-n", &netns, "link", "set", host, "up"]);
            run(&["ip", "-n", &netns, "link", "set", pod, "up"]);
        }
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let bpffs = ScratchBpffs::mount().expect("bpffs");
        let args = vec![
            "agent".to_string(),
            "--node".into(),
            name.into(),
            "--netns".into(),
            netns.clone(),
            "--api-socket".into(),
            dir.join("agent.sock").display().to_string(),
            "--bpffs".into(),
            bpffs.path().display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--cluster-store".into(),
            store.into(),
            "--cluster-name".into(),
            cluster.into(),
            "--node-address".into(),
            format!("192.168.91.{index}"),
            "--pod-cidr".into(),
            format!("10.244.{index}.0/24"),
            "--lease-ttl".into(),
            TTL_SECS.to_string(),
        ];
        let mut node = Self {
            name: name.into(),
            netns,
            dir,
            _bpffs: bpffs,
            agent: None,
            args,
        };
        node.start();
        node
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("log");
        let child = Command::new(MYELIN)
            .args(&self.args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent");
        self.agent = Some(child);
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn ask(&self, request: &Request) -> Result<Response, String> {
        call(&self.socket(), request)
            .await
            .map_err(|e| e.to_string())
    }

    async fn ready(&self) {
        let deadline = Instant::now() + WITHIN;
        while self.ask(&Request::Status).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{}'s agent did not answer; see {}",
                self.name,
                self.dir.join("agent.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A pod on `ifname` at `ip`; its identity.
    async fn add_pod(&self, pod: &str, app: &str, ifname: &str, ip: Ipv4Addr) -> u32 {
        let spec = EndpointSpec {
            namespace: "default".into(),
            pod: pod.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ifname: ifname.into(),
            ipv4: Some(ip),
            ipv6: None,
            service_account: None,
            mac: None,
            ports: vec![],
            ready: true,
        };
        match self.ask(&Request::EndpointUpsert(spec)).await {
            Ok(Response::Endpoint(status)) => status.identity,
            other => panic!("{}: pod {pod} not added: {other:?}", self.name),
        }
    }

    async fn table(&self, table: BpfTable, endpoint: Option<&str>) -> String {
        let request = Request::Bpf {
            table,
            endpoint: endpoint.map(|pod| ("default".to_string(), pod.to_string())),
            json: false,
        };
        match self.ask(&request).await {
            Ok(Response::Text { text }) => text,
            other => panic!("{}: {table:?} not read: {other:?}", self.name),
        }
    }

    /// The identity B's kernel ipcache holds for `ip`/32.
    async fn ipcache(&self, ip: Ipv4Addr) -> Option<u32> {
        let prefix = format!("{ip}/32");
        let text = self.table(BpfTable::Ipcache, None).await;
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(prefix.as_str()))
                .then(|| words.next().and_then(|id| id.parse().ok()))
                .flatten()
        })
    }

    async fn until_ipcache(&self, ip: Ipv4Addr, want: Option<u32>, what: &str) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let now = self.ipcache(ip).await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what}: the ipcache holds {now:?} for {ip}, not {want:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

const POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\n  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: client\n    toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_identities_and_endpoints_through_etcd() {
    let name = "two_agents_share_identities_and_endpoints_through_etcd";
    if !privileged(name) || !require_etcd(name) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("mcl-{}-", std::process::id()))
        .tempdir()
        .expect("dir");
    let mut etcd = EtcdServer::start(&EtcdSpec::new(dir.path().join("etcd"), 1)).expect("etcd");
    let socket = etcd.members()[0]
        .unix_socket()
        .expect("socket")
        .to_path_buf();
    let store = format!("unix://{}", socket.display());
    let cluster = format!("mcl-{}", std::process::id());
    let mut a = NodeUnderTest::new("node-a", 1, dir.path(), &store, &cluster);
    let b = NodeUnderTest::new("node-b", 2, dir.path(), &store, &cluster);
    a.ready().await;
    b.ready().await;

    let web = b
        .add_pod("web", "web", "lxc10", Ipv4Addr::new(10, 244, 2, 10))
        .await;
    let documents = myelin_model::parse_str("web.yaml", POLICY).documents;
    match b.ask(&Request::ResourcesApply { documents }).await {
        Ok(Response::Resources { outcomes }) => {
            assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}")
        }
        other => panic!("policy not applied: {other:?}"),
    }

    // A's pod: a cluster identity, in B's kernel ipcache and in web's policy.
    let client_ip = Ipv4Addr::new(10, 244, 1, 5);
    let client = a.add_pod("client", "client", "lxc5", client_ip).await;
    assert_ne!(client, web);
    b.until_ipcache(client_ip, Some(client), "A's pod arrives")
        .await;
    let policy = b.table(BpfTable::Policy, Some("web")).await;
    assert!(
        policy.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"Ingress") && w.get(1) == Some(&client.to_string().as_str())
        }),
        "web's kernel policy admits A's client identity {client}:\n{policy}"
    );
    // A's node address is remote-node in B's ipcache.
    b.until_ipcache(Ipv4Addr::new(192, 168, 91, 1), Some(6), "A's node address")
        .await;

    // Deleted on A: out of B's ipcache.
    let deleted = a
        .ask(&Request::EndpointDelete {
            namespace: "default".into(),
            pod: "client".into(),
        })
        .await;
    assert!(matches!(deleted, Ok(Response::Ok)), "{deleted:?}");
    b.until_ipcache(client_ip, None, "the deleted pod leaves")
        .await;

    // etcd away: B's kernel keeps what it had.
    let again = a.add_pod("client", "client", "lxc5", client_ip).await;
    assert_eq!(again, client, "the same labels keep their number");
    b.until_ipcache(client_ip, Some(client), "A's pod again")
        .await;
    etcd.stop_member(0).expect("etcd stopped");
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECS)).await;
    assert_eq!(
        b.ipcache(client_ip).await,
        Some(client),
        "kept while etcd is away"
    );
    etcd.restart(0).expect("etcd back");

    // A killed and restarted: re-adopts its pod with the same identity.
    a.kill();
    a.start();
    a.ready().await;
    let status = match a.ask(&Request::Status).await {
        Ok(Response::Status(status)) => status,
        other => panic!("status: {other:?}"),
    };
    assert_eq!(
        status.endpoints[0].identity, client,
        "same number after a restart"
    );
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECS)).await;
    b.until_ipcache(client_ip, Some(client), "re-published under a new lease")
        .await;

    // A dead: its pod and node leave B within the TTL.
    a.kill();
    b.until_ipcache(client_ip, None, "a dead node's pod leaves")
        .await;
    b.until_ipcache(
        Ipv4Addr::new(192, 168, 91, 1),
        None,
        "a dead node's address leaves",
    )
    .await;
}
