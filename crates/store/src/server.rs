//! Debian's `etcd` as child processes: one member or a cluster, on 127.0.0.1, with its
//! data, logs and unix sockets under a directory the caller gives.
//!
//! Each member `etcdN` lives in `<dir>/etcdN/`: `data/` (etcd's data dir), `etcd.log`
//! (its output), `etcd.pid`, and with [`EtcdSpec::unix_socket`] the socket
//! `client.sock:<port>`. etcd 3.4 takes a unix client URL only as `unix://host:port`,
//! which it binds as a path relative to its working directory; the member's directory is
//! its working directory, so the socket lands there (the `:<port>` is part of the name).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{StoreAddress, StoreError};

/// The operations one transaction may hold on the servers started here (etcd's default
/// is 128): one apply of the lab's resources is one transaction.
pub const MAX_TXN_OPS: usize = 4096;

/// How long a member may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    /// Where the members' directories go (the lab's run directory, a test's temp dir).
    pub dir: PathBuf,
    /// How many members (1, or 3 for failure tests).
    pub members: usize,
    /// `(client, peer)` ports per member on 127.0.0.1; picked free when `None`.
    pub ports: Option<Vec<(u16, u16)>>,
    /// Also serve clients on a unix socket per member.
    pub unix_socket: bool,
}

impl EtcdSpec {
    /// `members` members under `dir` on free ports, with unix sockets.
    pub fn new(dir: impl Into<PathBuf>, members: usize) -> Self {
        Self {
            dir: dir.into(),
            members,
            ports: None,
            unix_socket: true,
        }
    }
}

/// One member.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    args: Vec<String>,
    unix_socket: Option<PathBuf>,
    child: Option<Child>,
}

