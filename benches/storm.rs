//! Cold-key storm: many concurrent requests for keys nobody has cached yet, against a slow
//! origin, through 4 cache instances sharing one real Redis.
//!
//! Run: `cargo bench --bench storm` (starts its own `redis-server`; `REDIS_URL` overrides).
//! Under `cargo test` it runs one tiny round as a smoke test.
//!
//! Reports, for each setting, origin calls per key and the p50/p99 latency the clients saw:
//! - no cache: every request reaches the origin;
//! - coalescing in each process only (`distributed_lock(false)`): one origin call per
//!   instance per key;
//! - fleet-wide coalescing (the default): one origin call per key.

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::time::{Duration, Instant};
use support::{Calls, RedisServer, ReqBody};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, ServiceExt};
use tower_redis_cache::CacheLayer;

type Svc = BoxCloneSyncService<Request<ReqBody>, Response<BoxBody>, Infallible>;
type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, tower_redis_cache::BoxError>;

const INSTANCES: usize = 4;
const ORIGIN_DELAY: Duration = Duration::from_millis(20);

struct Setting {
    name: &'static str,
    cache: bool,
    distributed_lock: bool,
}

fn origin(
    calls: &Calls,
) -> BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, Infallible> {
    let calls = calls.clone();
    let body = Bytes::from(vec![b'x'; 1024]);
    BoxCloneSyncService::new(service_fn(move |_req: Request<ReqBody>| {
        calls.add();
        let body = body.clone();
        async move {
            tokio::time::sleep(ORIGIN_DELAY).await;
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    }))
}

async fn instances(
    server: &RedisServer,
    setting: &Setting,
    calls: &Calls,
    prefix: &str,
) -> Vec<Svc> {
    let mut services = Vec::new();
    for _ in 0..INSTANCES {
        let origin = origin(calls);
        let svc: Svc = if setting.cache {
            let layer = CacheLayer::builder(support::redis_store(server).await)
                .key_prefix(prefix)
                .distributed_lock(setting.distributed_lock)
                .read_timeout(Duration::from_secs(1))
                .build()
                .expect("valid config");
            BoxCloneSyncService::new(
                layer
                    .layer(origin)
                    .map_response(|r| r.map(|b| b.boxed_unsync())),
            )
        } else {
            BoxCloneSyncService::new(
                origin.map_response(|r| r.map(|b| b.map_err(|e| match e {}).boxed_unsync())),
            )
        };
        services.push(svc);
    }
    services
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (keys, concurrency) = if full { (20, 64) } else { (1, 8) };
    let server = RedisServer::start().await;
    let settings = [
        Setting {
            name: "no cache",
            cache: false,
            distributed_lock: false,
        },
        Setting {
            name: "coalescing per process only",
            cache: true,
            distributed_lock: false,
        },
        Setting {
            name: "fleet-wide coalescing (default)",
            cache: true,
            distributed_lock: true,
        },
    ];
    println!("cold-key storm: {keys} keys x {concurrency} concurrent requests, {INSTANCES} instances, origin {ORIGIN_DELAY:?}");
    println!();
    println!("| setting | origin calls per key | p50 | p99 |");
    println!("|---|---|---|---|");
    for setting in &settings {
        let calls = Calls::default();
        let prefix = support::unique_prefix("storm");
        let services = instances(&server, setting, &calls, &prefix).await;
        let mut latencies = Vec::with_capacity(keys * concurrency);
        for key in 0..keys {
            let uri = format!("http://bench.test/cold/{key}");
            let mut set = tokio::task::JoinSet::new();
            for i in 0..concurrency {
                let svc = services[i % INSTANCES].clone();
                let request = support::get(&uri);
                set.spawn(async move {
                    let started = Instant::now();
                    let response = svc.oneshot(request).await.expect("infallible");
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .expect("body")
                        .to_bytes();
                    assert_eq!(body.len(), 1024);
                    started.elapsed()
                });
            }
            while let Some(latency) = set.join_next().await {
                latencies.push(latency.expect("request task"));
            }
        }
        latencies.sort();
        let per_key = calls.get() as f64 / keys as f64;
        println!(
            "| {} | {per_key:.1} | {:.1} ms | {:.1} ms |",
            setting.name,
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
        if setting.cache && setting.distributed_lock {
            assert_eq!(
                calls.get(),
                keys,
                "fleet-wide coalescing costs one origin call per key"
            );
        }
    }
}
