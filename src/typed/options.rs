//! How a value may be answered and kept: [`GetOrSetOptions`] (checked once, where built),
//! [`Expiry`] for direct writes, and [`Loaded`], the loader's own say over what it returns.
//!
//! Options are plain `Copy` data, built by a `const` builder whose `build()` checks them, so
//! a call never re-checks them and they can live in a `const`. Whether the loader may be
//! polled off the caller's task is part of the options' type: only the options that finish a
//! load in the background (stale-while-revalidate, eager refresh, soft timeout) make them
//! [`InBackground`], and only then must the loader be `Send + 'static`.

use crate::error::OptionsError;
use std::marker::PhantomData;
use std::time::Duration;

/// Options whose loads all run in the caller's task: the loader may borrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InCaller;

/// Options that may finish a load in the background (stale-while-revalidate, eager refresh,
/// soft timeout): the loader must be `Send + 'static`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InBackground;

/// Options whose mode the load path no longer needs.
pub(crate) type Settings = GetOrSetOptions<()>;

/// The default of [`GetOrSetOptionsBuilder::fail_safe_throttle`]: FusionCache's.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);

/// How [`get_or_set`](crate::TypedCache::get_or_set) answers and keeps a value, after
/// FusionCache's and bentocache's options. Built and checked once by
/// [`GetOrSetOptions::builder`]; a [`Duration`] converts into the cache's
/// [default options](crate::CacheBuilder::default_options) with that ttl.
///
/// `M` is [`InCaller`] unless an option that loads in the background was set
/// ([`InBackground`]).
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::{GetOrSetOptions, OptionsError};
///
/// // Checked at compile time when it is a `const`:
/// const PRODUCT: GetOrSetOptions = match GetOrSetOptions::builder(Duration::from_secs(60))
///     .fail_safe(Duration::from_secs(3600))
///     .hard_timeout(Duration::from_secs(2))
///     .build()
/// {
///     Ok(options) => options,
///     Err(_) => panic!("invalid product options"),
/// };
/// # let _ = PRODUCT;
///
/// // At run time, `build()` reports what cannot work.
/// let refreshing = GetOrSetOptions::builder(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(30))
///     .eager_refresh(0.8)
///     .build()?;
/// # let _ = refreshing;
/// assert_eq!(
///     GetOrSetOptions::builder(Duration::from_secs(60)).eager_refresh(80.0).build().err(),
///     Some(OptionsError::EagerRefreshFraction(80.0))
/// );
/// # Ok::<(), OptionsError>(())
/// ```
#[derive(Debug, PartialEq)]
#[must_use]
pub struct GetOrSetOptions<M = InCaller> {
    pub(crate) ttl: Duration,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) eager_refresh: Option<f64>,
    /// Built from a bare ttl: the cache's default options apply, with this ttl.
    pub(crate) inherit: bool,
    _mode: PhantomData<M>,
}

/// Builds [`GetOrSetOptions`]; every method is `const`. See [`GetOrSetOptions`].
#[derive(Debug, PartialEq)]
#[must_use]
pub struct GetOrSetOptionsBuilder<M = InCaller> {
    options: GetOrSetOptions<M>,
}

// By hand: derives would demand `M: Copy` of the mode marker, which only tags the type.
impl<M> Clone for GetOrSetOptions<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for GetOrSetOptions<M> {}

impl<M> Clone for GetOrSetOptionsBuilder<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for GetOrSetOptionsBuilder<M> {}

impl GetOrSetOptions {
    /// Starts options whose loaded values are fresh for `ttl`.
    pub const fn builder(ttl: Duration) -> GetOrSetOptionsBuilder<InCaller> {
        GetOrSetOptionsBuilder {
            options: GetOrSetOptions {
                ttl,
                fail_safe: None,
                fail_safe_throttle: DEFAULT_FAIL_SAFE_THROTTLE,
                hard_timeout: None,
                negative_ttl: None,
                stale_while_revalidate: None,
                soft_timeout: None,
                eager_refresh: None,
                inherit: false,
                _mode: PhantomData,
            },
        }
    }
}

impl<M> GetOrSetOptions<M> {
    /// How long a loaded value is fresh.
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The same options, their mode forgotten: for the load path, which the mode has
    /// already shaped (through the loader's bounds).
    pub(crate) fn settings(&self) -> Settings {
        GetOrSetOptions {
            ttl: self.ttl,
            fail_safe: self.fail_safe,
            fail_safe_throttle: self.fail_safe_throttle,
            hard_timeout: self.hard_timeout,
            negative_ttl: self.negative_ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            soft_timeout: self.soft_timeout,
            eager_refresh: self.eager_refresh,
            inherit: self.inherit,
            _mode: PhantomData,
        }
    }

