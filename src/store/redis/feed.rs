//! The Redis store's pub/sub side: fill notices to waiters, changes and heartbeats to near
//! tiers, over one subscribed connection per store.
//!
//! Every message on the store's channel is one byte of kind and a payload:
//! `S<key>` stored, `N<key>` not storable, `C<key>` changed, `R<key>` lock released,
//! `P<prefix>` every key under a prefix changed, `H<sender>:<round>` a heartbeat,
//! `X<records key>\n<µs>\n<member>` a purge recorded (sent by the script that records it). Writes and
//! deletes send theirs from inside the script that makes them, so a change is never made
//! without its message (a crash between two calls cannot leave other processes' copies stale).
//!
//! Heartbeats are how a near tier knows its feed is current, not merely connected. Every
//! [`HEARTBEAT`](crate::store::CHANGE_HEARTBEAT) the store notes the time and publishes one
//! heartbeat to every primary (one for a single server). Pub/sub delivers a node's messages
//! to a subscriber in the order the node handled them (on a Cluster, over one bus link per
//! node pair, also in order), so once this process has received all of a round's heartbeats,
//! it has received every change a primary handled before the round was sent, that is every
//! change whose call completed before the noted time: the feed reports
//! [`Change::UpTo`] that time. A lagging or silent feed simply stops reporting it, and the
//! near tier stops serving. A dropped or re-established connection, and a lag in fred's
//! broadcast channel, are reported as [`Change::Lost`].

use super::super::{Change, ChangeWatcher, FillNotice, FillNotices, PurgeEvent, PurgeWatcher};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How often the subscriber's state is checked while waiting for it to connect.
const CONNECT_POLL: Duration = Duration::from_millis(10);

/// The pause between failed attempts to subscribe.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(100);

/// Heartbeat rounds remembered while their messages travel; older ones are forgotten (a
/// round that old can no longer prove anything a newer one does not).
const ROUNDS_KEPT: usize = 64;

/// The store's side of its subscription, shared by its tasks.
pub(super) struct Feed {
    /// Fill waiters of this process.
    pub(super) notices: Arc<FillNotices>,
    watchers: RwLock<Vec<ChangeWatcher>>,
    /// Engines told of purges (they need no heartbeats: a loss is enough to read again).
    purge_watchers: RwLock<Vec<PurgeWatcher>>,
    /// Set once a watcher is registered: heartbeats are only sent when someone needs them.
    watched: AtomicBool,
    /// This store's id in its heartbeats, so it counts only its own.
    sender: String,
    /// Heartbeat rounds sent and not yet complete: (round, sent at, heartbeats still due).
    rounds: Mutex<VecDeque<(u64, Instant, usize)>>,
    next_round: AtomicU64,
}

impl Feed {
    pub(super) fn new(notices: Arc<FillNotices>) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let sender = format!(
            "{:016x}",
            RandomState::new().hash_one((std::process::id(), Instant::now()))
        );
        Self {
            notices,
            watchers: RwLock::default(),
            purge_watchers: RwLock::default(),
            watched: AtomicBool::new(false),
            sender,
            rounds: Mutex::default(),
            next_round: AtomicU64::new(0),
        }
    }

    pub(super) fn watch(&self, watcher: ChangeWatcher) {
        self.watchers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(watcher);
        self.watched.store(true, Ordering::Release);
    }

    pub(super) fn watch_purges(&self, watcher: PurgeWatcher) {
        self.purge_watchers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(watcher);
    }

    fn emit_purge(&self, event: PurgeEvent<'_>) {
        for watcher in self
            .purge_watchers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            watcher(event);
        }
    }

    fn emit(&self, change: Change<'_>) {
        for watcher in self
            .watchers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            watcher(change);
        }
    }

    /// Changes may have been missed: forget the rounds in flight too (their heartbeats may
    /// have overtaken lost changes), and tell the watchers.
    fn lost(&self) {
        self.rounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.emit(Change::Lost);
        self.emit_purge(PurgeEvent::Lost);
    }

    /// Handles one message from the channel.
    fn receive(&self, payload: &[u8]) {
        let Some((&kind, rest)) = payload.split_first() else {
            return;
        };
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match kind {
            b'S' | b'N' => {
                let notice = if kind == b'S' {
                    FillNotice::Stored
                } else {
                    FillNotice::NotStorable
                };
                // A fill's end may have written the key (an entry, or a hit-for-miss marker).
                self.emit(Change::Key(text));
                self.notices.dispatch(text, notice);
            }
            b'C' => self.emit(Change::Key(text)),
            b'R' => self.notices.dispatch(text, FillNotice::Released),
            b'P' => self.emit(Change::Prefix(text)),
            b'H' => self.heartbeat(text),
            b'X' => {
                let mut fields = text.splitn(3, '\n');
                let (Some(records), Some(at), Some(member)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return;
                };
                if let Ok(at_us) = at.parse::<u64>() {
                    self.emit_purge(PurgeEvent::Recorded {
                        records,
                        member,
                        at_us,
                    });
                }
            }
            _ => {}
        }
    }

    /// Counts one of this store's heartbeats; a complete round reports its time.
    fn heartbeat(&self, text: &str) {
        let Some((sender, round)) = text.split_once(':') else {
            return;
        };
        let Ok(round) = round.parse::<u64>() else {
            return;
        };
        if sender != self.sender {
            return;
        }
        let complete = {
            let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(position) = rounds.iter().position(|(n, _, _)| *n == round) else {
                return;
            };
            let due = &mut rounds[position].2;
            *due = due.saturating_sub(1);
            if *due > 0 {
                return;
            }
            let sent = rounds[position].1;
            // Rounds sent before this one are proven by it: drop them with it.
            rounds.drain(..=position);
            sent
        };
        self.emit(Change::UpTo(complete));
    }
}

