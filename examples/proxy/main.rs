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
//! - Requests are sanitised before the cache sees them (`sanitize`): the key's host is the
//!   `Host` forwarded, hop-by-hop and client-supplied forwarding headers are gone
//!   (`--trusted-proxies` keeps the latter for a load balancer in front).
//! - The default mode is `shared` (RFC 9111 rules for a shared cache); `--mode app` lets the
//!   proxy decide with `--ttl` unless the origin says otherwise.
//! - A Redis that is down at start (or later) is not fatal: requests go to the origin with
//!   `X-Cache: BYPASS` and caching resumes when Redis answers.
//! - The upstream refusing or failing gives `502`, not answering within
//!   `--upstream-timeout-ms` gives `504`.
//! - `SIGINT` / `SIGTERM` stop accepting, let requests in flight finish (up to 10 s), let the
//!   cache writes finish (up to 5 s) and exit with status 0.
//! - Only `http://` upstreams: this example carries no TLS client.

mod admin;
mod args;
mod forward;
mod sanitize;

use admin::{serve_admin, StoreKind};
use args::Args;
use clap::Parser;
use forward::{chain, Forward};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sanitize::{carries_content, Policy, Sanitize};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tower::Layer;
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
        .max_fill_bytes(args.max_fill_bytes)
        .key_prefix(args.prefix.clone())
        .read_timeout(Duration::from_millis(args.store_read_timeout_ms))
        .write_timeout(Duration::from_millis(args.store_write_timeout_ms))
        // A GET or HEAD with content is answered for its sender only (see `sanitize`).
        .bypass_when(carries_content)
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
    let policy = Arc::new(Policy {
        trusted: args.trusted_proxies.clone(),
        default_host: http::HeaderValue::from_str(
            &upstream.authority.as_str().to_ascii_lowercase(),
        )
        .map_err(|e| format!("the upstream authority is not a Host value: {e}"))?,
    });

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
        let forward = Forward {
            client: client.clone(),
            upstream: Arc::clone(&upstream),
            timeout,
        };
        // Sanitising comes first: the layer must key on exactly what is forwarded.
        let service = Sanitize::new(layer.layer(forward), peer.ip(), Arc::clone(&policy));
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
