//! Targeted cache control (RFC 9213): which response field speaks for this cache.
//!
//! An origin can address caching rules to one class of caches (`CDN-Cache-Control`) or to one
//! cache (`Tower-Cache-Control`, any name an operator lists). The layer holds a target list;
//! the first listed field a response carries with a valid, non-empty value replaces that
//! response's `Cache-Control` *and* `Expires` for this cache (RFC 9213 §2.1), with the same
//! directive semantics. A field that is not a valid Structured Field Dictionary (RFC 8941
//! §3.2), or gives a directive this cache acts on a value of the wrong type, is ignored as if
//! absent (§2.2), so the response falls back to its `Cache-Control`: a typo never makes a
//! response fresher than the origin's general rules say.
//!
//! Only response fields are read. A client sending a targeted field in its request changes
//! nothing; and the fields are passed on to clients untouched (the stored headers are the
//! origin's), so a CDN tier in front of or behind this cache reads the same rules.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The response's headers as this cache's policy should read them: `Cache-Control` replaced
/// by the directives of the first valid, non-empty targeted field and `Expires` removed, or
/// `None` when no targeted field applies (the response's own headers stand).
pub(crate) fn effective(headers: &HeaderMap, targets: &[HeaderName]) -> Option<HeaderMap> {
    let directives = targets.iter().find_map(|name| directives(headers, name))?;
    let mut copy = headers.clone();
    copy.remove(header::CACHE_CONTROL);
    copy.remove(header::EXPIRES);
    if !directives.is_empty() {
        // Rebuilt from parsed tokens, integers and escaped strings: always a valid value.
        if let Ok(value) = HeaderValue::from_str(&directives) {
            copy.insert(header::CACHE_CONTROL, value);
        }
    }
    Some(copy)
}

/// The `Cache-Control` value equivalent to the targeted field `name`, when the response
/// carries it with a valid, non-empty value.
fn directives(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    // Field lines combine into one value, comma-separated (RFC 8941 §4.2).
    let mut combined = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            combined.extend_from_slice(b", ");
        }
        combined.extend_from_slice(line.as_bytes());
    }
    let members = Parser::new(&combined).dictionary()?;
    if members.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (key, value) in &members {
        match directive(key, value)? {
            Some(directive) => out.push(directive),
            None => continue,
        }
    }
    Some(out.join(", "))
}

/// One member as a `Cache-Control` directive: `Ok(None)` (as `Some(None)`) when it says
/// nothing (`?0`, or an extension this cache does not act on), `None` when a directive this
/// cache acts on has a value of the wrong type (the whole field is then ignored).
fn directive(key: &str, value: &Bare) -> Option<Option<String>> {
    match key {
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => match value {
            Bare::Integer(n) if *n >= 0 => Some(Some(format!("{key}={n}"))),
            _ => None,
        },
        "no-store" | "must-revalidate" | "proxy-revalidate" | "public" | "immutable"
        | "must-understand" | "no-transform" => match value {
            Bare::Boolean(true) => Some(Some(key.to_owned())),
            Bare::Boolean(false) => Some(None),
            _ => None,
        },
        // Either alone, or qualified by a list of field names (a String).
        "no-cache" | "private" => match value {
            Bare::Boolean(true) => Some(Some(key.to_owned())),
            Bare::Boolean(false) => Some(None),
            Bare::String(names) => Some(Some(format!("{key}=\"{names}\""))),
            _ => None,
        },
        // Unrecognised extensions are ignored (RFC 9213 §2.1).
        _ => Some(None),
    }
}

/// A member's value, as far as this cache needs to tell them apart.
#[derive(Debug, PartialEq)]
enum Bare {
    Integer(i64),
    /// Strings hold only visible ASCII and spaces, with no `"` or `\` left (those are
    /// dropped), so they can be re-quoted as they are.
    String(String),
    Boolean(bool),
    /// A decimal, token, byte sequence or inner list: valid, never a type this cache uses.
    Other,
}

