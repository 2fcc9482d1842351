//! Typed errors: settings rejected at build time, store failures the request path swallows,
//! and the typed face's errors.
//!
//! Two families with different audiences: [`ConfigError`] is for the person wiring the layer
//! and is returned at build time, so an impossible setting never reaches production;
//! [`StoreError`] is what a store reports, and the request path counts and swallows it
//! (fail-open), because a cache outage must never become an outage of the service.
//!
//! The typed face adds its own: [`CacheError`] for the direct calls (`get`, `set`, ...), where
//! the caller asked the store something and deserves to know it could not answer;
//! [`OptionsError`] for options that cannot work, reported where they are built;
//! [`GetOrSetError`] for `get_or_set`, which never reports the store (it loads instead) but
//! does report the loader (shared by every coalesced caller as an `Arc`, so the loader's
//! error need not be `Clone`) or a hard timeout; and [`LockError`] for the distributed lock,
//! whose callers must know they do not hold it.

use std::fmt;
use std::time::Duration;

/// A boxed error, the error type of [`CacheBody`](crate::CacheBody).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A setting the layer cannot run with, reported by
/// [`CacheLayerBuilder::build`](crate::CacheLayerBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The list of cacheable methods is empty, so nothing could ever be cached.
    NoCacheableMethods,
    /// Only `GET` and `HEAD` may be cached: other methods are not safe to answer from a cache.
    UnsupportedMethod(http::Method),
    /// `HEAD` is answered from `GET` entries, so it cannot be cacheable without `GET`.
    HeadWithoutGet,
    /// The list of cacheable statuses is empty.
    NoCacheableStatuses,
    /// A status in the cacheable list is not a valid final HTTP status (100..=599 minus 1xx).
    InvalidStatus(u16),
    /// `max_body_bytes` is zero with caching on: no response could ever be stored.
    ZeroMaxBody,
    /// `max_body_bytes` is larger than the entry format can hold (4 GiB - 1).
    MaxBodyTooLarge(u64),
    /// The key prefix is empty, so the cache's keys could not be told apart from others'.
    EmptyPrefix,
    /// The key prefix contains a character that would break the key layout
    /// (`{`, `}`, `*`, `?`, `[`, `]`, `\`, `%`, whitespace or a control character).
    InvalidPrefix(String),
    /// A duration that must be positive is zero; the field names it.
    ZeroDuration(&'static str),
    /// `lock_wait` is longer than any request should wait for another's fill.
    LockWaitTooLong {
        /// The configured wait.
        wait: Duration,
        /// The largest accepted wait.
        max: Duration,
    },
    /// `max_pending_writes` is zero: no miss could ever be written to the store.
    ZeroPendingWrites,
    /// The `Cache-Status` cache name is not an RFC 8941 token.
    InvalidCacheName(String),
    /// The near cache was given no room.
    ZeroNearCache,
    /// `max_fill_bytes` is zero: no fill could buffer a response.
    ZeroFillBytes,
    /// `purge_records` is 0: no purge by tag or prefix could be kept.
    ZeroPurgeRecords,
    /// A targeted cache-control field name is not a valid header name, or is `Cache-Control`.
    InvalidTargetedField(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCacheableMethods => f.write_str("no cacheable methods: list GET (and optionally HEAD)"),
            Self::UnsupportedMethod(m) => {
                write!(f, "method {m} cannot be cached: only GET and HEAD are safe to answer from a cache")
            }
            Self::HeadWithoutGet => {
                f.write_str("HEAD is answered from GET entries, so GET must be cacheable too")
            }
            Self::NoCacheableStatuses => f.write_str("no cacheable statuses: list at least one"),
            Self::InvalidStatus(s) => write!(f, "status {s} cannot be cached: use a final status in 200..=599"),
            Self::ZeroMaxBody => f.write_str("max_body_bytes is 0: no response could be stored"),
            Self::MaxBodyTooLarge(n) => {
                write!(f, "max_body_bytes is {n}: entries hold at most {} bytes", u32::MAX)
            }
            Self::EmptyPrefix => f.write_str("the key prefix is empty"),
            Self::InvalidPrefix(p) => write!(
                f,
                "the key prefix {p:?} contains a character reserved by the key layout ({{ }} * ? [ ] \\ % whitespace, control)"
            ),
            Self::ZeroDuration(field) => write!(f, "{field} is zero: it must be positive"),
            Self::LockWaitTooLong { wait, max } => {
                write!(f, "lock_wait of {wait:?} is longer than the maximum of {max:?}")
            }
            Self::ZeroPendingWrites => f.write_str("max_pending_writes is 0: no miss could be stored"),
            Self::ZeroFillBytes => f.write_str("max_fill_bytes is 0: no fill could buffer a response"),
            Self::ZeroPurgeRecords => f.write_str("purge_records is 0: no purge by tag or prefix could be kept"),
            Self::InvalidTargetedField(name) => write!(
                f,
                "targeted cache-control field {name:?} is not a header name other than Cache-Control"
            ),
            Self::ZeroNearCache => f.write_str("near_cache has 0 bytes: give it room or leave it off"),
            Self::InvalidCacheName(name) => write!(
                f,
                "cache name {name:?} is not a token (start with a letter; letters, digits, and !#$%&'*+-.^_`|~:/)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a purge did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum PurgeError {
    /// The tag is empty, longer than [`MAX_TAG_LEN`](crate::MAX_TAG_LEN), or holds a byte a
    /// tag cannot (whitespace, a comma, anything but visible ASCII): no entry can carry it.
    InvalidTag(String),
    /// The prefix is not `http://` or `https://` followed by a host (and an optional path
    /// prefix), or (for the typed face) is empty.
    InvalidPrefix(String),
    /// The store did not record the purge.
    Store(StoreError),
}

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTag(tag) => write!(
                f,
                "{tag:?} is not a tag (1 to 1024 bytes of visible ASCII, no comma)"
            ),
            Self::InvalidPrefix(prefix) => write!(
                f,
                "{prefix:?} is not a purge prefix (expected http(s)://host[/path prefix])"
            ),
            Self::Store(error) => write!(f, "the store did not record the purge: {error}"),
        }
    }
}

