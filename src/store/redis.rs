//! The Redis store, on `fred` 10: standalone, Cluster and Sentinel from one URL.
//!
//! - Entries are plain `GET`/`SET PX` on the keys the layer derives; the `{hash}` tag in every
//!   key keeps an entry and its lock in one cluster slot.
//! - Locks are `SET NX PX <token>`; extend and release are compare-then-act Lua scripts run by
//!   SHA (`EVALSHA`, loaded on `NOSCRIPT`), so a holder never touches a lock it lost.
//! - Fill notices, changes (for near tiers) and heartbeats go over one pub/sub channel per
//!   store (`PUBLISH channel "S<entry key>"`; see `feed`). Each process subscribes once and
//!   fans notices out to its waiters in memory, which costs one subscription per process
//!   instead of one per waiting key. Writes and deletes are scripts that publish their change
//!   in the same step.
//! - Commands fail fast while disconnected (fred's per-command `fail_fast`), while the
//!   connections, the first one included, are retried in the background with an exponential
//!   back-off: a store made while Redis is down starts caching when Redis comes up, and one
//!   that loses Redis recovers by itself when it comes back.

mod feed;
mod partition;
mod sentinel;
mod supervise;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "tls")]
pub use tls::RedisTls;

use super::{
    ChangeWatcher, FillNotice, FillNotices, FillWaiter, PurgeRecords, PurgeWatcher, Store,
    StoreFuture,
};
use crate::error::{StoreError, StoreErrorKind};
use bytes::Bytes;
use feed::Feed;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;

/// Releases the lock if the token holds it, announcing the release when asked.
/// KEYS: lock. ARGV: token channel message ('' for none).
const UNLOCK_LUA: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if ARGV[3] ~= '' then
    redis.call('publish', ARGV[2], ARGV[3])
  end
  return 1
end
return 0";

/// Writes a value and announces the change, in one step (a crash cannot separate them).
/// KEYS: key. ARGV: value ttl_ms channel message.
const PUT_LUA: &str = r"
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
redis.call('publish', ARGV[3], ARGV[4])
return 1";

/// Removes a value and announces the change, in one step; returns how many keys went.
/// KEYS: key. ARGV: channel message.
const DELETE_LUA: &str = r"
local removed = redis.call('unlink', KEYS[1])
redis.call('publish', ARGV[1], ARGV[2])
return removed";

/// Records a purge at the server's clock, trims the records to the most recent `keep` (the
/// oldest leave their time in the floor key) and announces it, in one step.
/// KEYS: records floor. ARGV: member keep channel. Returns the time (Unix µs; below 2^53, so
/// exact in Lua's doubles).
const RECORD_PURGE_LUA: &str = r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stamp = string.format('%.0f', now)
redis.call('zadd', KEYS[1], stamp, ARGV[1])
local over = redis.call('zcard', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
    local old = redis.call('zpopmin', KEYS[1], over)
    local top = tonumber(old[#old])
    if top > tonumber(redis.call('get', KEYS[2]) or '0') then
        redis.call('set', KEYS[2], string.format('%.0f', top))
    end
end
redis.call('publish', ARGV[3], 'X' .. KEYS[1] .. '\n' .. stamp .. '\n' .. ARGV[1])
return now";

/// Reads every purge record with the server's clock. KEYS: records floor.
/// Returns { now_us, floor_us, { member, µs, member, µs, ... } }.
const READ_PURGES_LUA: &str = r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return { now, tonumber(redis.call('get', KEYS[2]) or '0'),
    redis.call('zrange', KEYS[1], 0, -1, 'withscores') }";

/// Takes a named lock and, in the same step, advances its fencing counter.
/// KEYS: lock, counter. ARGV: token ttl_ms. Returns the new counter value, or 0 when held.
const LOCK_FENCED_LUA: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'nx', 'px', ARGV[2]) then
  return redis.call('incr', KEYS[2])
end
return 0";

const EXTEND_LUA: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";

/// Ends a fill in one round trip: the optional write, the notice, the compare-and-delete.
/// KEYS: the written key (or the notice key), the lock key (or the notice key).
/// ARGV: write? ('1': always, '2': only if the key is empty) value ttl_ms channel message
/// unlock? token change ('' unless the written key is not the notice key: its change message).
const FINISH_LUA: &str = r"
if ARGV[1] == '1' then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3])
elseif ARGV[1] == '2' then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3], 'nx')
end
if ARGV[8] ~= '' then
  redis.call('publish', ARGV[4], ARGV[8])
