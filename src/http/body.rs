//! The response body the layer returns: cached bytes, or the inner body passed through.

use crate::error::BoxError;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// The body of every response from [`CacheService`](crate::CacheService).
    ///
    /// Cached responses are one shared [`Bytes`] (no copy of the stored body); responses the
    /// cache does not keep stream through from the inner service as they arrive; a response
    /// that was being buffered for the cache and turned out too large is replayed from what
    /// was buffered and then continues streaming, so the client gets it complete and the layer
    /// never holds more than `max_body_bytes` of it.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes> },
        Upstream { #[pin] body: B },
        Replay { prefix: VecDeque<Frame<Bytes>>, rest: Pin<Box<B>>, rest_done: bool },
        Failed { prefix: VecDeque<Frame<Bytes>>, error: Option<BoxError> },
    }
}

impl<B> CacheBody<B> {
    /// A body of `data` (empty when `None`, as for `HEAD`).
    pub(crate) fn cached(data: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Cached {
                data: data.filter(|d| !d.is_empty()),
            },
        }
    }

    pub(crate) fn upstream(body: B) -> Self {
        Self {
            kind: Kind::Upstream { body },
        }
    }

    /// Frames already read from `rest`, then whatever `rest` still has (nothing when it
    /// already ended with trailers).
    pub(crate) fn replay(
        prefix: VecDeque<Frame<Bytes>>,
        rest: Pin<Box<B>>,
        rest_done: bool,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                prefix,
                rest,
                rest_done,
            },
        }
    }

    /// Frames already read, then the error that interrupted the inner body.
    pub(crate) fn failed(prefix: VecDeque<Frame<Bytes>>, error: BoxError) -> Self {
        Self {
            kind: Kind::Failed {
                prefix,
                error: Some(error),
            },
        }
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheBody { .. }")
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Cached { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Replay {
                prefix,
                rest,
                rest_done,
            } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if *rest_done {
                    return Poll::Ready(None);
                }
                let frame = ready!(rest.as_mut().poll_frame(cx));
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            KindProj::Failed { prefix, error } => match prefix.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Ready(error.take().map(Err)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data } => data.is_none(),
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Replay {
                prefix,
                rest,
                rest_done,
            } => prefix.is_empty() && (*rest_done || rest.is_end_stream()),
            Kind::Failed { prefix, error } => prefix.is_empty() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = |prefix: &VecDeque<Frame<Bytes>>| -> u64 {
            prefix
                .iter()
                .filter_map(Frame::data_ref)
                .map(|d| d.remaining() as u64)
                .sum()
        };
        match &self.kind {
            Kind::Cached { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { body } => body.size_hint(),
            Kind::Replay {
                prefix,
                rest,
                rest_done,
            } => {
                let buffered = buffered(prefix);
                if *rest_done {
                    return SizeHint::with_exact(buffered);
                }
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(buffered));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint
            }
            Kind::Failed { prefix, .. } => SizeHint::with_exact(buffered(prefix)),
        }
    }
}
