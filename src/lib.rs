//! A shared, distributed HTTP response cache for [tower](https://docs.rs/tower) services,
//! stored in Redis.
//!
//! # Overview
//!
//! Add one [`CacheLayer`] to an axum, hyper or tonic stack. Cacheable `GET` responses are
//! buffered into a [`Store`] (Redis through `fred`, or the in-process [`MemoryStore`]) and
//! answered from it on later requests, by any instance sharing the store. Concurrent misses for
//! one key cost the origin one call, across the whole fleet. A store that is down or slow never
//! fails a request: it goes to the inner service (fail-open), and caching resumes by itself.
//!
//! Every response is marked with `X-Cache` (`HIT`, `MISS`, `BYPASS`) and `Cache-Status`
//! (RFC 9211); hits also carry `Age`.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_redis_cache::{CacheLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = CacheLayer::builder(MemoryStore::new(64 << 20))
//!     .ttl(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! let service = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("expensive"))))
//! }));
//!
//! let first = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! let second = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! assert_eq!(layer.stats().hits, 1);
//! # }
//! ```
//!
//! # Layout
//!
//! One engine, two faces. Imports go one way: faces → engine → store.
//!
//! The HTTP face (`http`):
//! - `http`: module docs and re-exports.
//! - `http::layer`: [`CacheLayer`]: the tower `Layer`, stats, keys, purges, the typed cache.
//! - `http::builder`: [`CacheLayerBuilder`], which validates every setting (tests in `tests`).
//! - `http::config`: the validated settings ([`CacheMode`] and the per-request `Config`).
//! - `http::context`: what requests share: per layer (`Shared`), per request (`Exchange`).
//! - `http::service`: [`CacheService`], the tower `Service`; hands each request to `flow`.
//! - `http::flow`: the request flow, top to bottom: classify, look up, answer, or fill.
//! - `http::lookup`: reading an entry for a request (through its vary index), decoding it.
//! - `http::miss`: the miss path: followers, the leader's fill, background refreshes.
//! - `http::fetch`: the origin call that may fill, and its answer made an entry.
//! - `http::revalidate`: a stale entry served for a failed origin, or refreshed by a `304`.
//! - `http::buffer`: reading an origin body into memory within the limit and fill budget.
//! - `http::write`: writing a fill's entry: its key, vary index, language alias.
//! - `http::respond`: every response the cache gives, marked and counted in one place.
//! - `http::policy`: request classification, what is stored and for how long (both modes).
//! - `http::policy::request`: how a request is treated before lookup; request directives.
//! - `http::policy::cache_control`: the response directives this cache acts on.
//! - `http::policy::decision`: store for a lifetime, or skip for one `NoCacheReason`.
//! - `http::policy::freshness`: how long a response is fresh, per mode.
//! - `http::policy::storable`: the rules every mode shares, and the lifetime kept.
//! - `http::policy::tests`: the policy's unit tests.
//! - `http::targeted`: targeted cache control (RFC 9213): which response field speaks for this cache.
//! - `http::date`: HTTP dates exactly as RFC 9110 §5.6.7 writes them.
//! - `http::conditional`: `304`s for clients and validators for revalidation.
//! - `http::range`: byte ranges: the range a request asks for, a stored part's, combining two.
//! - `http::partial`: stored parts in a fill: the range request that extends one, what is kept.
//! - `http::key`: canonical request keys and variant keys (tests in `tests`).
//! - `http::entry`: the binary entry format (not public API; exposed for benches and tests;
//!   tests in `tests`).
//! - `http::headers`: `X-Cache`, `Cache-Status` and `Age`, from one `Verdict` (typed `Detail`).
//! - `http::tags`: a response's tags for purges ([`CacheTags`], tag headers, `tags_fn`).
//! - `http::body`: [`CacheBody`], cached bytes or the inner body streamed through.
//!
//! The typed face:
//! - `typed`: module docs and re-exports.
//! - `typed::cache`: [`Cache`]: namespaces, per-call-typed calls, locks, health.
//! - `typed::builder`: [`CacheBuilder`], the typed face's settings over the engine's.
//! - `typed::handle`: [`TypedCache`], the cache for one value type (`cache.typed::<T>()`).
//! - `typed::identity`: [`CacheValue`], the stable name and version a value is stored under.
//! - `typed::inner`: the state a cache shares with its clones, and what a read found.
//! - `typed::load`: the loading path of `get_or_set`: single flight, fill, fail-safe, refresh.
//! - `typed::loader`: [`Loader`], what `get_or_set` accepts as a loader under each options mode.
//! - `typed::usable`: the typed fill judge: whether stored bytes answer a `get_or_set` call.
//! - `typed::codec`: the value envelope (lifetimes, identity fingerprint, MessagePack or JSON).
//! - `typed::key_builder`: [`KeyBuilder`], escaped keys with sorted parameters.
//! - `typed::lock`: named distributed locks with fencing tokens ([`LockGuard`]).
//! - `typed::options`: [`GetOrSetOptions`], [`Expiry`] and [`Loaded`].
//!
//! The engine and the store:
//! - `engine`: keyed byte values with lifetimes: the guarded store, counters, budgets.
//! - `engine::config`: the engine's settings, defaulted and validated once for both builders.
//! - `engine::fill`: one fill per key across the fleet (lock, wait, takeover, extension).
//! - `engine::flight`: in-process single flight, one leader per key.
//! - `engine::background`: work run off the caller's path, for `wait_for_writes`.
//! - `engine::keeper`: one task per engine that extends the fill locks this process holds.
//! - `engine::purge`: purges by tag and prefix, recorded once and checked on every read.
//! - [`store`]: the [`Store`] trait, [`RedisStore`], [`MemoryStore`], notices.
//! - `store::memory`: [`MemoryStore`], the store in process memory (one process's cache).
//! - `store::redis`: [`RedisStore`]: connecting, routing each command, the store's tasks.
//! - `store::guard`: timeouts, the circuit breaker and the near tier around any store.
//! - `store::near`: the near tier, in-process copies kept coherent by the change feed.
//! - `store::presence`: which keys lately held a value (a plain read before the lock script).
//! - `store::notices`: fill notices fanned out to the waiters of one process.
//! - `store::redis::builder`: [`RedisStoreBuilder`], the settings a store connects with.
//! - `store::redis::commands`: [`Store`] for [`RedisStore`], each call as its commands.
//! - `store::redis::scripts`: the Lua scripts the store runs, one round trip each.
//! - `store::redis::feed`: the Redis notice channel: subscription, heartbeats, change feed.
//! - `store::redis::sentinel`: moves the store's connections to the primary the Sentinels
//!   announce (`+switch-master`), without waiting for the old one to be demoted.
//! - `store::redis::partition`: keys on live Cluster primaries served while another is down.
//! - `store::redis::supervise`: restarts fred connection tasks that end; logs their errors.
//! - `store::redis::tls`: `RedisTls` (feature `tls`), TLS settings for `rediss://` and
//!   client certificates.
//!
//! Shared by both faces:
//! - `prefix`: the key-prefix rule both faces share.
//! - `tags`: the tag rules both faces share: what a tag may be, how tags are joined and bounded.
//! - `clock`: the wall clock in microseconds, as purge stamps and fills record it.
//! - `outcome`: what the cache did with a request (`X-Cache`), which the counters count by.
//! - `stats`: the counters behind [`Stats`].
//! - `error`: typed errors.
//!
//! # Features
//!
//! - `metrics`: every [`Stats`] counter is also emitted through the `metrics` facade.
//! - `tls`: `rediss://` URLs.
//! - `serde`: [`Stats`] implements `serde::Serialize`.
//! - `testcontainers`: the test harness can start Redis in Docker.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod clock;
mod engine;
mod error;
mod http;
mod outcome;
mod prefix;
mod stats;
pub mod store;
mod tags;
mod typed;