    /// These options with `defaults` for everything but the ttl, when they were built from a
    /// bare ttl (the fail-safe age is raised to the ttl if below it).
    pub(crate) fn or_defaults(self, defaults: &GetOrSetOptions<InCaller>) -> Self {
        if !self.inherit {
            return self;
        }
        Self {
            ttl: self.ttl,
            fail_safe: defaults.fail_safe.map(|age| age.max(self.ttl)),
            fail_safe_throttle: defaults.fail_safe_throttle,
            hard_timeout: defaults.hard_timeout,
            negative_ttl: defaults.negative_ttl,
            inherit: false,
            ..self
        }
    }
}

impl<M> GetOrSetOptionsBuilder<M> {
    const fn with_mode<N>(self) -> GetOrSetOptionsBuilder<N> {
        let o = self.options;
        GetOrSetOptionsBuilder {
            options: GetOrSetOptions {
                ttl: o.ttl,
                fail_safe: o.fail_safe,
                fail_safe_throttle: o.fail_safe_throttle,
                hard_timeout: o.hard_timeout,
                negative_ttl: o.negative_ttl,
                stale_while_revalidate: o.stale_while_revalidate,
                soft_timeout: o.soft_timeout,
                eager_refresh: o.eager_refresh,
                inherit: o.inherit,
                _mode: PhantomData,
            },
        }
    }

    /// Keeps each value until `max_age` after it was stored, and answers it when the loader
    /// fails or times out once it is no longer fresh (FusionCache's fail-safe). `max_age` is
    /// counted from the write and must be at least the ttl.
    pub const fn fail_safe(mut self, max_age: Duration) -> Self {
        self.options.fail_safe = Some(max_age);
        self
    }

    /// After a loader failure answered by the fail-safe value, that value is stored fresh
    /// again for `window` (default 30 s), so the failing loader runs at most once per window
    /// across the fleet instead of on every call.
    pub const fn fail_safe_throttle(mut self, window: Duration) -> Self {
        self.options.fail_safe_throttle = window;
        self
    }

    /// Abandons a loader that has not answered after `after` (its future is dropped): the
    /// call answers the fail-safe value if any, else
    /// [`GetOrSetError::HardTimeout`](crate::GetOrSetError::HardTimeout).
    pub const fn hard_timeout(mut self, after: Duration) -> Self {
        self.options.hard_timeout = Some(after);
        self
    }

    /// Keeps a loaded "nothing" (`None`, `()`) for `ttl` instead of the ttl, so a missing row
    /// is asked of the database again sooner than a present one.
    pub const fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.options.negative_ttl = Some(ttl);
        self
    }

    /// For `window` after it stops being fresh, a value is answered at once while one
    /// background load (one in the fleet: it takes the fill lock) replaces it.
    pub const fn stale_while_revalidate(
        mut self,
        window: Duration,
    ) -> GetOrSetOptionsBuilder<InBackground> {
        self.options.stale_while_revalidate = Some(window);
        self.with_mode()
    }

    /// When a fail-safe value is at hand (a value past its ttl, within its fail-safe age) and
    /// the loader takes longer than `after`, answers that value; the loader goes on in the
    /// background and its result is stored. Without such a value the call waits for the
    /// loader (bounded by the hard timeout).
    pub const fn soft_timeout(mut self, after: Duration) -> GetOrSetOptionsBuilder<InBackground> {
        self.options.soft_timeout = Some(after);
        self.with_mode()
    }

    /// Once `fraction` (strictly between 0 and 1) of the ttl has passed, a hit starts one
    /// background load, so a value in steady demand is replaced before it expires.
    pub const fn eager_refresh(mut self, fraction: f64) -> GetOrSetOptionsBuilder<InBackground> {
        self.options.eager_refresh = Some(fraction);
        self.with_mode()
    }

    /// The options as set, unchecked: for the crate's own, made from values it checked.
    pub(crate) const fn options_unchecked(self) -> GetOrSetOptions<M> {
        self.options
    }

    /// Checks that the options work together.
    pub const fn build(self) -> Result<GetOrSetOptions<M>, OptionsError> {
        let o = &self.options;
        if o.ttl.is_zero() {
            return Err(OptionsError::ZeroTtl);
        }
        if let Some(fraction) = o.eager_refresh {
            if !(fraction > 0.0 && fraction < 1.0) {
                return Err(OptionsError::EagerRefreshFraction(fraction));
            }
        }
        if let Some(soft) = o.soft_timeout {
            if soft.is_zero() {
                return Err(OptionsError::ZeroTimeout("soft_timeout"));
            }
        }
        if let Some(hard) = o.hard_timeout {
            if hard.is_zero() {
                return Err(OptionsError::ZeroTimeout("hard_timeout"));
            }
            if let Some(soft) = o.soft_timeout {
                if soft.as_nanos() >= hard.as_nanos() {
                    return Err(OptionsError::SoftNotBelowHard { soft, hard });
                }
            }
        }
        if let Some(max_age) = o.fail_safe {
            if max_age.as_nanos() < o.ttl.as_nanos() {
                return Err(OptionsError::FailSafeBelowTtl);
            }
        }
        if o.fail_safe_throttle.is_zero() {
            return Err(OptionsError::ZeroTimeout("fail_safe_throttle"));
        }
        if let Some(negative) = o.negative_ttl {
            if negative.is_zero() {
                return Err(OptionsError::ZeroTtl);
            }
        }
        Ok(self.options)
    }
}

