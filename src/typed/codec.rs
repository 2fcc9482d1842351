//! The typed face's value format: an envelope with lifetimes and an identity fingerprint,
//! around a serde payload.
//!
//! ```text
//! bytes  0..3   magic "TRV"
//!        3      envelope version (2)
//!        4..12  stored_at_ms    u64 big-endian, Unix ms (the stamp the store's lock-or-read
//!                               compares: a stale value being refreshed is recognised by it)
//!       12..20  fresh_until_ms  u64 BE: served as a hit before this
//!       20..28  stale_until_ms  u64 BE: served stale (with a background refresh) before this
//!       28..36  fail_safe_until_ms u64 BE: served when the loader fails, before this
//!       36..44  fingerprint     u64 BE: xxh3-64 of the value's identity (its
//!                               `CacheValue` name and version, or the handle's name) and
//!                               the cache's schema version
//!       44..52  filled_at_us    u64 BE: when the load (or write) began, on the store's
//!                               clock: purges at or after it cover the value
//!       52..54  tags_len        u16 BE
//!       54      format          1 = MessagePack (rmp-serde, structs as maps), 2 = JSON
//!       55..    tags (space-separated, tags_len bytes), then the payload
//! ```
//!
//! Version 1 (without `filled_at_us` and tags) is no longer read: such a value is corrupt to
//! this build, deleted and loaded again once.
//!
//! MessagePack through `rmp-serde` is the default: it is maintained, compact (about half of
//! JSON for typical structs), fast, readable from every mainstream language, and, written with
//! field names, self-describing, so a struct that gained a required field or changed a field's
//! type fails to decode instead of decoding into garbage, which a positional format (postcard,
//! bincode) would not notice. JSON (feature `json`) costs more bytes and time and is there for
//! readers in other languages that have no MessagePack at hand. A value is read in the format
//! its envelope names, so changing the cache's format does not invalidate what is stored.
//!
//! Decoding hostile bytes is an error, never a panic: every length is checked first. A value
//! under another fingerprint is not an error of the bytes (another type or deploy wrote it):
//! readers treat it as a miss and leave it for the next write, while bytes that are not an
//! envelope, or whose payload does not decode under its own identity, are corrupt.

use crate::error::BoxError;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

const MAGIC: &[u8; 3] = b"TRV";
const VERSION: u8 = 2;
/// The fixed part of the envelope, before the tags.
const HEADER: usize = 55;
const TAGS_LEN_AT: usize = 52;
const FORMAT_AT: usize = 54;

/// The serde format of the values a [`Cache`](crate::Cache) writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with field names (`rmp-serde`): compact, self-describing, the default.
    #[default]
    MessagePack,
    /// JSON (`serde_json`), for readers in other languages (feature `json`).
    #[cfg(feature = "json")]
    Json,
}

impl Codec {
    fn tag(self) -> u8 {
        match self {
            Self::MessagePack => 1,
            #[cfg(feature = "json")]
            Self::Json => 2,
        }
    }
}

/// The lifetimes and identity of a stored value, read from its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) stored_at_ms: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) fail_safe_until_ms: u64,
    pub(crate) fingerprint: u64,
    /// When the load or write began, on the store's clock (purges compare with it).
    pub(crate) filled_at_us: u64,
}

impl Meta {
    pub(crate) fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }

    /// The stamp the store's lock-or-read compares (bytes 4..12 of the envelope).
    pub(crate) fn stamp(&self) -> [u8; 8] {
        self.stored_at_ms.to_be_bytes()
    }

    /// The last moment any reader may use the value: the store need not keep it longer.
    pub(crate) fn keep_until_ms(&self) -> u64 {
        self.fresh_until_ms
            .max(self.stale_until_ms)
            .max(self.fail_safe_until_ms)
    }

    /// Whether `fraction` of the fresh lifetime has passed (eager refresh).
    pub(crate) fn past_fraction(&self, now_ms: u64, fraction: f64) -> bool {
        let lifetime = self.fresh_until_ms.saturating_sub(self.stored_at_ms);
        // Lifetimes are far below 2^52 ms, so the float round trip is exact enough.
        let at = self
            .stored_at_ms
            .saturating_add((lifetime as f64 * fraction) as u64);
        now_ms >= at
    }
}