/// The binary entry format (not public API; exposed for benches and tests).
#[doc(hidden)]
pub use http::entry;
pub use http::headers;

pub use error::{
    BoxError, CacheError, ConfigError, GetOrSetError, LockError, OptionsError, PurgeError,
    StoreError, StoreErrorKind,
};
pub use http::{
    BypassFn, CacheBody, CacheKey, CacheLayer, CacheLayerBuilder, CacheMode, CacheService,
    CacheTags, KeyFn, OriginUnreachable, ResponseFuture, TagFn, DEFAULT_MAX_FILL_BYTES,
    MAX_LOCK_WAIT,
};
#[cfg(feature = "metrics")]
pub use stats::describe_metrics;
pub use stats::Stats;
pub use store::{MemoryStore, RedisStore, RedisStoreBuilder, Store, StoreFuture};
pub use tags::{MAX_TAGS_BYTES, MAX_TAG_LEN};
pub use typed::{
    BreakerState, Cache, CacheBuilder, CacheValue, Codec, Expiry, GetOrSetOptions,
    GetOrSetOptionsBuilder, Health, HeldLock, InBackground, InCaller, KeyBuilder, Loaded, Loader,
    LockGuard, LockOptions, TypedCache, DEFAULT_FAIL_SAFE_THROTTLE,
};

/// The type of a loader's background half, named by [`Loader`]'s hidden method.
#[doc(hidden)]
pub use typed::Detached;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
