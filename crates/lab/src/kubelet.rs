//! The lab's kubelet: a pod's network namespace and veth to its node, its
//! `/etc` files, its container processes and its readiness; and removing
//! all of that again. It knows nothing of the lab's other resources.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use myelin_demo_apps::program_for_image;
use myelin_model::workload::Container;

use crate::names::LabNames;
use crate::net;
use crate::state::{NodeRecord, PodRecord, ProcessRecord, record_process};
use crate::teardown;
use crate::vocabulary::namespace_of;

/// How long a pod may take to serve on its port before the apply fails.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a container without a port the lab knows must stay up to count
/// as started: a command that does not exist or exits at once fails the
/// apply instead of leaving a failed pod behind.
const STARTUP_GRACE: Duration = Duration::from_millis(300);

/// A started container process, until the supervisor watches it.
pub struct Started {
    /// The process.
    pub child: tokio::process::Child,
    /// Its record.
    pub record: ProcessRecord,
}

/// Why a container cannot be started, found before anything is created:
/// an image the lab does not know without a command, or a command that is
/// not on this machine.
pub fn container_problem(container: &Container) -> Option<String> {
    match container.command.as_deref() {
        Some([program, ..]) => (!is_executable(program)).then(|| {
            format!(
                "command {program:?} is not an executable file on this machine (pods run this \
                 machine's programs); give its full path or install it"
            )
        }),
        _ if program_for_image(&container.image).is_none() => Some(format!(
            "the lab does not know image {:?} and the container has no command; give it a \
             `command` (run from this machine's filesystem) or use an image the lab knows \
             (quay.io/cilium/starwars, quay.io/cilium/json-mock)",
            container.image
        )),
        _ => None,
    }
}

/// Whether `program` names an executable file, directly or on `PATH`.
fn is_executable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// Creates the pod's namespace, its veth to the node, addresses, routes,
/// and the `/etc` files `ip netns exec` mounts.
/// Both ends of the veth get `mtu`.
pub fn wire(pod: &PodRecord, node: &NodeRecord, mtu: u16) -> anyhow::Result<()> {
    wire_pod(pod, node, mtu)?;
    write_pod_files(pod, node)
}

/// Starts the pod's containers, then waits until it is ready: serving on
/// the ports of the images the lab knows, or still running after a grace
/// period. A container that exits first fails the pod; its processes are
/// stopped then.
pub async fn start(names: &LabNames, exe: &Path, pod: &PodRecord) -> anyhow::Result<Vec<Started>> {
    let mut started = Vec::new();
    let mut serving_ports = Vec::new();
    let result = async {
        for container in &pod.pod.spec.containers {
            let (process, ports) = spawn_container(names, exe, pod, container)?;
            serving_ports.extend(ports);
            started.push(process);
        }
        wait_ready(&pod.netns, &serving_ports, &mut started).await
    }
    .await;
    match result {
        Ok(()) => Ok(started),
        Err(e) => {
            let records: Vec<ProcessRecord> = started.iter().map(|s| s.record.clone()).collect();
            teardown::stop_processes(&records);
            Err(e)
        }
    }
}

/// Removes the pod: stops its processes, deletes its namespace and files.
pub fn remove(pod: &PodRecord) -> anyhow::Result<()> {
    teardown::stop_processes(&pod.processes);
    net::delete_netns(&pod.netns)?;
    teardown::remove_netns_files(&pod.netns);
    Ok(())
}

fn spawn_container(
    names: &LabNames,
    exe: &Path,
    pod: &PodRecord,
    container: &Container,
) -> anyhow::Result<(Started, Option<u16>)> {
    let namespace = namespace_of(&pod.pod.metadata);
    let name = &pod.pod.metadata.name;
    let key = format!("{namespace}/{name}");
    let (program, args, port): (PathBuf, Vec<String>, Option<u16>) = match &container.command {
        Some(command) if !command.is_empty() => {
            let mut args: Vec<String> = command[1..].to_vec();
            args.extend(container.args.clone().unwrap_or_default());
            (PathBuf::from(&command[0]), args, None)
        }
        _ => {
            let known = program_for_image(&container.image)
                .ok_or_else(|| anyhow!("pod {key}: unknown image {:?}", container.image))?;
            (
                exe.to_path_buf(),
                known.app_args().iter().map(|s| s.to_string()).collect(),
                known.serving_port(),
            )
        }
    };
    let log_dir = names.run_dir().join("pods");
    std::fs::create_dir_all(&log_dir)?;
    let log =
        std::fs::File::create(log_dir.join(format!("{namespace}_{name}_{}.log", container.name)))?;
    let mut command = tokio::process::Command::new("ip");
    command
        .args(["netns", "exec", &pod.netns])
        // The pod's view of this machine: the labs' run directory hidden.
        .arg(exe)
        .args(["lab", "sandbox", "--"])
        .arg(&program)
        .args(&args)
        .env("HOSTNAME", name)
        .envs(
            container
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone())),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("pod {key}: starting container {}", container.name))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("pod {key}: container {} exited at once", container.name))?;
    let record = record_process(pid, format!("{key} container {}", container.name));
    Ok((Started { child, record }, port))
}

