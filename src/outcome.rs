//! What the cache did with a request, in one word: the value `X-Cache` prints and the
//! counters count requests by, shared by the HTTP face (which decides it) and the counters.

/// What the cache did with a request: the `X-Cache` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Answered from a fresh entry.
    Hit,
    /// Answered from a stale entry: while it is refreshed, because the client accepts stale
    /// responses, or because the origin failed.
    Stale,
    /// A stale entry was confirmed by the origin (`304 Not Modified`) and served.
    Revalidated,
    /// Looked up, not usable, answered by the origin.
    Miss,
    /// Not looked up: the request is not cacheable, or the store is unavailable.
    Bypass,
}

impl CacheOutcome {
    /// Every outcome, in the order of [`index`](Self::index).
    #[cfg(feature = "metrics")]
    pub(crate) const ALL: [Self; 5] = [
        Self::Hit,
        Self::Stale,
        Self::Revalidated,
        Self::Miss,
        Self::Bypass,
    ];

    /// Where this outcome's metric handles sit in their arrays.
    #[cfg(feature = "metrics")]
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The outcome in lower case, as metrics label it.
    #[cfg(feature = "metrics")]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }

    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}
