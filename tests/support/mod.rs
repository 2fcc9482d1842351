//! Test harness: real `redis-server` processes on free loopback ports, counting origins, and
//! small helpers to drive a `CacheService`.
//!
//! `REDIS_URL` points every test at an external server instead (tests that stop and restart
//! Redis are skipped then). With the `testcontainers` feature and `TRC_TESTCONTAINERS=1`,
//! Redis is started in Docker instead of as a local process.
#![allow(dead_code)]

pub mod fleet;
pub mod proxy;
pub mod topology;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Service, ServiceExt};
use tower_redis_cache::{BoxError, CacheBody, RedisStore};

pub type TestResult = Result<(), BoxError>;

/// A Redis server for one test: a child process killed on drop, or an external `REDIS_URL`.
pub struct RedisServer {
    port: u16,
    cluster: bool,
    url: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
    #[cfg(feature = "testcontainers")]
    _container: Option<testcontainers::ContainerAsync<testcontainers::GenericImage>>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a fresh server (or uses `REDIS_URL`).
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self::external(url);
        }
        #[cfg(feature = "testcontainers")]
        if std::env::var("TRC_TESTCONTAINERS").is_ok_and(|v| v == "1") {
            return Self::container().await;
        }
        let mut server = Self::external(String::new());
        server.port = free_port();
        server.url = format!("redis://127.0.0.1:{}", server.port);
        server.spawn();
        server
    }

    fn external(url: String) -> Self {
        Self {
            port: 0,
            cluster: false,
            url,
            child: None,
            dir: None,
            #[cfg(feature = "testcontainers")]
            _container: None,
        }
    }

    #[cfg(feature = "testcontainers")]
    async fn container() -> Self {
        use testcontainers::core::{IntoContainerPort, WaitFor};
        use testcontainers::runners::AsyncRunner;
        let container = testcontainers::GenericImage::new("redis", "7.2")
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .start()
            .await
            .expect("start a Redis container");
        let port = container
            .get_host_port_ipv4(6379)
            .await
            .expect("container port");
        let mut server = Self::external(format!("redis://127.0.0.1:{port}"));
        server._container = Some(container);
        server
    }

    /// Whether this harness owns the process (and so can stop and restart it).
    pub fn is_local(&self) -> bool {
        self.port != 0
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn spawn(&mut self) {
        let dir = std::env::temp_dir().join(format!(
            "trc-redis-{}-{}-{}",
            std::process::id(),
            self.port,
            NEXT.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        self.dir = Some(dir);
        self.wait_until_ready();
    }

    /// Polls the port until the server answers PING: there is no event to await for a process
    /// becoming ready, so this is a bounded poll.
    fn wait_until_ready(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A real Redis Cluster of `n` primaries (no replicas) on free loopback ports, built with
/// `redis-cli --cluster create`; every node is killed on drop. `REDIS_CLUSTER_URL` points the
/// tests at an external cluster instead.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    url: String,
}

impl RedisCluster {
    pub async fn start(n: usize) -> Self {
        if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
            return Self {
                nodes: Vec::new(),
                url,
            };
        }
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut node = RedisServer::external(String::new());
            node.port = free_port();
            node.cluster = true;
            node.spawn();
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        // The slots are assigned; wait (bounded) until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let others: Vec<String> = addresses[1..].iter().map(|a| format!("node={a}")).collect();
        let url = format!("redis-cluster://{}?{}", addresses[0], others.join("&"));
        Self { nodes, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The ports of the nodes this harness started.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

/// A key prefix no other test uses, so tests can share an external Redis.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t-{test}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    )
}

/// A layer builder for tests: generous store timeouts, because these tests count origin calls
/// and a loaded machine must not turn slow lookups into (correct, but uncounted) fail-open
/// bypasses. Tests of the timeouts themselves set their own.
pub fn builder(
    store: impl tower_redis_cache::Store,
    test: &str,
) -> tower_redis_cache::CacheLayerBuilder {
    tower_redis_cache::CacheLayer::builder(store)
        .key_prefix(unique_prefix(test))
        .read_timeout(Duration::from_secs(2))
        .write_timeout(Duration::from_secs(2))
}

/// A Redis store with its own connections.
pub async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(server.url())
        .await
        .expect("connect to test redis")
}

/// A raw fred client for poking at keys directly.
pub async fn raw_client(server: &RedisServer) -> fred::prelude::Client {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(server.url()).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect raw client");
    client
}

/// Every command Redis ran so far (`INFO commandstats`, without `INFO` itself).
pub async fn commands_run(server: &RedisServer) -> u64 {
    use fred::prelude::ClientLike;
    let raw = raw_client(server).await;
    let command =
        fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false);
    let info: String = raw
        .custom(command, vec!["commandstats"])
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// How many keys Redis holds (`DBSIZE`).
pub async fn key_count(server: &RedisServer) -> u64 {
    use fred::prelude::ClientLike;
    let raw = raw_client(server).await;
    let command =
        fred::types::CustomCommand::new_static("DBSIZE", fred::types::ClusterHash::Random, false);
    raw.custom(command, Vec::<String>::new())
        .await
        .expect("DBSIZE")
}

pub type ReqBody = Full<Bytes>;

/// A request with an empty body.
pub fn get(uri: &str) -> Request<ReqBody> {
    request("GET", uri)
}

pub fn request(method: &str, uri: &str) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::default())
        .expect("valid request")
}

/// A finished response: its head and whole body.
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `request` through `service` and reads the whole response.
pub async fn send<S, B>(service: &S, request: Request<ReqBody>) -> Reply
where
    S: Service<Request<ReqBody>, Response = Response<CacheBody<B>>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("service call");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Counts the calls an origin gets.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn add(&self) -> usize {
        self.0.fetch_add(1, SeqCst) + 1
    }

    pub fn get(&self) -> usize {
        self.0.load(SeqCst)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so binary bodies cover every byte value.
pub fn binary_body(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A response body of `chunks` chunks of `chunk_len` bytes with no declared length, which
/// records how many bytes have been pulled from it.
pub struct CountedChunks {
    remaining: usize,
    chunk: Bytes,
    pulled: Arc<AtomicU64>,
}

impl CountedChunks {
    pub fn new(chunks: usize, chunk: Bytes, pulled: Arc<AtomicU64>) -> Self {
        Self {
            remaining: chunks,
            chunk,
            pulled,
        }
    }
}

impl Body for CountedChunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        self.pulled.fetch_add(self.chunk.len() as u64, SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

/// An origin that counts its calls and answers `"<METHOD> <uri> call <n>"`, so responses
/// from different calls never look alike.
pub fn counting_origin(
    calls: &Calls,
) -> impl tower::Service<
    Request<ReqBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let calls = calls.clone();
    tower::service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        let body = format!("{} {} call {n}", req.method(), req.uri());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    })
}

/// An origin whose answers carry tags: `/t/<tag>/<n>` is tagged `<tag>` (in `Surrogate-Key`)
/// and `item-<n>` (in `Cache-Tag`); the body names the call, so a refill is told apart.
pub fn tagged_origin(
    calls: &Calls,
) -> impl tower::Service<
    Request<ReqBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let calls = calls.clone();
    tower::service_fn(move |req: Request<ReqBody>| {
        let n = calls.add();
        let mut segments = req.uri().path().split('/').skip(2);
        let tag = segments.next().unwrap_or("none").to_owned();
        let item = segments.next().unwrap_or("0").to_owned();
        let body = format!("{} call {n}", req.uri());
        async move {
            let response = Response::builder()
                .header("surrogate-key", format!("{tag} shared"))
                .header("cache-tag", format!("item-{item}"))
                .body(Full::new(Bytes::from(body)))
                .expect("response");
            Ok::<_, Infallible>(response)
        }
    })
}
