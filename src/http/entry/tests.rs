//! The entry format's unit tests: round trips, and hostile or damaged input refused.

use super::*;

fn sample() -> (HeaderMap, Vec<Bytes>) {
    let mut headers = HeaderMap::new();
    headers.append(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.append("x-multi", HeaderValue::from_static("one"));
    headers.append("x-multi", HeaderValue::from_static("two"));
    headers.append("connection", HeaderValue::from_static("x-hop"));
    headers.append("x-hop", HeaderValue::from_static("dropped"));
    headers.append("transfer-encoding", HeaderValue::from_static("chunked"));
    (
        headers,
        vec![
            Bytes::from_static(b"hello "),
            Bytes::from_static(b"\0world\xff"),
        ],
    )
}

#[test]
fn round_trip_keeps_order_and_drops_hop_by_hop() {
    let (headers, body) = sample();
    let meta = EntryMeta {
        stored_at_ms: 1,
        fresh_until_ms: 2,
        stale_until_ms: 3,
        error_until_ms: 4,
        variant: 5,
        filled_at_us: 6,
    };
    let encoded = encode_with(
        StatusCode::CREATED,
        &headers,
        &body,
        meta,
        b"http://h/p",
        b"a b",
    );
    let entry = decode(encoded).unwrap();
    assert_eq!(&entry.url[..], b"http://h/p");
    assert_eq!(&entry.tags[..], b"a b");
    assert_eq!(entry.status, StatusCode::CREATED);
    assert_eq!(entry.meta, meta);
    assert_eq!(&entry.body[..], b"hello \0world\xff");
    let multi: Vec<_> = entry.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(entry.headers.get("connection").is_none());
    assert!(entry.headers.get("x-hop").is_none());
    assert!(entry.headers.get("transfer-encoding").is_none());
}

#[test]
fn every_truncation_and_metadata_bit_flip_is_an_error() {
    let (headers, body) = sample();
    let bytes = encode_with(
        StatusCode::OK,
        &headers,
        &body,
        EntryMeta::default(),
        b"u",
        b"t",
    );
    for len in 0..bytes.len() {
        assert!(decode(bytes.slice(..len)).is_err(), "truncated to {len}");
    }
    let body_len: usize = body.iter().map(Bytes::len).sum();
    for i in 0..bytes.len() - body_len {
        let mut altered = bytes.to_vec();
        altered[i] ^= 0x40;
        assert!(decode(Bytes::from(altered)).is_err(), "flipped byte {i}");
    }
}

#[test]
fn foreign_values_are_rejected() {
    assert_eq!(
        decode(Bytes::from_static(b"{\"json\": true}")).unwrap_err(),
        DecodeError::BadMagic
    );
    let (headers, body) = sample();
    for version in [1, 3] {
        let mut other = encode(StatusCode::OK, &headers, &body, EntryMeta::default()).to_vec();
        other[3] = version;
        assert_eq!(
            decode(Bytes::from(other)).unwrap_err(),
            DecodeError::UnsupportedVersion(version)
        );
    }
}

#[test]
fn hostile_timestamps_do_not_overflow() {
    let meta = EntryMeta {
        fresh_until_ms: 1 << 63,
        ..EntryMeta::default()
    };
    assert_eq!(meta.fresh_left_ms(u64::MAX >> 1), 1);
    let meta = EntryMeta {
        fresh_until_ms: u64::MAX,
        ..EntryMeta::default()
    };
    assert!(meta.ttl_secs(0) > 0);
    assert!(EntryMeta::default().ttl_secs(u64::MAX) < 0);
}

#[test]
fn a_decoded_entry_has_room_for_the_headers_every_answer_adds() {
    let (headers, body) = sample();
    let encoded = encode_with(
        StatusCode::OK,
        &headers,
        &body,
        EntryMeta::default(),
        b"",
        b"",
    );
    let mut entry = decode(encoded).unwrap();
    let room = entry.headers.capacity();
    entry
        .headers
        .insert("x-cache", HeaderValue::from_static("HIT"));
    entry
        .headers
        .append("cache-status", HeaderValue::from_static("edge; hit"));
    entry.headers.insert("age", HeaderValue::from(3u64));
    assert_eq!(entry.headers.capacity(), room, "the map grew on answering");
}
