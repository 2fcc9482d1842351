//! Load benchmark: the caching proxy (`examples/proxy.rs` with a Redis store, without and with
//! its near cache) next to nginx (`proxy_cache`, one worker) and the origin itself, on one
//! machine, in one run.
//!
//! Run: `./scripts/bench-load.sh` (installs `redis-server`, `nginx-light` and `wrk` when they are
//! missing, builds the proxy, then runs `cargo bench --bench load`). Without `--bench` on the
//! command line (as under `cargo test --all-targets`) this binary prints one line and exits.
//!
//! What it starts, all on 127.0.0.1 and all stopped on exit, failure included:
//! - an origin in this process (hyper 1): `/1k/*` and `/64k/*` answer a fixed 1 KiB / 64 KiB
//!   body after 20 ms with `Cache-Control: max-age=600`, and count the calls per path
//!   (`GET /__calls` shows the total);
//! - `redis-server` (through `tests/support`); the release proxy in front of the origin twice,
//!   both on that Redis: `proxy` (`--redis`) and `proxy-near` (`--redis --near-cache-ms 1000`:
//!   hot entries answered from process memory for up to 1 s, dropped early on a change notice
//!   from Redis pub/sub); nginx with the config in `benches/load/nginx.conf` (cache on tmpfs,
//!   cache lock on).
//!
//! Scenarios, each against both proxies, nginx and the origin directly:
//! - 1 KiB and 64 KiB hits: one warmed key, `wrk -t1 -c64 --latency`;
//! - unique-key misses: every request a new key (`benches/load/unique.lua`); the 20 ms origin
//!   bounds this at about 64 / 20 ms = 3200 requests/s;
//! - a cold-key storm: for each of N new keys, 64 connections ask for it at the same moment
//!   (a driver in this file); reports origin calls per key and p50/p99.
//!
//! CPU per request is utime+stime of the proxy (and of Redis, shown apart) or of the nginx
//! worker, from `/proc/<pid>/stat`, over the run, divided by the requests completed. The report
//! compares every proxy variant with nginx, `proxy-near` with `proxy`, and each proxy with the
//! targets (40 µs CPU per 64 KiB hit, 40 ms storm p99).
//!
//! Each wrk scenario runs `LOAD_ROUNDS` rounds, every server in turn in each round, so a slow
//! spell of a shared machine does not land on one server only.
//!
//! Settings (environment): `LOAD_SECS` (5) per wrk run, `LOAD_ROUNDS` (2), `LOAD_CONNS` (64),
//! `LOAD_STORM_KEYS` (50), `LOAD_SCENARIOS` (a subset of `hit1k,hit64k,miss,storm`),
//! `LOAD_SERVERS` (a subset of `proxy,proxy-near,nginx,origin`, the default, plus
//! `proxy-memory`: the proxy with its in-process store, to tell the Redis round trip from the
//! rest, only when listed; an unknown name is an error), `LOAD_PROXY_BIN` (default
//! `target/release/examples/proxy`), `REDIS_URL` (use that Redis instead of starting one; its
//! CPU is then not measured).

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use support::RedisServer;
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const ORIGIN_DELAY: Duration = Duration::from_millis(20);
/// `--near-cache-ms` of the `proxy-near` variant.
const NEAR_CACHE_MS: &str = "1000";
const NGINX_CONF: &str = include_str!("load/nginx.conf");
const REPORT_LUA: &str = include_str!("load/report.lua");
const UNIQUE_LUA: &str = include_str!("load/unique.lua");

