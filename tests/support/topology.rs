//! Redis deployments for the scale-out tests: a Cluster with replicas (possibly still
//! settling), Sentinels watching a primary and its replica, and a TLS server with an ACL user.
//!
//! Every part is a real `redis-server` process on a free loopback port, killed on drop.
//! Sentinels are `redis-server --sentinel` (no extra package), and TLS certificates are made
//! here with rcgen. Waiting is always a poll of a condition with a deadline: a process
//! becoming ready or a cluster agreeing on its state sends no event to await.

use super::free_port;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// The bound on any wait in this harness; reached only when something is broken.
pub const TOPOLOGY_PATIENCE: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "trc-{what}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process (a node, a Sentinel, a TLS server), killed on drop.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    dir: Scratch,
}

impl Node {
    /// Starts `redis-server` on a free port with `args` (after the port, bind and persistence
    /// settings), and returns once it accepts connections.
    pub fn start(args: &[&str]) -> Self {
        // A free port can be taken by another test's server between the probe and our bind
        // (then ours exits and the other answers on the port): retry on a new port unless the
        // process answering is ours.
        for _ in 0..10 {
            let port = free_port();
            let mut node = Self {
                port,
                child: None,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                dir: Scratch::new("node"),
            };
            node.spawn();
            if node.is_ours() {
                return node;
            }
            node.kill();
        }
        panic!("no free port for redis-server after 10 tries");
    }

    /// Whether the server answering on this node's port is this node's own process.
    fn is_ours(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(std::process::Child::id) else {
            return false;
        };
        command(self.port, &["INFO", "server"])
            .lines()
            .any(|line| line.trim() == format!("process_id:{pid}"))
    }

    /// A node with a configuration file (Sentinel needs one it can rewrite).
    pub fn start_with_config(config: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let dir = Scratch::new("conf");
        let file = dir.path().join("node.conf");
        std::fs::write(&file, config.replace("{port}", &port.to_string())).expect("write conf");
        let mut args = vec![file.display().to_string()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut node = Self {
            port,
            child: None,
            args,
            dir,
        };
        node.spawn_plain();
        node
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args);
        self.run(command);
    }

    fn spawn_plain(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(&self.args);
        self.run(command);
    }

    fn run(&mut self, mut command: Command) {
        // The server's log, for the message of a start that fails.
        let log = self.dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        if !wait_listening(self.port) {
            panic!(
                "redis-server did not start on {}: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    /// Kills the process, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one command over plain TCP and returns the reply as text (see [`command`]).
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until something accepts TCP connections on `port` (TLS or not); `false` if nothing
/// does within the patience.
fn wait_listening(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Sends one command to a plain-TCP Redis on `port` and returns its reply flattened to text
/// (arrays as lines, errors prefixed with `-`), or `""` when the node does not answer.
pub fn command(port: u16, args: &[&str]) -> String {
    command_as(port, None, args)
}

/// [`command`] on a connection first authenticated with `password` (when given).
pub fn command_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let encode = |args: &[&str]| {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        request
    };
    let mut request = password.map_or_else(String::new, |p| encode(&["AUTH", p]));
    request.push_str(&encode(args));
    let mut writer = &stream;
    if writer.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reader = BufReader::new(&stream);
    let mut out = String::new();
    if password.is_some() {
        read_reply(&mut reader, &mut out);
        if out != "OK" {
            return out;
        }
        out.clear();
    }
    read_reply(&mut reader, &mut out);
    out
}

fn read_reply(reader: &mut impl BufRead, out: &mut String) -> bool {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return false;
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => out.push_str(rest),
        "-" => {
            out.push('-');
            out.push_str(rest);
        }
        "$" => {
            let Ok(len) = rest.parse::<i64>() else {
                return false;
            };
            if len >= 0 {
                let mut buf = vec![0; usize::try_from(len).unwrap_or(0) + 2];
                if reader.read_exact(&mut buf).is_err() {
                    return false;
                }
                buf.truncate(buf.len() - 2);
                out.push_str(&String::from_utf8_lossy(&buf));
            }
        }
        "*" => {
            let n = rest.parse::<i64>().unwrap_or(0);
            for _ in 0..n {
                if !read_reply(reader, out) {
                    return false;
                }
                out.push('\n');
            }
        }
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// What `redis-cli --cluster create` needs of a node, with Redis's defaults otherwise (a
/// 15 s node timeout, full coverage required): a new user's Cluster.
const CLUSTER_DEFAULT_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
];

/// Settings the failover tests' nodes get: a short node timeout, so a killed primary is failed
/// over in about two seconds; partial coverage, so the other primaries keep serving while
/// one is down (a deployment that wants this sets it too: the README says so); a replica
/// always eligible for promotion however long its link was down.
pub(crate) const CLUSTER_FAILOVER_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--cluster-require-full-coverage",
    "no",
    "--cluster-replica-validity-factor",
    "0",
];

/// A real Redis Cluster made with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Node>,
    primaries: usize,
}

impl Cluster {
    /// Starts `primaries * (1 + replicas)` nodes and joins them with
    /// `redis-cli --cluster create`, returning as soon as it returns: the cluster may still be
    /// settling (nodes report `cluster_state:fail` for up to about two seconds). Nodes have
    /// Redis's defaults, or, with `fast_failover`, a 1 s node timeout and partial coverage.
    pub fn create(primaries: usize, replicas: usize, fast_failover: bool) -> Self {
        let args = if fast_failover {
            CLUSTER_FAILOVER_ARGS
        } else {
            CLUSTER_DEFAULT_ARGS
        };
        let nodes: Vec<Node> = (0..primaries * (1 + replicas))
            .map(|_| Node::start(args))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        Self { nodes, primaries }
    }

    /// Creates a cluster with fast failover and waits until every node reports
    /// `cluster_state:ok` and every replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let cluster = Self::create(primaries, replicas, true);
        cluster.wait_ok();
        cluster.wait_replicas_synced();
        cluster
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().unwrap_or_default();
        let others: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", others.join("&"))
    }

    /// Whether every running node reports `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .all(|n| n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    }

    /// Polls until every running node reports `cluster_state:ok`; returns when it first saw so.
    pub fn wait_ok(&self) -> Instant {
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        while !self.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach state ok"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Instant::now()
    }

    /// Polls until every replica reports its link to its primary up and in sync.
    pub fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let info = node.command(&["INFO", "replication"]);
                if info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && !info.contains("master_sync_in_progress:1"))
                {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The slot's current primary, as the first running node that answers sees it.
    pub fn primary_port_of(&self, key: &str) -> u16 {
        let node = self.any_running();
        let slot: u16 = node
            .command(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("keyslot");
        self.slot_owners(node)
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, port)| port)
            .expect("slot owner")
    }

