//! Forwarding: the innermost service, which sends one request to the upstream (HTTP or
//! HTTPS) and streams its answer back, or tunnels an `Upgrade` (WebSocket) both ways.

use crate::args::Upstream;
use crate::interim::Interim;
use crate::sanitize::{strip_hop_by_hop, UpgradeRequest};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;
use tower_redis_cache::{BoxError, OriginUnreachable};

/// The `Via` token this proxy adds to forwarded messages.
const VIA_NAME: &str = "tower-redis-cache";

/// The pooled upstream client: plain HTTP, or HTTPS through rustls.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// The response body of the forwarding service: the upstream's body streamed through, or a
/// small error page.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// The innermost service: forwards one request to the upstream and streams the answer back.
/// Failures become `502`/`504` responses, so it never errs.
#[derive(Clone)]
pub(crate) struct Forward {
    pub(crate) client: UpstreamClient,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) timeout: Duration,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pooled client queues internally; there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(request).await) })
    }
}

impl Forward {
    async fn forward(self, request: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let target = match self.upstream.target(&parts.uri) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, uri = %parts.uri, "cannot forward this request target");
                return error_response(StatusCode::BAD_REQUEST, "bad request target\n");
            }
        };
        let method = parts.method.clone();
        let client_version = parts.version;
        // Hop-by-hop and forwarding headers were dealt with before the cache layer
        // (`sanitize`), so what the layer keyed on is what goes up.
        append_via(&mut parts.headers, parts.version);
        // An upgrade the sanitiser let through (the layer bypassed it): ask the upstream for
        // the same protocol, and keep the client's side of the connection to tunnel.
        let upgrade = parts.extensions.remove::<UpgradeRequest>();
        let client_side = upgrade.as_ref().map(|upgrade| {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, upgrade.0.clone());
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        });
        parts.uri = target;
        parts.version = Version::HTTP_11;
        // A `HEAD` goes over a connection of its own that is closed after the answer: an
        // origin that writes a body anyway (at once or late) would otherwise leave those
        // bytes on a pooled connection, where the next request, another client's, would read
        // them as its answer and the cache would store them.
        if method == http::Method::HEAD {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The upstream's interim responses (`103 Early Hints`, ...) go straight to this
        // client's connection; they never reach the cache.
        let interim = parts.extensions.remove::<Interim>();
        let mut request = Request::from_parts(parts, body);
        if let Some(interim) = interim.filter(|_| client_version == Version::HTTP_11) {
            hyper::ext::on_informational(&mut request, move |response| {
                interim.send(response.status(), response.headers());
            });
        }

        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(%method, error = %chain(&error), "upstream request failed");
                return unreachable_response(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: upstream failed\n",
                );
            }
            Err(_) => {
                tracing::warn!(%method, timeout = ?self.timeout, "upstream did not answer in time");
                return unreachable_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: upstream did not answer in time\n",
                );
            }
        };
        let (mut parts, body) = response.into_parts();
        let switched = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        let upgraded_to = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers, parts.version);
        // Answer in the client's protocol version, whatever the upstream spoke.
        parts.version = client_version;
        match (switched, client_side, upgraded_to) {
            (true, Some(Some(client_side)), Some(protocol)) => {
                let upstream_side = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, protocol);
                match upstream_side {
                    Some(upstream_side) => {
                        tokio::spawn(tunnel(client_side, upstream_side));
                    }
                    None => {
                        return error_response(
                            StatusCode::BAD_GATEWAY,
                            "bad gateway: the upstream's upgrade cannot be tunnelled\n",
                        );
                    }
                }
            }
            (true, _, _) => {
                // A 101 nobody asked for (or without a protocol): never pass it on.
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: unexpected protocol switch\n",
                );
            }
            _ => {}
        }
        Response::from_parts(parts, body.map_err(BoxError::from).boxed())
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections until
/// either side closes. Never cached: the layer bypassed the request.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(error = %chain(&error), "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "tunnel ended with an error");
    }
}

fn append_via(headers: &mut HeaderMap, version: Version) {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{protocol} {VIA_NAME}")) {
        headers.append(header::VIA, value);
    }
}

/// The proxy's own answer when the upstream could not be reached, marked so that the cache
/// layer may answer from a stale entry instead (`--stale-if-unreachable`).
fn unreachable_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = error_response(status, message);
    response.extensions_mut().insert(OriginUnreachable);
    response
}

pub(crate) fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An error and its sources on one line: hyper-util's own message is terse ("client error
/// (Connect)"), the cause is in the chain.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
