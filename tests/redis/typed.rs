//! The typed cache-aside API on real Redis (and a real 3-node Cluster): fleet-wide single
//! loads, shared loader errors, fail-safe and soft timeouts, named locks, batch reads, prefix
//! deletes, schema drift, fail-open; and the `cache_aside` example in process.

use crate::support;

#[path = "../../examples/cache_aside.rs"]
#[allow(dead_code)]
mod cache_aside_example;

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tower_redis_cache::{
    Cache, CacheValue, GetOrSetError, GetOrSetOptions, KeyBuilder, LockError, LockOptions,
    MemoryStore, OptionsError, RedisStore,
};

/// A typed cache for tests: its own Redis connections, a shared prefix, and generous store
/// timeouts (a loaded machine must not turn slow calls into fail-open loads these tests count).
async fn cache(url: &str, prefix: &str) -> Cache {
    let store = RedisStore::builder(url)
        .expect("redis url")
        .connect()
        .await
        .expect("connect to test redis");
    Cache::builder(store)
        .key_prefix(prefix)
        .read_timeout(Duration::from_secs(2))
        .write_timeout(Duration::from_secs(2))
        .build()
        .expect("valid cache settings")
}

/// A raw fred client on `url` (any node of a cluster, addressed alone).
async fn raw(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect raw client");
    client
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u32,
    name: String,
}

impl CacheValue for Product {
    const NAME: &'static str = "product";
}

fn product(id: u32, name: &str) -> Product {
    Product {
        id,
        name: name.to_owned(),
    }
}

/// A gate loaders wait at until the test opens it, once, for every waiter (now or later).
#[derive(Clone)]
struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

/// A loader error, not `Clone`: every waiter of the failed load shares it through an `Arc`.
#[derive(Debug, PartialEq)]
struct Boom(usize);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boom {}", self.0)
    }
}

impl std::error::Error for Boom {}

/// The loader error `Boom(n)` as `get_or_set` reports it.
fn boom(n: usize) -> GetOrSetError<Boom> {
    GetOrSetError::Loader(Arc::new(Boom(n)))
}

/// Built options, or the test fails.
fn opts<M>(built: Result<GetOrSetOptions<M>, OptionsError>) -> GetOrSetOptions<M> {
    built.expect("valid options")
}

/// Waits (bounded) until `done` holds: for state that changes on its own schedule (a value's
/// expiry), where there is no event to await.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_of_a_hundred_callers_run_the_loader_once() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-once");
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(cache(server.url(), &prefix).await);
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let started = Arc::new(Barrier::new(401));
    let mut callers = JoinSet::new();
    for i in 0..400 {
        let (cache, runs, gate, started) = (
            caches[i % 4].clone(),
            Arc::clone(&runs),
            gate.clone(),
            Arc::clone(&started),
        );
        callers.spawn(async move {
            started.wait().await;
            // The loader borrows the task's counter and gate: it is polled in this task.
            cache
                .typed::<Product>()
                .get_or_set("product:7", Duration::from_secs(60), async {
                    runs.fetch_add(1, SeqCst);
                    gate.passed().await;
                    Ok::<_, Boom>(product(7, "lamp"))
                })
                .await
        });
    }
    started.wait().await;
    // Every caller is on its way; let the loader (and any a bug let through) answer.
    gate.open();
    let mut answers = 0;
    while let Some(answer) = callers.join_next().await {
        assert_eq!(answer?, Ok(product(7, "lamp")));
        answers += 1;
    }
    assert_eq!(answers, 400);
    assert_eq!(runs.load(SeqCst), 1, "the loader ran once for the fleet");
    let loads: u64 = caches.iter().map(|c| c.stats().typed_loads).sum();
    assert_eq!(loads, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_nothing_is_stored_and_the_next_call_loads(
) -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-error");
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(cache(server.url(), &prefix).await);
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let started = Arc::new(Barrier::new(101));
    let mut callers = JoinSet::new();
    for i in 0..100 {
        let (cache, runs, gate, started) = (
            caches[i % 4].clone(),
            Arc::clone(&runs),
            gate.clone(),
            Arc::clone(&started),
        );
        callers.spawn(async move {
            started.wait().await;
            cache
                .typed::<Product>()
                .get_or_set("flaky", Duration::from_secs(60), async {
                    let run = runs.fetch_add(1, SeqCst);
                    gate.passed().await;
                    Err::<Product, _>(Boom(run))
                })
                .await
        });
    }
    started.wait().await;
    gate.open();
    // Every caller gets an error, each from a run that happened; a run's error is shared by
    // the callers that waited on it.
    let mut per_run = std::collections::BTreeMap::<usize, usize>::new();
    while let Some(answer) = callers.join_next().await {
        let Err(GetOrSetError::Loader(error)) = answer? else {
            panic!("a failed load answered a value");
        };
        *per_run.entry(error.0).or_default() += 1;
    }
    eprintln!("loader error: callers per run {per_run:?}");
    assert_eq!(per_run.values().sum::<usize>(), 100);
    let loads = runs.load(SeqCst);
    assert_eq!(per_run.len(), loads, "every run's error reached a caller");
    assert!(
        per_run.values().any(|&callers| callers > 1),
        "one run's error reached several waiters: {per_run:?}"
    );
    // Nothing was stored, and the next call runs the loader again.
    let raw = raw(server.url()).await;
    let stored: i64 = raw.exists(caches[0].store_key("flaky")).await?;
    assert_eq!(stored, 0);
    let value = caches[1]
        .get_or_set("flaky", Duration::from_secs(60), async {
            runs.fetch_add(1, SeqCst);
            Ok::<_, Boom>(product(1, "fixed"))
        })
        .await;
    assert_eq!(value, Ok(product(1, "fixed")));
    assert_eq!(runs.load(SeqCst), loads + 1);
    assert_eq!(
        caches[2].get::<Product>("flaky").await?,
        Some(product(1, "fixed"))
    );
    Ok(())
}

