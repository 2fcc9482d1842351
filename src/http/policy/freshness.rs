//! How long a response is fresh: the layer's ttl and the response's own directives in
//! application mode; RFC 9111 (as `http-cache-semantics` reads it) in shared mode.

use crate::http::config::Config;
use crate::http::policy::cache_control::{directives, split_directives, understood, CacheControl};
use crate::http::policy::decision::{NoCacheReason, RequestHead};
use http::{header, HeaderMap, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};
use std::time::{Duration, SystemTime};

pub(super) fn application_freshness(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    cc: &CacheControl,
) -> Result<Duration, NoCacheReason> {
    let negative = config
        .negative_ttl
        .filter(|_| matches!(status.as_u16(), 404 | 410));
    if negative.is_none() && !config.statuses.contains(&status) {
        return Err(NoCacheReason::Status);
    }
    // `no-cache`: stored, but never fresh; every use is revalidated with the origin.
    if cc.no_cache && config.respect_cache_control {
        return Ok(Duration::ZERO);
    }
    if config.respect_cache_control {
        if let Some(secs) = cc.s_maxage.or(cc.max_age) {
            return Ok(Duration::from_secs(secs));
        }
    }
    default_ttl(config, request)?;
    Ok(negative.unwrap_or(config.ttl))
}

/// The configured ttl, for a response that declares no freshness of its own: refused when the
/// request carried cookies (unless `ttl_with_cookies`), since such a page is likely the
/// session's own, and the origin did not say it may be shared (Varnish's default too).
fn default_ttl(config: &Config, request: &RequestHead<'_>) -> Result<Duration, NoCacheReason> {
    if request.headers.contains_key(header::COOKIE) && !config.ttl_with_cookies {
        return Err(NoCacheReason::Cookie);
    }
    Ok(config.ttl)
}

struct PolicyRequest<'a>(&'a RequestHead<'a>);

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        self.0.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.0.uri == other
    }
    fn method(&self) -> &Method {
        &Method::GET
    }
    fn headers(&self) -> &HeaderMap {
        self.0.headers
    }
}

struct PolicyResponse<'a>(StatusCode, &'a HeaderMap);

impl ResponseLike for PolicyResponse<'_> {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn headers(&self) -> &HeaderMap {
        self.1
    }
}

/// Statuses a client can draw from an origin with headers the key does not hold (an
/// oversized or malformed header, a length or expectation the origin refuses, a header value
/// the application fails on): `400`, `411`-`413`, `415`-`417`, `431`, and `500`, which is what
/// frameworks answer when a request makes the application throw. (A `414` answers a target,
/// which is keyed; `502`-`504` describe the origin's or a gateway's own state and stay
/// storable when the origin says so.)
fn provokable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 411..=413 | 415..=417 | 431 | 500)
}

/// RFC 9111 freshness for a shared cache: (time to live from now, age already accrued).
pub(super) fn shared_freshness(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
) -> Result<(Duration, Duration), NoCacheReason> {
    if status == StatusCode::NOT_MODIFIED {
        return Err(NoCacheReason::Status);
    }
    let explicit = cc.no_cache
        || cc.public
        || cc.s_maxage.is_some()
        || cc.max_age.is_some()
        || headers.contains_key(header::EXPIRES);
    let heuristic = headers.contains_key(header::LAST_MODIFIED);
    if !explicit && !heuristic {
        // No freshness information at all: the operator's default, for the listed statuses.
        return if config.statuses.contains(&status) {
            default_ttl(config, request).map(|ttl| (ttl, Duration::ZERO))
        } else {
            Err(NoCacheReason::Status)
        };
    }
    // Errors a client can provoke with the request alone (a malformed or oversized header, a
    // failed precondition) are never shared, however fresh the origin says they are,
    // unless the operator lists the status: stored, one client's bad request would be
    // everyone's answer (cache-poisoned denial of service).
    if provokable(status) && !config.statuses.contains(&status) {
        return Err(NoCacheReason::Status);
    }
    if let Some(freshness) = plain_explicit_freshness(request, headers, cc) {
        return Ok(freshness);
    }
    evaluated_freshness(config, request, status, headers, cc, explicit)
}

