//! Scale-out on real processes: a fleet started while its Cluster settles, a Cluster with
//! replicas losing a primary, Sentinel failover, TLS with an ACL user (for the library and
//! the proxy binary).

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::topology::{Cluster, TOPOLOGY_PATIENCE};
use support::*;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};
use tower_redis_cache::{CacheLayer, RedisStore};

type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, Infallible>;

/// An origin that counts its calls and names the path and the call in its body.
fn origin(calls: &Calls) -> Origin {
    let calls = calls.clone();
    BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        let body = format!("{} #{n}", req.uri().path());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    }))
}

/// A fleet member as the proxy makes one: a lazily connected store, a bounded wait for it
/// (past which the instance starts in fail-open mode), the proxy's store timeouts.
async fn instance(url: &str, prefix: &str, ready_within: Duration) -> CacheLayer {
    let store = RedisStore::builder(url)
        .expect("url")
        .connect_lazy()
        .expect("store");
    let _ = tokio::time::timeout(ready_within, store.wait_connected()).await;
    CacheLayer::builder(store)
        .near_cache(64 << 20, Duration::from_secs(30))
        .key_prefix(prefix)
        .read_timeout(Duration::from_millis(500))
        .write_timeout(Duration::from_millis(500))
        .build()
        .expect("layer")
}

