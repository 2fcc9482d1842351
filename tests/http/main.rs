//! The HTTP face's behaviour, in process: what clients get and what the origin sees, on the
//! store `backend` picks (a `MemoryStore` unless `TRC_TEST_STORE=redis`), so it needs no Redis.
//! One binary: the HTTP behaviour modules share one build of the harness and one link.

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod coalescing;
mod conformance;
mod entry_props;
mod examples;
mod hit_miss;
mod partial_content;
mod poisoning;
mod purge;
mod semantics;
