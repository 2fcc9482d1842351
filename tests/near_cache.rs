//! The optional near cache: an in-process tier in front of a real Redis.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tower::Layer;

#[tokio::test]
async fn hits_are_answered_in_process_even_while_redis_is_down() -> TestResult {
    let mut server = RedisServer::start().await;
    if !server.is_local() {
        return Ok(());
    }
    let layer = builder(redis_store(&server).await, "near")
        .near_cache(1 << 20, Duration::from_secs(60))
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    let uri = "http://example.test/near";
    let filled = send(&svc, get(uri)).await;
    layer.wait_for_writes().await;

    server.stop();
    let hit = send(&svc, get(uri)).await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &filled.body));
    assert!(layer.stats().near_hits >= 1);
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_one_instance_drops_the_near_copies_of_the_others() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("near-fleet");
    let near = |b: tower_redis_cache::CacheLayerBuilder| {
        b.key_prefix(&prefix)
            .near_cache(1 << 20, Duration::from_secs(600))
    };
    let one = near(builder(redis_store(&server).await, "near-fleet")).build()?;
    let two = near(builder(redis_store(&server).await, "near-fleet")).build()?;
    let calls = Calls::default();
    let (svc_one, svc_two) = (
        one.layer(counting_origin(&calls)),
        two.layer(counting_origin(&calls)),
    );
    let uri = "http://example.test/shared";
    send(&svc_one, get(uri)).await;
    one.wait_for_writes().await;
    assert_eq!(send(&svc_two, get(uri)).await.x_cache(), "HIT");
    let near_before = two.stats().near_hits;
    assert_eq!(send(&svc_two, get(uri)).await.x_cache(), "HIT");
    assert_eq!(
        two.stats().near_hits,
        near_before + 1,
        "the second read is in-process"
    );

    // A successful POST through the first instance invalidates the entry fleet-wide.
    send(&svc_one, request("POST", uri)).await;
    // The notice travels over Redis pub/sub; there is no event to await in the other
    // process, so poll (bounded, far below the 600 s near-cache TTL).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(&svc_two, get(uri)).await;
        if reply.x_cache() == "MISS" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the near copy outlived the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
