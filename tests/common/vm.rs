//! Booting test VMs: the cached Debian 13 base and registry fixture from image/, seed ISOs,
//! copy-on-write overlays, QEMU under TCG (KVM is broken on these machines), SSH into the
//! guest as cloud-init's default user, the serial console, host-side helper servers (a
//! Distribution registry as the pinned image's mirror, a one-file HTTP server), and the
//! timings file. At most two VM runs at a time (one per core; TCG runs a guest CPU on one
//! host thread): each holds one of the machine-wide slot locks, image/'s
//! `$REGIMAGE_TEST_CACHE/.vm.lock` (which boot-smoke.sh also takes) or `.vm.lock.1`.
//! `REGIMAGE_E2E_VMS=1` makes it one at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{output, run_ok, s};

/// The repository (where image/ lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// image/'s cache root (boot-smoke.sh's lock lives there).
pub fn cache_root() -> PathBuf {
    std::env::var_os("REGIMAGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/regimage-test"))
}

/// Seconds since `t`, one decimal, for progress lines and timings.
pub fn secs(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// A progress line on stderr (cargo test shows it with --nocapture).
/// A progress line on stderr, named by the test that prints it (the VM tests run side by
/// side, so their lines interleave).
pub fn progress(msg: &str) {
    let now = time::OffsetDateTime::now_utc();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("e2e");
    let test = test.rsplit("::").next().unwrap_or(test);
    eprintln!(
        "{:02}:{:02}:{:02} [{test}] {msg}",
        now.hour(),
        now.minute(),
        now.second()
    );
}

// ---- timings --------------------------------------------------------------------------------

/// Stage timings of one test, printed as they come and merged into target/e2e-timings.json
/// under the test's name (other tests' entries are kept).
pub struct Timings {
    test: String,
    stages: Vec<(String, serde_json::Value)>,
}

static TIMINGS_FILE: Mutex<()> = Mutex::new(());

impl Timings {
    pub fn new(test: &str) -> Timings {
        Timings {
            test: test.to_string(),
            stages: Vec::new(),
        }
    }

    /// Records `seconds` for `stage`, prints it, and rewrites the file (so a test that fails
    /// later still leaves what it measured).
    pub fn record(&mut self, stage: &str, seconds: f64) {
        progress(&format!("timing: {stage}: {seconds:.1} s"));
        self.put(stage, serde_json::json!(seconds));
    }

    /// Records any other fact (a size, a cache hit) next to the timings.
    pub fn put(&mut self, key: &str, value: serde_json::Value) {
        self.stages.retain(|(k, _)| k != key);
        self.stages.push((key.to_string(), value));
        self.save();
    }

    pub fn path() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target.join("e2e-timings.json")
    }

    fn save(&self) {
        let _guard = TIMINGS_FILE.lock().unwrap_or_else(|e| e.into_inner());
        let path = Timings::path();
        let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut mine = serde_json::Map::new();
        for (k, v) in &self.stages {
            mine.insert(k.clone(), v.clone());
        }
        all.insert(self.test.clone(), serde_json::Value::Object(mine));
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let text = serde_json::to_vec_pretty(&all).expect("encoding timings");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

// ---- test inputs from image/ ----------------------------------------------------------------

/// The cached inputs image/ builds.
pub struct Inputs {
    pub base: PathBuf,
    pub fixture: PathBuf,
    /// The fixture's manifest digest (pin it as registry.image).
    pub manifest_digest: String,
    /// The fixture's config digest (the image ID podman shows).
    pub config_digest: String,
}

fn script_stdout(script: &str, arg: &str) -> String {
    let out = run_ok(Command::new(repo_root().join("image").join(script)).arg(arg));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds (or finds in the cache) the Debian base and the registry fixture, timing both.
pub fn inputs(timings: &mut Timings) -> Inputs {
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("genisoimage", "genisoimage"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("mmdebstrap", "mmdebstrap"),
        ("skopeo", "skopeo"),
        ("docker-registry", "docker-registry"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("strip", "binutils"),
        ("setpriv", "util-linux"),
    ] {
        super::require_tool(tool, package);
    }
    let mut built = |script: &str, name: &str| -> PathBuf {
        let path = PathBuf::from(script_stdout(script, "--print-path"));
        let hit = path.is_file();
        let t = Instant::now();
        progress(&format!(
            "{name}: {}",
            if hit { "cache hit" } else { "building" }
        ));
        // The script reuses a cached entry itself; run it either way so a half-made cache
        // is never trusted.
        let out = output(&mut Command::new(repo_root().join("image").join(script)));
        assert!(
            out.status.success(),
            "image/{script} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            path.is_file(),
            "image/{script} did not leave {}",
            path.display()
        );
        timings.record(&format!("{name}_seconds"), secs(t));
        timings.put(&format!("{name}_cache_hit"), serde_json::json!(hit));
        timings.put(
            &format!("{name}_bytes"),
            serde_json::json!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)),
        );
        path
    };
    let base = built("build-debian-base.sh", "base");
    let fixture = built("build-registry-fixture.sh", "fixture");
    let dir = fixture.parent().expect("fixture dir");
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("reading the fixture's {f}: {e}"))
            .trim()
            .to_string()
    };
    let inputs = Inputs {
        base,
        fixture: fixture.clone(),
        manifest_digest: read("manifest-digest"),
        config_digest: read("config-digest"),
    };
    assert!(inputs.manifest_digest.starts_with("sha256:"));
    assert!(inputs.config_digest.starts_with("sha256:"));
    inputs
}

