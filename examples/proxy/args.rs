//! Command-line flags: what the operator can set, with defaults and validation.

use crate::sanitize::TrustedProxies;
use clap::{Parser, ValueEnum};
use http::uri::{Authority, Scheme};
use http::Uri;
use std::net::SocketAddr;
use tower_redis_cache::CacheMode;

/// A caching reverse proxy in front of one HTTP upstream, backed by Redis or process memory.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
pub(crate) struct Args {
    /// Address to serve clients on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// The origin every request is forwarded to: http:// or https://host:port, optionally with
    /// a base path.
    #[arg(long, value_name = "URL", env = "UPSTREAM_URL", value_parser = parse_upstream)]
    pub(crate) upstream: Upstream,

    /// Redis URL of the shared cache (redis://, redis-cluster://, redis-sentinel://).
    /// Without it the cache is in this process and not shared between instances.
    #[arg(long, value_name = "URL", env = "REDIS_URL")]
    pub(crate) redis: Option<String>,

    /// With --redis: PEM file of the CA certificates that sign the Redis servers'
    /// certificates, trusted on top of the system's roots. Turns TLS on (as `rediss://` does).
    #[arg(long, value_name = "PATH", requires = "redis")]
    pub(crate) redis_ca: Option<std::path::PathBuf>,

    /// With --redis: PEM file of the client certificate chain (leaf first) to present, for
    /// servers with `tls-auth-clients yes`; needs --redis-key. Turns TLS on.
    #[arg(long, value_name = "PATH", requires_all = ["redis", "redis_key"])]
    pub(crate) redis_cert: Option<std::path::PathBuf>,

    /// With --redis: PEM file of the private key of --redis-cert.
    #[arg(long, value_name = "PATH", requires = "redis_cert")]
    pub(crate) redis_key: Option<std::path::PathBuf>,

    /// With --redis: the name to check on the certificates of Cluster nodes that
    /// `CLUSTER SLOTS` lists by IP address (the seed nodes are checked against the URL's
    /// host). Turns TLS on.
    #[arg(long, value_name = "NAME", requires = "redis")]
    pub(crate) redis_tls_server_name: Option<String>,

    /// Freshness, in seconds, of responses whose origin gives none (not applied to answers
    /// to requests with cookies unless --ttl-with-cookies).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) ttl: u64,

    /// Apply --ttl also to responses to requests that carry a `Cookie` (by default such a
    /// response without freshness of its own is not stored: it is likely the session's own).
    #[arg(long)]
    pub(crate) ttl_with_cookies: bool,

    /// Seconds past freshness during which a stale entry is served while it is refreshed.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub(crate) stale_while_revalidate: u64,

    /// Seconds past freshness during which a stale entry is served when the origin fails.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub(crate) stale_if_error: u64,

    /// Seconds past freshness during which a stale entry is served when the upstream cannot be
    /// reached at all (refused, reset, timed out), unless the response forbids stale serving
    /// (must-revalidate, no-cache, proxy-revalidate, s-maxage): RFC 9111 §4.2.4 lets a
    /// disconnected cache do so, as Squid and Traffic Server do by default. An error status
    /// the upstream sends is passed on (that is --stale-if-error's). 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) stale_if_unreachable: u64,

