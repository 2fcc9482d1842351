//! [`CacheLayer`]: the tower `Layer`, and what a built layer offers besides (stats, keys,
//! purges, the typed cache over its engine). Its settings live in `builder`.

use crate::engine::purge::Target;
use crate::error::{PurgeError, StoreError};
use crate::http::context::Shared;
use crate::http::key::CacheKey;
use crate::http::service::CacheService;
use crate::stats::Stats;
use http::Request;
use std::sync::Arc;
use tower_layer::Layer;

/// A [`Layer`] that caches the responses of the service it wraps in a shared
/// [`Store`](crate::Store).
///
/// Cloning is cheap and every clone shares the store, the counters and the in-process
/// coalescing, so one layer can wrap many routes.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::{CacheLayer, MemoryStore};
///
/// let layer = CacheLayer::builder(MemoryStore::new(64 << 20))
///     .ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(5))
///     .build()
///     .expect("valid cache settings");
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A layer over `shared`, which only the builder makes.
    pub(crate) fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.engine.stats.snapshot()
    }

    /// The store keys a request would use, or `None` when it is not cached by key
    /// (a custom key function opted it out).
    pub fn key_for<B>(&self, request: &Request<B>) -> Option<CacheKey> {
        let (parts, ()) = clone_head(request).into_parts();
        self.shared.keys.derive(&parts)
    }

    /// Removes the entry a `GET` of `request`'s URL (and host) would be answered from.
    pub async fn invalidate<B>(&self, request: &Request<B>) -> Result<(), StoreError> {
        match self.key_for(request) {
            Some(key) => self.shared.engine.store.delete(key.entry_key()).await,
            None => Ok(()),
        }
    }

    /// Removes the entry a `GET` (or `HEAD`) of `url` is answered from, with every variant,
    /// on every instance; `Ok(true)` when there was one. `url` is absolute
    /// (`https://host/path?query`); the entry is the one [`key_for`](Self::key_for) names for a
    /// request to it.
    pub async fn purge_url(&self, url: &str) -> Result<bool, PurgeError> {
        let uri = url
            .parse::<http::Uri>()
            .ok()
            .filter(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            })
            .ok_or_else(|| PurgeError::InvalidPrefix(url.to_owned()))?;
        let probe = Request::get(uri)
            .body(())
            .map_err(|_| PurgeError::InvalidPrefix(url.to_owned()))?;
        match self.key_for(&probe) {
            Some(key) => Ok(self.shared.engine.store.remove(key.primary_key()).await?),
            None => Ok(false),
        }
    }

    /// Purges every entry carrying `tag` (from `Surrogate-Key` / `Cache-Tag` response headers,
    /// a [`CacheTags`](crate::CacheTags) extension or [`tags_fn`](crate::CacheLayerBuilder::tags_fn)),
    /// and every typed value carrying it, on every instance sharing the store.
    ///
    /// One store call whatever the tag covers: the purge is recorded, not searched for; every
    /// instance then treats an entry whose fill began before the purge as missing (a fill
    /// still running when the purge lands is covered too), and the entries leave the store
    /// when they expire. The count of entries covered is not known, so none is returned.
    pub async fn purge_tag(&self, tag: &str) -> Result<(), PurgeError> {
        if !crate::tags::valid(tag) {
            return Err(PurgeError::InvalidTag(tag.to_owned()));
        }
        self.shared.engine.purge(Target::Tag(tag)).await?;
        self.shared.engine.stats.purges(1);
        Ok(())
    }

    /// Purges every entry whose URL starts with `prefix` (`http(s)://host` then a path
    /// prefix: `https://shop.example/products/`), on every instance sharing the store, in
    /// one store call (see [`purge_tag`](Self::purge_tag)). Scheme and host compare without
    /// case; the path as written. Entries are keyed by the URL the client asked for: behind a
    /// proxy that terminates TLS the scheme they are under is `http`.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<(), PurgeError> {
        let normalized = crate::http::key::normalize_url_prefix(prefix)
            .ok_or_else(|| PurgeError::InvalidPrefix(prefix.to_owned()))?;
        self.shared
            .engine
            .purge(Target::UrlPrefix(&normalized))
            .await?;
        self.shared.engine.stats.purges(1);
        Ok(())
    }

    /// A typed cache-aside [`Cache`](crate::Cache) on this layer's engine: the same store
    /// connections, fail-open guard and near tier, the same lock protocol (with this layer's
    /// `lock_ttl` and `lock_wait`), the same counters (its counts show in
    /// [`stats`](Self::stats)) and `cache_name`. Every call returns a clone of one cache, so
    /// their loads coalesce with each other. Its values live under `{prefix}:v:…`, apart from
    /// the layer's entries; [`wait_for_writes`](Self::wait_for_writes) covers its background
    /// work too.
    pub fn cache(&self) -> crate::Cache {
        let shared = &self.shared;
        shared
            .typed
            .get_or_init(|| {
                crate::Cache::from_engine(
                    Arc::clone(&shared.engine),
                    &shared.keys.prefix,
                    &shared.config.cache_name,
                )
            })
            .clone()
    }

    /// Waits until every fill and store write started so far has finished: before reading
    /// the store directly (tests), or before exiting (graceful shutdown).
    pub async fn wait_for_writes(&self) {
        self.shared.engine.background.idle().await;
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &crate::http::config::Config {
        &self.shared.config
    }
}

fn clone_head<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.headers_mut() = request.headers().clone();
    head
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, Arc::clone(&self.shared))
    }
}
