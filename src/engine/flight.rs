//! In-process single flight: one leader per key per process.
//!
//! The first request for a missing key becomes the leader and runs the fill; the others follow
//! and await the leader's outcome. Followers only ever receive a *stored* entry, never the
//! leader's own response, so a response that may not be shared (private, cookie-setting,
//! answering credentials) cannot reach another client through coalescing. A flight stays
//! registered until its fill has finished writing, so a request arriving meanwhile is served
//! the new entry instead of starting a second fill.
//!
//! The flights are generic over what a fill hands its followers (`V`): the HTTP face shares
//! `Arc<Entry>` (through the aliases in `context`), the
//! typed face shares the stored bytes or the loader's error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// What a flight ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome<V> {
    /// Still running.
    Pending,
    /// The fill stored this entry: serve it (if the follower's variant matches).
    Stored(V),
    /// The origin failed and this stale entry was served instead (stale-if-error).
    Stale(V),
    /// Nothing shareable came of it: each follower asks the origin itself.
    GoToOrigin,
}

#[derive(Debug)]
pub(crate) struct Flights<V> {
    running: Mutex<HashMap<u128, watch::Receiver<Outcome<V>>>>,
}

// By hand: a derive would demand `V: Default`, which no outcome needs.
impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            running: Mutex::default(),
        }
    }
}

pub(crate) enum Role<V> {
    Leader(Leader<V>),
    Follower(Follower<V>),
}

impl<V: Clone> Flights<V> {
    /// Joins the flight for `key`, starting it when there is none.
    pub(crate) fn join(self: &Arc<Self>, key: u128) -> Role<V> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(receiver) = running.get(&key) {
            return Role::Follower(Follower {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(Outcome::Pending);
        running.insert(key, receiver.clone());
        Role::Leader(Leader {
            flights: Arc::clone(self),
            key,
            sender,
            receiver,
        })
    }

    /// Follows the flight for `key` if one is running; never starts one.
    pub(crate) fn follow(&self, key: u128) -> Option<Follower<V>> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.get(&key).map(|receiver| Follower {
            receiver: receiver.clone(),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The request that runs the fill. Dropping it ends the flight; followers of a flight that was
/// never resolved (the fill panicked or was aborted) go to the origin themselves.
pub(crate) struct Leader<V> {
    flights: Arc<Flights<V>>,
    key: u128,
    sender: watch::Sender<Outcome<V>>,
    receiver: watch::Receiver<Outcome<V>>,
}

impl<V> Leader<V> {
    pub(crate) fn resolve(&self, outcome: Outcome<V>) {
        self.sender.send_replace(outcome);
    }
}

impl<V> Drop for Leader<V> {
    fn drop(&mut self) {
        let mut running = self
            .flights
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if running
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.receiver))
        {
            running.remove(&self.key);
        }
    }
}

pub(crate) struct Follower<V> {
    receiver: watch::Receiver<Outcome<V>>,
}

impl<V: Clone> Follower<V> {
    /// Waits for the leader's outcome. Unbounded: race it against a deadline.
    pub(crate) async fn outcome(mut self) -> Outcome<V> {
        match self
            .receiver
            .wait_for(|o| !matches!(o, Outcome::Pending))
            .await
        {
            Ok(outcome) => outcome.clone(),
            Err(_) => Outcome::GoToOrigin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_followers_share_its_outcome_and_the_flight_ends_with_it() {
        let flights: Arc<Flights<u8>> = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join(7) else {
            panic!("first is leader")
        };
        let Role::Follower(follower) = flights.join(7) else {
            panic!("second follows")
        };
        assert!(matches!(flights.join(8), Role::Leader(_)));
        leader.resolve(Outcome::GoToOrigin);
        assert!(matches!(follower.outcome().await, Outcome::GoToOrigin));
        drop(leader);
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join(7), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_leader_dropped_unresolved_sends_followers_to_the_origin() {
        let flights: Arc<Flights<u8>> = Arc::new(Flights::default());
        let leader = flights.join(1);
        let Role::Follower(follower) = flights.join(1) else {
            panic!("second follows")
        };
        drop(leader);
        assert!(matches!(follower.outcome().await, Outcome::GoToOrigin));
    }
}
