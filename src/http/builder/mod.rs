//! [`CacheLayerBuilder`]: a layer's settings, each checked once by `build` before anything
//! runs. `CacheLayer::builder` lives here too, so `layer` does not import its builder back.

use crate::engine::{EngineConfig, Face};
use crate::error::ConfigError;
use crate::http::config::{CacheMode, Config};
use crate::http::context::Shared;
use crate::http::key::{BypassFn, KeyFn, KeyMaker};
use crate::http::layer::CacheLayer;
use crate::store::Store;
use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub use crate::engine::config::{DEFAULT_MAX_FILL_BYTES, MAX_LOCK_WAIT};

impl CacheLayer {
    /// Starts configuring a layer that keeps entries in `store`.
    pub fn builder(store: impl Store) -> CacheLayerBuilder {
        CacheLayerBuilder::new(Arc::new(store))
    }
}

/// Settings for a [`CacheLayer`]; [`build`](Self::build) checks them.
#[must_use]
pub struct CacheLayerBuilder {
    /// What the engine is built from (store, guard, near tier, fills, budgets, purges).
    engine: EngineConfig,
    mode: CacheMode,
    ttl: Duration,
    negative_ttl: Option<Duration>,
    methods: Vec<Method>,
    statuses: Vec<u16>,
    max_body_bytes: u64,
    respect_cache_control: bool,
    normalize_query: bool,
    share_authorized: bool,
    ttl_with_cookies: bool,
    key_fn: Option<Arc<KeyFn>>,
    bypass: Option<Arc<BypassFn>>,
    distributed_lock: bool,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    stale_if_unreachable: Duration,
    targeted_cache_control: Vec<String>,
    share_set_cookie: bool,
    hit_for_miss_ttl: Duration,
    tagging: crate::http::tags::Tagging,
}

impl std::fmt::Debug for CacheLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("prefix", &self.engine.prefix)
            .finish_non_exhaustive()
    }
}

impl CacheLayerBuilder {
    fn new(store: Arc<dyn Store>) -> Self {
        Self {
            engine: EngineConfig::new(Face::Http, store),
            mode: CacheMode::Application,
            ttl: Duration::from_secs(60),
            negative_ttl: None,
            methods: vec![Method::GET, Method::HEAD],
            statuses: vec![200, 203, 204, 300, 301, 308],
            max_body_bytes: 8 * 1024 * 1024,
            respect_cache_control: true,
            normalize_query: true,
            share_authorized: false,
            ttl_with_cookies: false,
            key_fn: None,
            bypass: None,
            distributed_lock: true,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_if_unreachable: Duration::ZERO,
            targeted_cache_control: vec!["CDN-Cache-Control".to_owned()],
            share_set_cookie: false,
            hit_for_miss_ttl: Duration::from_secs(2),
            tagging: crate::http::tags::Tagging::default(),
        }
    }

    /// The response headers whose values are the entry's tags, for
    /// [`CacheLayer::purge_tag`] (default `Surrogate-Key` and `Cache-Tag`; values split at
    /// commas and whitespace). An empty list reads no header; tags can still come from a
    /// [`CacheTags`](crate::CacheTags) response extension and [`tags_fn`](Self::tags_fn).
    pub fn tag_headers<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: TryInto<http::header::HeaderName>,
    {
        self.tagging.headers = names
            .into_iter()
            .filter_map(|n| n.try_into().ok())
            .collect();
        self
    }

    /// Whether the tag headers are removed from responses before clients see them (default
    /// `true`: they name what the origin groups together, which is the operator's business).
    pub fn strip_tag_headers(mut self, on: bool) -> Self {
        self.tagging.strip = on;
        self
    }

    /// Adds tags to each stored response, from the request URI and the response head.
    pub fn tags_fn(
        mut self,
        f: impl Fn(&http::Uri, &http::response::Parts) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tagging.callback = Some(Arc::new(f));
        self
    }

