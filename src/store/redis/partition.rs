//! Keys on healthy Cluster primaries stay served while another primary is down.
//!
//! fred 10's Cluster client is one router for every node: an error on one node's connection
//! reconnects the whole client, and its reconnection fails for as long as `CLUSTER SLOTS`
//! still lists the dead primary (it connects to every listed node at once). Until a replica
//! is promoted (or, with no replica, until the node comes back) the client reports itself
//! disconnected and every command fails, whatever its slot: one dead primary would make the
//! whole fleet bypass the cache.
//!
//! So a clustered store also keeps one plain (centralized) connection to each primary of the
//! last slot map it saw while connected. While the Cluster client is down, a key's command goes
//! to the connection of the primary that owned its slot: keys on live primaries keep being
//! served; keys on the dead one fail at once with [`StoreErrorKind::NodeDown`], which the
//! fail-open guard counts but does not hold against the whole store (its breaker stays closed
//! for the live primaries). A primary that moved answers `MOVED`, an error like any other,
//! until the Cluster client is back and routes again. The cost while healthy: one idle
//! connection per primary and a slot map refreshed every [`REFRESH`].

use crate::error::{StoreError, StoreErrorKind};
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the slot map is copied from the Cluster client while it is connected, and the
/// primaries' own connections added for new primaries.
const REFRESH: Duration = Duration::from_secs(1);

/// How often the slot map is looked for until it is first known.
const FIRST_REFRESH: Duration = Duration::from_millis(20);

/// The slot map and one connection per primary, for when the Cluster client is down.
#[derive(Default)]
pub(super) struct Partitions {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    routing: Option<ClusterRouting>,
    nodes: HashMap<Server, Client>,
}

impl Partitions {
    /// The connection to the primary that owned `key`'s slot when the Cluster client was
    /// last connected: `Err(NodeDown)` when that connection is down too (or none is known).
    pub(super) fn client_for(&self, key: &str) -> Result<Client, StoreError> {
        let down = || StoreError::from_kind(StoreErrorKind::NodeDown);
        let state = self.state.read().map_err(|_| down())?;
        let slot = ClusterRouting::hash_key(key.as_bytes());
        let server = state
            .routing
            .as_ref()
            .and_then(|routing| routing.get_server(slot))
            .ok_or_else(down)?;
        match state.nodes.get(server) {
            Some(client) if client.is_connected() => Ok(client.clone()),
            _ => Err(down()),
        }
    }

    /// Copies the Cluster client's slot map while it is connected, and opens a connection to
    /// each primary it names that has none yet (kept running by `supervise`). Returns the
    /// tasks to abort when the store is dropped.
    fn refresh(&self, pool: &Pool) -> Vec<tokio::task::JoinHandle<()>> {
        let client = pool.next();
        let Some(routing) = client
            .is_connected()
            .then(|| client.cached_cluster_state())
            .flatten()
        else {
            return Vec::new();
        };
        let Ok(mut state) = self.state.write() else {
            return Vec::new();
        };
        let mut tasks = Vec::new();
        for server in routing.unique_primary_nodes() {
            if state.nodes.contains_key(&server) {
                continue;
            }
            let mut config = client.client_config();
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
            let node = Builder::from_config(config)
                .set_connection_config(client.connection_config().clone())
                .set_performance_config(client.perf_config())
                .set_policy(
                    client
                        .client_reconnect_policy()
                        .unwrap_or_else(super::default_reconnect_policy),
                )
                .build();
            let Ok(node) = node else {
                continue;
            };
            tasks.push(super::supervise::spawn(node.clone(), "cluster node", None));
            state.nodes.insert(server, node);
        }
        state.routing = Some(routing);
        tasks
    }

    /// Whether the slot map is known and every primary's own connection is up (a clustered
    /// store is ready once this holds).
    pub(super) fn ready(&self) -> bool {
        self.state.read().is_ok_and(|state| {
            state.routing.is_some() && state.nodes.values().all(ClientLike::is_connected)
        })
    }

    /// Whether a slot map has been copied from the Cluster client yet.
    fn known(&self) -> bool {
        self.state.read().is_ok_and(|state| state.routing.is_some())
    }

    /// Quits every primary's own connection.
    pub(super) async fn quit(&self) {
        let nodes: Vec<Client> = match self.state.read() {
            Ok(state) => state.nodes.values().cloned().collect(),
            Err(_) => return,
        };
        for node in nodes {
            let _ = node.quit().await;
        }
    }
}

/// For a clustered pool: keeps `partitions` current until the returned task is aborted; the
/// primaries' connection tasks it starts are aborted with it.
pub(super) fn spawn(
    pool: &Pool,
    partitions: &Arc<Partitions>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !pool.is_clustered() {
        return None;
    }
    let pool = pool.clone();
    let partitions = Arc::clone(partitions);
    Some(tokio::spawn(async move {
        let mut tasks = Tasks(Vec::new());
        loop {
            tasks.0.extend(partitions.refresh(&pool));
            // Soon after the Cluster client first connects, then every `REFRESH`.
            let pause = if partitions.known() {
                REFRESH
            } else {
                FIRST_REFRESH
            };
            tokio::time::sleep(pause).await;
        }
    }))
}

/// Connection tasks, aborted when dropped (with the refreshing task that owns them).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