/// The most common answer read directly, with what `http-cache-semantics` would conclude:
/// one `Cache-Control` of only `max-age`/`s-maxage` in plain digits (with `public`,
/// `must-revalidate` or the stale windows beside them), no `Age`, `Set-Cookie` or `Vary: *`,
/// no request `Cache-Control` or `Authorization`. Fresh for `s-maxage` (else `max-age`) seconds,
/// from age zero. Building the crate's policy (three header-map copies and a rebuilt
/// `Cache-Control`) is about 5 % of a miss's CPU; anything less plain than this goes to it.
fn plain_explicit_freshness(
    request: &RequestHead<'_>,
    headers: &HeaderMap,
    cc: &CacheControl,
) -> Option<(Duration, Duration)> {
    let seconds = cc.s_maxage.or(cc.max_age)?;
    if request.headers.contains_key(header::CACHE_CONTROL)
        || request.headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(header::AGE)
        || headers.contains_key(header::SET_COOKIE)
        // `Vary: *` was refused before; the crate zeroes its freshness, so never guess here.
        || headers
            .get_all(header::VARY)
            .iter()
            .any(|v| v.as_bytes().contains(&b'*'))
    {
        return None;
    }
    let mut values = headers.get_all(header::CACHE_CONTROL).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    // Each directive once, lowercase, numbers as digits only (short enough not to overflow).
    let number = |arg: Option<&str>| {
        arg.is_some_and(|a| !a.is_empty() && a.len() <= 18 && a.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut seen = 0u8;
    for (name, arg) in split_directives(value.to_str().ok()?) {
        let bit = match name {
            "public" if arg.is_none() => 1,
            "must-revalidate" if arg.is_none() => 2,
            "max-age" if number(arg) => 4,
            "s-maxage" if number(arg) => 8,
            "stale-while-revalidate" if number(arg) => 16,
            "stale-if-error" if number(arg) => 32,
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some((Duration::from_secs(seconds), Duration::ZERO))
}

/// RFC 9111 freshness as `http-cache-semantics` evaluates it, on the headers normalised for it.
fn evaluated_freshness(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    explicit: bool,
) -> Result<(Duration, Duration), NoCacheReason> {
    // Any other final status may be stored when the origin says for how long (RFC 9111 §3);
    // the crate only knows the classic list, so explicit freshness is evaluated as for a 200.
    let evaluated_status = if explicit { StatusCode::OK } else { status };
    let headers = normalized_for_policy(headers, cc, status, config);
    let now = SystemTime::now();
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(
        &PolicyRequest(request),
        &PolicyResponse(evaluated_status, &headers),
        now,
        options,
    );
    if !policy.is_storable() {
        return Err(NoCacheReason::NotStorable);
    }
    Ok((policy.time_to_live(now), policy.age(now)))
}

/// The response headers as `http-cache-semantics` should see them. That crate matches
/// directive names case-sensitively and reads `Age` strictly, so `Cache-Control` is rebuilt
/// from our own parse (names lowercased, `proxy-revalidate` as `must-revalidate`: see the
/// `policy` docs) and `Age` is reduced to its first value when that is a number (RFC 9111 §5.1),
/// else dropped. Dates are rewritten as [`normalize_dates`] says.
fn normalized_for_policy(
    headers: &HeaderMap,
    cc: &CacheControl,
    status: StatusCode,
    config: &Config,
) -> HeaderMap {
    let mut copy = headers.clone();
    // What `decide` already allowed, the crate must not refuse again: `no-store` lifted by
    // `must-understand`, and a `Set-Cookie` the operator opted in to sharing (the crate
    // wants `public` for it).
    let lifted = cc.must_understand && understood(status);
    if config.share_set_cookie {
        copy.remove(header::SET_COOKIE);
    }
    let rebuilt: Vec<String> = directives(headers.get_all(header::CACHE_CONTROL))
        .filter(|(name, _)| !(lifted && name == "no-store"))
        .map(|(name, arg)| {
            let name = if name == "proxy-revalidate" && !cc.must_revalidate {
                "must-revalidate".to_owned()
            } else {
                name
            };
            match arg {
                Some(arg)
                    if arg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                {
                    format!("{name}={arg}")
                }
                Some(arg) => format!("{name}=\"{}\"", arg.replace('"', "")),
                None => name,
            }
        })
        .collect();
    copy.remove(header::CACHE_CONTROL);
    if let Ok(value) = http::HeaderValue::from_str(&rebuilt.join(", ")) {
        if !rebuilt.is_empty() {
            copy.insert(header::CACHE_CONTROL, value);
        }
    }
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| http::HeaderValue::from_str(v.trim_start_matches('0')).ok());
    copy.remove(header::AGE);
    if let Some(Some(age)) = age {
        if !age.is_empty() {
            copy.insert(header::AGE, age);
        }
    }
    normalize_dates(&mut copy);
    copy
}

/// Rewrites the dates `http-cache-semantics` reads into IMF-fixdate, the one form its parser
/// (RFC 2822, more lenient than RFC 9110 in some ways and stricter in others) reads as HTTP
/// means it, after reading them with [`crate::http::date`]. An `Expires` that is not one valid
/// HTTP-date (or is sent twice) becomes `0`, "already expired" (RFC 9111 §5.3); an invalid
/// `Date` or `Last-Modified` is dropped, as if absent (the receipt time then stands for `Date`,
/// and no heuristic freshness is drawn from a modification time nobody can read).
fn normalize_dates(headers: &mut HeaderMap) {
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        let mut values = headers.get_all(&name).iter();
        let parsed = match (values.next(), values.next()) {
            (None, _) => continue,
            (Some(value), None) => crate::http::date::parse(value.as_bytes()),
            (Some(_), Some(_)) => None,
        };
        let rewritten =
            parsed.and_then(|t| http::HeaderValue::from_str(&crate::http::date::format(t)).ok());
        headers.remove(&name);
        match (rewritten, name == header::EXPIRES) {
            (Some(value), _) => {
                headers.insert(name, value);
            }
            (None, true) => {
                headers.insert(name, http::HeaderValue::from_static("0"));
            }
            (None, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::config::CacheMode;
    use http::HeaderValue;

    fn shared_config() -> Config {
        crate::CacheLayer::builder(crate::MemoryStore::new(1 << 20))
            .mode(CacheMode::Shared)
            .build()
            .unwrap()
            .config()
            .clone()
    }

    /// Wherever the direct reading answers, it answers as the crate does; and it answers the
    /// plain cases (so the comparison below is not vacuous).
    #[test]
    fn the_plain_reading_agrees_with_the_crate_wherever_it_answers() {
        let config = shared_config();
        let directives = [
            "max-age=60",
            "public, max-age=60",
            "s-maxage=30, max-age=60",
            "max-age=60, s-maxage=30",
            "max-age=0",
            "max-age=60, must-revalidate",
            "max-age=60, stale-while-revalidate=30, stale-if-error=600",
            "s-maxage=5",
            "MAX-AGE=60",
            "max-age=\"60\"",
            "max-age=60, max-age=10",
            "max-age=60,",
            "max-age=+60",
            "max-age=-1",
            "max-age=99999999999999999999",
            "max-age=60, immutable",
            "max-age=60, no-cache",
            "max-age=60, proxy-revalidate",
            "max-age = 60",
            "max-age=60, foo",
            "public",
        ];
        let extras: [&[(&str, &str)]; 10] = [
            &[],
            &[("age", "10")],
            &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
            &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")],
            &[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")],
            &[("vary", "accept-encoding")],
            &[("vary", "*")],
            &[("set-cookie", "a=b")],
            &[("pragma", "no-cache")],
            &[("cache-control", "public")],
        ];
        let requests: [&[(&str, &str)]; 3] = [
            &[],
            &[("cache-control", "no-store")],
            &[("authorization", "Basic eA==")],
        ];
        let uri = Uri::from_static("http://example.test/x");
        let mut answered = 0;
        for directive in directives {
            for extra in extras {
                for asked in requests {
                    let mut response = HeaderMap::new();
                    response.append(header::CACHE_CONTROL, HeaderValue::from_static(directive));
                    for (name, value) in extra {
                        response.append(*name, HeaderValue::from_static(value));
                    }
                    let mut request_headers = HeaderMap::new();
                    for (name, value) in asked {
                        request_headers.append(*name, HeaderValue::from_static(value));
                    }
                    let request = RequestHead {
                        uri: &uri,
                        headers: &request_headers,
                        authorized: !asked.is_empty() && asked[0].0 == "authorization",
                    };
                    let cc = CacheControl::parse(&response);
                    let Some(plain) = plain_explicit_freshness(&request, &response, &cc) else {
                        continue;
                    };
                    answered += 1;
                    for status in [200, 203, 301, 404, 299] {
                        let status = StatusCode::from_u16(status).unwrap();
                        let evaluated =
                            evaluated_freshness(&config, &request, status, &response, &cc, true);
                        assert_eq!(
                            evaluated,
                            Ok(plain),
                            "{directive:?} {extra:?} {asked:?} {status}"
                        );
                    }
                }
            }
        }
        // The nine plain directives (the first eight, and `max-age = 60`), each with no extra
        // header, a past `Expires`, a `Date`, a `Last-Modified`, `Vary: accept-encoding` or
        // `Pragma: no-cache`, asked plainly.
        assert_eq!(answered, 9 * 6);
    }
}
