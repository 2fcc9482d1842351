//! What the request path shares: per layer, its settings, key maker and engine ([`Shared`]);
//! per request, the call to make and what its steps carry ([`Exchange`]); and the bounds on
//! the inner service, written once ([`Origin`], [`OriginBody`]).
//!
//! Only the layer builds [`Shared`]; the flow builds an [`Exchange`] once a request has a key.

use crate::engine::fill::Lease;
use crate::engine::flight;
use crate::engine::Engine;
use crate::error::BoxError;
use crate::http::body::CacheBody;
use crate::http::config::Config;
use crate::http::entry::{Entry, VaryIndex};
use crate::http::headers::Fwd;
use crate::http::key::{CacheKey, KeyMaker};
use crate::http::policy::RequestClass;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use std::sync::Arc;
use tower_service::Service;

/// The HTTP face's single flight: followers get the stored entry (or the stale one served).
pub(crate) type Flights = flight::Flights<Arc<Entry>>;
/// How one of this face's flights ended.
pub(crate) type Outcome = flight::Outcome<Arc<Entry>>;
/// The request that runs a fill of this face.
pub(crate) type Leader = flight::Leader<Arc<Entry>>;
/// A request waiting for one of this face's fills.
pub(crate) type Follower = flight::Follower<Arc<Entry>>;
/// Leading or following one of this face's fills.
pub(crate) type Role = flight::Role<Arc<Entry>>;

/// What the cache answers a request with: a response, or the inner service's own error.
pub(crate) type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

/// Everything a [`CacheService`](crate::CacheService) shares with its clones and siblings.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) keys: KeyMaker,
    /// The store, counters, budgets and background work, shared with any typed
    /// [`Cache`](crate::Cache) made from the layer.
    pub(crate) engine: Arc<Engine>,
    /// This layer's fills running in this process (single flight per key and variant).
    pub(crate) flights: Arc<Flights>,
    /// The typed cache `CacheLayer::cache` hands out, made once so every caller's loads
    /// share one flight map.
    pub(crate) typed: std::sync::OnceLock<crate::Cache>,
}

/// The inner service as the request path calls it: its future and error may cross into the
/// spawned fill task. (A blanket-implemented alias: the bounds are written once, here.)
pub(crate) trait Origin<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Origin<ReqBody, ResBody> for S where
    S: Service<
            Request<ReqBody>,
            Response = Response<ResBody>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Send
        + 'static
{
}

/// The inner service's response body as the request path buffers and streams it.
pub(crate) trait OriginBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> OriginBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// The request as the inner service gets it, with the service that answers it: spent by the
/// one origin call a request makes.
pub(crate) struct Call<S, B> {
    pub(crate) inner: S,
    pub(crate) parts: Parts,
    pub(crate) body: B,
}

impl<S, B> Call<S, B> {
    /// Asks the inner service.
    pub(crate) async fn send<ResBody>(self) -> Result<Response<ResBody>, S::Error>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
    {
        let Self {
            mut inner,
            parts,
            body,
        } = self;
        inner.call(Request::from_parts(parts, body)).await
    }
}

/// One cacheable request past its lookup: what the miss path's steps share (the layer's
/// state, the key, what the lookup found, and the call still to make).
pub(crate) struct Exchange<S, B> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: CacheKey,
    pub(crate) ctx: MissContext,
    pub(crate) call: Call<S, B>,
}

/// What a miss carries from the lookup to the fill.
pub(crate) struct MissContext {
    /// What the request is, as classified once on arrival.
    pub(crate) class: RequestClass,
    /// A stored entry that may not be served as is: revalidated with the origin, and served
    /// if the origin fails within its stale-if-error window.
    pub(crate) stale: Option<Arc<Entry>>,
    /// Why the request goes forward, for `Cache-Status`.
    pub(crate) fwd: Fwd,
    /// The resource's vary index, when it has one.
    pub(crate) index: Option<VaryIndex>,
    /// A stored part (`206`) that does not hold what the request asks for: the fill asks the
    /// origin for the missing bytes and combines them with it when it can (`fetch`).
    pub(crate) partial: Option<Arc<Entry>>,
    /// The origin gets the client's own `Range` and `If-Range`: the key's last answer could
    /// not be stored (hit-for-miss, most often too large), so a whole fetch would only make
    /// the origin send, and the client receive, bytes it did not ask for.
    pub(crate) forward_range: bool,
    /// The fill lock, when the lookup took it (it found nothing, and read or locked in one
    /// round trip): the fill then starts without asking for it again.
    pub(crate) lease: Option<Lease>,
    /// The stamp (`stored_at_ms`) of a purged entry the key still holds: the fill's lock
    /// attempt treats that value as absent, as it does a stale entry being refreshed.
    pub(crate) purged: Option<[u8; 8]>,
}

impl MissContext {
    /// What a request of `class` carries before its lookup found anything: a miss for the URI.
    pub(crate) fn new(class: RequestClass) -> Self {
        Self {
            class,
            stale: None,
            partial: None,
            forward_range: false,
            fwd: Fwd::UriMiss,
            index: None,
            lease: None,
            purged: None,
        }
    }
}

#[cfg(feature = "metrics")]
tokio::task_local! {
    /// When the request being answered arrived, for the latency histogram: set by the service
    /// around the request's flow (and carried into the fill task that answers a leader), read
    /// where the response is marked, so the histogram is labelled by the verdict itself.
    pub(crate) static STARTED: std::time::Instant;
}

/// `future` run with this request's arrival time ([`STARTED`]), for a task that answers the
/// request from outside the request's own future.
#[cfg(feature = "metrics")]
pub(crate) fn with_started<F: std::future::Future>(
    future: F,
) -> tokio::task::futures::TaskLocalFuture<std::time::Instant, F> {
    let started = STARTED
        .try_with(|started| *started)
        .unwrap_or_else(|_| std::time::Instant::now());
    STARTED.scope(started, future)
}
