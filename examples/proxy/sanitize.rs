//! Request sanitising: what a client sent is reduced to what the cache key describes, before
//! [`CacheLayer`](tower_redis_cache::CacheLayer) sees the request.
//!
//! A shared cache serves one client's answer to others, so anything that can change the
//! origin's answer must either be in the key or never reach the origin (README, Security). The
//! layer keys on method class, authority, path and query, and on the headers a response
//! `Vary`s on; this step makes the forwarded request agree with exactly that:
//!
//! - **One authority.** The authority in the key is the `Host` the origin is asked with. An
//!   absolute-form target (`GET http://a.example/x`) or an HTTP/2 `:authority` wins over
//!   `Host` (RFC 9112 §3.2.2): `Host` is set to it, and the target the layer keys on is
//!   rewritten as `<proto>://<host><path>` with the scheme the proxy forwards in
//!   `X-Forwarded-Proto`, so the layer and the origin see the same scheme and host. More than one `Host`, an invalid one, or none
//!   on HTTP/1.1 is a `400` (RFC 9112 §3.2) that reaches neither the layer nor the origin.
//!   Hosts are lowercased (they are case-insensitive, and the key lowercases them), so an
//!   origin reflecting `Host` renders the same bytes for every spelling that shares an entry.
//! - **Hop-by-hop headers**, including every header `Connection` names, are removed here and
//!   not after the layer: otherwise the layer would pick a `Vary` variant from an `Accept`
//!   that `Connection: accept` then strips, and store the origin's default answer under the
//!   variant of another.
//! - **Forwarding headers** (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `True-Client-IP`,
//!   `X-Original-URL`, `X-Scheme`, the method overrides and the rest of that family; see
//!   [`is_forwarding`]) are the client's word about hops in front of us; an origin that builds
//!   URLs from them renders a page for the attacker's host that the cache then serves to
//!   everyone. They are recognised by family and with `_` read as `-` (CGI-style origins do
//!   the same), and of the whole family the origin sees only what the proxy sets itself:
//!   `X-Forwarded-For` (the trusted chain plus the peer, or just the peer), `X-Forwarded-Host`
//!   (the host it keyed on) and `X-Forwarded-Proto` (the trusted scheme, else `http`). From a
//!   peer in `--trusted-proxies` only the `X-Forwarded-For` chain and `X-Forwarded-Proto` are
//!   read first. The scheme is part of the key (an `https` request reaches the layer in
//!   absolute form), so an `http` answer (say a redirect to https) is never served to `https`
//!   clients.
//! - **Upgrades** to a listed protocol (`Connection: upgrade`, `Upgrade: websocket`) are marked
//!   [`UpgradeRequest`] before their headers go: the layer bypasses them and the forwarding
//!   service tunnels them.
//! - **Content on GET or HEAD** has no defined meaning (RFC 9110 §9.3.1) but some frameworks
//!   read it; such a request is marked [`CarriesContent`], and the proxy's layer bypasses the
//!   cache for it, so it is answered for its sender only.
//! - **The path is left alone**, byte for byte: neither the key nor the forwarded target is
//!   normalised (dot segments, `//`, `%2e`, `%2F`), so the two cannot disagree. Equivalent
//!   spellings get separate entries; that costs hit ratio, never another client's answer.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// Headers that speak for the hops in front of the origin: the client's address, the host,
/// port, scheme, path prefix or URL it asked for, its certificate or user, or the method it
/// "really" meant. Frameworks trust them without a `Vary`, so each can change the origin's
/// answer while the key stays the same. They are recognised by family, not by a list of
/// known names: a name matches when, read with `_` as `-` (WSGI, CGI and PHP origins turn
/// `X_Forwarded_Prefix` into the same variable as `X-Forwarded-Prefix`), it equals one of
/// [`FORWARDING_NAMES`] or starts with one of [`FORWARDING_PREFIXES`]. Of this family the
/// origin sees only what [`sanitize`] sets itself (the allowlist): `X-Forwarded-For`,
/// `X-Forwarded-Host` and `X-Forwarded-Proto`, rebuilt from the connection, the keyed host and
/// the keyed scheme. A trusted peer's `X-Forwarded-For` chain and `X-Forwarded-Proto` are read
/// before the family goes.
const FORWARDING_NAMES: [&str; 24] = [
    "forwarded",
    "x-forwarded",
    "x-host",
    "x-scheme",
    "x-url-scheme",
    "x-proto",
    "front-end-https",
    "x-https",
    "true-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "akamai-origin-hop",
    "x-proxyuser-ip",
    "x-cluster-client-ip",
    "x-arr-ssl",
    "x-arr-clientcert",
    "x-ssl-client-cert",
    "ssl-client-cert",
    "x-remote-user",
    "remote-user",
    "x-authenticated-user",
    "x-client-ip",
    "x-client-cert",
];