// ---- the machine-wide VM lock ----------------------------------------------------------------

/// Held while a VM of this test runs; a third VM run (boot-smoke.sh, another test) waits
/// for one of the slots.
pub struct VmLock {
    _lock: nix::fcntl::Flock<File>,
    /// How long this run waited for another one.
    pub waited_seconds: f64,
}

/// How many VM runs may overlap: `REGIMAGE_E2E_VMS`, default 2 (these machines have two
/// cores).
fn vm_slots() -> usize {
    match std::env::var("REGIMAGE_E2E_VMS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .unwrap_or_else(|| panic!("REGIMAGE_E2E_VMS={v}: expected a whole number >= 1")),
        Err(_) => 2,
    }
}

pub fn vm_lock() -> VmLock {
    let root = cache_root();
    std::fs::create_dir_all(&root).expect("creating the test cache root");
    let paths: Vec<PathBuf> = (0..vm_slots())
        .map(|n| match n {
            0 => root.join(".vm.lock"),
            n => root.join(format!(".vm.lock.{n}")),
        })
        .collect();
    let t = Instant::now();
    let mut said = false;
    loop {
        for path in &paths {
            let file =
                File::create(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            if let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                if said {
                    progress(&format!(
                        "got the VM slot {} after {:.0} s",
                        path.display(),
                        secs(t)
                    ));
                }
                return VmLock {
                    _lock: lock,
                    waited_seconds: secs(t),
                };
            }
        }
        if !said {
            progress(&format!(
                "every VM slot ({}) is taken by another VM run; waiting",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

// ---- host-side helpers ----------------------------------------------------------------------

/// A background process killed (TERM, then KILL) when dropped.
pub struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr to `log`. It runs under `setpriv --pdeathsig
    /// TERM`: if the test process dies without unwinding (a signal, a CI timeout), the
    /// process (a VM, a bake, a server) gets SIGTERM instead of living on.
    pub fn start(name: &str, cmd: &mut Command, log: &Path) -> Background {
        let file = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = file.try_clone().expect("cloning a log handle");
        let mut wrapped = super::wrapped(&["setpriv", "--pdeathsig", "TERM", "--"], cmd);
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Background {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until 127.0.0.1:`port` accepts connections.
    pub fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !self.running() {
                panic!("{} exited:\n{}", self.name, self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} did not listen on {port}:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGKILL now (a VM "power cut").
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if !self.running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !self.wait_exit(Duration::from_secs(10)) {
            self.kill_hard();
        }
    }
}

/// Debian's Distribution registry on 127.0.0.1:`port` (plain HTTP) holding the fixture as
/// `library/registry:2`: the pinned image's mirror. The guest reaches it as 10.0.2.2:`port`.
pub fn start_mirror(work: &Path, port: u16, fixture: &Path, manifest_digest: &str) -> Background {
    let data = work.join("mirror-data");
    std::fs::create_dir_all(&data).expect("creating the mirror's storage");
    let yml = work.join("mirror.yml");
    std::fs::write(
        &yml,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            s(&data)
        ),
    )
    .expect("writing the mirror's config");
    let mut mirror = Background::start(
        "mirror registry",
        Command::new("docker-registry").arg("serve").arg(&yml),
        &work.join("mirror.log"),
    );
    mirror.wait_for_port(port);
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", s(fixture)),
        &format!("docker://127.0.0.1:{port}/library/registry:2"),
    ]));
    let out = run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://127.0.0.1:{port}/library/registry@{manifest_digest}"),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        manifest_digest,
        "the mirror does not serve the fixture by its pinned digest"
    );
    mirror
}

/// A one-file HTTP server on 127.0.0.1 (GET /NAME answers the file, anything else 404):
/// the guest downloads the regimage binary from it (`--binary-url`). Stops when dropped.
pub struct FileServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    pub fn start(name: &str, file: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the file server");
        let port = listener.local_addr().expect("file server address").port();
        listener
            .set_nonblocking(true)
            .expect("making the file server non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let want = format!("/{name}");
        let body =
            std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = serve_one(stream, &want, &body, &requests2);
            }
        });
        FileServer {
            port,
            stop,
            requests,
        }
    }

    /// The request lines served so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn serve_one(
    stream: TcpStream,
    want: &str,
    body: &[u8],
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if let Ok(mut r) = requests.lock() {
        r.push(request.trim().to_string());
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut stream = stream;
    if (method == "GET" || method == "HEAD") && path == want {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if method == "GET" {
            stream.write_all(body)?;
        }
    } else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
    }
    stream.flush()
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether 127.0.0.1:`port` can be bound right now.
pub fn port_free(port: u16) -> bool {
    port_free_on(Ipv4Addr::LOCALHOST, port)
}