fn main() -> ExitCode {
    if !std::env::args().skip(1).any(|arg| arg == "--bench") {
        println!("load: skipped (a 3-4 minute load test; run ./scripts/bench-load.sh)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("load bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and machine

struct Settings {
    scenarios: Only,
    servers: Only,
    secs: u64,
    rounds: usize,
    conns: usize,
    storm_keys: usize,
    proxy_bin: PathBuf,
    clk_tck: f64,
}

/// A comma-separated allow-list from the environment; unset or empty allows everything.
struct Only(Vec<String>);

impl Only {
    fn from_env(name: &str) -> Self {
        let list = std::env::var(name).unwrap_or_default();
        Self(
            list.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    fn wants(&self, name: &str) -> bool {
        self.0.is_empty() || self.lists(name)
    }

    /// Whether `name` is named explicitly (for what is off by default).
    fn lists(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    /// Fails on a name that is not one of `known`, so a typo does not silently drop a server.
    fn check(&self, variable: &str, known: &[&str]) -> Result<()> {
        match self.0.iter().find(|n| !known.contains(&n.as_str())) {
            Some(name) => Err(format!(
                "{variable}: unknown name {name:?} (known: {})",
                known.join(",")
            )
            .into()),
            None => Ok(()),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let proxy_bin = std::env::var_os("LOAD_PROXY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir.join("release/examples/proxy"));
        let clk_tck = command_output("getconf", &["CLK_TCK"])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            scenarios: Only::from_env("LOAD_SCENARIOS"),
            servers: Only::from_env("LOAD_SERVERS"),
            secs: env_or("LOAD_SECS", 5u64).max(1),
            rounds: env_or("LOAD_ROUNDS", 2usize).max(1),
            conns: env_or("LOAD_CONNS", 64usize).max(1),
            storm_keys: env_or("LOAD_STORM_KEYS", 50usize).max(1),
            proxy_bin,
            clk_tck,
        }
    }
}

/// The first line of a command's stdout (or stderr, where `nginx -v` writes), if it ran.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    let text = String::from_utf8_lossy(&text);
    text.lines().next().map(str::to_owned)
}

/// `nginx` is in /usr/sbin, which a normal user's PATH may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn machine_lines(nginx: &Path) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map_or("unknown".to_owned(), |m| m.trim().to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nginx = nginx.to_string_lossy();
    vec![
        format!("- CPU: {model}, nproc = {nproc}"),
        format!("- kernel: {}", kernel.trim()),
        format!(
            "- tree: git {}{}",
            command_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            if command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some() {
                " (with local changes)"
            } else {
                ""
            }
        ),
        format!(
            "- {}; {}; {}",
            command_output(&nginx, &["-v"]).unwrap_or_default(),
            command_output("redis-server", &["--version"])
                .map(|v| v.split(" sha=").next().unwrap_or_default().to_owned())
                .unwrap_or_default(),
            command_output("wrk", &["-v"])
                .map(|v| v.split(" Copyright").next().unwrap_or_default().to_owned())
                .unwrap_or_default(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process stopped (and reaped) on drop: SIGTERM first when `graceful`, then SIGKILL.
struct Proc {
    child: Child,
    graceful: bool,
    /// Processes the child started, killed too if it had to be killed itself.
    offspring: Vec<u32>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        if self.graceful {
            signal(self.pid(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if self.exited() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.offspring {
            signal(*pid, "KILL");
        }
    }
}

/// A directory removed on drop (after the processes using it, which are declared later).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        // tmpfs when there is one: the nginx cache then lives in memory, as Redis does.
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("trc-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time of a process, in clock ticks: its own (all threads: user, system) and that of the
/// children it has waited for.
#[derive(Clone, Copy, Default)]
struct ProcTimes {
    user: u64,
    system: u64,
    children: u64,
}

fn proc_times(pid: impl std::fmt::Display) -> Option<ProcTimes> {
    let fields = stat_fields(pid)?;
    // Fields after the command name start at field 3 (state): utime is field 14, stime 15,
    // cutime 16, cstime 17.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcTimes {
        user: field(14)?,
        system: field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// The machine's CPU time from the `cpu` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Default)]
struct MachineTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(MachineTimes {
        busy: v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?,
        idle: v.get(3)? + v.get(4)?,
        steal: *v.get(7)?,
    })
}

fn stat_fields(pid: impl std::fmt::Display) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            stat_fields(*pid)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == parent)
        })
        .collect()
}

/// The `redis-server` serving `port` (its process title is `redis-server 127.0.0.1:PORT`).
fn redis_pid(port: u16) -> Option<u32> {
    let needle = format!(":{port}");
    all_pids().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("redis-server") && cmdline.contains(&needle)
        })
    })
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Origin

struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
}

struct OriginState {
    total: AtomicU64,
    by_path: Mutex<HashMap<String, u64>>,
    body_1k: Bytes,
    body_64k: Bytes,
}

impl OriginState {
    fn calls(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Calls per path, for the paths starting with `prefix`.
    fn calls_under(&self, prefix: &str) -> Vec<u64> {
        let by_path = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        by_path
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, calls)| *calls)
            .collect()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let body = if path.starts_with("/1k/") {
            self.body_1k.clone()
        } else if path.starts_with("/64k/") {
            self.body_64k.clone()
        } else if path == "/__calls" {
            let body = format!("{{\"total\":{}}}\n", self.calls());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().expect("header"));
            return response;
        } else {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        self.total.fetch_add(1, Relaxed);
        *self
            .by_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(path.to_owned())
            .or_default() += 1;
        tokio::time::sleep(ORIGIN_DELAY).await;
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, "max-age=600".parse().expect("header"));
        headers.insert(
            CONTENT_TYPE,
            "application/octet-stream".parse().expect("header"),
        );
        response
    }
}

impl Origin {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let pattern =
            |len: usize| Bytes::from((0..len).map(|i| b'a' + (i % 26) as u8).collect::<Vec<_>>());
        let state = Arc::new(OriginState {
            total: AtomicU64::new(0),
            by_path: Mutex::new(HashMap::new()),
            body_1k: pattern(1024),
            body_64k: pattern(64 * 1024),
        });
        tokio::spawn(serve_origin(listener, Arc::clone(&state)));
        Ok(Self { addr, state })
    }
}

async fn serve_origin(listener: TcpListener, state: Arc<OriginState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.answer(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy and nginx

struct ProxyProc {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

/// Starts the proxy variant `server` (see [`Server::proxy_flags`]).
fn start_proxy(
    settings: &Settings,
    server: Server,
    redis_url: &str,
    origin: SocketAddr,
    dir: &Path,
) -> Result<ProxyProc> {
    if !settings.proxy_bin.is_file() {
        return Err(format!(
            "no proxy binary at {} (build it: cargo build --release --example proxy --features \
             metrics, or run ./scripts/bench-load.sh)",
            settings.proxy_bin.display()
        )
        .into());
    }
    let flags = server.proxy_flags(redis_url);
    let log = dir.join(format!("{}.log", server.tag()));
    let child = Command::new(&settings.proxy_bin)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--upstream")
        .arg(format!("http://{origin}"))
        .args(&flags)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", settings.proxy_bin.display()))?;
    let mut proc = Proc {
        child,
        graceful: false,
        offspring: Vec::new(),
    };
    let stdout = proc.child.stdout.take().ok_or("proxy stdout")?;
    let (lines, received) = mpsc::channel();
    // Reads stdout to its end, so the proxy never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = lines.send(line);
        }
    });
    let uses_redis = flags.iter().any(|f| f == "--redis");
    let (mut addr, mut admin, mut connected) = (None, None, !uses_redis);
    let deadline = Instant::now() + Duration::from_secs(30);
    while addr.is_none() || admin.is_none() || !connected {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match received.recv_timeout(left) {
            Ok(line) => line,
            Err(error) => {
                let why = match error {
                    mpsc::RecvTimeoutError::Timeout => "did not report",
                    mpsc::RecvTimeoutError::Disconnected => "exited before reporting",
                };
                return Err(format!(
                    "{}: the proxy {why} `listening on`, `admin on` and `redis connected` (30 s); \
                     its log:\n{}",
                    server.tag(),
                    tail(&log)
                )
                .into());
            }
        };
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = Some(rest.trim().parse::<SocketAddr>()?);
        } else if let Some(rest) = line.strip_prefix("admin on ") {
            admin = Some(rest.trim().parse::<SocketAddr>()?);
        } else if line.trim() == "redis connected" {
            connected = true;
        }
    }
    Ok(ProxyProc {
        proc,
        addr: addr.ok_or("listening on")?,
        admin: admin.ok_or("admin on")?,
    })
}

