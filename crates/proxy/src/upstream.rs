//! The upstream layer: marked upstream connections, the per-client HTTP/2 pools, the
//! parked HTTP/1.1 connections, and each client connection's own upstream connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, debug};

use crate::settings::{Limits, ProxyConfig};
use crate::socket::connect_marked;

/// Connects upstream sockets to the address in the request URI, marked with the proxy mark.
#[derive(Debug, Clone)]
struct MarkedConnector {
    mark: u32,
    source: Option<IpAddr>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mark, source, timeout) = (self.mark, self.source, self.timeout);
        Box::pin(async move {
            // The engine always writes the original destination as `ip:port` into the URI.
            let address: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("upstream {uri}: {e}"))
                })?;
            connect_marked(address, mark, source, timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

/// The upstream connections of the whole proxy, built once.
pub(crate) struct Upstreams {
    /// Pooled upstream HTTP/2 clients per client ([`UpstreamFor`]): the identity travels in
    /// the upstream socket's mark ([`Upstreams::mark_for`]) so the datapath applies the
    /// destination's policy to the client the proxy acts for, and connections of different
    /// clients never share a pool. (HTTP/1 requests use their client connection's own
    /// upstream connection, [`PinnedUpstream`].)
    h2_clients: Mutex<HashMap<UpstreamFor, H2Pool>>,
    /// Idle upstream HTTP/1.1 connections left by client connections that ended, per
    /// (client, destination), newest last: the next client connection to the same
    /// destination for the same client adopts one instead of connecting.
    idle_h1: Mutex<HashMap<(UpstreamFor, SocketAddr), Vec<IdleUpstream>>>,
    /// When [`Upstreams::sweep_if_due`] last dropped what clients left behind.
    last_sweep: Mutex<Instant>,
    mark: u32,
    limits: Limits,
}

impl Upstreams {
    /// The pools of a proxy run with `config`.
    pub(crate) fn new(config: &ProxyConfig) -> Self {
        let limits = &config.limits;
        Self {
            h2_clients: Mutex::new(HashMap::new()),
            idle_h1: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
            mark: config.mark,
            limits: limits.clone(),
        }
    }

    /// The mark of upstream sockets opened on behalf of `identity` (0: unknown):
    /// `mark | identity << 16`, or no mark when the proxy marks nothing.
    fn mark_for(&self, identity: u32) -> u32 {
        if self.mark == 0 {
            0
        } else {
            self.mark | (identity << 16)
        }
    }

    /// Once per upstream idle timeout, drops the HTTP/2 pools no new client connection asked
    /// for within it and the parked HTTP/1.1 connections that idled out or closed, with the
    /// map entries of clients that did not come back. Keyed by client address (pods come
    /// and go), the maps would otherwise grow for as long as the proxy runs, and parked
    /// connections would stay open until their server closed them.
    fn sweep_if_due(&self) {
        let timeout = self.limits.upstream_idle_timeout;
        {
            let mut last = lock(&self.last_sweep);
            if last.elapsed() < timeout {
                return;
            }
            *last = Instant::now();
        }
        // Connections holding a pool's client keep using it; new ones build another.
        lock(&self.h2_clients).retain(|_, pool| pool.used.elapsed() < timeout);
        lock(&self.idle_h1).retain(|_, parked| {
            parked.retain(|p| !p.sender.is_closed() && p.since.elapsed() < timeout);
            !parked.is_empty()
        });
    }

    /// Keeps an upstream HTTP/1.1 connection whose client connection ended, if it can take
    /// another request, for [`Upstreams::adopt_h1`]. Connections idle longer than the upstream
    /// idle timeout, or closed by the upstream, are dropped here and there.
    fn park_h1(
        &self,
        upstream: UpstreamFor,
        destination: SocketAddr,
        sender: hyper::client::conn::http1::SendRequest<Incoming>,
    ) {
        if !sender.is_ready() {
            return;
        }
        self.sweep_if_due();
        let mut idle = lock(&self.idle_h1);
        let parked = idle.entry((upstream, destination)).or_default();
        let timeout = self.limits.upstream_idle_timeout;
        parked.retain(|p| !p.sender.is_closed() && p.since.elapsed() < timeout);
        if parked.len() >= MAX_IDLE_H1_PER_DESTINATION {
            parked.remove(0);
        }
        parked.push(IdleUpstream {
            since: Instant::now(),
            sender,
        });
    }

    /// The most recently parked usable upstream connection to `destination` for `upstream`.
    fn adopt_h1(
        &self,
        upstream: UpstreamFor,
        destination: SocketAddr,
    ) -> Option<hyper::client::conn::http1::SendRequest<Incoming>> {
        let mut idle = lock(&self.idle_h1);
        let key = (upstream, destination);
        let parked = idle.get_mut(&key)?;
        let timeout = self.limits.upstream_idle_timeout;
        let mut adopted = None;
        while let Some(candidate) = parked.pop() {
            if !candidate.sender.is_closed() && candidate.since.elapsed() < timeout {
                adopted = Some(candidate.sender);
                break;
            }
        }
        if parked.is_empty() {
            idle.remove(&key);
        }
        adopted
    }

    /// The pooled HTTP/2 upstream client for `upstream`.
    fn h2_client(&self, upstream: UpstreamFor) -> Client<MarkedConnector, Incoming> {
        self.sweep_if_due();
        let mut pools = lock(&self.h2_clients);
        let pool = pools.entry(upstream).or_insert_with(|| {
            let connector = MarkedConnector {
                mark: self.mark_for(upstream.identity),
                source: upstream.source,
                timeout: self.limits.upstream_connect_timeout,
            };
            H2Pool {
                client: Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(self.limits.upstream_idle_timeout)
                    .http2_only(true)
                    .build(connector),
                used: Instant::now(),
            }
        });
        pool.used = Instant::now();
        pool.client.clone()
    }
}

/// An upstream HTTP/2 client pool of [`Upstreams::h2_clients`], and when a client connection
/// last asked for it.
struct H2Pool {
    client: Client<MarkedConnector, Incoming>,
    used: Instant,
}

/// Whom upstream connections are opened for: the client's identity, which their socket mark
/// carries, and, when the listener keeps the client's address ([`Listener::original_source`]),
/// that address. Connections are shared only between requests of the same.
///
/// [`Listener::original_source`]: crate::config::Listener::original_source
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UpstreamFor {
    identity: u32,
    source: Option<IpAddr>,
}

/// The HTTP/2 upstream client of a connection, remembered with whom it was chosen for so
/// that later requests skip the engine's shared map.
type CachedClient = (UpstreamFor, Client<MarkedConnector, Incoming>);

/// An upstream HTTP/1.1 connection kept for one client connection, with whom it was opened
/// for.
struct PinnedUpstream {
    upstream: UpstreamFor,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// An upstream HTTP/1.1 connection parked in [`Upstreams::park_h1`], since when.
struct IdleUpstream {
    since: Instant,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// Most idle upstream HTTP/1.1 connections kept per (client, destination).
const MAX_IDLE_H1_PER_DESTINATION: usize = 64;

/// The upstream side of one client connection: whom it connects for, its HTTP/2 client of
/// the last request and its own upstream HTTP/1.1 connection.
pub(crate) struct ConnectionUpstreams {
    upstreams: Arc<Upstreams>,
    destination: SocketAddr,
    /// Upstream connections leave from the client's address (the listener's
    /// `original_source`): this one.
    source: Option<IpAddr>,
    /// The upstream client of the last HTTP/2 request (see [`CachedClient`]).
    h2_client: Mutex<Option<CachedClient>>,
    /// The upstream HTTP/1.1 connection of this client connection: HTTP/1 requests of one
    /// client connection come one at a time, so they reuse one upstream connection of their
    /// own instead of checking one out of a shared pool per request.
    upstream_h1: Mutex<Option<PinnedUpstream>>,
}

impl Drop for ConnectionUpstreams {
    /// Leaves the upstream HTTP/1.1 connection to the next client connection.
    fn drop(&mut self) {
        if let Some(pinned) = lock(&self.upstream_h1).take() {
            self.upstreams
                .park_h1(pinned.upstream, self.destination, pinned.sender);
        }
    }
}

impl ConnectionUpstreams {
    /// The upstream side of a client connection to `destination`; with `source`, upstream
    /// connections leave from that (the client's) address.
    pub(crate) fn new(
        upstreams: Arc<Upstreams>,
        destination: SocketAddr,
        source: Option<IpAddr>,
    ) -> Self {
        Self {
            upstreams,
            destination,
            source,
            h2_client: Mutex::new(None),
            upstream_h1: Mutex::new(None),
        }
    }

    /// A fresh upstream side for the same client connection (after an h2c upgrade).
    pub(crate) fn fresh(&self) -> Self {
        Self::new(self.upstreams.clone(), self.destination, self.source)
    }

    /// Whom this connection's upstream connections for a client of `identity` are for.
    pub(crate) fn upstream_for(&self, identity: u32) -> UpstreamFor {
        UpstreamFor {
            identity,
            source: self.source,
        }
    }

    /// Sends an HTTP/2 `request` upstream with the pooled client for `upstream`: the one the
    /// previous request used when it fits, else the engine's (which is then remembered).
    pub(crate) fn send_h2(
        &self,
        upstream: UpstreamFor,
        request: Request<Incoming>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let mut cached = lock(&self.h2_client);
        match &*cached {
            Some((chosen_for, client)) if *chosen_for == upstream => client.request(request),
            _ => {
                let client = self.upstreams.h2_client(upstream);
                let response = client.request(request);
                *cached = Some((upstream, client));
                response
            }
        }
    }

    /// Opens a marked upstream HTTP/1.1 connection to the destination for `upstream`.
    async fn connect_h1(
        &self,
        upstream: UpstreamFor,
    ) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, UpstreamError> {
        let engine = &self.upstreams;
        let stream = connect_marked(
            self.destination,
            engine.mark_for(upstream.identity),
            upstream.source,
            engine.limits.upstream_connect_timeout,
        )
        .await
        .map_err(UpstreamError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(
            async move {
                if let Err(e) = connection.with_upgrades().await {
                    debug!(error = %e, "upstream connection ended with an error");
                }
            }
            .in_current_span(),
        );
        Ok(sender)
    }

    /// Sends an HTTP/1.1 `request` upstream on this client connection's own upstream
    /// connection, opening one when there is none (or it closed, or it was opened for
    /// another client). A request the kept connection could not take because the upstream
    /// had just closed it is sent once more on a new connection.
    pub(crate) async fn send_h1(
        &self,
        upstream: UpstreamFor,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let kept = lock(&self.upstream_h1)
            .take()
            .filter(|p| p.upstream == upstream && !p.sender.is_closed())
            .map(|p| p.sender)
            .or_else(|| self.upstreams.adopt_h1(upstream, self.destination));
        let (mut sender, reused) = match kept {
            Some(sender) => (sender, true),
            None => (self.connect_h1(upstream).await?, false),
        };
        let request = match sender.ready().await {
            Ok(()) => match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.keep_h1(upstream, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(request) if reused => request,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            },
            Err(e) if !reused => return Err(UpstreamError::Http(e)),
            Err(_) => request,
        };
        let mut sender = self.connect_h1(upstream).await?;
        sender.ready().await.map_err(UpstreamError::Http)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Http)?;
        Ok(self.keep_h1(upstream, sender, response))
    }

    /// Keeps `sender` for the next request unless the response hands the connection over
    /// to an upgrade. Concurrent streams of an h2c-upgraded connection each hold an upstream
    /// connection of their own; one displaced from the slot is parked for other client
    /// connections once its response has been read, not closed.
    fn keep_h1(
        &self,
        upstream: UpstreamFor,
        sender: hyper::client::conn::http1::SendRequest<Incoming>,
        response: Response<Incoming>,
    ) -> Response<Incoming> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let displaced = lock(&self.upstream_h1).replace(PinnedUpstream { upstream, sender });
            if let Some(PinnedUpstream {
                upstream,
                mut sender,
            }) = displaced
            {
                let upstreams = self.upstreams.clone();
                let destination = self.destination;
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        upstreams.park_h1(upstream, destination, sender);
                    }
                });
            }
        }
        response
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Http(hyper::Error),
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether the request failed because the client's body could not be read (broken off,
    /// or malformed such as a bad chunk size): hyper reports that as a user body error
    /// whose cause is the server side's read error.
    pub(crate) fn caused_by_client(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::Connect(_) => None,
            Self::Http(e) => Some(e),
            Self::Client(e) => Some(e),
        };
        while let Some(error) = next {
            if let Some(hyper_error) = error.downcast_ref::<hyper::Error>()
                && hyper_error.is_user()
                && std::error::Error::source(hyper_error)
                    .is_some_and(|cause| cause.is::<hyper::Error>())
            {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// Locks `mutex`; a panic elsewhere while it was held leaves data that is still usable here
/// (caches and connection handles), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> UpstreamFor {
        UpstreamFor {
            identity: 7,
            source: Some(IpAddr::from([10, 0, 0, last])),
        }
    }

    /// A ready upstream HTTP/1.1 connection over an in-memory pipe.
    async fn h1_sender() -> hyper::client::conn::http1::SendRequest<Incoming> {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _keep_the_pipe_open = theirs;
            let _ = connection.await;
        });
        while !sender.is_ready() {
            tokio::task::yield_now().await;
        }
        sender
    }

    #[tokio::test(start_paused = true)]
    async fn what_clients_leave_behind_is_dropped_after_the_idle_timeout() {
        let mut config = ProxyConfig::new("/nonexistent/proxy.sock");
        config.limits.upstream_idle_timeout = Duration::from_secs(60);
        let engine = Upstreams::new(&config);
        let destination: SocketAddr = "10.0.1.1:80".parse().expect("address");
        for last in 0..50 {
            engine.h2_client(client(last));
            engine.park_h1(client(last), destination, h1_sender().await);
        }
        assert_eq!(lock(&engine.h2_clients).len(), 50);
        assert_eq!(lock(&engine.idle_h1).len(), 50);

        // Within the timeout nothing goes; after it, only what a client still uses stays.
        tokio::time::advance(Duration::from_secs(30)).await;
        engine.h2_client(client(0));
        assert_eq!(lock(&engine.h2_clients).len(), 50);
        tokio::time::advance(Duration::from_secs(31)).await;
        engine.h2_client(client(0));
        assert_eq!(lock(&engine.h2_clients).len(), 1, "client 0's pool stays");
        assert!(
            lock(&engine.idle_h1).is_empty(),
            "parked connections idled out"
        );
        assert!(engine.adopt_h1(client(1), destination).is_none());
    }
}