/// Name prefixes of the forwarding family (see [`FORWARDING_NAMES`]), including the
/// method-override headers (`X-HTTP-Method-Override` and kin make frameworks run a `DELETE`
/// for a cached `GET`). Only prefixes no application header is likely to share: `X-Client-`
/// is not one (`X-Client-Version` is an application's own), so its forwarding members are
/// listed by name.
const FORWARDING_PREFIXES: [&str; 8] = [
    "x-forwarded-",
    "x-original-",
    "x-rewrite-",
    "x-real-",
    "x-http-method",
    "x-method-",
    "x-remote-",
    "x-envoy-",
];

/// Whether `name` (lowercase, as `http` stores it) is in the forwarding family.
fn is_forwarding(name: &str) -> bool {
    let name = name.as_bytes();
    FORWARDING_NAMES
        .iter()
        .any(|listed| name.len() == listed.len() && same_bytes(name, listed.as_bytes()))
        || FORWARDING_PREFIXES.iter().any(|prefix| {
            name.get(..prefix.len())
                .is_some_and(|start| same_bytes(start, prefix.as_bytes()))
        })
}

/// `a` equals `b` (of the same length) when every `_` of `a` is read as `-`.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
}

/// The `Upgrade` protocols tunnelled to the origin (uncached). Any other token is refused
/// rather than passed through: `h2c` or an unknown protocol would let a client speak to the
/// origin past the sanitiser.
const TUNNELLED_UPGRADES: [&str; 1] = ["websocket"];

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the
/// proxy-only ones): never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// A request extension: the request came with content. The layer is built to bypass the
/// cache for such requests (see [`carries_content`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CarriesContent;

/// A request extension: the client asked to switch protocols (`Connection: upgrade` with
/// `Upgrade: <protocol>`, e.g. a WebSocket handshake). The headers themselves are hop-by-hop
/// and removed; this carries the protocol to the forwarding service, which asks the upstream
/// for it and tunnels the connection. The layer bypasses such requests.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeRequest(pub(crate) HeaderValue);

/// The layer's bypass test: requests the sanitiser marked as carrying content or asking for
/// an upgrade are never answered from, or stored in, the cache.
pub(crate) fn bypasses_cache(parts: &Parts) -> bool {
    parts.extensions.get::<CarriesContent>().is_some()
        || parts.extensions.get::<UpgradeRequest>().is_some()
}

/// What the sanitiser needs to know beyond the request: which peers may speak for hops in
/// front of them, and the host to assume for HTTP/1.0 requests that name none.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) trusted: TrustedProxies,
    /// For HTTP/1.0 requests without `Host` (the version made it optional): the upstream's
    /// authority, so the key and the forwarded `Host` still agree.
    pub(crate) default_host: HeaderValue,
}

/// The answer to a request refused before the cache: status and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

impl Refusal {
    fn bad_request(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }

    /// A small `text/plain` page that closes the connection: after a malformed request the
    /// rest of the byte stream is not worth trusting.
    fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "{}: {}\n",
            self.status.canonical_reason().unwrap_or("refused"),
            self.reason
        ))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// Rewrites a request in place so that what the origin is asked is what the cache keys on
