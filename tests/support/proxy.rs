//! The caching proxy (`examples/proxy/`) as a child process, and clients to talk to it over
//! TCP: a pooled hyper client for well-formed requests and raw sockets for what hyper will
//! not send (absolute-form targets, duplicate `Host`, hand-made framing).

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The bound on anything a test waits for; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The proxy binary
// ---------------------------------------------------------------------------------------------

/// Builds the example once per test run and returns its path.
pub fn proxy_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // A binary to test instead (say, one built from an older commit, to see which tests
        // fail without a fix).
        if let Some(binary) = std::env::var_os("TRC_PROXY_BIN") {
            return PathBuf::from(binary);
        }
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => manifest.join(dir),
            None => manifest.join("target"),
        };
        let mut cargo = Command::new(env!("CARGO"));
        // The package variables cargo sets for the test process are absent from a shell's
        // build, and `ring`'s build script tracks some (`CARGO_PKG_NAME`,
        // `CARGO_MANIFEST_DIR`): passed on, they rebuilt ring and everything above it on
        // every switch between `cargo test` and this build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let output = cargo
            .current_dir(&manifest)
            // No `--features`: the example must build and run with the defaults.
            .args(["build", "--quiet", "--example", "proxy"])
            .arg("--target-dir")
            .arg(&target)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "building the proxy example failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let binary = target
            .join("debug")
            .join("examples")
            .join(format!("proxy{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.is_file(), "no proxy binary at {}", binary.display());
        binary
    })
}

/// A running proxy process, killed on drop.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Lines the proxy printed on stdout and no test looked at yet.
    backlog: Vec<String>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy on a free port in front of `upstream` and waits until it serves.
    pub async fn start(upstream: &str, extra: &[&str]) -> Proxy {
        let binary = tokio::task::spawn_blocking(proxy_binary)
            .await
            .expect("build the proxy");
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(extra)
            .env_remove("UPSTREAM_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let (tx, mut lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut admin = None;
        let mut backlog = Vec::new();
        let addr = loop {
            let line = match tokio::time::timeout(PATIENCE, lines.recv()).await {
                Ok(Some(line)) => line,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the proxy never said `listening on`; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            };
            if let Some(addr) = line.strip_prefix("admin on ") {
                admin = Some(addr.trim().parse().expect("admin address"));
            } else if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().parse().expect("listening address");
            } else {
                backlog.push(line);
            }
        };
        Proxy {
            child: Some(child),
            addr,
            admin,
            backlog,
            lines,
            stderr,
        }
    }

    /// Starts a proxy sharing the cache in the Redis at `redis`, and waits until it is connected.
    /// Store timeouts are generous: these tests count origin calls, and a loaded machine must
    /// not turn slow lookups into (correct, but uncounted) fail-open bypasses.
    pub async fn start_redis(upstream: &str, redis: &str, prefix: &str) -> Proxy {
        Proxy::start_redis_with(upstream, redis, prefix, &[]).await
    }

    /// [`start_redis`](Self::start_redis) with more flags.
    pub async fn start_redis_with(
        upstream: &str,
        redis: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Proxy {
        let mut flags = vec![
            "--redis",
            redis,
            "--prefix",
            prefix,
            "--admin-listen",
            "127.0.0.1:0",
            "--store-read-timeout-ms",
            "2000",
            "--store-write-timeout-ms",
            "2000",
        ];
        flags.extend_from_slice(extra);
        let mut proxy = Proxy::start(upstream, &flags).await;
        proxy.wait_for_line("redis connected").await;
        proxy
    }

    /// Waits until the proxy prints a line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str) {
        if let Some(at) = self.backlog.iter().position(|line| line.contains(needle)) {
            self.backlog.drain(..=at);
            return;
        }
        self.backlog.clear();
        loop {
            match tokio::time::timeout(PATIENCE, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return,
                Ok(Some(_)) => continue,
                _ => panic!(
                    "the proxy never printed {needle:?}; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("started with --admin-listen")
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits (bounded) until the proxy's stderr contains `needle`. The stderr reader thread
    /// only fills a buffer, so this polls it.
    pub async fn wait_for_stderr(&self, needle: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.stderr().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy never logged {needle:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let waiting = tokio::task::spawn_blocking(move || child.wait());
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("the proxy did not exit in time")
            .expect("join")
            .expect("wait for the proxy")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- proxy stderr ---\n{}", self.stderr());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Reply {
    let uri = request.uri().clone();
    let exchange = async {
        let response = client.request(request).await.expect("send the request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read the body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer for {uri}"))
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn get_with_host(client: &HttpClient, url: &str, host: &str) -> Reply {
    let request = Request::get(url)
        .header("host", host)
        .body(Full::default())
        .unwrap();
    send(client, request).await
}

/// Writes `request` on a fresh connection and reads until the proxy closes it; returns the
/// status of the first response, if any came.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.write_all(request).await.ok()?;
        let mut reply = Vec::new();
        // A reset after the response (the proxy closing on a half-read request) is fine.
        let _ = stream.read_to_end(&mut reply).await;
        let line = reply.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        line.strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))?
            .get(..3)?
            .parse()
            .ok()
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the proxy neither answered nor closed the connection")
}

/// A response read off a raw socket: status, header lines (names lowercased) and the body as
/// sent (bytes after the head, up to the close).
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Writes `request` (which should say `Connection: close`) on a fresh connection, reads until
/// the proxy closes it and parses the first response; `None` when none came.
pub async fn raw_response(addr: SocketAddr, request: &[u8]) -> Option<RawReply> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.write_all(request).await.ok()?;
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&reply[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Some(RawReply {
            status,
            headers,
            body: reply[end + 4..].to_vec(),
        })
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the proxy neither answered nor closed the connection")
}