impl EtcdMember {
    /// The member's name (`etcd0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its client address, `127.0.0.1:<port>`.
    pub fn client_address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Its unix socket, when it serves one.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<(), StoreError> {
        if let Some(socket) = &self.unix_socket {
            // A socket left by a killed member would make etcd fail to bind.
            let _ = std::fs::remove_file(socket);
        }
        let log_path = self.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| StoreError::Io {
                what: "open the etcd log",
                path: log_path.clone(),
                source,
            })?;
        let err = log.try_clone().map_err(|source| StoreError::Io {
            what: "open the etcd log",
            path: log_path.clone(),
            source,
        })?;
        let child = Command::new("etcd")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A group of its own: a terminal's Ctrl-C reaches the lab's
            // supervisor, which stops etcd after the agents; the lab's
            // teardown signals it by its group, as every process it started.
            .process_group(0)
            .spawn()
            .map_err(|e| StoreError::Server {
                what: format!("start {}", self.name),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "no `etcd` binary on PATH: install Debian's etcd-server (scripts/setup.sh)"
                        .to_string()
                } else {
                    e.to_string()
                },
                log: log_path.clone(),
            })?;
        let pid_file = self.dir.join("etcd.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(|source| {
            StoreError::Io {
                what: "write",
                path: pid_file,
                source,
            }
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the member answers `/health` with a leader, or fails with its log.
    fn wait_healthy(&mut self, deadline: Instant) -> Result<(), StoreError> {
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.failed(&format!("exited ({status}) while starting")));
            }
            if health(self.client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(
                    self.failed(&format!("not healthy within {} s", START_TIMEOUT.as_secs()))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn failed(&self, what: &str) -> StoreError {
        let log = self.log();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        StoreError::Server {
            what: format!("{} {what}", self.name),
            message: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            log,
        }
    }

    /// Sends `signal` and waits for the process, killing it after [`STOP_TIMEOUT`].
    fn stop_with(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_file(self.dir.join("etcd.pid"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(self.dir.join("etcd.pid"));
    }
}

/// One plain HTTP/1.1 request to a member's client port (etcd serves its health and its
/// JSON gateway there); the response's body, or None.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// etcd's `/health` on the client port: true when the member has a leader.
fn health(port: u16) -> bool {
    http(port, "GET", "/health", "").is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// Whether the member on `port` leads, from its status (the JSON gateway's
/// `/v3/maintenance/status`: its own id in the header, the leader's beside it).
fn leads(port: u16) -> bool {
    let Some(body) = http(port, "POST", "/v3/maintenance/status", "{}") else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    let member = &status["header"]["member_id"];
    !member.is_null() && *member == status["leader"]
}

/// Free ports on 127.0.0.1, distinct: every listener is held until all are picked.
fn free_ports(count: usize) -> Result<Vec<u16>, StoreError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StoreError::Io {
            what: "pick a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StoreError::Io {
            what: "pick a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
}

/// A running etcd (one member or a cluster), stopped on drop.
#[derive(Debug)]
pub struct EtcdServer {
    members: Vec<EtcdMember>,
}

impl EtcdServer {
    /// Starts the members and waits until every one is healthy. To start again on the
    /// data of an earlier start, give the same ports ([`EtcdServer::ports`]): the members
    /// know each other by their peer URLs.
    pub fn start(spec: &EtcdSpec) -> Result<Self, StoreError> {
        let invalid = |message: String| StoreError::Server {
            what: "start".into(),
            message,
            log: spec.dir.clone(),
        };
        if spec.members == 0 {
            return Err(invalid("a cluster needs at least one member".into()));
        }
        if let Some(ports) = &spec.ports {
            if ports.len() != spec.members {
                return Err(invalid(format!(
                    "{} port pairs given for {} members",
                    ports.len(),
                    spec.members
                )));
            }
            return Self::start_on(spec, ports);
        }
        // A port picked free may be taken by someone else before etcd binds it: a fresh
        // cluster then starts over on other ports (its data dirs hold the old ones).
        let fresh = (0..spec.members).all(|i| !Self::data_dir(spec, i).exists());
        let mut attempt = 1;
        loop {
            let ports: Vec<(u16, u16)> = free_ports(spec.members * 2)?
                .chunks(2)
                .map(|pair| (pair[0], pair[1]))
                .collect();
            match Self::start_on(spec, &ports) {
                Ok(server) => return Ok(server),
                Err(e) if fresh && attempt < 3 => {
                    tracing::warn!(error = %e, "etcd did not start; trying other ports");
                    for i in 0..spec.members {
                        let _ = std::fs::remove_dir_all(Self::data_dir(spec, i));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn data_dir(spec: &EtcdSpec, index: usize) -> PathBuf {
        spec.dir.join(format!("etcd{index}")).join("data")
    }

    fn start_on(spec: &EtcdSpec, ports: &[(u16, u16)]) -> Result<Self, StoreError> {
        let names: Vec<String> = (0..spec.members).map(|i| format!("etcd{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per start, so members of another cluster never join this one.
        let token = format!("myelin-{}-{}", std::process::id(), ports[0].1);
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(ports) {
            let dir = spec.dir.join(name);
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                what: "create",
                path: dir.clone(),
                source,
            })?;
            let unix_name = format!("client.sock:{client}");
            let mut listen = format!("http://127.0.0.1:{client}");
            if spec.unix_socket {
                listen.push_str(&format!(",unix://{unix_name}"));
            }
            let args = vec![
                format!("--name={name}"),
                "--data-dir=data".to_string(),
                format!("--listen-client-urls={listen}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".to_string(),
                format!("--initial-cluster-token={token}"),
                format!("--max-txn-ops={MAX_TXN_OPS}"),
                // A loaded two-core machine misses the default 100 ms heartbeats now and
                // then; a slower pace avoids needless leader elections.
                "--heartbeat-interval=200".to_string(),
                "--election-timeout=2000".to_string(),
            ];
            members.push(EtcdMember {
                name: name.clone(),
                unix_socket: spec.unix_socket.then(|| dir.join(&unix_name)),
                dir,
                client_port: *client,
                peer_port: *peer,
                args,
                child: None,
            });
        }
        let mut server = Self { members };
        for member in &mut server.members {
            member.spawn()?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for member in &mut server.members {
            member.wait_healthy(deadline)?;
        }
        Ok(server)
    }

    /// The members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Every member's `(client, peer)` ports, to start again on the same data.
    pub fn ports(&self) -> Vec<(u16, u16)> {
        self.members
            .iter()
            .map(|m| (m.client_port, m.peer_port))
            .collect()
    }

    /// Every member's client address, for [`StoreAddress::Tcp`].
    pub fn address(&self) -> StoreAddress {
        StoreAddress::Tcp(
            self.members
                .iter()
                .map(EtcdMember::client_address)
                .collect(),
        )
    }

    fn member(&mut self, index: usize) -> Result<&mut EtcdMember, StoreError> {
        let count = self.members.len();
        self.members
            .get_mut(index)
            .ok_or_else(|| StoreError::Server {
                what: format!("member {index}"),
                message: format!("there are {count} members"),
                log: PathBuf::new(),
            })
    }

    /// The index of the member that leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.child.is_some() && leads(m.client_port))
    }

    /// Kills member `index` with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self, index: usize) -> Result<(), StoreError> {
        self.member(index)?.stop_with(Signal::SIGKILL);
        Ok(())
    }

    /// Stops member `index` with SIGTERM (SIGKILL if it lingers).
    pub fn stop_member(&mut self, index: usize) -> Result<(), StoreError> {
        self.member(index)?.stop_with(Signal::SIGTERM);
        Ok(())
    }

    /// Starts member `index` again on its data and ports, and waits until it is healthy.
    pub fn restart(&mut self, index: usize) -> Result<(), StoreError> {
        let member = self.member(index)?;
        member.stop_with(Signal::SIGTERM);
        member.spawn()?;
        member.wait_healthy(Instant::now() + START_TIMEOUT)
    }

    /// Starts again, on their data and ports, the members whose process
    /// exited by itself (a crash, a `kill -9` from outside); returns their
    /// names. Members stopped through this handle stay stopped. Does not wait
    /// for them to be healthy: a member alone cannot be until a majority is back.
    pub fn revive_exited(&mut self) -> Result<Vec<String>, StoreError> {
        let mut revived = Vec::new();
        for member in &mut self.members {
            let exited = member
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                member.child = None;
                member.spawn()?;
                revived.push(member.name.clone());
            }
        }
        Ok(revived)
    }

    /// Stops every member (SIGTERM, then SIGKILL after a few seconds).
    pub fn stop(&mut self) {
        for member in &mut self.members {
            member.stop_with(Signal::SIGTERM);
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
