//! Open-loop HTTP/1.1 load at a constant rate, with coordinated omission accounted for.
//!
//! A dispatcher thread releases one *ticket* per request at its intended time
//! (`start + k / rate`), sleeping with a 1 ns timer slack so that tickets are on time to a
//! few microseconds. A pool of keep-alive connections takes tickets from one queue; a
//! request's latency runs from its ticket's intended time to the end of its response body.
//! When the system under test falls behind, tickets wait in the queue and that wait is part
//! of the latency, as a user would see it (the correction `wrk2`/`oha -q` make).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::cpu;

/// Largest latency the histogram holds, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long after the last ticket the generator waits for stragglers.
const DRAIN: Duration = Duration::from_secs(2);

/// Arguments of `myelin-bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Address to connect to (`ip:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// `Host` header (default: the target address).
    #[arg(long)]
    host: Option<String>,
    /// Requests per second, constant.
    #[arg(long)]
    rate: f64,
    /// Keep-alive connections in the pool.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of warm-up, sent at the same rate but not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds recorded after the warm-up.
    #[arg(long)]
    duration: f64,
    /// PIDs of the system under test (their descendants are included), for CPU per request.
    #[arg(long, value_delimiter = ',')]
    sut_pids: Vec<u32>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// What `myelin-bench load` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// Offered rate (requests per second).
    rate: f64,
    /// Length of the recorded window in seconds.
    duration_s: f64,
    /// Tickets issued in the recorded window.
    scheduled: u64,
    /// Of those, requests answered with a 2xx status.
    ok: u64,
    /// Answers with another status.
    non_2xx: u64,
    /// Connection or protocol errors.
    errors: u64,
    /// Tickets still queued when the generator gave up (the path could not keep up).
    unsent: u64,
    /// Latency from intended send time to the end of the response, over 2xx answers.
    latency_ms: Percentiles,
    /// Run time of everything the benchmark runs (system under test, generator, ksoftirqd)
    /// per recorded request, in microseconds; see [`crate::cpu`] for why.
    total_cpu_us_per_req: f64,
    /// Of that, the system under test's own processes.
    sut_tasks_us_per_req: f64,
    /// Of that, the generator (including softirq work done in its context).
    generator_cpu_us_per_req: f64,
    /// Of that, the ksoftirqd threads.
    softirqd_us_per_req: f64,
    /// Cores busy with other work during the window (other users of the machine, softirq
    /// charged to idle): the noise figure.
    other_cores: f64,
}

/// What one connection worker saw in the recorded window.
struct WorkerTally {
    histogram: Histogram<u64>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
}

/// A ticket: the request's intended send time and whether it falls in the recorded window.
#[derive(Clone, Copy)]
struct Ticket {
    due: Instant,
    recorded: bool,
}

/// Runs the generator and prints its JSON report.
pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of requests per second"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive and --warmup not negative"
    );
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(generate(args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn generate(args: &LoadArgs) -> anyhow::Result<Report> {
    let host = args.host.clone().unwrap_or_else(|| args.target.to_string());
    let sut_pids = cpu::with_descendants(&args.sut_pids);
    let softirqd = cpu::softirq_threads();
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(connect(args.target).await?);
    }

    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let end = window_start + Duration::from_secs_f64(args.duration);
    let (tickets, queue) = mpsc::unbounded_channel::<Ticket>();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let dispatcher = std::thread::Builder::new()
        .name("dispatcher".into())
        .spawn(move || dispatch(&tickets, start, window_start, end, interval))
        .context("starting the dispatcher thread")?;

    let queue = Arc::new(Mutex::new(queue));
    let give_up = end + DRAIN;
    let mut workers = Vec::with_capacity(senders.len());
    for sender in senders {
        let queue = queue.clone();
        let request = RequestTemplate {
            target: args.target,
            path: args.path.clone(),
            host: host.clone(),
        };
        workers.push(tokio::spawn(worker(sender, request, queue, give_up)));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let before = cpu::Reading::take(&sut_pids, &softirqd)?;
    tokio::time::sleep_until(end.into()).await;
    let after = cpu::Reading::take(&sut_pids, &softirqd)?;

    let scheduled = dispatcher
        .join()
        .map_err(|_| anyhow::anyhow!("the dispatcher thread panicked"))?;
    let mut histogram = new_histogram()?;
    let (mut ok, mut non_2xx, mut errors) = (0, 0, 0);
    for worker in workers {
        let tally = worker.await.context("a connection worker panicked")??;
        histogram.add(&tally.histogram)?;
        ok += tally.ok;
        non_2xx += tally.non_2xx;
        errors += tally.errors;
    }
    let unsent = scheduled.saturating_sub(ok + non_2xx + errors);

    let requests = scheduled.max(1) as f64;
    let window = end.duration_since(window_start).as_secs_f64();
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let generator = after.generator.saturating_sub(before.generator) as f64;
    let sut_tasks = after.sut_tasks.saturating_sub(before.sut_tasks) as f64;
    let softirq = after.softirqd.saturating_sub(before.softirqd) as f64;
    let ours = sut_tasks + generator + softirq;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        rate: args.rate,
        duration_s: window,
        scheduled,
        ok,
        non_2xx,
        errors,
        unsent,
        latency_ms: Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        },
        total_cpu_us_per_req: ours / 1000.0 / requests,
        sut_tasks_us_per_req: sut_tasks / 1000.0 / requests,
        generator_cpu_us_per_req: generator / 1000.0 / requests,
        softirqd_us_per_req: softirq / 1000.0 / requests,
        other_cores: (busy - ours).max(0.0) / 1e9 / window,
    })
}

