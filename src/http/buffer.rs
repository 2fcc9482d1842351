//! Reading an origin's body into memory for an entry: within the body limit and the fill
//! budget, or handed back whole (what was read, then the rest) for the client to stream.

use crate::error::BoxError;
use crate::http::body::CacheBody;
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) enum Collected<B> {
    /// The whole body, the (ended) body it came from, and its share of the fill budget.
    Whole(Vec<Bytes>, Pin<Box<B>>, Option<OwnedSemaphorePermit>),
    /// Not storable (too large, over the fill budget when `true`, trailers, error): what was
    /// read, then the rest, for the client.
    Partial(CacheBody<B>, bool),
}

/// `bytes` more of the fill budget ([`FILL_COPIES`] permits each), if that much is left.
pub(crate) fn reserve(budget: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    u32::try_from(bytes)
        .ok()
        .and_then(|n| n.checked_mul(FILL_COPIES))
        .and_then(|n| Arc::clone(budget).try_acquire_many_owned(n).ok())
}

/// How many times a fill holds each byte it buffers, at its peak: the body as read, the
/// encoded entry (written before the chunks are dropped) and the store client's write buffer
/// (while the entry is sent), so the budget bounds the memory fills really hold, not just
/// their bodies (measured through the proxy: about 2.2 times the body budget otherwise).
const FILL_COPIES: u32 = 3;

/// Reads the body into memory, up to `limit` bytes, taking [`FILL_COPIES`] permits of `budget`
/// per byte buffered. When the budget runs out the body is handed back for streaming instead (and the
/// permits taken so far are returned at once: what was read is the client's to drain).
pub(crate) async fn collect<B>(body: B, limit: u64, budget: &Arc<Semaphore>) -> Collected<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut chunks = Vec::new();
    let mut len = 0u64;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let frames = |chunks: Vec<Bytes>| chunks.into_iter().map(Frame::data).collect::<VecDeque<_>>();
    loop {
        match body.frame().await {
            None => return Collected::Whole(chunks, body, held),
            Some(Err(error)) => {
                let body = CacheBody::failed(frames(chunks), error.into());
                return Collected::Partial(body, false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len() as u64;
                    let reserved = reserve(budget, data.len());
                    chunks.push(data);
                    if len > limit {
                        let body = CacheBody::replay(frames(chunks), body, false);
                        return Collected::Partial(body, false);
                    }
                    match (reserved, &mut held) {
                        (None, _) => {
                            let body = CacheBody::replay(frames(chunks), body, false);
                            return Collected::Partial(body, true);
                        }
                        (Some(permit), Some(held)) => held.merge(permit),
                        (Some(permit), None) => held = Some(permit),
                    }
                }
                Err(trailers) => {
                    // Trailers are not part of an entry: pass this response through whole.
                    let mut frames = frames(chunks);
                    frames.push_back(trailers);
                    return Collected::Partial(CacheBody::replay(frames, body, true), false);
                }
            },
        }
    }
}