    /// The targeted cache-control response fields (RFC 9213) this cache obeys, first present
    /// and valid wins, in place of Cache-Control and Expires (e.g.
    /// `Tower-Cache-Control,CDN-Cache-Control`; an empty value: none). They are passed on to
    /// clients unchanged.
    #[arg(
        long,
        value_name = "FIELD,...",
        value_delimiter = ',',
        default_value = "CDN-Cache-Control"
    )]
    pub(crate) targeted_cache_control: Vec<String>,

    /// Store responses that set cookies when they declare freshness or `public` (default: a
    /// response with Set-Cookie is never stored, as a session cookie on a cacheable page
    /// would be handed to every client). Only for upstreams whose cacheable responses set
    /// cookies everyone may share.
    #[arg(long)]
    pub(crate) share_set_cookie: bool,

    /// Lifetime of a fill lock, in milliseconds (its holder extends it while filling).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub(crate) lock_ttl_ms: u64,

    /// Longest wait for another request's fill before calling the origin, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub(crate) lock_wait_ms: u64,

    /// Largest response body stored; larger ones stream through uncached.
    #[arg(long, value_name = "N", default_value_t = 8 * 1024 * 1024)]
    pub(crate) max_body_bytes: u64,

    /// The most response bytes all fills in flight may buffer together; a fill that would go
    /// past it streams through to its client uncached. Bounds memory when clients ask for many
    /// large cold URLs at once.
    #[arg(long, value_name = "N", default_value_t = 256 * 1024 * 1024)]
    pub(crate) max_fill_bytes: u64,

    /// This cache's name: in `Cache-Status` and as the `cache` label of every metric.
    #[arg(long, value_name = "NAME", default_value = "tower-redis-cache")]
    pub(crate) cache_name: String,

    /// Prefix of every cache key in the store.
    #[arg(long, value_name = "NAME", default_value = "trc")]
    pub(crate) prefix: String,

    /// `shared`: RFC 9111 shared-cache rules; `app`: the proxy's --ttl unless the origin says.
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    pub(crate) mode: Mode,

    /// The admin port (/healthz, /readyz, /stats, /metrics, POST /purge): a PORT (bound on
    /// 127.0.0.1) or an ADDR:PORT; none when absent.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_admin_listen)]
    pub(crate) admin_listen: Option<SocketAddr>,

    /// Bearer token that the admin port's mutating endpoints (POST /purge) require; without
    /// one (or --admin-token-file) they are disabled.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub(crate) admin_token: Option<String>,

    /// A file holding the admin token (its first line), so it stays out of the process list.
    #[arg(long, value_name = "PATH")]
    pub(crate) admin_token_file: Option<std::path::PathBuf>,

    /// With --redis: how long to wait for Redis (connections and the notice subscription)
    /// before accepting traffic, in milliseconds. Past it the proxy starts anyway, serving
    /// uncached (BYPASS) until Redis answers.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub(crate) store_connect_timeout_ms: u64,

    /// Longest a client may take from connecting to a complete request head, and from one
    /// response to the next request head on a kept-alive connection, in milliseconds (nginx's
    /// client_header_timeout is 60 s). Applies to the admin port too.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_timeout_ms: u64,

    /// Most client connections served at once (per listener); past it new connections wait to
    /// be accepted and /readyz reports shedding.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_connections: u64,

    /// PEM file of CA certificates trusted for an https:// upstream, on top of the system's.
    #[arg(long, value_name = "PATH")]
    pub(crate) upstream_ca: Option<std::path::PathBuf>,

    /// Longest wait for the upstream's response head, in milliseconds (then 504).
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) upstream_timeout_ms: u64,

    /// Longest a cache lookup or lock call may take before the request goes on without the
    /// cache, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub(crate) store_read_timeout_ms: u64,

    /// Longest a cache write may take (writes are off the response path), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub(crate) store_write_timeout_ms: u64,

    /// With --redis: connections in the Redis pool. Commands from concurrent requests are
    /// pipelined on each connection, so few connections batch more commands per write and
    /// read, which costs the proxy and Redis less CPU per request than many.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) redis_pool_size: u16,

    /// Size of the in-process cache when there is no --redis, in bytes.
    #[arg(long, value_name = "N", default_value_t = 256 * 1024 * 1024)]
    pub(crate) memory_bytes: u64,

    /// With --redis: keep copies of the entries read lately in process for up to this long,
    /// in milliseconds (never past their freshness), so hot entries cost no Redis round trip
    /// (0: off). Coherent with the fleet: any instance's write or purge drops the copies
    /// everywhere, and copies are served only while the change feed proves itself current
    /// within 100 ms.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub(crate) near_cache_ms: u64,

    /// Threads serving connections. 1 (the default, as nginx's `worker_processes` and
    /// Pingora's `threads`): one thread runs everything, with nothing to steal or wake across
    /// threads, which on a machine shared with the origin, Redis or a load generator is the
    /// cheapest per request (a miss measured 63-69 µs of CPU on one thread, 88-121 µs on two
    /// with work stealing, on 2 cores; see the README). 0: one per CPU this process may run
    /// on (tokio's default); N > 1: N threads with work stealing.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) workers: usize,

    /// glibc's heap trim threshold, in bytes (0: glibc's default, 128 KiB). Above the
    /// default, memory freed by one request is reused by the next instead of being returned
    /// to the kernel and faulted in again (about a fifth of the CPU of a 64 KiB hit through
    /// Redis). Set by executing the proxy again with `GLIBC_TUNABLES`, which, when it
    /// already names a trim threshold, wins.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub(crate) malloc_trim_threshold: u64,

    /// Size of the near tier, in bytes.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024 * 1024)]
    pub(crate) near_cache_bytes: u64,

    /// Peers (comma-separated IPv4/IPv6 addresses or ADDR/LEN ranges) whose
    /// `X-Forwarded-*` and `Forwarded` headers are kept: a load balancer in front. From any
    /// other peer they are dropped, as an origin that builds URLs from them would otherwise
    /// have its page for the attacker's host cached for everyone.
    #[arg(long, value_name = "CIDR,...", default_value = "")]
    pub(crate) trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
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
pub(crate) struct Upstream {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// The upstream URL's path without its trailing `/` ("" for none).
    pub(crate) base: String,
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => return Err("expected http://host:port or https://host:port".into()),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| "expected http://host:port or https://host:port".to_owned())?;
    if uri.query().is_some() {
        return Err("the upstream URL cannot have a query".into());
    }
    Ok(Upstream {
        scheme,
        authority,
        base: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// `PORT` (on loopback: the admin port is not for the world unless asked) or `ADDR:PORT`.
fn parse_admin_listen(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("expected PORT or ADDR:PORT, got {value:?}"))
}

impl Upstream {
    /// The upstream URI for a request's path and query.
    pub(crate) fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
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
