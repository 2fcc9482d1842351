//! Reading what the store holds for a request: the entry, or the vary index and then the
//! variant; decoding it (a value that does not decode is deleted and counted). What a miss
//! carries from the lookup to the fill is `context::MissContext`.

use crate::engine::fill::{lock_token, Lease};
use crate::http::context::Shared;
use crate::http::entry::{self, Entry, VaryIndex};
use crate::http::key::{self, CacheKey};
use http::HeaderMap;

/// What the store holds for a request.
// Not boxed: a lookup is moved a few times on the stack, where a box would cost every hit an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Lookup {
    Found(Entry),
    HitForMiss,
    Missing,
    /// The resource varies, and nothing is stored for this request's variant.
    VaryMiss,
    /// What is stored was purged (its stamp, for the fill's lock attempt): a miss.
    Purged([u8; 8]),
    /// The store failed, timed out or is skipped by the breaker.
    Unavailable,
}

/// Finds the entry for a request: one read for a resource that does not vary, two (index,
/// then variant) for one that does. Leaves `key` naming where the entry lives (the variant's
/// key when the resource varies); returns the index, if any.
pub(crate) async fn resolve(
    shared: &Shared,
    key: &mut CacheKey,
    request: &HeaderMap,
) -> (Option<VaryIndex>, Lookup) {
    let first = read(shared, key.primary_key()).await;
    resolve_from(shared, key, request, first).await
}

/// [`resolve`] for a request that fills on a miss: when neither the near tier nor the store
/// holds anything under the primary key, the same round trip takes the fill lock (returned as
/// a lease), so an uncontended miss costs this call and the fill's closing one.
pub(crate) async fn resolve_or_lock(
    shared: &Shared,
    key: &mut CacheKey,
    request: &HeaderMap,
) -> (Option<VaryIndex>, Lookup, Option<Lease>) {
    use crate::store::LockAttempt;
    let engine = &shared.engine;
    // A near copy answers without a round trip, and without making a token and lock key.
    if let Some(bytes) = engine.store.near_copy(key.primary_key()) {
        let first = interpret(shared, key.primary_key(), bytes).await;
        let (index, found) = resolve_from(shared, key, request, first).await;
        return (index, found, None);
    }
    // A key lately seen holding a value is most likely a hit: a plain read costs the store a
    // third of the script (see `store::presence`), and needs no token; finding nothing, the
    // lookup goes on to the script.
    if engine.store.likely_present(key.primary_key()) {
        match read(shared, key.primary_key()).await {
            Read::Missing => {}
            first => {
                let (index, found) = resolve_from(shared, key, request, first).await;
                return (index, found, None);
            }
        }
    }
    let token = lock_token();
    let lock = key.lock_key();
    let attempt = engine
        .store
        .read_or_lock(key.primary_key(), &lock, &token, engine.fills.lock_ttl)
        .await;
    match attempt {
        Err(_) => (None, Lookup::Unavailable, None),
        Ok(LockAttempt::Found(bytes)) => {
            let first = interpret(shared, key.primary_key(), bytes).await;
            let (index, found) = resolve_from(shared, key, request, first).await;
            (index, found, None)
        }
        Ok(LockAttempt::Acquired) => {
            let lease = Lease::held(engine, key.entry_key(), lock, token);
            (None, Lookup::Missing, Some(lease))
        }
        Ok(LockAttempt::Held) => (None, Lookup::Missing, None),
    }
}

/// The rest of a lookup, given what the primary key held.
async fn resolve_from(
    shared: &Shared,
    key: &mut CacheKey,
    request: &HeaderMap,
    first: Read,
) -> (Option<VaryIndex>, Lookup) {
    match first {
        Read::Index(index) => {
            let variant = key::variant_hash(index.names.split(','), request);
            let variant_key = key.variant(index.generation, variant);
            let found = match read(shared, variant_key.entry_key()).await {
                Read::Entry(entry) if entry.matches_variant(request, &index.names, variant) => {
                    Lookup::Found(entry)
                }
                Read::HitForMiss => Lookup::HitForMiss,
                Read::Unavailable => Lookup::Unavailable,
                Read::Purged(seen) => Lookup::Purged(seen),
                Read::Entry(_) | Read::Index(_) | Read::Missing => {
                    language_alias(shared, key, &index, request).await
                }
            };
            *key = variant_key;
            (Some(index), found)
        }
        Read::Entry(entry) if entry.matches(request) => (None, Lookup::Found(entry)),
        Read::Entry(_) => (None, Lookup::VaryMiss),
        Read::HitForMiss => (None, Lookup::HitForMiss),
        Read::Purged(seen) => (None, Lookup::Purged(seen)),
        Read::Missing => (None, Lookup::Missing),
        Read::Unavailable => (None, Lookup::Unavailable),
    }
}

