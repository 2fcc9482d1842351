//! What only a real Redis shows: the Redis store's own properties (round trips, commands,
//! bytes written beside the cache, restarts), the near tier and its coherence across
//! instances, stores built on an application's connections, and the typed face (on Redis and
//! a Cluster). Apart from `http` because every test here starts `redis-server`.

#[path = "../support/mod.rs"]
mod support;

mod near_cache;
mod near_coherence;
mod one_engine;
mod store;
mod store_sharing;
mod typed;
