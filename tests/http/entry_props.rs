//! Property tests of the public entry codec (`tower_redis_cache::entry`).
//!
//! - Decoding never panics, whatever the bytes: arbitrary values, values that carry the entry
//!   magic and version, values whose checksum is valid but whose structure is arbitrary
//!   ("sealed": the only way to reach the structural parser, since the checksum is checked
//!   first), and mutated or truncated real encodings.
//! - A decoded entry is made of the input: body and header values are slices of it, so a
//!   decode can never hand out more data than it was given. `unsafe` is forbidden in this
//!   crate, so allocation is not counted with a custom global allocator; instead, values whose
//!   length fields lie are checked to fail fast, before anything is sized from them.
//! - Round trip: any status, headers and chunked body come back as they went in, minus the
//!   headers that are never stored.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use proptest::sample::Index;
use std::time::{Duration, Instant};
use tower_redis_cache::entry::{decode, encode, DecodeError, Entry, EntryMeta};

/// Magic and version of the current encoding.
const PREFIX: &[u8; 4] = b"TRC\x01";
/// Magic, version, four u64 fields, status u16 and header count u16.
const PREAMBLE_LEN: usize = 4 + 8 * 5 + 2 + 2;

/// The checksum `encode` writes after `body_len`: low 32 bits of xxh3-64 of everything
/// before it (metadata, headers and body length; not the body).
fn checksum(bytes: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(bytes) as u32
}

/// Appends a valid checksum to `content` (which ends with `body_len`), so `decode` gets past
/// it; an empty body follows.
fn seal(content: Vec<u8>) -> Bytes {
    seal_with_body(content, &[])
}

/// `content` (ending with `body_len`), its checksum, then `body`.
fn seal_with_body(mut content: Vec<u8>, body: &[u8]) -> Bytes {
    let sum = checksum(&content);
    content.extend_from_slice(&sum.to_be_bytes());
    content.extend_from_slice(body);
    Bytes::from(content)
}

/// A preamble with zeroed timestamps and the given status and header count.
fn preamble(status: u16, count: u16) -> Vec<u8> {
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(&[0; 40]);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    debug_assert_eq!(out.len(), PREAMBLE_LEN);
    out
}

/// Whether `inner` lies within `outer`'s memory (pointer comparison only, no dereference).
fn is_within(outer: &[u8], inner: &[u8]) -> bool {
    let start = outer.as_ptr() as usize;
    let p = inner.as_ptr() as usize;
    p >= start && p + inner.len() <= start + outer.len()
}

/// The structural bounds every successful decode of `input` must meet.
fn assert_made_of_input(input: &Bytes, entry: &Entry) {
    assert!(entry.body.len() <= input.len(), "body longer than input");
    if !entry.body.is_empty() {
        assert!(
            is_within(input, &entry.body),
            "body is not a slice of the input"
        );
    }
    let mut header_bytes = 0usize;
    for (name, value) in &entry.headers {
        header_bytes += name.as_str().len() + value.len();
        if !value.is_empty() {
            assert!(
                is_within(input, value.as_bytes()),
                "value of {name} is not a slice of the input"
            );
        }
    }
    assert!(header_bytes <= input.len(), "header bytes exceed input");
    assert!(
        header_bytes + entry.body.len() <= input.len(),
        "headers + body exceed input"
    );
    // Each header costs at least 7 bytes on the wire (u16 + 1-byte name + u32).
    assert!(
        entry.headers.len() * 7 <= input.len(),
        "more headers than bytes allow"
    );
}

/// Decodes; a panic fails the property (proptest catches it and shrinks the input).
fn check_decode(input: Bytes) -> Result<(), DecodeError> {
    match decode(input.clone()) {
        Ok(entry) => {
            assert_made_of_input(&input, &entry);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

// ---- generators ----------------------------------------------------------------------------

/// Headers that `encode` must drop (hop-by-hop, plus `Age`, which is recomputed on the way out).
const UNSTORABLE: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "age",
];

/// Realistic names, repeated often so that multi-valued headers are common.
const COMMON: &[&str] = &[
    "content-type",
    "cache-control",
    "etag",
    "vary",
    "set-cookie",
    "x-multi",
    "x-hop",
    "link",
];

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        3 => prop::sample::select(COMMON).prop_map(HeaderName::from_static),
        2 => prop::sample::select(UNSTORABLE).prop_map(HeaderName::from_static),
        3 => "[a-z0-9!#$%&'*+.^_`|~-]{1,24}"
            .prop_map(|s| HeaderName::from_bytes(s.as_bytes()).expect("token chars")),
    ]
}

