//! [`Usable`]: the engine's fill judge for typed values, deciding whether stored bytes answer
//! one `get_or_set` call (this identity, fresh, valid) or its caller waits or loads.

use super::codec::{self, unix_now_ms, DecodeError, Meta};
use super::inner::Inner;
use super::loader::Validator;
use crate::engine::fill::{Judge, Judged};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// A fill's judge for the typed face: a value is usable when it has this identity, is fresh
/// and passes the validator.
pub(super) struct Usable<T> {
    pub(super) fingerprint: u64,
    pub(super) seen: Option<[u8; 8]>,
    pub(super) valid: Option<Validator<T>>,
    pub(super) inner: Arc<Inner>,
    pub(super) entry: String,
}

impl<T: DeserializeOwned + Send + 'static> Judge for Usable<T> {
    type Value = (Bytes, T);

    fn judge(&self, bytes: Bytes) -> impl Future<Output = Judged<(Bytes, T)>> + Send {
        let replaced = |meta: &Meta| Some(meta.stamp()) == self.seen;
        if self.inner.purged(&self.entry, &bytes) {
            let judged = match codec::meta(&bytes) {
                Ok(meta) if replaced(&meta) => Judged::Wait,
                _ => Judged::Load,
            };
            return std::future::ready(judged);
        }
        let judged = match codec::open::<T>(&bytes, self.fingerprint) {
            Ok((meta, value)) if !self.valid.as_ref().is_none_or(|valid| valid(&value)) => {
                // The value this load replaces is still there: wait for the holder's fill.
                if replaced(&meta) {
                    Judged::Wait
                } else {
                    Judged::Load
                }
            }
            Ok((meta, value)) if meta.is_fresh(unix_now_ms()) => Judged::Usable((bytes, value)),
            // An older value: the fill has not landed yet.
            Ok(_) => Judged::Wait,
            Err(DecodeError::OtherIdentity) => match codec::meta(&bytes) {
                Ok(meta) if replaced(&meta) => Judged::Wait,
                _ => Judged::Load,
            },
            Err(_) => Judged::Load,
        };
        std::future::ready(judged)
    }
}
