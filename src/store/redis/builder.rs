//! [`RedisStoreBuilder`]: the settings a [`RedisStore`] is connected with.

use super::*;

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
    pub(super) config: Config,
    pub(super) pool_size: usize,
    pub(super) channel: String,
    pub(super) connect_timeout: Duration,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<RedisTls>,
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
