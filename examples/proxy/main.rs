//! A caching reverse proxy: hyper 1 in front, [`CacheLayer`] in the middle, a pooled
//! hyper-util client (HTTP, or HTTPS through rustls) to one upstream behind it. This file
//! starts it: flags, store readiness, the two listeners, and shutdown.
//!
//! Run it in front of any HTTP/1.1 origin (default features are enough):
//!
//! ```text
//! cargo run --release --example proxy -- --upstream http://127.0.0.1:9000
//! ```
//!
//! With no `--redis` the cache lives in this process (a `MemoryStore`), so every instance has
//! its own. Share one cache, and one origin call per cold key, across a fleet with Redis:
//!
//! ```text
//! cargo run --release --example proxy -- \
//!     --upstream http://127.0.0.1:9000 --redis redis://127.0.0.1:6379 \
//!     --listen 0.0.0.0:8080 --admin-listen 9090 --admin-token-file /run/secrets/admin
//! curl -i localhost:8080/some/page        # x-cache: MISS
//! curl -i localhost:8080/some/page        # x-cache: HIT, age: 0
//! curl -s localhost:9090/stats            # {"hits":1,"misses":1,...}
//! curl -s localhost:9090/metrics          # Prometheus text
//! curl -s localhost:9090/healthz          # {"status":"ok","store":"reachable"}
//! curl -s localhost:9090/readyz           # {"ready":true,...} (503 while not)
//! curl -s -X POST -H "Authorization: Bearer $(cat /run/secrets/admin)" \
//!     "localhost:9090/purge?url=http%3A%2F%2Flocalhost%3A8080%2Fsome%2Fpage"
//! ```
//!
//! `--help` lists every flag; `UPSTREAM_URL`, `REDIS_URL` and `ADMIN_TOKEN` may stand in for
//! `--upstream`, `--redis` and `--admin-token`, and `RUST_LOG` sets the log level (default
//! `info`, logs go to stderr). On stdout the proxy prints `admin on ADDR` when there is an
//! admin port, `redis connected` once Redis answers, and `listening on ADDR` (the bound
//! address, so `--listen 127.0.0.1:0` works) when it takes traffic.
//!
//! Behaviour worth knowing:
//! - With `--redis` it takes no traffic before Redis is connected and fill notices are
//!   subscribed, up to `--store-connect-timeout-ms` (3 s); past it, it starts in fail-open
//!   mode (`X-Cache: BYPASS`) and caches once Redis answers. A Redis lost later is the same.
//! - Requests are sanitised before the cache sees them (`sanitize`): the key's host is the
//!   `Host` forwarded, hop-by-hop and client-supplied forwarding headers are gone
//!   (`--trusted-proxies` keeps the latter for a load balancer in front).
//! - What a client can make it hold is bounded (`serve`): `--header-timeout-ms` (60 s) from
//!   accept to a request head and between requests, `--max-connections` (1024) per port,
//!   `--max-fill-bytes` (256 MiB) of fills in flight, 64 KiB of I/O buffer per connection.
//! - The default mode is `shared` (RFC 9111 rules for a shared cache); `--mode app` lets the
//!   proxy decide with `--ttl` unless the origin says otherwise.
//! - The upstream refusing or failing (or an untrusted certificate) gives `502`, not
//!   answering within `--upstream-timeout-ms` gives `504`.
//! - `Upgrade` (WebSocket) requests are tunnelled to the upstream, never cached.
//! - `grafana-dashboard.json` next to this file imports into Grafana: rates by outcome, hit
//!   ratio, fleet-wide latency quantiles from the histogram buckets, locks, store health,
//!   fill budget, near tier, connections and refusals.
//! - On Linux with glibc it starts by executing itself once more with glibc's heap trim
//!   threshold raised to `--malloc-trim-threshold` (16 MiB; see `malloc`), so large values
//!   read from Redis do not page-fault on every request.
//! - `SIGINT` / `SIGTERM` stop accepting (`/readyz` says draining), let requests in flight
//!   finish (up to 10 s), let the cache writes finish (up to 5 s) and exit with status 0.

mod admin;
mod args;
mod forward;
mod interim;
mod malloc;
mod sanitize;
mod serve;

use admin::{serve_admin, Admin, StoreKind};
use args::Args;
use clap::Parser;
use forward::{Forward, UpstreamClient};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sanitize::{bypasses_cache, Policy, Sanitize};
use serve::{serve, Limits};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tower::Layer;
use tower_redis_cache::store::{RedisTls, DEFAULT_NOTICE_CHANNEL};
use tower_redis_cache::{CacheLayer, MemoryStore, RedisStore};

