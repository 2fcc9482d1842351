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
//! `layer` (configuration), `service` and `flow` (the request path), `respond` (every
//! response the cache gives, marked and counted), `fetch` (origin calls that may fill, and
//! writes), `fill` and `coalesce`
//! (one origin call per key, background refreshes), `policy` (what is stored, for how long:
//! application and RFC 9111 shared modes), `conditional` (304s and revalidation), `range`
//! (byte ranges from stored responses), `key` (keys and variants), `entry` (the binary entry
//! format), `store` (Redis, memory, and the fail-open guard with the optional near cache),
//! `headers` (`X-Cache`, `Cache-Status`, `Age`), `stats`, `background` (work off the response
//! path, for `wait_for_writes`).
//!
//! - `engine`: keyed byte values with lifetimes, shared by both faces; `engine::fill`, one
//!   fill per key across the fleet (lock, waiting, takeover, extension, the fill's end).
//! - `typed`: the typed face, [`Cache`] (cache-aside for serde values); `typed::codec`, the
//!   value envelope; `typed::key_builder`, [`KeyBuilder`]; `typed::lock`, [`LockGuard`] and
//!   named locks; `typed::options`, [`GetOrSetOptions`].
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

mod background;
mod body;
mod coalesce;
mod conditional;
mod config;
mod context;
mod engine;
pub mod entry;
mod error;
mod fetch;
mod fill;
mod flow;
pub mod headers;
mod key;
mod layer;
mod lookup;
mod policy;
mod range;
mod respond;
mod service;
mod stats;
mod store;
mod typed;

pub use body::CacheBody;
pub use config::CacheMode;
pub use error::{
    BoxError, CacheError, ConfigError, GetOrSetError, LockError, OptionsError, StoreError,
    StoreErrorKind,
};
pub use key::{BypassFn, CacheKey, KeyFn};
pub use layer::{CacheLayer, CacheLayerBuilder, DEFAULT_MAX_FILL_BYTES, MAX_LOCK_WAIT};
pub use service::{CacheService, ResponseFuture};
pub use stats::Stats;
pub use store::{
    FillEnd, FillNotice, FillNotices, FillWaiter, LockAttempt, MemoryStore, NoticeListener,
    RedisStore, RedisStoreBuilder, Store, StoreFuture, DEFAULT_NOTICE_CHANNEL,
};
pub use typed::{
    BreakerState, Cache, CacheBuilder, Codec, GetOrSetOptions, Health, KeyBuilder, LockGuard,
    LockOptions,
};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