/// Any valid header value: visible ASCII, space, tab and obs-text (0x80..=0xff).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![
        8 => 0x20u8..=0x7e,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    prop_oneof![
        4 => prop::collection::vec(byte, 0..64)
            .prop_map(|v| HeaderValue::from_bytes(&v).expect("valid value bytes")),
        // Token lists, so a `Connection` header sometimes names other headers present.
        1 => prop::collection::vec(
            prop::sample::select(&["x-hop", "x-multi", "close", "ETag", " set-cookie "][..]),
            1..3,
        )
        .prop_map(|names| HeaderValue::from_str(&names.join(",")).expect("valid list")),
    ]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..24).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

/// A body and a split of it into chunks (empty chunks included).
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<Bytes>)> {
    (
        prop::collection::vec(any::<u8>(), 0..8192),
        prop::collection::vec(any::<Index>(), 0..8),
    )
        .prop_map(|(body, cuts)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            cuts.push(0);
            cuts.push(body.len());
            cuts.sort_unstable();
            let whole = Bytes::from(body.clone());
            let chunks = cuts.windows(2).map(|w| whole.slice(w[0]..w[1])).collect();
            (body, chunks)
        })
}

fn meta() -> impl Strategy<Value = EntryMeta> {
    any::<(u64, u64, u64, u64, u64, u64)>().prop_map(|(a, b, c, d, e, f)| EntryMeta {
        stored_at_ms: a,
        fresh_until_ms: b,
        stale_until_ms: c,
        error_until_ms: d,
        variant: e,
        filled_at_us: f,
    })
}

fn status() -> impl Strategy<Value = StatusCode> {
    (200u16..600).prop_map(|s| StatusCode::from_u16(s).expect("in range"))
}

