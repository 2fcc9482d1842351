//! Follows a Sentinel failover as soon as the Sentinels announce it.
//!
//! fred asks the Sentinels for the primary only when it (re)connects, and nothing makes it
//! reconnect when a primary that is still up is failed over (`SENTINEL FAILOVER`, or a
//! failover after a partition): the old primary keeps answering as a primary until Sentinel
//! demotes it, which Redis does only once the node has reported the wrong role for four
//! publish periods (8 s) on top of its `INFO` period (`sentinelRefreshInstanceInfo` in
//! sentinel.c), and which then closes our connections (`CLIENT KILL TYPE normal`). Until then
//! every write lands on a node whose data is about to be replaced by a sync from the new
//! primary: fills are lost, and so are purge records, so a purged entry would be served again
//! from the new primary. Measured in `tests/scale_out.rs` before this module: caching resumed
//! on the new primary about 10 s after the Sentinels switched.
//!
//! So every Sentinel is watched over pub/sub for `+switch-master <name> <old ip> <old port>
//! <new ip> <new port>`, as the Sentinel client guidelines ask of clients. On one for the
//! store's service, every client of the store is reconnected until it is connected to the
//! announced address: the Sentinel a reconnecting client asks may learn of the switch up to a
//! hello period (2 s) after the one that announced it, and then still names the old primary.

use super::supervise;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ServerConfig;
use std::time::{Duration, Instant};

/// The Sentinels' channel for a completed failover.
const SWITCH_CHANNEL: &str = "+switch-master";

/// How long the clients are reconnected towards an announced primary before giving up (and
/// leaving it to fred's own reconnection when Sentinel demotes the old one): well past the
/// Sentinels' 2 s hello period, after which they all agree.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(10);

/// The pause between reconnections of a client still connected elsewhere.
const FOLLOW_PAUSE: Duration = Duration::from_millis(100);

/// A primary's address as the Sentinels announce it.
type Address = (String, u16);

/// Starts watching the Sentinels of `config` (none unless it is a Sentinel configuration)
/// and the task that moves `pool` and `subscriber` to each primary they announce. Returns the
/// tasks, for the store to abort when it is dropped.
pub(super) fn spawn(
    config: &Config,
    pool: &Pool,
    subscriber: &SubscriberClient,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ServerConfig::Sentinel {
        hosts,
        service_name,
        username,
        password,
    } = &config.server
    else {
        return Vec::new();
    };
    let (announce, announced) = tokio::sync::watch::channel(None::<Address>);
    let mut tasks = Vec::new();
    for host in hosts {
        let watcher_config = Config {
            server: ServerConfig::Centralized {
                server: host.clone(),
            },
            username: username.clone(),
            password: password.clone(),
            fail_fast: false,
            #[cfg(feature = "tls")]
            tls: config.tls.clone(),
            ..Config::default()
        };
        let watcher = match Builder::from_config(watcher_config)
            .set_policy(super::default_reconnect_policy())
            .build_subscriber_client()
        {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, sentinel = %host, "cannot watch this Sentinel for failovers");
                continue;
            }
        };
        let (restarted, restarts) = tokio::sync::mpsc::unbounded_channel();
        tasks.push(supervise::spawn(
            watcher.clone(),
            "sentinel",
            Some(restarted),
        ));
        tasks.push(tokio::spawn(watch(
            watcher,
            service_name.clone(),
            announce.clone(),
            restarts,
        )));
    }
    let clients = pool.clients().to_vec();
    let subscriber = subscriber.clone();
    tasks.push(tokio::spawn(follow(clients, subscriber, announced)));
    tasks
}

/// Subscribes to one Sentinel's switches (again after each reconnection) and passes on those
/// of `service`.
async fn watch(
    watcher: SubscriberClient,
    service: String,
    announce: tokio::sync::watch::Sender<Option<Address>>,
    mut restarts: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = watcher.message_rx();
    let mut reconnects = watcher.reconnect_rx();
    super::feed::subscribe(&watcher, SWITCH_CHANNEL).await;
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let text = message.value.as_string().unwrap_or_default();
                    if let Some(address) = parse_switch(&text, &service) {
                        tracing::info!(
                            service = %service,
                            primary = %format_args!("{}:{}", address.0, address.1),
                            "the Sentinels switched the primary: following it"
                        );
                        announce.send_replace(Some(address));
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            reconnected = reconnects.recv() => {
                if matches!(reconnected, Err(RecvError::Closed)) {
                    break;
                }
                super::feed::subscribe(&watcher, SWITCH_CHANNEL).await;
            }
            Some(()) = restarts.recv() => {
                super::feed::subscribe(&watcher, SWITCH_CHANNEL).await;
            }
        }
    }
}

/// The new primary in a `+switch-master` message, when it is about `service`.
fn parse_switch(message: &str, service: &str) -> Option<Address> {
    let mut words = message.split_whitespace();
    if words.next()? != service {
        return None;
    }
    let (host, port) = (words.nth(2)?, words.next()?);
    Some((host.to_owned(), port.parse().ok()?))
}

/// Moves every client to each announced primary.
async fn follow(
    clients: Vec<Client>,
    subscriber: SubscriberClient,
    mut announced: tokio::sync::watch::Receiver<Option<Address>>,
) {
    while announced.changed().await.is_ok() {
        let Some(target) = announced.borrow_and_update().clone() else {
            continue;
        };
        let (pool_moved, subscriber_moved) = futures_util::future::join(
            futures_util::future::join_all(clients.iter().map(|c| move_to(c, &target))),
            move_to(&subscriber, &target),
        )
        .await;
        if !subscriber_moved || pool_moved.iter().any(|done| !done) {
            tracing::warn!(
                primary = %format_args!("{}:{}", target.0, target.1),
                "could not reconnect to the primary the Sentinels announced: left to the \
                 regular reconnection"
            );
        }
    }
}

/// Reconnects `client` until it is connected to `target` (bounded); whether it is.
async fn move_to<C: ClientLike>(client: &C, target: &Address) -> bool {
    let deadline = Instant::now() + FOLLOW_PATIENCE;
    loop {
        let there = client.is_connected()
            && client
                .active_connections()
                .iter()
                .any(|server| *server.host == *target.0 && server.port == target.1);
        if there {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let _ = tokio::time::timeout(FOLLOW_PATIENCE, client.force_reconnection()).await;
        tokio::time::sleep(FOLLOW_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_of_the_service_are_parsed() {
        assert_eq!(
            parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            Some(("127.0.0.1".to_owned(), 6380))
        );
        assert_eq!(
            parse_switch("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            None
        );
        assert_eq!(parse_switch("mymaster 127.0.0.1 6379", "mymaster"), None);
    }
}
