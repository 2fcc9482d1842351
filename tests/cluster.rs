//! The cache on a real Redis Cluster (3 primaries, started by the harness): entries, locks,
//! Lua scripts and fill notices across slots and nodes.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::time::Duration;
use support::*;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};
use tower_redis_cache::RedisStore;

type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, Infallible>;

fn slow_origin(calls: &Calls) -> Origin {
    let calls = calls.clone();
    BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let vary = req.uri().path().starts_with("/vary");
            let mut response = Response::builder();
            if vary {
                response = response.header("vary", "accept-language");
            }
            let body = format!("{} #{n}", req.uri().path());
            Ok::<_, Infallible>(
                response
                    .body(Full::new(Bytes::from(body)))
                    .expect("response"),
            )
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_coalesces_and_shares_entries_across_slots() -> TestResult {
    let cluster = RedisCluster::start(3).await;
    let calls = Calls::default();
    let prefix = unique_prefix("cluster");
    let mut layers = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::connect(cluster.url()).await?;
        layers.push(builder(store, "cluster").key_prefix(&prefix).build()?);
    }
    let services: Vec<_> = layers
        .iter()
        .map(|l| l.layer(slow_origin(&calls)))
        .collect();

    // 30 keys spread over the cluster's slots, 10 concurrent requests each over 3 instances.
    let mut set = JoinSet::new();
    for key in 0..30 {
        for i in 0..10 {
            let svc = services[(key + i) % 3].clone();
            set.spawn(async move {
                let path = format!("/item/{key}");
                (
                    path.clone(),
                    send(&svc, get(&format!("http://example.test{path}"))).await,
                )
            });
        }
    }
    while let Some(result) = set.join_next().await {
        let (path, reply) = result?;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.body.starts_with(path.as_bytes()),
            "{path}: {:?}",
            reply.body
        );
    }
    assert_eq!(calls.get(), 30, "one origin call per key, across nodes");
    let total =
        |f: fn(&tower_redis_cache::Stats) -> u64| layers.iter().map(|l| f(&l.stats())).sum::<u64>();
    assert!(
        total(|s| s.lock_waits) > 0,
        "instances waited on each other's cluster locks"
    );
    assert_eq!(total(|s| s.lock_timeouts), 0);
    for layer in &layers {
        layer.wait_for_writes().await;
    }
    for (i, svc) in services.iter().enumerate() {
        let reply = send(svc, get(&format!("http://example.test/item/{i}"))).await;
        assert_eq!(reply.x_cache(), "HIT");
    }

    // Variants and their index share the resource's slot.
    let lang = |l: &str| {
        let mut request = get("http://example.test/vary/page");
        request
            .headers_mut()
            .insert("accept-language", l.parse().expect("value"));
        request
    };
    send(&services[0], lang("en")).await;
    layers[0].wait_for_writes().await;
    send(&services[1], lang("fr")).await;
    layers[1].wait_for_writes().await;
    assert_eq!(send(&services[2], lang("en")).await.x_cache(), "HIT");
    assert_eq!(send(&services[2], lang("fr")).await.x_cache(), "HIT");
    assert_eq!(
        layers.iter().map(|l| l.stats().store_errors).sum::<u64>(),
        0
    );

    // Purges by URL and by URL prefix reach every instance on a Cluster (the
    // records key lives in one slot; its notice crosses the nodes).
    assert!(layers[0].purge_url("http://example.test/item/0").await?);
    layers[0].purge_prefix("http://example.test/item/2").await?;
    let calls_before = calls.get();
    for (i, svc) in services.iter().enumerate() {
        // Each instance learns of the prefix purge by its notice: wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let path = format!("http://example.test/item/2{i}");
        while send(svc, get(&path)).await.x_cache() != "MISS" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "instance {i} kept {path}"
            );
        }
    }
    assert_eq!(
        send(&services[1], get("http://example.test/item/0"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&services[2], get("http://example.test/item/1"))
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(calls.get(), calls_before + 4);
    // And by tag, from another instance: tagged values on several slots, purged at once.
    let values: Vec<_> = layers.iter().map(|l| l.cache().typed::<u32>()).collect();
    for i in 0..20u32 {
        values[0]
            .set_tagged(&format!("v{i}"), &i, Duration::from_secs(60), &["batch"])
            .await?;
    }
    values[0]
        .set("untagged", &7, Duration::from_secs(60))
        .await?;
    layers[1].cache().purge_tag("batch").await?;
    for (n, typed) in values.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while typed.get("v3").await?.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "instance {n} kept v3"
            );
        }
        for i in 0..20u32 {
            assert_eq!(typed.get(&format!("v{i}")).await?, None);
        }
        assert_eq!(typed.get("untagged").await?, Some(7));
    }
    assert!(cluster.ports().len() == 3 || std::env::var("REDIS_CLUSTER_URL").is_ok());
    Ok(())
}
