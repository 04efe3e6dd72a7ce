//! A real Garage cluster on loopback for the S3-storage tests (issue 12): three nodes, each
//! with its own config, metadata and data under one test directory, one shared RPC secret,
//! replication factor 3, LMDB, each node its own zone, a key with read and write on one
//! bucket. Nodes stop and start again keeping their data (a restarted node rejoins).
//!
//! The binary is the one scripts/build-garage.sh caches (`make garage` builds it once per
//! machine). The VM tests reach it too: QEMU's user network takes the guest's 10.0.2.2 to
//! the host's 127.0.0.1, where every node's S3 API listens.
//!
//! Readiness is polled, never slept for: the cluster's own view (`garage json-api
//! GetClusterStatus` / `GetClusterHealth`, JSON) and a signed S3 request to each node
//! (curl's `--aws-sigv4`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::vm::Background;
use super::{free_port, output, run_ok, s, test_dir};

/// Nodes in the cluster: replication factor 3 needs three zones.
pub const NODES: usize = 3;

/// SHA-256 of an empty body (a GET's payload hash).
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How long a node may take to listen, see its peers, or the cluster to heal.
const SETTLE: Duration = Duration::from_secs(60);

/// Where and how the cluster listens.
#[derive(Clone, Debug)]
pub struct GarageOptions {
    /// The address every node's S3 API binds (127.0.0.1, or 0.0.0.0); the endpoints the
    /// cluster hands out are on 127.0.0.1 either way.
    pub s3_bind: IpAddr,
    /// The S3 API port of each node; free ports when `None`.
    pub s3_ports: Option<[u16; NODES]>,
    /// The bucket to make.
    pub bucket: String,
    /// The region Garage signs for (`s3_region`).
    pub region: String,
}

impl Default for GarageOptions {
    fn default() -> GarageOptions {
        GarageOptions {
            s3_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            s3_ports: None,
            bucket: "registry".into(),
            region: "garage".into(),
        }
    }
}

/// One node: its config, ports, id, and its process while it runs.
struct Node {
    config: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    /// Full node id (public key, hex), known after the first start.
    id: String,
    process: Option<Background>,
    /// Starts so far: each start logs to its own file (nodeN.log, nodeN-2.log, ...).
    starts: u32,
}

/// A running 3-node cluster with a key and a bucket; every node stops and the directory
/// goes when this is dropped.
pub struct GarageCluster {
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    binary: PathBuf,
    nodes: Vec<Node>,
    work: PathBuf,
    // Dropped after `nodes` (fields drop in order): the processes stop first.
    _dir: tempfile::TempDir,
}

/// The binary scripts/build-garage.sh caches; fails the test with what to run when missing.
pub fn garage_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-garage.sh");
    let out = run_ok(Command::new(&script).arg("--print-path"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "Garage is not built: run `make garage` (scripts/build-garage.sh; about 20 minutes \
         once per machine), expected {}",
        path.display()
    );
    path
}

/// 32 random bytes as hex (Garage's `rpc_secret`).
fn random_hex32() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("reading random bytes");
    hex::encode(bytes)
}