/// Runs that each create a Cluster and start a fleet on it; `SETTLE_BATCH` at a time, so the
/// 20 runs cost about what 5 cost one after another (each run's time is mostly Redis's own
/// two-second delay before a new primary reports `cluster_state:ok`, not CPU).
const SETTLE_RUNS: usize = 20;
fn settle_runs() -> usize {
    std::env::var("TRC_SETTLE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SETTLE_RUNS)
}
const SETTLE_BATCH: usize = 5;

/// 3 instances started in the 0-3 s after `redis-cli --cluster create`
/// returns cache (a MISS on one, then a HIT on another) within 2 s of every node reporting
/// `cluster_state:ok`, in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_started_while_its_cluster_settles_caches_once_it_can_serve() -> TestResult {
    if std::env::var("REDIS_CLUSTER_URL").is_ok() {
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut failures = Vec::new();
    let total = settle_runs();
    for batch in 0..total.div_ceil(SETTLE_BATCH) {
        let mut runs = tokio::task::JoinSet::new();
        for run in batch * SETTLE_BATCH..((batch + 1) * SETTLE_BATCH).min(total) {
            runs.spawn(settle_run(run));
        }
        while let Some(result) = runs.join_next().await {
            if let Err(failure) = result? {
                failures.push(failure);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} runs failed: {failures:#?}",
        failures.len()
    );
    Ok(())
}

async fn settle_run(run: usize) -> Result<(), String> {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::create(3, 0, false))
            .await
            .map_err(|e| e.to_string())?,
    );
    let created = Instant::now();
    // When every node first reports ok, watched from a thread (the check is blocking I/O).
    let watcher = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || cluster.wait_ok())
    };
    // Spread the fleet's start over the 0-3 s after creation, across runs.
    let delay = Duration::from_millis((run as u64 * 617) % 3_000);
    tokio::time::sleep_until((created + delay).into()).await;
    let url = cluster.url();
    let prefix = unique_prefix("settle");
    let started = Instant::now();
    let fleet = futures_util::future::join_all(
        (0..3).map(|_| instance(&url, &prefix, Duration::from_secs(3))),
    )
    .await;
    let calls = Calls::default();
    let services: Vec<_> = fleet.iter().map(|l| l.layer(origin(&calls))).collect();
    let mut ok_at: Option<Instant> = None;
    let mut watcher = Some(watcher);
    for n in 0u64.. {
        if let Some(done) = watcher.as_ref().filter(|w| w.is_finished()) {
            let _ = done;
            ok_at = Some(
                watcher
                    .take()
                    .expect("watcher")
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let now = Instant::now();
        if let Some(ok) = ok_at {
            // Within 2 s of the cluster being ok, or of the fleet's start when that is later.
            if now > ok.max(started) + Duration::from_secs(2) {
                return Err(format!(
                    "run {run} (fleet started {:?} after create): no MISS then HIT within 2 s of cluster_state:ok ({:?} after create); stats {:?}",
                    started - created,
                    ok - created,
                    fleet.iter().map(|l| l.stats()).collect::<Vec<_>>()
                ));
            }
        } else if now > created + TOPOLOGY_PATIENCE {
            return Err(format!("run {run}: the cluster never reached ok"));
        }
        let i = (n % 3) as usize;
        let path = format!("http://example.test/settle/{n}");
        let first = send(&services[i], get(&path)).await;
        if first.x_cache() == "MISS" {
            fleet[i].wait_for_writes().await;
            let second = send(&services[(i + 1) % 3], get(&path)).await;
            if second.x_cache() == "HIT" {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// An origin that takes 100 ms, so concurrent requests overlap and must coalesce.
fn slow_origin(calls: &Calls) -> Origin {
    let calls = calls.clone();
    BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        let body = format!("{} #{n}", req.uri().path());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    }))
}

/// Which primary holds each of `paths`' entries: every primary's keys are read and the
/// entry whose body names the path is looked for (the origin puts the path in its body).
fn entry_owners(
    cluster: &Cluster,
    prefix: &str,
    paths: &[String],
) -> std::collections::HashMap<String, u16> {
    let mut owners = std::collections::HashMap::new();
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        if !node.command(&["ROLE"]).starts_with("master") {
            continue;
        }
        let keys = node.command(&["KEYS", &format!("{prefix}*")]);
        for key in keys.lines() {
            let value = node.command(&["GET", key]);
            for path in paths {
                if value.contains(&format!("{path} #")) {
                    owners.insert(path.clone(), node.port);
                }
            }
        }
    }
    owners
}

/// On a 3-primary Cluster with replicas a fleet caches and coalesces; with
/// a primary killed and its replica promoted, every request still succeeds, entries on the
/// other primaries keep being served as hits, and caching resumes on the promoted replica
/// without restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_replicas_keeps_caching_through_a_primary_failover() -> TestResult {
    if std::env::var("REDIS_CLUSTER_URL").is_ok() {
        return Ok(());
    }
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 1)).await?;
    let url = cluster.url();
    let prefix = unique_prefix("failover");
    let calls = Calls::default();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::connect(&url).await?;
        // Short store timeouts: calls to the killed primary wait them out until it is failed over.
        fleet.push(
            builder(store, "failover")
                .key_prefix(&prefix)
                .read_timeout(Duration::from_millis(500))
                .build()?,
        );
    }
    let services: Vec<_> = fleet.iter().map(|l| l.layer(slow_origin(&calls))).collect();

    // Fleet coalescing: 9 concurrent requests over 3 instances, one origin call.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..9 {
        let svc = services[i % 3].clone();
        set.spawn(async move { send(&svc, get("http://example.test/item/coalesced")).await });
    }
    while let Some(reply) = set.join_next().await {
        assert_eq!(reply?.status, http::StatusCode::OK);
    }
    assert_eq!(
        calls.get(),
        1,
        "one origin call for 9 requests across the fleet"
    );

    // 24 entries spread over the primaries, each a hit on another instance.
    let paths: Vec<String> = (0..24).map(|n| format!("/item/{n}")).collect();
    for (n, path) in paths.iter().enumerate() {
        let reply = send(&services[n % 3], get(&format!("http://example.test{path}"))).await;
        assert_eq!(reply.x_cache(), "MISS", "{path}");
    }
    for layer in &fleet {
        layer.wait_for_writes().await;
    }
    for (n, path) in paths.iter().enumerate() {
        let reply = send(
            &services[(n + 1) % 3],
            get(&format!("http://example.test{path}")),
        )
        .await;
        assert_eq!(reply.x_cache(), "HIT", "{path}");
    }
    // Purge by URL reaches the entry's slot.
    assert!(fleet[0].purge_url("http://example.test/item/0").await?);
    let before = calls.get();
    let reply = send(&services[0], get("http://example.test/item/0")).await;
    assert_ne!(reply.x_cache(), "HIT", "purged");
    assert_eq!(calls.get(), before + 1);
    for layer in &fleet {
        layer.wait_for_writes().await;
    }

    // Kill the primary holding /item/1's entry.
    let owners = entry_owners(&cluster, &prefix, &paths);
    let victim = owners["/item/1"];
    let survivors: Vec<&String> = paths
        .iter()
        .filter(|p| owners.get(*p).is_some_and(|o| *o != victim))
        .collect();
    assert!(
        !survivors.is_empty(),
        "entries on other primaries: {owners:?}"
    );
    cluster.kill(victim);
    let cluster = Arc::new(cluster);

    // Until a replica is promoted and the cluster is whole again, every request answers
    // (fail-open), whatever node its key is on.
    let deadline = Instant::now() + TOPOLOGY_PATIENCE;
    let mut outcomes = std::collections::BTreeMap::new();
    loop {
        for (n, path) in paths.iter().enumerate() {
            let reply = send(&services[n % 3], get(&format!("http://example.test{path}"))).await;
            assert_eq!(reply.status, http::StatusCode::OK, "{path} (fail-open)");
            *outcomes.entry(reply.x_cache().to_owned()).or_insert(0) += 1;
        }
        let cluster = Arc::clone(&cluster);
        if tokio::task::spawn_blocking(move || cluster.is_ok()).await? {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica was promoted; outcomes {outcomes:?}"
        );
    }

    // With the failed node still down: the entries on the other primaries are served as
    // hits again, and new keys cache on every primary, the promoted replica included,
    // without restarting an instance. Reconnection is awaited, not assumed.
    let mut round = 0;
    loop {
        round += 1;
        let mut pending = Vec::new();
        for (n, path) in survivors.iter().enumerate() {
            let reply = send(&services[n % 3], get(&format!("http://example.test{path}"))).await;
            if reply.x_cache() != "HIT" {
                pending.push(format!("{path}: {}", reply.x_cache()));
            }
        }
        for n in 0..12 {
            let url = format!("http://example.test/after/{round}/{n}");
            let first = send(&services[n % 3], get(&url)).await;
            fleet[n % 3].wait_for_writes().await;
            let second = send(&services[(n + 1) % 3], get(&url)).await;
            if (first.x_cache(), second.x_cache()) != ("MISS", "HIT") {
                pending.push(format!(
                    "{url}: {} then {}",
                    first.x_cache(),
                    second.x_cache()
                ));
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caching did not resume after the failover: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cluster
        .nodes
        .iter()
        .any(|n| n.port == victim && n.is_running()));
    Ok(())
}

/// A store connected through Sentinels (which require a password of their
/// own) caches across instances, keeps answering through `SENTINEL FAILOVER`, and caches on
/// the promoted replica afterwards without a restart: a new URL misses then hits, its entry is
/// on the new primary, and a purge there takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_and_caching_resumes() -> TestResult {
    use support::topology::Sentinels;
    let sentinels = Arc::new(tokio::task::spawn_blocking(Sentinels::start).await?);
    let url = sentinels.url();
    let prefix = unique_prefix("sentinel");
    let calls = Calls::default();
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&url).await?;
        fleet.push(
            builder(store, "sentinel")
                .key_prefix(&prefix)
                .read_timeout(Duration::from_millis(500))
                .build()?,
        );
    }
    let services: Vec<_> = fleet.iter().map(|l| l.layer(origin(&calls))).collect();
    let before = "http://example.test/sentinel/before";
    assert_eq!(send(&services[0], get(before)).await.x_cache(), "MISS");
    fleet[0].wait_for_writes().await;
    assert_eq!(send(&services[1], get(before)).await.x_cache(), "HIT");
    let old = sentinels.primary_port().expect("the Sentinels agree");

    // Requests keep being answered while the Sentinels switch the primary (fail-open).
    let switch = {
        let sentinels = Arc::clone(&sentinels);
        tokio::task::spawn_blocking(move || sentinels.failover())
    };
    let mut during = std::collections::BTreeMap::new();
    let mut n = 0;
    while !switch.is_finished() {
        n += 1;
        let reply = send(
            &services[n % 2],
            get(&format!("http://example.test/sentinel/during/{}", n % 8)),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::OK, "fail-open");
        *during.entry(reply.x_cache().to_owned()).or_insert(0) += 1;
        // Not a wait for anything: leaves the two shared cores to the Redis processes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new = switch.await?;
    assert_ne!(new, old);

    // Caching resumes on the new primary, with no restart: reconnection is awaited. It must
    // resume while the old primary still runs as a primary: Sentinel demotes it only after
    // it has reported the wrong role for 8 s, and a store that moves only then (when the
    // demotion closes its connections) has been writing fills and purges to a node about to
    // discard them for all that time.
    let deadline = Instant::now() + TOPOLOGY_PATIENCE;
    let mut round = 0;
    let resumed = loop {
        assert!(
            support::topology::command(old, &["ROLE"]).starts_with("master"),
            "the store did not follow the Sentinels' announcement of {new}: the old primary \
             {old} was demoted first; stats {:?}",
            fleet.iter().map(|l| l.stats()).collect::<Vec<_>>()
        );
        round += 1;
        let url = format!("http://example.test/sentinel/after/{round}");
        let first = send(&services[round % 2], get(&url)).await;
        fleet[round % 2].wait_for_writes().await;
        let second = send(&services[(round + 1) % 2], get(&url)).await;
        let entry = fleet[0].key_for(&get(&url)).expect("a cacheable request");
        let on_new = support::topology::command(new, &["EXISTS", entry.entry_key()]);
        if (first.x_cache(), second.x_cache(), on_new.as_str()) == ("MISS", "HIT", "1") {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "caching did not resume on the new primary {new}: {} then {}, entry there: {on_new}; \
             during the switch {during:?}; stats {:?}",
            first.x_cache(),
            second.x_cache(),
            fleet.iter().map(|l| l.stats()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A purge lands on the new primary too: the entry is gone there and not served again
    // (asked of the purging instance: another one's near tier may hold its copy for up to
    // the documented staleness bound).
    assert!(fleet[1].purge_url(&resumed).await?);
    let entry = fleet[1]
        .key_for(&get(&resumed))
        .expect("a cacheable request");
    assert_eq!(
        support::topology::command(new, &["EXISTS", entry.entry_key()]),
        "0"
    );
    let before = calls.get();
    assert_ne!(send(&services[1], get(&resumed)).await.x_cache(), "HIT");
    assert_eq!(calls.get(), before + 1);
    Ok(())
}

/// Over TLS with a private CA and a client certificate, as an ACL user
/// with only the documented rights, the store connects and the fleet caches (the scripts'
/// `PUBLISH` included: a follower is woken by the notice).
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_least_privilege_acl_user_caches_and_coalesces() -> TestResult {
    use support::topology::{tls_server, Pki};
    use tower_redis_cache::store::RedisTls;
    let pki = Pki::new();
    let server = tls_server(&pki);
    let url = format!("rediss://cache:cache-secret@127.0.0.1:{}", server.port);
    let tls = RedisTls::new()
        .ca_pem(pki.ca_pem.clone())
        .client_certificate(pki.client_pem.clone(), pki.client_key_pem.clone());
    let calls = Calls::default();
    let prefix = unique_prefix("tls").replace("t-", "trc-");
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(&url)?
            .tls(tls.clone())
            .connect()
            .await?;
        fleet.push(builder(store, "tls").key_prefix(&prefix).build()?);
    }
    let services: Vec<_> = fleet.iter().map(|l| l.layer(slow_origin(&calls))).collect();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let svc = services[i % 2].clone();
        set.spawn(async move { send(&svc, get("http://example.test/tls")).await });
    }
    while let Some(reply) = set.join_next().await {
        assert_eq!(reply?.status, http::StatusCode::OK);
    }
    assert_eq!(calls.get(), 1, "one origin call across the fleet");
    for layer in &fleet {
        layer.wait_for_writes().await;
    }
    assert_eq!(
        send(&services[1], get("http://example.test/tls"))
            .await
            .x_cache(),
        "HIT"
    );
    assert!(fleet[0].purge_url("http://example.test/tls").await?);
    let stats: Vec<_> = fleet.iter().map(|l| l.stats()).collect();
    assert!(stats.iter().all(|s| s.store_errors == 0), "{stats:?}");
    Ok(())
}

/// A wrong password and an untrusted server certificate are errors from `connect` that
/// name the cause, within the connect timeout; never a hang.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_misconfiguration_is_a_clear_error_from_connect() -> TestResult {
    use support::topology::{tls_server, Pki};
    use tower_redis_cache::store::RedisTls;
    let pki = Pki::new();
    let server = tls_server(&pki);
    let client = |ca: &str| {
        RedisTls::new()
            .ca_pem(ca.to_owned())
            .client_certificate(pki.client_pem.clone(), pki.client_key_pem.clone())
    };
    let attempt = |url: String, tls: RedisTls| async move {
        RedisStore::builder(&url)
            .expect("url")
            .tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
    };
    let wrong_password = attempt(
        format!("rediss://cache:nope@127.0.0.1:{}", server.port),
        client(&pki.ca_pem),
    )
    .await
    .expect_err("a wrong password must not connect");
    let message = format!("{wrong_password}");
    assert!(
        message.contains("WRONGPASS") || message.contains("Auth"),
        "{message}"
    );

    let untrusted = attempt(
        format!("rediss://cache:cache-secret@127.0.0.1:{}", server.port),
        client(&pki.stranger_ca_pem),
    )
    .await
    .expect_err("an untrusted certificate must not connect");
    let message = format!("{untrusted}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    let bad_bundle = RedisStore::builder("rediss://127.0.0.1:1")?
        .tls(RedisTls::new().ca_pem("not a certificate"))
        .connect_lazy()
        .expect_err("a CA bundle without certificates is rejected when the store is built");
    assert!(
        format!("{bad_bundle}").contains("CA bundle"),
        "{bad_bundle}"
    );
    Ok(())
}

/// An origin for the proxy binary: every answer cacheable for a minute, counted.
async fn http_origin(calls: &Calls) -> String {
    let calls = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let n = calls.add();
        async move {
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(axum::body::Body::from(format!("call {n}")))
                .expect("response")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("origin address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The proxy binary over TLS with a private CA and a client certificate (`--redis-ca`,
/// `--redis-cert`, `--redis-key`), as the least-privilege ACL user: a MISS on one proxy, then
/// a HIT on another. A wrong password and an untrusted certificate start it in fail-open mode
/// with the cause in a warning (`WRONGPASS`, the certificate error), never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_takes_redis_tls_flags() -> TestResult {
    use support::proxy::{client, get_with_host, Proxy};
    use support::topology::{tls_server, Pki};
    let pki = Pki::new();
    let server = tls_server(&pki);
    let calls = Calls::default();
    let upstream = http_origin(&calls).await;
    let (ca, stranger, cert, key) = (
        pki.file("ca.pem"),
        pki.file("stranger-ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let url = |password: &str| format!("rediss://cache:{password}@127.0.0.1:{}", server.port);
    let tls_flags = |ca: &str| {
        vec![
            "--redis-ca".to_owned(),
            ca.to_owned(),
            "--redis-cert".to_owned(),
            cert.clone(),
            "--redis-key".to_owned(),
            key.clone(),
        ]
    };
    let prefix = unique_prefix("proxytls").replace("t-", "trc-");
    let good = url("cache-secret");
    let flags = tls_flags(&ca);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = Proxy::start_redis_with(&upstream, &good, &prefix, &flags).await;
    let second = Proxy::start_redis_with(&upstream, &good, &prefix, &flags).await;
    let http = client();
    // One Host for both proxies: the key holds the authority the client asked for.
    let http_get = |url: String| {
        let http = http.clone();
        async move { get_with_host(&http, &url, "example.test").await }
    };
    let miss = http_get(first.url("/tls/page")).await;
    assert_eq!(miss.x_cache(), "MISS", "{}", first.stderr());
    let deadline = Instant::now() + TOPOLOGY_PATIENCE;
    // The fill's write is off the response path: awaited by asking until it is there.
    loop {
        let reply = http_get(second.url("/tls/page")).await;
        if reply.x_cache() == "HIT" {
            assert_eq!(
                reply.text(),
                "call 1",
                "{}\n{}",
                first.stderr(),
                second.stderr()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no HIT: {}", second.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.get(), 1);

    // Misconfigured: the proxy starts (fail-open after its connect timeout) and says why.
    for (redis, ca, cause) in [
        (url("wrong"), &ca, "wrongpass"),
        (good.clone(), &stranger, "certificate"),
    ] {
        let mut flags = tls_flags(ca);
        flags.extend(["--redis".to_owned(), redis]);
        flags.extend(["--store-connect-timeout-ms".to_owned(), "300".to_owned()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let proxy = Proxy::start(&upstream, &flags).await;
        proxy.wait_for_stderr("Redis connection failed").await;
        let warned = proxy
            .stderr()
            .lines()
            .any(|line| line.contains("WARN") && line.to_lowercase().contains(cause));
        assert!(warned, "no warning naming {cause}: {}", proxy.stderr());
        let reply = http_get(proxy.url("/tls/other")).await;
        assert_eq!(reply.status, http::StatusCode::OK);
        assert_eq!(reply.x_cache(), "BYPASS");
    }
    Ok(())
}

/// While a primary is down (here for good: it has no replica, so the Cluster
/// client cannot reconnect while `CLUSTER SLOTS` still lists it), the entries on the other
/// primaries keep being served as hits on every instance, and requests for the dead primary's
/// keys still succeed (fail-open).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_on_live_primaries_stay_hits_while_another_primary_is_down() -> TestResult {
    if std::env::var("REDIS_CLUSTER_URL").is_ok() {
        return Ok(());
    }
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 0)).await?;
    let url = cluster.url();
    let prefix = unique_prefix("partition");
    let calls = Calls::default();
    let mut stores = Vec::new();
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&url).await?;
        stores.push(store.clone());
        fleet.push(builder(store, "partition").key_prefix(&prefix).build()?);
    }
    let services: Vec<_> = fleet.iter().map(|l| l.layer(slow_origin(&calls))).collect();
    let paths: Vec<String> = (0..24).map(|n| format!("/item/{n}")).collect();
    let url_of = |path: &str| format!("http://example.test{path}");
    for (n, path) in paths.iter().enumerate() {
        let reply = send(&services[n % 2], get(&url_of(path))).await;
        assert_eq!(reply.x_cache(), "MISS", "{path}");
    }
    for layer in &fleet {
        layer.wait_for_writes().await;
    }
    let owners = entry_owners(&cluster, &prefix, &paths);
    let victim = owners["/item/1"];
    let (lost, live): (Vec<&String>, Vec<&String>) =
        paths.iter().partition(|p| owners.get(*p) == Some(&victim));
    assert!(!live.is_empty() && !lost.is_empty(), "owners {owners:?}");

    cluster.kill(victim);
    // Await the event the fallback is for: the Cluster client has noticed and is down.
    let deadline = Instant::now() + TOPOLOGY_PATIENCE;
    while stores.iter().any(RedisStore::is_connected) {
        assert!(
            Instant::now() < deadline,
            "the Cluster client never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let origin_calls = calls.get();
    for round in 0..3 {
        for (n, path) in live.iter().enumerate() {
            for service in [&services[n % 2], &services[(n + 1) % 2]] {
                let reply = send(service, get(&url_of(path))).await;
                assert_eq!(reply.x_cache(), "HIT", "{path}, round {round}");
                assert!(reply.body.starts_with(format!("{path} #").as_bytes()));
            }
        }
        for (n, path) in lost.iter().enumerate() {
            let reply = send(&services[n % 2], get(&url_of(path))).await;
            assert_eq!(reply.status, http::StatusCode::OK, "{path} (fail-open)");
        }
        assert!(
            stores.iter().all(|s| !s.is_connected()),
            "the Cluster client must still be down for the test to mean anything"
        );
    }
    assert_eq!(
        calls.get() - origin_calls,
        3 * lost.len(),
        "only the dead primary's keys reach the origin"
    );
    Ok(())
}
