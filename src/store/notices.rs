//! In-process fan-out of fill notices to the requests waiting for them.

use super::FillNotice;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Routes fill notices to the waiters registered for a key. A store owns one and feeds it,
/// from its pub/sub subscription (Redis) or directly (memory).
#[derive(Default)]
pub struct FillNotices {
    waiters: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for FillNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillNotices").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Slot {
    sender: watch::Sender<Option<FillNotice>>,
    waiters: usize,
}

impl FillNotices {
    /// Registers a waiter for `entry_key`.
    pub fn register(self: &Arc<Self>, entry_key: &str) -> FillWaiter {
        let mut map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = map.entry(entry_key.to_owned()).or_insert_with(|| Slot {
            sender: watch::channel(None).0,
            waiters: 0,
        });
        slot.waiters += 1;
        let mut receiver = slot.sender.subscribe();
        // Only notices sent from now on concern this waiter.
        receiver.borrow_and_update();
        FillWaiter {
            notices: Arc::clone(self),
            key: entry_key.to_owned(),
            receiver,
        }
    }

    /// Delivers `notice` (unless it is [`FillNotice::Changed`], which concerns near tiers,
    /// not fills) to every waiter registered for `entry_key`.
    pub fn dispatch(&self, entry_key: &str, notice: FillNotice) {
        if notice == FillNotice::Changed {
            return;
        }
        let map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get(entry_key) {
            slot.sender.send_replace(Some(notice));
        }
    }

    fn release(&self, entry_key: &str) {
        let mut map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get_mut(entry_key) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                map.remove(entry_key);
            }
        }
    }
}

/// One request's interest in the next fill notice for a key; unregisters on drop.
#[derive(Debug)]
pub struct FillWaiter {
    notices: Arc<FillNotices>,
    key: String,
    receiver: watch::Receiver<Option<FillNotice>>,
}

impl FillWaiter {
    /// Waits for the next notice. Pending forever if none comes: race it against a deadline.
    pub async fn notice(&mut self) -> FillNotice {
        loop {
            if self.receiver.changed().await.is_err() {
                // The slot outlives every waiter, so this cannot happen; wait for the deadline.
                std::future::pending::<()>().await;
            }
            if let Some(notice) = *self.receiver.borrow_and_update() {
                return notice;
            }
        }
    }
}

impl Drop for FillWaiter {
    fn drop(&mut self) {
        self.notices.release(&self.key);
    }
}