/// Polls `f` every 200 ms until it gives a value; panics after `timeout` with `what` and
/// the last reason `f` gave.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not after {}s: {why}", timeout.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl GarageCluster {
    /// Starts three nodes, connects them, applies a layout (each node its own zone), makes
    /// the bucket and a key allowed to read and write it; returns once every node answers a
    /// signed S3 request for the bucket.
    pub fn start(opts: &GarageOptions) -> GarageCluster {
        super::require_tool("curl", "curl");
        let binary = garage_binary();
        let dir = test_dir("regimage-garage-");
        let work = dir.path().to_path_buf();
        let secret = random_hex32();
        let nodes = (0..NODES)
            .map(|i| {
                let node_dir = work.join(format!("node{}", i + 1));
                std::fs::create_dir(&node_dir).expect("creating a node dir");
                Node {
                    config: node_dir.join("garage.toml"),
                    s3_port: opts.s3_ports.map_or_else(free_port, |p| p[i]),
                    rpc_port: free_port(),
                    id: String::new(),
                    process: None,
                    starts: 0,
                }
            })
            .collect();
        let mut cluster = GarageCluster {
            region: opts.region.clone(),
            bucket: opts.bucket.clone(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            binary,
            nodes,
            work,
            _dir: dir,
        };
        for i in 0..NODES {
            cluster.write_config(i, opts, &secret, &[]);
            cluster.spawn(i);
        }
        for i in 0..NODES {
            let out = cluster.cli_ok(i, &["node", "id", "-q"]);
            let full = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let id = full.split('@').next().unwrap_or_default().to_string();
            assert!(
                id.len() == 64 && full.contains('@'),
                "`garage node id -q`: {full:?}"
            );
            cluster.nodes[i].id = id;
        }
        // Each node's config names the other two as bootstrap peers: a node that starts
        // again finds them even when it was the last to know their addresses.
        let peers: Vec<String> = (0..NODES).map(|i| cluster.peer(i)).collect();
        for i in 0..NODES {
            let others: Vec<String> = (0..NODES)
                .filter(|j| *j != i)
                .map(|j| peers[j].clone())
                .collect();
            cluster.write_config(i, opts, &secret, &others);
        }
        for peer in &peers[1..] {
            cluster.cli_ok(0, &["node", "connect", peer]);
        }
        cluster.wait_settled();

        for i in 0..NODES {
            let zone = format!("z{}", i + 1);
            let id = cluster.nodes[i].id.clone();
            cluster.cli_ok(0, &["layout", "assign", "-z", &zone, "-c", "10G", &id]);
        }
        cluster.cli_ok(0, &["layout", "apply", "--version", "1"]);
        cluster.wait_healthy();

        let bucket = cluster.bucket.clone();
        cluster.cli_ok(0, &["bucket", "create", &bucket]);
        let out = cluster.cli_ok(0, &["key", "create", "regimage-test"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        cluster.access_key_id = table_value(&text, "Key ID:");
        cluster.secret_access_key = table_value(&text, "Secret key:");
        assert!(
            cluster.access_key_id.starts_with("GK") && cluster.secret_access_key.len() == 64,
            "`garage key create` printed no key:\n{text}"
        );
        cluster.cli_ok(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                "regimage-test",
            ],
        );
        for i in 0..NODES {
            cluster.wait_s3(i);
        }
        cluster
    }

    /// The S3 endpoint of node `i` (0-based), as a client (or the registry) is given it.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Every node's S3 endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        (0..NODES).map(|i| self.endpoint(i)).collect()
    }

    /// Node `i`'s S3 API port.
    pub fn s3_port(&self, i: usize) -> u16 {
        self.nodes[i].s3_port
    }

    /// Writes the key as an AWS shared-credentials file (the contract's format), 0600.
    pub fn write_credentials_file(&self, path: &Path) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        write!(
            f,
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key_id, self.secret_access_key
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Whether node `i` runs.
    pub fn running(&mut self, i: usize) -> bool {
        self.nodes[i].process.as_mut().is_some_and(|p| p.running())
    }

    /// Stops node `i` (SIGTERM, as systemd stops it) and waits until the running nodes see
    /// it down.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].process = None; // Background's drop: TERM, then KILL after 10 s
        self.wait_settled();
    }

    /// Starts node `i` again on its data and waits until it and the running nodes see each
    /// other (and, when all run, until the cluster is healthy and its S3 API answers).
    pub fn start_node(&mut self, i: usize) {
        assert!(!self.running(i), "node {} already runs", i + 1);
        self.spawn(i);
        self.wait_settled();
        if (0..NODES).all(|j| self.running(j)) {
            self.wait_healthy();
            self.wait_s3(i);
        }
    }

    /// Stops every node.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.process = None;
        }
    }

    /// Starts every stopped node, then waits until the cluster is healthy and every S3 API
    /// answers.
    pub fn start_all(&mut self) {
        for i in 0..NODES {
            if !self.running(i) {
                self.spawn(i);
            }
        }
        self.wait_settled();
        self.wait_healthy();
        for i in 0..NODES {
            self.wait_s3(i);
        }
    }

    /// `garage -c CONFIG ARGS` against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&self.nodes[i].config).args(args);
        cmd
    }

    /// [`GarageCluster::cli`], which must succeed.
    fn cli_ok(&self, i: usize, args: &[&str]) -> std::process::Output {
        run_ok(&mut self.cli(i, args))
    }

    /// `garage json-api ENDPOINT` on node `i`, parsed; Err with the CLI's stderr.
    fn json_api(&self, i: usize, endpoint: &str) -> Result<serde_json::Value, String> {
        let out = output(&mut self.cli(i, &["json-api", endpoint]));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{endpoint}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `ID@127.0.0.1:RPC` of node `i`.
    fn peer(&self, i: usize) -> String {
        format!("{}@127.0.0.1:{}", self.nodes[i].id, self.nodes[i].rpc_port)
    }

    fn write_config(&self, i: usize, opts: &GarageOptions, secret: &str, peers: &[String]) {
        let node = &self.nodes[i];
        let dir = node.config.parent().expect("node dir");
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        // No root_domain: path-style requests only, as Distribution's S3 driver sends them.
        let text = format!(
            "metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"lmdb\"\n\
             replication_factor = 3\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             bootstrap_peers = [{peers}]\n\
             \n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"{bind}:{s3}\"\n",
            meta = s(&dir.join("meta")),
            data = s(&dir.join("data")),
            rpc = node.rpc_port,
            peers = peers.join(", "),
            region = opts.region,
            bind = opts.s3_bind,
            s3 = node.s3_port,
        );
        std::fs::write(&node.config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", node.config.display()));
    }

    /// Runs node `i`'s server and waits until it listens on its RPC and S3 ports.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.starts += 1;
        let log = match node.starts {
            1 => self.work.join(format!("node{}.log", i + 1)),
            n => self.work.join(format!("node{}-{n}.log", i + 1)),
        };
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&node.config).arg("server");
        let mut process = Background::start(&format!("garage node {}", i + 1), &mut cmd, &log);
        process.wait_for_port(node.rpc_port);
        process.wait_for_port(node.s3_port);
        node.process = Some(process);
    }

    /// Waits until every running node sees exactly the running nodes up.
    fn wait_settled(&mut self) {
        let running: Vec<bool> = (0..NODES).map(|i| self.running(i)).collect();
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        if ids.iter().any(String::is_empty) {
            return; // first start: ids unknown yet, nothing to compare with
        }
        for i in (0..NODES).filter(|i| running[*i]) {
            wait_for(
                &format!("node {} seeing the running nodes up", i + 1),
                SETTLE,
                || {
                    let status = self.json_api(i, "GetClusterStatus")?;
                    for (j, id) in ids.iter().enumerate() {
                        let up = status["nodes"]
                            .as_array()
                            .and_then(|a| a.iter().find(|n| n["id"] == id.as_str()))
                            .is_some_and(|n| n["isUp"] == true);
                        if up != running[j] {
                            return Err(format!("node {} isUp={up}: {status}", j + 1));
                        }
                    }
                    Ok(())
                },
            );
        }
    }

    /// Waits until every node reports the cluster healthy (all storage nodes connected,
    /// every partition complete).
    fn wait_healthy(&self) {
        for i in 0..NODES {
            wait_for(
                &format!("node {} reporting the cluster healthy", i + 1),
                SETTLE,
                || {
                    let health = self.json_api(i, "GetClusterHealth")?;
                    match health["status"].as_str() {
                        Some("healthy") => Ok(()),
                        _ => Err(health.to_string()),
                    }
                },
            );
        }
    }

    /// Waits until node `i`'s S3 API lists the bucket for the key (HTTP 200).
    fn wait_s3(&self, i: usize) {
        wait_for(
            &format!("node {}'s S3 API listing the bucket", i + 1),
            SETTLE,
            || {
                let (code, body) = self.s3_get(i, &format!("/{}?list-type=2", self.bucket));
                if code == 200 {
                    Ok(())
                } else {
                    Err(format!("HTTP {code}: {body}"))
                }
            },
        );
    }

    /// A GET signed with the key (SigV4, region and service `s3`) to node `i`'s S3 API;
    /// returns the status (0: no answer) and the body (or curl's error). curl signs the
    /// query as given: its parameters must be in order and percent-encoded as SigV4 wants
    /// (see [`s3_query_value`]).
    pub fn s3_get(&self, i: usize, path_and_query: &str) -> (u16, String) {
        let out = output(
            Command::new("curl")
                .args(["-sS", "--noproxy", "*", "--max-time", "10"])
                .args(["--aws-sigv4", &format!("aws:amz:{}:s3", self.region)])
                // Garage wants the payload hash header, which curl 7.88 does not add (it
                // signs it when given).
                .args(["-H", &format!("x-amz-content-sha256: {EMPTY_SHA256}")])
                .args([
                    "--user",
                    &format!("{}:{}", self.access_key_id, self.secret_access_key),
                ])
                .args(["-w", "\n%{http_code}"])
                .arg(format!("{}{path_and_query}", self.endpoint(i))),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse() {
            Ok(code) if code != 0 => (code, body.to_string()),
            _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Node `i`'s log so far (its latest start).
    pub fn log_text(&self, i: usize) -> String {
        self.nodes[i]
            .process
            .as_ref()
            .map(Background::log_text)
            .unwrap_or_default()
    }
}

/// `value` percent-encoded for an S3 query string as SigV4's canonical form has it
/// (everything but unreserved characters, `/` included).
pub fn s3_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value after `label` in one of the CLI's tables (`Key ID:   GK...`).
fn table_value(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}
