//! The Redis store's own properties, seen through the layer and the typed cache: what a Redis
//! costs per request (round trips, commands, keys), and what happens when Redis goes away
//! mid-request or mid-storm and comes back. The HTTP behaviour around them is tested on both
//! stores in `tests/http`; the fleet, storm and tagged origin come from `tests/support`,
//! shared with that binary.

use crate::support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use support::fleet::{fleet, storm, Origin};
use support::*;
use tokio::sync::Notify;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};

#[tokio::test]
async fn with_redis_down_requests_bypass_quickly_and_hits_resume_after_restart() -> TestResult {
    let mut server = RedisServer::start().await;
    if !server.is_local() {
        return Ok(()); // needs a server this test may kill
    }
    let read_timeout = Duration::from_millis(50);
    let origin_delay = Duration::from_millis(20);
    let layer = support::builder(redis_store(&server).await, "outage")
        .read_timeout(read_timeout)
        .circuit_breaker(3, Duration::from_millis(200))
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |_req: Request<ReqBody>| {
            let n = calls.add();
            async move {
                tokio::time::sleep(origin_delay).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("call {n}")))))
            }
        }
    }));
    assert_eq!(
        send(&svc, get("http://example.test/a")).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&svc, get("http://example.test/a")).await.x_cache(),
        "HIT"
    );

    server.stop();
    for i in 0..20 {
        let started = std::time::Instant::now();
        let reply = send(&svc, get("http://example.test/a")).await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.x_cache(), "BYPASS", "request {i}");
        // Generous margin over the bound (store timeout + origin time) to stay robust on a
        // loaded machine; what matters is that nothing waits for a dead Redis.
        assert!(
            took < read_timeout + origin_delay + Duration::from_millis(500),
            "request {i} took {took:?}"
        );
    }
    assert!(layer.stats().store_errors > 0);
    assert!(layer.stats().bypass >= 20);

    server.restart();
    // fred reconnects in the background; poll until the cache is used again (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = send(&svc, get("http://example.test/a")).await;
        if reply.x_cache() != "BYPASS" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache did not come back after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut hit = false;
    for _ in 0..3 {
        if send(&svc, get("http://example.test/a")).await.x_cache() == "HIT" {
            hit = true;
            break;
        }
    }
    assert!(hit, "hits resume without rebuilding the layer");
    Ok(())
}

/// An uncontended miss costs at most two Redis round trips: the lookup that reads or takes the
/// fill lock (one script), and the fill's end (write, notices, unlock, one script). Counted as the socket reads Redis makes (`total_reads_processed`) over
/// 1,000 misses asked one after another, so no two requests share a read; the near tier is off
/// here only so its heartbeats do not add reads of their own (a miss never reads it anyway).
#[tokio::test]
async fn an_uncontended_miss_is_two_redis_round_trips() -> TestResult {
    let server = RedisServer::start().await;
    let layer = support::builder(redis_store(&server).await, "round-trips")
        .near_cache(1 << 20, Duration::ZERO)
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    // Warm up: the first run of each script on a server loads it (`NOSCRIPT`, then `EVAL`).
    send(&svc, get("http://example.test/warm-up")).await;
    layer.wait_for_writes().await;
    let raw = raw_client(&server).await;
    let reads = || async {
        use fred::prelude::ClientLike;
        let command =
            fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false);
        let info: String = raw
            .custom(command, vec!["stats"])
            .await
            .expect("INFO stats");
        info.lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("total_reads_processed")
    };
    let before = reads().await;
    const MISSES: u64 = 1_000;
    for n in 0..MISSES {
        let reply = send(&svc, get(&format!("http://example.test/unique/{n}"))).await;
        assert_eq!(reply.x_cache(), "MISS");
        // One at a time: the fill's end is off the response path; wait for it.
        layer.wait_for_writes().await;
    }
    // The INFO calls themselves: one read each.
    let round_trips = reads().await - before - 1;
    assert_eq!(calls.get(), MISSES as usize + 1);
    assert!(
        round_trips <= 2 * MISSES,
        "{round_trips} Redis round trips for {MISSES} misses"
    );
    assert!(
        layer.stats().stored > MISSES,
        "every miss was stored: {:?}",
        layer.stats()
    );
    Ok(())
}

