//! The proxy's memory under a connection storm: `myelin-bench soak` starts Myelin's proxy
//! (`myelin-bench proxy`, a process of its own so its resident set is the proxy's alone) in
//! front of an upstream served here, opens thousands of client connections to it from
//! addresses on 127.0.0.0/8 (HTTP/1.1 and HTTP/2, idle and after one request each), closes
//! them, and reads the proxy's `VmRSS` at every step. Prints one JSON report.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use myelin_proxy::fd_limit::{connection_capacity, raise_open_file_limit};

/// Client addresses the connections come from (127.0.1.1 and up): one address may hold
/// only a sixteenth of the proxy's connections.
const SOURCES: u32 = 64;
/// Connections being opened at once.
const OPENING: usize = 256;

/// Arguments of `myelin-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Client connections per storm (fewer when the open-file limit does not allow them:
    /// the report says how many were opened).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Storms of mixed connections, one after the other.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The proxy's runtime worker threads (`myelin proxy` runs one per CPU).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds to wait after a storm's connections are closed before reading the proxy's
    /// memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
}

/// What `myelin-bench soak` prints.
#[derive(Debug, Serialize)]
struct Report {
    connections: usize,
    workers: usize,
    /// The proxy's resident set once it serves, before any connection, in bytes.
    baseline_rss: u64,
    /// Resident set growth per idle HTTP/2 connection (preface and settings exchanged, no
    /// request), with `connections` of them open.
    bytes_per_idle_connection: u64,
    /// Resident set growth per connection of the mixed storms at their highest (a quarter
    /// each: HTTP/1.1 idle, HTTP/1.1 after a request, HTTP/2 idle, HTTP/2 after a request).
    bytes_per_connection: u64,
    /// Mixed connections one GiB of proxy memory holds, at `bytes_per_connection`.
    connections_per_gib: u64,
    /// The proxy's resident set after the last storm closed and settled, in bytes.
    after_storm_rss: u64,
    rounds: Vec<Round>,
}

/// One storm: the proxy's resident set before it, with its connections open and after they
/// closed, and the growth per connection.
#[derive(Debug, Serialize)]
struct Round {
    kind: &'static str,
    before_rss: u64,
    peak_rss: u64,
    after_rss: u64,
    bytes_per_connection: u64,
}

/// How a storm's client connection behaves.
#[derive(Debug, Clone, Copy)]
enum Client {
    Http1Idle,
    Http1Request,
    Http2Idle,
    Http2Request,
}

impl Client {
    /// The name of a storm of this kind alone.
    fn name(self) -> &'static str {
        match self {
            Self::Http1Idle => "http1-idle",
            Self::Http1Request => "http1-after-request",
            Self::Http2Idle => "http2-idle",
            Self::Http2Request => "http2-after-request",
        }
    }
}

const MIXED: [Client; 4] = [
    Client::Http1Idle,
    Client::Http1Request,
    Client::Http2Idle,
    Client::Http2Request,
];

/// Runs the soak and prints its report.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let connections = storm_size(args.connections)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(soak(args, connections))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn soak(args: &SoakArgs, connections: usize) -> anyhow::Result<Report> {
    let upstream = serve_upstream().await?;
    let (mut proxy, listener) = start_proxy(upstream, args.workers).await?;
    let pid = proxy.id().context("the proxy exited at once")?;
    let settle = Duration::from_secs_f64(args.settle);
    tokio::time::sleep(settle).await;
    let baseline_rss = rss(pid)?;

    // One storm of each kind alone, then the mixed storms.
    let storms = MIXED
        .iter()
        .map(|&kind| (kind.name(), vec![kind]))
        .chain((0..args.rounds).map(|_| ("mixed", MIXED.to_vec())));
    let mut rounds = Vec::new();
    for (kind, clients) in storms {
        let before_rss = rss(pid)?;
        let held = storm(listener, connections, &clients).await?;
        let peak_rss = rss(pid)?;
        drop(held);
        tokio::time::sleep(settle).await;
        rounds.push(Round {
            kind,
            before_rss,
            peak_rss,
            after_rss: rss(pid)?,
            bytes_per_connection: peak_rss.saturating_sub(before_rss) / connections.max(1) as u64,
        });
    }
    proxy.kill().await.context("stopping the proxy")?;

    let bytes_of = |kind: &str| {
        rounds
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.bytes_per_connection)
            .max()
            .unwrap_or(0)
    };
    let bytes_per_connection = bytes_of("mixed");
    Ok(Report {
        connections,
        workers: args.workers,
        baseline_rss,
        bytes_per_idle_connection: bytes_of(Client::Http2Idle.name()),
        bytes_per_connection,
        connections_per_gib: (1u64 << 30) / bytes_per_connection.max(1),
        after_storm_rss: rounds.last().map_or(0, |r| r.after_rss),
        rounds,
    })
}

