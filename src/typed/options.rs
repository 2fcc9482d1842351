//! How one `get_or_set_with` call may answer: lifetimes, stale and fail-safe windows, loader
//! timeouts, eager refresh, a validator.

use crate::error::OptionsError;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

type Validator = Arc<dyn Fn(&dyn Any) -> bool + Send + Sync>;

/// Options of [`Cache::get_or_set_with`](crate::Cache::get_or_set_with), after FusionCache's
/// and bentocache's. Setters do not check; the call does, and answers
/// [`GetOrSetError::InvalidOptions`](crate::GetOrSetError::InvalidOptions) before reading or
/// loading anything, so a chain of setters reads cleanly and one check covers every
/// combination.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::GetOrSetOptions;
///
/// let options = GetOrSetOptions::new(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(30))
///     .fail_safe(Duration::from_secs(3600))
///     .soft_timeout(Duration::from_millis(100))
///     .hard_timeout(Duration::from_secs(2))
///     .eager_refresh(0.8);
/// assert!(options.check().is_ok());
/// assert!(GetOrSetOptions::new(Duration::ZERO).check().is_err());
/// ```
#[derive(Clone)]
#[must_use]
pub struct GetOrSetOptions {
    pub(crate) ttl: Duration,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) eager_refresh: Option<f64>,
    validator: Option<Validator>,
}

impl fmt::Debug for GetOrSetOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetOrSetOptions")
            .field("ttl", &self.ttl)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("fail_safe", &self.fail_safe)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout", &self.hard_timeout)
            .field("eager_refresh", &self.eager_refresh)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl GetOrSetOptions {
    /// A loaded value is fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_while_revalidate: None,
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            validator: None,
        }
    }

    /// For `window` after it stops being fresh, a value is answered at once while one
    /// background load (one in the fleet: it takes the fill lock) replaces it.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Keeps each value until `max_age` after it was stored, and answers it when the loader
    /// fails or times out once it is no longer fresh (FusionCache's fail-safe). `max_age` is
    /// counted from the write and must be at least the ttl.
    pub fn fail_safe(mut self, max_age: Duration) -> Self {
        self.fail_safe = Some(max_age);
        self
    }

    /// When a fail-safe value is at hand (see [`fail_safe`](Self::fail_safe): a value past its
    /// ttl, within its maximum age) and the loader takes longer than `after`, answers that
    /// value; the loader goes on in the background and its result is stored. Without such a
    /// value the call waits for the loader (bounded by the hard timeout). (A value within its
    /// stale-while-revalidate window is answered at once, without waiting at all.)
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        self.soft_timeout = Some(after);
        self
    }

    /// Abandons a loader that has not answered after `after` (its future is dropped): the
    /// call answers the fail-safe value if any, else
    /// [`GetOrSetError::HardTimeout`](crate::GetOrSetError::HardTimeout).
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        self.hard_timeout = Some(after);
        self
    }

    /// Once `fraction` (strictly between 0 and 1) of the ttl has passed, a hit starts one
    /// background load, so a value in steady demand is replaced before it expires and no
    /// caller ever waits for the loader.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// A stored value that `valid` rejects is a miss: it is deleted, counted in
    /// `Stats::typed_decode_failures`, and loaded again (through the coalesced path). Only
    /// values read from the store are checked. A validator for another type than the call's
    /// never runs.
    pub fn validate<T: 'static>(
        mut self,
        valid: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(move |value: &dyn Any| {
            value.downcast_ref::<T>().is_none_or(&valid)
        }));
        self
    }

    /// Checks the options work together; the call does this too.
    pub fn check(&self) -> Result<(), OptionsError> {
        if self.ttl.is_zero() {
            return Err(OptionsError::ZeroTtl);
        }
        if let Some(fraction) = self.eager_refresh {
            if !(fraction > 0.0 && fraction < 1.0) {
                return Err(OptionsError::EagerRefreshFraction(fraction.to_string()));
            }
        }
        if self.soft_timeout.is_some_and(|d| d.is_zero()) {
            return Err(OptionsError::ZeroTimeout("soft_timeout"));
        }
        if self.hard_timeout.is_some_and(|d| d.is_zero()) {
            return Err(OptionsError::ZeroTimeout("hard_timeout"));
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft >= hard {
                return Err(OptionsError::SoftNotBelowHard { soft, hard });
            }
        }
        if self.fail_safe.is_some_and(|max_age| max_age < self.ttl) {
            return Err(OptionsError::FailSafeBelowTtl);
        }
        Ok(())
    }

    /// Whether the validator (if any) accepts `value`.
    pub(crate) fn accepts<T: 'static>(&self, value: &T) -> bool {
        self.validator.as_ref().is_none_or(|valid| valid(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_combinations_are_typed_errors() {
        let secs = Duration::from_secs;
        let ok = GetOrSetOptions::new(secs(10));
        assert_eq!(ok.check(), Ok(()));
        for fraction in [0.0, 1.0, -0.5, 2.0, f64::NAN] {
            assert!(matches!(
                ok.clone().eager_refresh(fraction).check(),
                Err(OptionsError::EagerRefreshFraction(_))
            ));
        }
        assert_eq!(
            ok.clone()
                .soft_timeout(secs(2))
                .hard_timeout(secs(2))
                .check(),
            Err(OptionsError::SoftNotBelowHard {
                soft: secs(2),
                hard: secs(2)
            })
        );
        assert_eq!(
            ok.clone().soft_timeout(Duration::ZERO).check(),
            Err(OptionsError::ZeroTimeout("soft_timeout"))
        );
        assert_eq!(
            ok.clone().fail_safe(secs(5)).check(),
            Err(OptionsError::FailSafeBelowTtl)
        );
        assert_eq!(
            GetOrSetOptions::new(Duration::ZERO).check(),
            Err(OptionsError::ZeroTtl)
        );
    }

    #[test]
    fn validators_apply_to_their_own_type_only() {
        let options = GetOrSetOptions::new(Duration::from_secs(1)).validate(|v: &u32| *v < 10);
        assert!(options.accepts(&3u32));
        assert!(!options.accepts(&30u32));
        assert!(options.accepts(&"another type"));
    }
}
