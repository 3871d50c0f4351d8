//! gRPC unary calls over HTTP/2 cleartext (prior knowledge): a minimal server that answers
//! every call with one small message and `grpc-status: 0`, and a closed-loop client that
//! keeps a fixed number of calls in flight on one connection and counts completed calls.
//! Enough to measure unary calls per second through an L7 path without a gRPC stack.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

/// The method every call goes to.
const METHOD_PATH: &str = "/myelin.bench.Bench/Echo";
/// A gRPC message frame: not compressed, 2 bytes long, payload `ok`.
const MESSAGE: &[u8] = &[0, 0, 0, 0, 2, b'o', b'k'];

/// Arguments of `myelin-bench grpc-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
}

/// Arguments of `myelin-bench grpc-load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The server (`ip:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Calls kept in flight on the one HTTP/2 connection.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds counted.
    #[arg(long)]
    duration: f64,
}

/// What `myelin-bench grpc-load` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// Completed calls with `grpc-status: 0` per second.
    calls_per_s: f64,
    /// Completed calls in the counted window.
    ok: u64,
    /// Calls that failed (transport error, HTTP status, missing or non-zero `grpc-status`).
    errors: u64,
}

/// A response body: one message, then the `grpc-status` trailer.
struct Reply {
    message: Option<Bytes>,
    trailers_sent: bool,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        self.trailers_sent = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_sent
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Serves until SIGTERM/SIGINT.
pub fn run_server(args: &ServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!("grpc server listening on {}", args.listen);
        let serve = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|request: http::Request<Incoming>| async move {
                        // Read the request message to its end before answering, as a server would.
                        let _ = request.into_body().collect().await;
                        let mut response = http::Response::new(Reply {
                            message: Some(Bytes::from_static(MESSAGE)),
                            trailers_sent: false,
                        });
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(response)
                    });
                    if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "grpc connection ended");
                    }
                });
            }
        };
        tokio::select! {
            () = serve => Ok(()),
            stopped = crate::wait_for_stop() => stopped,
        }
    })
}

/// Runs the closed-loop client and prints its JSON report.
pub fn run_load(args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.duration > 0.0 && args.warmup >= 0.0 && args.streams > 0,
        "--duration and --streams must be positive, --warmup not negative"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(load(args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn load(args: &LoadArgs) -> anyhow::Result<Report> {
    let stream = TcpStream::connect(args.target)
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/2 handshake with {}", args.target))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "grpc client connection ended");
        }
    });
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let authority = args.target.to_string();
    let end = Instant::now()
        + Duration::from_secs_f64(args.warmup)
        + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let mut sender = sender.clone();
        let (counting, ok, errors) = (counting.clone(), ok.clone(), errors.clone());
        let authority = authority.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let good = call(&mut sender, &authority).await.unwrap_or(false);
                if counting.load(Ordering::Relaxed) {
                    if good { &ok } else { &errors }.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    counting.store(false, Ordering::Relaxed);
    let window = started.elapsed().as_secs_f64();
    for task in tasks {
        task.await.context("a grpc client task panicked")?;
    }
    let ok = ok.load(Ordering::Relaxed);
    Ok(Report {
        calls_per_s: ok as f64 / window,
        ok,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// One unary call; true when it ended with `grpc-status: 0`.
async fn call(sender: &mut SendRequest<Full<Bytes>>, authority: &str) -> anyhow::Result<bool> {
    sender.ready().await?;
    let request = http::Request::post(format!("http://{authority}{METHOD_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from_static(MESSAGE)))?;
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        return Ok(false);
    }
    let collected = response.into_body().collect().await?;
    Ok(collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|status| status == "0"))
}
