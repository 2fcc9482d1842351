//! [`CacheService`]: the `Service` impl. The request flow itself lives in `flow`.

use crate::error::BoxError;
use crate::http::body::CacheBody;
use crate::http::context::Shared;
use crate::stats::Stats;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service made by [`CacheLayer`](crate::CacheLayer): answers cacheable requests from the
/// store and passes everything else to `S`. Errors of `S` are returned unchanged; store errors
/// never are (they are counted and the request goes to `S`).
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The counters so far (shared with the layer and every clone).
    pub fn stats(&self) -> Stats {
        self.shared.engine.stats.snapshot()
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The ready service is the one `poll_ready` was called on; leave a fresh clone behind.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        // A debug-level span per request; `key` and `outcome` are recorded as they are known.
        // With no subscriber listening at debug level this costs a cached callsite check.
        let span = tracing::debug_span!(
            "cache",
            method = %request.method(),
            uri = %request.uri(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        // Boxed at once: wrapped first, its state (kilobytes) would be copied by each wrapper.
        let flow = Box::pin(crate::http::flow::run(
            Arc::clone(&self.shared),
            ready,
            request,
        ));
        // The latency histogram measures from here to where the response is marked.
        #[cfg(feature = "metrics")]
        let flow = crate::http::context::STARTED.scope(std::time::Instant::now(), flow);
        ResponseFuture {
            inner: Box::pin(tracing::Instrument::instrument(flow, span)),
        }
    }
}

type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

/// The future returned by [`CacheService`].
pub struct ResponseFuture<B, E> {
    inner: BoxResponseFuture<B, E>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture { .. }")
    }
}