    fn any_running(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
    }

    /// `(first slot, last slot, primary port)` of each slot range, from `CLUSTER SLOTS`.
    fn slot_owners(&self, node: &Node) -> Vec<(u16, u16, u16)> {
        // The flattened reply reads, per range: start, end, then per node ip, port, id
        // (and, on Redis 7, a metadata array). Parse it through CLUSTER SHARDS-free means:
        // CLUSTER NODES is line-based and simpler.
        let nodes = node.command(&["CLUSTER", "NODES"]);
        let mut ranges = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(start), Ok(end)) = (start.parse(), end.parse()) {
                    ranges.push((start, end, port));
                }
            }
        }
        ranges
    }

    /// Kills the node on `port` (a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Polls until a running node other than `old` serves `key`'s slot as primary and every
    /// running node reports `cluster_state:ok`; returns the new primary's port.
    pub fn wait_failed_over(&self, key: &str, old: u16) -> u16 {
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        loop {
            let owner = self.primary_port_of(key);
            if owner != old && self.is_ok() {
                return owner;
            }
            assert!(Instant::now() < deadline, "no replica took over from {old}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The number of primaries asked for.
    pub fn primaries(&self) -> usize {
        self.primaries
    }

    /// Keys `{prefix}0`, `{prefix}1`, ... grouped by the port of their slot's primary.
    pub fn owners(&self, keys: &[String]) -> HashMap<u16, Vec<String>> {
        let mut by_owner: HashMap<u16, Vec<String>> = HashMap::new();
        for key in keys {
            by_owner
                .entry(self.primary_port_of(key))
                .or_default()
                .push(key.clone());
        }
        by_owner
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// The service name the Sentinels monitor.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// The password the Sentinels require (`requirepass`), given to the store as
/// `sentinelPassword`; the data nodes have none.
pub const SENTINEL_PASSWORD: &str = "sentinel-secret";

/// A primary, its replica, and three Sentinels watching them (quorum 2), with timings short
/// enough that a failover takes about a second: a node is down after 1 s of silence, and a
/// failover that stalls is retried after 3 s.
pub struct Sentinels {
    /// The primary and the replica (their roles swap on failover).
    pub data: Vec<Node>,
    pub sentinels: Vec<Node>,
}

impl Sentinels {
    pub fn start() -> Self {
        let primary = Node::start(&[]);
        let replica = Node::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        let config = format!(
            "port {{port}}\nbind 127.0.0.1\n\
             requirepass {SENTINEL_PASSWORD}\n\
             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
             sentinel failover-timeout {SENTINEL_SERVICE} 3000\n\
             sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
            primary.port
        );
        let sentinels = (0..3)
            .map(|_| Node::start_with_config(&config, &["--sentinel"]))
            .collect();
        let sentinels = Self {
            data: vec![primary, replica],
            sentinels,
        };
        sentinels.wait_ready();
        sentinels
    }

    /// `redis-sentinel://` with every Sentinel, the service name and the Sentinel password.
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|n| n.port);
        let first = ports.next().unwrap_or_default();
        let others: String = ports.map(|p| format!("node=127.0.0.1:{p}&")).collect();
        format!(
            "redis-sentinel://127.0.0.1:{first}?{others}sentinelServiceName={SENTINEL_SERVICE}\
             &sentinelPassword={SENTINEL_PASSWORD}"
        )
    }

    /// Asks a Sentinel.
    pub fn ask(&self, sentinel: usize, args: &[&str]) -> String {
        command_as(self.sentinels[sentinel].port, Some(SENTINEL_PASSWORD), args)
    }

    /// The primary's port as every Sentinel reports it, when they all agree.
    pub fn primary_port(&self) -> Option<u16> {
        let mut ports = (0..self.sentinels.len()).map(|i| {
            self.ask(
                i,
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
            )
            .lines()
            .nth(1)
            .and_then(|p| p.parse::<u16>().ok())
        });
        let first = ports.next().flatten()?;
        ports.all(|p| p == Some(first)).then_some(first)
    }

    /// Polls until the replica is in sync and every Sentinel knows the replica and the other
    /// Sentinels (a forced failover needs a replica it knows; a client may ask any of them).
    fn wait_ready(&self) {
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        let replica = &self.data[1];
        loop {
            let info = replica.command(&["INFO", "replication"]);
            let synced = info.contains("master_link_status:up")
                && !info.contains("master_sync_in_progress:1");
            let known = (0..self.sentinels.len()).all(|i| {
                let master = self.ask(i, &["SENTINEL", "master", SENTINEL_SERVICE]);
                let field = |name: &str| {
                    let mut lines = master.lines();
                    lines.find(|l| *l == name);
                    lines.next().and_then(|v| v.parse::<usize>().ok())
                };
                field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2)
            });
            if synced && known && self.primary_port() == Some(self.data[0].port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not get ready: {}",
                self.ask(0, &["SENTINEL", "master", SENTINEL_SERVICE])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `SENTINEL FAILOVER`, then polls until every Sentinel names a new primary and that
    /// node reports itself primary; returns its port.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        // Refused while a previous failover is still settling (`-INPROG`): retried.
        loop {
            let reply = self.ask(0, &["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
            if reply == "OK" {
                break;
            }
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {reply}");
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            if let Some(new) = self.primary_port().filter(|p| Some(*p) != old) {
                if command(new, &["ROLE"]).starts_with("master") {
                    return new;
                }
            }
            assert!(Instant::now() < deadline, "the Sentinels did not switch");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS and ACL
// ---------------------------------------------------------------------------------------------

/// The commands, keys and channels the store needs, and nothing else: the README's
/// least-privilege ACL, for keys under `trc*` and the default notice channels. The fill and
/// write scripts `PUBLISH` their notices, so the channel pattern is required (Redis 7 gives a
/// new user no channel by default: `acl-pubsub-default resetchannels`).
pub const CACHE_ACL: &str =
    "on >cache-secret resetchannels ~trc* ~{trc* &tower-redis-cache:fills* \
     -@all +get +set +mget +unlink +del +strlen +pexpire +evalsha +eval \
     +publish +subscribe +ping +scan +time +zadd +zcard +zpopmin +zrange +cluster|slots";

/// Certificates made for one test: a CA, a server certificate for 127.0.0.1 and
/// `localhost`, a client certificate, and a second CA nobody trusts.
pub struct Pki {
    pub dir: Scratch,
    pub ca_pem: String,
    pub client_pem: String,
    pub client_key_pem: String,
    pub stranger_ca_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
        };
        let authority = ca("trc test CA");
        let stranger = ca("someone else's CA");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &authority)
                .expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_pem, client_key_pem) = leaf(vec!["cache-client".into()]);
        let dir = Scratch::new("pki");
        for (name, pem) in [
            ("ca.pem", authority.pem()),
            ("server.pem", server_pem),
            ("server.key", server_key_pem),
            ("client.pem", client_pem.clone()),
            ("client.key", client_key_pem.clone()),
            ("stranger-ca.pem", stranger.pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        }
        Self {
            ca_pem: authority.pem(),
            client_pem,
            client_key_pem,
            stranger_ca_pem: stranger.pem(),
            dir,
        }
    }

    /// The path of one of the PEM files written: `ca.pem`, `server.pem`, `server.key`,
    /// `client.pem`, `client.key`, `stranger-ca.pem`.
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A `redis-server` serving only TLS (client certificates required) with the
/// [`CACHE_ACL`] user `cache`; the default user is off.
pub fn tls_server(pki: &Pki) -> Node {
    let port = free_port();
    let dir = Scratch::new("tls");
    let args = vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--tls-port".to_owned(),
        port.to_string(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--tls-cert-file".to_owned(),
        pki.file("server.pem"),
        "--tls-key-file".to_owned(),
        pki.file("server.key"),
        "--tls-ca-cert-file".to_owned(),
        pki.file("ca.pem"),
        "--tls-auth-clients".to_owned(),
        "yes".to_owned(),
    ];
    let mut args = args;
    // On the command line each word of a directive is its own argument.
    args.extend(["--user".to_owned(), "cache".to_owned()]);
    args.extend(CACHE_ACL.split_whitespace().map(str::to_owned));
    args.extend(["--user", "default", "off"].map(str::to_owned));
    let mut node = Node {
        port,
        child: None,
        args,
        dir,
    };
    node.spawn_plain();
    node
}
