//! Tracks the work the layer runs off the response path (fills and writes), so callers can
//! wait for it to finish: tests before they inspect the store, servers before they exit.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Background {
    running: AtomicUsize,
    idle: Notify,
}

impl Background {
    /// Counts one piece of work as running until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, SeqCst);
        Running(Arc::clone(self))
    }

    /// Waits until nothing is running.
    pub(crate) async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.running.load(SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One piece of background work; dropping it (also by a panic) marks it finished.
#[derive(Debug)]
pub(crate) struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