end
redis.call('publish', ARGV[4], ARGV[5])
if ARGV[6] == '1' and redis.call('get', KEYS[2]) == ARGV[7] then
  redis.call('del', KEYS[2])
end
return 1";

/// Takes the lock unless the entry holds a value (other than the stale one the caller saw).
/// KEYS: entry, lock. ARGV: token ttl_ms seen-stamp. Returns {1, value}, {2} taken, {3} held.
const LOCK_OR_READ_LUA: &str = r"
local v = redis.call('get', KEYS[1])
if v and string.sub(v, 5, 12) ~= ARGV[3] then
  return {1, v}
end
if redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then
  return {2}
end
return {3}";

/// A lookup that takes the fill lock when the entry holds nothing, in one round trip. A value
/// larger than ARGV[3] bytes is not returned through the script (copying 64 KiB through Lua
/// costs Redis about three times a plain `GET` of it): the caller reads it with `GET`, so a
/// hit on a large value costs two round trips and a miss still one.
/// KEYS: entry, lock. ARGV: token ttl_ms max_inline. Returns {1, value}, {2} taken, {3} held,
/// {4} a large value is there.
const READ_OR_LOCK_LUA: &str = r"
local n = redis.call('strlen', KEYS[1])
if n > tonumber(ARGV[3]) then
  return {4}
end
if n > 0 then
  return {1, redis.call('get', KEYS[1])}
end
if redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then
  return {2}
end
return {3}";

/// The largest value [`READ_OR_LOCK_LUA`] returns itself.
const MAX_INLINE_READ: i64 = 16 * 1024;

/// How often connection state is checked while waiting for it.
const CONNECT_POLL: Duration = Duration::from_millis(10);

/// Messages fred may hold for the notice task before it counts as lagging (fred's default is
/// 32, which a burst of writes across a fleet overruns; a lag flushes every near tier).
const BROADCAST_CAPACITY: usize = 4096;

/// Where the oldest purge records, trimmed, leave their time: in the records key's slot.
fn purge_floor_key(records: &str) -> String {
    format!("{records}:floor")
}

/// The default pub/sub channel for fill notices.
pub const DEFAULT_NOTICE_CHANNEL: &str = "tower-redis-cache:fills";

/// A [`Store`] in Redis, shared by every process that connects to the same server or cluster.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Whether the store built the pool (and so closes it when dropped).
    owns_pool: bool,
    subscriber: SubscriberClient,
    /// Fill notices to this process's waiters, changes and heartbeats to its near tiers.
    feed: Arc<Feed>,
    channel: String,
    unlock: Script,
    extend: Script,
    finish: Script,
    lock_or_read: Script,
    put: Script,
    delete: Script,
    read_or_lock: Script,
    record_purge: Script,
    read_purges: Script,
    lock_fenced: Script,
    fail_fast: Options,
    /// Becomes `true` once fill notices are subscribed to.
    subscribed: tokio::sync::watch::Receiver<bool>,
    /// A clustered store's own connection to each primary, for while the Cluster client is
    /// down (see `partition`).
    partitions: Arc<partition::Partitions>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // A borrowed pool is the application's: only the subscriber is the store's own.
        let pool = self.owns_pool.then(|| self.pool.clone());
        let subscriber = self.subscriber.clone();
        let partitions = Arc::clone(&self.partitions);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(pool) = pool {
                    let _ = pool.quit().await;
                }
                let _ = subscriber.quit().await;
                partitions.quit().await;
            });
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

/// Settings for connecting a [`RedisStore`].
///
/// ```no_run
/// # async fn run() -> Result<(), tower_redis_cache::StoreError> {
/// use std::time::Duration;
/// use tower_redis_cache::RedisStore;
/// let store = RedisStore::builder("redis://127.0.0.1:6379")?
///     .pool_size(4)
///     .connect_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    config: Config,
    pool_size: usize,
    channel: String,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<RedisTls>,
}

