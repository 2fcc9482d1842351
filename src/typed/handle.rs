//! [`TypedCache`]: the cache for one value type, its identity and validator fixed once, so
//! call sites name neither.

use super::codec::{self, unix_now_ms};
use super::identity::{self, CacheValue};
use super::inner::{count, Found, Inner, NEVER_KEEP};
use super::load::Call;
use super::loader::{Loader, Validator};
use super::options::{Expiry, GetOrSetOptions};
use super::Cache;
use crate::error::{CacheError, GetOrSetError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Borrow;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// The typed cache for values of `T`: what [`Cache::typed`] (identity from [`CacheValue`])
/// and [`Cache::typed_as`] (identity named on the handle) return. Cheap to clone; clones
/// share the cache.
///
/// A value stored under another identity (another type, version or schema version) is a
/// miss here, left in place for the next write to replace: reads never delete another
/// reader's value. Only corrupt bytes are deleted (and counted in
/// [`Stats::typed_decode_failures`](crate::Stats::typed_decode_failures)).
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use tower_redis_cache::{Cache, CacheValue, Expiry, MemoryStore};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product { id: u32, name: String }
/// impl CacheValue for Product {
///     const NAME: &'static str = "product";
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let products = Cache::new(MemoryStore::new(1 << 20)).typed::<Product>();
/// let lamp = Product { id: 1, name: "lamp".into() };
/// products.set("product:1", &lamp, Duration::from_secs(60)).await?;
/// products.set("product:2", &lamp, Expiry::Never).await?;
/// assert_eq!(products.get("product:1").await?, Some(lamp.clone()));
/// let keys: std::collections::HashSet<String> = ["product:1".into(), "nope".into()].into();
/// assert_eq!(products.get_many(&keys).await?.iter().flatten().count(), 1);
/// assert_eq!(products.delete_many(["product:1", "product:2"]).await?, 2);
/// // A zero ttl is an error, not a delete.
/// assert!(products.set("product:3", &lamp, Duration::ZERO).await.is_err());
/// # Ok(()) }
/// ```
pub struct TypedCache<T> {
    cache: Cache,
    /// The identity's text, for `Debug` and the fingerprint.
    identity: Arc<str>,
    fingerprint: u64,
    valid: Option<Validator<T>>,
    _type: PhantomData<fn() -> T>,
}

// By hand: a derive would demand `T: Clone`.
impl<T> Clone for TypedCache<T> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            identity: Arc::clone(&self.identity),
            fingerprint: self.fingerprint,
            valid: self.valid.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for TypedCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedCache")
            .field("identity", &self.identity)
            .field("cache", &self.cache)
            .field("validator", &self.valid.is_some())
            .finish()
    }
}

impl Cache {
    /// The cache for values of `T`, under `T`'s [`CacheValue`] identity.
    pub fn typed<T: CacheValue>(&self) -> TypedCache<T> {
        TypedCache::new(self.clone(), identity::describe::<T>())
    }

    /// The cache for values of `T` under the identity `name` at `version`, for a type that
    /// does not implement [`CacheValue`] (one of another crate). `typed_as::<T>("x", 1)` and
    /// a `CacheValue` with `NAME = "x"`, `VERSION = 1` read each other's values.
    pub fn typed_as<T>(&self, name: &str, version: u32) -> TypedCache<T> {
        let mut text = String::new();
        identity::describe_named(&mut text, name, version);
        TypedCache::new(self.clone(), text)
    }
}

/// The options and store lifetime a write for `expiry` takes: a zero duration is an error,
/// `Never` is fresh forever and kept `NEVER_KEEP`.
fn expiry_options(expiry: Expiry) -> Result<(GetOrSetOptions, Option<u64>), CacheError> {
    let (ttl, keep) = match expiry {
        Expiry::After(ttl) if ttl.is_zero() => return Err(CacheError::ZeroTtl),
        Expiry::After(ttl) => (ttl, None),
        Expiry::Never => (NEVER_KEEP, Some(u64::MAX)),
    };
    Ok((GetOrSetOptions::builder(ttl).options_unchecked(), keep))
}

impl<T> TypedCache<T> {
    fn new(cache: Cache, identity: String) -> Self {
        let fingerprint = cache.inner.fingerprint(&identity);
        Self {
            cache,
            identity: identity.into(),
            fingerprint,
            valid: None,
            _type: PhantomData,
        }
    }
}

