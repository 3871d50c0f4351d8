//! The listener layer: accepts the connections the datapath hands over, admits them under
//! the connection limits, sniffs the protocol, and serves them with hyper until they end,
//! idle out, or the proxy drains.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::admission::Slot;
use crate::config::{Direction, ListenerUpstream, PolicyKey};
use crate::http::{Connection, non_http_event};
use crate::io::{Activity, ClientIo, Sniff, sniff};
use crate::metrics::{ErrorKind, RefusedReason};
use crate::routing::route;
use crate::settings::Limits;
use crate::socket::{canonical, is_handed_over};
use crate::state::Services;

/// Bytes read while deciding whether a connection speaks HTTP.
const SNIFF_BYTES: usize = 64;

/// hyper refuses HTTP/1 buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

/// Receive window of one HTTP/2 stream from a client: what a stream may have in flight
/// before the proxy has passed it upstream (hyper's default is 1 MiB).
const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// Receive window of a whole HTTP/2 client connection.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Most bytes hyper buffers per HTTP/2 stream towards the client (hyper's default 400 KiB).
const H2_SEND_BUFFER: usize = 128 * 1024;

/// The HTTP server for client connections, under `limits`.
pub(crate) fn server(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    server
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    server
}

/// Accepts connections until `cancel` fires; waits for a free connection slot before each
/// accept so excess clients queue in the kernel instead of in our memory.
pub(crate) async fn accept_loop(
    services: Arc<Services>,
    name: String,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    let listener_port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let permit = tokio::select! {
            permit = services.connection_slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = cancel.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                services.metrics.error(ErrorKind::Accept);
                warn!(listener = %name, error = %e, "accept failed");
                // Typically EMFILE: give other connections time to close.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = canonical(peer);
        let Some(snapshot) = services.current() else {
            continue;
        };
        let Some(config) = snapshot.listener(&name) else {
            continue;
        };
        if config.upstream == ListenerUpstream::Transparent
            && let Ok(local) = stream.local_addr()
            && !is_handed_over(local, listener_port)
        {
            services.metrics.refused(RefusedReason::NotRedirected);
            debug!(listener = %name, client = %source, "refusing a connection opened straight to the proxy port");
            continue;
        }
        let identity = snapshot.identity(source.ip()).map(|i| i.identity);
        let admitted = match services.admission.admit(source.ip(), identity) {
            Ok(admitted) => admitted,
            Err(reason) => {
                services.metrics.refused(reason);
                debug!(listener = %name, client = %source, ?reason, "refusing a connection over its source's limit");
                continue;
            }
        };
        let slot = Slot::new(
            permit,
            Some(admitted),
            services.metrics.connections.clone(),
            services.memory.clone(),
        );
        let span = info_span!("connection", listener = %name, client = %source);
        tokio::spawn(serve(services.clone(), name.clone(), stream, source, slot).instrument(span));
    }
}

async fn serve(
    services: Arc<Services>,
    name: String,
    mut stream: TcpStream,
    source: SocketAddr,
    slot: Slot,
) {
    let Some(snapshot) = services.current() else {
        return;
    };
    let Some(listener) = snapshot.listener(&name) else {
        return;
    };
    let destination = match route(&snapshot, listener, &stream) {
        Ok(destination) => destination,
        Err(e) => {
            services.metrics.error(ErrorKind::Connection);
            warn!(error = %e, "no upstream for the connection");
            return;
        }
    };
    let key = PolicyKey {
        endpoint: match listener.direction {
            Direction::Ingress => destination.ip(),
            Direction::Egress => source.ip(),
        },
        port: destination.port(),
        direction: listener.direction,
    };
    let limits = &services.limits;
    // Responses are written whole by hyper; do not let Nagle hold back the next one.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }

    // Sniff before handing the stream to hyper: non-HTTP bytes must be refused and reported,
    // not answered with a parse error or, worse, passed on.
    let mut prefix = BytesMut::with_capacity(SNIFF_BYTES);
    let first_request_deadline = Instant::now() + limits.header_read_timeout;
    loop {
        match sniff(&prefix) {
            Sniff::Http => break,
            Sniff::NotHttp => {
                services.metrics.error(ErrorKind::NonHttp);
                debug!(%destination, "refusing non-HTTP connection");
                let event = non_http_event(&snapshot, source, destination, key.direction);
                services.events.emit(event);
                return;
            }
            Sniff::NeedMore => {}
        }
        let read = tokio::select! {
            read = tokio::time::timeout_at(first_request_deadline, stream.read_buf(&mut prefix)) => read,
            () = services.drain.started() => return,
        };
        match read {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "client read failed");
                return;
            }
            Err(_) => {
                services.metrics.error(ErrorKind::Connection);
                debug!("client sent no request in time");
                return;
            }
        }
    }

    let activity = Arc::new(Activity::new());
    let io = ClientIo::new(prefix.freeze(), stream, activity.clone());
    let connection = Arc::new(Connection::new(
        services.clone(),
        source,
        destination,
        key,
        listener,
        activity.clone(),
        slot,
    ));
    drop(snapshot);
    let served = services
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), connection.service());
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    services.metrics.error(ErrorKind::Connection);
                    debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            () = activity.idle(limits.idle_timeout) => {
                debug!("closing idle client connection");
                return;
            }
            // hyper's header timeout covers HTTP/1 only: an HTTP/2 client that sends its
            // preface and then nothing would hold its slot for the idle timeout.
            () = activity.no_request_by(first_request_deadline) => {
                services.metrics.error(ErrorKind::Connection);
                debug!("client sent no request in time");
                return;
            }
            () = services.drain.started(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            () = services.drain.deadline(), if draining => {
                debug!("closing a connection still busy at the drain deadline");
                return;
            }
        }
    }
}