impl RedisStoreBuilder {
    /// TLS with these settings (a private CA, a client certificate, the name of Cluster
    /// nodes announced by IP), whatever the URL's scheme; checked when the store is built.
    /// A `rediss://` URL alone trusts the system's roots.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connections in the pool (default 1). fred pipelines the commands of concurrent
    /// requests on each connection, and Redis runs one command at a time whatever the number
    /// of connections, so one connection batches the most commands per socket write and read:
    /// measured with 64 concurrent 1 KiB hits through Redis (`scripts/bench-load.sh`'s
    /// scenario), 1 connection served 51.5K hits/s at 22.6 µs of proxy and 5.4 µs of Redis CPU
    /// per hit, 2 connections 45.4K (25.5 + 7.4 µs), 4 connections 36.9K (30.4 + 9.4 µs).
    /// More connections help only when one would saturate a core of the client.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The pub/sub channel for fill notices (default [`DEFAULT_NOTICE_CHANNEL`]). Every
    /// instance that shares a cache must use the same channel.
    pub fn notice_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How long [`connect`](Self::connect) waits for the first connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, failing when Redis cannot be reached within the connect timeout.
    ///
    /// The error names the last failure seen while trying (a refused connection, a rejected
    /// password, an untrusted certificate), so a misconfiguration reads as one.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let timeout = self.connect_timeout;
        let store = self.connect_lazy()?;
        // Subscribed before the first attempt can fail, so its error is not missed.
        let mut errors: Vec<_> = store
            .inner
            .pool
            .clients()
            .iter()
            .map(|client| client.error_rx())
            .chain(std::iter::once(store.inner.subscriber.error_rx()))
            .collect();
        match tokio::time::timeout(timeout, store.wait_connected()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                let last = errors
                    .iter_mut()
                    .filter_map(|rx| {
                        let mut last = None;
                        while let Ok((error, _)) = rx.try_recv() {
                            last = Some(error);
                        }
                        last
                    })
                    .last();
                Err(match last {
                    Some(error) => StoreError::from(error),
                    None => StoreError::from_kind(StoreErrorKind::Connection),
                })
            }
        }
    }

    /// Returns at once and connects in the background, retrying until Redis answers; until
    /// then every call fails fast and the layer serves from the origin. Needs a Tokio runtime.
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        #[allow(unused_mut)]
        let mut config = self.config;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            config.tls = Some(tls.to_fred()?);
        }
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(default_reconnect_policy())
            .with_connection_config(|c| {
                c.connection_timeout = self.connect_timeout;
                c.internal_command_timeout = self.connect_timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                // The layer bounds each call more tightly; this stops fred queueing forever.
                p.default_command_timeout = Duration::from_secs(5);
                p.broadcast_channel_capacity = BROADCAST_CAPACITY;
            });
        let pool = builder.build_pool(self.pool_size)?;
        let subscriber = builder.build_subscriber_client()?;
        Ok(RedisStore::start(pool, true, subscriber, self.channel))
    }
}

