//! Key unit tests: canonical forms, variants, language aliases.

use super::*;

fn maker(normalize_query: bool) -> KeyMaker {
    KeyMaker {
        prefix: "p".into(),
        normalize_query,
        custom: None,
        bypass: None,
    }
}

fn key(maker: &KeyMaker, method: &str, uri: &str, host: Option<&str>) -> CacheKey {
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    let (parts, ()) = builder.body(()).unwrap().into_parts();
    maker.derive(&parts).unwrap()
}

/// Keys and variants are named by SHA-256, which no request can be crafted
/// to collide with another's (known answers, computed independently).
#[test]
fn keys_and_variants_are_truncated_sha256() {
    let k = key(&maker(true), "GET", "http://example.test/x?a=1", None);
    assert_eq!(k.entry_key(), "p:{68960406f7f1bd2ace2fce95e9aa1b21}:e");
    let mut request = http::HeaderMap::new();
    request.insert("accept-encoding", "gzip".parse().unwrap());
    assert_eq!(
        variant_hash(["Accept-Encoding"].into_iter(), &request),
        0x4219_3d4f_2815_d360
    );
}

#[test]
fn layout_is_prefixed_fixed_length_and_slot_tagged() {
    let k = key(&maker(true), "GET", "/a?x=*", Some("h"));
    assert!(k.entry_key().starts_with("p:{") && k.entry_key().ends_with("}:e"));
    assert_eq!(k.primary_key(), k.entry_key());
    let v = k.variant(1, 2);
    assert_eq!(v.primary_key(), k.entry_key());
    assert_eq!(v.entry_key(), format!("{}:0000000000000003", k.entry_key()));
    assert_eq!(
        v.lock_key(),
        format!(
            "{}l:0000000000000003",
            &k.entry_key()[..k.entry_key().len() - 1]
        )
    );
    assert_ne!(v.flight(), k.flight());
    assert_eq!(k.entry_key().len(), "p:{".len() + 32 + "}:e".len());
    assert_eq!(
        k.lock_key(),
        format!("{}l", &k.entry_key()[..k.entry_key().len() - 1])
    );
}

#[test]
fn query_order_matters_only_without_normalization() {
    let on = maker(true);
    assert_eq!(
        key(&on, "GET", "/?a=1&b=2", None),
        key(&on, "GET", "/?b=2&a=1", None)
    );
    assert_ne!(
        key(&on, "GET", "/?a=1&b=2", None),
        key(&on, "GET", "/?a=2&b=1", None)
    );
    let off = maker(false);
    assert_ne!(
        key(&off, "GET", "/?a=1&b=2", None),
        key(&off, "GET", "/?b=2&a=1", None)
    );
    // Only the order of different names is normalised: nothing else is merged.
    for (one, other) in [
        ("/?id=1&id=2", "/?id=2&id=1"),
        ("/?a", "/?a="),
        ("/?a=1&&b=2", "/?a=1&b=2"),
        ("/x?", "/x"),
        // Names equal once decoded (or case-folded) are repeated names,
        // and keep their order.
        ("/?%61=evil&a=good", "/?a=good&%61=evil"),
        ("/?A=evil&a=good", "/?a=good&A=evil"),
        ("/?a+b=1&a%20b=2", "/?a%20b=2&a+b=1"),
    ] {
        assert_ne!(
            key(&on, "GET", one, None),
            key(&on, "GET", other, None),
            "{one}"
        );
    }
    assert_ne!(
        key(&on, "GET", "https://a.example/", None),
        key(&on, "GET", "http://a.example/", None),
        "the scheme is keyed"
    );
}

#[test]
fn host_and_path_separate_entries_head_shares_get() {
    let m = maker(true);
    assert_ne!(
        key(&m, "GET", "/", Some("a.example")),
        key(&m, "GET", "/", Some("b.example"))
    );
    assert_eq!(
        key(&m, "GET", "/", Some("A.example")),
        key(&m, "GET", "/", Some("a.example"))
    );
    assert_eq!(
        key(&m, "GET", "http://a.example/", None),
        key(&m, "GET", "/", Some("a.example"))
    );
    assert_ne!(key(&m, "GET", "/a", None), key(&m, "GET", "/b", None));
    assert_eq!(key(&m, "HEAD", "/a", None), key(&m, "GET", "/a", None));
}

#[test]
fn variant_hash_depends_on_named_headers_only() {
    let vary = ["Accept-Language"];
    let mut en = http::HeaderMap::new();
    en.insert("accept-language", "en".parse().unwrap());
    let mut fr = en.clone();
    fr.insert("accept-language", "fr".parse().unwrap());
    let mut en_other = en.clone();
    en_other.insert("x-other", "1".parse().unwrap());
    let hash = |h| variant_hash(vary.into_iter(), h);
    assert_ne!(hash(&en), hash(&fr));
    assert_eq!(hash(&en), hash(&en_other));
    assert_eq!(variant_hash(std::iter::empty(), &en), 0);
    let mut spaced = en.clone();
    spaced.insert("accept-language", "en , fr".parse().unwrap());
    let mut tight = en.clone();
    tight.insert("accept-language", "en,fr".parse().unwrap());
    assert_eq!(hash(&spaced), hash(&tight));
}

#[test]
fn accept_language_is_normalised_only_where_the_meaning_is_the_same() {
    let hash = |value: &'static str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("accept-language", value.parse().unwrap());
        variant_hash(["accept-language"].into_iter(), &headers)
    };
    let en_de = hash("en, de");
    for same in [
        "de, en",
        "eN, De",
        " en ,  de",
        "de;q=1.0, en;q=1",
        "EN;Q=1.000, de",
    ] {
        assert_eq!(hash(same), en_de, "{same}");
    }
    for different in ["en", "en, de;q=0.9", "en, fr", "en-GB, de", "en, de, *;q=0"] {
        assert_ne!(hash(different), en_de, "{different}");
    }
    // Weight orders the list; names only break ties.
    assert_eq!(hash("fr;q=0.5, de"), hash("de, fr;q=0.500"));
    // Anything malformed is hashed as written: no two malformed values merge.
    assert_ne!(hash("en;q=2, de"), hash("de, en;q=2"));
    assert_ne!(hash("en;level=1, de"), hash("de, en;level=1"));
}