/// Why stored bytes are not a value of the asked type.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not an envelope of ours (too short, wrong magic or version, unknown format).
    NotEnvelope,
    /// Written under another identity (another type or version), or schema version.
    OtherIdentity,
    /// The payload does not deserialize as the asked type.
    Payload(BoxError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEnvelope => f.write_str("not a typed-cache envelope"),
            Self::OtherIdentity => f.write_str("written under another identity or schema version"),
            Self::Payload(error) => write!(f, "payload does not decode: {error}"),
        }
    }
}

/// The fingerprint of an identity (see `super::identity`) at `schema` version: different
/// identities, or one at two schema versions, never read each other's values.
pub(crate) fn fingerprint(identity: &str, schema: u32) -> u64 {
    let mut input = identity.as_bytes().to_vec();
    input.extend_from_slice(&schema.to_be_bytes());
    xxhash_rust::xxh3::xxh3_64(&input)
}

/// The envelope `bytes` with its lifetimes replaced by `meta`'s (the payload and identity
/// kept): how a fail-safe value is stored fresh again for the throttle window.
pub(crate) fn with_meta(bytes: &[u8], meta: &Meta) -> Option<Bytes> {
    // Tags' length, format, tags and payload, as they were.
    let rest = bytes.get(TAGS_LEN_AT..)?;
    let mut out = BytesMut::with_capacity(bytes.len());
    put_meta(&mut out, meta);
    out.put_slice(rest);
    Some(out.freeze())
}

fn put_meta(out: &mut BytesMut, meta: &Meta) {
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u64(meta.stored_at_ms);
    out.put_u64(meta.fresh_until_ms);
    out.put_u64(meta.stale_until_ms);
    out.put_u64(meta.fail_safe_until_ms);
    out.put_u64(meta.fingerprint);
    out.put_u64(meta.filled_at_us);
}

/// The envelope's format byte, tags and payload, bounds-checked.
pub(crate) fn body(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let len = bytes.get(TAGS_LEN_AT..TAGS_LEN_AT + 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let format = *bytes.get(FORMAT_AT)?;
    let tags = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    let payload = bytes.get(HEADER + len..)?;
    Some((format, tags, payload))
}

/// Whether the payload after the header is "nothing" (`None`, `()`): a negative result,
/// stored for the negative ttl.
pub(crate) fn is_nothing(bytes: &[u8]) -> bool {
    match body(bytes) {
        // MessagePack nil.
        Some((1, _, [0xc0])) => true,
        Some((2, _, b"null")) => true,
        _ => false,
    }
}

/// Encodes `value` in an envelope.
pub(crate) fn seal<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    meta: &Meta,
    tags: &str,
) -> Result<Bytes, BoxError> {
    let payload = match codec {
        Codec::MessagePack => rmp_serde::to_vec_named(value)?,
        #[cfg(feature = "json")]
        Codec::Json => serde_json::to_vec(value)?,
    };
    let tags = &tags.as_bytes()[..tags.len().min(usize::from(u16::MAX))];
    let mut out = BytesMut::with_capacity(HEADER + tags.len() + payload.len());
    put_meta(&mut out, meta);
    out.put_u16(tags.len() as u16);
    out.put_u8(codec.tag());
    out.put_slice(tags);
    out.put_slice(&payload);
    Ok(out.freeze())
}

/// Reads the envelope's metadata without decoding the payload.
pub(crate) fn meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    let header = bytes.get(..HEADER).ok_or(DecodeError::NotEnvelope)?;
    if header.get(..3) != Some(&MAGIC[..]) || header.get(3) != Some(&VERSION) {
        return Err(DecodeError::NotEnvelope);
    }
    let word = |at: usize| -> Result<u64, DecodeError> {
        let slice = header.get(at..at + 8).ok_or(DecodeError::NotEnvelope)?;
        let array: [u8; 8] = slice.try_into().map_err(|_| DecodeError::NotEnvelope)?;
        Ok(u64::from_be_bytes(array))
    };
    Ok(Meta {
        stored_at_ms: word(4)?,
        fresh_until_ms: word(12)?,
        stale_until_ms: word(20)?,
        fail_safe_until_ms: word(28)?,
        fingerprint: word(36)?,
        filled_at_us: word(44)?,
    })
}