impl RedisStore {
    /// Settings for a store at `url`: `redis://`, `rediss://` (feature `tls`),
    /// `redis-cluster://host:port?node=host2:port2`, or
    /// `redis-sentinel://host:port?sentinelServiceName=name`.
    pub fn builder(url: &str) -> Result<RedisStoreBuilder, StoreError> {
        let mut config = Config::from_url(url)?;
        // Retry the first connection too (fred's `fail_fast` would give up on it); commands
        // still fail fast through `Options` on each call.
        config.fail_fast = false;
        Ok(RedisStoreBuilder {
            config,
            pool_size: 1,
            channel: DEFAULT_NOTICE_CHANNEL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// Connects to `url` with the default settings; see [`builder`](Self::builder).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url)?.connect().await
    }

    /// Uses a pool the application already built (and usually connected).
    ///
    /// What is shared: every command (reads, writes, locks, scripts, `PUBLISH`) goes through
    /// `pool`'s own connections. What is not: fill notices need a subscribed connection, which
    /// cannot carry other commands, so the store opens one subscriber client of its own, with
    /// the pool's server, connection, performance settings and reconnect policy (or, if the
    /// pool has none, the store's default: retry forever with back-off, so notices resume
    /// after Redis restarts). The pool stays the application's: dropping the store closes
    /// only its subscriber and never quits the pool. An unconnected pool is connected.
    /// Needs a Tokio runtime.
    pub fn from_pool(pool: Pool) -> Result<Self, StoreError> {
        let client = pool.next();
        let mut config = client.client_config();
        // The subscriber retries its first connection too, as the store's own clients do.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(
                client
                    .client_reconnect_policy()
                    .unwrap_or_else(default_reconnect_policy),
            )
            .set_connection_config(client.connection_config().clone())
            .set_performance_config({
                let mut perf = client.perf_config();
                perf.broadcast_channel_capacity =
                    perf.broadcast_channel_capacity.max(BROADCAST_CAPACITY);
                perf
            });
        let subscriber = builder.build_subscriber_client()?;
        Ok(Self::start(
            pool,
            false,
            subscriber,
            DEFAULT_NOTICE_CHANNEL.to_owned(),
        ))
    }

    /// Uses a client the application already built: commands go through that very client
    /// (no new connection is opened for them); see [`from_pool`](Self::from_pool) for the
    /// notice subscriber and what dropping the store does (it never quits `client`).
    pub fn from_client(client: Client) -> Result<Self, StoreError> {
        Self::from_pool(Pool::from_clients(vec![client])?)
    }

    fn start(pool: Pool, owns_pool: bool, subscriber: SubscriberClient, channel: String) -> Self {
        let notices = Arc::new(FillNotices::default());
        let feed = Arc::new(Feed::new(Arc::clone(&notices)));
        let mut tasks = Vec::new();
        // Subscribed before any connection is tried, so the first failure is logged too.
        let last_warning = supervise::LastWarning::default();
        for client in pool.clients() {
            let last = std::sync::Arc::clone(&last_warning);
            tasks.push(supervise::spawn_error_log(client, "pool", last));
        }
        tasks.push(supervise::spawn_error_log(
            &subscriber,
            "notices",
            last_warning,
        ));
        // An unconnected pool's connection tasks are the store's to keep running (see
        // `supervise`); a connected one's are the application's.
        if !pool.is_connected() {
            for client in pool.clients() {
                tasks.push(supervise::spawn(client.clone(), "pool", None));
            }
        }
        // Take the receivers before connecting, so no message or event is missed.
        let delivery = feed::spawn_delivery(&subscriber, Arc::clone(&feed));
        let (subscribed, subscribed_rx) = tokio::sync::watch::channel(false);
        let (restarted, restarts) = tokio::sync::mpsc::unbounded_channel();
        let subscription = feed::spawn_subscription(
            subscriber.clone(),
            channel.clone(),
            Arc::clone(&feed),
            subscribed,
            restarts,
        );
        tasks.push(supervise::spawn(
            subscriber.clone(),
            "notices",
            Some(restarted),
        ));
        // Behind Sentinels: move to a new primary as soon as they announce it.
        tasks.extend(sentinel::spawn(
            &pool.next().client_config(),
            &pool,
            &subscriber,
        ));
        let heartbeat = feed::spawn_heartbeat(
            pool.clone(),
            channel.clone(),
            Arc::clone(&feed),
            subscribed_rx.clone(),
            super::CHANGE_HEARTBEAT,
        );
        let partitions = Arc::new(partition::Partitions::default());
        tasks.extend(partition::spawn(&pool, &partitions));
        let inner = Inner {
            partitions,
            pool,
            owns_pool,
            subscriber,
            feed,
            channel,
            unlock: Script::from_lua(UNLOCK_LUA),
            extend: Script::from_lua(EXTEND_LUA),
            finish: Script::from_lua(FINISH_LUA),
            lock_or_read: Script::from_lua(LOCK_OR_READ_LUA),
            put: Script::from_lua(PUT_LUA),
            delete: Script::from_lua(DELETE_LUA),
            read_or_lock: Script::from_lua(READ_OR_LOCK_LUA),
            record_purge: Script::from_lua(RECORD_PURGE_LUA),
            read_purges: Script::from_lua(READ_PURGES_LUA),
            lock_fenced: Script::from_lua(LOCK_FENCED_LUA),
            subscribed: subscribed_rx,
            fail_fast: Options {
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
            tasks: {
                tasks.extend([delivery, subscription, heartbeat]);
                tasks
            },
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Commands that fail at once while disconnected instead of queueing for a reconnect.
    fn commands(&self) -> fred::clients::WithOptions<Pool> {
        self.inner.pool.with_options(&self.inner.fail_fast)
    }

    /// The client for a command on `key`: the pool's, or while a clustered pool is down, the
    /// connection to the primary of `key`'s slot (see `partition`).
    fn client_for(&self, key: &str) -> Result<Target<'_>, StoreError> {
        let pool = &self.inner.pool;
        if pool.is_connected() {
            return Ok(Target::Pool(pool.next()));
        }
        if pool.is_clustered() {
            return self.inner.partitions.client_for(key).map(Target::Node);
        }
        Err(StoreError::from_kind(StoreErrorKind::Connection))
    }

    /// [`client_for`](Self::client_for), with commands that fail at once.
    fn commands_for(&self, key: &str) -> Result<fred::clients::WithOptions<Client>, StoreError> {
        Ok(self
            .client_for(key)?
            .client()
            .with_options(&self.inner.fail_fast))
    }

    /// Runs a script by SHA; on `NOSCRIPT` runs its source with `EVAL`, which also caches it on
    /// that node (fred's own reload loads on every cluster node through the cached slot map,
    /// which a fresh connection may not have yet).
    async fn run<R: FromValue>(
        &self,
        script: &Script,
        source: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, StoreError> {
        // Scripts cannot take per-call options in fred: the target is checked connected here,
        // so they fail fast as the other commands do.
        let target = self.client_for(keys.first().map_or("", String::as_str))?;
        let client = target.client();
        match script.evalsha(client, keys.clone(), args.clone()).await {
            Err(error) if error.details().starts_with("NOSCRIPT") => {}
            // fred checks a script's keys against its cached Cluster slot map, which a
            // connection may not have fetched yet: fetch it, then try again.
            Err(error) if *error.kind() == fred::error::ErrorKind::Cluster => {
                client.sync_cluster().await?;
            }
            result => return Ok(result?),
        }
        Ok(client.eval(source, keys, args).await?)
    }

    /// Scripts cannot take per-call options in fred; fail them fast by hand.
    fn ensure_connected(&self) -> Result<(), StoreError> {
        if self.inner.pool.is_connected() {
            Ok(())
        } else {
            Err(StoreError::from_kind(StoreErrorKind::Connection))
        }
    }

    /// Whether every pooled connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.pool.is_connected()
    }

    /// Whether the store is ready to coalesce across the fleet: every pooled connection up,
    /// fill notices subscribed and, on a Cluster, the store's own connection to each primary
    /// up (it serves the keys of live primaries while another is down). The non-blocking form
    /// of [`wait_connected`](Self::wait_connected), for readiness probes.
    pub fn is_ready(&self) -> bool {
        self.inner.pool.is_connected() && *self.inner.subscribed.borrow() && self.partitions_ready()
    }

    fn partitions_ready(&self) -> bool {
        !self.inner.pool.is_clustered() || self.inner.partitions.ready()
    }

    /// Sends `PING`, for health checks: `Ok` when Redis answered.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self
            .inner
            .pool
            .with_options(&self.inner.fail_fast)
            .ping::<()>(None)
            .await?)
    }

    /// Waits until every pooled connection (and on a Cluster, the store's own connection to each
    /// primary) is up and fill notices are subscribed to (forever
    /// if Redis never answers: bound it).
    pub async fn wait_connected(&self) -> Result<(), StoreError> {
        let mut subscribed = self.inner.subscribed.clone();
        // fred's `wait_for_connect` waits for the *next* connection, which never comes when
        // the first one is already up; its state is read instead.
        while !self.inner.pool.is_connected() || !self.partitions_ready() {
            tokio::time::sleep(CONNECT_POLL).await;
        }
        subscribed
            .wait_for(|done| *done)
            .await
            .map(drop)
            .map_err(|_| StoreError::from_kind(StoreErrorKind::Connection))
    }

    /// The fred pool, for commands this crate does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }
}

/// Where a command goes: the pool (the Cluster client, or the one server), or one Cluster
/// primary's own connection while the Cluster client is down.
enum Target<'a> {
    Pool(&'a Client),
    Node(Client),
}

impl Target<'_> {
    fn client(&self) -> &Client {
        match self {
            Target::Pool(client) => client,
            Target::Node(client) => client,
        }
    }
}