/// (module docs), or refuses it.
pub(crate) fn sanitize(
    parts: &mut Parts,
    has_content: bool,
    peer: IpAddr,
    policy: &Policy,
) -> Result<(), Refusal> {
    if parts.method == Method::CONNECT {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "this is a reverse proxy: CONNECT is not served",
        });
    }
    let host = resolve_host(parts, policy)?;
    parts.headers.insert(header::HOST, host.clone());

    let upgrade = upgrade_request(parts);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        parts.extensions.insert(upgrade);
    }
    let trusted = policy.trusted.contains(peer);
    let chain = if trusted {
        forwarded_for_chain(&parts.headers)
    } else {
        None
    };
    let proto = if trusted {
        trusted_proto(&parts.headers)
    } else {
        None
    };
    // Every forwarding header goes, a trusted peer's too: what the origin may learn from them
    // is rebuilt below from what the cache keys on (the host, the scheme) and the client
    // chain. A trusted peer's port, prefix or `Forwarded` would reach the origin unkeyed.
    // One pass over the request's own names (usually a handful), rather than a lookup (a
    // parse and a hash) per listed name on every request.
    let dropped: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| is_forwarding(name.as_str()))
        .cloned()
        .collect();
    for name in dropped {
        parts.headers.remove(name);
    }
    // The scheme the client used is part of the key (an `https` page may differ from the
    // `http` one: think of a redirect to https), so an `https` request goes to the layer in
    // absolute form; its authority is the `Host` it carries, so the two agree.
    if proto.as_ref().is_some_and(|p| p == "https") {
        let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        if let Ok(absolute) = format!("https://{}{path}", host.to_str().unwrap_or_default()).parse()
        {
            parts.uri = absolute;
        }
    }

    let peer = peer.to_canonical().to_string();
    let forwarded_for = match chain {
        Some(chain) => format!("{chain}, {peer}"),
        None => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    parts
        .headers
        .insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    let proto = proto.unwrap_or(HeaderValue::from_static("http"));
    parts.uri = keyed_target(&parts.uri, &proto, &host)?;
    parts
        .headers
        .insert(HeaderName::from_static("x-forwarded-proto"), proto);

    // Only a safe method's content is out of place: a `POST`'s is its meaning, and its answer
    // is stored only when the origin names it the target's representation (the layer's rule).
    if has_content && parts.method.is_safe() {
        parts.extensions.insert(CarriesContent);
    }
    Ok(())
}

/// An HTTP/1.1 `GET` with `Connection: upgrade` and one `Upgrade` value that is listed in
/// [`TUNNELLED_UPGRADES`]: a protocol switch (WebSocket) to tunnel. Any other upgrade is an
/// ordinary request (its `Upgrade` and `Connection` headers are hop-by-hop and removed). HTTP/2 has no such handshake (RFC 9113 §8.6).
fn upgrade_request(parts: &Parts) -> Option<UpgradeRequest> {
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut protocols = parts.headers.get_all(header::UPGRADE).iter();
    let protocol = protocols.next()?;
    let listed = TUNNELLED_UPGRADES
        .iter()
        .any(|listed| protocol.as_bytes().eq_ignore_ascii_case(listed.as_bytes()));
    (asks && listed && protocols.next().is_none()).then(|| UpgradeRequest(protocol.clone()))
}

/// The target the layer keys on: `proto://host` and the path and query exactly as received.
/// The layer keys on the URI's scheme and authority, and the forwarding service sends only
/// the path and query, with `Host` and `X-Forwarded-Proto` saying the rest: one value each.
/// `OPTIONS *` stays as it is (it names no resource).
fn keyed_target(uri: &Uri, proto: &HeaderValue, host: &HeaderValue) -> Result<Uri, Refusal> {
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if path_and_query.as_str() == "*" {
        return Ok(uri.clone());
    }
    let scheme = if proto.as_bytes() == b"https" {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority =
        Authority::try_from(host.as_bytes()).map_err(|_| Refusal::bad_request("invalid host"))?;
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Refusal::bad_request("invalid request target"))
}