/// A Structured Field Dictionary parser (RFC 8941 §4.2.2), strict: any syntax error rejects
/// the whole field.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.pos += 1;
        }
        matched
    }

    fn skip(&mut self, ows: bool) {
        while matches!(self.peek(), Some(b' ')) || (ows && self.peek() == Some(b'\t')) {
            self.pos += 1;
        }
    }

    /// The members in order; a repeated key keeps its last value at its first position's
    /// place (only the value matters to a cache).
    fn dictionary(mut self) -> Option<Vec<(String, Bare)>> {
        let mut members: Vec<(String, Bare)> = Vec::new();
        self.skip(false);
        if self.peek().is_none() {
            return Some(members);
        }
        loop {
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.item_or_inner_list()?
            } else {
                self.parameters()?;
                Bare::Boolean(true)
            };
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
            self.skip(true);
            if self.peek().is_none() {
                return Some(members);
            }
            if !self.eat(b',') {
                return None;
            }
            self.skip(true);
            // A trailing comma is an error.
            self.peek()?;
        }
    }

    fn key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.pos += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.pos += 1;
        }
        Some(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip(false);
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn item_or_inner_list(&mut self) -> Option<Bare> {
        if self.eat(b'(') {
            loop {
                self.skip(false);
                if self.eat(b')') {
                    break;
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek()?, b' ' | b')') {
                    return None;
                }
            }
            self.parameters()?;
            return Some(Bare::Other);
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Some(item)
    }

    fn bare_item(&mut self) -> Option<Bare> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                self.pos += 1;
                while matches!(self.peek(), Some(b) if is_tchar(b) || b == b':' || b == b'/') {
                    self.pos += 1;
                }
                Some(Bare::Other)
            }
            b':' => {
                self.pos += 1;
                while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                {
                    self.pos += 1;
                }
                self.eat(b':').then_some(Bare::Other)
            }
            b'?' => {
                self.pos += 1;
                let value = match self.peek()? {
                    b'0' => false,
                    b'1' => true,
                    _ => return None,
                };
                self.pos += 1;
                Some(Bare::Boolean(value))
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Bare> {
        let negative = self.eat(b'-');
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let integer_digits = self.pos - start;
        if integer_digits == 0 {
            return None;
        }
        if self.eat(b'.') {
            let fraction = self.pos;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
            let fraction_digits = self.pos - fraction;
            return (integer_digits <= 12 && (1..=3).contains(&fraction_digits))
                .then_some(Bare::Other);
        }
        if integer_digits > 15 {
            return None;
        }
        let digits = std::str::from_utf8(&self.input[start..self.pos]).ok()?;
        let value: i64 = digits.parse().ok()?;
        Some(Bare::Integer(if negative { -value } else { value }))
    }

    fn string(&mut self) -> Option<Bare> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(Bare::String(out));
                }
                b'\\' => {
                    self.pos += 1;
                    // Only `\"` and `\\` are escapes; the escaped character is dropped, so the
                    // string can be quoted again without escapes.
                    if !matches!(self.peek()?, b'"' | b'\\') {
                        return None;
                    }
                    self.pos += 1;
                }
                b @ 0x20..=0x7e => {
                    out.push(char::from(b));
                    self.pos += 1;
                }
                _ => return None,
            }
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdn(values: &[&'static str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
        headers.insert("expires", HeaderValue::from_static("0"));
        for value in values {
            headers.append("cdn-cache-control", HeaderValue::from_static(value));
        }
        let targets = [HeaderName::from_static("cdn-cache-control")];
        effective(&headers, &targets).map(|h| {
            assert!(!h.contains_key("expires"), "Expires is replaced too");
            h.get("cache-control")
                .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
        })
    }

    #[test]
    fn a_valid_targeted_field_replaces_cache_control_and_expires() {
        assert_eq!(cdn(&["max-age=3600"]).as_deref(), Some("max-age=3600"));
        assert_eq!(
            cdn(&["foobar, max-age=99999999999"]).as_deref(),
            Some("max-age=99999999999")
        );
        assert_eq!(
            cdn(&["no-store, private=\"set-cookie\""]).as_deref(),
            Some("no-store, private=\"set-cookie\"")
        );
        assert_eq!(
            cdn(&["max-age=10", "no-cache"]).as_deref(),
            Some("max-age=10, no-cache")
        );
        assert_eq!(
            cdn(&["no-store=?0, max-age=5;x=1"]).as_deref(),
            Some("max-age=5")
        );
        assert_eq!(cdn(&["max-age=1, max-age=7"]).as_deref(), Some("max-age=7"));
        assert_eq!(
            cdn(&["ext=(a \"b\" 1.5), max-age=2"]).as_deref(),
            Some("max-age=2")
        );
        // Only extensions: valid and not empty, so Cache-Control is still replaced.
        assert_eq!(cdn(&["foo"]).as_deref(), Some(""));
    }

    #[test]
    fn an_invalid_or_empty_targeted_field_is_ignored() {
        for invalid in [
            "",
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=-1",
            "MaX-aGe=3600",
            "max-age =100",
            "max-age= 100",
            "max-age=1,",
            "max-age=1.5",
            "no-store=1",
            "max-age=1234567890123456",
            "private=\"a\\b\"",
        ] {
            assert_eq!(cdn(&[invalid]), None, "{invalid:?}");
        }
    }

    #[test]
    fn the_first_listed_field_with_a_valid_value_wins() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "tower-cache-control",
            HeaderValue::from_static("max-age=\"x\""),
        );
        headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=9"));
        headers.insert("other-cache-control", HeaderValue::from_static("max-age=1"));
        let targets = [
            HeaderName::from_static("tower-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ];
        let chosen = effective(&headers, &targets).expect("applies");
        assert_eq!(chosen["cache-control"], "max-age=9");
        assert!(effective(&headers, &[]).is_none());
    }
}
