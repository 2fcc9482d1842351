//! The origin of `scripts/bench-load.sh`: a tiny hyper 1 server on one thread.
//!
//! ```text
//! cargo run --release --example bench_origin -- --listen 127.0.0.1:8000
//! ```
//!
//! - `GET /1k/*`: a 1024-byte body; `/64k/*`: a 65536-byte body; `/slow/*`: the 1 KiB body after
//!   20 ms. All with `Cache-Control: max-age=600` and `Content-Type: application/octet-stream`.
//! - `GET /__calls`: the number of calls answered so far (this one not counted).
//! - anything else: 404 (counted).
//!
//! Prints `listening on ADDR` once it accepts connections.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

async fn answer(
    request: Request<Incoming>,
    calls: Arc<AtomicU64>,
    small: Bytes,
    large: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path == "/__calls" {
        let body = format!("{}\n", calls.load(Relaxed));
        return Ok(Response::new(Full::from(body)));
    }
    calls.fetch_add(1, Relaxed);
    let body = if path.starts_with("/1k/") {
        small
    } else if path.starts_with("/64k/") {
        large
    } else if path.starts_with("/slow/") {
        tokio::time::sleep(Duration::from_millis(20)).await;
        small
    } else {
        let mut response = Response::new(Full::from("not found\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, "max-age=600".parse().unwrap());
    headers.insert(CONTENT_TYPE, "application/octet-stream".parse().unwrap());
    Ok(response)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:8000".parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?.parse()?,
            other => return Err(format!("unknown argument {other:?} (try --listen ADDR)").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let calls = Arc::new(AtomicU64::new(0));
    let small = Bytes::from(vec![b'a'; 1024]);
    let large = Bytes::from(vec![b'b'; 65536]);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let (calls, small, large) = (Arc::clone(&calls), small.clone(), large.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(request, Arc::clone(&calls), small.clone(), large.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