/// The one authority of a request (module docs), lowercased, as a `Host` value.
fn resolve_host(parts: &Parts, policy: &Policy) -> Result<HeaderValue, Refusal> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::bad_request("more than one Host header"));
    }
    if let Some(authority) = parts.uri.authority() {
        match parts.uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(Refusal::bad_request(
                    "the request target is not an http URL",
                ))
            }
        }
        return valid_host(authority.as_str().as_bytes())
            .ok_or_else(|| Refusal::bad_request("invalid host in the request target"));
    }
    match host {
        Some(host) => {
            valid_host(host.as_bytes()).ok_or_else(|| Refusal::bad_request("invalid Host header"))
        }
        None if parts.version <= Version::HTTP_10 => Ok(policy.default_host.clone()),
        None => Err(Refusal::bad_request("no Host header")),
    }
}

/// `host[:port]` as RFC 3986 allows it in practice, lowercased: a DNS-style name (letters,
/// digits, `-`, `.`, `_`), an IPv4 address, or a bracketed IPv6 address; then an optional
/// decimal port up to 65535. No user info, no percent-encoding, no path: anything else a
/// client puts in `Host` is a way to make the origin and the key disagree.
fn valid_host(value: &[u8]) -> Option<HeaderValue> {
    let text = std::str::from_utf8(value).ok()?;
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        Ipv6Addr::from_str(literal).ok()?;
        match after {
            "" => (text, None),
            _ => (&text[..literal.len() + 2], Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        }
    };
    let name_ok = name.starts_with('[')
        || (!name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && {
            port.parse::<u16>().is_ok()
        }
    });
    if !(name_ok && port_ok) {
        return None;
    }
    HeaderValue::from_str(&text.to_ascii_lowercase()).ok()
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1): the fixed list, and every header `Connection` names, except the message's own
/// host and framing, which a client could otherwise strip through us.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A trusted peer's `X-Forwarded-For` values as one list, when they are plain text.
fn forwarded_for_chain(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok().map(str::trim))
        .collect::<Option<_>>()?;
    let chain = values
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    (!chain.is_empty()).then_some(chain)
}

/// A trusted peer's `X-Forwarded-Proto`, when it is exactly `http` or `https`.
fn trusted_proto(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all("x-forwarded-proto").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    match value.as_bytes() {
        b"http" | b"https" => Some(value.clone()),
        _ => None,
    }
}

/// The IP ranges (`--trusted-proxies`) whose connections may carry forwarding headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Whether `peer` is in one of the ranges (IPv4-mapped IPv6 peers count as IPv4).
    pub(crate) fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|cidr| cidr.contains(peer))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of `ADDR/LEN` ranges or single addresses.
    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

/// One IPv4 or IPv6 range: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), self.prefix, 32) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == net.into()
            }
            _ => false,
        }
    }
}

/// `bits` of width `width` with all but the top `prefix` bits cleared.
fn mask(bits: u128, prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        (bits >> host_bits) << host_bits
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, String> {
        let (addr, prefix) = match item.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (item, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{item:?} is not an IP address or ADDR/LEN range"))?;
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{item:?}: the prefix length must be 0 to {width}"))?,
        };
        let cidr = Cidr { network, prefix };
        let bits = match network {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if mask(bits, prefix, u32::from(width)) != bits {
            return Err(format!(
                "{item:?} has bits set past its /{prefix} prefix; write the network address"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}/{}", cidr.network, cidr.prefix)?;
        }
        Ok(())
    }
}

/// Help texts of the metrics this module records.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "proxy_requests_refused_total",
        "Requests refused before the cache (duplicate or invalid Host, CONNECT), by status."
    );
}

/// The sanitising step as a tower service, in front of the cache layer of one connection.
#[derive(Clone)]
pub(crate) struct Sanitize<S> {
    inner: S,
    peer: IpAddr,
    policy: Arc<Policy>,
}

impl<S> Sanitize<S> {
    /// Sanitises the requests of a connection from `peer` before `inner` sees them.
    pub(crate) fn new(inner: S, peer: IpAddr, policy: Arc<Policy>) -> Self {
        Self {
            inner,
            peer,
            policy,
        }
    }
}