/// A bare ttl: the cache's [default options](crate::CacheBuilder::default_options) with this
/// ttl. A zero ttl is refused by the call ([`OptionsError::ZeroTtl`]), as by
/// [`GetOrSetOptions::builder`]'s `build()`.
impl From<Duration> for GetOrSetOptions<InCaller> {
    fn from(ttl: Duration) -> Self {
        Self {
            inherit: true,
            ..GetOrSetOptions::builder(ttl).options
        }
    }
}

impl<M> From<&GetOrSetOptions<M>> for GetOrSetOptions<M> {
    fn from(options: &GetOrSetOptions<M>) -> Self {
        *options
    }
}

/// How long a directly written value ([`set`](crate::TypedCache::set)) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// Fresh for this long, then gone. Zero is refused ([`CacheError::ZeroTtl`](crate::CacheError::ZeroTtl)):
    /// a value that is never fresh is a delete, which [`delete`](crate::TypedCache::delete) says.
    After(Duration),
    /// Kept until deleted (or evicted by the store's memory policy).
    Never,
}

impl From<Duration> for Expiry {
    fn from(ttl: Duration) -> Self {
        Self::After(ttl)
    }
}

/// What a loader returned, with its own say over how it is kept (bentocache's factory
/// context, FusionCache's adaptive caching). A loader may return a plain `T` (kept as the
/// options say) or a `Loaded<T>`:
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::Loaded;
///
/// # struct Row { draft: bool, volatile: bool }
/// fn keep(row: Row) -> Loaded<Row> {
///     if row.draft {
///         Loaded::new(row).skip_store() // answered, not stored
///     } else if row.volatile {
///         Loaded::new(row).ttl(Duration::from_secs(5)) // fresh for less than the options say
///     } else {
///         Loaded::new(row)
///     }
/// }
/// # let _ = keep(Row { draft: false, volatile: true });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Loaded<T> {
    pub(crate) value: T,
    pub(crate) ttl: Option<Duration>,
    pub(crate) store: bool,
    pub(crate) tags: Vec<String>,
}

impl<T> Loaded<T> {
    /// The value, kept as the call's options say.
    pub fn new(value: T) -> Self {
        Self {
            value,
            ttl: None,
            store: true,
            tags: Vec::new(),
        }
    }

    /// Tags the stored value, for [`Cache::purge_tag`](crate::Cache::purge_tag) (the same tags
    /// as the HTTP face's: one purge drops both). Invalid tags (empty, over 1,024 bytes,
    /// whitespace or commas) are dropped and counted in `tags_dropped`.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Fresh for `ttl` instead of the options' ttl (or negative ttl); zero means not stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Answers the value (to this call and to the callers coalesced with it) without storing
    /// it: the next call loads again.
    pub fn skip_store(mut self) -> Self {
        self.store = false;
        self
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> From<T> for Loaded<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_combinations_are_typed_errors_at_build() {
        let secs = Duration::from_secs;
        let ok = GetOrSetOptions::builder(secs(10));
        assert!(ok.build().is_ok());
        for fraction in [0.0, 1.0, -0.5, 2.0, 80.0, f64::NAN] {
            assert!(matches!(
                ok.eager_refresh(fraction).build(),
                Err(OptionsError::EagerRefreshFraction(_))
            ));
        }
        assert_eq!(
            ok.soft_timeout(secs(2)).hard_timeout(secs(2)).build(),
            Err(OptionsError::SoftNotBelowHard {
                soft: secs(2),
                hard: secs(2)
            })
        );
        assert_eq!(
            ok.soft_timeout(Duration::ZERO).build(),
            Err(OptionsError::ZeroTimeout("soft_timeout"))
        );
        assert_eq!(
            ok.fail_safe(secs(5)).build(),
            Err(OptionsError::FailSafeBelowTtl)
        );
        assert_eq!(
            GetOrSetOptions::builder(Duration::ZERO).build(),
            Err(OptionsError::ZeroTtl)
        );
    }

    #[test]
    fn a_bare_ttl_takes_the_defaults_but_its_ttl() {
        let defaults = GetOrSetOptions::builder(Duration::from_secs(1))
            .fail_safe(Duration::from_secs(60))
            .hard_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let options = GetOrSetOptions::from(Duration::from_secs(120)).or_defaults(&defaults);
        assert_eq!(options.ttl, Duration::from_secs(120));
        assert_eq!(options.fail_safe, Some(Duration::from_secs(120)));
        assert_eq!(options.hard_timeout, Some(Duration::from_secs(2)));
        // Built options keep their own.
        let own = GetOrSetOptions::builder(Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(own.or_defaults(&defaults).hard_timeout, None);
    }
}
