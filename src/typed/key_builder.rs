//! Cache keys from parts: a namespace, segments, sorted query parameters, each escaped.
//!
//! The format is `namespace(:segment)*[?name=value(&name=value)*]`. Every part is
//! percent-encoded except ASCII letters, digits and `- . _ ~`, so user input can never add a
//! separator (`:`, `?`, `&`, `=`), a Redis glob character (`* ? [ ] \`) or a cluster hash tag
//! (`{ }`): `KeyBuilder::new("user").id("1:admin")` is `user:1%3Aadmin`, never a key of
//! another shape. Parameters are sorted by name, then value, so the order a caller lists them
//! in does not make two keys of one thing.
//!
//! Because parts never contain separators, a prefix ending at a separator selects exactly one
//! family for [`Cache::delete_prefix`](crate::Cache::delete_prefix): `product:42:` selects
//! every segment below product 42, and `products:list?` every query of `products:list`.

use std::fmt::{self, Write as _};

/// Builds a cache key from a namespace, segments and query parameters, escaping each.
///
/// ```
/// use tower_redis_cache::KeyBuilder;
///
/// let key = KeyBuilder::new("product")
///     .id(42)
///     .field("details")
///     .query([("locale", "en"), ("currency", "USD")])
///     .build();
/// assert_eq!(key, "product:42:details?currency=USD&locale=en");
///
/// // User input cannot inject separators or glob characters.
/// assert_eq!(KeyBuilder::new("user").id("1*:x").build(), "user:1%2A%3Ax");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct KeyBuilder {
    path: String,
    query: Vec<(String, String)>,
}

impl KeyBuilder {
    /// Starts a key in `namespace` (say, the entity: `"product"`).
    pub fn new(namespace: impl AsRef<str>) -> Self {
        let mut path = String::new();
        escape_into(&mut path, namespace.as_ref());
        Self {
            path,
            query: Vec::new(),
        }
    }

    /// Adds an identifier segment (`:42`).
    pub fn id(self, id: impl fmt::Display) -> Self {
        self.field(id.to_string())
    }

    /// Adds a named segment (`:details`).
    pub fn field(mut self, field: impl AsRef<str>) -> Self {
        self.path.push(':');
        escape_into(&mut self.path, field.as_ref());
        self
    }

    /// Adds query parameters; all of them are sorted by name (then value) in the key.
    pub fn query<K, V>(mut self, params: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        self.query.extend(
            params
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Adds one query parameter.
    pub fn param(self, name: impl AsRef<str>, value: impl fmt::Display) -> Self {
        self.query([(name.as_ref().to_owned(), value.to_string())])
    }

    /// The key.
    pub fn build(mut self) -> String {
        if self.query.is_empty() {
            return self.path;
        }
        self.query.sort();
        let mut key = self.path;
        for (index, (name, value)) in self.query.iter().enumerate() {
            key.push(if index == 0 { '?' } else { '&' });
            escape_into(&mut key, name);
            key.push('=');
            escape_into(&mut key, value);
        }
        key
    }
}

impl fmt::Display for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.clone().build())
    }
}

/// Percent-encodes everything but ASCII letters, digits and `- . _ ~`.
fn escape_into(out: &mut String, part: &str) {
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_sorted_by_name_then_value() {
        let a = KeyBuilder::new("p")
            .query([("b", "2"), ("a", "1"), ("b", "1")])
            .build();
        let b = KeyBuilder::new("p")
            .query([("b", "1"), ("b", "2")])
            .param("a", 1)
            .build();
        assert_eq!(a, "p?a=1&b=1&b=2");
        assert_eq!(a, b);
    }

    #[test]
    fn user_input_cannot_inject_separators_globs_or_hash_tags() {
        let key = KeyBuilder::new("user:")
            .id("1*")
            .field("{x}?[y]\\")
            .query([("a&b", "c=d"), ("é", " ")])
            .build();
        assert_eq!(
            key,
            "user%3A:1%2A:%7Bx%7D%3F%5By%5D%5C?a%26b=c%3Dd&%C3%A9=%20"
        );
        for forbidden in ['*', '[', ']', '\\', '{', '}', ' '] {
            assert!(!key.contains(forbidden), "{forbidden} in {key}");
        }
        // Only the separators the builder adds remain.
        assert_eq!(key.matches(':').count(), 2);
        assert_eq!(key.matches('?').count(), 1);
    }

    #[test]
    fn unreserved_characters_pass_and_display_matches_build() {
        let builder = KeyBuilder::new("a-b.c_d~e").id(-7);
        assert_eq!(builder.to_string(), "a-b.c_d~e:-7");
        assert_eq!(builder.build(), "a-b.c_d~e:-7");
    }
}
