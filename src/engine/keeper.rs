//! Keeping fill locks alive: one task per engine extends every lock this process's fills
//! hold, every third of the lock's ttl, while they load.
//!
//! A task and a timer per fill cost every miss a spawn, a timer registration and an abort
//! (the profiler put them among the top costs of a unique-key miss), though almost every fill
//! ends long before its first extension is due. Here a fill only adds its lock to a table and
//! removes it when it ends; the task runs only while the table holds locks, sleeps until the
//! earliest extension is due, and ends when the table empties.

use crate::engine::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use tokio::time::Instant;

/// The locks held by this process's fills, and whether the task extending them runs.
#[derive(Default)]
pub(crate) struct Keeper {
    /// A std mutex: it is held for a few map operations, never across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    held: HashMap<u64, Held>,
    running: bool,
}

struct Held {
    lock: String,
    token: String,
    due: Instant,
}

impl Keeper {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned table is still a valid table.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `lock` (held with `token`) alive until [`release`](Self::release) is called
    /// with the returned id, or an extension finds the lock lost.
    pub(crate) fn keep(engine: &Arc<Engine>, lock: &str, token: &str) -> u64 {
        let due = Instant::now() + engine.fills.lock_ttl / 3;
        let mut state = engine.keeper.state();
        let id = state.next_id;
        state.next_id += 1;
        let held = Held {
            lock: lock.to_owned(),
            token: token.to_owned(),
            due,
        };
        state.held.insert(id, held);
        if !state.running {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                state.running = true;
                runtime.spawn(run(Arc::downgrade(engine)));
            }
        }
        id
    }

    /// Stops extending the lock registered as `id` (the fill ended).
    pub(crate) fn release(&self, id: u64) {
        self.state().held.remove(&id);
    }
}

/// The extending task: sleeps until the earliest extension is due, extends every lock that
/// is due (at once, so one slow reply does not delay the others), and ends when nothing is
/// held or the engine is gone.
async fn run(engine: Weak<Engine>) {
    loop {
        let wake = {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let mut state = engine.keeper.state();
            match state.held.values().map(|held| held.due).min() {
                Some(due) => due,
                None => {
                    state.running = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(wake).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let ttl = engine.fills.lock_ttl;
        let now = Instant::now();
        let due: Vec<(u64, String, String)> = {
            let mut state = engine.keeper.state();
            state
                .held
                .iter_mut()
                .filter(|(_, held)| held.due <= now)
                .map(|(id, held)| {
                    held.due = now + ttl / 3;
                    (*id, held.lock.clone(), held.token.clone())
                })
                .collect()
        };
        let extensions = due.iter().map(|(id, lock, token)| {
            let engine = &engine;
            async move { (*id, engine.store.extend_lock(lock, token, ttl).await) }
        });
        for (id, extended) in futures_util::future::join_all(extensions).await {
            // Lost or unreachable: stop extending it; the fill completes without the lock.
            if !matches!(extended, Ok(true)) {
                engine.keeper.release(id);
            }
        }
    }
}