impl<T> TypedCache<T> {
    /// The cache this handle reads and writes.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A stored value that `valid` rejects is a miss: not answered, loaded again by
    /// `get_or_set` (and replaced by its write), counted in
    /// [`Stats::typed_rejected`](crate::Stats::typed_rejected). Only values read from the
    /// store are checked, never a loader's.
    pub fn validate(mut self, valid: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.valid = Some(Arc::new(valid));
        self
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.cache.inner
    }
}

impl<T: DeserializeOwned> TypedCache<T> {
    /// Reads a fresh value: `None` when missing, expired, of another identity, or rejected.
    pub async fn get(&self, key: impl AsRef<str>) -> Result<Option<T>, CacheError> {
        let inner = self.inner();
        let entry = inner.keys(key.as_ref()).entry;
        let bytes = inner.engine.store.get(&entry).await?;
        let found = inner
            .read::<T>(&entry, bytes, self.fingerprint, self.valid.as_deref())
            .await;
        Ok(match found {
            Found::Value(meta, value, _) if meta.is_fresh(unix_now_ms()) => {
                inner.engine.stats.typed_hits(1);
                Some(value)
            }
            _ => {
                inner.engine.stats.typed_misses(1);
                None
            }
        })
    }

    /// Reads many fresh values in one round trip (on a Redis Cluster, one `MGET` per hash
    /// slot, sent together), in the order of `keys` (a `Vec`, a slice, a `HashSet`...).
    pub async fn get_many(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<T>>, CacheError> {
        let inner = self.inner();
        let entries: Vec<String> = keys
            .into_iter()
            .map(|key| inner.keys(key.as_ref()).entry)
            .collect();
        let values = inner.engine.store.get_many(&entries).await?;
        let now = unix_now_ms();
        let mut out = Vec::with_capacity(entries.len());
        for (entry, bytes) in entries.iter().zip(values) {
            let found = inner
                .read::<T>(entry, bytes, self.fingerprint, self.valid.as_deref())
                .await;
            out.push(match found {
                Found::Value(meta, value, _) if meta.is_fresh(now) => Some(value),
                _ => None,
            });
        }
        let hits = out.iter().filter(|v| v.is_some()).count();
        inner.engine.stats.typed_hits(count(hits));
        inner.engine.stats.typed_misses(count(out.len() - hits));
        Ok(out)
    }
}

impl<T> TypedCache<T> {
    /// Stores `value` under `key` for `expiry` (a [`Duration`], or [`Expiry::Never`]). A zero
    /// duration is [`CacheError::ZeroTtl`]: to drop a value, [`delete`](Self::delete) it.
    /// `value` may be any borrowed form of `T` (`&str` for a `String` cache).
    pub async fn set<Q>(
        &self,
        key: impl AsRef<str>,
        value: &Q,
        expiry: impl Into<Expiry>,
    ) -> Result<(), CacheError>
    where
        T: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let (options, keep) = expiry_options(expiry.into())?;
        self.write(key.as_ref(), value, &options, keep, &[]).await
    }

