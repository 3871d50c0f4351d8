//! `myelin-cni` driven by a real container runtime: Debian's podman (its
//! CNI network backend, runc) starts containers of an image built here from
//! busybox-static (no registry), inside a node network namespace the test
//! creates, next to that node's agent. The containers get addresses of the
//! node's pod CIDRs, reach each other, are policed by a CiliumNetworkPolicy
//! and observed; `podman rm` frees their addresses; with the agent killed DEL
//! still cleans up and ADD fails with a CNI error podman prints; the
//! restarted agent reconciles and never hands out an address in use. CHECK,
//! GC and STATUS, which podman 4.3 does not call, are run as a runtime runs
//! them: the plugin executed with the spec's variables and ADD's cached
//! result.
//!
//! Podman runs under `nsenter --net` (not `ip netns exec`, whose private
//! mount namespace would hide podman's namespace mounts from the agent): it
//! shares this machine's mount namespace, as a runtime and the agent do on
//! a node, and only the node's network namespace; every veth is made there.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use myelin_api::agent::{AgentStatus, PodMetadata, Request, Response, call};
use myelin_test_support::{ScratchBpffs, privileged, require_container_runtime};

/// The plugin under test, built by cargo for this test.
const PLUGIN: &str = env!("CARGO_BIN_EXE_myelin-cni");
/// Generous: a loaded shared machine.
const WITHIN: Duration = Duration::from_secs(60);
const HTTP_PORT: u16 = 8080;

/// The `myelin` binary (the agent, `observe`), built beside the plugin by
/// the workspace's `cargo test` (crates/cli's tests need it too).
fn myelin() -> PathBuf {
    let path = Path::new(PLUGIN).with_file_name("myelin");
    assert!(
        path.is_file(),
        "{} is not built: run the workspace's tests (cargo test) or cargo build -p myelin-cli",
        path.display()
    );
    path
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_ok(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        text(&output)
    );
}

/// A node: its network namespace, bpffs, agent, and podman's storage and
/// configuration, all removed on drop (by name and PID).
struct Node {
    netns: String,
    network: String,
    image: String,
    dir: tempfile::TempDir,
    _bpffs: ScratchBpffs,
    agent: Option<Child>,
    agent_args: Vec<String>,
    v4_prefix: String,
}

impl Node {
    fn new() -> Self {
        let id = std::process::id();
        let netns = format!("mcni-{id}");
        let octet = 100 + id % 100;
        let v4_prefix = format!("10.244.{octet}");
        let dir = tempfile::Builder::new()
            .prefix("myelin-cni-test-")
            .tempdir()
            .expect("tempdir");
        run_ok("ip", &["netns", "add", &netns]);
        let mut node = Self {
            netns: netns.clone(),
            network: format!("myelin-cni-test-{id}"),
            image: format!("localhost/myelin-cni-test-{id}:1"),
            _bpffs: ScratchBpffs::mount().expect("bpffs"),
            agent: None,
            agent_args: Vec::new(),
            v4_prefix: v4_prefix.clone(),
            dir,
        };
        // The node's router addresses (the pods' gateways) on its loopback,
        // as the lab's nodes hold them; forwarding between its pods.
        let v6_gateway = format!("fd00:10:244:{octet}::1/128");
        for args in [
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec![
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{v4_prefix}.1/32"),
                "dev",
                "lo",
            ],
            vec![
                "-n",
                &netns,
                "addr",
                "add",
                &v6_gateway,
                "dev",
                "lo",
                "nodad",
            ],
        ] {
            run_ok("ip", &args);
        }
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        node.write_runtime_config();
        node.agent_args = vec![
            "agent".into(),
            "--node".into(),
            "cni-node".into(),
            "--netns".into(),
            netns.clone(),
            "--api-socket".into(),
            node.socket().display().to_string(),
            "--bpffs".into(),
            node._bpffs.path().display().to_string(),
            "--state-dir".into(),
            node.state_dir().display().to_string(),
            "--identity-store".into(),
            node.path("identities.json").display().to_string(),
            "--observer-socket".into(),
            node.path("observer.sock").display().to_string(),
            "--pod-cidr".into(),
            format!("{v4_prefix}.0/24,fd00:10:244:{octet}::/64"),
        ];
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("agent.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The plugin's configuration, as the conflist gives it.
    fn plugin_config(&self) -> String {
        format!(
            r#"{{"type":"myelin-cni","agentSocket":"{}","waitForPodSeconds":3,"defaultPodNamespace":"default"}}"#,
            self.socket().display()
        )
    }

    /// The conflist (myelin-cni, then the reference `portmap`), the
    /// plugin's directory and a containers.conf pointing podman at them.
    fn write_runtime_config(&self) {
        let bin = self.path("bin");
        let net_d = self.path("net.d");
        for dir in [&bin, &net_d] {
            std::fs::create_dir_all(dir).expect("dir");
        }
        std::fs::copy(PLUGIN, bin.join("myelin-cni")).expect("install the plugin");
        let conflist = format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            self.network,
            self.plugin_config()
        );
        std::fs::write(net_d.join(format!("{}.conflist", self.network)), conflist)
            .expect("conflist");
        // runc: crun refuses machines with cgroup v1 and v2 side by side.
        // The limits: podman's defaults exceed what a container may set here.
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
network_config_dir = "{net_d}"
"#,
            tmp = self.path("libpod-tmp").display(),
            bin = bin.display(),
            net_d = net_d.display(),
        );
        std::fs::write(self.path("containers.conf"), conf).expect("containers.conf");
    }

