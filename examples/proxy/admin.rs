//! The admin port: health, counters and Prometheus metrics, on a listener of its own.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_redis_cache::{CacheLayer, RedisStore, Stats};

/// How long `/healthz` waits for Redis to answer `PING`.
const PING_TIMEOUT: Duration = Duration::from_millis(250);

/// The store behind the cache, as the admin port reports it.
#[derive(Clone)]
pub(crate) enum StoreKind {
    Memory,
    Redis(RedisStore),
}

pub(crate) async fn serve_admin(
    listener: TcpListener,
    layer: CacheLayer,
    store: StoreKind,
    metrics: PrometheusHandle,
) {
    let state = Arc::new((layer, store, metrics));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move {
                let (layer, store, metrics) = &*state;
                Ok::<_, Infallible>(admin(&request, layer, store, metrics).await)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn admin(
    request: &Request<Incoming>,
    layer: &CacheLayer,
    store: &StoreKind,
    metrics: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" => {
            let state = match store {
                StoreKind::Memory => "memory",
                StoreKind::Redis(store) => {
                    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                        Ok(Ok(_)) => "reachable",
                        _ => "unreachable",
                    }
                }
            };
            let body = format!("{{\"status\":\"ok\",\"store\":\"{state}\"}}\n");
            text(StatusCode::OK, "application/json", body)
        }
        "/stats" => text(
            StatusCode::OK,
            "application/json",
            stats_json(&layer.stats()),
        ),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /stats or /metrics\n".into(),
        ),
    }
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

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
