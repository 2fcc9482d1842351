//! The admin port: liveness, readiness, counters, Prometheus metrics and purges, on a listener
//! of its own with the same connection bounds as the traffic port.
//!
//! Reads (`GET /healthz`, `/readyz`, `/stats`, `/metrics`) are open to whoever can reach the
//! port, which binds to loopback unless `--admin-listen` names another address. Writes
//! (`POST /purge`) need `Authorization: Bearer <--admin-token>`, and are disabled when no
//! token is configured.

use crate::serve::{serve, Limits};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_redis_cache::{CacheLayer, PurgeError, RedisStore, Stats};

/// How long `/healthz` waits for Redis to answer `PING`.
const PING_TIMEOUT: Duration = Duration::from_millis(250);

/// The store behind the cache, as the admin port reports it.
#[derive(Clone)]
pub(crate) enum StoreKind {
    Memory,
    Redis(RedisStore),
}

impl StoreKind {
    /// Whether the store is ready: always for memory; for Redis, every pooled connection up
    /// and fill notices subscribed (`RedisStore::is_ready`).
    async fn ready(&self) -> bool {
        match self {
            StoreKind::Memory => true,
            StoreKind::Redis(store) => store.is_ready(),
        }
    }
}

/// What the admin endpoints read and act on.
pub(crate) struct Admin {
    pub(crate) layer: CacheLayer,
    pub(crate) store: StoreKind,
    pub(crate) metrics: PrometheusHandle,
    /// The traffic listener's bounds, for `/readyz`'s shedding.
    pub(crate) traffic: Arc<Limits>,
    /// Set once shutdown starts: `/readyz` then fails so load balancers stop sending.
    pub(crate) draining: Arc<AtomicBool>,
    /// The bearer token mutating endpoints require; `None` disables them.
    pub(crate) token: Option<String>,
}

/// Serves the admin endpoints on `listener` until the process exits.
pub(crate) async fn serve_admin(listener: TcpListener, admin: Arc<Admin>, limits: Arc<Limits>) {
    // Admin connections are not drained on shutdown: they end with the process.
    let graceful = GracefulShutdown::new();
    let make = move |_peer| {
        let admin = Arc::clone(&admin);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, Infallible>(admin.handle(&request).await) }
        })
    };
    serve(listener, limits, &graceful, make, std::future::pending()).await;
}

impl Admin {
    async fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let method = request.method();
        if path == "/purge" {
            if method != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
            }
            return self.purge(request).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match path {
            "/healthz" => {
                let state = match &self.store {
                    StoreKind::Memory => "memory",
                    StoreKind::Redis(store) => {
                        match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                            Ok(Ok(())) => "reachable",
                            _ => "unreachable",
                        }
                    }
                };
                json(
                    StatusCode::OK,
                    format!("{{\"status\":\"ok\",\"store\":\"{state}\"}}\n"),
                )
            }
            "/readyz" => {
                let store = self.store.ready().await;
                let shedding = self.traffic.shedding();
                let draining = self.draining.load(Ordering::Relaxed);
                let ready = store && !shedding && !draining;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    format!(
                        "{{\"ready\":{ready},\"store\":{store},\"shedding\":{shedding},\
                         \"draining\":{draining}}}\n"
                    ),
                )
            }
            "/stats" => json(StatusCode::OK, stats_json(&self.layer.stats())),
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /stats, /metrics or POST /purge?url=|tag=|prefix=\n"
                    .into(),
            ),
        }
    }

    /// `POST /purge?url=<absolute URL>` (the entry a `GET` of it is answered from, with its
    /// variants), `?tag=<tag>` (every entry tagged so) or `?prefix=<http(s)://host/path
    /// prefix>` (every entry under it), percent-encoded, fleet-wide. Answers `{"purged": N}`:
    /// 1 or 0 for a URL, `null` for a tag or prefix (recorded, not counted).
    async fn purge(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(token) = &self.token else {
            return text(
                StatusCode::FORBIDDEN,
                "purging is disabled: start the proxy with --admin-token or --admin-token-file\n"
                    .into(),
            );
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| same_secret(p.trim().as_bytes(), token.as_bytes())) {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "a bearer token is needed\n".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"admin\""),
            );
            return response;
        }
        let query = request.uri().query().unwrap_or("");
        let mut asked = query.split('&').filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            matches!(name, "url" | "tag" | "prefix").then(|| Some((name, percent_decode(value)?)))
        });
        let (Some(Some((kind, value))), None) = (asked.next(), asked.next()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "expected exactly one of ?url=<http(s) URL>, ?tag=<tag> or \
                 ?prefix=<http(s)://host/path prefix>, percent-encoded\n"
                    .into(),
            );
        };
        // A purge by URL deletes the entry and can say whether there was one; a purge by tag
        // or prefix is recorded, not searched for (one store call whatever it covers), so how
        // many entries it covers is not known: `null`.
        let purged = match kind {
            "url" => self
                .layer
                .purge_url(&value)
                .await
                .map(|found| u8::from(found).to_string()),
            "tag" => self
                .layer
                .purge_tag(&value)
                .await
                .map(|()| "null".to_owned()),
            _ => self
                .layer
                .purge_prefix(&value)
                .await
                .map(|()| "null".to_owned()),
        };
        match purged {
            Ok(count) => {
                tracing::info!(kind, value = %value, "purged");
                json(StatusCode::OK, format!("{{\"purged\":{count}}}\n"))
            }
            Err(PurgeError::Store(error)) => {
                tracing::warn!(kind, value = %value, %error, "purge failed");
                text(StatusCode::BAD_GATEWAY, "the store did not answer\n".into())
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes `%XX` escapes (and `+` as space, as forms send it); `None` when malformed or not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn stats_json(stats: &Stats) -> String {
    let object: serde_json::Map<String, serde_json::Value> = stats
        .fields()
        .map(|(name, value)| (name.to_owned(), value.into()))
        .collect();
    let mut body = serde_json::Value::Object(object).to_string();
    body.push('\n');
    body
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = text(status, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_secret_comparison() {
        assert_eq!(
            percent_decode("http%3A%2F%2Fa.example%2Fx%3Fq%3D1").as_deref(),
            Some("http://a.example/x?q=1")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
    }
}