struct NginxProc {
    /// Stops nginx when the bench ends.
    _master: Proc,
    addr: SocketAddr,
    worker: u32,
}

/// Whether this process runs as root: nginx's workers then need `user root;` to write the
/// cache in our directory (they would switch to `nobody` otherwise).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            // Real, effective, saved, filesystem.
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn start_nginx(nginx: &Path, origin: SocketAddr, dir: &Path) -> Result<NginxProc> {
    let dir = dir.join("nginx");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache)?;
    let port = free_port()?;
    let conf = NGINX_CONF
        .replace("@USER@", if is_root() { "user root;" } else { "" })
        .replace("@DIR@", &dir.to_string_lossy())
        .replace("@CACHE@", &cache.to_string_lossy())
        .replace("@ORIGIN_PORT@", &origin.port().to_string())
        .replace("@PORT@", &port.to_string());
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = dir.join("error.log");
    let mut prefix = dir.to_string_lossy().into_owned();
    prefix.push('/');
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", nginx.display()))?;
    let mut proc = Proc {
        child,
        graceful: true,
        offspring: Vec::new(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if proc.exited() {
            return Err(format!(
                "nginx exited at start:\n{}\n{}",
                tail(&dir.join("stderr.log")),
                tail(&log)
            )
            .into());
        }
        let workers = children_of(proc.pid());
        if let (Some(&worker), Ok(_)) = (workers.first(), std::net::TcpStream::connect(addr)) {
            proc.offspring = workers;
            return Ok(NginxProc {
                _master: proc,
                addr,
                worker,
            });
        }
        if Instant::now() > deadline {
            return Err(format!("nginx did not start listening on {addr}:\n{}", tail(&log)).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn x_cache(&self) -> String {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<Reply> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        connection.abort();
        Ok::<_, BoxError>(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET http://{addr}{path} timed out"))?
}

/// The proxy's `/stats` counters.
async fn proxy_stats(admin: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let reply = http_get(admin, "/stats").await?;
    let value: serde_json::Value = serde_json::from_slice(&reply.body)?;
    let object = value.as_object().ok_or("/stats is not a JSON object")?;
    Ok(object
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect())
}

fn stats_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(name, value)| {
            let delta = value.saturating_sub(before.get(name).copied().unwrap_or(0));
            (delta > 0 && name != "bytes_stored").then(|| format!("{name} {delta}"))
        })
        .collect();
    if parts.is_empty() {
        "no counter moved".to_owned()
    } else {
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Proxy,
    ProxyNear,
    ProxyMemory,
    Nginx,
    Origin,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Proxy => "proxy (Redis)",
            Server::ProxyNear => "proxy (Redis + near cache 1 s)",
            Server::ProxyMemory => "proxy (memory store)",
            Server::Nginx => "nginx (1 worker)",
            Server::Origin => "origin direct",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Server::Proxy => "proxy",
            Server::ProxyNear => "proxy-near",
            Server::ProxyMemory => "proxy-memory",
            Server::Nginx => "nginx",
            Server::Origin => "origin",
        }
    }

    /// Every server, in the order the table lists them.
    const ALL: [Server; 5] = [
        Server::Proxy,
        Server::ProxyNear,
        Server::ProxyMemory,
        Server::Nginx,
        Server::Origin,
    ];

    /// The proxy variants, each compared with nginx.
    const PROXIES: [Server; 3] = [Server::Proxy, Server::ProxyNear, Server::ProxyMemory];

    /// Whether the run includes this server: the ones off by default only when listed.
    fn wanted(self, servers: &Only) -> bool {
        match self {
            Server::ProxyMemory => servers.lists(self.tag()),
            _ => servers.wants(self.tag()),
        }
    }

    /// The proxy's flags for this variant, after `--listen`, `--admin-listen` and `--upstream`.
    fn proxy_flags(self, redis_url: &str) -> Vec<String> {
        let flags: &[&str] = match self {
            Server::Proxy => &["--redis", redis_url],
            Server::ProxyNear => &["--redis", redis_url, "--near-cache-ms", NEAR_CACHE_MS],
            Server::ProxyMemory | Server::Nginx | Server::Origin => &[],
        };
        flags.iter().map(|f| (*f).to_owned()).collect()
    }
}

struct Target {
    server: Server,
    addr: SocketAddr,
    /// The process whose CPU is charged to the server (proxy, nginx worker).
    pid: Option<u32>,
    /// A helper process whose CPU is shown apart (Redis for the proxy).
    helper: Option<u32>,
    /// The proxy's admin port, for `/stats`.
    admin: Option<SocketAddr>,
}

/// CPU of a target's processes, of this process (the origin, the storm driver) and of its
/// children (wrk), and of the whole machine, sampled before and after a run.
struct CpuSample {
    main: Option<ProcTimes>,
    helper: Option<ProcTimes>,
    bench: Option<ProcTimes>,
    machine: Option<MachineTimes>,
}

impl CpuSample {
    fn take(target: &Target) -> Self {
        Self {
            main: target.pid.and_then(proc_times),
            helper: target.helper.and_then(proc_times),
            bench: proc_times("self"),
            machine: machine_times(),
        }
    }

    /// The CPU time spent from this sample to `after`.
    fn until(&self, after: &CpuSample) -> CpuTicks {
        let delta =
            |pick: fn(&ProcTimes) -> u64, before: Option<ProcTimes>, after: Option<ProcTimes>| {
                pick(&after?).checked_sub(pick(&before?))
            };
        let machine = |pick: fn(&MachineTimes) -> u64| {
            pick(after.machine.as_ref()?).checked_sub(pick(self.machine.as_ref()?))
        };
        CpuTicks {
            main_user: delta(|t| t.user, self.main, after.main),
            main_system: delta(|t| t.system, self.main, after.main),
            helper: delta(|t| t.user + t.system, self.helper, after.helper),
            bench: delta(|t| t.user + t.system, self.bench, after.bench),
            wrk: delta(|t| t.children, self.bench, after.bench),
            busy: machine(|m| m.busy),
            idle: machine(|m| m.idle),
            steal: machine(|m| m.steal),
        }
    }
}

/// CPU time spent during a run, in clock ticks; the rounds of one scenario add up.
#[derive(Clone, Copy)]
struct CpuTicks {
    main_user: Option<u64>,
    main_system: Option<u64>,
    helper: Option<u64>,
    /// This process: the origin and the storm driver.
    bench: Option<u64>,
    /// wrk (a waited-for child of this process).
    wrk: Option<u64>,
    busy: Option<u64>,
    idle: Option<u64>,
    steal: Option<u64>,
}

impl CpuTicks {
    fn add(self, other: CpuTicks) -> CpuTicks {
        let sum = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        CpuTicks {
            main_user: sum(self.main_user, other.main_user),
            main_system: sum(self.main_system, other.main_system),
            helper: sum(self.helper, other.helper),
            bench: sum(self.bench, other.bench),
            wrk: sum(self.wrk, other.wrk),
            busy: sum(self.busy, other.busy),
            idle: sum(self.idle, other.idle),
            steal: sum(self.steal, other.steal),
        }
    }

    /// µs per request (and the machine's idle and steal shares).
    fn split(&self, requests: u64, clk_tck: f64) -> CpuSplit {
        let per = |ticks: Option<u64>| {
            let ticks = ticks?;
            (requests > 0).then(|| ticks as f64 * 1e6 / clk_tck / requests as f64)
        };
        let share = |part: Option<u64>| {
            let total = self.busy? + self.idle? + self.steal?;
            (total > 0).then(|| part.unwrap_or(0) as f64 * 100.0 / total as f64)
        };
        CpuSplit {
            main_user: per(self.main_user),
            main_system: per(self.main_system),
            helper: per(self.helper),
            bench: per(self.bench),
            wrk: per(self.wrk),
            idle_pct: share(self.idle),
            steal_pct: share(self.steal),
        }
    }
}

/// Where the CPU went during a scenario, in µs per request completed.
struct CpuSplit {
    main_user: Option<f64>,
    main_system: Option<f64>,
    helper: Option<f64>,
    bench: Option<f64>,
    wrk: Option<f64>,
    idle_pct: Option<f64>,
    steal_pct: Option<f64>,
}

impl CpuSplit {
    fn main(&self) -> Option<f64> {
        Some(self.main_user? + self.main_system?)
    }

    fn describe(&self) -> String {
        let us = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
        let pct = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}%"));
        let mut parts = Vec::new();
        if self.main_user.is_some() {
            parts.push(format!(
                "server user {} + sys {}",
                us(self.main_user),
                us(self.main_system)
            ));
        }
        if self.helper.is_some() {
            parts.push(format!("Redis {}", us(self.helper)));
        }
        if self.wrk.is_some_and(|w| w > 0.0) {
            parts.push(format!("wrk {}", us(self.wrk)));
        }
        parts.push(format!(
            "bench process (origin, storm driver) {}",
            us(self.bench)
        ));
        format!(
            "{} µs/req; machine idle {}, steal {}",
            parts.join(", "),
            pct(self.idle_pct),
            pct(self.steal_pct)
        )
    }
}

struct Row {
    scenario: &'static str,
    server: Server,
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: Option<f64>,
    helper_us: Option<f64>,
    origin_calls: String,
    errors: u64,
}

struct WrkResult {
    requests: u64,
    duration_us: u64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// One wrk run and what it cost.
struct Run {
    result: WrkResult,
    origin_calls: u64,
    cpu: CpuTicks,
    /// How much each proxy `/stats` counter moved.
    stats: BTreeMap<String, u64>,
}

enum Load<'a> {
    /// One URL path, the same for every request.
    Fixed(&'a str),
    /// A new path for every request: this prefix and a counter.
    Unique(&'a str),
}

fn wrk_command_line(settings: &Settings) -> String {
    format!(
        "`wrk -t1 -c{} -d{}s --latency -s report.lua http://ADDR/PATH` (misses: `-s unique.lua \
         http://ADDR/ -- /1k/miss-SERVER-ROUND-`), {} rounds with the servers in turn; requests/s \
         over all rounds, p50/p99 the mean of the rounds",
        settings.conns, settings.secs, settings.rounds
    )
}

fn run_wrk(
    settings: &Settings,
    dir: &Path,
    addr: SocketAddr,
    load: &Load<'_>,
) -> Result<WrkResult> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1".to_owned(),
        format!("-c{}", settings.conns),
        format!("-d{}s", settings.secs),
        "--latency".to_owned(),
        "--timeout".to_owned(),
        "10s".to_owned(),
    ]);
    match load {
        Load::Fixed(path) => {
            command
                .arg("-s")
                .arg(dir.join("report.lua"))
                .arg(format!("http://{addr}{path}"));
        }
        Load::Unique(prefix) => {
            command
                .arg("-s")
                .arg(dir.join("unique.lua"))
                .arg(format!("http://{addr}/"))
                .args(["--", prefix]);
        }
    }
    let output = command.stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOAD-RESULT "))
        .ok_or_else(|| {
            format!(
                "wrk printed no result (status {}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let values: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name, value.parse().ok()?))
        })
        .collect();
    let get = |name: &str| values.get(name).copied().unwrap_or(0);
    Ok(WrkResult {
        requests: get("requests"),
        duration_us: get("duration_us").max(1),
        p50_us: get("p50_us"),
        p99_us: get("p99_us"),
        errors: ["connect", "read", "write", "status", "timeout"]
            .iter()
            .map(|name| get(name))
            .sum(),
    })
}

struct StormResult {
    latencies_us: Vec<u64>,
    wall: Duration,
    errors: u64,
    x_cache: BTreeMap<String, u64>,
}

/// For each of `keys` new keys, `conns` connections ask for it at the same moment; the next
/// key starts when every answer for this one is in.
async fn storm(addr: SocketAddr, conns: usize, keys: usize, prefix: String) -> Result<StormResult> {
    let mut senders = Vec::with_capacity(conns);
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        senders.push(sender);
        connections.push(tokio::spawn(connection));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let prefix = Arc::new(prefix);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for mut sender in senders {
        let barrier = Arc::clone(&barrier);
        let prefix = Arc::clone(&prefix);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(keys);
            let mut errors = 0u64;
            let mut x_cache: BTreeMap<String, u64> = BTreeMap::new();
            for key in 0..keys {
                barrier.wait().await;
                let begin = Instant::now();
                let outcome = async {
                    sender.ready().await?;
                    let request = Request::get(format!("{prefix}{key}"))
                        .header(HOST, addr.to_string())
                        .body(Empty::new())?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let cache = response
                        .headers()
                        .get("x-cache")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    response.into_body().collect().await?;
                    Ok::<_, BoxError>((status, cache))
                }
                .await;
                match outcome {
                    Ok((status, cache)) if status.is_success() => {
                        latencies.push(begin.elapsed().as_micros() as u64);
                        *x_cache.entry(cache).or_default() += 1;
                    }
                    _ => errors += 1,
                }
                barrier.wait().await;
            }
            (latencies, errors, x_cache)
        }));
    }
    let mut result = StormResult {
        latencies_us: Vec::with_capacity(conns * keys),
        wall: Duration::ZERO,
        errors: 0,
        x_cache: BTreeMap::new(),
    };
    for task in tasks {
        let (latencies, errors, x_cache) = task.await?;
        result.latencies_us.extend(latencies);
        result.errors += errors;
        for (name, count) in x_cache {
            *result.x_cache.entry(name).or_default() += count;
        }
    }
    result.wall = started.elapsed();
    for connection in connections {
        connection.abort();
    }
    result.latencies_us.sort_unstable();
    Ok(result)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

