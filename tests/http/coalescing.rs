//! Stampede protection across instances sharing one store (issue: coalescing): layers sharing
//! a `MemoryStore` coalesce in process; with `TRC_TEST_STORE=redis` each has its own Redis
//! connections, as a fleet of processes does, and coalesces through Redis locks and notices.

use crate::backend::Backend;
use crate::support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fleet::{fleet, storm, Origin};
use support::*;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::service_fn;
use tower::util::BoxCloneSyncService;
use tower_redis_cache::{CacheBody, CacheLayer, Stats};

/// An origin that counts calls, takes `delay`, and answers per path:
/// `/500` a 500, `/no-store` and `/cookie` unshareable responses, anything else a body that
/// names the call, so two responses from different calls never look alike.
fn slow_origin(calls: &Calls, delay: Duration) -> Origin {
    let calls = calls.clone();
    BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        async move {
            tokio::time::sleep(delay).await;
            let response = Response::builder();
            let response = match req.uri().path() {
                "/500" => response.status(500),
                "/no-store" => response.header("cache-control", "no-store"),
                "/cookie" => response.header("set-cookie", "id=1"),
                _ => response,
            };
            let body = format!("{} from call {n}", req.uri().path());
            Ok::<_, Infallible>(
                response
                    .body(Full::new(Bytes::from(body)))
                    .expect("response"),
            )
        }
    }))
}

