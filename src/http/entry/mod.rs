//! The stored form of a response, and its binary encoding.
//!
//! Not part of the public API (hidden from the docs): it is public only so the crate's
//! property tests and codec benchmarks can reach it from outside the crate. Its layout may
//! change with any release.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "TRC" | version u8 (2) | stored_at_ms u64 | fresh_until_ms u64 | stale_until_ms u64 |
//! error_until_ms u64 | variant u64 | filled_at_us u64 | status u16 | n_headers u16 |
//! (name_len u16, name, value_len u32, value)* | url_len u16 | url | tags_len u16 | tags |
//! body_len u32 | checksum u32 (low 32 bits of xxh3-64 of everything before it) | body
//! ```
//!
//! The URL and the tags (space-separated) are what purges by prefix and by tag compare with,
//! and `filled_at_us` (when the fill began, in µs on the store's clock) says which purges came
//! after the entry's content was asked for: those do not apply to it. Version 1 (without
//! them) is no longer read: such a value is corrupt to this build, deleted and refilled once.
//!
//! ```text
//! ```
//!
//! The encoding is binary rather than JSON because the hit path decodes it on every request:
//! decoding is a bounds-checked walk that slices header values and the body out of the fetched
//! [`Bytes`] without copying them. Every length is checked against what is left of the input
//! before anything is allocated and the header count is capped at [`MAX_HEADERS`], so a
//! truncated, foreign or hostile value yields a [`DecodeError`], never a panic, and what
//! decoding allocates is bounded by the input's size (header map slots for at most
//! `min(MAX_HEADERS, len / 7)` fields), never by a length the input claims.
//!
//! The checksum covers everything but the body: the metadata, the headers and the body's
//! length. A value that is not an entry, or was cut short, or whose headers or timestamps were
//! altered, is caught; the body is held to its exact length. Hashing the body too would cost
//! every hit a pass over it (5% of a 64 KiB hit's CPU, measured) to guard against a failure
//! Redis does not have: it stores and returns values byte for byte, and TCP checks the bytes in
//! transit.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use std::fmt;

const MAGIC: &[u8; 3] = b"TRC";
const VERSION: u8 = 2;
/// Bytes before the first header: magic, version, six u64 timestamps/hashes, status, count.
const PREAMBLE_LEN: usize = 3 + 1 + 8 * 6 + 2 + 2;
/// The longest URL an entry records (its length field is 16 bits).
pub const MAX_URL_LEN: usize = u16::MAX as usize;
/// The most bytes of tags an entry records (its length field is 16 bits).
pub const MAX_TAGS_LEN: usize = u16::MAX as usize;
const CHECKSUM_LEN: usize = 4;
/// The smallest a header can be on the wire: two length fields and a one-byte name.
const MIN_HEADER_LEN: usize = 2 + 1 + 4;
/// The most header field lines an entry holds. Responses with more are not stored; decoding
/// refuses more, which also bounds the header map it allocates whatever the input claims.
pub const MAX_HEADERS: usize = 4096;

/// A cached response: what is needed to answer a request without the origin.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The response status.
    pub status: StatusCode,
    /// The response headers, hop-by-hop headers removed.
    pub headers: HeaderMap,
    /// The response body, shared with the buffer it was decoded from.
    pub body: Bytes,
    /// Timing and variant data.
    pub meta: EntryMeta,
    /// The URL the entry answers (`scheme://authority/path?query`, scheme and host in lower
    /// case), which purges by URL prefix compare with.
    pub url: Bytes,
    /// The entry's tags, separated by single spaces, which purges by tag compare with.
    pub tags: Bytes,
}

/// When an entry was stored, how long it is fresh and usable stale, and which variant it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Unix time in milliseconds when the response was received from the origin.
    pub stored_at_ms: u64,
    /// Unix time in milliseconds until which the entry may be served without the origin.
    pub fresh_until_ms: u64,
    /// Unix time in milliseconds until which the entry may be served stale while one request
    /// refreshes it (stale-while-revalidate; equal to `fresh_until_ms` when not allowed).
    pub stale_until_ms: u64,
    /// Unix time in milliseconds until which the entry may be served stale when the origin
    /// fails (stale-if-error; equal to `fresh_until_ms` when not allowed).
    pub error_until_ms: u64,
    /// Hash of the request headers named by the response's `Vary` (0 when it has none).
    pub variant: u64,
    /// Unix time in microseconds, on the store's clock, when the fill that stored the entry
    /// began (before the origin was asked): a purge at or after it applies to the entry.
    pub filled_at_us: u64,
}

