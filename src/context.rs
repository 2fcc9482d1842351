//! What every request of one layer shares: its settings, its key maker and its engine.
//!
//! The request path's modules all read this one struct; only the layer builds it.

use crate::body::CacheBody;
use crate::config::Config;
use crate::engine::flight::Flights;
use crate::engine::Engine;
use crate::key::KeyMaker;
use http::Response;
use std::sync::Arc;

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
}