/// A valid encoding of an arbitrary entry.
fn encoding() -> impl Strategy<Value = Bytes> {
    (status(), header_map(), chunked_body(), meta())
        .prop_map(|(status, headers, (_, chunks), meta)| encode(status, &headers, &chunks, meta))
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (
            any::<Index>(),
            prop_oneof![Just(0u8), Just(0xff), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Flip(i, mask) => {
            let i = i.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Remove(i) => {
            let i = i.index(bytes.len());
            bytes.remove(i);
        }
    }
}

// ---- oracle for the round trip -------------------------------------------------------------

/// The headers `encode` should keep, in the order the map iterates them. Written apart from
/// the crate's own filter: drop the fixed unstorable set and anything a `Connection` names.
fn expected_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(n, _)| !UNSTORABLE.contains(&n.as_str()))
        .filter(|(n, _)| !named.iter().any(|t| t == n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

// ---- properties ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failing inputs are printed, not written to `proptest-regressions/` (not ours to add).
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (a) Arbitrary bytes: never a panic, and essentially never an entry.
    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = check_decode(Bytes::from(input));
    }

    /// (a) The right magic and version, then anything: the checksum rejects it.
    #[test]
    fn prefixed_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut input = PREFIX.to_vec();
        input.extend_from_slice(&tail);
        // Only a 2^-32 checksum collision could make this decode.
        prop_assert!(check_decode(Bytes::from(input)).is_err());
    }

    /// (a) The right magic and version, arbitrary structure, a valid checksum: this is what
    /// reaches the structural parser, so lengths and counts are all attacker-chosen.
    #[test]
    fn sealed_arbitrary_structure_never_panics(
        status in any::<u16>(),
        count in prop_oneof![0u16..8, any::<u16>()],
        tail in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut content = preamble(status, count);
        content.extend_from_slice(&tail);
        let _ = check_decode(seal(content));
    }

    /// (a) A sealed value made of plausible header records with arbitrary (often lying)
    /// lengths, so that the parser walks past several headers before failing or succeeding.
    #[test]
    fn sealed_header_records_never_panic(
        count in prop_oneof![0u16..6, Just(u16::MAX), any::<u16>()],
        records in prop::collection::vec(
            (
                prop_oneof![1u16..16, Just(0u16), Just(u16::MAX)],
                "[a-z-]{0,15}",
                prop_oneof![0u32..32, Just(u32::MAX), any::<u32>()],
                prop::collection::vec(any::<u8>(), 0..32),
            ),
            0..6,
        ),
        body_len in prop_oneof![0u32..64, Just(u32::MAX), any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut content = preamble(200, count);
        for (name_len, name, value_len, value) in &records {
            content.extend_from_slice(&name_len.to_be_bytes());
            content.extend_from_slice(name.as_bytes());
            content.extend_from_slice(&value_len.to_be_bytes());
            content.extend_from_slice(value);
        }
        content.extend_from_slice(&body_len.to_be_bytes());
        let _ = check_decode(seal_with_body(content, &body));
    }

    /// (a) Real encodings, mutated or truncated: an error, and never a panic. The checksum
    /// covers everything but the body, and the body is held to its length, so the only change
    /// that decodes is one that rewrites body bytes in place (and it decodes to that body).
    #[test]
    fn mutated_encodings_are_errors(
        bytes in encoding(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut altered = bytes.to_vec();
        for m in &mutations {
            apply(&mut altered, m);
        }
        let body_start = bytes.len() - decode(bytes.clone()).expect("a fresh encoding").body.len();
        let body_only = altered.len() == bytes.len() && altered[..body_start] == bytes[..body_start];
        if body_only {
            let altered = Bytes::from(altered);
            let entry = decode(altered.clone()).expect("same metadata, same length");
            prop_assert_eq!(&entry.body[..], &altered[body_start..]);
        } else {
            prop_assert!(check_decode(Bytes::from(altered)).is_err());
        }
    }

    /// (a)+(b) Real encodings, mutated and then re-sealed, so the structure is wrong but the
    /// checksum is right: never a panic, and whatever decodes is made of the input.
    #[test]
    fn resealed_mutations_never_panic(
        bytes in encoding(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let body_len = decode(bytes.clone()).expect("a fresh encoding").body.len();
        let mut content = bytes[..bytes.len() - body_len - 4].to_vec();
        for m in &mutations {
            apply(&mut content, m);
        }
        let _ = check_decode(seal_with_body(content, &bytes[bytes.len() - body_len..]));
    }

    /// (b)+(c) Round trip: same status, stored headers (order and repeats kept), body, meta;
    /// body and header values are slices of the encoded value.
    #[test]
    fn round_trip(
        status in status(),
        headers in header_map(),
        (body, chunks) in chunked_body(),
        meta in meta(),
    ) {
        let encoded = encode(status, &headers, &chunks, meta);
        let entry = decode(encoded.clone()).expect("a fresh encoding decodes");
        assert_made_of_input(&encoded, &entry);
        prop_assert_eq!(entry.status, status);
        prop_assert_eq!(entry.meta, meta);
        prop_assert_eq!(&entry.body[..], &body[..]);
        prop_assert_eq!(listed(&entry.headers), expected_headers(&headers));
        // Re-encoding the decoded entry is a fixed point.
        let again = encode(entry.status, &entry.headers, std::slice::from_ref(&entry.body), entry.meta);
        prop_assert_eq!(again, encoded);
    }
}

// ---- lying length fields (b) ---------------------------------------------------------------

/// Decodes `input` `n` times and returns the result and the mean time per decode.
fn timed(input: &Bytes, n: u32) -> (Result<(), DecodeError>, Duration) {
    let start = Instant::now();
    let mut result = Ok(());
    for _ in 0..n {
        result = check_decode(input.clone());
    }
    (result, start.elapsed() / n)
}

/// A lying field in a short input must be rejected at once: well under a millisecond per
/// decode even in a debug build, i.e. nothing was sized from the lie.
fn assert_rejected_fast(what: &str, input: Bytes) {
    let (result, per_decode) = timed(&input, 1000);
    assert!(
        matches!(
            result,
            Err(DecodeError::Truncated | DecodeError::InvalidHttp)
        ),
        "{what}: {result:?}"
    );
    assert!(
        per_decode < Duration::from_millis(1),
        "{what}: {per_decode:?} per decode"
    );
}

#[test]
fn header_count_of_65535_in_a_short_input_is_rejected_fast() {
    let mut content = preamble(200, u16::MAX);
    content.extend_from_slice(&0u32.to_be_bytes()); // body_len
    assert_rejected_fast("count 65535", seal(content));
}

#[test]
fn body_len_of_u32_max_in_a_short_input_is_rejected_fast() {
    let mut content = preamble(200, 0);
    content.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_rejected_fast("body_len u32::MAX", seal_with_body(content, b"short body"));
}

#[test]
fn name_len_of_65535_is_rejected_fast() {
    let mut content = preamble(200, 1);
    content.extend_from_slice(&u16::MAX.to_be_bytes());
    content.extend_from_slice(b"x-a");
    content.extend_from_slice(&1u32.to_be_bytes());
    content.extend_from_slice(b"v");
    content.extend_from_slice(&0u32.to_be_bytes());
    assert_rejected_fast("name_len 65535", seal(content));
}

#[test]
fn value_len_of_u32_max_is_rejected_fast() {
    let mut content = preamble(200, 1);
    content.extend_from_slice(&3u16.to_be_bytes());
    content.extend_from_slice(b"x-a");
    content.extend_from_slice(&u32::MAX.to_be_bytes());
    content.extend_from_slice(b"v");
    content.extend_from_slice(&0u32.to_be_bytes());
    assert_rejected_fast("value_len u32::MAX", seal(content));
}

/// A header count of 65535 where the input *is* long enough to pass the "7 bytes per header"
/// pre-check (65535 * 7 bytes of zeros). Zero name lengths make the first header invalid, so
/// this must be a plain error.
#[test]
fn header_count_of_65535_in_a_long_input_is_an_error() {
    let mut content = preamble(200, u16::MAX);
    content.resize(content.len() + usize::from(u16::MAX) * 7 + 4, 0);
    let result = std::panic::catch_unwind(|| decode(seal(content)).map(drop));
    assert!(
        matches!(result, Ok(Err(_))),
        "expected Err, got {}",
        match result {
            Ok(Ok(())) => "Ok".to_owned(),
            Ok(Err(e)) => format!("Err({e:?})"),
            Err(panic) => format!(
                "a panic: {:?}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
            ),
        }
    );
}

/// The largest header count whose up-front reservation `HeaderMap` accepts (http 1.x caps
/// the index table at 2^15 slots, used to 3/4): one above it must still be a plain error.
#[test]
fn header_count_just_past_header_map_capacity_is_an_error() {
    for count in [24_576u16, 24_577] {
        let mut content = preamble(200, count);
        content.resize(content.len() + usize::from(count) * 7 + 4, 0);
        let result = std::panic::catch_unwind(|| decode(seal(content)).map(drop));
        assert!(
            matches!(result, Ok(Err(_))),
            "count {count}: decode panicked"
        );
    }
}

/// Round trip of a response with many values of one header, up to the entry's limit of
/// `MAX_HEADERS` field lines; past it (`HeaderMap` holds repeated values outside its index
/// table, so such maps exist) the layer does not store the response, and decoding whatever
/// `encode` wrote still never panics.
#[test]
fn round_trip_of_many_repeated_header_values() {
    use tower_redis_cache::entry::MAX_HEADERS;
    for n in [24_577usize, 30_000] {
        let mut headers = HeaderMap::new();
        for _ in 0..n {
            headers.append("x-a", HeaderValue::from_static("b"));
        }
        let encoded = encode(StatusCode::OK, &headers, &[], EntryMeta::default());
        let result = std::panic::catch_unwind(|| decode(encoded.clone()).map(|e| e.headers.len()));
        assert!(matches!(result, Ok(Ok(MAX_HEADERS) | Err(_))), "{n} values");
    }
    for n in [1_000usize, MAX_HEADERS] {
        let mut headers = HeaderMap::new();
        for _ in 0..n {
            headers.append("x-a", HeaderValue::from_static("b"));
        }
        let encoded = encode(StatusCode::OK, &headers, &[], EntryMeta::default());
        let result = std::panic::catch_unwind(|| decode(encoded.clone()).map(|e| e.headers.len()));
        match result {
            Ok(Ok(len)) => assert_eq!(len, n, "{n} values"),
            Ok(Err(e)) => panic!("{n} values: a fresh encoding did not decode: {e:?}"),
            Err(_) => panic!("{n} values: decode panicked on a fresh encoding"),
        }
    }
}
