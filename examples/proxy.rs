//! A caching reverse proxy: hyper 1 in front, [`CacheLayer`] in the middle, a pooled
//! hyper-util client to one upstream behind it.
//!
//! Run it in front of any HTTP/1.1 origin:
//!
//! ```text
//! cargo run --release --example proxy --features metrics -- --upstream http://127.0.0.1:9000
//! ```
//!
//! With no `--redis` the cache lives in this process (a `MemoryStore`), so every instance has
//! its own. Share one cache, and one origin call per cold key, across a fleet with Redis:
//!
//! ```text
//! cargo run --release --example proxy --features metrics -- \
//!     --upstream http://127.0.0.1:9000 --redis redis://127.0.0.1:6379 \
//!     --listen 0.0.0.0:8080 --admin-listen 127.0.0.1:9090
//! curl -i localhost:8080/some/page        # x-cache: MISS
//! curl -i localhost:8080/some/page        # x-cache: HIT, age: 0
//! curl -s localhost:9090/stats            # {"hits":1,"misses":1,...}
//! curl -s localhost:9090/metrics          # Prometheus text
//! curl -s localhost:9090/healthz          # {"status":"ok","store":"reachable"}
//! ```
//!
//! `--help` lists every flag; `UPSTREAM_URL` and `REDIS_URL` may stand in for `--upstream` and
//! `--redis`, and `RUST_LOG` sets the log level (default `info`, logs go to stderr). When the
//! proxy is ready it prints `listening on ADDR` (the bound address, so `--listen 127.0.0.1:0`
//! works) on stdout, preceded by `admin on ADDR` when there is an admin port, and followed by
//! `redis connected` once Redis answers.
//!
//! Behaviour worth knowing:
//! - The default mode is `shared` (RFC 9111 rules for a shared cache); `--mode app` lets the
//!   proxy decide with `--ttl` unless the origin says otherwise.
//! - A Redis that is down at start (or later) is not fatal: requests go to the origin with
//!   `X-Cache: BYPASS` and caching resumes when Redis answers.
//! - The upstream refusing or failing gives `502`, not answering within
//!   `--upstream-timeout-ms` gives `504`.
//! - `SIGINT` / `SIGTERM` stop accepting, let requests in flight finish (up to 10 s), let the
//!   cache writes finish (up to 5 s) and exit with status 0.
//! - Only `http://` upstreams: this example carries no TLS client.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tower::{Layer, Service};
use tower_redis_cache::{BoxError, CacheLayer, CacheMode, MemoryStore, RedisStore, Stats};