/// Waits for readiness while watching for a container that exits.
async fn wait_ready(netns: &str, ports: &[u16], started: &mut [Started]) -> anyhow::Result<()> {
    let mut ready = if ports.is_empty() {
        tokio::spawn(async {
            tokio::time::sleep(STARTUP_GRACE).await;
            Ok(())
        })
    } else {
        let (netns, ports) = (netns.to_string(), ports.to_vec());
        tokio::task::spawn_blocking(move || wait_serving(&netns, &ports))
    };
    loop {
        tokio::select! {
            done = &mut ready => {
                return done.map_err(|e| anyhow!("readiness check: {e}"))?;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                for s in started.iter_mut() {
                    if let Some(status) = s.child.try_wait()? {
                        ready.abort();
                        bail!(
                            "{} exited before the pod was ready ({status}); see the pod's log",
                            s.record.what
                        );
                    }
                }
            }
        }
    }
}

/// Waits until every port accepts connections inside the pod's namespace.
fn wait_serving(netns: &str, ports: &[u16]) -> anyhow::Result<()> {
    let ports = ports.to_vec();
    net::in_netns(netns, move || {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        for port in ports {
            let address = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            loop {
                if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                    .is_ok()
                {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "nothing serves on port {port} after {} s; see the pod's log",
                        READY_TIMEOUT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    })
}

/// The pod's namespace, then its veth to the node, addresses and routes
/// (through netlink, as `myelin_podnet` wires every pod).
fn wire_pod(pod: &PodRecord, node: &NodeRecord, mtu: u16) -> anyhow::Result<()> {
    // Its loopback comes up with eth0.
    myelin_podnet::netns::create(&pod.netns)?;
    let mac = pod
        .mac
        .as_deref()
        .map(|text| {
            parse_mac(text).ok_or_else(|| anyhow!("pod {}: MAC address {text:?}", pod.netns))
        })
        .transpose()?;
    let interface = myelin_podnet::PodInterface {
        host_veth: pod.host_veth.clone(),
        mtu: u32::from(mtu),
        mac,
        ipv4: Some(myelin_podnet::PodIpv4 {
            address: pod.ipv4,
            gateway: node.router_v4,
        }),
        ipv6: Some(pod.ipv6),
    };
    myelin_podnet::wire(
        &myelin_podnet::netns::path(&node.netns),
        &myelin_podnet::netns::path(&pod.netns),
        &interface,
    )
    .with_context(|| format!("wiring pod namespace {}", pod.netns))
}

/// `0a:58:0a:f4:01:05` as bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `/etc/netns/<ns>/hosts` and `resolv.conf`, which `ip netns exec` mounts
/// over the pod's `/etc`.
fn write_pod_files(pod: &PodRecord, node: &NodeRecord) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new("/etc/netns").join(&pod.netns);
    // Readable by all whatever the supervisor's umask (077): a pod's
    // processes that give up root still resolve names.
    let public = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} readable", path.display()))
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    public(&dir, 0o755)?;
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        public(&path, 0o644)
    };
    let name = &pod.pod.metadata.name;
    let hosts = format!(
        "# Written by the myelin lab for pod {name}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{name}\n{}\t{name}\n",
        pod.ipv4, pod.ipv6
    );
    write("hosts", hosts)?;
    let namespace = namespace_of(&pod.pod.metadata);
    let resolv = format!(
        "# Written by the myelin lab: the node's DNS responder\nnameserver {}\nnameserver {}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:2\n",
        node.router_v4, node.router_v6
    );
    write("resolv.conf", resolv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: Option<&[&str]>, image: &str) -> Container {
        let mut container = serde_json::json!({ "name": "c", "image": image });
        if let Some(command) = command {
            container["command"] = serde_json::json!(command);
        }
        serde_json::from_value(container).expect("a container")
    }

    #[test]
    fn mac_addresses_read_as_the_lab_writes_them() {
        let mac = crate::ipam::pod_mac(std::net::Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(parse_mac(&mac), Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]));
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:05:06",
            "0a:58:0a:f4:01:zz",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn containers_that_cannot_start_are_found_before_anything_is_created() {
        assert_eq!(
            container_problem(&container(Some(&["sleep", "1"]), "x")),
            None
        );
        assert_eq!(container_problem(&container(Some(&["/bin/sh"]), "x")), None);
        let missing = container_problem(&container(Some(&["/no/such/program"]), "x"))
            .expect("a missing program");
        assert!(missing.contains("\"/no/such/program\""), "{missing}");
        assert!(container_problem(&container(Some(&["no-such-program-here"]), "x")).is_some());
        let unknown = container_problem(&container(None, "nginx:1.27")).expect("unknown image");
        assert!(unknown.contains("nginx:1.27"), "{unknown}");
        assert_eq!(
            container_problem(&container(None, "quay.io/cilium/starwars:v2.1")),
            None
        );
    }
}