/// Stores `value` under `key` with a 1 ms ttl and a fail-safe of an hour, then waits for the
/// ttl to pass: a value "past its ttl", kept for fail-safe.
async fn expired_but_kept(cache: &Cache, key: &str, value: Product) {
    let options = opts(
        GetOrSetOptions::builder(Duration::from_millis(1))
            .fail_safe(Duration::from_secs(3600))
            .build(),
    );
    let stored = cache
        .get_or_set(key, options, async { Ok::<_, Boom>(value) })
        .await;
    assert!(stored.is_ok());
    eventually("the value's ttl to pass", || async {
        cache.get::<Product>(key).await.ok() == Some(None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_answers_the_last_value_when_the_loader_fails_or_hangs() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-failsafe")).await;
    expired_but_kept(&cache, "p", product(1, "last good")).await;

    // A short throttle, so the second failing call below runs its loader again.
    let options = GetOrSetOptions::builder(Duration::from_secs(60))
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_millis(1));
    let failing = cache
        .get_or_set("p", opts(options.build()), async {
            Err::<Product, _>(Boom(0))
        })
        .await;
    assert_eq!(failing, Ok(product(1, "last good")));
    eventually("the throttle window to pass", || async {
        cache.get::<Product>("p").await.ok() == Some(None)
    })
    .await;

    // A loader past its hard timeout is abandoned, and the last value answered too.
    let hard = opts(options.hard_timeout(Duration::from_millis(50)).build());
    let hanging = cache
        .get_or_set("p", hard, std::future::pending::<Result<Product, Boom>>())
        .await;
    assert_eq!(hanging, Ok(product(1, "last good")));

    // Without fail-safe the loader's error (or the timeout) is the answer.
    let plain = GetOrSetOptions::builder(Duration::from_secs(60));
    let failed = cache
        .get_or_set("q", opts(plain.build()), async {
            Err::<Product, _>(Boom(9))
        })
        .await;
    assert_eq!(failed, Err(boom(9)));
    let timed_out = cache
        .get_or_set(
            "other",
            opts(plain.hard_timeout(Duration::from_millis(20)).build()),
            std::future::pending::<Result<Product, Boom>>(),
        )
        .await;
    assert_eq!(
        timed_out,
        Err(GetOrSetError::HardTimeout(Duration::from_millis(20)))
    );
    let stats = cache.stats();
    assert_eq!(stats.typed_stale, 2);
    assert_eq!(stats.typed_load_errors, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_answers_stale_and_the_loader_still_refreshes_the_value() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-soft")).await;
    expired_but_kept(&cache, "p", product(1, "old")).await;

    let gate = Gate::new();
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = GetOrSetOptions::builder(Duration::from_secs(60))
        .fail_safe(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(20));
    let (loader_gate, loader_saw) = (gate.clone(), Arc::clone(&opened));
    // A soft timeout may finish the load in the background: the loader is `'static`.
    let answer = cache
        .get_or_set("p", opts(options.build()), async move {
            loader_gate.passed().await;
            assert!(
                loader_saw.load(SeqCst),
                "the gate opens only after the call answered"
            );
            Ok::<_, Boom>(product(1, "new"))
        })
        .await;
    // The call answered while the loader was still blocked on the gate.
    assert_eq!(answer, Ok(product(1, "old")));
    opened.store(true, SeqCst);
    gate.open();
    cache.wait_for_background().await;
    assert_eq!(cache.get::<Product>("p").await?, Some(product(1, "new")));
    assert_eq!(cache.stats().typed_refreshes, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-swr")).await;
    let window = Duration::from_secs(3600);
    let short = opts(
        GetOrSetOptions::builder(Duration::from_millis(1))
            .stale_while_revalidate(window)
            .build(),
    );
    let first = cache
        .get_or_set("p", short, async { Ok::<_, Boom>(product(1, "v1")) })
        .await;
    assert_eq!(first, Ok(product(1, "v1")));
    eventually("the value to go stale", || async {
        cache.get::<Product>("p").await.ok() == Some(None)
    })
    .await;
    let options = opts(
        GetOrSetOptions::builder(Duration::from_secs(60))
            .stale_while_revalidate(window)
            .build(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let mut answers = Vec::new();
    for _ in 0..5 {
        let loads = Arc::clone(&loads);
        let answer = cache
            .get_or_set("p", &options, async move {
                loads.fetch_add(1, SeqCst);
                Ok::<_, Boom>(product(1, "v2"))
            })
            .await;
        answers.push(answer.expect("a value"));
    }
    assert_eq!(answers[0], product(1, "v1"), "stale answered at once");
    cache.wait_for_background().await;
    assert_eq!(loads.load(SeqCst), 1, "one background refresh");
    assert_eq!(cache.get::<Product>("p").await?, Some(product(1, "v2")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_replaces_a_fresh_value_in_the_background() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-eager")).await;
    // A fraction this small is passed at once: every hit refreshes.
    let options = opts(
        GetOrSetOptions::builder(Duration::from_secs(60))
            .eager_refresh(1e-9)
            .build(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |name: &'static str| {
        let loads = Arc::clone(&loads);
        async move {
            loads.fetch_add(1, SeqCst);
            Ok::<_, Boom>(product(1, name))
        }
    };
    let first = cache.get_or_set("p", options, load("v1")).await;
    assert_eq!(first, Ok(product(1, "v1")));
    let hit = cache.get_or_set("p", options, load("v2")).await;
    assert_eq!(hit, Ok(product(1, "v1")), "the hit answers at once");
    cache.wait_for_background().await;
    assert_eq!(loads.load(SeqCst), 2);
    assert_eq!(cache.get::<Product>("p").await?, Some(product(1, "v2")));
    assert_eq!(cache.stats().typed_refreshes, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_lock_left_by_a_dead_holder_is_taken_over_once_it_expires() -> TestResult {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(server.url()).await?;
    let cache = Cache::builder(store)
        .key_prefix(unique_prefix("typed-takeover"))
        .read_timeout(Duration::from_secs(2))
        .write_timeout(Duration::from_secs(2))
        .fill_lock_ttl(Duration::from_millis(200))
        .build()?;
    let raw = raw(server.url()).await;
    // A holder that took the key's fill lock and died: no notice will ever come.
    let lock = cache.store_key("p").replacen(":v:{", ":f:{", 1);
    let _: () = raw
        .set(&lock, "dead", Some(Expiration::PX(300)), None, false)
        .await?;
    let value = cache
        .get_or_set("p", Duration::from_secs(60), async {
            Ok::<_, Boom>(product(1, "mine"))
        })
        .await;
    assert_eq!(value, Ok(product(1, "mine")));
    let stats = cache.stats();
    assert_eq!((stats.lock_waits, stats.lock_takeovers), (1, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_serialises_read_modify_write_across_two_clients() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-lock");
    let sides = [
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    ];
    let raws = [raw(server.url()).await, raw(server.url()).await];
    let counter = format!("{prefix}:counter");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..8 {
        let (cache, raw, counter) = (
            sides[task % 2].clone(),
            raws[task % 2].clone(),
            counter.clone(),
        );
        tasks.spawn(async move {
            let options = LockOptions::new(Duration::from_secs(5)).wait(Duration::from_secs(60));
            for _ in 0..50 {
                cache
                    .with_lock("counter", &options, |_| async {
                        // Not atomic on purpose: only the lock keeps increments from being lost.
                        let n: Option<i64> = raw.get(&counter).await.expect("GET");
                        tokio::task::yield_now().await;
                        let _: () = raw
                            .set(&counter, n.unwrap_or(0) + 1, None, None, false)
                            .await
                            .expect("SET");
                    })
                    .await
                    .expect("the lock within its wait");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let total: i64 = raws[0].get(&counter).await?;
    eprintln!(
        "with_lock: 400 locked increments in {:?}",
        started.elapsed()
    );
    assert_eq!(total, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lock_expired_cannot_release_the_next_holders_lock() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-fence");
    let (a, b) = (
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    );
    let raw = raw(server.url()).await;
    let options = LockOptions::new(Duration::from_secs(30));
    let first = a.lock("job", options).await?;
    // The first holder's lock expires (as after a long pause): gone from Redis.
    let key = first.key().to_owned();
    let _: i64 = raw.del(&key).await?;
    let second = b.lock("job", options).await?;
    first.release().await?;
    let holder: Option<String> = raw.get(&key).await?;
    assert!(
        holder.is_some(),
        "the second holder's lock survived the first's release"
    );
    assert!(matches!(a.lock("job", options).await, Err(LockError::Busy)));
    second.release().await?;
    let holder: Option<String> = raw.get(&key).await?;
    assert_eq!(holder, None);
    // A guard dropped without release() is released in a spawned task.
    let dropped = a.lock("job", options).await?;
    drop(dropped);
    let waited = b.lock("job", options.wait(Duration::from_secs(10))).await?;
    waited.release().await?;
    Ok(())
}

/// `cmdstat_mget:calls=` from `INFO commandstats`, on one server.
async fn mget_calls(client: &Client) -> u64 {
    use fred::types::{ClusterHash, CustomCommand};
    let info: String = client
        .custom(
            CustomCommand::new_static("INFO", ClusterHash::Random, false),
            vec!["commandstats"],
        )
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_mget:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Writes 1,000 products (but not every 100th), garbage under 3 keys; reads them back with
/// one `get_many`.
async fn get_many_round(cache: &Cache, raw_writer: &Client) -> (Vec<String>, Vec<Option<Product>>) {
    let keys: Vec<String> = (0..1000)
        .map(|i| KeyBuilder::new("p").id(i).build())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if i % 100 != 0 {
            let id = u32::try_from(i).expect("small");
            cache
                .set(key, &product(id, "x"), Duration::from_secs(60))
                .await
                .expect("set");
        }
    }
    for i in [1, 2, 3] {
        let _: () = raw_writer
            .set(
                cache.store_key(&keys[i]),
                "not an envelope",
                None,
                None,
                false,
            )
            .await
            .expect("garbage");
    }
    let values = cache.get_many::<Product>(&keys).await.expect("get_many");
    (keys, values)
}

fn check_get_many(cache: &Cache, values: &[Option<Product>]) {
    assert_eq!(values.len(), 1000);
    for (i, value) in values.iter().enumerate() {
        let expected = (i % 100 != 0 && !(1..=3).contains(&i))
            .then(|| product(u32::try_from(i).expect("small"), "x"));
        assert_eq!(value, &expected, "key {i}");
    }
    assert_eq!(cache.stats().typed_decode_failures, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_is_one_mget_on_a_server_and_none_for_missing_and_undecodable() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-mget")).await;
    let raw = raw(server.url()).await;
    let before = mget_calls(&raw).await;
    let (keys, values) = get_many_round(&cache, &raw).await;
    assert_eq!(mget_calls(&raw).await - before, 1, "one round trip");
    check_get_many(&cache, &values);
    let garbage: i64 = raw.exists(cache.store_key(&keys[1])).await?;
    assert_eq!(garbage, 0, "the undecodable value was deleted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_get_many_is_one_mget_per_slot_and_delete_prefix_reaches_every_primary(
) -> TestResult {
    let cluster = RedisCluster::start(3).await;
    let prefix = unique_prefix("typed-cluster");
    let cache = self::cache(cluster.url(), &prefix).await;
    let nodes = {
        let mut nodes = Vec::new();
        for port in cluster.ports() {
            nodes.push(raw(&format!("redis://127.0.0.1:{port}")).await);
        }
        nodes
    };
    let writer = raw(cluster.url()).await;
    let mut before = 0;
    for node in &nodes {
        before += mget_calls(node).await;
    }
    let (keys, values) = get_many_round(&cache, &writer).await;
    let mut after = 0;
    for node in &nodes {
        after += mget_calls(node).await;
    }
    let slots: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| fred::util::redis_keyslot(cache.store_key(k).as_bytes()))
        .collect();
    eprintln!(
        "get_many of 1000 keys on 3 primaries: {} MGET calls, {} slot groups",
        after - before,
        slots.len()
    );
    assert_eq!(
        after - before,
        slots.len() as u64,
        "one MGET per slot group"
    );
    check_get_many(&cache, &values);

    // Loads coalesce across instances on a cluster too: a value and its fill lock share a
    // slot, so the lock-or-read and finish scripts run there.
    let others = [
        self::cache(cluster.url(), &prefix).await,
        self::cache(cluster.url(), &prefix).await,
    ];
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = JoinSet::new();
    for i in 0..60 {
        let cache = [&cache, &others[0], &others[1]][i % 3].clone();
        let runs = Arc::clone(&runs);
        callers.spawn(async move {
            let key = format!("shared:{}", i % 5);
            cache
                .get_or_set(&key, Duration::from_secs(60), async {
                    runs.fetch_add(1, SeqCst);
                    Ok::<_, Boom>(product(5, "shared"))
                })
                .await
        });
    }
    while let Some(answer) = callers.join_next().await {
        assert_eq!(answer?, Ok(product(5, "shared")));
    }
    assert_eq!(runs.load(SeqCst), 5, "one load per key");
    let lock = LockOptions::new(Duration::from_secs(5)).wait(Duration::from_secs(10));
    assert_eq!(others[0].with_lock("job", lock, |_| async { 1 }).await?, 1);

    // Keys spread over all three primaries; only the literal prefix goes.
    let doomed = ["user:1*", "user:1*a", "user:1*b:c", "user:1*{x}"];
    let kept = [
        "user:10",
        "user:1x",
        "user:1",
        "user:1a*",
        "user:\\1*",
        "user:2*",
    ];
    for key in doomed.iter().chain(&kept) {
        cache
            .set(key, &product(0, key), Duration::from_secs(60))
            .await?;
    }
    cache.delete_prefix("user:1*").await?;
    for key in doomed {
        assert_eq!(cache.get::<Product>(key).await?, None, "{key} deleted");
    }
    for key in kept {
        assert_eq!(
            cache.get::<Product>(key).await?,
            Some(product(0, key)),
            "{key} kept"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prefix_takes_glob_characters_literally() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-prefix")).await;
    let doomed = ["user:1*", "user:1*a", "user:1*?[x]"];
    let kept = ["user:10", "user:1x", "user:1", "user:1?", "user:1[*]"];
    for key in doomed.iter().chain(&kept) {
        cache
            .set(key, &product(0, key), Duration::from_secs(60))
            .await?;
    }
    cache.delete_prefix("user:1*").await?;
    for key in doomed {
        assert_eq!(cache.get::<Product>(key).await?, None, "{key} deleted");
    }
    for key in kept {
        assert!(cache.get::<Product>(key).await?.is_some(), "{key} kept");
    }
    Ok(())
}

mod v1 {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Profile {
        pub id: u32,
        pub name: String,
    }

    impl tower_redis_cache::CacheValue for Profile {
        const NAME: &'static str = "profile";
        const VERSION: u32 = 1;
    }
}

mod v2 {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Profile {
        pub id: u32,
        pub email: String,
        pub verified: bool,
    }

    impl tower_redis_cache::CacheValue for Profile {
        const NAME: &'static str = "profile";
        const VERSION: u32 = 2;
    }
}

/// A deploy that changed the shape but forgot to bump the version: same identity as v1.
mod unversioned {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Profile {
        pub id: u32,
        pub email: String,
    }

    impl tower_redis_cache::CacheValue for Profile {
        const NAME: &'static str = "profile";
        const VERSION: u32 = 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_under_another_identity_is_a_miss_that_never_deletes() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-drift");
    let (old, new) = (
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    );
    let raw = raw(server.url()).await;
    let profile = v1::Profile {
        id: 1,
        name: "Ada".into(),
    };
    old.set("profile:1", &profile, Duration::from_secs(60))
        .await?;
    // The new deploy reads it as its own version: a miss, and the value stays.
    for _ in 0..3 {
        assert_eq!(new.get::<v2::Profile>("profile:1").await?, None);
        assert_eq!(new.get_many::<u64>(["profile:1"]).await?, vec![None]);
    }
    let left: i64 = raw.exists(new.store_key("profile:1")).await?;
    assert_eq!(left, 1, "a read under another identity deleted the value");
    let stats = new.stats();
    assert_eq!((stats.typed_foreign, stats.typed_decode_failures), (6, 0));
    // The original reader still hits.
    assert_eq!(
        old.get::<v1::Profile>("profile:1").await?,
        Some(profile.clone())
    );

    // get_or_set under the new version loads and replaces it (the next write wins).
    let loads = AtomicUsize::new(0);
    let refilled = new
        .get_or_set("profile:1", Duration::from_secs(60), async {
            loads.fetch_add(1, SeqCst);
            Ok::<_, Boom>(v2::Profile {
                id: 1,
                email: "ada@example.com".into(),
                verified: true,
            })
        })
        .await;
    assert_eq!(refilled.as_ref().map(|p| p.verified), Ok(true));
    assert_eq!(loads.load(SeqCst), 1);
    assert_eq!(new.get::<v2::Profile>("profile:1").await?, refilled.ok());

    // Same identity, another shape (a version bump forgotten): corrupt, deleted and counted.
    old.set("profile:2", &profile, Duration::from_secs(60))
        .await?;
    assert_eq!(new.get::<unversioned::Profile>("profile:2").await?, None);
    let left: i64 = raw.exists(new.store_key("profile:2")).await?;
    assert_eq!(left, 0, "the undecodable value was deleted");
    assert_eq!(new.stats().typed_decode_failures, 1);

    // A validator that rejects what is stored: a miss, refilled, counted.
    let profiles = new
        .typed::<v2::Profile>()
        .validate(|p| p.email.ends_with("@example.org"));
    let valid = profiles
        .get_or_set("profile:1", Duration::from_secs(60), async {
            Ok::<_, Boom>(v2::Profile {
                id: 1,
                email: "ada@example.org".into(),
                verified: true,
            })
        })
        .await;
    assert_eq!(valid.map(|p| p.email), Ok("ada@example.org".to_owned()));
    assert_eq!(new.stats().typed_rejected, 1);
    Ok(())
}

/// One product type as two modules (or two services) declare it: the identity is the
/// `CacheValue` name, not the Rust path.
mod before_the_move {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Product {
        pub id: u32,
    }

    impl tower_redis_cache::CacheValue for Product {
        const NAME: &'static str = "catalog-product";
    }
}

mod after_the_move {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Product {
        pub id: u32,
    }

    impl tower_redis_cache::CacheValue for Product {
        const NAME: &'static str = "catalog-product";
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_type_between_modules_keeps_its_hits_and_strs_read_back() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-moved");
    let (before, after) = (
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    );
    before
        .set(
            "p:1",
            &before_the_move::Product { id: 1 },
            Duration::from_secs(60),
        )
        .await?;
    let loads = AtomicUsize::new(0);
    let read = after
        .typed::<after_the_move::Product>()
        .get_or_set("p:1", Duration::from_secs(60), async {
            loads.fetch_add(1, SeqCst);
            Ok::<_, Boom>(after_the_move::Product { id: 99 })
        })
        .await;
    assert_eq!(read, Ok(after_the_move::Product { id: 1 }));
    assert_eq!(loads.load(SeqCst), 0, "a hit after the move");

    // `set(&"hello")` is read back as a String, and a `String` cache takes `&str`.
    before
        .set("greeting", &"hello", Duration::from_secs(60))
        .await?;
    assert_eq!(
        after.get::<String>("greeting").await?.as_deref(),
        Some("hello")
    );
    let strings = after.typed::<String>();
    strings.set("other", "hi", Duration::from_secs(60)).await?;
    assert_eq!(strings.get("other").await?.as_deref(), Some("hi"));
    // And `set(&42i32)` read as u64 is a miss that leaves it for the i32 reader.
    before.set("n", &42i32, Duration::from_secs(60)).await?;
    assert_eq!(after.get::<u64>("n").await?, None);
    assert_eq!(after.get::<i32>("n").await?, Some(42));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refuse_a_zero_ttl_and_get_many_takes_a_hash_set() -> TestResult {
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-set")).await;
    let products = cache.typed::<Product>();
    products
        .set("p:1", &product(1, "a"), Duration::from_secs(60))
        .await?;
    let zero = products.set("p:1", &product(1, "b"), Duration::ZERO).await;
    assert!(matches!(zero, Err(tower_redis_cache::CacheError::ZeroTtl)));
    assert_eq!(products.get("p:1").await?, Some(product(1, "a")), "kept");
    let zero = products
        .get_or_set("p:2", Duration::ZERO, async {
            Ok::<_, Boom>(product(2, "b"))
        })
        .await;
    assert_eq!(
        zero,
        Err(GetOrSetError::InvalidOptions(OptionsError::ZeroTtl))
    );

    products
        .set_many(
            [("p:2", product(2, "b")), ("p:3", product(3, "c"))],
            tower_redis_cache::Expiry::Never,
        )
        .await?;
    let keys: std::collections::HashSet<String> =
        ["p:1", "p:2", "p:3", "p:4"].map(String::from).into();
    let found = products.get_many(&keys).await?;
    assert_eq!(found.iter().flatten().count(), 3);
    assert_eq!(products.delete_many(&keys).await?, 3);
    assert_eq!(products.get_many(&keys).await?, vec![None; 4]);

    // set_with keeps the options' fail-safe window: a later failing load answers it.
    let options = opts(
        GetOrSetOptions::builder(Duration::from_millis(1))
            .fail_safe(Duration::from_secs(3600))
            .build(),
    );
    products
        .set_with("p:5", &product(5, "kept"), &options)
        .await?;
    eventually("the ttl to pass", || async {
        products.get("p:5").await.ok() == Some(None)
    })
    .await;
    let failing = products
        .get_or_set("p:5", &options, async { Err::<Product, _>(Boom(1)) })
        .await;
    assert_eq!(failing, Ok(product(5, "kept")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_sets_its_ttl_skips_storing_and_nothing_gets_the_negative_ttl() -> TestResult {
    use tower_redis_cache::Loaded;
    let server = RedisServer::start().await;
    let cache = cache(server.url(), &unique_prefix("typed-say")).await;
    let raw = raw(server.url()).await;
    let products = cache.typed::<Product>();
    let pttl = |key: &str| {
        let (raw, key) = (raw.clone(), cache.store_key(key));
        async move { raw.pttl::<i64, _>(key).await.expect("PTTL") }
    };

    // The loader's ttl wins over the options'.
    let own = products
        .get_or_set("own", Duration::from_secs(3600), async {
            Ok::<_, Boom>(Loaded::new(product(1, "short")).ttl(Duration::from_secs(5)))
        })
        .await;
    assert_eq!(own, Ok(product(1, "short")));
    let left = pttl("own").await;
    assert!(
        0 < left && left <= 5_000,
        "kept for the loader's ttl: {left} ms"
    );

    // Skipped: answered, not stored, so the next call loads again.
    let loads = AtomicUsize::new(0);
    for _ in 0..2 {
        let skipped = products
            .get_or_set("draft", Duration::from_secs(60), async {
                loads.fetch_add(1, SeqCst);
                Ok::<_, Boom>(Loaded::new(product(2, "draft")).skip_store())
            })
            .await;
        assert_eq!(skipped, Ok(product(2, "draft")));
    }
    assert_eq!(loads.load(SeqCst), 2);
    let stored: i64 = raw.exists(cache.store_key("draft")).await?;
    assert_eq!(stored, 0);

    // `None` is kept for the negative ttl, a value for the ttl.
    let options = opts(
        GetOrSetOptions::builder(Duration::from_secs(3600))
            .negative_ttl(Duration::from_secs(5))
            .build(),
    );
    let maybe = cache.typed::<Option<Product>>();
    let missing = maybe
        .get_or_set("row:404", options, async { Ok::<_, Boom>(None) })
        .await;
    assert_eq!(missing, Ok(None));
    let left = pttl("row:404").await;
    assert!(
        0 < left && left <= 5_000,
        "None kept for the negative ttl: {left} ms"
    );
    let present = maybe
        .get_or_set("row:1", options, async {
            Ok::<_, Boom>(Some(product(1, "x")))
        })
        .await;
    assert_eq!(present, Ok(Some(product(1, "x"))));
    assert!(pttl("row:1").await > 5_000, "a value kept for the ttl");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_runs_once_per_fail_safe_throttle_window() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-throttle");
    let (a, b) = (
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    );
    expired_but_kept(&a, "p", product(1, "last good")).await;
    let options = opts(
        GetOrSetOptions::builder(Duration::from_secs(60))
            .fail_safe(Duration::from_secs(3600))
            .fail_safe_throttle(Duration::from_secs(60))
            .build(),
    );
    let runs = AtomicUsize::new(0);
    // 100 calls, spread over two instances, within far less than the window.
    for i in 0..100 {
        let cache = if i % 2 == 0 { &a } else { &b };
        let answer = cache
            .get_or_set("p", options, async {
                runs.fetch_add(1, SeqCst);
                Err::<Product, _>(Boom(i))
            })
            .await;
        assert_eq!(answer, Ok(product(1, "last good")));
    }
    assert_eq!(
        runs.load(SeqCst),
        1,
        "the failing loader ran once in the window"
    );
    assert_eq!(a.stats().typed_throttled + b.stats().typed_throttled, 1);
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn with_lock_reports_lost_when_the_ttl_elapses_during_the_work() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-lost");
    let (a, b) = (
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    );
    let options = LockOptions::new(Duration::from_millis(100));
    let lost = a
        .with_lock("job", options, |held| async move {
            // A stall of the whole thread (a long pause): the extender cannot run either.
            std::thread::sleep(Duration::from_millis(400));
            held.fencing_token()
        })
        .await;
    assert!(matches!(lost, Err(LockError::Lost)), "{lost:?}");
    assert_eq!(a.stats().typed_lock_lost, 1);
    // The lock is free for the next holder.
    let next = b.lock("job", options).await?;
    next.release().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_two_processes() -> TestResult {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("typed-fencing");
    let sides = [
        cache(server.url(), &prefix).await,
        cache(server.url(), &prefix).await,
    ];
    let options = LockOptions::new(Duration::from_secs(5)).wait(Duration::from_secs(30));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for task in 0..4 {
        let (cache, tokens) = (sides[task % 2].clone(), Arc::clone(&tokens));
        tasks.spawn(async move {
            let tokens = &tokens;
            for _ in 0..10 {
                cache
                    .with_lock("fenced", &options, |held| async move {
                        // In lock order: the holder records its token while holding.
                        tokens.lock().expect("tokens").push(held.fencing_token());
                    })
                    .await
                    .expect("the lock within its wait");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let tokens = tokens.lock().expect("tokens").clone();
    assert_eq!(tokens.len(), 40);
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens in holding order strictly increase: {tokens:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_means_the_loader_runs() -> TestResult {
    let mut server = RedisServer::start().await;
    if !server.is_local() {
        return Ok(());
    }
    let cache = cache(server.url(), &unique_prefix("typed-down")).await;
    assert!(cache.health().await.is_healthy());
    server.stop();
    let value = cache
        .get_or_set("p", Duration::from_secs(60), async {
            Ok::<_, Boom>(product(1, "loaded"))
        })
        .await;
    assert_eq!(value, Ok(product(1, "loaded")));
    assert!(
        cache.get::<Product>("p").await.is_err(),
        "a direct read reports the store"
    );
    let health = cache.health().await;
    assert!(!health.is_healthy());
    assert!(health.error.is_some());
    Ok(())
}

#[test]
fn invalid_options_are_reported_where_they_are_built() {
    let built = GetOrSetOptions::builder(Duration::from_secs(1))
        .eager_refresh(80.0)
        .build();
    assert_eq!(built.err(), Some(OptionsError::EagerRefreshFraction(80.0)));
    let _unused = MemoryStore::new(1);
}

#[tokio::test]
async fn the_cache_aside_example_caches_reads_and_a_put_invalidates_them() {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let cache = Cache::new(MemoryStore::new(1 << 20));
    let app = cache_aside_example::router(cache.clone(), Duration::ZERO);
    let get = |path: &str| Request::get(path).body(Body::empty()).expect("request");
    let body = |response: axum::response::Response| async move {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let first = body(app.clone().oneshot(get("/products/1")).await.expect("GET")).await;
    let second = body(app.clone().oneshot(get("/products/1")).await.expect("GET")).await;
    assert_eq!(first, second);
    let list = body(
        app.clone()
            .oneshot(get("/products?page=1"))
            .await
            .expect("GET"),
    )
    .await;
    assert!(list.contains("Kettle"));
    let stats = cache.stats();
    assert_eq!((stats.typed_loads, stats.typed_hits), (2, 1));

    let put = Request::put("/products/1")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"Teapot","price_cents":2500}"#))
        .expect("request");
    assert!(app
        .clone()
        .oneshot(put)
        .await
        .expect("PUT")
        .status()
        .is_success());
    let after = body(app.clone().oneshot(get("/products/1")).await.expect("GET")).await;
    assert!(after.contains("Teapot"), "{after}");
    let list = body(
        app.clone()
            .oneshot(get("/products?page=1"))
            .await
            .expect("GET"),
    )
    .await;
    assert!(
        list.contains("Teapot"),
        "the list pages were deleted too: {list}"
    );
    assert_eq!(cache.stats().typed_loads, 4);
    let missing = app.oneshot(get("/products/99")).await.expect("GET");
    assert_eq!(missing.status(), 404);
}
