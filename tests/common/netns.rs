//! A "site" in its own network namespace, so real clients can use real registry names:
//! an address of its own on its loopback interface (dockerd treats a registry resolving into
//! 127.0.0.0/8 as insecure and then ignores certs.d), `/etc/hosts` mapping the test's names
//! to it, and per-test `/etc/containers`, `/etc/docker`, `/etc/containerd` (what the README's
//! install commands write), all through `ip netns exec`, which bind-mounts
//! `/etc/netns/NAME/*` over `/etc/*`. Nothing in it reaches the outside network, so a pull
//! that went to Docker Hub would fail.
//!
//! Also the daemons the clients need inside it: containerd and dockerd, each with its
//! state in the test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::vm::Background;
use super::{output, run_ok, s};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace and its /etc overlay; both go when this is dropped.
pub struct Netns {
    pub name: String,
    /// The namespace's own address (on its lo, outside 127/8), where the names resolve.
    pub addr: String,
    etc: PathBuf,
}

impl Netns {
    /// A new namespace where each of `names` resolves to its own address; `/etc/containers`
    /// starts as a copy of the host's (policy.json, registries.conf), `/etc/docker` and
    /// `/etc/containerd` empty.
    pub fn new(names: &[&str]) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("regimage-{}-{n}", std::process::id());
        let addr = format!("10.213.{}.1", (std::process::id() + n) % 250 + 1);
        let etc = PathBuf::from("/etc/netns").join(&name);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        // From here on Drop cleans up, even if a step below fails.
        let ns = Netns { name, addr, etc };
        for args in [
            vec!["ip", "link", "set", "lo", "up"],
            // On lo: no dummy or veth module needed, and the address is still not 127/8.
            vec!["ip", "addr", "add", &format!("{}/32", ns.addr), "dev", "lo"],
        ] {
            run_ok(&mut ns.exec(&args));
        }
        std::fs::create_dir_all(&ns.etc).expect("creating /etc/netns/NAME");
        let mut hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n".to_string();
        for host in names {
            hosts.push_str(&format!("{} {host}\n", ns.addr));
        }
        std::fs::write(ns.etc.join("hosts"), hosts).expect("writing the namespace's hosts");
        // Only the hosts file: no DNS server, so no name outside the test resolves.
        std::fs::write(ns.etc.join("resolv.conf"), "").expect("writing resolv.conf");
        run_ok(
            Command::new("cp")
                .args(["-a", "/etc/containers"])
                .arg(ns.etc.join("containers")),
        );
        for d in ["docker", "containerd"] {
            std::fs::create_dir_all(ns.etc.join(d)).expect("creating an /etc overlay");
        }
        ns
    }

    /// `args` run inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// `cmd` (program, arguments, environment, directory) run inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        in_netns(&self.name, cmd)
    }

    /// [`Netns::wrap`] with this machine's cgroup mounts back in place first: `ip netns
    /// exec` mounts a fresh /sys, which hides /sys/fs/cgroup, and dockerd refuses to start
    /// without its cgroups ("Devices cgroup isn't mounted").
    pub fn wrap_with_cgroups(&self, cmd: &Command) -> Command {
        let mut script = String::new();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || !f[1].starts_with("/sys/fs/cgroup") {
                continue;
            }
            let opts: Vec<&str> = f[3]
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
                .collect();
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!("-o {}", opts.join(","))
            };
            script.push_str(&format!(
                "mkdir -p {dir} && mount -t {fs} {opts} {fs} {dir}\n",
                dir = f[1],
                fs = f[2]
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut sh = Command::new("sh");
        sh.args(["-ec", &script, "sh"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => sh.env(key, v),
                None => sh.env_remove(key),
            };
        }
        self.wrap(&sh)
    }

    /// What the namespace's processes see as `/etc/<rel>`.
    pub fn etc(&self, rel: &str) -> PathBuf {
        self.etc.join(rel)
    }

    /// Waits until `addr`:`port` inside the namespace accepts connections, while `bg` runs.
    pub fn wait_for_port(&self, bg: &mut Background, addr: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        while Instant::now() < deadline {
            assert!(bg.running(), "exited:\n{}", bg.log_text());
            if output(&mut self.exec(&["bash", "-c", &probe]))
                .status
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("nothing listens on {addr}:{port}:\n{}", bg.log_text());
    }

    /// Waits until the unix socket `sock` accepts connections.
    pub fn wait_for_socket(&self, bg: &mut Background, sock: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            assert!(bg.running(), "exited:\n{}", bg.log_text());
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("nothing listens on {}:\n{}", sock.display(), bg.log_text());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// `cmd` run as `ip netns exec NAME ...`, keeping its environment and directory.
pub fn in_netns(name: &str, cmd: &Command) -> Command {
    super::wrapped(&["ip", "netns", "exec", name], cmd)
}

/// containerd and dockerd running inside a namespace, state under one directory; both
/// stop when this is dropped (dockerd first).
pub struct Daemons {
    /// containerd's socket: CONTAINERD_ADDRESS for `ctr`.
    pub containerd_sock: PathBuf,
    /// DOCKER_HOST for the docker client (`unix://...`).
    pub docker_host: String,
    _dockerd: Background,
    _containerd: Background,
}

impl Daemons {
    pub fn start(ns: &Netns, dir: &Path) -> Daemons {
        std::fs::create_dir_all(dir).expect("creating the daemons' dir");
        let containerd_sock = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_cri = true\n",
                root = s(&dir.join("containerd-root")),
                state = s(&dir.join("containerd-state")),
                sock = s(&containerd_sock),
            ),
        )
        .expect("writing containerd's config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let mut containerd = Background::start(
            "containerd",
            &mut ns.wrap_with_cgroups(&cmd),
            &dir.join("containerd.log"),
        );
        ns.wait_for_socket(&mut containerd, &containerd_sock);

        let docker_sock = dir.join("docker.sock");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("docker-root"))
            .arg("--exec-root")
            .arg(dir.join("docker-exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", s(&docker_sock)))
            .arg("--containerd")
            .arg(&containerd_sock)
            // No network setup on the host: the test only pushes and pulls. vfs: no mounts
            // left behind, and the test images are tiny.
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ]);
        let mut dockerd = Background::start(
            "dockerd",
            &mut ns.wrap_with_cgroups(&cmd),
            &dir.join("dockerd.log"),
        );
        ns.wait_for_socket(&mut dockerd, &docker_sock);
        Daemons {
            containerd_sock,
            docker_host: format!("unix://{}", s(&docker_sock)),
            _dockerd: dockerd,
            _containerd: containerd,
        }
    }
}

/// The environment for podman and skopeo with their image store and engine state under
/// `dir` (CONTAINERS_STORAGE_CONF, CONTAINERS_CONF), so the test never touches the host's
/// store; no systemd here, so cgroupfs and a file for events.
pub fn podman_env(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).expect("creating podman's dir");
    let storage = dir.join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            s(&dir.join("graph")),
            s(&dir.join("run"))
        ),
    )
    .expect("writing storage.conf");
    let engine = dir.join("containers.conf");
    std::fs::write(
        &engine,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\ntmp_dir = \"{}\"\n",
            s(&dir.join("events.log")),
            s(&dir.join("tmp"))
        ),
    )
    .expect("writing containers.conf");
    vec![
        ("CONTAINERS_STORAGE_CONF".to_string(), s(&storage)),
        ("CONTAINERS_CONF".to_string(), s(&engine)),
    ]
}