/// Decodes an envelope as a `T` with the expected fingerprint.
pub(crate) fn open<T: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
) -> Result<(Meta, T), DecodeError> {
    let meta = meta(bytes)?;
    if meta.fingerprint != fingerprint {
        return Err(DecodeError::OtherIdentity);
    }
    let (format, _, payload) = body(bytes).ok_or(DecodeError::NotEnvelope)?;
    let value = match format {
        1 => rmp_serde::from_slice(payload).map_err(|e| DecodeError::Payload(e.into()))?,
        #[cfg(feature = "json")]
        2 => serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.into()))?,
        _ => return Err(DecodeError::NotEnvelope),
    };
    Ok((meta, value))
}

/// Milliseconds since the Unix epoch: stored values are read by other processes and hosts.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        id: u32,
        name: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        id: u32,
        price_cents: u64,
    }

    fn fingerprint<T: crate::CacheValue + ?Sized>(schema: u32) -> u64 {
        super::fingerprint(&crate::typed::identity::describe::<T>(), schema)
    }

    impl crate::CacheValue for V1 {
        const NAME: &'static str = "v1";
    }

    impl crate::CacheValue for V2 {
        const NAME: &'static str = "v2";
    }

    fn meta_for<T: crate::CacheValue + ?Sized>(schema: u32) -> Meta {
        Meta {
            stored_at_ms: 1_000,
            fresh_until_ms: 2_000,
            stale_until_ms: 3_000,
            fail_safe_until_ms: 4_000,
            fingerprint: fingerprint::<T>(schema),
            filled_at_us: 900,
        }
    }

    #[test]
    fn values_round_trip_with_their_lifetimes() {
        let value = V1 {
            id: 7,
            name: "seven".into(),
        };
        let meta = meta_for::<V1>(0);
        let bytes = seal(Codec::MessagePack, &value, &meta, "").unwrap();
        assert_eq!(&bytes[4..12], &1_000u64.to_be_bytes());
        let (read_meta, read) = open::<V1>(&bytes, fingerprint::<V1>(0)).unwrap();
        assert_eq!((read_meta, read), (meta, value));
        assert_eq!(meta.keep_until_ms(), 4_000);
        assert!(meta.is_fresh(1_999) && !meta.is_fresh(2_000));
        assert!(!meta.past_fraction(1_499, 0.5) && meta.past_fraction(1_500, 0.5));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_values_round_trip_and_are_plain_json_after_the_header() {
        let value = V1 {
            id: 1,
            name: "a".into(),
        };
        let bytes = seal(Codec::Json, &value, &meta_for::<V1>(0), "").unwrap();
        assert_eq!(&bytes[HEADER..], br#"{"id":1,"name":"a"}"#);
        assert_eq!(open::<V1>(&bytes, fingerprint::<V1>(0)).unwrap().1, value);
    }

    #[test]
    fn another_type_or_schema_version_is_a_fingerprint_mismatch() {
        let value = V1 {
            id: 7,
            name: "seven".into(),
        };
        let bytes = seal(Codec::MessagePack, &value, &meta_for::<V1>(0), "").unwrap();
        assert!(matches!(
            open::<V2>(&bytes, fingerprint::<V2>(0)),
            Err(DecodeError::OtherIdentity)
        ));
        assert!(matches!(
            open::<V1>(&bytes, fingerprint::<V1>(1)),
            Err(DecodeError::OtherIdentity)
        ));
        assert_ne!(fingerprint::<V1>(0), fingerprint::<V2>(0));
    }

    #[test]
    fn a_drifted_struct_with_the_same_fingerprint_fails_to_decode() {
        // Same fingerprint (as after a deploy that changed the struct but not its name).
        let bytes = seal(
            Codec::MessagePack,
            &V1 {
                id: 1,
                name: "x".into(),
            },
            &meta_for::<V1>(0),
            "",
        )
        .unwrap();
        assert!(matches!(
            open::<V2>(&bytes, fingerprint::<V1>(0)),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        for len in 0..HEADER + 2 {
            let junk = vec![0xA5u8; len];
            assert!(open::<V1>(&junk, 0).is_err());
        }
        let mut bytes = seal(Codec::MessagePack, &1u8, &meta_for::<u8>(0), "")
            .unwrap()
            .to_vec();
        bytes[HEADER - 1] = 99;
        assert!(matches!(
            open::<u8>(&bytes, fingerprint::<u8>(0)),
            Err(DecodeError::NotEnvelope)
        ));
        assert!(matches!(meta(b"TRC\x01"), Err(DecodeError::NotEnvelope)));
    }
}
