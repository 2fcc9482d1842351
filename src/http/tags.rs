//! Reading a response's tags, which purges by tag compare with: from the configured headers
//! (`Surrogate-Key`, `Cache-Tag`), a [`CacheTags`] response extension and a callback; their
//! headers removed before clients see them.
//!
//! Tags are separated by commas or whitespace in any of the headers (Fastly's
//! `Surrogate-Key` uses spaces, Cloudflare's `Cache-Tag` commas), so a tag never contains
//! either. What is kept, and how a response's tags are joined, is the rule both faces share
//! (`crate::tags`).

use crate::tags::join;
use http::header::HeaderName;
use http::{HeaderMap, Uri};
use std::sync::Arc;

/// A user-supplied source of tags for a response, given the request's URI and the response's
/// head; its tags are added to those the headers and [`CacheTags`] give.
pub type TagFn = dyn Fn(&Uri, &http::response::Parts) -> Vec<String> + Send + Sync;

/// Tags a service attaches to its response as an extension, for purges by tag
/// ([`CacheLayer::purge_tag`](crate::CacheLayer::purge_tag)), without a header the client
/// could see.
///
/// ```
/// use tower_redis_cache::CacheTags;
/// let mut response = http::Response::new("product 42");
/// response
///     .extensions_mut()
///     .insert(CacheTags::from(["product:42", "products"]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(pub Vec<String>);

impl<const N: usize> From<[&str; N]> for CacheTags {
    fn from(tags: [&str; N]) -> Self {
        Self(tags.iter().map(|tag| (*tag).to_owned()).collect())
    }
}

impl From<Vec<String>> for CacheTags {
    fn from(tags: Vec<String>) -> Self {
        Self(tags)
    }
}

/// Where a layer reads tags from, and whether their headers reach clients.
#[derive(Clone)]
pub(crate) struct Tagging {
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) strip: bool,
    pub(crate) callback: Option<Arc<TagFn>>,
}

impl std::fmt::Debug for Tagging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tagging")
            .field("headers", &self.headers)
            .field("strip", &self.strip)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl Default for Tagging {
    fn default() -> Self {
        Self {
            headers: vec![
                HeaderName::from_static("surrogate-key"),
                HeaderName::from_static("cache-tag"),
            ],
            strip: true,
            callback: None,
        }
    }
}

impl Tagging {
    /// The response's tags, joined by single spaces (sorted, without repeats), and how many
    /// were dropped as invalid or over the bound. Removes the tag headers when configured.
    pub(crate) fn collect(&self, uri: &Uri, parts: &mut http::response::Parts) -> (String, u64) {
        let mut tags: Vec<String> = Vec::new();
        for name in &self.headers {
            for value in parts.headers.get_all(name) {
                let text = String::from_utf8_lossy(value.as_bytes());
                tags.extend(
                    text.split(|c: char| c == ',' || c.is_ascii_whitespace())
                        .filter(|tag| !tag.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        if let Some(extension) = parts.extensions.get::<CacheTags>() {
            tags.extend(extension.0.iter().cloned());
        }
        if let Some(callback) = &self.callback {
            tags.extend(callback(uri, parts));
        }
        self.strip(&mut parts.headers);
        join(&tags)
    }

    /// Removes the tag headers, when configured to.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        if self.strip {
            for name in &self.headers {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::{MAX_TAGS_BYTES, MAX_TAG_LEN};

    fn parts(headers: &[(&str, &str)]) -> http::response::Parts {
        let mut response = http::Response::new(());
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        response.into_parts().0
    }

    #[test]
    fn headers_extension_and_callback_are_joined_sorted_and_stripped() {
        let tagging = Tagging {
            callback: Some(Arc::new(|_, _| vec!["from-fn".to_owned()])),
            ..Tagging::default()
        };
        let mut parts = parts(&[
            ("surrogate-key", "b a  b"),
            ("cache-tag", "c,d, e"),
            ("x-other", "kept"),
        ]);
        parts.extensions.insert(CacheTags::from(["ext"]));
        let (tags, dropped) = tagging.collect(&Uri::from_static("/"), &mut parts);
        assert_eq!(tags, "a b c d e ext from-fn");
        assert_eq!(dropped, 0);
        assert!(parts.headers.get("surrogate-key").is_none());
        assert!(parts.headers.get("cache-tag").is_none());
        assert_eq!(parts.headers["x-other"], "kept");
    }

    #[test]
    fn oversized_and_invalid_tags_are_dropped_and_counted() {
        let tagging = Tagging::default();
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let many: Vec<String> = (0..40).map(|i| format!("{i:0>1000}")).collect();
        let mut parts = parts(&[("surrogate-key", &format!("ok {long} {}", many.join(" ")))]);
        parts
            .extensions
            .insert(CacheTags(vec!["bad\u{e9}".to_owned()]));
        let (tags, dropped) = tagging.collect(&Uri::from_static("/"), &mut parts);
        assert!(tags.len() <= MAX_TAGS_BYTES);
        assert!(tags.ends_with(" ok") || tags.contains("ok"));
        assert!(dropped >= 2 + (40 - MAX_TAGS_BYTES / 1001) as u64);
    }
}