impl std::error::Error for PurgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StoreError> for PurgeError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// What went wrong talking to a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The call did not finish within its timeout.
    Timeout,
    /// The store was skipped because its circuit breaker is open after repeated failures.
    CircuitOpen,
    /// The store could not be configured or reached (bad URL, refused connection, ...).
    Connection,
    /// The store answered with an error.
    Backend,
    /// The Redis Cluster primary holding the key is unreachable while the Cluster client
    /// reconnects; keys on the other primaries are still served. Counted, but not held
    /// against the whole store by the circuit breaker.
    NodeDown,
    /// The store does not implement this operation (a custom [`Store`](crate::Store) that
    /// keeps the trait's default).
    Unsupported,
}

/// An error from a [`Store`](crate::Store). In the request path it is counted in
/// [`Stats::store_errors`](crate::Stats) and the request goes on without the cache.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<BoxError>,
}

impl StoreError {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: StoreErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` with no underlying cause.
    pub fn from_kind(kind: StoreErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Timeout => "cache store call timed out",
            StoreErrorKind::CircuitOpen => "cache store skipped: circuit breaker open",
            StoreErrorKind::Connection => "cache store connection failed",
            StoreErrorKind::Backend => "cache store error",
            StoreErrorKind::Unsupported => "cache store does not support this operation",
            StoreErrorKind::NodeDown => {
                "the cache store's Cluster node for this key is unreachable"
            }
        };
        match &self.source {
            Some(source) => write!(f, "{what}: {source}"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e.as_ref() as _)
    }
}

impl From<fred::error::Error> for StoreError {
    fn from(error: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        let kind = match error.kind() {
            ErrorKind::Timeout => StoreErrorKind::Timeout,
            ErrorKind::IO | ErrorKind::Config | ErrorKind::Url | ErrorKind::Auth => {
                StoreErrorKind::Connection
            }
            _ => StoreErrorKind::Backend,
        };
        Self::new(kind, error)
    }
}

/// Why a direct typed-cache call ([`Cache::get`](crate::Cache::get), `set`, `delete`,
/// `get_many`, `delete_prefix`) could not do what was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// The store failed, timed out, or is skipped by the circuit breaker.
    Store(StoreError),
    /// The value could not be encoded in the cache's format.
    Encode(BoxError),
    /// A write was given a zero ttl: a value that is never fresh is a delete, which
    /// `delete` says (and `Expiry::Never` is a value that never expires).
    ZeroTtl,
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(error) => write!(f, "{error}"),
            Self::Encode(_) => f.write_str("value could not be encoded"),
            Self::ZeroTtl => f.write_str("zero ttl: use delete, or Expiry::Never"),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(error) => Some(error),
            Self::Encode(error) => Some(error.as_ref()),
            Self::ZeroTtl => None,
        }
    }
}

impl From<StoreError> for CacheError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// A [`GetOrSetOptions`](crate::GetOrSetOptions) setting that cannot work, reported by the
/// builder's `build()` (so once, where the options are made, or at compile time for a
/// `const`), and by `get_or_set` for a bare zero ttl.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OptionsError {
    /// The ttl is zero: nothing loaded would ever be fresh.
    ZeroTtl,
    /// The eager-refresh fraction is not strictly between 0 and 1.
    EagerRefreshFraction(f64),
    /// The soft timeout is not shorter than the hard timeout, so it could never fire first.
    SoftNotBelowHard {
        /// The soft timeout given.
        soft: Duration,
        /// The hard timeout given.
        hard: Duration,
    },
    /// A timeout is zero; the field names it.
    ZeroTimeout(&'static str),
    /// The fail-safe maximum age is shorter than the ttl, so it would never extend anything.
    FailSafeBelowTtl,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroTtl => f.write_str("ttl is zero: a loaded value would never be fresh"),
            Self::EagerRefreshFraction(x) => {
                write!(
                    f,
                    "eager_refresh fraction {x} is not strictly between 0 and 1"
                )
            }
            Self::SoftNotBelowHard { soft, hard } => write!(
                f,
                "soft_timeout {soft:?} is not shorter than hard_timeout {hard:?}"
            ),
            Self::ZeroTimeout(field) => write!(f, "{field} is zero: it must be positive"),
            Self::FailSafeBelowTtl => {
                f.write_str("fail_safe max age is shorter than the ttl: it would never apply")
            }
        }
    }
}

impl std::error::Error for OptionsError {}

/// Why [`get_or_set`](crate::TypedCache::get_or_set) returned no value. A store failure is
/// never one of them: the loader runs instead (fail-open).
///
/// The loader's error is shared: every caller coalesced with the failed run gets the same
/// `Arc<E>`, so `E` need not be `Clone`. With `E: std::error::Error`, this is an error whose
/// [`source`](std::error::Error::source) is the loader's error (and its chain after it), so
/// `?` carries it into `anyhow::Result` or `Box<dyn Error>` intact.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum GetOrSetError<E> {
    /// The loader failed (this call's, or the one it was coalesced with) and no fail-safe
    /// value could stand in.
    Loader(std::sync::Arc<E>),
    /// The loader ran past the hard timeout and was abandoned, with no fail-safe value.
    HardTimeout(Duration),
    /// The options cannot work; nothing was read or loaded.
    InvalidOptions(OptionsError),
}

// By hand: a derive would demand `E: Clone`, and the loader's error is shared by `Arc`.
impl<E> Clone for GetOrSetError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Loader(error) => Self::Loader(std::sync::Arc::clone(error)),
            Self::HardTimeout(after) => Self::HardTimeout(*after),
            Self::InvalidOptions(error) => Self::InvalidOptions(error.clone()),
        }
    }
}

impl<E> GetOrSetError<E> {
    /// The loader's error, if that is what this is.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            Self::Loader(error) => Some(error),
            _ => None,
        }
    }

    /// The loader's error, shared with the other callers of its run.
    pub fn into_loader(self) -> Option<std::sync::Arc<E>> {
        match self {
            Self::Loader(error) => Some(error),
            _ => None,
        }
    }
}

// The loader's error is the source, not part of this message, so a report that prints the
// chain (`anyhow`'s `{:#}`) says it once.
impl<E> fmt::Display for GetOrSetError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loader(_) => f.write_str("the cache's loader failed"),
            Self::HardTimeout(after) => {
                write!(f, "the cache's loader was abandoned after {after:?}")
            }
            Self::InvalidOptions(_) => f.write_str("invalid cache options"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for GetOrSetError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Loader(error) => Some(&**error),
            Self::InvalidOptions(error) => Some(error),
            Self::HardTimeout(_) => None,
        }
    }
}

/// Why [`Cache::lock`](crate::Cache::lock) or [`Cache::with_lock`](crate::Cache::with_lock)
/// did not get the lock. Unlike the cache's reads, a lock never fails open: running the
/// critical section without it would break what the caller locked for.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// Someone else holds the lock, and the options said not to wait
    /// ([`LockOptions::new`](crate::LockOptions::new) without `wait`).
    Busy,
    /// Someone else held the lock for the whole wait.
    Timeout {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lock was lost while held (it expired, as after a stall longer than its ttl, or
    /// was deleted), so the work under it may have overlapped another holder's: act on its
    /// results only where the fencing token is checked.
    Lost,
    /// The store could not be asked.
    Store(StoreError),
    /// The lock cannot be taken as asked (its ttl is zero).
    Invalid(&'static str),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => f.write_str("lock held by another"),
            Self::Timeout { waited } => write!(f, "lock still held by another after {waited:?}"),
            Self::Lost => f.write_str("lock lost while held"),
            Self::Store(error) => write!(f, "lock unavailable: {error}"),
            Self::Invalid(why) => write!(f, "invalid lock request: {why}"),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StoreError> for LockError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}