/// An origin that counts calls, signals `called` at each, and holds every answer (`respond`
/// with the call's number) until `released` turns true: all at once, so a second call (a
/// coalescing failure) is answered and counted rather than left waiting.
fn gated_origin(
    calls: &Calls,
    called: &Arc<Notify>,
    released: &tokio::sync::watch::Receiver<bool>,
    respond: impl Fn(usize) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> Origin {
    let (calls, called, released) = (calls.clone(), Arc::clone(called), released.clone());
    BoxCloneSyncService::new(service_fn(move |_req: Request<ReqBody>| {
        let n = calls.add();
        let (called, mut released, respond) = (called.clone(), released.clone(), respond.clone());
        async move {
            called.notify_one();
            let _ = released.wait_for(|go| *go).await;
            Ok::<_, Infallible>(respond(n))
        }
    }))
}

fn total(layers: &[CacheLayer], field: impl Fn(&Stats) -> u64) -> u64 {
    layers.iter().map(|l| field(&l.stats())).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_over_four_instances_cost_one_origin_call() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let origin = slow_origin(&calls, Duration::from_millis(200));
    let (layers, services) = fleet(&backend, "storm-one", 4, &origin, |b| b).await;

    let replies = storm(&services, &["/hot".to_owned()], 200).await;

    assert_eq!(calls.get(), 1);
    assert_eq!(replies.len(), 200);
    assert!(replies
        .iter()
        .all(|(_, r)| r.status == StatusCode::OK && r.body == "/hot from call 1"));
    assert_eq!(
        replies
            .iter()
            .filter(|(_, r)| r.x_cache() == "MISS")
            .count(),
        1
    );
    assert_eq!(
        replies.iter().filter(|(_, r)| r.x_cache() == "HIT").count(),
        199
    );
    assert_eq!(total(&layers, |s| s.coalesced), 199);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cold_keys_times_twenty_requests_cost_fifty_origin_calls() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let origin = slow_origin(&calls, Duration::from_millis(100));
    let (_layers, services) = fleet(&backend, "storm-many", 4, &origin, |b| b).await;
    let paths: Vec<String> = (0..50).map(|i| format!("/item/{i}")).collect();

    let replies = storm(&services, &paths, 20).await;

    assert_eq!(calls.get(), 50);
    assert_eq!(replies.len(), 1000);
    for path in &paths {
        let bodies: Vec<_> = replies
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| &r.body)
            .collect();
        assert_eq!(bodies.len(), 20);
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{path}: every request got the one fill"
        );
        assert!(bodies[0].starts_with(path.as_bytes()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_answers_release_waiters_through_the_notice_not_the_timeout() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let origin = slow_origin(&calls, Duration::from_millis(200));
    let (layers, services) = fleet(&backend, "unstorable", 4, &origin, |b| {
        b.lock_wait(Duration::from_secs(30))
    })
    .await;
    let started = Instant::now();

    for path in ["/500", "/no-store", "/cookie"] {
        let before = calls.get();
        let replies = storm(&services, &[path.to_owned()], 12).await;
        // Every request got an answer of its own: one origin call each, no shared body.
        assert_eq!(calls.get() - before, 12, "{path}");
        let mut bodies: Vec<_> = replies.iter().map(|(_, r)| r.body.clone()).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(
            bodies.len(),
            12,
            "{path}: no waiter was handed another's response"
        );
    }
    assert_eq!(total(&layers, |s| s.lock_timeouts), 0);
    assert!(
        total(&layers, |s| s.lock_waits) > 0,
        "some instances waited on another's lock"
    );
    // Far below one lock_wait: the waits ended on the notice.
    assert!(started.elapsed() < Duration::from_secs(30));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_lock_delays_the_others_by_at_most_lock_ttl() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let origin = slow_origin(&calls, Duration::from_millis(50));
    let lock_ttl = Duration::from_secs(1);
    let (layers, services) = fleet(&backend, "dead-leader", 4, &origin, |b| {
        b.lock_ttl(lock_ttl)
    })
    .await;
    // A leader that took the lock and died: its lock stays until it expires.
    let lock_key = layers[0]
        .key_for(&get("http://example.test/orphan"))
        .expect("key")
        .lock_key();
    let taken = backend
        .store()
        .await
        .try_lock(&lock_key, "dead-leader-token", lock_ttl)
        .await?;
    assert!(taken, "the dead leader's lock");
    let started = Instant::now();

    let replies = storm(&services, &["/orphan".to_owned()], 20).await;

    let took = started.elapsed();
    assert!(replies
        .iter()
        .all(|(_, r)| r.status == StatusCode::OK && r.body == "/orphan from call 1"));
    assert_eq!(
        calls.get(),
        1,
        "one instance took over; the others were served its fill"
    );
    assert_eq!(total(&layers, |s| s.lock_takeovers), 1);
    assert_eq!(total(&layers, |s| s.lock_timeouts), 0);
    // lock_ttl, plus the origin's 50 ms, plus polling and scheduling slack.
    assert!(
        took < lock_ttl + Duration::from_millis(800),
        "took {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_slower_than_the_lock_ttl_is_still_called_once() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let origin = slow_origin(&calls, Duration::from_secs(3));
    let (layers, services) = fleet(&backend, "slow-origin", 2, &origin, |b| {
        b.lock_ttl(Duration::from_secs(1))
            .lock_wait(Duration::from_secs(10))
    })
    .await;

    let replies = storm(&services, &["/slow".to_owned()], 10).await;

    assert_eq!(
        calls.get(),
        1,
        "the lock was extended while the origin worked"
    );
    assert!(replies.iter().all(|(_, r)| r.body == "/slow from call 1"));
    assert_eq!(total(&layers, |s| s.lock_takeovers), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_client_hanging_up_does_not_cancel_the_fill() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let called = Arc::new(Notify::new());
    let (release, released) = tokio::sync::watch::channel(false);
    let body = binary_body(256 * 1024, 11);
    let origin = gated_origin(&calls, &called, &released, {
        let body = body.clone();
        move |_| Response::new(Full::new(body.clone()))
    });
    let (layers, services) = fleet(&backend, "hang-up", 2, &origin, |b| b).await;
    let uri = "http://example.test/abandoned";

    let leader = tokio::spawn({
        let svc = services[0].clone();
        async move { send(&svc, get(uri)).await }
    });
    called.notified().await;
    let mut followers = JoinSet::new();
    for i in 0..10 {
        let svc = services[i % 2].clone();
        followers.spawn(async move { send(&svc, get(uri)).await });
    }
    leader.abort();
    assert!(leader.await.is_err_and(|e| e.is_cancelled()));
    let _ = release.send(true);

    while let Some(reply) = followers.join_next().await {
        let reply = reply?;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, body);
    }
    layers[0].wait_for_writes().await;
    let later = send(&services[1], get(uri)).await;
    assert_eq!(later.x_cache(), "HIT");
    assert_eq!(later.body, body);
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[allow(dead_code)]
fn assert_body_type(_: &Response<CacheBody<Full<Bytes>>>) {}

/// A `HEAD` arriving while a `GET`'s fill runs is answered from it only when what the fill
/// stores is fresh, as any follower is: an entry that must be revalidated on every use
/// (`no-cache`) was the leader's answer, and the `HEAD` is a new use, not a hit on it.
#[tokio::test]
async fn a_head_joining_a_fill_is_not_a_hit_on_an_entry_to_revalidate() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let called = Arc::new(Notify::new());
    let (release, released) = tokio::sync::watch::channel(false);
    let origin = gated_origin(&calls, &called, &released, |n| {
        Response::builder()
            .header("cache-control", "no-cache")
            .header("etag", format!("\"v{n}\""))
            .body(Full::new(Bytes::from(format!("call {n}"))))
            .expect("response")
    });
    let (_layers, services) = fleet(&backend, "head-joins", 1, &origin, |b| b).await;
    let uri = "http://example.test/revalidate-every-time";
    let leader = tokio::spawn({
        let svc = services[0].clone();
        async move { send(&svc, get(uri)).await }
    });
    called.notified().await;
    let head = tokio::spawn({
        let svc = services[0].clone();
        let request = Request::head(uri).body(ReqBody::default())?;
        async move { send(&svc, request).await }
    });
    // The HEAD joins the fill before it is released: on this one-thread runtime the yield
    // runs the HEAD's task until it waits, and with the memory store (the default run) nothing
    // before the join waits, so it waits on the fill. (On Redis it may arrive after the fill;
    // it must not be a HIT then either.)
    tokio::task::yield_now().await;
    let _ = release.send(true);
    assert_eq!(leader.await?.status, StatusCode::OK);
    let head = head.await?;
    assert_eq!(head.status, StatusCode::OK);
    assert_ne!(
        head.x_cache(),
        "HIT",
        "a no-cache entry answered a later use unrevalidated"
    );
    Ok(())
}
