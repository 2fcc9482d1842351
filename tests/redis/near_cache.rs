//! The near tier: an in-process tier in front of a real Redis, coherent with the fleet.

use crate::support;

use std::time::{Duration, Instant};
use support::*;
use tower::Layer;

#[tokio::test]
async fn hits_are_answered_in_process_and_never_while_changes_cannot_be_heard() -> TestResult {
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
    // A hit reads Redis and keeps a copy once the change feed has proven itself current
    // (its first heartbeat, within tens of milliseconds); later hits are answered in process.
    wait_for_near_hit(&layer, &svc, uri).await;
    let near_before = layer.stats().near_hits;
    let hit = send(&svc, get(uri)).await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &filled.body));
    assert_eq!(layer.stats().near_hits, near_before + 1);

    // With Redis gone, changes made elsewhere could not be heard: the near tier drops its
    // copies (on the lost connection) and serves nothing, so the request goes to the origin.
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while layer.stats().near_flushes == 0 {
        assert!(
            Instant::now() < deadline,
            "the lost feed was never reported"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let near_before = layer.stats().near_hits;
    let reply = send(&svc, get(uri)).await;
    assert_ne!(reply.x_cache(), "HIT");
    assert_eq!(layer.stats().near_hits, near_before);
    assert_eq!(calls.get(), 2);
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
    wait_for_near_hit(&two, &svc_two, uri).await;
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

/// Asks for `uri` until an answer comes from the near tier: the tier serves only once its
/// change feed's first heartbeat is back, an event of the store's that a test cannot await.
async fn wait_for_near_hit<S, B>(layer: &tower_redis_cache::CacheLayer, svc: &S, uri: &str)
where
    S: tower::Service<
            http::Request<ReqBody>,
            Response = http::Response<tower_redis_cache::CacheBody<B>>,
        > + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<tower_redis_cache::BoxError>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = layer.stats().near_hits;
        assert_eq!(send(svc, get(uri)).await.x_cache(), "HIT");
        if layer.stats().near_hits > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the near tier never served: {:?}",
            layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