/// Retry forever, from 50 ms doubling to 2 s: a cache's connection should come back by
/// itself whenever Redis does.
fn default_reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 50, 2_000, 2)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move { Ok(self.commands_for(key)?.get::<Option<Bytes>, _>(key).await?) })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args: Vec<Value> = vec![
                Value::Bytes(value),
                millis(ttl).into(),
                self.inner.channel.as_str().into(),
                feed::notice_message(key, FillNotice::Changed).into(),
            ];
            let _: i64 = self
                .run(&self.inner.put, PUT_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.remove(key).await.map(drop) })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let expire = Some(Expiration::PX(millis(ttl)));
            let reply: Option<String> = self
                .commands_for(key)?
                .set(key, token, expire, Some(SetOptions::NX), false)
                .await?;
            Ok(reply.is_some())
        })
    }

    fn try_lock_fenced<'a>(
        &'a self,
        key: &'a str,
        fence_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let args: Vec<Value> = vec![token.into(), millis(ttl).into()];
            let keys = vec![key.to_owned(), fence_key.to_owned()];
            let fence: i64 = self
                .run(&self.inner.lock_fenced, LOCK_FENCED_LUA, keys, args)
                .await?;
            Ok(u64::try_from(fence).ok().filter(|&fence| fence > 0))
        })
    }

    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args: Vec<Value> = vec![token.into(), millis(ttl).into()];
            let extended: i64 = self
                .run(&self.inner.extend, EXTEND_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(extended == 1)
        })
    }

    fn unlock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        entry_key: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let message = entry_key.map_or_else(String::new, |entry| {
                feed::notice_message(entry, FillNotice::Released)
            });
            let args: Vec<Value> = vec![
                token.into(),
                self.inner.channel.as_str().into(),
                message.into(),
            ];
            let _: i64 = self
                .run(&self.inner.unlock, UNLOCK_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(())
        })
    }

    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let message = feed::notice_message(entry_key, notice);
            let _: i64 = self
                .commands_for(entry_key)?
                .publish(self.inner.channel.as_str(), message)
                .await?;
            Ok(())
        })
    }

    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        self.inner.feed.notices.register(entry_key)
    }

    fn finish_fill<'a>(&'a self, end: super::FillEnd<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (notice_key, notice) = end.notice;
            let flag = |on: bool| Value::from(if on { "1" } else { "0" });
            let write_mode = match (&end.write, end.only_if_absent) {
                (None, _) => "0",
                (Some(_), false) => "1",
                (Some(_), true) => "2",
            };
            // The written key's own change, when it is not the one the notice names (a
            // variant, or an index, written for a request keyed on another).
            let change = match end.write.as_ref() {
                Some((key, _, _)) if *key != notice_key => {
                    feed::notice_message(key, FillNotice::Changed)
                }
                _ => String::new(),
            };
            let (write_key, value, ttl) = match end.write {
                Some((key, value, ttl)) => (key, Value::Bytes(value), millis(ttl)),
                None => (notice_key, Value::from(""), 0),
            };
            let (lock_key, token) = end.unlock.unwrap_or((notice_key, ""));
            let keys = vec![write_key.to_owned(), lock_key.to_owned()];
            let args: Vec<Value> = vec![
                Value::from(write_mode),
                value,
                ttl.into(),
                self.inner.channel.as_str().into(),
                feed::notice_message(notice_key, notice).into(),
                flag(end.unlock.is_some()),
                token.into(),
                change.into(),
            ];
            let _: i64 = self.run(&self.inner.finish, FINISH_LUA, keys, args).await?;
            Ok(())
        })
    }

    fn read_or_lock<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, super::LockAttempt> {
        Box::pin(async move {
            use super::LockAttempt;
            let keys = vec![entry_key.to_owned(), lock_key.to_owned()];
            let args: Vec<Value> = vec![token.into(), millis(ttl).into(), MAX_INLINE_READ.into()];
            let reply: Value = self
                .run(&self.inner.read_or_lock, READ_OR_LOCK_LUA, keys, args)
                .await?;
            let mut parts = match reply {
                Value::Array(parts) => parts.into_iter(),
                other => vec![other].into_iter(),
            };
            let kind = parts.next().and_then(|kind| kind.as_i64());
            Ok(match kind {
                Some(1) => match parts.next().and_then(Value::into_bytes) {
                    Some(value) => LockAttempt::Found(value),
                    None => LockAttempt::Held,
                },
                Some(2) => LockAttempt::Acquired,
                Some(4) => match self
                    .commands_for(entry_key)?
                    .get::<Option<Bytes>, _>(entry_key)
                    .await?
                {
                    Some(value) => LockAttempt::Found(value),
                    // Gone in between: whoever removed it may be filling; wait for them.
                    None => LockAttempt::Held,
                },
                _ => LockAttempt::Held,
            })
        })
    }

    fn try_lock_or_read<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> StoreFuture<'a, super::LockAttempt> {
        Box::pin(async move {
            use super::LockAttempt;
            let keys = vec![entry_key.to_owned(), lock_key.to_owned()];
            let seen = seen.map_or(Value::from(""), |s| {
                Value::Bytes(Bytes::copy_from_slice(&s))
            });
            let args: Vec<Value> = vec![token.into(), millis(ttl).into(), seen];
            let reply: Value = self
                .run(&self.inner.lock_or_read, LOCK_OR_READ_LUA, keys, args)
                .await?;
            let parts = match reply {
                Value::Array(parts) => parts,
                other => vec![other],
            };
            Ok(
                match (parts.first().and_then(Value::as_i64), parts.get(1)) {
                    (Some(1), Some(value)) => LockAttempt::Found(
                        value
                            .as_bytes()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default(),
                    ),
                    (Some(2), _) => LockAttempt::Acquired,
                    _ => LockAttempt::Held,
                },
            )
        })
    }

    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        self.inner.feed.watch(watcher);
        true
    }

    fn record_purge<'a>(
        &'a self,
        records: &'a str,
        member: &'a str,
        keep: usize,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let keys = vec![records.to_owned(), purge_floor_key(records)];
            let args: Vec<Value> = vec![
                member.into(),
                i64::try_from(keep.max(1)).unwrap_or(i64::MAX).into(),
                self.inner.channel.as_str().into(),
            ];
            let at: i64 = self
                .run(&self.inner.record_purge, RECORD_PURGE_LUA, keys, args)
                .await?;
            Ok(u64::try_from(at).unwrap_or(0))
        })
    }

    fn purges<'a>(&'a self, records: &'a str) -> StoreFuture<'a, PurgeRecords> {
        Box::pin(async move {
            let keys = vec![records.to_owned(), purge_floor_key(records)];
            let reply: Value = self
                .run(&self.inner.read_purges, READ_PURGES_LUA, keys, Vec::new())
                .await?;
            let as_us = |value: &Value| {
                value
                    .as_i64()
                    .or_else(|| {
                        value
                            .as_str()
                            .and_then(|s| s.parse::<f64>().ok().map(|f| f as i64))
                    })
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0)
            };
            let Value::Array(parts) = reply else {
                return Err(StoreError::from_kind(StoreErrorKind::Backend));
            };
            let (Some(now), Some(floor), Some(Value::Array(pairs))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(StoreError::from_kind(StoreErrorKind::Backend));
            };
            let records = pairs
                .chunks_exact(2)
                .filter_map(|pair| Some((pair[0].as_string()?, as_us(&pair[1]))))
                .collect();
            Ok(PurgeRecords {
                now_us: as_us(now),
                floor_us: as_us(floor),
                records,
            })
        })
    }

    fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        self.inner.feed.watch_purges(watcher);
        true
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let groups = slot_groups(self.inner.pool.is_clustered(), keys);
            let replies = futures_util::future::try_join_all(groups.iter().map(|group| {
                let group_keys: Vec<&str> = group.iter().map(|&(_, key)| key).collect();
                async move {
                    let first = group_keys.first().copied().unwrap_or_default();
                    let commands = self.commands_for(first)?;
                    Ok::<_, StoreError>(commands.mget::<Value, _>(group_keys).await?)
                }
            }))
            .await?;
            let mut values = vec![None; keys.len()];
            for (group, reply) in groups.iter().zip(replies) {
                let replies = match reply {
                    Value::Array(items) => items,
                    other => vec![other],
                };
                for (&(index, _), value) in group.iter().zip(replies) {
                    if let Some(slot) = values.get_mut(index) {
                        *slot = value.into_bytes();
                    }
                }
            }
            Ok(values)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            use fred::types::scan::Scanner;
            use futures_util::{future::Either, TryStreamExt};
            self.ensure_connected()?;
            let pattern = format!("{}*", escape_glob(prefix));
            let client = self.inner.pool.next();
            let clustered = client.is_clustered();
            let mut pages = if clustered {
                // `SCAN` on every primary, through fred's cached slot map (fetched first: a
                // fresh connection may not have it yet).
                client.sync_cluster().await?;
                Either::Left(client.scan_cluster(pattern, Some(SCAN_COUNT), None))
            } else {
                Either::Right(client.scan(pattern, Some(SCAN_COUNT), None))
            };
            let mut deleted = 0u64;
            while let Some(mut page) = pages.try_next().await? {
                let keys: Vec<String> = page
                    .take_results()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|key| key.as_str().map(str::to_owned))
                    .collect();
                // One page of a cluster comes from one node but spans slots: `UNLINK` each
                // slot's keys, together.
                let groups = slot_groups(clustered, &keys);
                let commands = self.commands();
                let unlinked = futures_util::future::try_join_all(groups.iter().map(|group| {
                    let group_keys: Vec<&str> = group.iter().map(|&(_, key)| key).collect();
                    let commands = &commands;
                    async move { commands.unlink::<i64, _>(group_keys).await }
                }))
                .await?;
                let page_deleted: i64 = unlinked.iter().sum();
                deleted = deleted.saturating_add(u64::try_from(page_deleted).unwrap_or(0));
                page.next();
            }
            // Near tiers drop what they hold under the prefix.
            let _: i64 = self
                .inner
                .pool
                .next()
                .with_options(&self.inner.fail_fast)
                .publish(self.inner.channel.as_str(), feed::prefix_message(prefix))
                .await?;
            Ok(deleted)
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args: Vec<Value> = vec![
                self.inner.channel.as_str().into(),
                feed::notice_message(key, FillNotice::Changed).into(),
            ];
            let removed: i64 = self
                .run(&self.inner.delete, DELETE_LUA, vec![key.to_owned()], args)
                .await?;
            Ok(removed > 0)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(RedisStore::ping(self))
    }

    fn is_connected(&self) -> bool {
        RedisStore::is_connected(self)
    }
}