// ---------------------------------------------------------------------------------------------
// The run

struct Bench<'a> {
    settings: &'a Settings,
    rt: &'a tokio::runtime::Runtime,
    dir: &'a Path,
    origin: &'a Origin,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Bench<'_> {
    /// Asks until the answer comes from the cache (the proxy stores entries off the response
    /// path, so the first repeat may still miss).
    fn warm(&mut self, target: &Target, path: &str) -> Result<()> {
        let first = self.rt.block_on(http_get(target.addr, path))?;
        if first.status != StatusCode::OK {
            return Err(
                format!("{}: GET {path} gave {}", target.server.tag(), first.status).into(),
            );
        }
        if target.server == Server::Origin {
            return Ok(());
        }
        for _ in 0..50 {
            let reply = self.rt.block_on(http_get(target.addr, path))?;
            if reply.x_cache() == "HIT" {
                self.notes.push(format!(
                    "{}: warmed {path}: first X-Cache {}, then {} ({} bytes)",
                    target.server.tag(),
                    first.x_cache(),
                    reply.x_cache(),
                    reply.body.len()
                ));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{}: {path} never came back as HIT", target.server.tag()).into())
    }

    /// One wrk run against one target.
    fn measure(&mut self, target: &Target, load: &Load<'_>) -> Result<Run> {
        let stats_before = match target.admin {
            Some(admin) => Some(self.rt.block_on(proxy_stats(admin))?),
            None => None,
        };
        let calls_before = self.origin.state.calls();
        let cpu_before = CpuSample::take(target);
        let result = run_wrk(self.settings, self.dir, target.addr, load)?;
        let cpu = cpu_before.until(&CpuSample::take(target));
        let origin_calls = self.origin.state.calls() - calls_before;
        let mut stats = BTreeMap::new();
        if let (Some(before), Some(admin)) = (stats_before, target.admin) {
            let after = self.rt.block_on(proxy_stats(admin))?;
            for (name, value) in after {
                let delta = value.saturating_sub(before.get(&name).copied().unwrap_or(0));
                stats.insert(name, delta);
            }
        }
        Ok(Run {
            result,
            origin_calls,
            cpu,
            stats,
        })
    }

    /// Runs `scenario` for `settings.rounds` rounds, each target once per round in turn (so a
    /// slow spell of the machine is shared out), and adds a row per target. `load` gives the
    /// path (or, when it says `true`, the prefix of unique paths) for a target and round.
    fn wrk_scenario(
        &mut self,
        scenario: &'static str,
        targets: &[&Target],
        load: impl Fn(&Target, usize) -> (bool, String),
    ) -> Result<()> {
        let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..self.settings.rounds {
            for (target, runs) in targets.iter().zip(&mut runs) {
                eprintln!(
                    "load: {scenario} — {} (round {} of {}) …",
                    target.server.label(),
                    round + 1,
                    self.settings.rounds
                );
                let (unique, path) = load(target, round);
                let load = if unique {
                    Load::Unique(&path)
                } else {
                    Load::Fixed(&path)
                };
                runs.push(self.measure(target, &load)?);
            }
        }
        for (target, runs) in targets.iter().zip(runs) {
            self.add_row(scenario, target, &runs);
        }
        Ok(())
    }

    fn add_row(&mut self, scenario: &'static str, target: &Target, runs: &[Run]) {
        let tag = target.server.tag();
        let requests: u64 = runs.iter().map(|r| r.result.requests).sum();
        let duration_us: u64 = runs.iter().map(|r| r.result.duration_us).sum();
        let errors: u64 = runs.iter().map(|r| r.result.errors).sum();
        let origin_calls: u64 = runs.iter().map(|r| r.origin_calls).sum();
        let mean = |pick: fn(&WrkResult) -> u64| {
            runs.iter().map(|r| pick(&r.result) as f64).sum::<f64>() / runs.len().max(1) as f64
        };
        let cpu = runs
            .iter()
            .map(|r| r.cpu)
            .reduce(CpuTicks::add)
            .map(|ticks| ticks.split(requests, self.settings.clk_tck));
        let per_round: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{} req/s, p99 {}",
                    rps(r.result.requests as f64 * 1e6 / r.result.duration_us as f64),
                    ms(r.result.p99_us as f64)
                )
            })
            .collect();
        self.notes.push(format!(
            "\"{scenario}\" on {tag}, rounds: {}",
            per_round.join("; ")
        ));
        if let Some(cpu) = &cpu {
            self.notes.push(format!(
                "\"{scenario}\" on {tag}, CPU per request: {}",
                cpu.describe()
            ));
        }
        if target.admin.is_some() {
            let mut stats: BTreeMap<String, u64> = BTreeMap::new();
            for run in runs {
                for (name, value) in &run.stats {
                    *stats.entry(name.clone()).or_default() += value;
                }
            }
            self.notes.push(format!(
                "\"{scenario}\" on {tag}, /stats: {}",
                stats_delta(&BTreeMap::new(), &stats)
            ));
        }
        if errors > 0 {
            self.notes.push(format!(
                "\"{scenario}\" on {tag}: {errors} wrk errors (connect/read/write/status/timeout)"
            ));
        }
        self.rows.push(Row {
            scenario,
            server: target.server,
            requests,
            rps: requests as f64 * 1e6 / duration_us.max(1) as f64,
            p50_us: mean(|r| r.p50_us),
            p99_us: mean(|r| r.p99_us),
            cpu_us: cpu.as_ref().and_then(CpuSplit::main),
            helper_us: cpu.as_ref().and_then(|c| c.helper),
            origin_calls: origin_calls.to_string(),
            errors,
        });
    }

    fn storm_row(&mut self, target: &Target) -> Result<()> {
        let scenario = "cold-key storm";
        eprintln!("load: {scenario} — {} …", target.server.label());
        let prefix = format!("/1k/storm-{}-", target.server.tag());
        let stats_before = match target.admin {
            Some(admin) => Some(self.rt.block_on(proxy_stats(admin))?),
            None => None,
        };
        let calls_before = self.origin.state.calls();
        let cpu_before = CpuSample::take(target);
        let result = self.rt.block_on(storm(
            target.addr,
            self.settings.conns,
            self.settings.storm_keys,
            prefix.clone(),
        ))?;
        let cpu = cpu_before.until(&CpuSample::take(target));
        let calls = self.origin.state.calls() - calls_before;
        let per_key = self.origin.state.calls_under(&prefix);
        let requests = result.latencies_us.len() as u64;
        let split = cpu.split(requests, self.settings.clk_tck);
        self.notes.push(format!(
            "\"{scenario}\" on {}, CPU per request: {}",
            target.server.tag(),
            split.describe()
        ));
        let keys = self.settings.storm_keys as f64;
        let max = per_key.iter().copied().max().unwrap_or(0);
        let over_one = per_key.iter().filter(|c| **c > 1).count();
        if let (Some(before), Some(admin)) = (stats_before, target.admin) {
            let after = self.rt.block_on(proxy_stats(admin))?;
            self.notes.push(format!(
                "\"{scenario}\" on {}, /stats: {}",
                target.server.tag(),
                stats_delta(&before, &after)
            ));
        }
        let x_cache: Vec<String> = result
            .x_cache
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        self.notes.push(format!(
            "{} storm: {} keys × {} concurrent requests in {:.2} s; X-Cache: {}; origin calls \
             per key max {max}, keys with more than one call: {over_one}; max latency {:.1} ms{}",
            target.server.tag(),
            self.settings.storm_keys,
            self.settings.conns,
            result.wall.as_secs_f64(),
            x_cache.join(", "),
            result.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
            if result.errors > 0 {
                format!("; {} failed requests", result.errors)
            } else {
                String::new()
            }
        ));
        self.rows.push(Row {
            scenario,
            server: target.server,
            requests,
            rps: requests as f64 / result.wall.as_secs_f64().max(1e-9),
            p50_us: percentile(&result.latencies_us, 50.0),
            p99_us: percentile(&result.latencies_us, 99.0),
            cpu_us: split.main(),
            helper_us: split.helper,
            origin_calls: format!("{:.2}/key ({calls} total)", calls as f64 / keys),
            errors: result.errors,
        });
        Ok(())
    }

    fn row(&self, scenario: &str, server: Server) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.server == server)
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn rps(value: f64) -> String {
    format!("{value:.0}")
}

