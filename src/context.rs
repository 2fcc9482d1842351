//! What every request of one layer shares: its settings, its key maker and its engine state.
//!
//! The request path's modules all read this one struct; only the layer builds it.

use crate::background::Background;
use crate::body::CacheBody;
use crate::coalesce::Flights;
use crate::config::Config;
use crate::key::KeyMaker;
use crate::stats::Counters;
use crate::store::GuardedStore;
use http::Response;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What the cache answers a request with: a response, or the inner service's own error.
pub(crate) type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

/// Everything a [`CacheService`](crate::CacheService) shares with its clones and siblings.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) keys: KeyMaker,
    pub(crate) store: GuardedStore,
    pub(crate) stats: Arc<Counters>,
    pub(crate) flights: Arc<Flights>,
    /// Bounds the writes in flight, so a slow store cannot pile up buffered entries.
    pub(crate) writes: Arc<Semaphore>,
    /// Bounds the response bytes buffered by fills in flight (one permit per byte), so many
    /// large fills at once (clients that ask for many big URLs and hang up) cannot make the
    /// process hold more than `max_fill_bytes`.
    pub(crate) fill_bytes: Arc<Semaphore>,
    /// Fills and writes running off the response path.
    pub(crate) background: Arc<Background>,
}
