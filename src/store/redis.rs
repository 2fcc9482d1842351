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

mod builder;
mod commands;
mod feed;
mod partition;
mod scripts;
mod sentinel;
mod supervise;
#[cfg(feature = "tls")]
mod tls;

pub use builder::RedisStoreBuilder;
use scripts::*;
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
        let mut tasks = supervise_pool(&pool, &subscriber);
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
        // A connected client of the pool if there is one (what fred's pool-level commands
        // pick), so one pooled connection reconnecting does not fail the others' commands.
        let client = pool.next_connected();
        if client.is_connected() {
            return Ok(Target::Pool(client));
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

/// The pool's and the subscriber's connection errors logged (subscribed before any
/// connection is tried, so the first failure is logged too), and an unconnected pool's
/// connection tasks kept running (see `supervise`; a connected pool's are the application's).
fn supervise_pool(pool: &Pool, subscriber: &SubscriberClient) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let last_warning = supervise::LastWarning::default();
    for client in pool.clients() {
        let last = Arc::clone(&last_warning);
        tasks.push(supervise::spawn_error_log(client, "pool", last));
    }
    tasks.push(supervise::spawn_error_log(
        subscriber,
        "notices",
        last_warning,
    ));
    if !pool.is_connected() {
        for client in pool.clients() {
            tasks.push(supervise::spawn(client.clone(), "pool", None));
        }
    }
    tasks
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