/// Keys asked of `SCAN` per page: large enough that a big keyspace takes few round trips,
/// small enough that one page's `UNLINK` stays short.
const SCAN_COUNT: u32 = 1_000;

/// Escapes Redis glob characters (`* ? [ ] \`), so a literal prefix matches only itself.
fn escape_glob(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The keys (with their positions) of each multi-key command: all in one on a single server;
/// one group per hash slot on a cluster, where a command's keys must share a slot.
fn slot_groups(clustered: bool, keys: &[String]) -> Vec<Vec<(usize, &str)>> {
    let indexed = keys.iter().map(String::as_str).enumerate();
    if !clustered {
        let all: Vec<_> = indexed.collect();
        return if all.is_empty() {
            Vec::new()
        } else {
            vec![all]
        };
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<(usize, &str)>> = Default::default();
    for (index, key) in indexed {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        by_slot.entry(slot).or_default().push((index, key));
    }
    by_slot.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped_and_slots_group_keys() {
        assert_eq!(escape_glob(r"user:1*a?[b]\c"), r"user:1\*a\?\[b\]\\c");
        let keys: Vec<String> = ["a{x}", "b{x}", "c{y}"].map(String::from).to_vec();
        let groups = slot_groups(true, &keys);
        assert_eq!(groups.len(), 2);
        assert_eq!(slot_groups(false, &keys).len(), 1);
        assert!(slot_groups(false, &[]).is_empty());
    }
}
