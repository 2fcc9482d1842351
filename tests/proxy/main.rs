//! The caching reverse proxy (`examples/proxy/`) as its users run it: the built binary as a
//! child process, spoken to over TCP. Apart because it tests a process, not the library: it
//! builds the example first, and two proxies can share a store only through Redis.

#[path = "../support/mod.rs"]
mod support;

mod conformance_proxy;
mod poisoning_proxy;
#[allow(clippy::module_inception)]
mod proxy;
mod proxy_ops;
