//! Connection serving: the accept loop, and the bounds on what a client can make the proxy
//! hold (connections, time to its first request, header and idle time, HTTP/2 pings).
//!
//! hyper-util's auto builder reads the first bytes of a connection to tell HTTP/1 from
//! HTTP/2 with no timer, and hyper's `header_read_timeout` only starts once HTTP/1 is chosen,
//! so a client that connects and sends nothing was kept forever. Here a timer starts at
//! accept and closes the connection unless its first request head has arrived within the
//! header timeout; after that, hyper's HTTP/1 `header_read_timeout` bounds every later head,
//! including the idle wait for the next one on a kept-alive connection, and HTTP/2
//! connections are pinged and dropped when the peer stops answering. At most
//! `max_connections` are served at once: past it the proxy stops accepting (new connections
//! wait in the kernel's backlog) and `/readyz` says it is shedding.

use crate::forward::chain;
use crate::interim::{AnsweredOnDrop, InterimIo, InterimSource};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tower_redis_cache::BoxError;

/// How often an idle HTTP/2 connection is pinged, and how long an answer may take.
const H2_PING: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open at once (nginx's default is 128).
const H2_MAX_STREAMS: u32 = 128;

/// The bounds of one listener.
pub(crate) struct Limits {
    /// The listener's name in metrics (`listener="traffic"` or `"admin"`).
    name: &'static str,
    /// From accept to a complete first request head, and for each later head (including the
    /// idle time before it).
    pub(crate) header_timeout: Duration,
    connections: Arc<Semaphore>,
}

impl Limits {
    pub(crate) fn new(
        name: &'static str,
        header_timeout: Duration,
        max_connections: usize,
    ) -> Self {
        Self {
            name,
            header_timeout,
            connections: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// Whether every connection slot is taken (new connections wait to be accepted).
    pub(crate) fn shedding(&self) -> bool {
        self.connections.available_permits() == 0
    }
}

/// The connection builder both listeners use: HTTP/1.1 with keep-alive and a header timer,
/// or HTTP/2 with pings, chosen by what the client sends.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .max_buf_size(crate::IO_BUFFER_BYTES)
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    server
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING)
        .keep_alive_timeout(H2_PING)
        .max_concurrent_streams(H2_MAX_STREAMS);
    server
}

/// Accepts connections on `listener` until `stop` completes, serving each with the service
/// `make(peer)` under `limits`; every connection is watched by `graceful`.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    limits: Arc<Limits>,
    graceful: &GracefulShutdown,
    mut make: M,
    stop: impl Future<Output = ()>,
) where
    M: FnMut(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let server = builder(&limits);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limits.connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // closed: never happens, the semaphore lives in `limits`
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let listener_name = limits.name;
        metrics::counter!("proxy_connections_total", "listener" => listener_name).increment(1);
        let open = metrics::gauge!("proxy_connections_open", "listener" => listener_name);
        open.increment(1.0);
        let first_request = Arc::new(Notify::new());
        let (stream, interim) = InterimIo::new(stream);
        let service = FirstRequest {
            inner: make(peer),
            seen: Arc::clone(&first_request),
            interim,
        };
        let connection = server
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // Held for as long as the connection is served.
            let _permit = permit;
            let _open = OpenConnection(open);
            tokio::pin!(connection);
            let first = tokio::time::timeout(header_timeout, first_request.notified());
            let result = tokio::select! {
                result = connection.as_mut() => result,
                waited = first => match waited {
                    Ok(()) => connection.await,
                    Err(_) => {
                        metrics::counter!("proxy_header_timeouts_total", "listener" => listener_name)
                            .increment(1);
                        tracing::debug!(%peer, "no request within the header timeout: closed");
                        return;
                    }
                },
            };
            if let Err(error) = result {
                tracing::debug!(%peer, error = %chain(&*error), "connection ended with an error");
            }
        });
    }
}

/// Counts a connection out of `proxy_connections_open` when its task ends, however it ends.
struct OpenConnection(metrics::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Help texts of the metrics this module records.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "proxy_connections_total",
        "Client connections accepted, by listener."
    );
    metrics::describe_gauge!(
        "proxy_connections_open",
        "Client connections being served, by listener."
    );
    metrics::describe_counter!(
        "proxy_header_timeouts_total",
        "Connections closed because no request head arrived within --header-timeout-ms."
    );
}

/// Wraps a connection's service to tell the accept timer that a request head has arrived,
/// and to give each HTTP/1.1 request the connection's [`Interim`] handle.
struct FirstRequest<S> {
    inner: S,
    seen: Arc<Notify>,
    interim: InterimSource,
}

impl<S> hyper::service::Service<Request<Incoming>> for FirstRequest<S>
where
    S: hyper::service::Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answered<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        // `notify_one` keeps a permit when nobody waits yet, so no call is missed.
        self.seen.notify_one();
        // Interim heads are written on the raw socket: HTTP/1.1 only (see `interim`).
        let interim = self.interim.next_request();
        let answered = interim.answered_on_drop();
        if request.version() == http::Version::HTTP_11 {
            request.extensions_mut().insert(interim);
        }
        Answered {
            inner: self.inner.call(request),
            _answered: answered,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's service future, marking the request answered (for its interim handle)
    /// when it is dropped.
    struct Answered<F> {
        #[pin]
        inner: F,
        _answered: AnsweredOnDrop,
    }
}

impl<F: Future> Future for Answered<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