/// A hit through Redis (near tier off) on a key this process saw filled is one
/// plain `GET`, not the read-or-lock script: 100 hits add 100 `GET` calls and no `EVALSHA`
/// (Redis's own `INFO commandstats`).
#[tokio::test]
async fn a_hit_on_a_key_seen_filled_is_one_plain_get() -> TestResult {
    let server = RedisServer::start().await;
    let layer = support::builder(redis_store(&server).await, "plain-get")
        .near_cache(1 << 20, Duration::ZERO)
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    assert_eq!(
        send(&svc, get("http://example.test/hot")).await.x_cache(),
        "MISS"
    );
    layer.wait_for_writes().await;
    let raw = raw_client(&server).await;
    let calls_of = |name: &'static str| {
        let raw = raw.clone();
        async move {
            use fred::prelude::ClientLike;
            let command = fred::types::CustomCommand::new_static(
                "INFO",
                fred::types::ClusterHash::Random,
                false,
            );
            let info: String = raw
                .custom(command, vec!["commandstats"])
                .await
                .expect("INFO commandstats");
            info.lines()
                .find_map(|line| {
                    line.strip_prefix(&format!("cmdstat_{name}:calls="))
                        .map(str::to_owned)
                })
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let (gets, scripts) = (calls_of("get").await, calls_of("evalsha").await);
    for _ in 0..100 {
        let reply = send(&svc, get("http://example.test/hot")).await;
        assert_eq!(reply.x_cache(), "HIT");
    }
    assert_eq!(calls.get(), 1, "one origin call");
    assert_eq!(calls_of("get").await - gets, 100, "one GET per hit");
    assert_eq!(calls_of("evalsha").await - scripts, 0, "no script on a hit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_during_a_storm_never_hangs_a_request() -> TestResult {
    let mut server = RedisServer::start().await;
    if !server.is_local() {
        return Ok(());
    }
    let calls = Calls::default();
    let called = Arc::new(Notify::new());
    let origin: Origin = BoxCloneSyncService::new(service_fn({
        let (calls, called) = (calls.clone(), called.clone());
        move |_req: Request<ReqBody>| {
            calls.add();
            let called = called.clone();
            async move {
                called.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"origin"))))
            }
        }
    }));
    let lock_wait = Duration::from_secs(2);
    let (_layers, services) = fleet(&server, "outage-storm", 4, &origin, |b| {
        b.lock_wait(lock_wait)
            .read_timeout(Duration::from_millis(100))
    })
    .await;

    let storm = {
        let services = services.clone();
        tokio::spawn(async move {
            storm(&services, &["/during".to_owned(), "/outage".to_owned()], 50).await
        })
    };
    called.notified().await;
    server.stop();
    let replies = tokio::time::timeout(
        lock_wait + Duration::from_millis(300) + Duration::from_secs(3),
        storm,
    )
    .await
    .expect("no request hangs when Redis dies mid-storm")?;

    assert_eq!(replies.len(), 100);
    assert!(replies
        .iter()
        .all(|(_, r)| r.status == StatusCode::OK && r.body == "origin"));
    Ok(())
}

/// Another instance's near tier drops a purged entry: its next read after the purge's
/// notice arrives is a miss.
#[tokio::test]
async fn near_tiers_of_other_instances_drop_purged_entries() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("purge-near");
    let layer = |store| {
        support::builder(store, "purge-near")
            .key_prefix(&prefix)
            .build()
            .expect("valid")
    };
    let one = layer(redis_store(&server).await);
    let two = layer(redis_store(&server).await);
    let calls = Calls::default();
    let svc_one = one.layer(tagged_origin(&calls));
    let svc_two = two.layer(tagged_origin(&calls));
    let url = "http://example.test/t/news/1";
    send(&svc_one, get(url)).await;
    one.wait_for_writes().await;
    // Warm two's near tier: a hit that comes from it needs no store round trip.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while two.stats().near_hits == 0 {
        assert_eq!(send(&svc_two, get(url)).await.x_cache(), "HIT");
        assert!(
            tokio::time::Instant::now() < deadline,
            "near tier never served"
        );
        tokio::task::yield_now().await;
    }
    one.purge_tag("item-1").await?;
    // The notice reaches two within its staleness bound; until then it may still hit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(&svc_two, get(url)).await;
        if reply.x_cache() == "MISS" {
            assert!(reply.body.ends_with(b"call 2"), "refilled from the origin");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "two kept serving a purged entry"
        );
        tokio::task::yield_now().await;
    }
    assert!(two.stats().purged_reads >= 1);
    Ok(())
}

/// Done when 2, typed face: a prefix delete among 10,000 other values drops exactly the values
/// under the prefix, in a few Redis commands (no `SCAN`), and adds no index; a value written
/// after it is not covered.
#[tokio::test]
async fn a_typed_prefix_delete_costs_the_same_whatever_the_keyspace() -> TestResult {
    let server = RedisServer::start().await;
    let cache = tower_redis_cache::Cache::builder(redis_store(&server).await)
        .key_prefix(unique_prefix("typed-prefix"))
        .read_timeout(Duration::from_secs(5))
        .write_timeout(Duration::from_secs(5))
        .near_cache(1 << 20, Duration::ZERO)
        .build()?;
    let numbers = cache.typed::<u32>();
    let others: Vec<(String, u32)> = (0..10_000).map(|i| (format!("other:{i}"), i)).collect();
    for chunk in others.chunks(500) {
        numbers
            .set_many(
                chunk.iter().map(|(k, v)| (k.as_str(), *v)),
                Duration::from_secs(600),
            )
            .await?;
    }
    let doomed: Vec<String> = (0..100).map(|i| format!("list:{i}")).collect();
    numbers
        .set_many(
            doomed.iter().map(|k| (k.as_str(), 1u32)),
            Duration::from_secs(600),
        )
        .await?;
    let keys_before = key_count(&server).await;
    let before = commands_run(&server).await;
    cache.delete_prefix("list:").await?;
    let used = commands_run(&server).await - before;
    assert!(used <= 8, "a prefix delete ran {used} Redis commands");
    let found = numbers.get_many(&doomed).await?;
    assert!(
        found.iter().all(Option::is_none),
        "every value under the prefix dropped"
    );
    for chunk in others.chunks(500) {
        let kept = numbers
            .get_many(chunk.iter().map(|(k, _)| k.as_str()))
            .await?;
        assert!(kept.iter().all(Option::is_some), "nothing else dropped");
    }
    assert_eq!(key_count(&server).await, keys_before + 1, "one record key");
    numbers.set("list:0", &7, Duration::from_secs(60)).await?;
    assert_eq!(
        numbers.get("list:0").await?,
        Some(7),
        "a later write is not covered"
    );
    Ok(())
}
