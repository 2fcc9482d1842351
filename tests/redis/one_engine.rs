//! One engine, two faces: a typed `Cache` taken from a layer shares the layer's store
//! connections, counters and background work. Real Redis.

use crate::support;

use std::time::Duration;
use support::*;
use tower::Layer;

#[tokio::test]
async fn a_layers_typed_cache_shares_its_store_and_counters() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("one-engine");
    let layer = builder(redis_store(&server).await, "one-engine")
        .key_prefix(&prefix)
        .build()?;
    let cache = layer.cache();
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));

    let loads = Calls::default();
    for _ in 0..3 {
        let value: u64 = cache
            .get_or_set("answer", Duration::from_secs(60), async {
                loads.add();
                Ok::<u64, String>(42)
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(value, 42);
    }
    assert_eq!(loads.get(), 1);
    send(&svc, get("http://example.test/page")).await;
    assert_eq!(
        send(&svc, get("http://example.test/page")).await.x_cache(),
        "HIT"
    );
    layer.wait_for_writes().await;

    // Both faces count into the layer's stats.
    let stats = layer.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert_eq!((stats.typed_loads, stats.typed_hits), (1, 2));

    // The value is in the shared Redis, under the layer's prefix, apart from its entries:
    // a second instance's cache on the same prefix reads it without loading.
    let other = builder(redis_store(&server).await, "one-engine")
        .key_prefix(&prefix)
        .build()?;
    let read: Option<u64> = other.cache().get("answer").await?;
    assert_eq!(read, Some(42));
    Ok(())
}
