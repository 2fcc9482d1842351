//! The HTTP face: requests become keys, responses become entries, over the shared engine.
//!
//! [`CacheLayer`] builds a [`CacheService`] per inner service; each request runs through
//! `flow` (classify, look up, answer, or fill). Nothing here is imported by the engine, the
//! stores or the typed face: the crate root re-exports the public items.

mod body;
mod buffer;
mod builder;
mod conditional;
mod config;
mod context;
mod date;
#[doc(hidden)]
pub mod entry;
mod fetch;
mod flow;
pub mod headers;
mod key;
mod layer;
mod lookup;
mod miss;
mod partial;
mod policy;
mod range;
mod respond;
mod revalidate;
mod service;
mod tags;
mod targeted;
mod write;

pub use self::body::CacheBody;
pub use self::builder::{CacheLayerBuilder, DEFAULT_MAX_FILL_BYTES, MAX_LOCK_WAIT};
pub use self::config::CacheMode;
pub use self::fetch::OriginUnreachable;
pub use self::key::{BypassFn, CacheKey, KeyFn};
pub use self::layer::CacheLayer;
pub use self::service::{CacheService, ResponseFuture};
pub use self::tags::{CacheTags, TagFn};
