//! The proxy's conformance flags end to end: `--targeted-cache-control`, the
//! default `--stale-if-unreachable` (the proxy's own `502` for a refused upstream connection is
//! marked unreachable), `POST` answers reused for `GET` (a `POST` carries content, which the
//! proxy must not treat as a `GET` with content), and `--share-set-cookie`.
//!
//! The origin is a few lines over raw TCP, one response per connection (`Connection: close`),
//! so it can be "down" (accepting and closing without an answer, as the suite's origin does)
//! without pooled connections hiding it.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use support::proxy::{client, get, send, Proxy};
use support::{Calls, TestResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The raw origin: counts requests, answers by path, or closes without answering when down.
#[derive(Clone, Default)]
struct Origin {
    calls: Calls,
    down: Arc<AtomicBool>,
}

/// The response head lines for a path.
fn headers_for(path: &str) -> &'static str {
    match path {
        "/cdn" => "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=600\r\n",
        "/ours" => "Cache-Control: no-store\r\nTower-Cache-Control: max-age=600\r\n",
        "/stale" => "Cache-Control: max-age=1\r\nAge: 1\r\nETag: \"v1\"\r\n",
        "/posted" => "Cache-Control: max-age=600\r\nContent-Location: /posted\r\n",
        "/cookie" => "Cache-Control: max-age=600\r\nSet-Cookie: bucket=a\r\n",
        "/hints" | "/hints-10" => "Cache-Control: max-age=600\r\n",
        _ => "",
    }
}

async fn start_origin() -> (String, Origin) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let origin = Origin::default();
    let this = origin.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let this = this.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if this.down.load(SeqCst) {
                    return; // closed without an answer
                }
                this.calls.add();
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let body = "origin body";
                // `/hints*` send an interim response first, then a cacheable final one.
                let interim = if path.starts_with("/hints") {
                    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                } else {
                    ""
                };
                let response = format!(
                    "{interim}HTTP/1.1 200 OK\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    headers_for(&path),
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_flags_work_through_the_proxy() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let default = Proxy::start(&upstream, &["--mode", "shared", "--ttl", "0"]).await;
    let ours = Proxy::start(
        &upstream,
        &[
            "--mode",
            "shared",
            "--ttl",
            "0",
            "--targeted-cache-control",
            "Tower-Cache-Control,CDN-Cache-Control",
            "--share-set-cookie",
        ],
    )
    .await;
    let client = client();
    // (proxy, path, reused on the second GET)
    for (proxy, path, reused) in [
        (&default, "/cdn", true),
        (&default, "/ours", false),
        (&default, "/cookie", false),
        (&ours, "/cdn", true),
        (&ours, "/ours", true),
        (&ours, "/cookie", true),
    ] {
        let before = origin.calls.get();
        let first = get(&client, &proxy.url(path)).await;
        assert_eq!(first.text(), "origin body");
        let second = get(&client, &proxy.url(path)).await;
        assert_eq!(
            (second.x_cache() == "HIT", origin.calls.get() - before),
            (reused, if reused { 1 } else { 2 }),
            "{path}"
        );
        if path == "/cdn" {
            assert_eq!(
                second.header("cdn-cache-control"),
                "max-age=600",
                "forwarded"
            );
        }
    }

    // A POST whose answer names its own target is that target's representation.
    let before = origin.calls.get();
    let post = Request::post(default.url("/posted"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"12345")))?;
    assert_eq!(send(&client, post).await.text(), "origin body");
    let got = get(&client, &default.url("/posted")).await;
    assert_eq!((got.x_cache(), origin.calls.get() - before), ("HIT", 1));

    // Stored stale (its Age is its max-age), then the origin goes down: the proxy's own 502
    // is replaced by the stale copy (default --stale-if-unreachable).
    get(&client, &default.url("/stale")).await;
    origin.down.store(true, SeqCst);
    let down = get(&client, &default.url("/stale")).await;
    assert_eq!(
        (down.status.as_u16(), down.text()),
        (200, "origin body".to_owned())
    );
    assert!(down.header("cache-status").contains("origin-unreachable"));
    let never_stored = get(&client, &default.url("/not-stored")).await;
    assert_eq!(never_stored.status.as_u16(), 502);
    Ok(())
}

/// Everything the proxy sends for one raw request on a fresh connection.
async fn raw(proxy: &Proxy, version: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let request =
        format!("GET {path} {version}\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// An upstream's `103 Early Hints` reaches the HTTP/1.1 client ahead of the final response,
/// is never stored (the hit that follows has none, and the final response did not take its
/// `Link`), and is not sent to an HTTP/1.0 client (RFC 9110 §15.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_relayed_and_never_stored() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let proxy = Proxy::start(&upstream, &["--mode", "shared", "--ttl", "0"]).await;
    let first = raw(&proxy, "HTTP/1.1", "/hints").await;
    assert!(
        first.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{first}"
    );
    assert_eq!(first.matches("link:").count(), 1, "{first}");
    let hit = raw(&proxy, "HTTP/1.1", "/hints").await;
    assert!(hit.starts_with("HTTP/1.1 200 OK\r\n"), "{hit}");
    assert!(
        hit.contains("x-cache: HIT") && !hit.contains("link:"),
        "{hit}"
    );
    assert_eq!(origin.calls.get(), 1);
    let old_client = raw(&proxy, "HTTP/1.0", "/hints-10").await;
    assert!(
        old_client.starts_with("HTTP/1.0 200 OK\r\n"),
        "{old_client}"
    );
    assert!(!old_client.contains("103"), "{old_client}");
    Ok(())
}