/// Whether `address`:`port` can be bound right now.
pub fn port_free_on(address: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind((address, port)).is_ok()
}

// ---- guest inputs ---------------------------------------------------------------------------

/// A fresh SSH key pair for the guest's default user.
pub struct SshKey {
    pub private: PathBuf,
    pub public: String,
}

pub fn ssh_key(dir: &Path) -> SshKey {
    let private = dir.join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "regimage-e2e", "-f"])
            .arg(&private),
    );
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub"))
        .expect("reading the public key")
        .trim()
        .to_string();
    SshKey { private, public }
}

/// A NoCloud seed ISO (volume id `cidata`) with this user-data and meta-data.
pub fn seed_iso(dir: &Path, user_data: &str, meta_data: &str) -> PathBuf {
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).expect("creating the seed dir");
    std::fs::write(seed.join("user-data"), user_data).expect("writing user-data");
    std::fs::write(seed.join("meta-data"), meta_data).expect("writing meta-data");
    let iso = dir.join("seed.iso");
    run_ok(
        Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(seed.join("user-data"))
            .arg(seed.join("meta-data")),
    );
    iso
}

/// A copy-on-write overlay of `base` with virtual size `size` (growpart grows the root).
pub fn overlay(base: &Path, path: &Path, size: &str) {
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(path)
            .arg(size),
    );
}

// ---- the VM ---------------------------------------------------------------------------------

/// What to boot.
pub struct VmSpec {
    pub name: String,
    pub disk: PathBuf,
    pub seed: PathBuf,
    /// The host's loopback address the forwards (and SSH) listen on: one of its own per
    /// VM, so the guest's ports can be the same on the host and a test name can map to it.
    pub address: Ipv4Addr,
    /// (host port on `address`, guest port); SSH is added.
    pub forwards: Vec<(u16, u16)>,
    /// false: no network card at all (no SSH either: only the console tells).
    pub network: bool,
    /// Where serial.log and qemu.log go.
    pub log_dir: PathBuf,
    pub memory_mib: u32,
}

/// What a Linux kernel prints when it panics.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// A running QEMU guest; killed when dropped.
pub struct Vm {
    pub name: String,
    /// The host address its forwards listen on ([`VmSpec::address`]).
    pub address: Ipv4Addr,
    pub ssh_port: u16,
    pub serial: PathBuf,
    /// The private key SSH logs in with (as `debian`).
    pub key: PathBuf,
    qemu: Background,
    pub started: Instant,
}