    /// How much earlier than this process's estimate of the store's clock fills are stamped
    /// (default 2 ms): the drift allowed between two measurements of the offset (every 30 s),
    /// so a stamp may err early (refilled once more after a purge), never late.
    pub fn purge_clock_margin(mut self, margin: Duration) -> Self {
        self.engine.purge_clock_margin = margin;
        self
    }

    /// How many purge records the store keeps (default 10,000); older ones fold into a floor
    /// that covers every entry filled before it (they refill once).
    pub fn purge_records(mut self, records: usize) -> Self {
        self.engine.purge_records = records;
        self
    }

    /// Application mode (default) or RFC 9111 shared-cache mode; see [`CacheMode`].
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a response stays fresh when it does not say (default 60 s). Zero stores only
    /// responses that declare their own lifetime (`Cache-Control: max-age` / `s-maxage`).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Also stores `404` and `410` responses, fresh for `ttl` (default: not stored).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// The methods answered from the cache (default `GET` and `HEAD`; only these are allowed).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The statuses that are stored (default 200, 203, 204, 300, 301, 308).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// The largest body stored (default 8 MiB). Larger ones stream through uncached.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Lets the response's `Cache-Control: s-maxage` / `max-age` set its lifetime (default on).
    pub fn respect_cache_control(mut self, on: bool) -> Self {
        self.respect_cache_control = on;
        self
    }

    /// Sorts query parameters before keying, so their order does not matter (default on).
    pub fn normalize_query(mut self, on: bool) -> Self {
        self.normalize_query = on;
        self
    }

    /// Looks up and stores requests carrying `Authorization` like any other (default off:
    /// they go to the origin, and their responses are stored only when marked `public`,
    /// `s-maxage` or `must-revalidate`, as RFC 9111 §3.5 allows). Turn on only when the
    /// response never depends on who asks.
    pub fn share_authorized(mut self, on: bool) -> Self {
        self.share_authorized = on;
        self
    }

    /// Applies the default [`ttl`](Self::ttl) (and `negative_ttl`) to responses that declare
    /// no freshness of their own even when the request carried a `Cookie` (default off: such
    /// a response is forwarded and not stored, `Cache-Status: …; detail=cookie`). A page
    /// without caching headers asked for with a session cookie is most likely that session's
    /// own; stored for the default ttl it would be served to everyone. Responses that say how
    /// long they are fresh (`max-age`, `s-maxage`, `Expires`, or heuristically from
    /// `Last-Modified` in shared mode) are stored as they say, cookies or not. Turn on only
    /// when no response depends on the request's cookies.
    pub fn ttl_with_cookies(mut self, on: bool) -> Self {
        self.ttl_with_cookies = on;
        self
    }

