//! The HTTP face's behaviour, in process: what clients get and what the origin sees.
//! One binary: the HTTP behaviour modules share one build of the harness and one link.

#[path = "../support/mod.rs"]
use crate::support;

mod coalescing;
mod conformance;
mod entry_props;
mod examples;
mod hit_miss;
mod poisoning;
mod purge;
mod semantics;