impl Vm {
    /// Boots `spec` under TCG with user networking (a default route and DNS: the user-data
    /// path installs packages from deb.debian.org). Hold a [`VmLock`] around it.
    pub fn start(spec: &VmSpec, key: &SshKey) -> Vm {
        std::fs::create_dir_all(&spec.log_dir).expect("creating the VM log dir");
        let ssh_port = super::free_port();
        let address = spec.address;
        let mut netdev = format!("user,id=n0,hostfwd=tcp:{address}:{ssh_port}-:22");
        for (host, guest) in &spec.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:{address}:{host}-:{guest}"));
        }
        let serial = spec.log_dir.join("serial.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-name", &spec.name])
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            // One vCPU, as the product's TCG bake: with two, a guest kernel Oopsed on a
            // stale int3 of its own code patching (see src/qcow2/qemu.rs).
            .args(["-m", &spec.memory_mib.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-user-config"])
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", s(&spec.disk)))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                s(&spec.seed)
            ))
            .args(if spec.network {
                vec!["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]
            } else {
                vec![]
            })
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", s(&serial)));
        progress(&format!(
            "booting {} (ssh on {address}:{ssh_port}, forwards {:?}, serial {})",
            spec.name,
            spec.forwards,
            serial.display()
        ));
        let qemu = Background::start(&spec.name, &mut cmd, &spec.log_dir.join("qemu.log"));
        Vm {
            name: spec.name.clone(),
            address,
            ssh_port,
            serial,
            key: key.private.clone(),
            qemu,
            started: Instant::now(),
        }
    }

    /// The options ssh and scp share: the test's key only, no host key checks, keepalives.
    fn ssh_options(&self, cmd: &mut Command) {
        cmd.arg("-i").arg(&self.key).args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=10",
            "-o",
            // A guest under TCG on a loaded host can stall for tens of seconds (seen:
            // a session cut after 30 s, with nothing on stderr at LogLevel=ERROR).
            "ServerAliveCountMax=12",
        ]);
    }

    fn ssh_cmd(&self) -> Command {
        let mut cmd = Command::new("ssh");
        self.ssh_options(&mut cmd);
        cmd.args(["-p", &self.ssh_port.to_string()])
            .arg(format!("debian@{}", self.address));
        cmd
    }

    /// Copies `local` to `remote` (relative: the default user's home) with scp as the
    /// default user, as an operator copies a file onto the machine; bounded by 5 minutes.
    pub fn scp_to(&self, local: &Path, remote: &str) {
        let mut cmd = Command::new("timeout");
        cmd.args(["300", "scp", "-q"]);
        self.ssh_options(&mut cmd);
        cmd.args(["-P", &self.ssh_port.to_string()])
            .arg(local)
            .arg(format!("debian@{}:{remote}", self.address));
        super::run_ok(&mut cmd);
    }

    /// Runs `script` with `sh -s` as root (sudo) in the guest, feeding it on stdin (no
    /// quoting through ssh); bounded by `timeout`.
    pub fn root_sh_timeout(&self, script: &str, timeout: Duration) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg(timeout.as_secs().to_string());
        let ssh = self.ssh_cmd();
        cmd.arg(ssh.get_program());
        cmd.args(ssh.get_args());
        cmd.arg("sudo -n sh -s");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting ssh");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        child.wait_with_output().expect("waiting for ssh")
    }

    pub fn root_sh(&self, script: &str) -> Output {
        self.root_sh_timeout(script, Duration::from_secs(300))
    }

    /// `script` as root; panics with its output unless it exits 0; returns stdout.
    pub fn root_ok(&self, script: &str) -> String {
        let out = self.root_sh(script);
        assert!(
            out.status.success(),
            "in {} as root: `{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            script.trim(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the guest's, read as root.
    pub fn read_root_file(&self, path: &str) -> Vec<u8> {
        let out = self.root_sh(&format!("cat '{path}'"));
        assert!(
            out.status.success(),
            "reading {path} in {}: {} (ssh exits 255 when the connection drops, timeout 124): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn serial_text(&self) -> String {
        let bytes = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The serial log's size now: later waits look only past it.
    pub fn serial_mark(&self) -> usize {
        std::fs::metadata(&self.serial)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    fn serial_tail(&self, lines: usize) -> String {
        let text = self.serial_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn assert_running(&mut self, what: &str) {
        // A panicked guest hangs (no panic= on its command line): fail now, not at the
        // timeout.
        if let Some(line) = self
            .serial_text()
            .lines()
            .find(|l| l.contains(KERNEL_PANIC))
        {
            panic!(
                "{}: the guest's kernel panicked while waiting for {what}: {}\nserial tail:\n{}",
                self.name,
                line.trim(),
                self.serial_tail(60)
            );
        }
        if !self.qemu.running() {
            panic!(
                "{}: qemu exited while waiting for {what}\nqemu log:\n{}\nserial tail:\n{}",
                self.name,
                self.qemu.log_text(),
                self.serial_tail(40)
            );
        }
    }

    /// Waits (bounded) until SSH answers; returns the seconds since boot.
    pub fn wait_ssh(&mut self, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            self.assert_running("SSH");
            let out = self.root_sh_timeout("true", Duration::from_secs(30));
            if out.status.success() {
                let t = secs(self.started);
                progress(&format!("{}: SSH up after {t:.0} s", self.name));
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no SSH within {} s\nserial tail:\n{}",
                self.name,
                timeout.as_secs(),
                self.serial_tail(40)
            );
            if last_report.elapsed() > Duration::from_secs(30) {
                progress(&format!(
                    "{}: waiting for SSH ({:.0} s since boot)",
                    self.name,
                    secs(self.started)
                ));
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Waits (bounded) for a serial line containing `want` past byte `from`; panics on a line
    /// with one of `fail` (with the serial tail and what `diagnose` prints in the guest).
    /// Every 30 s it prints the last console line, so a slow boot shows where it is.
    pub fn wait_serial(
        &mut self,
        from: usize,
        want: &str,
        fail: &[&str],
        timeout: Duration,
        diagnose: &str,
    ) -> String {
        self.wait_until(
            from,
            &format!("console line with {want:?}"),
            |_, new| new.lines().find(|l| l.contains(want)).map(str::to_string),
            fail,
            timeout,
            diagnose,
        )
    }

    /// [`Vm::wait_serial`] with the test of its own: `probe` gets the guest and the serial
    /// text past `from` every 2 s and returns what it found (it may also look in the guest,
    /// e.g. its journal, for what never reaches the console); `what` names it in messages
    /// ("no {what} within ...").
    pub fn wait_until(
        &mut self,
        from: usize,
        what: &str,
        mut probe: impl FnMut(&Vm, &str) -> Option<String>,
        fail: &[&str],
        timeout: Duration,
        diagnose: &str,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            let text = self.serial_text();
            let new = text.get(from..).unwrap_or("");
            if let Some(found) = probe(self, new) {
                return found;
            }
            if let Some(line) = new.lines().find(|l| fail.iter().any(|f| l.contains(f))) {
                let diag = self.root_sh_timeout(diagnose, Duration::from_secs(120));
                panic!(
                    "{}: the console says {line:?}\nserial tail:\n{}\n--- diagnosis in the guest ---\n{}{}",
                    self.name,
                    self.serial_tail(40),
                    String::from_utf8_lossy(&diag.stdout),
                    String::from_utf8_lossy(&diag.stderr)
                );
            }
            if Instant::now() >= deadline {
                let diag = self.root_sh_timeout(diagnose, Duration::from_secs(120));
                panic!(
                    "{}: no {what} within {} s\nserial tail:\n{}\n--- diagnosis in the guest ---\n{}{}",
                    self.name,
                    timeout.as_secs(),
                    self.serial_tail(40),
                    String::from_utf8_lossy(&diag.stdout),
                    String::from_utf8_lossy(&diag.stderr)
                );
            }
            self.assert_running(what);
            if last_report.elapsed() > Duration::from_secs(30) {
                let last = new
                    .lines()
                    .rev()
                    .map(|l| l.trim())
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .chars()
                    .take(150)
                    .collect::<String>();
                progress(&format!(
                    "{}: {:.0} s since boot; console: {last}",
                    self.name,
                    secs(self.started)
                ));
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// The guest's boot id (changes with every boot).
    pub fn boot_id(&self) -> String {
        self.root_ok("cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_string()
    }

    /// `systemctl reboot` in the guest, then waits for SSH on the new boot; returns the
    /// seconds from the reboot command to SSH.
    pub fn reboot(&mut self, timeout: Duration) -> f64 {
        let before = self.boot_id();
        let t = Instant::now();
        // The connection may drop before ssh returns: its exit status says nothing.
        let _ = self.root_sh_timeout("systemctl reboot", Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running("the reboot");
            std::thread::sleep(Duration::from_secs(3));
            let out = self.root_sh_timeout(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(30),
            );
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not back within {} s of the reboot\nserial tail:\n{}",
                self.name,
                timeout.as_secs(),
                self.serial_tail(40)
            );
        }
        let took = secs(t);
        progress(&format!("{}: back after reboot in {took:.0} s", self.name));
        took
    }

    /// Powers the guest off and waits for QEMU to exit (killed after `timeout`).
    pub fn poweroff(&mut self, timeout: Duration) {
        let _ = self.root_sh_timeout("systemctl poweroff", Duration::from_secs(30));
        if !self.qemu.wait_exit(timeout) {
            progress(&format!("{}: no clean poweroff; killing qemu", self.name));
            self.qemu.kill_hard();
        }
    }

    /// Kills QEMU at once: a power cut.
    pub fn kill_hard(&mut self) {
        self.qemu.kill_hard();
    }

    pub fn pid(&self) -> u32 {
        self.qemu.pid()
    }
}