/// Whether a purge by tag or URL prefix covers `entry` (see `engine::purge`).
fn purged(shared: &Shared, entry: &Entry) -> bool {
    let name = crate::engine::purge::Name::Url(&entry.url);
    let covered = shared
        .engine
        .purges()
        .covers(entry.meta.filled_at_us, &entry.tags, name);
    if covered {
        shared.engine.stats.purged_reads(1);
    }
    covered
}

/// For a resource that varies on `Accept-Language` alone and has nothing stored for this
/// request's exact preferences: the representation stored in the language the request
/// prefers above all others, if the origin labelled one so (RFC 9111 §4.1 lets a cache use
/// the selecting header's semantics; `write::language_alias` says when one is kept).
async fn language_alias(
    shared: &Shared,
    key: &CacheKey,
    index: &VaryIndex,
    request: &HeaderMap,
) -> Lookup {
    let Some(top) = index
        .names
        .eq_ignore_ascii_case("accept-language")
        .then(|| key::top_language(request))
        .flatten()
    else {
        return Lookup::VaryMiss;
    };
    let alias = key.variant(index.generation, key::language_alias(&top));
    match read(shared, alias.entry_key()).await {
        Read::Entry(entry) if content_language(&entry.headers).as_deref() == Some(&top) => {
            Lookup::Found(entry)
        }
        _ => Lookup::VaryMiss,
    }
}

/// A response's one `Content-Language` tag, lowercased; `None` for none, several, or a value
/// that is not a language tag.
pub(crate) fn content_language(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(http::header::CONTENT_LANGUAGE).iter();
    let value = values.next()?.to_str().ok()?.trim();
    let tag_like = !value.is_empty()
        && value.split('-').all(|sub| {
            (1..=8).contains(&sub.len()) && sub.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    (values.next().is_none() && tag_like).then(|| value.to_ascii_lowercase())
}

/// What one stored value is.
// Not boxed, as `Lookup`.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Read {
    Entry(Entry),
    Index(VaryIndex),
    HitForMiss,
    /// An entry a purge covers (its `stored_at_ms`, as the lock script compares it).
    Purged([u8; 8]),
    Missing,
    Unavailable,
}

/// Reads and decodes one value. A value that does not decode is deleted, counted as corrupt
/// and reported missing, so one bad write cannot keep failing requests.
pub(crate) async fn read(shared: &Shared, key: &str) -> Read {
    match shared.engine.store.get(key).await {
        Err(_) => Read::Unavailable,
        Ok(None) => Read::Missing,
        Ok(Some(bytes)) => interpret(shared, key, bytes).await,
    }
}

/// What a value read from `key` is: an entry, a purged entry, a vary index, a hit-for-miss
/// marker, or corrupt (then deleted, counted, and reported missing).
pub(crate) async fn interpret(shared: &Shared, key: &str, bytes: bytes::Bytes) -> Read {
    if bytes == entry::HIT_FOR_MISS {
        return Read::HitForMiss;
    }
    let decoded = if VaryIndex::is_index(&bytes) {
        VaryIndex::decode(&bytes)
            .map(Read::Index)
            .ok_or(entry::DecodeError::InvalidHttp)
    } else {
        entry::decode(bytes).map(Read::Entry)
    };
    match decoded {
        Ok(Read::Entry(entry)) if purged(shared, &entry) => {
            Read::Purged(entry.meta.stored_at_ms.to_be_bytes())
        }
        Ok(read) => read,
        Err(error) => {
            shared.engine.stats.corrupt(1);
            tracing::warn!(key, %error, "deleting corrupt cache entry");
            // Best effort: a failure is counted by the guard; the value is missing either way.
            // Boxed: this rare path would otherwise grow every lookup's future.
            let _ = Box::pin(shared.engine.store.delete(key)).await;
            Read::Missing
        }
    }
}