impl<S, B, R> Service<Request<B>> for Sanitize<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    B: Body,
{
    type Response = Response<Either<R, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let has_content = !body.is_end_stream();
        match sanitize(&mut parts, has_content, self.peer, &self.policy) {
            Ok(()) => ResponseFuture::Inner {
                future: self.inner.call(Request::from_parts(parts, body)),
            },
            Err(refusal) => {
                tracing::debug!(peer = %self.peer, reason = refusal.reason, "request refused");
                metrics::counter!(
                    "proxy_requests_refused_total",
                    "status" => refusal.status.as_str().to_owned()
                )
                .increment(1);
                ResponseFuture::Refused {
                    response: Some(refusal.response()),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Sanitize`]: the inner service's answer, or a refusal ready at once.
    #[project = ResponseFutureProj]
    pub(crate) enum ResponseFuture<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<Either<R, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Left))),
            ResponseFutureProj::Refused { response } => {
                // Polled again after completion (a caller bug): answer again rather than panic.
                let response = response.take().unwrap_or_else(|| {
                    Refusal {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        reason: "polled after completion",
                    }
                    .response()
                });
                Poll::Ready(Ok(response.map(Either::Right)))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn forwarding_family_is_recognised_in_any_spelling() {
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x_forwarded_prefix",
            "x-forwarded-path",
            "x-forwarded-client-cert",
            "x_real_ip",
            "true-client-ip",
            "x-scheme",
            "x_http_method_override",
            "x-original-url",
        ] {
            assert!(is_forwarding(name), "{name}");
        }
        for name in [
            "accept",
            "x-request-id",
            "x-forwardedness",
            "cookie",
            "x-scheme-version",
        ] {
            assert!(!is_forwarding(name), "{name}");
        }
    }

    use super::*;

    fn policy(trusted: &str) -> Policy {
        Policy {
            trusted: trusted.parse().expect("ranges"),
            default_host: HeaderValue::from_static("upstream.internal:9000"),
        }
    }

    fn parts(raw: Request<()>) -> Parts {
        raw.into_parts().0
    }

    fn peer() -> IpAddr {
        IpAddr::from([192, 0, 2, 7])
    }

    #[test]
    fn absolute_form_wins_over_host_and_becomes_origin_form() {
        let mut p = parts(
            Request::get("http://Victim.Example/x?q=1")
                .header("host", "evil.example")
                .body(())
                .unwrap(),
        );
        sanitize(&mut p, false, peer(), &policy("")).unwrap();
        assert_eq!(p.uri, "http://victim.example/x?q=1");
        assert_eq!(p.headers["host"], "victim.example");
        assert_eq!(p.headers["x-forwarded-host"], "victim.example");
    }

    #[test]
    fn duplicate_invalid_or_missing_hosts_are_refused() {
        for hosts in [
            &["a.example", "b.example"][..],
            &["a.example", "a.example"],
            &["user@a.example"],
            &["a.example/path"],
            &["a.example:99999"],
            &["a.example:8x"],
            &["[::1"],
            &["a%2eexample"],
            &[""],
            &[],
        ] {
            let mut builder = Request::get("/x");
            for host in hosts {
                builder = builder.header("host", *host);
            }
            let mut p = parts(builder.body(()).unwrap());
            let refusal = sanitize(&mut p, false, peer(), &policy("")).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{hosts:?}");
        }
        for good in [
            "a.example",
            "a.example:8080",
            "[::1]:8080",
            "[::1]",
            "10.0.0.1",
        ] {
            let mut p = parts(Request::get("/x").header("host", good).body(()).unwrap());
            sanitize(&mut p, false, peer(), &policy("")).unwrap();
            assert_eq!(p.headers["host"], good);
        }
        let mut p = parts(
            Request::get("/x")
                .version(Version::HTTP_10)
                .body(())
                .unwrap(),
        );
        sanitize(&mut p, false, peer(), &policy("")).unwrap();
        assert_eq!(p.headers["host"], "upstream.internal:9000");
    }

    #[test]
    fn connection_named_and_forwarding_headers_are_gone_before_the_layer() {
        let mut p = parts(
            Request::get("/x")
                .header("host", "a.example")
                .header("accept", "application/json")
                .header("connection", "accept, host, content-length")
                .header("x-forwarded-host", "evil.example")
                .header("forwarded", "host=evil.example")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "https")
                .header("x-original-url", "/admin")
                .header("x-http-method-override", "DELETE")
                .header("x-real-ip", "6.6.6.6")
                .body(())
                .unwrap(),
        );
        sanitize(&mut p, false, peer(), &policy("10.0.0.0/8")).unwrap();
        for gone in [
            "accept",
            "connection",
            "forwarded",
            "x-original-url",
            "x-http-method-override",
            "x-real-ip",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(p.headers["host"], "a.example");
        assert_eq!(p.headers["x-forwarded-host"], "a.example");
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn trusted_peers_keep_their_forwarding_chain() {
        let mut p = parts(
            Request::get("/x")
                .header("host", "a.example")
                .header("x-forwarded-for", "203.0.113.9, 10.1.1.1")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "evil.example")
                .header("forwarded", "for=203.0.113.9;proto=https")
                .header("x-original-url", "/admin")
                .body(())
                .unwrap(),
        );
        let trusted = IpAddr::from([10, 2, 3, 4]);
        sanitize(&mut p, false, trusted, &policy("10.0.0.0/8, ::1")).unwrap();
        assert_eq!(
            p.headers["x-forwarded-for"],
            "203.0.113.9, 10.1.1.1, 10.2.3.4"
        );
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        // The scheme a trusted hop vouches for is keyed (the layer keys on the URI's).
        assert_eq!(p.uri, "https://a.example/x");
        assert_eq!(p.headers["x-forwarded-host"], "a.example");
        // Unkeyed forwarding headers go even from a trusted peer; the scheme is keyed.
        assert!(!p.headers.contains_key("forwarded"));
        assert!(!p.headers.contains_key("x-original-url"));
        assert_eq!(p.uri, "https://a.example/x");
    }

    #[test]
    fn content_on_a_get_is_marked_and_connect_is_refused() {
        let mut p = parts(Request::get("/x").header("host", "a").body(()).unwrap());
        sanitize(&mut p, true, peer(), &policy("")).unwrap();
        assert!(bypasses_cache(&p));
        let mut p = parts(Request::get("/x").header("host", "a").body(()).unwrap());
        sanitize(&mut p, false, peer(), &policy("")).unwrap();
        assert!(!bypasses_cache(&p));
        let mut p = parts(
            Request::get("/ws")
                .header("host", "a")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "websocket")
                .body(())
                .unwrap(),
        );
        sanitize(&mut p, false, peer(), &policy("")).unwrap();
        assert!(bypasses_cache(&p));
        assert!(!p.headers.contains_key("upgrade"));
        let mut p = parts(
            Request::builder()
                .method(Method::CONNECT)
                .uri("a.example:443")
                .body(())
                .unwrap(),
        );
        let refusal = sanitize(&mut p, false, peer(), &policy("")).unwrap_err();
        assert_eq!(refusal.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn paths_are_kept_byte_for_byte() {
        for target in ["/a/../b", "//a", "/%2e%2e/x", "/a%2Fb", "/./a?x=%2F"] {
            let mut p = parts(Request::get(target).header("host", "a").body(()).unwrap());
            sanitize(&mut p, false, peer(), &policy("")).unwrap();
            assert_eq!(p.uri.path_and_query().map(|pq| pq.as_str()), Some(target));
            assert_eq!(p.uri.authority().map(|a| a.as_str()), Some("a"));
        }
    }

    #[test]
    fn trusted_ranges_parse_strictly_and_match() {
        let ranges: TrustedProxies = "10.0.0.0/8, 192.168.1.1, 2001:db8::/32, 0.0.0.0/0"
            .parse()
            .unwrap();
        assert_eq!(
            ranges.to_string(),
            "10.0.0.0/8,192.168.1.1/32,2001:db8::/32,0.0.0.0/0"
        );
        let ranges: TrustedProxies = "10.0.0.0/8,2001:db8::/32".parse().unwrap();
        assert!(ranges.contains(IpAddr::from([10, 255, 0, 1])));
        assert!(!ranges.contains(IpAddr::from([11, 0, 0, 1])));
        assert!(ranges.contains("2001:db8:1::5".parse().unwrap()));
        assert!(ranges.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!ranges.contains("2001:db9::1".parse().unwrap()));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "nope",
            "10.0.0.0/",
            "1.2.3/8",
        ] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
    }
}