impl EntryMeta {
    /// Whether the entry can be served as fresh at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }

    /// Whether the entry may be served stale while it is refreshed, at `now_ms`.
    pub fn within_stale_while_revalidate(&self, now_ms: u64) -> bool {
        now_ms < self.stale_until_ms
    }

    /// Whether the entry may be served stale because the origin failed, at `now_ms`.
    pub fn within_stale_if_error(&self, now_ms: u64) -> bool {
        now_ms < self.error_until_ms
    }

    /// The entry's age in whole seconds at `now_ms` (RFC 9111 §4.2.3: `stored_at_ms` is the
    /// response time minus the age the response already had when it arrived).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Milliseconds of freshness left at `now_ms`; negative once stale. Computed wide, so a
    /// hostile timestamp cannot overflow it.
    pub fn fresh_left_ms(&self, now_ms: u64) -> i64 {
        let left = i128::from(self.fresh_until_ms) - i128::from(now_ms);
        left.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Seconds of freshness left at `now_ms`; negative once stale (as `Cache-Status` says it).
    pub fn ttl_secs(&self, now_ms: u64) -> i64 {
        self.fresh_left_ms(now_ms).div_euclid(1000)
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value ends before the layout says it should.
    Truncated,
    /// The value does not start with the entry magic: not written by this crate.
    BadMagic,
    /// The value was written by an encoding version this build does not read.
    UnsupportedVersion(u8),
    /// The checksum does not match: the value was altered.
    BadChecksum,
    /// A status, header name or header value is not valid HTTP.
    InvalidHttp,
    /// Bytes are left over after the checksum.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("entry is truncated"),
            Self::BadMagic => f.write_str("value is not a cache entry"),
            Self::UnsupportedVersion(v) => write!(f, "entry version {v} is not supported"),
            Self::BadChecksum => f.write_str("entry checksum mismatch"),
            Self::InvalidHttp => f.write_str("entry holds an invalid status or header"),
            Self::TrailingBytes => f.write_str("entry has trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The value of a hit-for-miss marker: "this key's last answer could not be shared; go to
/// the origin without waiting for a fill". Never a valid entry (the version byte is 0xff).
pub(crate) const HIT_FOR_MISS: &[u8] = b"TRC\xffhit-for-miss";

/// Unix time in milliseconds: entry timestamps are compared across machines.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the primary key of a resource that varies holds instead of an entry: the request
/// headers it varies on, and a generation that names its variants' keys. A new generation
/// (after an invalidation deleted the index) orphans every variant stored under the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaryIndex {
    /// Names variant keys: `{prefix}:{hash}:e:<generation ^ variant>`.
    pub generation: u64,
    /// The lowercased header names, comma-separated, as the response's `Vary` listed them.
    pub names: String,
}

/// "TRI": not "TRV", which starts the typed face's values (whose version byte is also 1), so
/// the two cannot be taken for each other.
const VARY_MAGIC: &[u8; 4] = b"TRI\x01";

impl VaryIndex {
    /// Encodes the index as a store value.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(VARY_MAGIC.len() + 8 + self.names.len());
        buf.put_slice(VARY_MAGIC);
        buf.put_u64(self.generation);
        buf.put_slice(self.names.as_bytes());
        buf.freeze()
    }

    /// Decodes a value written by [`encode`](Self::encode); `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(VARY_MAGIC)?;
        let (generation, names) = rest.split_at_checked(8)?;
        let generation = u64::from_be_bytes(generation.try_into().ok()?);
        let names = std::str::from_utf8(names).ok()?.to_owned();
        Some(Self { generation, names })
    }

    /// Whether a stored value is a vary index rather than an entry.
    pub fn is_index(bytes: &[u8]) -> bool {
        bytes.starts_with(VARY_MAGIC)
    }

    /// The index for a response's `Vary` header, or `None` when it does not vary.
    pub fn for_response(headers: &HeaderMap, generation: u64) -> Option<Self> {
        let names: Vec<String> = crate::http::key::vary_names(headers)
            .map(|n| n.to_ascii_lowercase())
            .collect();
        (!names.is_empty()).then(|| Self {
            generation,
            names: names.join(","),
        })
    }
}

impl Entry {
    /// Whether this entry answers a request with `request_headers`: always when the response
    /// has no `Vary`, else when the varied request headers hash the same as the stored ones.
    pub fn matches(&self, request_headers: &HeaderMap) -> bool {
        // Variant 0 answers every request only if the entry really does not vary: one whose
        // headers name a `Vary` must match by its hash (an entry written otherwise, by an older
        // release, then misses instead of answering for others).
        let names = crate::http::key::vary_names(&self.headers);
        crate::http::key::variant_hash(names, request_headers) == self.meta.variant
    }

