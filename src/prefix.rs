//! Key prefixes both faces accept: one rule, shared by the layer and the typed cache, so a
//! layer's prefix is always valid for the typed cache it hands out (`CacheLayer::cache`).

use crate::error::ConfigError;

/// Checks a key prefix: not empty, and free of what the key layout reserves: `{`/`}` (Redis
/// Cluster hash tags), the glob characters `*?[]\\` (kept out of key names),
/// `%` (the typed face's escape), whitespace and control characters.
pub(crate) fn check_prefix(prefix: String) -> Result<String, ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::EmptyPrefix);
    }
    let reserved = |c: char| "{}*?[]\\%".contains(c) || c.is_whitespace() || c.is_control();
    if prefix.chars().any(reserved) {
        return Err(ConfigError::InvalidPrefix(prefix));
    }
    Ok(prefix)
}
