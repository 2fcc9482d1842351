//! Entry codec throughput and the end-to-end cost of a cache hit (no Redis needed).
//!
//! - `entry_encode` / `entry_decode`: a 1 KiB and a 100 KiB body with eight typical response
//!   headers. Throughput is the encoded size.
//! - `hit_path`: a warmed `CacheService` over the in-process `MemoryStore` answering a `GET`
//!   (key, store read, decode, response headers) plus collecting the body, on a tokio
//!   current-thread runtime. Throughput is the body size.
//!
//! ```not_rust
//! cargo bench --bench codec_and_hit
//! ```

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;
use tower::{service_fn, Layer, ServiceExt};
use tower_redis_cache::entry::{decode, encode, EntryMeta};
use tower_redis_cache::{CacheLayer, MemoryStore};

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("100KiB", 100 * 1024)];
const HIT_SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("64KiB", 64 * 1024)];
/// Bodies reach the encoder as the frames the origin sent; 16 KiB is a typical frame.
const CHUNK: usize = 16 * 1024;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json; charset=utf-8"),
        (
            "cache-control",
            "public, max-age=300, stale-while-revalidate=60",
        ),
        ("etag", "\"5d41402abc4b2a76b9719d911017c592\""),
        ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("vary", "Accept-Encoding"),
        ("content-encoding", "identity"),
        ("server", "origin/1.4.2"),
        ("x-request-id", "01HF3Z6T5QK8M4W2N9P7R0S1V3"),
    ] {
        h.append(name, HeaderValue::from_static(value));
    }
    h
}

fn body(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz{}:,\"0123"[i % 35])
            .collect::<Vec<u8>>(),
    )
}

fn chunks(body: &Bytes) -> Vec<Bytes> {
    (0..body.len())
        .step_by(CHUNK)
        .map(|at| body.slice(at..(at + CHUNK).min(body.len())))
        .collect()
}

fn meta() -> EntryMeta {
    EntryMeta {
        stored_at_ms: 1_700_000_000_000,
        fresh_until_ms: 1_700_000_300_000,
        stale_until_ms: 1_700_000_360_000,
        error_until_ms: 1_700_000_900_000,
        variant: 0x9e37_79b9_7f4a_7c15,
        filled_at_us: 1_700_000_000_000,
    }
}

fn entry_encode(c: &mut Criterion) {
    let headers = headers();
    let mut group = c.benchmark_group("entry_encode");
    for (label, len) in SIZES {
        let chunks = chunks(&body(len));
        let encoded_len = encode(StatusCode::OK, &headers, &chunks, meta()).len();
        group.throughput(Throughput::Bytes(encoded_len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &chunks, |b, chunks| {
            b.iter(|| {
                encode(
                    StatusCode::OK,
                    black_box(&headers),
                    black_box(chunks),
                    meta(),
                )
            })
        });
    }
    group.finish();
}

fn entry_decode(c: &mut Criterion) {
    let headers = headers();
    let mut group = c.benchmark_group("entry_decode");
    for (label, len) in SIZES {
        let encoded = encode(StatusCode::OK, &headers, &chunks(&body(len)), meta());
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(label),
            &encoded,
            |b, encoded| b.iter(|| decode(black_box(encoded.clone())).expect("valid entry")),
        );
    }
    group.finish();
}

fn request() -> Request<()> {
    Request::get("http://bench.example/api/items/42?page=1")
        .header("accept", "application/json")
        .body(())
        .expect("valid request")
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("hit_path");
    for (label, len) in HIT_SIZES {
        let payload = body(len);
        let layer = CacheLayer::builder(MemoryStore::new(64 << 20))
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("valid cache settings");
        let origin_body = payload.clone();
        let svc = layer.layer(service_fn(move |_req: Request<()>| {
            let body = origin_body.clone();
            async move {
                let mut response = Response::new(Full::new(body));
                *response.headers_mut() = headers();
                Ok::<_, Infallible>(response)
            }
        }));

        // Warm the entry, and check that what is measured really is a hit.
        rt.block_on(async {
            let first = svc.clone().oneshot(request()).await.expect("infallible");
            assert_eq!(first.headers()["x-cache"], "MISS");
            let first = first.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(first, payload);
            let second = svc.clone().oneshot(request()).await.expect("infallible");
            assert_eq!(
                second.headers()["x-cache"],
                "HIT",
                "warm-up must leave a hit"
            );
            let second = second.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(second, payload);
        });

        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.to_async(&rt).iter(|| async {
                let response = svc.clone().oneshot(request()).await.expect("infallible");
                let body = response.into_body().collect().await.expect("body");
                black_box(body.to_bytes())
            })
        });

        let stats = layer.stats();
        assert_eq!(
            stats.misses, 1,
            "only the warm-up request went to the origin"
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = entry_encode, entry_decode, hit_path
}
criterion_main!(benches);