/// How long requests in flight may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pending cache writes may take after the requests have drained.
const WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis URL with any password replaced, fit for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Prints one line on stdout and flushes it: the proxy's machine-readable progress.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread or allocation of note: this may execute the proxy again.
    malloc::tune(args.malloc_trim_threshold);
    match runtime(args.workers) {
        Ok(runtime) => runtime.block_on(start(args)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(2)
        }
    }
}

/// The runtime for `--workers`: tokio's default for 0, a single thread for 1 (nothing to
/// steal or wake across threads), else that many workers.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        0 => return tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

async fn start(args: Args) -> ExitCode {
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

/// The most an HTTP/1 connection buffers for reading or queues for writing, either side of
/// the proxy (hyper's default is ~400 KiB). Request and response heads must fit.
pub(crate) const IO_BUFFER_BYTES: usize = 64 * 1024;

/// Histogram buckets, in seconds, for every latency histogram: explicit buckets (rather than
/// the exporter's default summaries) can be summed across a fleet and turned into quantiles
/// with `histogram_quantile`. From 0.5 ms (a near-cache hit) to 30 s (the upstream timeout).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

async fn run(args: Args) -> Result<(), String> {
    // Installed before the layer exists, so no counter increment is lost.
    let metrics = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| format!("invalid histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
    describe_metrics();
    let token = admin_token(&args)?;

    let (store, builder) = match &args.redis {
        Some(url) => {
            let mut store = RedisStore::builder(url)
                .map_err(|e| format!("invalid --redis URL {}: {e}", redact(url)))?;
            if let Some(tls) = redis_tls(&args)? {
                store = store.tls(tls);
            }
            let store = store
                .pool_size(usize::from(args.redis_pool_size))
                // One channel per cache (per key prefix): proxies of other caches on the same
                // Redis neither wake on nor pay for each other's fill and change notices.
                .notice_channel(format!("{DEFAULT_NOTICE_CHANNEL}:{}", args.prefix))
                .connect_lazy()
                .map_err(|e| format!("cannot set up Redis at {}: {e}", redact(url)))?;
            // `--near-cache-ms 0` is `Duration::ZERO`: the builder's "off".
            let ttl = Duration::from_millis(args.near_cache_ms);
            let builder = CacheLayer::builder(store.clone()).near_cache(args.near_cache_bytes, ttl);
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
        .ttl_with_cookies(args.ttl_with_cookies)
        .stale_while_revalidate(Duration::from_secs(args.stale_while_revalidate))
        .stale_if_error(Duration::from_secs(args.stale_if_error))
        .stale_if_unreachable(Duration::from_secs(args.stale_if_unreachable))
        .targeted_cache_control(args.targeted_cache_control.iter().filter(|f| !f.is_empty()))
        .share_set_cookie(args.share_set_cookie)
        .lock_ttl(Duration::from_millis(args.lock_ttl_ms))
        .lock_wait(Duration::from_millis(args.lock_wait_ms))
        .max_body_bytes(args.max_body_bytes)
        .max_fill_bytes(args.max_fill_bytes)
        .key_prefix(args.prefix.clone())
        .cache_name(args.cache_name.clone())
        .read_timeout(Duration::from_millis(args.store_read_timeout_ms))
        .write_timeout(Duration::from_millis(args.store_write_timeout_ms))
        // GETs with content and upgrades are answered for their sender only (`sanitize`).
        .bypass_when(bypasses_cache)
        .build()
        .map_err(|e| format!("invalid cache settings: {e}"))?;
    if let StoreKind::Memory = store {
        tracing::warn!(
            bytes = args.memory_bytes,
            "no --redis given: caching in process memory; the cache is not shared between \
             instances"
        );
    }
    let client = upstream_client(&args)?;
    let upstream = Arc::new(args.upstream.clone());
    let policy = Arc::new(Policy {
        trusted: args.trusted_proxies.clone(),
        default_host: http::HeaderValue::from_str(
            &upstream.authority.as_str().to_ascii_lowercase(),
        )
        .map_err(|e| format!("the upstream authority is not a Host value: {e}"))?,
    });

    // Signals are hooked before announcing readiness, so a SIGTERM right after it is graceful.
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;

    let header_timeout = Duration::from_millis(args.header_timeout_ms);
    let max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    let traffic_limits = Arc::new(Limits::new("traffic", header_timeout, max_connections));
    let draining = Arc::new(AtomicBool::new(false));

    // The admin port comes up first, so `/readyz` can say "not yet" while Redis connects.
    if let Some(addr) = args.admin_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        let admin_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the admin address: {e}"))?;
        if !admin_addr.ip().is_loopback() && token.is_none() {
            tracing::warn!(%admin_addr, "the admin port is reachable from other hosts; purging \
                stays disabled without --admin-token");
        }
        let admin = Arc::new(Admin {
            layer: layer.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            traffic: Arc::clone(&traffic_limits),
            draining: Arc::clone(&draining),
            token,
        });
        let admin_limits = Arc::new(Limits::new("admin", header_timeout, max_connections));
        tokio::spawn(serve_admin(listener, admin, admin_limits));
        tracing::info!(%admin_addr, "admin port: /healthz /readyz /stats /metrics POST /purge");
        announce(&format!("admin on {admin_addr}"));
    }
    tokio::spawn(upkeep(metrics));

    // Readiness: with Redis, connect and subscribe to fill notices before taking traffic, so
    // a freshly started fleet coalesces like a warm one; bounded, then fail open.
    if let StoreKind::Redis(store) = &store {
        let url = redact(args.redis.as_deref().unwrap_or_default());
        let wait = Duration::from_millis(args.store_connect_timeout_ms);
        match tokio::time::timeout(wait, store.wait_connected()).await {
            Ok(Ok(())) => {
                tracing::info!(redis = %url, "connected to Redis: the cache is shared");
                announce("redis connected");
            }
            _ => {
                tracing::warn!(
                    redis = %url,
                    timeout = ?wait,
                    "Redis is not ready within --store-connect-timeout-ms: starting in \
                     fail-open mode, serving uncached (X-Cache: BYPASS) until it answers"
                );
                watch_redis(store.clone(), url);
            }
        }
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(
        %local,
        upstream = %format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.base),
        mode = ?args.mode,
        "caching proxy ready"
    );
    announce(&format!("listening on {local}"));

    let graceful = GracefulShutdown::new();
    let timeout = Duration::from_millis(args.upstream_timeout_ms);
    let make = |peer: std::net::SocketAddr| {
        let forward = Forward {
            client: client.clone(),
            upstream: Arc::clone(&upstream),
            timeout,
        };
        // Sanitising comes first: the layer must key on exactly what is forwarded.
        TowerToHyperService::new(Sanitize::new(
            layer.layer(forward),
            peer.ip(),
            Arc::clone(&policy),
        ))
    };
    let stop = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    serve(listener, Arc::clone(&traffic_limits), &graceful, make, stop).await;

    draining.store(true, Ordering::Relaxed);
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

/// The admin token from `--admin-token` or the first line of `--admin-token-file`.
fn admin_token(args: &Args) -> Result<Option<String>, String> {
    let token = match (&args.admin_token, &args.admin_token_file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --admin-token-file {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err("the admin token is empty".into());
    }
    Ok(Some(token))
}

/// The pooled upstream client: HTTP, or HTTPS with rustls (ring) trusting the system's roots
/// and any `--upstream-ca`.
fn upstream_client(args: &Args) -> Result<UpstreamClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_roots();
    roots.add_parsable_certificates(native);
    if let Some(path) = &args.upstream_ca {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read --upstream-ca {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid PEM in --upstream-ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "no certificate in --upstream-ca {}",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("invalid certificate in --upstream-ca: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    // hyper-rustls hands plain `http://` to the inner connector and TLS to `https://`.
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        // Bounds what each upstream connection buffers (hyper's default is ~400 KiB): with
        // many responses streaming through at once this, not the bodies, is the memory.
        .http1_max_buf_size(IO_BUFFER_BYTES)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// The system's trusted roots; none (with a warning) when they cannot be read, as an
/// `http://` upstream needs none and an `https://` one can bring `--upstream-ca`.
fn rustls_native_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "a system root certificate could not be read");
    }
    found.certs
}

/// The Redis TLS settings the flags ask for, or `None` when none is given (a `rediss://`
/// URL alone then trusts the system's roots). A CA given is trusted on top of the system's
/// roots, as `--upstream-ca` is. The files are read here and their PEM checked when the store
/// is built, so a missing or bad file stops the proxy at startup with its name.
fn redis_tls(args: &Args) -> Result<Option<RedisTls>, String> {
    if args.redis_ca.is_none() && args.redis_cert.is_none() && args.redis_tls_server_name.is_none()
    {
        return Ok(None);
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
    };
    let mut tls = RedisTls::new().system_roots();
    if let Some(path) = &args.redis_ca {
        tls = tls.ca_pem(read("--redis-ca", path)?);
    }
    if let (Some(cert), Some(key)) = (&args.redis_cert, &args.redis_key) {
        tls = tls.client_certificate(read("--redis-cert", cert)?, read("--redis-key", key)?);
    }
    if let Some(name) = &args.redis_tls_server_name {
        tls = tls.cluster_server_name(name.clone());
    }
    Ok(Some(tls))
}

/// Help texts for the proxy's own metrics (the layer registers its own when it is built).
fn describe_metrics() {
    serve::describe_metrics();
    sanitize::describe_metrics();
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