    /// [`matches`](Self::matches) for an entry read under the variant key `variant` of an
    /// index naming `names`: when the entry varies on exactly those names, the request's hash
    /// over them is `variant`, computed already to find the entry, so it is not hashed again.
    pub(crate) fn matches_variant(
        &self,
        request_headers: &HeaderMap,
        names: &str,
        variant: u64,
    ) -> bool {
        // Names hash lowercased, so equal names but for case hash alike.
        let mut stored = crate::http::key::vary_names(&self.headers);
        let same_names = names
            .split(',')
            .all(|name| stored.next().is_some_and(|s| s.eq_ignore_ascii_case(name)))
            && stored.next().is_none();
        if same_names {
            return self.meta.variant == variant;
        }
        self.matches(request_headers)
    }
}

/// Headers that describe one connection, not the response, and so are never stored
/// (RFC 9110 §7.6.1). `Age` is recomputed on the way out, so it is not stored either.
pub(crate) fn is_unstorable_header(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == AGE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Whether `name` is listed in a `Connection` header of `headers`, which makes it hop-by-hop.
fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Encodes an entry without a URL or tags (see [`encode_with`]).
pub fn encode(status: StatusCode, headers: &HeaderMap, body: &[Bytes], meta: EntryMeta) -> Bytes {
    encode_with(status, headers, body, meta, b"", b"")
}

/// Encodes an entry into one buffer, with the URL and tags purges compare with (cut to
/// [`MAX_URL_LEN`] and [`MAX_TAGS_LEN`]; callers check first). The body is copied once, into
/// that buffer.
pub fn encode_with(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[Bytes],
    meta: EntryMeta,
    url: &[u8],
    tags: &[u8],
) -> Bytes {
    let url = &url[..url.len().min(MAX_URL_LEN)];
    let tags = &tags[..tags.len().min(MAX_TAGS_LEN)];
    let has_connection = headers.contains_key(http::header::CONNECTION);
    let stored = |name: &HeaderName| {
        !(is_unstorable_header(name) || (has_connection && named_by_connection(headers, name)))
    };
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let headers_len: usize = headers
        .iter()
        .filter(|(n, _)| stored(n))
        .map(|(n, v)| 2 + n.as_str().len() + 4 + v.len())
        .sum();
    let mut buf = BytesMut::with_capacity(
        PREAMBLE_LEN + headers_len + 4 + url.len() + tags.len() + 4 + body_len + CHECKSUM_LEN,
    );
    buf.put_slice(MAGIC);
    buf.put_u8(VERSION);
    buf.put_u64(meta.stored_at_ms);
    buf.put_u64(meta.fresh_until_ms);
    buf.put_u64(meta.stale_until_ms);
    buf.put_u64(meta.error_until_ms);
    buf.put_u64(meta.variant);
    buf.put_u64(meta.filled_at_us);
    buf.put_u16(status.as_u16());
    let count_at = buf.len();
    buf.put_u16(0);
    let mut count: u16 = 0;
    for (name, value) in headers.iter().filter(|(n, _)| stored(n)) {
        // More header lines than an entry may hold: the service never stores such a response
        // (it checks `fits_entry` first), and `decode` would refuse the value.
        if count as usize == MAX_HEADERS {
            break;
        }
        count += 1;
        buf.put_u16(name.as_str().len() as u16);
        buf.put_slice(name.as_str().as_bytes());
        buf.put_u32(value.len() as u32);
        buf.put_slice(value.as_bytes());
    }
    buf[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    buf.put_u16(url.len() as u16);
    buf.put_slice(url);
    buf.put_u16(tags.len() as u16);
    buf.put_slice(tags);
    buf.put_u32(body_len as u32);
    let checksum = checksum(&buf);
    buf.put_u32(checksum);
    for chunk in body {
        buf.put_slice(chunk);
    }
    buf.freeze()
}

/// Whether a response of this shape can be represented in the entry format at all.
pub(crate) fn fits_entry(headers: &HeaderMap, body_len: u64) -> bool {
    headers.len() <= MAX_HEADERS && body_len <= u32::MAX as u64
}

fn checksum(bytes: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(bytes) as u32
}

/// A bounds-checked reader over the encoded value.
struct Reader {
    bytes: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let out = self.bytes.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        self.pos = end;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos.checked_add(N).ok_or(DecodeError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

/// Decodes a value written by [`encode`]. Header values and the body share `bytes`.
pub fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
    check_preamble(&bytes)?;
    let mut reader = Reader {
        bytes: bytes.clone(),
        pos: 4,
    };
    let meta = EntryMeta {
        stored_at_ms: reader.u64()?,
        fresh_until_ms: reader.u64()?,
        stale_until_ms: reader.u64()?,
        error_until_ms: reader.u64()?,
        variant: reader.u64()?,
        filled_at_us: reader.u64()?,
    };
    let status = reader.u16()?;
    let count = reader.u16()? as usize;
    if count > MAX_HEADERS {
        return Err(DecodeError::InvalidHttp);
    }
    if count.saturating_mul(MIN_HEADER_LEN) > reader.remaining() {
        return Err(DecodeError::Truncated);
    }
    // First pass: find where the checked part ends, allocating nothing.
    let headers_at = reader.pos;
    for _ in 0..count {
        let name_len = reader.u16()? as usize;
        reader.skip(name_len)?;
        let value_len = reader.u32()? as usize;
        reader.skip(value_len)?;
    }
    let url_len = reader.u16()? as usize;
    let url = reader.take(url_len)?;
    let tags_len = reader.u16()? as usize;
    let tags = reader.take(tags_len)?;
    let body_len = reader.u32()? as usize;
    let checked_len = reader.pos;
    let sum = reader.u32()?;
    if checksum(&bytes[..checked_len]) != sum {
        return Err(DecodeError::BadChecksum);
    }
    let body = reader.take(body_len)?;
    if reader.remaining() != 0 {
        return Err(DecodeError::TrailingBytes);
    }
    let status = StatusCode::from_u16(status).map_err(|_| DecodeError::InvalidHttp)?;
    let headers = read_headers(bytes, headers_at, count)?;
    Ok(Entry {
        status,
        headers,
        body,
        meta,
        url,
        tags,
    })
}

/// The magic and version an entry starts with, and room for its fixed fields.
fn check_preamble(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < PREAMBLE_LEN + 2 + 2 + 4 + CHECKSUM_LEN {
        return Err(
            if bytes.starts_with(MAGIC) || MAGIC.starts_with(&bytes[..bytes.len().min(3)]) {
                DecodeError::Truncated
            } else {
                DecodeError::BadMagic
            },
        );
    }
    if &bytes[..3] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[3] != VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[3]));
    }
    Ok(())
}

/// Room left in a decoded header map for what every answer from an entry adds (`X-Cache`,
/// `Cache-Status`, `Age`): a map sized to the stored headers alone grew, reallocating and
/// rehashing, on every hit (2 % of a hit's CPU through Redis, by `perf`).
const ANSWER_HEADERS: usize = 3;

/// The second pass, over checked bytes: the `count` headers at `at`, as a header map of
/// slices of the input (no copies).
fn read_headers(bytes: Bytes, at: usize, count: usize) -> Result<HeaderMap, DecodeError> {
    let mut reader = Reader { bytes, pos: at };
    let mut headers = HeaderMap::try_with_capacity(count + ANSWER_HEADERS)
        .map_err(|_| DecodeError::InvalidHttp)?;
    for _ in 0..count {
        let name_len = reader.u16()? as usize;
        let name = reader.take(name_len)?;
        let name = HeaderName::from_bytes(&name).map_err(|_| DecodeError::InvalidHttp)?;
        let value_len = reader.u32()? as usize;
        let value = reader.take(value_len)?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| DecodeError::InvalidHttp)?;
        headers
            .try_append(name, value)
            .map_err(|_| DecodeError::InvalidHttp)?;
    }
    Ok(headers)
}

#[cfg(test)]
mod tests;
