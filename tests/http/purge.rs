//! Purges by tag, URL prefix and URL, on every instance, on the test store; what a
//! purge costs in Redis commands and keys is checked when that store is Redis.

use crate::backend::Backend;
use crate::support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tower::{service_fn, Layer};
use tower_redis_cache::{CacheLayer, CacheTags, MemoryStore, PurgeError};

/// Sends `uris` through `svc`, 64 at a time, and returns each reply's `X-Cache`.
async fn send_all<S>(svc: &S, uris: &[String]) -> Vec<String>
where
    S: tower::Service<
            Request<ReqBody>,
            Response = Response<tower_redis_cache::CacheBody<Full<Bytes>>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let mut outcomes = Vec::with_capacity(uris.len());
    for batch in uris.chunks(64) {
        let replies = futures_util::future::join_all(
            batch
                .iter()
                .map(|uri| async move { send(svc, get(uri)).await }),
        )
        .await;
        outcomes.extend(replies.iter().map(|reply| reply.x_cache().to_owned()));
    }
    outcomes
}

/// Done when 2: a tag purge among 10,000 entries under other tags removes exactly the 100
/// tagged entries from what is served, in a number of Redis commands that does not depend on
/// the 10,000; and it leaves no index behind (the store holds the entries and one record).
/// The command and key counts are Redis's, checked when the test store is Redis.
#[tokio::test]
async fn a_tag_purge_removes_exactly_its_entries_at_a_cost_independent_of_the_rest() -> TestResult {
    let backend = Backend::start().await;
    let layer = support::builder(backend.store().await, "tag-scale")
        .near_cache(1 << 20, Duration::ZERO)
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(tagged_origin(&calls));
    let others: Vec<String> = (0..10_000)
        .map(|i| format!("http://example.test/t/other-{}/{i}", i % 97))
        .collect();
    let tagged: Vec<String> = (0..100)
        .map(|i| format!("http://example.test/t/sale/{i}"))
        .collect();
    let all: Vec<String> = others.iter().chain(&tagged).cloned().collect();
    assert!(send_all(&svc, &all).await.iter().all(|x| x == "MISS"));
    layer.wait_for_writes().await;
    assert_eq!(calls.get(), 10_100);
    let redis = match &backend {
        Backend::Redis(server) => Some(server),
        Backend::Memory(_) => None,
    };
    let keys_before = match redis {
        Some(server) => key_count(server).await,
        None => 0,
    };

    if let Some(server) = redis {
        let before = commands_run(server).await;
        layer.purge_tag("sale").await?;
        let purge_commands = commands_run(server).await - before;
        assert!(
            purge_commands <= 8,
            "a purge ran {purge_commands} Redis commands"
        );
    } else {
        layer.purge_tag("sale").await?;
    }

    let after_tagged = send_all(&svc, &tagged).await;
    assert!(
        after_tagged.iter().all(|x| x == "MISS"),
        "every tagged entry purged"
    );
    assert_eq!(calls.get(), 10_200, "each tagged URL asked again, once");
    let after_others = send_all(&svc, &others).await;
    assert!(
        after_others.iter().all(|x| x == "HIT"),
        "no other entry purged"
    );
    assert_eq!(calls.get(), 10_200);
    layer.wait_for_writes().await;
    if let Some(server) = redis {
        let keys_after = key_count(server).await;
        assert_eq!(keys_after, keys_before + 1, "one record key, no index");
    }
    Ok(())
}

/// A purge by URL prefix covers the URLs under it and nothing else, in a few commands (on Redis).
#[tokio::test]
async fn a_prefix_purge_covers_exactly_the_urls_under_it() -> TestResult {
    let backend = Backend::start().await;
    let layer = support::builder(backend.store().await, "prefix")
        .near_cache(1 << 20, Duration::ZERO)
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    let products: Vec<String> = (0..200)
        .map(|i| format!("http://example.test/products/{i}?view=full"))
        .collect();
    let near_miss: Vec<String> = vec![
        "http://example.test/product".into(),
        "http://example.test/productsx".into(),
        "http://other.test/products/1".into(),
        "https://example.test/products/1".into(),
    ];
    let users: Vec<String> = (0..200)
        .map(|i| format!("http://example.test/users/{i}"))
        .chain(near_miss.iter().cloned())
        .collect();
    send_all(&svc, &products).await;
    send_all(&svc, &users).await;
    layer.wait_for_writes().await;
    let filled = calls.get();

    if let Backend::Redis(server) = &backend {
        let before = commands_run(server).await;
        layer.purge_prefix("HTTP://Example.TEST/products/").await?;
        assert!(commands_run(server).await - before <= 8);
    } else {
        layer.purge_prefix("HTTP://Example.TEST/products/").await?;
    }

    assert!(send_all(&svc, &products).await.iter().all(|x| x == "MISS"));
    assert_eq!(calls.get(), filled + 200);
    let kept = send_all(&svc, &users).await;
    assert!(kept.iter().all(|x| x == "HIT"), "{kept:?}");
    assert_eq!(calls.get(), filled + 200);
    Ok(())
}

