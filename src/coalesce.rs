//! In-process single flight: one leader per key per process (design §6.1).
//!
//! The first request for a missing key becomes the leader and runs the fill; the others follow
//! and await the leader's outcome. Followers only ever receive a *stored* entry, never the
//! leader's own response, so a response that may not be shared (private, cookie-setting,
//! answering credentials) cannot reach another client through coalescing. A flight stays
//! registered until its fill has finished writing, so a request arriving meanwhile is served
//! the new entry instead of starting a second fill.

use crate::entry::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// What a flight ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Still running.
    Pending,
    /// The fill stored this entry: serve it (if the follower's variant matches).
    Stored(Arc<Entry>),
    /// The origin failed and this stale entry was served instead (stale-if-error).
    Stale(Arc<Entry>),
    /// Nothing shareable came of it: each follower asks the origin itself.
    GoToOrigin,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<u128, watch::Receiver<Outcome>>>,
}

pub(crate) enum Role {
    Leader(Leader),
    Follower(Follower),
}

impl Flights {
    /// Joins the flight for `key`, starting it when there is none.
    pub(crate) fn join(self: &Arc<Self>, key: u128) -> Role {
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
    pub(crate) fn follow(&self, key: u128) -> Option<Follower> {
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
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: u128,
    sender: watch::Sender<Outcome>,
    receiver: watch::Receiver<Outcome>,
}

impl Leader {
    pub(crate) fn resolve(&self, outcome: Outcome) {
        self.sender.send_replace(outcome);
    }
}

impl Drop for Leader {
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

pub(crate) struct Follower {
    receiver: watch::Receiver<Outcome>,
}

impl Follower {
    /// Waits for the leader's outcome. Unbounded: race it against a deadline.
    pub(crate) async fn outcome(mut self) -> Outcome {
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
        let flights = Arc::new(Flights::default());
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
        let flights = Arc::new(Flights::default());
        let leader = flights.join(1);
        let Role::Follower(follower) = flights.join(1) else {
            panic!("second follows")
        };
        drop(leader);
        assert!(matches!(follower.outcome().await, Outcome::GoToOrigin));
    }
}