    fn storage_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.path("storage").display().to_string(),
            "--runroot".into(),
            self.path("run").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `program` (podman, buildah, the plugin) in the node's network
    /// namespace, this machine's mount namespace.
    fn in_node(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program)
            .env("CONTAINERS_CONF", self.path("containers.conf"));
        command
    }

    fn podman_command(&self, args: &[&str]) -> Command {
        let mut command = self.in_node("podman");
        command.args(self.storage_args()).args(args);
        command
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.podman_command(args).output().expect("podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let output = self.podman(args);
        assert!(
            output.status.success(),
            "podman {args:?}: {}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// An image of busybox-static alone, built from scratch.
    fn build_image(&self) {
        let buildah = |args: &[&str]| {
            let output = Command::new("buildah")
                .args(self.storage_args())
                .args(args)
                .output()
                .expect("buildah");
            assert!(
                output.status.success(),
                "buildah {args:?}: {}",
                text(&output)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        };
        let name = format!("myelin-cni-build-{}", std::process::id());
        buildah(&["from", "--name", &name, "scratch"]);
        let root = PathBuf::from(buildah(&["mount", &name]));
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
        buildah(&["umount", &name]);
        buildah(&["commit", "--quiet", &name, &self.image]);
        buildah(&["rm", &name]);
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .expect("log");
        let child = Command::new(myelin())
            .args(&self.agent_args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent");
        self.agent = Some(child);
    }

    /// SIGKILL, as a crash.
    fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn ask(&self, request: &Request) -> Response {
        call(&self.socket(), request)
            .await
            .unwrap_or_else(|e| panic!("{request:?}: {e}"))
    }

    async fn ready(&self) {
        let deadline = Instant::now() + WITHIN;
        while call(&self.socket(), &Request::Status).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not answer; see {}",
                self.path("agent.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status(&self) -> AgentStatus {
        match self.ask(&Request::Status).await {
            Response::Status(status) => status,
            other => panic!("status: {other:?}"),
        }
    }

    /// The addresses of pod `default/<pod>` as the agent runs it.
    async fn addresses(&self, pod: &str) -> Option<Vec<IpAddr>> {
        self.status()
            .await
            .endpoints
            .into_iter()
            .find(|e| e.namespace == "default" && e.pod == pod)
            .map(|e| e.addresses)
    }

    /// Tells the agent of pods, as its control plane would.
    async fn tell_pods(&self, pods: &[(&str, &str)]) {
        let pods = pods
            .iter()
            .map(|(name, app)| PodMetadata {
                namespace: "default".into(),
                name: name.to_string(),
                labels: BTreeMap::from([("app".to_string(), app.to_string())]),
                service_account: None,
            })
            .collect();
        self.ask(&Request::PodsUpsert { pods }).await;
    }

    /// `podman run` of `command` in container `name`, with `options`.
    fn run_container(&self, name: &str, options: &[&str], command: &[&str]) -> Output {
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.network];
        args.extend(options);
        args.push(&self.image);
        args.extend(command);
        self.podman(&args)
    }

    fn container_id(&self, name: &str) -> String {
        self.podman_ok(&["inspect", "--format", "{{.Id}}", name])
    }

    /// Whether `from` gets an HTTP answer from `to` (busybox nc).
    fn http(&self, from: &str, to: IpAddr) -> bool {
        let script = get(to, HTTP_PORT);
        let output = self.podman(&["exec", from, "/bin/busybox", "sh", "-c", &script]);
        String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.")
    }

    /// Whether the node itself gets an HTTP answer from `to`:`port`.
    fn http_from_node(&self, to: IpAddr, port: u16) -> bool {
        let output = self
            .in_node("/bin/busybox")
            .args(["sh", "-c", &get(to, port)])
            .output()
            .expect("busybox");
        String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.")
    }

    fn host_links(&self) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.netns, "-o", "link"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// The plugin run as a runtime runs it: `command` with the spec's
    /// variables and `config` on stdin, in the node's namespace.
    fn exec_plugin(&self, command: &str, container_id: &str, config: &str) -> Output {
        let mut child = self
            .in_node(PLUGIN)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.path("bin"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plugin");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.as_bytes())
            .expect("config");
        child.wait_with_output().expect("plugin")
    }

    /// The plugin's configuration as the runtime hands it over, with `extra`
    /// fields.
    fn runtime_config(&self, version: &str, extra: &str) -> String {
        let plugin = self.plugin_config();
        format!(
            r#"{{"cniVersion":"{version}","name":"{}",{}{extra}}}"#,
            self.network,
            &plugin[1..plugin.len() - 1]
        )
    }

    /// ADD's result as libcni cached it for `container_id`.
    fn cached_result(&self, container_id: &str) -> String {
        let file =
            Path::new("/var/lib/cni/results").join(format!("{}-{container_id}-eth0", self.network));
        let cached: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("libcni's cached result"))
                .expect("json");
        cached["result"].to_string()
    }

    /// The flows the node's observer kept, as `myelin observe` prints them.
    fn flows(&self) -> Vec<serde_json::Value> {
        let server = format!("unix://{}", self.path("observer.sock").display());
        let output = Command::new(myelin())
            .args([
                "observe", "--server", &server, "--last", "1000", "-o", "json",
            ])
            .output()
            .expect("observe");
        assert!(output.status.success(), "observe: {}", text(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers go first (their DELs need the agent), then the agent,
        // the image and the node's namespace.
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["rmi", "--force", &self.image]);
        self.kill_agent();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// A shell line sending an HTTP GET to `to`:`port` with busybox's nc.
fn get(to: IpAddr, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {to} {port}")
}

fn flow_between(flows: &[serde_json::Value], from: &str, to: &str, verdict: &str) -> bool {
    flows.iter().any(|f| {
        let flow = &f["flow"];
        flow["source"]["pod_name"] == from
            && flow["destination"]["pod_name"] == to
            && flow["verdict"] == verdict
    })
}

async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + WITHIN;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_policed_observed_containers_through_myelin_cni() {
    let name = "podman_runs_policed_observed_containers_through_myelin_cni";
    if !privileged(name) || !require_container_runtime(name) {
        return;
    }
    let mut node = Node::new();
    node.start_agent();
    node.ready().await;
    node.build_image();

    // STATUS: the agent serves ADDs.
    let status = node.exec_plugin("STATUS", "", &node.runtime_config("1.1.0", ""));
    assert!(status.status.success(), "STATUS: {}", text(&status));

    // ADD before the control plane told of the pod: a bounded wait, then
    // a CNI error that says why.
    let unknown = node.run_container("stranger", &[], &["/bin/busybox", "sleep", "3600"]);
    assert!(!unknown.status.success(), "{}", text(&unknown));
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("pod default/stranger is not known to this node's agent"),
        "{said}"
    );
    eprintln!("podman's error for a pod the agent does not know: {said}");
    node.podman_ok(&["rm", "--force", "--time", "0", "stranger"]);

    node.tell_pods(&[("web", "web"), ("client", "client"), ("other", "other")])
        .await;
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080"];
    let sleep = ["/bin/busybox", "sleep", "3600"];
    // web publishes its port on the node through the reference `portmap`
    // plugin, chained after myelin-cni.
    let publish = ["--publish", "18080:8080"];
    for (container, options, command) in [
        ("web", &publish[..], &httpd[..]),
        ("client", &[], &sleep),
        ("other", &[], &sleep),
    ] {
        let output = node.run_container(container, options, command);
        assert!(
            output.status.success(),
            "run {container}: {}",
            text(&output)
        );
    }
    // How long the agent took per ADD (allocate, save, wire, register,
    // policy in the kernel), for the record; no assertion on speed.
    let log = std::fs::read_to_string(node.path("agent.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("CNI ADD: pod wired")) {
        eprintln!("{line}");
    }
    let web = node.addresses("web").await.expect("web is an endpoint");
    let client = node
        .addresses("client")
        .await
        .expect("client is an endpoint");
    let other = node.addresses("other").await.expect("other is an endpoint");
    for addresses in [&web, &client, &other] {
        assert_eq!(addresses.len(), 2, "one per family: {addresses:?}");
        assert!(
            addresses[0]
                .to_string()
                .starts_with(&format!("{}.", node.v4_prefix)),
            "from the node's pod CIDR: {addresses:?}"
        );
    }
    assert!(web != client && client != other && web != other);
    // The container sees the address the agent gave it.
    let inside = node.podman_ok(&["exec", "client", "/bin/busybox", "ip", "-o", "addr"]);
    assert!(inside.contains(&format!("{}/32", client[0])), "{inside}");
    let web_v4 = web[0];
    assert!(node.http("client", web_v4), "client reaches web");
    assert!(
        node.http("other", web_v4),
        "other reaches web (no policy yet)"
    );
    let node_v4: IpAddr = format!("{}.1", node.v4_prefix).parse().expect("v4");
    assert!(
        node.http_from_node(node_v4, 18080),
        "the node's port 18080 reaches web (portmap's DNAT)"
    );

    // A policy lets only `client` reach `web`.
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web-from-client\n  \
         namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  \
         ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: client\n    toPorts:\n    \
         - ports:\n      - port: \"{HTTP_PORT}\"\n        protocol: TCP\n"
    );
    let documents = myelin_model::parse_str("policy.yaml", &policy).documents;
    match node.ask(&Request::ResourcesApply { documents }).await {
        Response::Resources { outcomes } => {
            assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}")
        }
        other => panic!("apply: {other:?}"),
    }
    assert!(node.http("client", web_v4), "client still reaches web");
    assert!(!node.http("other", web_v4), "other is dropped");
    eventually("the flows are observed", async || {
        let flows = node.flows();
        flow_between(&flows, "client", "web", "FORWARDED")
            && flow_between(&flows, "other", "web", "DROPPED")
    })
    .await;

    // New labels from the control plane reach a running pod: `other`,
    // relabelled a client, is let in.
    node.tell_pods(&[("other", "client")]).await;
    assert!(
        node.http("other", web_v4),
        "other, now app=client, reaches web"
    );

    // CHECK as a runtime runs it, with ADD's result from libcni's cache.
    let web_id = node.container_id("web");
    let prev = format!(r#","prevResult":{}"#, node.cached_result(&web_id));
    let check = node.exec_plugin("CHECK", &web_id, &node.runtime_config("1.0.0", &prev));
    assert!(check.status.success(), "CHECK: {}", text(&check));

    // DEL through `podman rm`: the veth goes, the address is free.
    let other_id = node.container_id("other");
    let other_veth = myelin_api::cni::host_veth_name(&myelin_api::cni::AttachmentKey {
        container_id: other_id.clone(),
        ifname: "eth0".into(),
    });
    assert!(node.host_links().contains(&other_veth));
    node.podman_ok(&["rm", "--force", "--time", "0", "other"]);
    assert!(!node.host_links().contains(&other_veth), "the veth is gone");
    assert_eq!(node.addresses("other").await, None, "no longer an endpoint");
    let saved = std::fs::read_to_string(node.state_dir().join("cni-state.json")).expect("state");
    assert!(!saved.contains(&other_id), "the attachment is forgotten");

    // The agent dies during an ADD (waiting for a pod it was not told of):
    // the runtime gets an error, nothing is left behind.
    let midway = node
        .podman_command(&[
            "run",
            "-d",
            "--name",
            "midway",
            "--network",
            &node.network,
            &node.image,
            "/bin/busybox",
            "sleep",
            "3600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman run");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The agent dies. DEL still succeeds, the plugin removes the veth.
    node.kill_agent();
    let midway = midway.wait_with_output().expect("podman run");
    assert!(!midway.status.success(), "{}", text(&midway));
    let said = String::from_utf8_lossy(&midway.stderr);
    assert!(
        said.contains("talking to the Myelin agent failed (ADD)")
            && said.contains("closed the connection before it answered"),
        "{said}"
    );
    eprintln!("podman's error for the agent killed during ADD: {said}");
    node.podman_ok(&["rm", "--force", "--time", "0", "midway"]);
    let client_id = node.container_id("client");
    let client_veth = myelin_api::cni::host_veth_name(&myelin_api::cni::AttachmentKey {
        container_id: client_id.clone(),
        ifname: "eth0".into(),
    });
    node.podman_ok(&["rm", "--force", "--time", "0", "client"]);
    assert!(
        !node.host_links().contains(&client_veth),
        "the plugin removed it"
    );
    // ADD gets a CNI error podman prints.
    let refused = node.run_container("late", &[], &sleep);
    assert!(!refused.status.success(), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("Myelin agent not reachable (ADD)"), "{said}");
    assert!(
        said.contains(&node.socket().display().to_string()),
        "{said}"
    );
    eprintln!("podman's error for ADD with the agent down: {said}");
    node.podman_ok(&["rm", "--force", "--time", "0", "late"]);
    // STATUS says the plugin cannot serve ADDs (code 50).
    let status = node.exec_plugin("STATUS", "", &node.runtime_config("1.1.0", ""));
    assert!(!status.status.success());
    let error: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json error");
    assert_eq!(error["code"], 50, "{error}");

    // Back: the client's attachment is reconciled away and its address
    // free; web's stays taken.
    node.start_agent();
    node.ready().await;
    eventually("the vanished attachment is removed", async || {
        let saved =
            std::fs::read_to_string(node.state_dir().join("cni-state.json")).unwrap_or_default();
        !saved.contains(&client_id)
    })
    .await;
    assert_eq!(node.addresses("client").await, None);
    let restored = node.addresses("web").await;
    assert!(
        restored.is_some_and(|a| a.contains(&web_v4)),
        "web restored"
    );
    node.tell_pods(&[("second", "client")]).await;
    let output = node.run_container("second", &[], &sleep);
    assert!(output.status.success(), "run second: {}", text(&output));
    let second = node
        .addresses("second")
        .await
        .expect("second is an endpoint");
    assert!(
        !second.contains(&web_v4),
        "web's address is never handed out again"
    );
    assert!(
        node.http("second", web_v4),
        "second (app=client) reaches web"
    );

    // GC: the runtime lists web only; second's attachment goes.
    let second_id = node.container_id("second");
    let valid =
        format!(r#","cni.dev/valid-attachments":[{{"containerID":"{web_id}","ifname":"eth0"}}]"#);
    let gc = node.exec_plugin("GC", "", &node.runtime_config("1.1.0", &valid));
    assert!(gc.status.success(), "GC: {}", text(&gc));
    assert_eq!(node.addresses("second").await, None, "collected");
    assert!(node.addresses("web").await.is_some(), "kept");
    let second_veth = myelin_api::cni::host_veth_name(&myelin_api::cni::AttachmentKey {
        container_id: second_id,
        ifname: "eth0".into(),
    });
    assert!(!node.host_links().contains(&second_veth));
}
