//! Writing what a fill made: the encoded entry, where it goes (its key, a variant under a vary
//! index, a language alias), and the bound on writes in flight.

use crate::http::context::Shared;
use crate::http::entry::{self, Entry, EntryMeta, VaryIndex};
use crate::http::key::{self, CacheKey};
use crate::http::lookup::{self, Read};
use crate::http::policy::{Lifetime, RequestClass};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A response the origin gave that may be stored: the encoded value and its decoded form.
pub(crate) struct Filled {
    pub(crate) entry: Arc<Entry>,
    pub(crate) encoded: Bytes,
    pub(crate) keep: std::time::Duration,
    /// The language alias to keep the entry under too (see [`language_alias`]).
    pub(crate) language_alias: Option<u64>,
    /// The share of `max_fill_bytes` the buffered body holds, given back when the fill is
    /// done with it (written, shared, dropped).
    pub(crate) _budget: Option<OwnedSemaphorePermit>,
}

/// What an entry records for purges: when its fill began, its URL, its tags.
pub(crate) struct Provenance<'a> {
    pub(crate) filled_at_us: u64,
    pub(crate) url: &'a str,
    pub(crate) tags: &'a str,
}

pub(crate) fn encode_filled(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[Bytes],
    lifetime: Lifetime,
    variant: u64,
    provenance: &Provenance<'_>,
) -> Option<Filled> {
    let now = entry::unix_now_ms();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let fresh_until_ms = now.saturating_add(ms(lifetime.fresh));
    let meta = EntryMeta {
        stored_at_ms: now.saturating_sub(ms(lifetime.initial_age)),
        fresh_until_ms,
        stale_until_ms: fresh_until_ms.saturating_add(ms(lifetime.stale)),
        error_until_ms: fresh_until_ms.saturating_add(ms(lifetime.error)),
        variant,
        filled_at_us: provenance.filled_at_us,
    };
    let encoded = entry::encode_with(
        status,
        headers,
        body,
        meta,
        provenance.url.as_bytes(),
        provenance.tags.as_bytes(),
    );
    let entry = entry::decode(encoded.clone()).ok()?;
    Some(Filled {
        entry: Arc::new(entry),
        encoded,
        keep: lifetime.keep,
        language_alias: None,
        _budget: None,
    })
}

/// Writes a filled entry, unless too many writes are already in flight. `true` when stored.
pub(crate) async fn write(
    shared: &Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> bool {
    match prepare_write(shared, key, index, filled, class).await {
        Some(prepared) => {
            let stored = put_entry(shared, &prepared.target, filled).await;
            if stored {
                put_alias(shared, &prepared, filled).await;
            }
            stored
        }
        None => false,
    }
}

/// Writes a filled entry under its language alias too, when it has one (best effort: the
/// alias only saves a later request an origin call).
pub(crate) async fn put_alias(shared: &Shared, prepared: &Prepared<'_>, filled: &Filled) {
    if let Some(alias) = &prepared.alias {
        let _ = shared
            .engine
            .store
            .put(alias, filled.encoded.clone(), filled.keep)
            .await;
    }
}

/// The language alias of an answer (a variant name, see `key::language_alias`), when it may
/// be kept under one: it varies on `Accept-Language` alone, the origin labelled it with one
/// language (`Content-Language`), and the request that drew it was well formed and accepted
/// that language. A later request preferring that language above all others is then served
/// it (`lookup::language_alias`): the origin said this is its representation in that
/// language, and a request ranking it first would be given that language. Requiring a
/// well-formed `Accept-Language` (language tags and weights only) bounds what an origin that
/// reflects the header into its page could carry from one client's request to another's.
pub(crate) fn language_alias(response: &HeaderMap, request: &HeaderMap) -> Option<u64> {
    let mut names = key::vary_names(response);
    let only_language = names
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("accept-language"))
        && names.next().is_none();
    let language = lookup::content_language(response).filter(|_| only_language)?;
    key::accepts_language(request, &language).then(|| key::language_alias(&language))
}

/// Readies a filled entry's write and says where the entry goes: the primary key, or for an
/// entry that varies its variant's key. `index` is the vary index the request's lookup read.
///
/// When the lookup found an index listing the same headers, its generation is reused and the
/// index is *not* written again: had it been deleted since (an invalidation racing this fill),
/// rewriting it would make every variant stored under it reachable again; this way the new
/// variant is simply unreachable. An answer that does not vary, or varies on other headers,
/// is not stored while the index it found lives. With no index, a new generation is written. An authorized request's answer never writes an index (see
/// [`authorized_target`]). `None` when too many writes are in flight (the permit bounds them
/// until dropped), the index write failed, or the entry may not go anywhere.
pub(crate) async fn prepare_write<'a>(
    shared: &'a Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> Option<Prepared<'a>> {
    let (target, generation, permit) = prepare_target(shared, key, index, filled, class).await?;
    let alias = generation
        .zip(filled.language_alias)
        .map(|(generation, alias)| key.variant(generation, alias).entry_key().to_owned());
    Some(Prepared {
        target,
        alias,
        _permit: permit,
    })
}

