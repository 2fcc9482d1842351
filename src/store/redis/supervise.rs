//! Keeps the store's fred connection tasks running for as long as the store lives.
//!
//! fred drives each client's connections from one task, which retries by itself under the
//! reconnect policy, but ends for good on some errors: a routing error while a Cluster is
//! still assigning its slots, a reconnection that fails with a configuration error, an
//! unexpected reply. Once it has ended nothing retries: the client reports itself
//! disconnected, every command fails fast, and the cache serves uncached with no further
//! log line (a fleet started while its Cluster settled bypassed for good, once). Each
//! connection task is watched here instead; when one ends, it is logged and started again
//! after a pause, and the subscriber's restarts are announced so its subscription is renewed.

use fred::prelude::*;
use std::time::Duration;

/// The pause before a connection task that ended is started again: long enough not to spin
/// on a fault that ends it at once, short next to the cache's own fail-open cool-downs.
const RESTART_PAUSE: Duration = Duration::from_millis(250);

/// Starts `client`'s connection task and starts it again whenever it ends, until the
/// returned task is aborted (the store aborts it before it quits its clients). `restarted`
/// is told of each restart after the first start.
pub(super) fn spawn<C>(
    client: C,
    what: &'static str,
    restarted: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> tokio::task::JoinHandle<()>
where
    C: ClientLike + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut restarts = 0u64;
        loop {
            let ended = client.connect().await;
            restarts += 1;
            let reason = match ended {
                Ok(Ok(())) => "closed".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(join) => join.to_string(),
            };
            tracing::warn!(
                connection = what,
                reason = %reason,
                restarts,
                "Redis connection task ended: starting it again"
            );
            tokio::time::sleep(RESTART_PAUSE).await;
            if let Some(restarted) = &restarted {
                let _ = restarted.send(());
            }
        }
    })
}

/// How often one connection error is logged again while it lasts.
const REPEAT_WARNING: Duration = Duration::from_secs(30);

/// The last connection error logged by any of a store's clients, and when.
pub(super) type LastWarning =
    std::sync::Arc<std::sync::Mutex<Option<(String, tokio::time::Instant)>>>;

/// Logs `client`'s connection errors at warn level: the first one, each different one, and
/// the same one again every [`REPEAT_WARNING`] while it lasts (shared across the store's
/// clients through `last`, so a pool of four does not say it four times). fred reports them
/// only at debug level, so a store connected with `connect_lazy` (the proxy) with a wrong
/// password or an untrusted certificate would serve uncached with no visible cause.
pub(super) fn spawn_error_log<C: EventInterface>(
    client: &C,
    what: &'static str,
    last: LastWarning,
) -> tokio::task::JoinHandle<()> {
    let mut errors = client.error_rx();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let error = match errors.recv().await {
                Ok((error, _)) => error.to_string(),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let now = tokio::time::Instant::now();
            let due = {
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.as_ref().is_none_or(|(said, at)| {
                    *said != error || now.duration_since(*at) >= REPEAT_WARNING
                });
                if due {
                    *last = Some((error.clone(), now));
                }
                due
            };
            if due {
                tracing::warn!(connection = what, %error, "Redis connection failed: retrying");
            }
        }
    })
}