/// Opens `count` connections to `proxy`, cycling through `kinds`, and returns them open.
async fn storm(
    proxy: SocketAddr,
    count: usize,
    kinds: &[Client],
) -> anyhow::Result<Vec<TcpStream>> {
    let opening = Arc::new(Semaphore::new(OPENING));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let permit = opening.clone().acquire_owned().await?;
        let kind = kinds[i % kinds.len()];
        let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + i as u32 % SOURCES);
        tasks.spawn(async move {
            let stream = open(proxy, IpAddr::V4(source), kind).await;
            drop(permit);
            stream.with_context(|| format!("{kind:?} connection {i} from {source}"))
        });
    }
    let mut held = Vec::with_capacity(count);
    while let Some(opened) = tasks.join_next().await {
        held.push(opened??);
    }
    Ok(held)
}

/// One client connection from `source`, left open once it behaves as `kind`.
async fn open(proxy: SocketAddr, source: IpAddr, kind: Client) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(proxy).await?;
    match kind {
        // The proxy reads the request line before it knows the protocol: send it, not
        // the rest of the head, so the connection waits in hyper's HTTP/1 reader.
        Client::Http1Idle => stream.write_all(b"GET / HTTP/1.1\r\n").await?,
        Client::Http1Request => {
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n")
                .await?;
            read_http1_response(&mut stream).await?;
        }
        Client::Http2Idle => {
            stream.write_all(H2_PREFACE).await?;
            read_h2_frame(&mut stream).await?;
            stream.write_all(H2_SETTINGS_ACK).await?;
        }
        Client::Http2Request => {
            stream.write_all(H2_PREFACE).await?;
            stream.write_all(H2_SETTINGS_ACK).await?;
            stream.write_all(&h2_get()).await?;
            loop {
                let (kind, flags, stream_id) = read_h2_frame(&mut stream).await?;
                // A HEADERS or DATA frame on stream 1 that ends the stream.
                if stream_id == 1 && kind <= 1 && flags & 1 == 1 {
                    break;
                }
            }
        }
    }
    Ok(stream)
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A SETTINGS frame with the ACK flag.
const H2_SETTINGS_ACK: &[u8] = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00";

/// A HEADERS frame opening and ending stream 1: `GET http://upstream/`.
fn h2_get() -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table), :authority literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
    block.extend_from_slice(b"upstream");
    let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    frame
}

/// Reads one HTTP/2 frame; returns its type, flags and stream.
async fn read_h2_frame(stream: &mut TcpStream) -> anyhow::Result<(u8, u8, u32)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await?;
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok((head[3], head[4], stream_id))
}

/// Reads one HTTP/1.1 response with a `content-length` body.
async fn read_http1_response(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    if !status.starts_with("HTTP/1.1 200") {
        bail!("the proxy answered {:?}", status.trim_end());
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the proxy closed the connection in the response head");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(())
}

/// Serves `ok` to every request, HTTP/1.1 and HTTP/2, on a port of 127.0.0.1.
async fn serve_upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// Starts `myelin-bench proxy` in front of `upstream` and returns it with its listener.
async fn start_proxy(upstream: SocketAddr, workers: usize) -> anyhow::Result<(Child, SocketAddr)> {
    let program = std::env::current_exe().context("finding myelin-bench")?;
    let mut proxy = Command::new(program)
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream.to_string())
        .args(["--workers", &workers.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting myelin-bench proxy")?;
    let stdout = proxy.stdout.take().context("the proxy's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let address = line
        .trim()
        .strip_prefix("proxy listening on ")
        .with_context(|| format!("the proxy printed {line:?}"))?
        .parse()?;
    Ok((proxy, address))
}

/// The resident set of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// Raises this process's soft open-file limit to the hard one (the proxy started here
/// inherits the hard limit and raises its soft limit itself) and returns how many client
/// connections a storm may open: `wanted`, or fewer when the proxy's share of the open
/// files ([`connection_capacity`]) or the soak's own (one socket per client connection and
/// one per upstream connection it serves) is smaller.
fn storm_size(wanted: usize) -> anyhow::Result<usize> {
    let open_files = raise_open_file_limit().context("reading the open-file limit")?;
    let own = usize::try_from(open_files / 2).unwrap_or(usize::MAX);
    Ok(wanted.min(connection_capacity(open_files)).min(own))
}
