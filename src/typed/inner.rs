//! The typed cache's shared state: its engine, key layout, envelope lifetimes, and what a
//! read found.

use super::codec::{self, Codec, DecodeError, Meta};
use super::options::{GetOrSetOptions, InCaller};
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
    /// Prepended to every key (`users:` for `cache.namespace("users")`), empty at the root.
    pub(super) namespace: String,
    /// The `cache` label of this cache's metrics.
    pub(super) name: String,
    pub(super) codec: Codec,
    pub(super) schema: u32,
    /// What a bare ttl given to `get_or_set` means besides its ttl.
    pub(super) defaults: GetOrSetOptions<InCaller>,
    /// One load per key in this process; followers get the stored bytes or the error.
    /// Shared by every cache on one engine (namespaces, a layer's `cache()`).
    pub(super) flights: Arc<Flights<Landed>>,
    /// Bounds `delete_prefix`, a walk over the whole keyspace.
    pub(super) admin_timeout: Duration,
}

/// What a load handed to the callers that waited on it in this process.
#[derive(Clone)]
pub(super) enum Landed {
    /// The value, as encoded (each follower decodes its own copy: `T` need not be `Clone`).
    Value(Bytes),
    /// The loader's error, type-erased (a follower of another error type loads itself).
    Failed(Arc<dyn Any + Send + Sync>),
    /// The loader ran past its hard timeout.
    TimedOut(Duration),
    /// The value could not be encoded; followers load themselves.
    Unstored,
}

/// What a read found under a key, for one identity.
pub(super) enum Found<T> {
    /// Nothing (or nothing readable: corrupt bytes were deleted).
    Nothing,
    /// A value of this identity (which the validator, if any, accepted).
    Value(Meta, T, Bytes),
    /// A value this reader must not use (another identity, or rejected by the validator):
    /// a miss that the next write replaces; its stamp lets the fill lock treat it as absent.
    Unusable(Meta),
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

/// How long the store keeps a value written with `Expiry::Never`: ten years, past any
/// deploy's life, within what every store's clock arithmetic holds.
pub(super) const NEVER_KEEP: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Inner {
    /// The application's key with this cache's namespace.
    pub(super) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    pub(super) fn keys(&self, key: &str) -> FillKeys {
        let tag = escape_key(&self.full_key(key));
        let entry = format!("{}:v:{{{tag}}}", self.prefix);
        let flight = xxhash_rust::xxh3::xxh3_128(entry.as_bytes());
        FillKeys {
            lock: format!("{}:f:{{{tag}}}", self.prefix),
            entry,
            flight,
        }
    }

    pub(super) fn fingerprint(&self, identity: &str) -> u64 {
        codec::fingerprint(identity, self.schema)
    }

    /// The lifetimes of a value stored now, fresh for `ttl`, with the options' windows.
    pub(super) fn meta_for<M>(
        &self,
        now: u64,
        ttl: Duration,
        options: &GetOrSetOptions<M>,
        fingerprint: u64,
        filled_at_us: u64,
    ) -> Meta {
        let fresh_until = now.saturating_add(millis(ttl));
        let stale_until = options
            .stale_while_revalidate
            .map_or(fresh_until, |window| {
                fresh_until.saturating_add(millis(window))
            });
        let fail_safe_until = options.fail_safe.map_or(fresh_until, |max_age| {
            now.saturating_add(millis(max_age)).max(fresh_until)
        });
        Meta {
            stored_at_ms: now,
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            fail_safe_until_ms: fail_safe_until,
            fingerprint,
            filled_at_us,
        }
    }

    /// Whether a purge by tag or key prefix covers the value `bytes` under `entry` (the
    /// store key, which key-prefix purges compare with); counted when it does.
    pub(super) fn purged(&self, entry: &str, bytes: &[u8]) -> bool {
        let (Ok(meta), Some((_, tags, _))) = (codec::meta(bytes), codec::body(bytes)) else {
            return false;
        };
        let name = crate::engine::purge::Name::Key(entry.as_bytes());
        let covered = self.engine.purges().covers(meta.filled_at_us, tags, name);
        if covered {
            self.engine.stats.purged_reads(1);
        }
        covered
    }

    /// Decodes what a read found. Corrupt bytes are deleted and counted; a value of another
    /// identity, or one the validator rejects, is counted and left for the next write.
    pub(super) async fn read<T: DeserializeOwned>(
        &self,
        entry: &str,
        bytes: Option<Bytes>,
        fingerprint: u64,
        valid: Option<&(dyn Fn(&T) -> bool + Send + Sync)>,
    ) -> Found<T> {
        let Some(bytes) = bytes else {
            return Found::Nothing;
        };
        if self.purged(entry, &bytes) {
            // Purged: a miss, whose load's lock attempt treats this value as absent.
            if let Ok(meta) = codec::meta(&bytes) {
                return Found::Unusable(meta);
            }
        }
        match codec::open::<T>(&bytes, fingerprint) {
            Ok((meta, value)) if valid.is_none_or(|valid| valid(&value)) => {
                Found::Value(meta, value, bytes)
            }
            Ok((meta, _)) => {
                self.engine.stats.typed_rejected(1);
                Found::Unusable(meta)
            }
            Err(DecodeError::OtherIdentity) => {
                self.engine.stats.typed_foreign(1);
                match codec::meta(&bytes) {
                    Ok(meta) => Found::Unusable(meta),
                    Err(_) => Found::Nothing,
                }
            }
            Err(error) => {
                self.discard(entry, &error.to_string()).await;
                Found::Nothing
            }
        }
    }

    /// Deletes corrupt bytes (never a value of another identity: that is another reader's).
    pub(super) async fn discard(&self, entry: &str, why: &str) {
        tracing::debug!(key = entry, why, "corrupt typed cache value deleted");
        self.engine.stats.typed_decode_failures(1);
        let _ = self.engine.store.delete(entry).await;
    }
}