/// The message announcing `notice` for `key`.
pub(super) fn notice_message(key: &str, notice: FillNotice) -> String {
    let kind = match notice {
        FillNotice::Stored => 'S',
        FillNotice::NotStorable => 'N',
        FillNotice::Changed => 'C',
        FillNotice::Released => 'R',
    };
    message(kind, key)
}

/// The message announcing that every key under `prefix` changed.
pub(super) fn prefix_message(prefix: &str) -> String {
    message('P', prefix)
}

fn message(kind: char, payload: &str) -> String {
    let mut message = String::with_capacity(payload.len() + 1);
    message.push(kind);
    message.push_str(payload);
    message
}

/// Subscribes once connected, and again after every reconnection and every restart of the
/// connection task (fred forgets subscriptions that failed while Redis was down, and a
/// restarted task has none), reporting each re-established subscription as a loss: whatever
/// was published meanwhile never arrived. `subscribed` turns `true` at the first.
pub(super) fn spawn_subscription(
    subscriber: SubscriberClient,
    channel: String,
    feed: Arc<Feed>,
    subscribed: tokio::sync::watch::Sender<bool>,
    mut restarts: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> tokio::task::JoinHandle<()> {
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    tokio::spawn(async move {
        subscribe(&subscriber, &channel).await;
        subscribed.send_replace(true);
        loop {
            tokio::select! {
                reconnected = reconnects.recv() => {
                    use tokio::sync::broadcast::error::RecvError;
                    if matches!(reconnected, Err(RecvError::Closed)) {
                        break;
                    }
                    feed.lost();
                    subscribe(&subscriber, &channel).await;
                    // Anything published before the subscription took effect is lost.
                    feed.lost();
                }
                Some(()) = restarts.recv() => {
                    feed.lost();
                    subscribe(&subscriber, &channel).await;
                    feed.lost();
                }
                error = errors.recv() => match error {
                    Ok((error, _)) => {
                        tracing::debug!(%error, "cache notice connection error");
                        feed.lost();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => feed.lost(),
                    // No more errors will come (the client quit); reconnections still do.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        errors = tokio::sync::broadcast::channel(1).1;
                    }
                },
            }
        }
    })
}

/// Subscribes to `channel`, retrying until it takes: a subscription that failed once (the
/// connection dropped again meanwhile) must not leave the process without notices for good.
pub(super) async fn subscribe(subscriber: &SubscriberClient, channel: &str) {
    let mut failures = 0u32;
    loop {
        if subscriber.is_connected() {
            match subscriber.subscribe(channel).await {
                Ok(()) => return,
                Err(error) => {
                    failures += 1;
                    // Once, then quietly: the connection's own errors are reported elsewhere.
                    if failures == 1 {
                        tracing::warn!(%error, %channel, "could not subscribe to cache notices: retrying");
                    }
                }
            }
        }
        let pause = if failures == 0 {
            CONNECT_POLL
        } else {
            RESUBSCRIBE_PAUSE
        };
        tokio::time::sleep(pause).await;
    }
}

/// Delivers the channel's messages: a lag in fred's broadcast channel (messages dropped
/// before this task read them) is a loss.
pub(super) fn spawn_delivery(
    subscriber: &SubscriberClient,
    feed: Arc<Feed>,
) -> tokio::task::JoinHandle<()> {
    let mut messages = subscriber.message_rx();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match messages.recv().await {
                Ok(message) => {
                    if let Some(payload) = message.value.as_bytes() {
                        feed.receive(payload);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cache notices lagged: near tiers flushed");
                    feed.lost();
                }
                Err(RecvError::Closed) => {
                    feed.lost();
                    break;
                }
            }
        }
    })
}

/// Sends a heartbeat round every `interval` while a watcher is registered and the
/// subscription is up: one `PUBLISH` to each primary (fred's cached slot map lists them on a
/// Cluster), all sent at once.
pub(super) fn spawn_heartbeat(
    pool: Pool,
    channel: String,
    feed: Arc<Feed>,
    subscribed: tokio::sync::watch::Receiver<bool>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !feed.watched.load(Ordering::Acquire) || !*subscribed.borrow() {
                continue;
            }
            let client = pool.next();
            if !client.is_connected() {
                continue;
            }
            let primaries = match client.cached_cluster_state() {
                Some(state) if client.is_clustered() => state.unique_primary_nodes(),
                _ => Vec::new(),
            };
            let round = feed.next_round.fetch_add(1, Ordering::Relaxed);
            {
                let mut rounds = feed.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                rounds.push_back((round, Instant::now(), primaries.len().max(1)));
                while rounds.len() > ROUNDS_KEPT {
                    rounds.pop_front();
                }
            }
            let text = format!("H{}:{round}", feed.sender);
            let options = Options {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(interval * 4),
                ..Options::default()
            };
            if primaries.is_empty() {
                let _ = client
                    .with_options(&options)
                    .publish::<i64, _, _>(channel.as_str(), text.as_str())
                    .await;
            } else {
                let sends = primaries.into_iter().map(|server| {
                    let node = client.with_cluster_node(server);
                    let (channel, text) = (channel.as_str(), text.as_str());
                    async move {
                        let _ = node.publish::<i64, _, _>(channel, text).await;
                    }
                });
                futures_util::future::join_all(sends).await;
            }
        }
    })
}