    /// [`set`](Self::set), with `tags` for [`Cache::purge_tag`] (invalid ones dropped and
    /// counted in `tags_dropped`).
    pub async fn set_tagged<Q>(
        &self,
        key: impl AsRef<str>,
        value: &Q,
        expiry: impl Into<Expiry>,
        tags: &[&str],
    ) -> Result<(), CacheError>
    where
        T: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let (options, keep) = expiry_options(expiry.into())?;
        let tags: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        self.write(key.as_ref(), value, &options, keep, &tags).await
    }

    /// Stores `value` as `get_or_set` with `options` would: fresh for their ttl, then kept for
    /// their stale-while-revalidate and fail-safe windows.
    pub async fn set_with<Q, M>(
        &self,
        key: impl AsRef<str>,
        value: &Q,
        options: &GetOrSetOptions<M>,
    ) -> Result<(), CacheError>
    where
        T: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.write(key.as_ref(), value, &options.settings(), None, &[])
            .await
    }

    /// Stores every `(key, value)` for `expiry`, the writes sent together.
    pub async fn set_many<K, V>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
        expiry: impl Into<Expiry>,
    ) -> Result<(), CacheError>
    where
        K: AsRef<str>,
        V: Borrow<T>,
        T: Serialize,
    {
        let expiry = expiry.into();
        let items: Vec<(K, V)> = items.into_iter().collect();
        let writes = items
            .iter()
            .map(|(key, value)| self.set(key.as_ref(), value.borrow(), expiry));
        futures_util::future::try_join_all(writes).await.map(drop)
    }

    async fn write<Q, M>(
        &self,
        key: &str,
        value: &Q,
        options: &GetOrSetOptions<M>,
        fresh_until: Option<u64>,
        tags: &[String],
    ) -> Result<(), CacheError>
    where
        Q: Serialize + ?Sized,
    {
        let inner = self.inner();
        let entry = inner.keys(key).entry;
        let now = unix_now_ms();
        let filled_at = inner.engine.purges().stamp();
        let mut meta = inner.meta_for(now, options.ttl, options, self.fingerprint, filled_at);
        if let Some(until) = fresh_until {
            meta.fresh_until_ms = until;
            meta.stale_until_ms = until;
            meta.fail_safe_until_ms = until;
        }
        let keep = match fresh_until {
            Some(_) => NEVER_KEEP,
            None => Duration::from_millis(meta.keep_until_ms().saturating_sub(now)),
        };
        let (tags, dropped) = crate::tags::join(tags);
        if dropped > 0 {
            inner.engine.stats.tags_dropped(dropped);
        }
        let bytes = codec::seal(inner.codec, value, &meta, &tags).map_err(CacheError::Encode)?;
        Ok(inner.engine.store.put(&entry, bytes, keep).await?)
    }

    /// Deletes the value under `key`, whatever its identity; `true` when there was one.
    pub async fn delete(&self, key: impl AsRef<str>) -> Result<bool, CacheError> {
        self.cache.delete(key).await
    }

    /// Deletes the values under `keys`, and returns how many there were.
    pub async fn delete_many(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<u64, CacheError> {
        self.cache.delete_many(keys).await
    }
}

impl<T> TypedCache<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Answers the value under `key`, loading it on a miss with `loader` (a future, polled in
    /// this task: it may borrow) and storing it as `options` say (a [`Duration`] for the
    /// cache's [default options](crate::CacheBuilder::default_options) with that ttl, or
    /// [`GetOrSetOptions`], by value or by reference).
    ///
    /// The loader runs once per key across the fleet: callers in this process share one run
    /// (single flight), and processes sharing the store take the key's fill lock, so the
    /// others wait for the holder's value (woken by its notice; polling as a fallback; taking
    /// the lock over if the holder died), up to the
    /// [fill wait](crate::CacheBuilder::fill_wait). If the caller that runs the loader gives
    /// up (its future is dropped), another waiting caller runs it.
    ///
    /// A loader error reaches every caller that waited on that run in this process, as the
    /// same `Arc<E>` ([`GetOrSetError::Loader`]), and nothing is stored: the next call loads
    /// again. A store that is down or slow is never an error: the loader runs (fail-open).
    /// The loader may return a [`Loaded`](crate::Loaded) to set its own ttl or skip storing.
    ///
    /// Options with stale-while-revalidate, eager refresh or a soft timeout finish loads in
    /// the background, so with them the loader must be `Send + 'static` (an `async move`
    /// block over owned clones); the compiler says so.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{Cache, MemoryStore};
    ///
    /// struct Db { name: String }
    /// impl Db {
    ///     async fn product_name(&self, id: u32) -> Result<String, std::io::Error> {
    ///         Ok(format!("{} #{id}", self.name))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let db = Db { name: "lamp".into() }; // borrowed by the loader, not moved or cloned
    /// let names = Cache::new(MemoryStore::new(1 << 20)).typed::<String>();
    /// let name = names
    ///     .get_or_set("product:1:name", Duration::from_secs(60), db.product_name(1))
    ///     .await?;
    /// assert_eq!(name, "lamp #1");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_set<M, L, E>(
        &self,
        key: impl AsRef<str>,
        options: impl Into<GetOrSetOptions<M>>,
        loader: L,
    ) -> Result<T, GetOrSetError<E>>
    where
        L: Loader<M, T, E>,
        E: Send + Sync + 'static,
    {
        let inner = self.inner();
        let options = options.into().or_defaults(&inner.defaults);
        if options.ttl.is_zero() {
            return Err(GetOrSetError::InvalidOptions(
                crate::error::OptionsError::ZeroTtl,
            ));
        }
        let call = Call {
            inner: Arc::clone(inner),
            keys: inner.keys(key.as_ref()),
            fingerprint: self.fingerprint,
            valid: self.valid.clone(),
            options: options.settings(),
            seen: None,
            filled_at_us: inner.engine.purges().stamp(),
        };
        call.get_or_set(loader).await
    }
}
