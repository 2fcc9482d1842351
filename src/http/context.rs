//! What every request of one layer shares: its settings, its key maker and its engine.
//!
//! The request path's modules all read this one struct; only the layer builds it.

use crate::engine::flight;
use crate::engine::Engine;
use crate::http::body::CacheBody;
use crate::http::config::Config;
use crate::http::entry::Entry;
use crate::http::key::KeyMaker;
use http::Response;
use std::sync::Arc;

/// The HTTP face's single flight: followers get the stored entry (or the stale one served).
pub(crate) type Flights = flight::Flights<Arc<Entry>>;
/// How one of this face's flights ended.
pub(crate) type Outcome = flight::Outcome<Arc<Entry>>;
/// The request that runs a fill of this face.
pub(crate) type Leader = flight::Leader<Arc<Entry>>;
/// Leading or following one of this face's fills.
pub(crate) type Role = flight::Role<Arc<Entry>>;

/// What the cache answers a request with: a response, or the inner service's own error.
pub(crate) type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

/// Everything a [`CacheService`](crate::CacheService) shares with its clones and siblings.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) keys: KeyMaker,
    /// The store, counters, budgets and background work, shared with any typed
    /// [`Cache`](crate::Cache) made from the layer.
    pub(crate) engine: Arc<Engine>,
    /// This layer's fills running in this process (single flight per key and variant).
    pub(crate) flights: Arc<Flights>,
    /// The typed cache `CacheLayer::cache` hands out, made once so every caller's loads
    /// share one flight map.
    pub(crate) typed: std::sync::OnceLock<crate::Cache>,
}