/// How long requests in flight may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pending cache writes may take after the requests have drained.
const WRITES_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/healthz` waits for Redis to answer `PING`.
const PING_TIMEOUT: Duration = Duration::from_millis(250);
/// The `Via` token this proxy adds to forwarded messages.
const VIA_NAME: &str = "tower-redis-cache";

/// A caching reverse proxy in front of one HTTP upstream, backed by Redis or process memory.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
struct Args {
    /// Address to serve clients on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The origin every request is forwarded to: http://host:port, optionally with a base path.
    #[arg(long, value_name = "URL", env = "UPSTREAM_URL", value_parser = parse_upstream)]
    upstream: Upstream,

    /// Redis URL of the shared cache (redis://, redis-cluster://, redis-sentinel://).
    /// Without it the cache is in this process and not shared between instances.
    #[arg(long, value_name = "URL", env = "REDIS_URL")]
    redis: Option<String>,

    /// Freshness, in seconds, of responses whose origin gives none.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    ttl: u64,

    /// Seconds past freshness during which a stale entry is served while it is refreshed.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stale_while_revalidate: u64,

    /// Seconds past freshness during which a stale entry is served when the origin fails.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stale_if_error: u64,

    /// Lifetime of a fill lock, in milliseconds (its holder extends it while filling).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    lock_ttl_ms: u64,

    /// Longest wait for another request's fill before calling the origin, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    lock_wait_ms: u64,

    /// Largest response body stored; larger ones stream through uncached.
    #[arg(long, value_name = "N", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: u64,

    /// Prefix of every cache key in the store.
    #[arg(long, value_name = "NAME", default_value = "trc")]
    prefix: String,

    /// `shared`: RFC 9111 shared-cache rules; `app`: the proxy's --ttl unless the origin says.
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    mode: Mode,

    /// Address of the admin port (/healthz, /stats, /metrics); none when absent.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,

    /// Longest wait for the upstream's response head, in milliseconds (then 504).
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    upstream_timeout_ms: u64,

    /// Longest a cache lookup or lock call may take before the request goes on without the
    /// cache, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    store_read_timeout_ms: u64,

    /// Longest a cache write may take (writes are off the response path), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    store_write_timeout_ms: u64,

    /// Size of the in-process cache when there is no --redis, in bytes.
    #[arg(long, value_name = "N", default_value_t = 256 * 1024 * 1024)]
    memory_bytes: u64,

    /// With --redis: keep entries read or written lately in process for up to this long, in
    /// milliseconds, so hot entries cost no Redis round trip (0: off). Changes made by other
    /// instances drop the local copies through Redis pub/sub.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    near_cache_ms: u64,

    /// Size of the near cache, in bytes.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024 * 1024)]
    near_cache_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// RFC 9111 rules for a shared cache.
    Shared,
    /// The application's rules: --ttl unless the origin's Cache-Control says otherwise.
    App,
}

impl From<Mode> for CacheMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Shared => CacheMode::Shared,
            Mode::App => CacheMode::Application,
        }
    }
}

/// Where requests go: scheme and authority of the upstream, and a base path to prepend.
#[derive(Debug, Clone)]
struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// The upstream URL's path without its trailing `/` ("" for none).
    base: String,
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https upstreams are not supported (this example has no TLS client)".into())
        }
        _ => return Err("expected http://host:port".into()),
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| "expected http://host:port".to_owned())?;
    if uri.query().is_some() {
        return Err("the upstream URL cannot have a query".into());
    }
    Ok(Upstream {
        scheme: Scheme::HTTP,
        authority,
        base: uri.path().trim_end_matches('/').to_owned(),
    })
}

impl Upstream {
    /// The upstream URI for a request's path and query.
    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let path_and_query = if self.base.is_empty() {
            path_and_query.to_owned()
        } else {
            format!("{}{path_and_query}", self.base)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// The response body of the forwarding service: the upstream's body streamed through, or a
/// small error page.
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The innermost service: forwards one request to the upstream and streams the answer back.
/// Failures become `502`/`504` responses, so it never errs.
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, Incoming>,
    upstream: Arc<Upstream>,
    timeout: Duration,
    /// The client at the other end of the connection this service was made for.
    peer: IpAddr,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pooled client queues internally; there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await) })
    }
}

impl Forward {
    async fn forward(self, request: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let target = match self.upstream.target(&parts.uri) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, uri = %parts.uri, "cannot forward this request target");
                return error_response(StatusCode::BAD_REQUEST, "bad request target\n");
            }
        };
        let method = parts.method.clone();
        let client_version = parts.version;
        prepare_request_headers(&mut parts.headers, &parts.uri, parts.version, self.peer);
        parts.uri = target;
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);

        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(%method, error = %chain(&error), "upstream request failed");
                return error_response(StatusCode::BAD_GATEWAY, "bad gateway: upstream failed\n");
            }
            Err(_) => {
                tracing::warn!(%method, timeout = ?self.timeout, "upstream did not answer in time");
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: upstream did not answer in time\n",
                );
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, parts.version);
        // Answer in the client's protocol version, whatever the upstream spoke.
        parts.version = client_version;
        Response::from_parts(parts, body.map_err(BoxError::from).boxed())
    }
}

/// Removes the hop-by-hop headers and adds the forwarding ones to a request on its way up.
fn prepare_request_headers(headers: &mut HeaderMap, uri: &Uri, version: Version, peer: IpAddr) {
    strip_hop_by_hop(headers);
    // HTTP/2 clients send the host as `:authority`; HTTP/1.1 upstreams need `Host`.
    if !headers.contains_key(header::HOST) {
        if let Some(host) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let mut chain: Vec<&str> = headers
        .get_all(&forwarded_for)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let peer = peer.to_canonical().to_string();
    chain.push(&peer);
    if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(forwarded_for, value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    append_via(headers, version);
}

fn append_via(headers: &mut HeaderMap, version: Version) {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{protocol} {VIA_NAME}")) {
        headers.append(header::VIA, value);
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1):
/// the fixed list, and every header `Connection` names (except the message's own framing and
/// host, which a client could otherwise strip through us).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
}

fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An error and its sources on one line: hyper-util's own message is terse ("client error
/// (Connect)"), the cause is in the chain.
fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// A Redis URL with any password replaced, fit for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The store behind the cache, as the admin port reports it.
#[derive(Clone)]
enum StoreKind {
    Memory,
    Redis(RedisStore),
}

/// Prints one line on stdout and flushes it: the proxy's machine-readable progress.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Installed before the layer exists, so no counter increment is lost.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;

    let (store, builder) = match &args.redis {
        Some(url) => {
            let store = RedisStore::builder(url)
                .map_err(|e| format!("invalid --redis URL {}: {e}", redact(url)))?
                .connect_lazy()
                .map_err(|e| format!("cannot set up Redis at {}: {e}", redact(url)))?;
            let mut builder = CacheLayer::builder(store.clone());
            if args.near_cache_ms > 0 {
                let ttl = Duration::from_millis(args.near_cache_ms);
                builder = builder.near_cache(args.near_cache_bytes, ttl);
            }
            (StoreKind::Redis(store), builder)
        }
        None => {
            let builder = CacheLayer::builder(MemoryStore::new(args.memory_bytes));
            (StoreKind::Memory, builder)
        }
    };
    let layer = builder
        .mode(args.mode.into())
        .ttl(Duration::from_secs(args.ttl))
        .stale_while_revalidate(Duration::from_secs(args.stale_while_revalidate))
        .stale_if_error(Duration::from_secs(args.stale_if_error))
        .lock_ttl(Duration::from_millis(args.lock_ttl_ms))
        .lock_wait(Duration::from_millis(args.lock_wait_ms))
        .max_body_bytes(args.max_body_bytes)
        .key_prefix(args.prefix.clone())
        .read_timeout(Duration::from_millis(args.store_read_timeout_ms))
        .write_timeout(Duration::from_millis(args.store_write_timeout_ms))
        .build()
        .map_err(|e| format!("invalid cache settings: {e}"))?;
    if let StoreKind::Memory = store {
        tracing::warn!(
            bytes = args.memory_bytes,
            "no --redis given: caching in process memory; the cache is not shared between \
             instances"
        );
    }

    // Signals are hooked before announcing readiness, so a SIGTERM right after it is graceful.
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let admin = match args.admin_listen {
        Some(addr) => {
            let admin = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
            let admin_addr = admin
                .local_addr()
                .map_err(|e| format!("cannot read the admin address: {e}"))?;
            Some((admin, admin_addr))
        }
        None => None,
    };

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector);
    let upstream = Arc::new(args.upstream.clone());

    tokio::spawn(upkeep(metrics.clone()));
    if let Some((admin, admin_addr)) = admin {
        tokio::spawn(serve_admin(admin, layer.clone(), store.clone(), metrics));
        tracing::info!(%admin_addr, "admin port: /healthz /stats /metrics");
        announce(&format!("admin on {admin_addr}"));
    }
    tracing::info!(
        %local,
        upstream = %format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.base),
        mode = ?args.mode,
        "caching proxy ready"
    );
    announce(&format!("listening on {local}"));
    // Started after `listening on`, so `redis connected` always follows it on stdout.
    if let StoreKind::Redis(store) = &store {
        let url = redact(args.redis.as_deref().unwrap_or_default());
        watch_redis(store.clone(), url);
    }

    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    let timeout = Duration::from_millis(args.upstream_timeout_ms);

    loop {
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
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = layer.layer(Forward {
            client: client.clone(),
            upstream: Arc::clone(&upstream),
            timeout,
            peer: peer.ip(),
        });
        let connection = server
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %chain(&*error), "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: letting requests in flight finish"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still in flight were cut off");
    }
    if tokio::time::timeout(WRITES_TIMEOUT, layer.wait_for_writes())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?WRITES_TIMEOUT, "cache writes still pending were dropped");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reports whether Redis answers: a warning when it does not (the proxy then serves uncached
/// until it does; the store keeps retrying in the background) and a `redis connected` line on
/// stdout once every pooled connection is up.
fn watch_redis(store: RedisStore, url: String) {
    tokio::spawn(async move {
        if tokio::time::timeout(Duration::from_secs(2), store.wait_connected())
            .await
            .is_err()
        {
            tracing::warn!(
                redis = %url,
                "Redis is not reachable: serving uncached (X-Cache: BYPASS) until it answers"
            );
        }
        if store.wait_connected().await.is_ok() {
            tracing::info!(redis = %url, "connected to Redis: the cache is shared");
            announce("redis connected");
        }
    });
}

/// Histograms in the Prometheus recorder need periodic upkeep when no HTTP listener of its
/// own does it.
async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

async fn serve_admin(
    listener: TcpListener,
    layer: CacheLayer,
    store: StoreKind,
    metrics: PrometheusHandle,
) {
    let state = Arc::new((layer, store, metrics));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move {
                let (layer, store, metrics) = &*state;
                Ok::<_, Infallible>(admin(&request, layer, store, metrics).await)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn admin(
    request: &Request<Incoming>,
    layer: &CacheLayer,
    store: &StoreKind,
    metrics: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" => {
            let state = match store {
                StoreKind::Memory => "memory",
                StoreKind::Redis(store) => {
                    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                        Ok(Ok(_)) => "reachable",
                        _ => "unreachable",
                    }
                }
            };
            let body = format!("{{\"status\":\"ok\",\"store\":\"{state}\"}}\n");
            text(StatusCode::OK, "application/json", body)
        }
        "/stats" => text(
            StatusCode::OK,
            "application/json",
            stats_json(&layer.stats()),
        ),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /stats or /metrics\n".into(),
        ),
    }
}

fn stats_json(stats: &Stats) -> String {
    let object: serde_json::Map<String, serde_json::Value> = stats
        .fields()
        .map(|(name, value)| (name.to_owned(), value.into()))
        .collect();
    let mut body = serde_json::Value::Object(object).to_string();
    body.push('\n');
    body
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