    /// The prefix of every store key (default `trc`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.engine.prefix = prefix.into();
        self
    }

    /// Skips the cache for requests `bypass(request)` says so of (`X-Cache: BYPASS`); the rest
    /// keep the canonical key. Composes with [`key_fn`](Self::key_fn).
    pub fn bypass_when(
        mut self,
        bypass: impl Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.bypass = Some(Arc::new(bypass));
        self
    }

    /// Replaces the canonical key material with `key_fn(request)`; `None` bypasses the cache.
    /// The result is hashed and prefixed like the canonical key.
    pub fn key_fn(
        mut self,
        key_fn: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key_fn = Some(Arc::new(key_fn));
        self
    }

    /// The longest a lookup or lock call may take before the request goes on without the
    /// cache (default 50 ms).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.engine.read_timeout = timeout;
        self
    }

    /// The longest a write, delete or unlock may take (default 500 ms); writes are off the
    /// response path.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.engine.write_timeout = timeout;
        self
    }

    /// How long a fill lock lives unless its holder extends it (default 5 s). A holder that
    /// dies delays the others by at most this.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.engine.lock_ttl = ttl;
        self
    }

    /// The longest a request waits for another's fill before calling the origin itself
    /// (default 5 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.engine.lock_wait = wait;
        self
    }

    /// Coalesces misses across processes with a lock in the store (default on). Off, each
    /// process still coalesces its own requests.
    pub fn distributed_lock(mut self, on: bool) -> Self {
        self.distributed_lock = on;
        self
    }

    /// How long entries are kept past freshness to be served while one request refreshes them.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// How long entries are kept past freshness to be served when the origin fails.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// How long past freshness a stored response may be served when the origin cannot be
    /// reached at all (default zero: never). RFC 9111 §4.2.4 lets a *disconnected* cache serve
    /// stale responses unless the response forbids it (`must-revalidate`, `no-cache`, and in
    /// shared mode `proxy-revalidate` and `s-maxage`), as Squid's `max_stale` and Traffic
    /// Server's `max_stale_age` do. Unreachable means the inner service failed (`Err`) or
    /// answered with a response carrying the [`OriginUnreachable`](crate::OriginUnreachable)
    /// extension (a proxy's own `502`/`504` for a refused connection or a timeout). Unlike
    /// [`stale_if_error`](Self::stale_if_error), an error status the origin itself sends is
    /// passed on: the origin answered.
    pub fn stale_if_unreachable(mut self, window: Duration) -> Self {
        self.stale_if_unreachable = window;
        self
    }

    /// The targeted cache-control fields (RFC 9213) this cache obeys, in order of precedence
    /// (default `CDN-Cache-Control`; empty: none). The first listed field a response carries
    /// with a valid, non-empty value replaces its `Cache-Control` and `Expires` for this
    /// cache, so an origin can give its CDN tier rules browsers never see acted on
    /// (`CDN-Cache-Control: max-age=600` beside `Cache-Control: no-store`), or address this
    /// cache alone under a name of its own (`["Tower-Cache-Control", "CDN-Cache-Control"]`). A
    /// field that is not a valid Structured Field Dictionary is ignored. Only response fields
    /// are read; they are passed to clients unchanged. A name that is not a valid header
    /// name, or names `Cache-Control` itself, fails [`build`](Self::build).
    pub fn targeted_cache_control<I>(mut self, fields: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.targeted_cache_control = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Stores responses that set cookies when they say they may be shared: explicit
    /// freshness (`max-age`, `s-maxage`, `Expires`) or `public`, and not `private` or
    /// `no-store` (default off: a response with `Set-Cookie` is never stored). RFC 9111 allows
    /// storing `Set-Cookie`, but an origin that sets a session cookie on a page it also marks
    /// cacheable would hand that session to every client served the copy; off, the cache
    /// cannot make that mistake for it (Varnish's choice too). Turn on only for an origin
    /// whose cacheable responses set only cookies everyone may have (a consent or A/B bucket
    /// cookie). Never for responses to requests carrying credentials or cookies the default
    /// ttl would apply to: those rules still hold.
    pub fn share_set_cookie(mut self, on: bool) -> Self {
        self.share_set_cookie = on;
        self
    }

    /// After a response that may not be shared, how long the key skips coalescing and goes
    /// straight to the origin, as Varnish's hit-for-miss does (default 2 s; zero disables).
    pub fn hit_for_miss_ttl(mut self, ttl: Duration) -> Self {
        self.hit_for_miss_ttl = ttl;
        self
    }

    /// The name this cache gives itself in `Cache-Status` (default `tower-redis-cache`); an
    /// RFC 8941 token, such as `edge-1` or `cdn/eu`.
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.engine.name = name.into();
        self
    }

    /// Consecutive store failures that open the circuit breaker (default 5), and how long it
    /// then skips the store (default 1 s).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.engine.breaker_threshold = failures;
        self.engine.breaker_cooldown = cooldown;
        self
    }

    /// The near tier: copies of the values this process reads, in process memory, so hits
    /// it can answer cost no store round trip (default: on, 64 MiB, copies kept at most 30 s).
    /// `Duration::ZERO` as `ttl` turns it off.
    ///
    /// It is coherent with the fleet: every write and delete, by any instance, announces
    /// itself in the same store call, and the copy goes everywhere; a read racing a change is
    /// not kept; and copies are served only while the store's change feed has proven itself
    /// current within [`NEAR_STALENESS_BOUND`](crate::store::NEAR_STALENESS_BOUND) (a
    /// heartbeat through the same channel), else reads go to the store. A copy is never kept
    /// past the entry's own freshness. Stores that cannot report changes (the
    /// [`MemoryStore`](crate::MemoryStore), already in process) get no near tier.
    pub fn near_cache(mut self, max_bytes: u64, ttl: Duration) -> Self {
        self.engine.near_cache = (!ttl.is_zero()).then_some((max_bytes, ttl));
        self
    }

    /// The most store writes in flight at once (default 1024); misses beyond it are not stored.
    pub fn max_pending_writes(mut self, writes: usize) -> Self {
        self.engine.max_pending_writes = writes;
        self
    }

    /// The most memory all fills in flight may hold together (default 256 MiB). Each byte a
    /// fill buffers is counted three times, for the copies that exist at once at a fill's
    /// peak (the body as read, the encoded entry, the store client's write buffer), so the
    /// bytes of body buffered at once stay under a third of it. A fill that would go past it
    /// stops buffering: its response streams through to its client uncached
    /// (`Cache-Status: …; detail=fill-budget`, counted in `fills_over_budget`). Bounds memory
    /// when many large misses run at once (clients asking for many big URLs and hanging up).
    pub fn max_fill_bytes(mut self, bytes: u64) -> Self {
        self.engine.max_fill_bytes = bytes;
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(mut self) -> Result<CacheLayer, ConfigError> {
        let (statuses, targeted) = self.checked()?;
        self.engine.validate()?;
        let config = Config {
            mode: self.mode,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            cache_head: self.methods.contains(&Method::HEAD),
            statuses,
            max_body_bytes: self.max_body_bytes,
            respect_cache_control: self.respect_cache_control,
            share_authorized: self.share_authorized,
            ttl_with_cookies: self.ttl_with_cookies,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            stale_if_unreachable: self.stale_if_unreachable,
            targeted,
            share_set_cookie: self.share_set_cookie,
            distributed_lock: self.distributed_lock,
            hit_for_miss_ttl: self.hit_for_miss_ttl,
            cache_name: self.engine.name.clone(),
            tagging: self.tagging,
        };
        let keys = KeyMaker {
            prefix: self.engine.prefix.as_str().into(),
            normalize_query: self.normalize_query,
            custom: self.key_fn,
            bypass: self.bypass,
        };
        let engine = self.engine.start();
        let shared = Shared {
            config,
            keys,
            engine: Arc::new(engine),
            flights: Arc::default(),
            typed: std::sync::OnceLock::new(),
        };
        Ok(CacheLayer::new(shared))
    }

    /// The HTTP face's own settings checked, in the order their errors are reported: the
    /// statuses and targeted fields they parse into.
    fn checked(&self) -> Result<(Vec<StatusCode>, Vec<http::HeaderName>), ConfigError> {
        if self.methods.is_empty() {
            return Err(ConfigError::NoCacheableMethods);
        }
        if let Some(m) = self
            .methods
            .iter()
            .find(|m| **m != Method::GET && **m != Method::HEAD)
        {
            return Err(ConfigError::UnsupportedMethod(m.clone()));
        }
        if !self.methods.contains(&Method::GET) {
            return Err(ConfigError::HeadWithoutGet);
        }
        if self.statuses.is_empty() {
            return Err(ConfigError::NoCacheableStatuses);
        }
        let statuses = self
            .statuses
            .iter()
            .map(|&s| match StatusCode::from_u16(s) {
                Ok(code) if (200..600).contains(&s) => Ok(code),
                _ => Err(ConfigError::InvalidStatus(s)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::ZeroMaxBody);
        }
        if self.max_body_bytes > u64::from(u32::MAX) {
            return Err(ConfigError::MaxBodyTooLarge(self.max_body_bytes));
        }
        if self.negative_ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroDuration("negative_ttl"));
        }
        let targeted = self
            .targeted_cache_control
            .iter()
            .map(
                |name| match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                    Ok(header) if header != http::header::CACHE_CONTROL => Ok(header),
                    _ => Err(ConfigError::InvalidTargetedField(name.clone())),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        Ok((statuses, targeted))
    }
}

#[cfg(test)]
mod tests;
