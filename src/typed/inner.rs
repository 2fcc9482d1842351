//! The typed cache's shared state: its engine, key layout, envelope lifetimes, and what a
//! read found.

use super::codec::{self, Codec, Meta};
use super::options::GetOrSetOptions;
use crate::engine::fill::FillKeys;
use crate::engine::flight::Flights;
use crate::engine::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// Everything a [`Cache`](super::Cache) shares with its clones.
pub(super) struct Inner {
    pub(super) engine: Arc<Engine>,
    pub(super) prefix: String,
    pub(super) codec: Codec,
    pub(super) schema: u32,
    /// One load per key in this process; followers get the stored bytes or the error.
    pub(super) flights: Arc<Flights<Landed>>,
    /// Bounds `delete_prefix`, a walk over the whole keyspace.
    pub(super) admin_timeout: Duration,
}

/// What a load handed to the callers that waited on it in this process.
#[derive(Clone)]
pub(super) enum Landed {
    /// The value, as stored (each follower decodes its own copy: `T` need not be `Clone`).
    Value(Bytes),
    /// The loader's error, type-erased (a follower of another error type loads itself).
    Failed(Arc<dyn Any + Send + Sync>),
    /// The loader ran past its hard timeout.
    TimedOut,
    /// The value could not be encoded; followers load themselves.
    Unstored,
}

pub(super) fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Escapes `%`, `{` and `}`, so a key is exactly one hash tag; the empty key becomes a lone
/// `%`, which no other key's escape produces.
pub(super) fn escape_key(key: &str) -> String {
    if key.is_empty() {
        return "%".to_owned();
    }
    escape(key)
}

/// The escape of `escape_key` without the empty-key rule, so prefixes match escaped keys.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    pub(super) fn keys(&self, key: &str) -> FillKeys {
        let tag = escape_key(key);
        let entry = format!("{}:v:{{{tag}}}", self.prefix);
        let flight = xxhash_rust::xxh3::xxh3_128(entry.as_bytes());
        FillKeys {
            lock: format!("{}:f:{{{tag}}}", self.prefix),
            entry,
            flight,
        }
    }

    pub(super) fn fingerprint<T: ?Sized>(&self) -> u64 {
        codec::fingerprint::<T>(self.schema)
    }

    pub(super) fn meta_for<T: ?Sized>(&self, now: u64, options: &GetOrSetOptions) -> Meta {
        let fresh_until = now.saturating_add(millis(options.ttl));
        let stale_until = options
            .stale_while_revalidate
            .map_or(fresh_until, |window| {
                fresh_until.saturating_add(millis(window))
            });
        let fail_safe_until = options
            .fail_safe
            .map_or(fresh_until, |max_age| now.saturating_add(millis(max_age)));
        Meta {
            stored_at_ms: now,
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            fail_safe_until_ms: fail_safe_until,
            fingerprint: self.fingerprint::<T>(),
        }
    }

    /// Decodes what a read found; a value that is not a `T` (or that the validator rejects)
    /// is deleted and counted, and reads as missing.
    pub(super) async fn read<T: DeserializeOwned + 'static>(
        &self,
        entry: &str,
        bytes: Option<Bytes>,
        options: Option<&GetOrSetOptions>,
    ) -> Option<(Meta, T)> {
        let bytes = bytes?;
        match codec::open::<T>(&bytes, self.fingerprint::<T>()) {
            Ok((meta, value)) if options.is_none_or(|o| o.accepts(&value)) => Some((meta, value)),
            Ok(_) => {
                self.discard(entry, "rejected by the validator").await;
                None
            }
            Err(error) => {
                self.discard(entry, &error.to_string()).await;
                None
            }
        }
    }

    pub(super) async fn discard(&self, entry: &str, why: &str) {
        tracing::debug!(key = entry, why, "typed cache value discarded");
        self.engine.stats.typed_decode_failures(1);
        let _ = self.engine.store.delete(entry).await;
    }
}
