//! `RedisStore::from_pool` / `from_client`: a store built on the application's own fred
//! connections shares them without taking them over, and keeps its fill notices (and so the
//! near caches' coherence) across a Redis restart. Real Redis.

use crate::support;

use fred::prelude::*;
use fred::types::InfoKind;
use std::time::{Duration, Instant};
use support::*;
use tower::Layer;
use tower_redis_cache::store::DEFAULT_NOTICE_CHANNEL;
use tower_redis_cache::RedisStore;

/// A pool as an application would build it: its own reconnect policy, connected.
async fn app_pool(server: &RedisServer) -> Pool {
    let config = Config::from_url(server.url()).expect("url");
    let pool = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 20))
        .build_pool(2)
        .expect("pool");
    pool.init().await.expect("connect the application's pool");
    pool
}

async fn connected_clients(raw: &Client) -> u64 {
    let info: String = raw.info(Some(InfoKind::Clients)).await.expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients in INFO")
}

#[tokio::test]
async fn a_borrowed_pool_or_client_outlives_the_store() -> TestResult {
    let server = RedisServer::start().await;
    let pool = app_pool(&server).await;
    let store = RedisStore::from_pool(pool.clone())?;
    tokio::time::timeout(Duration::from_secs(10), store.wait_connected()).await??;
    drop(store);
    // Dropping closes the store's own subscriber in a task; let it run, then use the pool.
    tokio::task::yield_now().await;
    let raw = raw_client(&server).await;
    // The quit would have been sent by now if it were going to be: wait until the store's
    // subscriber is gone (an event the server reports), then check the pool.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected_clients(&raw).await > 3 {
        assert!(
            Instant::now() < deadline,
            "the store's subscriber never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pool.is_connected(), "the application's pool was quit");
    let pong: String = pool.ping(None).await?;
    assert_eq!(pong, "PONG");

    // `from_client` uses that very client for commands: it adds one connection (the
    // subscriber), not a pool of its own; and dropping it leaves the client connected.
    let client = Builder::from_config(Config::from_url(server.url())?).build()?;
    client.init().await?;
    let before = connected_clients(&raw).await;
    let store = RedisStore::from_client(client.clone())?;
    tokio::time::timeout(Duration::from_secs(10), store.wait_connected()).await??;
    assert_eq!(connected_clients(&raw).await, before + 1);
    drop(store);
    tokio::task::yield_now().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected_clients(&raw).await > before {
        assert!(
            Instant::now() < deadline,
            "the store's subscriber never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_connected(), "the application's client was quit");
    let pong: String = client.ping(None).await?;
    assert_eq!(pong, "PONG");
    Ok(())
}

/// Subscribers to the notice channel, as the server counts them.
async fn subscribers(raw: &Client) -> i64 {
    let counts: Vec<(String, i64)> = raw
        .pubsub_numsub(DEFAULT_NOTICE_CHANNEL)
        .await
        .unwrap_or_default();
    counts.first().map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_stay_coherent_across_a_redis_restart() -> TestResult {
    let mut server = RedisServer::start().await;
    if !server.is_local() {
        return Ok(());
    }
    let prefix = unique_prefix("sharing-restart");
    let near = |store: RedisStore| {
        builder(store, "sharing-restart")
            .key_prefix(&prefix)
            .near_cache(1 << 20, Duration::from_secs(600))
            .build()
            .expect("layer")
    };
    let (store_one, store_two) = (
        RedisStore::from_pool(app_pool(&server).await)?,
        RedisStore::from_pool(app_pool(&server).await)?,
    );
    for store in [&store_one, &store_two] {
        tokio::time::timeout(Duration::from_secs(10), store.wait_connected()).await??;
    }
    let (one, two) = (near(store_one), near(store_two));
    let calls = Calls::default();
    let (svc_one, svc_two) = (
        one.layer(counting_origin(&calls)),
        two.layer(counting_origin(&calls)),
    );

    server.restart();
    let raw = raw_client(&server).await;
    // Both stores resubscribe on their own once Redis is back: wait for the server to count
    // them (there is no event to await across the connection).
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscribers(&raw).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the notice subscribers did not come back after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let uri = "http://example.test/restarted";
    // Commands may still be failing fast while the pools reconnect: fill until stored.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        send(&svc_one, get(uri)).await;
        one.wait_for_writes().await;
        if send(&svc_two, get(uri)).await.x_cache() == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Instance two keeps a near copy once its change feed has proven itself current again
    // (a heartbeat after the restart).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let near_before = two.stats().near_hits;
        assert_eq!(send(&svc_two, get(uri)).await.x_cache(), "HIT");
        if two.stats().near_hits == near_before + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "instance two holds no near copy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A change on instance one must reach instance two's near cache.
    assert_eq!(send(&svc_one, request("POST", uri)).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if send(&svc_two, get(uri)).await.x_cache() == "MISS" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance two kept serving its near copy after the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