fn run() -> Result<()> {
    let settings = Settings::from_env();
    settings
        .servers
        .check("LOAD_SERVERS", &Server::ALL.map(Server::tag))?;
    settings
        .scenarios
        .check("LOAD_SCENARIOS", &["hit1k", "hit64k", "miss", "storm"])?;
    let nginx_bin = find_program("nginx").ok_or("nginx not found (apt-get install nginx-light)")?;
    for program in ["wrk", "redis-server"] {
        if find_program(program).is_none() && std::env::var("REDIS_URL").is_err() {
            return Err(format!("{program} not found (run ./scripts/bench-load.sh)").into());
        }
    }
    if let (Ok(bin), Ok(src)) = (
        std::fs::metadata(&settings.proxy_bin).and_then(|m| m.modified()),
        newest_source(),
    ) {
        if bin < src {
            eprintln!(
                "load: warning: {} is older than the sources; rebuild it (scripts/bench-load.sh does)",
                settings.proxy_bin.display()
            );
        }
    }

    // Declared first, dropped last: the processes below stop before the runtime and the dir go.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = TempDir::new()?;
    std::fs::write(dir.0.join("report.lua"), REPORT_LUA)?;
    std::fs::write(dir.0.join("unique.lua"), UNIQUE_LUA)?;

    let origin = rt.block_on(Origin::start())?;
    let redis = rt.block_on(RedisServer::start());
    let redis_port: Option<u16> = redis
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok());
    let redis_pid = if redis.is_local() {
        redis_port.and_then(redis_pid)
    } else {
        None
    };
    // The proxy variants in the run; proxy-memory (the proxy with its in-process store, off by
    // default) separates the Redis round trip from the rest of the proxy's cost.
    let mut proxies = Vec::new();
    for server in Server::PROXIES {
        if server.wanted(&settings.servers) {
            let proc = start_proxy(&settings, server, redis.url(), origin.addr, &dir.0)?;
            proxies.push((server, proc));
        }
    }
    let nginx = start_nginx(&nginx_bin, origin.addr, &dir.0)?;
    let started: Vec<String> = proxies
        .iter()
        .map(|(server, proxy)| format!("{} {} (admin {})", server.tag(), proxy.addr, proxy.admin))
        .collect();
    eprintln!(
        "load: origin {}, redis {}, {}, nginx {} (worker pid {})",
        origin.addr,
        redis.url(),
        started.join(", "),
        nginx.addr,
        nginx.worker
    );

    let mut all_targets: Vec<Target> = proxies
        .iter()
        .map(|(server, proxy)| Target {
            server: *server,
            addr: proxy.addr,
            pid: Some(proxy.proc.pid()),
            // Redis's CPU is shown apart for the variants that use it.
            helper: if *server == Server::ProxyMemory {
                None
            } else {
                redis_pid
            },
            admin: Some(proxy.admin),
        })
        .collect();
    all_targets.extend([
        Target {
            server: Server::Nginx,
            addr: nginx.addr,
            pid: Some(nginx.worker),
            helper: None,
            admin: None,
        },
        Target {
            server: Server::Origin,
            addr: origin.addr,
            pid: None,
            helper: None,
            admin: None,
        },
    ]);
    let targets: Vec<&Target> = all_targets
        .iter()
        .filter(|t| t.server.wanted(&settings.servers))
        .collect();
    if targets.is_empty() {
        return Err("LOAD_SERVERS selects no server".into());
    }
    let mut bench = Bench {
        settings: &settings,
        rt: &rt,
        dir: &dir.0,
        origin: &origin,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let started = Instant::now();
    for (scenario, size, name) in [
        ("1 KiB hit", "1k", "hit1k"),
        ("64 KiB hit", "64k", "hit64k"),
    ] {
        if !settings.scenarios.wants(name) {
            continue;
        }
        for target in &targets {
            bench.warm(target, &format!("/{size}/hot-{}", target.server.tag()))?;
        }
        bench.wrk_scenario(scenario, &targets, |target, _| {
            (false, format!("/{size}/hot-{}", target.server.tag()))
        })?;
    }
    if settings.scenarios.wants("miss") {
        bench.wrk_scenario("unique-key miss (1 KiB)", &targets, |target, round| {
            (true, format!("/1k/miss-{}-r{round}-", target.server.tag()))
        })?;
    }
    if settings.scenarios.wants("storm") {
        for target in &targets {
            bench.storm_row(target)?;
        }
    }

    let elapsed = started.elapsed();
    print_report(&bench, &machine_lines(&nginx_bin), elapsed);
    Ok(())
}