/// Releases tickets at their intended times; returns how many fall in the recorded window.
fn dispatch(
    tickets: &mpsc::UnboundedSender<Ticket>,
    start: Instant,
    window_start: Instant,
    end: Instant,
    interval: Duration,
) -> u64 {
    // A 1 ns timer slack makes nanosleep wake within microseconds instead of the default
    // 50 µs, so tickets are released close to their intended time.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut recorded = 0;
    let mut k: u32 = 0;
    loop {
        let due = start + interval * k;
        if due >= end {
            return recorded;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let in_window = due >= window_start;
        if tickets
            .send(Ticket {
                due,
                recorded: in_window,
            })
            .is_err()
        {
            return recorded;
        }
        recorded += u64::from(in_window);
        k = k.saturating_add(1);
    }
}

/// What every request of a run looks like.
struct RequestTemplate {
    target: SocketAddr,
    path: String,
    host: String,
}

impl RequestTemplate {
    fn build(&self) -> anyhow::Result<http::Request<Empty<Bytes>>> {
        http::Request::get(self.path.as_str())
            .header(http::header::HOST, self.host.as_str())
            .body(Empty::new())
            .context("building the request (check --path and --host)")
    }
}

/// One keep-alive connection: takes tickets until the queue closes or time is up.
async fn worker(
    mut sender: SendRequest<Empty<Bytes>>,
    request: RequestTemplate,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Ticket>>>,
    give_up: Instant,
) -> anyhow::Result<WorkerTally> {
    let mut tally = WorkerTally {
        histogram: new_histogram()?,
        ok: 0,
        non_2xx: 0,
        errors: 0,
    };
    loop {
        let ticket = {
            let mut queue = queue.lock().await;
            tokio::select! {
                ticket = queue.recv() => ticket,
                () = tokio::time::sleep_until(give_up.into()) => None,
            }
        };
        let Some(ticket) = ticket else {
            return Ok(tally);
        };
        if Instant::now() >= give_up {
            return Ok(tally);
        }
        let outcome = send(&mut sender, &request).await;
        let latency = ticket.due.elapsed();
        match outcome {
            Ok(status) => {
                if ticket.recorded {
                    if status.is_success() {
                        tally.ok += 1;
                        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US);
                        tally.histogram.saturating_record(us.max(1));
                    } else {
                        tally.non_2xx += 1;
                    }
                }
            }
            Err(_) => {
                if ticket.recorded {
                    tally.errors += 1;
                }
                // The connection is unusable: open a new one for the next ticket.
                if let Ok(fresh) = connect(request.target).await {
                    sender = fresh;
                }
            }
        }
    }
}

/// Sends one request and reads the whole response body.
async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: &RequestTemplate,
) -> anyhow::Result<http::StatusCode> {
    sender.ready().await?;
    let response = sender.send_request(request.build()?).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// Opens a keep-alive HTTP/1.1 connection to `target`.
async fn connect(target: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {target}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "load connection ended");
        }
    });
    Ok(sender)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating the latency histogram")
}