/// Done when 3: a fill blocked at the origin while its tag is purged never leaves the purged
/// content served afterwards: not by the instance that filled, not by another instance with
/// its near tier on.
#[tokio::test]
async fn a_fill_running_when_its_tag_is_purged_does_not_bring_it_back() -> TestResult {
    let backend = Backend::start().await;
    let prefix = unique_prefix("purge-race");
    let layer = |store| {
        support::builder(store, "purge-race")
            .key_prefix(&prefix)
            .build()
            .expect("valid")
    };
    let one = layer(backend.store().await);
    let two = layer(backend.store().await);
    let calls = Calls::default();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let origin = {
        let (calls, entered, release) = (calls.clone(), entered.clone(), release.clone());
        service_fn(move |_req: Request<ReqBody>| {
            let n = calls.add();
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                if n == 1 {
                    entered.notify_one();
                    // Held until the purge is recorded.
                    let _permit = release.acquire().await.expect("open");
                }
                let response = Response::builder()
                    .header("surrogate-key", "price")
                    .body(Full::new(Bytes::from(format!("version {n}"))))
                    .expect("response");
                Ok::<_, Infallible>(response)
            }
        })
    };
    let svc_one = one.layer(origin.clone());
    let svc_two = two.layer(origin);

    let fill = tokio::spawn({
        let svc = svc_one.clone();
        async move { send(&svc, get("http://example.test/price")).await }
    });
    entered.notified().await;
    one.purge_tag("price").await?;
    release.add_permits(1);
    let first = fill.await?;
    assert_eq!(
        first.body, "version 1",
        "the request in flight gets its answer"
    );
    one.wait_for_writes().await;

    // Afterwards, neither instance serves version 1 again; they settle on a refill. (A refill
    // that began within the purge's clock margin is covered too, and refilled once more.)
    for round in 0..20 {
        for (name, svc) in [("same instance", &svc_one), ("other instance", &svc_two)] {
            let reply = send(svc, get("http://example.test/price")).await;
            assert_ne!(reply.body, "version 1", "{name} served purged content");
        }
        one.wait_for_writes().await;
        two.wait_for_writes().await;
        if round > 0 && calls.get() >= 2 && one.stats().hits + two.stats().hits >= 2 {
            break;
        }
    }
    assert!(
        one.stats().hits + two.stats().hits >= 2,
        "the refill is served"
    );
    Ok(())
}