/// The newest modification time among the files the proxy binary is built from.
fn newest_source() -> std::io::Result<SystemTime> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = std::fs::metadata(root.join("examples/proxy.rs"))?.modified()?;
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                newest = newest.max(meta.modified()?);
            }
        }
    }
    Ok(newest)
}

fn print_report(bench: &Bench<'_>, machine: &[String], elapsed: Duration) {
    let settings = bench.settings;
    let mut out = String::new();
    let _ = writeln!(out, "\n## Load benchmark: caching proxy vs nginx\n");
    let _ = writeln!(
        out,
        "| scenario | server | requests/s | p50 | p99 | CPU µs/req | origin calls |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for row in &bench.rows {
        let cpu = match (row.cpu_us, row.helper_us) {
            (Some(cpu), Some(redis)) => format!("{cpu:.1} (+{redis:.1} Redis)"),
            (Some(cpu), None) => format!("{cpu:.1}"),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.server.label(),
            rps(row.rps),
            ms(row.p50_us),
            ms(row.p99_us),
            cpu,
            row.origin_calls
        );
    }

    let _ = writeln!(out, "\n### Comparisons\n");
    let scenarios = [
        "1 KiB hit",
        "64 KiB hit",
        "unique-key miss (1 KiB)",
        "cold-key storm",
    ];
    for scenario in scenarios {
        let Some(n) = bench.row(scenario, Server::Nginx) else {
            continue;
        };
        for server in Server::PROXIES {
            let Some(p) = bench.row(scenario, server) else {
                continue;
            };
            let tag = server.tag();
            let cpu = match (p.cpu_us, n.cpu_us) {
                (Some(pc), Some(nc)) if nc > 0.0 => format!(
                    "; CPU/req {tag} {pc:.1} µs{} vs nginx {nc:.1} µs ({:.2}×)",
                    p.helper_us
                        .map(|r| format!(" (+{r:.1} Redis)"))
                        .unwrap_or_default(),
                    pc / nc
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "- {scenario}: requests/s {tag}/nginx = {:.2}× ({} vs {}); p99 {tag}/nginx = \
                 {:.2}× ({} vs {}){cpu}",
                p.rps / n.rps.max(1e-9),
                rps(p.rps),
                rps(n.rps),
                p.p99_us / n.p99_us.max(1e-9),
                ms(p.p99_us),
                ms(n.p99_us)
            );
        }
    }
    // What the near cache changes, against the same proxy without it.
    for scenario in scenarios {
        if let (Some(near), Some(p)) = (
            bench.row(scenario, Server::ProxyNear),
            bench.row(scenario, Server::Proxy),
        ) {
            let total = |row: &Row| Some(row.cpu_us? + row.helper_us.unwrap_or(0.0));
            let cpu = match (total(near), total(p)) {
                (Some(nc), Some(pc)) if pc > 0.0 => format!(
                    "; CPU/req with Redis {nc:.1} µs vs {pc:.1} µs ({:.2}×)",
                    nc / pc
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "- near cache, {scenario}: requests/s proxy-near/proxy = {:.2}× ({} vs {}); p99 \
                 {} vs {}{cpu}",
                near.rps / p.rps.max(1e-9),
                rps(near.rps),
                rps(p.rps),
                ms(near.p99_us),
                ms(p.p99_us)
            );
        }
    }
    for server in Server::PROXIES {
        let tag = server.tag();
        if let Some((cpu, redis)) = bench
            .row("64 KiB hit", server)
            .and_then(|p| Some((p.cpu_us?, p.helper_us)))
        {
            let _ = writeln!(
                out,
                "- {tag} CPU per 64 KiB hit: {cpu:.1} µs (target 40 µs: {}){}",
                if cpu <= 40.0 { "met" } else { "missed" },
                redis
                    .map(|r| format!("; Redis adds {r:.1} µs, {:.1} µs together", cpu + r))
                    .unwrap_or_default()
            );
        }
        if let Some(p) = bench.row("cold-key storm", server) {
            let _ = writeln!(
                out,
                "- {tag} storm: origin calls {}; p99 {} (target 40 ms: {})",
                p.origin_calls,
                ms(p.p99_us),
                if p.p99_us <= 40_000.0 {
                    "met"
                } else {
                    "missed"
                }
            );
        }
    }
    let failed: u64 = bench.rows.iter().map(|r| r.errors).sum();
    let total: u64 = bench.rows.iter().map(|r| r.requests).sum();
    let _ = writeln!(out, "- requests measured: {total}, failed: {failed}");

    let _ = writeln!(out, "\n### Notes\n");
    for note in &bench.notes {
        let _ = writeln!(out, "- {note}");
    }

    let _ = writeln!(out, "\n### Setup\n");
    for line in machine {
        let _ = writeln!(out, "{line}");
    }
    let command =
        std::env::var("LOAD_COMMAND").unwrap_or_else(|_| "cargo bench --bench load".to_owned());
    let _ = writeln!(
        out,
        "- command: `{command}` (LOAD_SECS={}, LOAD_ROUNDS={}, LOAD_CONNS={}, \
         LOAD_STORM_KEYS={}); took {:.0} s",
        settings.secs,
        settings.rounds,
        settings.conns,
        settings.storm_keys,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(out, "- load: {}", wrk_command_line(settings));
    let _ = writeln!(
        out,
        "- storm: {} keep-alive connections (hyper client in the bench), per key all fire at \
         once; the next key when all answered",
        settings.conns
    );
    let _ = writeln!(
        out,
        "- proxy: `{} --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream ORIGIN --redis \
         REDIS` (defaults otherwise: shared mode, 50 ms store read timeout); proxy-near: the \
         same plus `--near-cache-ms {NEAR_CACHE_MS}` (near cache 64 MiB, the default), on the \
         same Redis; proxy-memory: no `--redis` (in-process store); nginx: \
         benches/load/nginx.conf (1 worker, cache on tmpfs, proxy_cache_lock on, sendfile, \
         keepalive both ways)",
        settings.proxy_bin.display()
    );
    let _ = writeln!(
        out,
        "- origin: in the bench process, 20 ms per call, Cache-Control: max-age=600; every \
         process shares the same {} CPUs with wrk (-t1)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "- CPU µs/req: utime+stime from /proc/PID/stat (CLK_TCK {}) over the run / requests \
         completed: the proxy process (Redis shown apart) and the nginx worker",
        settings.clk_tck
    );
    print!("{out}");
}