/// Where a filled entry is written: its key, the key of its language alias when it has
/// one, and the permit that bounds writes in flight (held until dropped).
pub(crate) struct Prepared<'a> {
    pub(crate) target: String,
    pub(crate) alias: Option<String>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// [`prepare_write`]'s target, with the vary index generation it is under (`None` for an
/// entry that does not vary, or an authorized request's).
async fn prepare_target<'a>(
    shared: &'a Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> Option<(String, Option<u64>, tokio::sync::SemaphorePermit<'a>)> {
    let Ok(permit) = shared.engine.writes.try_acquire() else {
        shared.engine.stats.writes_dropped(1);
        return None;
    };
    let entry = &filled.entry;
    let varies = VaryIndex::for_response(&entry.headers, 0).filter(|_| entry.meta.variant != 0);
    if class.is_authorized() {
        let target = authorized_target(shared, key, varies.as_ref(), filled).await?;
        return Some((target, None, permit));
    }
    let Some(mut new_index) = varies else {
        // It does not vary: the entry goes to the primary key, unless a live index is there
        // (see below).
        return index
            .is_none()
            .then(|| (key.primary_key().to_owned(), None, permit));
    };
    match index {
        Some(old) if old.names == new_index.names => {
            let target = key.variant(old.generation, entry.meta.variant);
            return Some((target.entry_key().to_owned(), Some(old.generation), permit));
        }
        // One answer that varies on other headers than the live index lists (an origin that
        // adds `Vary: Origin` only when asked with `Origin`) does not replace it: that would
        // orphan every variant others are served, at one request's command. The new list is
        // adopted once the index expires.
        Some(_) => {
            shared.engine.stats.not_stored(1);
            return None;
        }
        None => {}
    }
    new_index.generation = new_generation(filled);
    let index_written = shared
        .engine
        .store
        .put(key.primary_key(), new_index.encode(), filled.keep)
        .await;
    index_written.ok()?;
    let target = key.variant(new_index.generation, entry.meta.variant);
    Some((
        target.entry_key().to_owned(),
        Some(new_index.generation),
        permit,
    ))
}

/// Where a shareable answer to an authorized request may go without changing what anonymous
/// requests read: an entry that does not vary replaces a non-varying entry (or nothing); one
/// that varies joins an existing index listing the same headers, or starts the first index
/// of a resource with nothing stored. It never replaces or re-generates an index, so such a
/// request cannot orphan the variants others are served. The lookup was skipped for the
/// request (it is never answered from the cache), so the primary key is read here, only for
/// answers that may be stored at all.
async fn authorized_target(
    shared: &Shared,
    key: &CacheKey,
    varies: Option<&VaryIndex>,
    filled: &Filled,
) -> Option<String> {
    let variant = filled.entry.meta.variant;
    let primary = key.primary_key();
    let current = match shared.engine.store.get(primary).await {
        Err(_) => return None,
        Ok(None) => Read::Missing,
        Ok(Some(bytes)) => lookup::interpret(shared, primary, bytes).await,
    };
    match (current, varies) {
        (Read::Index(index), Some(new)) if index.names == new.names => Some(
            key.variant(index.generation, variant)
                .entry_key()
                .to_owned(),
        ),
        (Read::Entry(_) | Read::Purged(_) | Read::Missing | Read::HitForMiss, None) => {
            Some(primary.to_owned())
        }
        (Read::Missing | Read::HitForMiss, Some(new)) => {
            let index = VaryIndex {
                generation: new_generation(filled),
                names: new.names.clone(),
            };
            shared
                .engine
                .store
                .put(primary, index.encode(), filled.keep)
                .await
                .ok()?;
            Some(
                key.variant(index.generation, variant)
                    .entry_key()
                    .to_owned(),
            )
        }
        _ => None,
    }
}

/// A generation no earlier index had: random, so no old variant can be named by it.
fn new_generation(filled: &Filled) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(filled.entry.meta.stored_at_ms)
}

/// Counts a stored entry.
pub(crate) fn count_stored(shared: &Shared, filled: &Filled) {
    shared.engine.stats.stored(1);
    shared
        .engine
        .stats
        .bytes_stored(filled.encoded.len() as u64);
}

async fn put_entry(shared: &Shared, key: &str, filled: &Filled) -> bool {
    match shared
        .engine
        .store
        .put(key, filled.encoded.clone(), filled.keep)
        .await
    {
        Ok(()) => {
            count_stored(shared, filled);
            true
        }
        Err(_) => false,
    }
}