/// Tags from a `CacheTags` extension and from `tags_fn`, purged through one layer, are gone
/// for another layer sharing the same memory store, at once.
#[tokio::test]
async fn layers_sharing_a_memory_store_see_each_others_purges() -> TestResult {
    let store = Arc::new(MemoryStore::new(1 << 20));
    let build = || {
        CacheLayer::builder(Arc::clone(&store))
            .key_prefix("shared")
            .tags_fn(|uri, _| vec![format!("path:{}", uri.path())])
            .build()
            .expect("valid")
    };
    let (one, two) = (build(), build());
    let calls = Calls::default();
    let origin = {
        let calls = calls.clone();
        service_fn(move |req: Request<ReqBody>| {
            let n = calls.add();
            let mut response = Response::new(Full::new(Bytes::from(format!("call {n}"))));
            if req.uri().path().starts_with("/cart") {
                response.extensions_mut().insert(CacheTags::from(["cart"]));
            }
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let (svc_one, svc_two) = (one.layer(origin.clone()), two.layer(origin));
    for url in ["http://shop.test/cart/1", "http://shop.test/home"] {
        send(&svc_one, get(url)).await;
        one.wait_for_writes().await;
        assert_eq!(send(&svc_two, get(url)).await.x_cache(), "HIT");
    }
    one.purge_tag("cart").await?;
    assert_eq!(
        send(&svc_two, get("http://shop.test/cart/1"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&svc_two, get("http://shop.test/home")).await.x_cache(),
        "HIT"
    );
    two.wait_for_writes().await;
    two.purge_tag("path:/home").await?;
    assert_eq!(
        send(&svc_one, get("http://shop.test/home")).await.x_cache(),
        "MISS"
    );
    assert_eq!(calls.get(), 4);
    Ok(())
}

/// Tag headers name what the origin groups together: clients never see them (unless the
/// layer is told to pass them), on a miss or a hit.
#[tokio::test]
async fn tag_headers_are_removed_before_clients_see_them() -> TestResult {
    let backend = Backend::start().await;
    for strip in [true, false] {
        let layer = support::builder(backend.store().await, "tag-strip")
            .strip_tag_headers(strip)
            .build()?;
        let calls = Calls::default();
        let svc = layer.layer(tagged_origin(&calls));
        let miss = send(&svc, get("http://example.test/t/secret/1")).await;
        layer.wait_for_writes().await;
        let hit = send(&svc, get("http://example.test/t/secret/1")).await;
        assert_eq!((miss.x_cache(), hit.x_cache()), ("MISS", "HIT"));
        for reply in [&miss, &hit] {
            assert_eq!(reply.headers.contains_key("surrogate-key"), !strip);
            assert_eq!(reply.headers.contains_key("cache-tag"), !strip);
        }
        // Stripped or not, the tags were kept with the entry.
        layer.purge_tag("item-1").await?;
        let after = send(&svc, get("http://example.test/t/secret/1")).await;
        assert_eq!(after.x_cache(), "MISS");
    }
    Ok(())
}

/// A purge by URL removes every variant and serves HEAD from nothing either; it reports
/// whether there was an entry.
#[tokio::test]
async fn a_url_purge_removes_every_variant_and_the_head_form() -> TestResult {
    let backend = Backend::start().await;
    let layer = support::builder(backend.store().await, "purge-url").build()?;
    let calls = Calls::default();
    let origin = {
        let calls = calls.clone();
        service_fn(move |_req: Request<ReqBody>| {
            let n = calls.add();
            let response = Response::builder()
                .header("vary", "accept-language")
                .body(Full::new(Bytes::from(format!("call {n}"))))
                .expect("response");
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let svc = layer.layer(origin);
    let with_language = |language: &str| {
        let mut request = get("http://example.test/page");
        request
            .headers_mut()
            .insert("accept-language", language.parse().expect("value"));
        request
    };
    for language in ["en", "fr"] {
        send(&svc, with_language(language)).await;
        layer.wait_for_writes().await;
        assert_eq!(send(&svc, with_language(language)).await.x_cache(), "HIT");
    }
    assert!(layer.purge_url("http://example.test/page").await?);
    assert!(!layer.purge_url("http://example.test/page").await?);
    for language in ["en", "fr"] {
        assert_eq!(send(&svc, with_language(language)).await.x_cache(), "MISS");
    }
    Ok(())
}

/// Purges that could never match are refused with a clear error, not recorded.
#[tokio::test]
async fn malformed_purges_are_refused() -> TestResult {
    let layer = CacheLayer::builder(MemoryStore::new(1 << 20)).build()?;
    for tag in ["", "two words", "a,b", &"x".repeat(1025)] {
        assert!(matches!(
            layer.purge_tag(tag).await,
            Err(PurgeError::InvalidTag(_))
        ));
    }
    for prefix in ["/relative", "ftp://host/", "http://", "example.test/x"] {
        assert!(matches!(
            layer.purge_prefix(prefix).await,
            Err(PurgeError::InvalidPrefix(_))
        ));
    }
    assert_eq!(layer.stats().purges, 0);
    Ok(())
}

/// One tag purge drops the typed values and the HTTP entries carrying it, when the typed
/// cache shares the layer's engine; a load running when the purge lands is covered.
#[tokio::test]
async fn a_tag_purge_reaches_both_faces_and_a_load_in_flight() -> TestResult {
    let backend = Backend::start().await;
    let layer = support::builder(backend.store().await, "both-faces").build()?;
    let cache = layer.cache();
    let prices = cache.typed::<u32>();
    let calls = Calls::default();
    let svc = layer.layer(tagged_origin(&calls));
    send(&svc, get("http://example.test/t/price/1")).await;
    layer.wait_for_writes().await;
    prices
        .set_tagged(
            "price:1",
            &100,
            Duration::from_secs(60),
            &["price", "product:1"],
        )
        .await?;
    let loads = Calls::default();
    let loaded = prices
        .get_or_set("price:2", Duration::from_secs(60), async {
            loads.add();
            Ok::<_, std::io::Error>(tower_redis_cache::Loaded::new(200).tags(["price"]))
        })
        .await?;
    assert_eq!(loaded, 200);
    assert_eq!(prices.get("price:2").await?, Some(200));

    // A load that runs while the purge lands.
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let in_flight = tokio::spawn({
        let (prices, entered, release) = (prices.clone(), entered.clone(), release.clone());
        async move {
            prices
                .get_or_set("price:3", Duration::from_secs(60), async move {
                    entered.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(tower_redis_cache::Loaded::new(300).tags(["price"]))
                })
                .await
        }
    });
    entered.notified().await;
    cache.purge_tag("price").await?;
    release.notify_one();
    assert_eq!(
        in_flight.await??,
        300,
        "the caller in flight gets its answer"
    );
    layer.wait_for_writes().await;

    for key in ["price:1", "price:2", "price:3"] {
        assert_eq!(prices.get(key).await?, None, "{key} purged");
    }
    let reply = send(&svc, get("http://example.test/t/price/1")).await;
    assert_eq!(
        reply.x_cache(),
        "MISS",
        "the HTTP entry tagged `price` purged too"
    );
    assert_eq!(loads.get(), 1);
    Ok(())
}
