//! The proxy on loopback with real parts, shared by tests/proxy_loopback.rs and the
//! benchmark (benches/bench.rs): Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system`.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::client::{self, Client};
use super::netns::Netns;
use super::vm::Background;
use super::{regimage, require_tool, run_ok, s, test_dir};

/// Registry and proxy running; both stop and the directory goes when this is dropped.
pub struct Loopback {
    /// The bundle of client `ci`, installed under $HOME as its README says.
    pub client: Client,
    /// The registry's own port on 127.0.0.1 (plain HTTP, what the proxy forwards to).
    pub registry_port: u16,
    /// The scratch directory (config, logs, the registry's storage).
    pub work: PathBuf,
    /// What `regimage render` and `firstboot --no-system` wrote (stands for `/`).
    pub root: PathBuf,
    _site: Site,
}

/// Where and under which names a site runs (tests/clients.rs: real names and the standard
/// ports inside a network namespace).
pub struct SiteOptions<'a> {
    pub hostname: &'a str,
    pub extra_names: &'a [&'a str],
    pub pull: u16,
    pub push: u16,
    pub registry: u16,
    /// Appended to the site config (the names and ports are set from the fields above).
    pub extra_config: &'a str,
    /// Run the registry and nginx inside this namespace (`ip netns exec`).
    pub netns: Option<&'a Netns>,
}

/// The registry and nginx of one site; they stop and the directory goes when this is
/// dropped.
pub struct Site {
    pub registry_port: u16,
    pub work: PathBuf,
    pub root: PathBuf,
    // Dropped in this order: nginx, the registry, then the directory.
    _nginx: Background,
    _registry: Background,
    _dir: tempfile::TempDir,
}

impl Loopback {
    /// nginx's access log (`regimage` log_format), as [`start_nginx`] places it.
    pub fn access_log(&self) -> PathBuf {
        self.work.join("log/registry-proxy/access.log")
    }

    /// nginx's resident memory now, master and workers together (VmRSS, KiB).
    pub fn nginx_rss_kib(&self) -> u64 {
        let pid_file = self.root.join("run/registry-proxy/nginx.pid");
        let master: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()))
            .trim()
            .parse()
            .expect("nginx.pid holds a pid");
        let field = |pid: u32, name: &str| -> Option<u64> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        let workers = std::fs::read_dir("/proc")
            .expect("listing /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| field(*pid, "PPid:") == Some(master.into()));
        std::iter::once(master)
            .chain(workers)
            .filter_map(|pid| field(pid, "VmRSS:"))
            .sum()
    }
}

/// Starts the registry and nginx as the appliance runs them; `extra_config` is appended to
/// the site config (the ports and names are set here).
pub fn start(extra_config: &str) -> Loopback {
    let (pull, push, registry) = (super::free_port(), super::free_port(), super::free_port());
    assert!(pull != push && push != registry && pull != registry);
    let site = start_site(&SiteOptions {
        hostname: "localhost",
        extra_names: &["127.0.0.1"],
        pull,
        push,
        registry,
        extra_config,
        netns: None,
    });
    // Install the client bundle as its README says, per user: ~/.config/containers/certs.d.
    let client_work = site.work.join("client");
    std::fs::create_dir(&client_work).expect("creating the client dir");
    let client = client::install_bundle(
        &site.root.join("var/lib/regimage/out/ci.tar.gz"),
        "ci",
        &client_work,
        pull,
        push,
    );
    Loopback {
        client,
        registry_port: site.registry_port,
        work: site.work.clone(),
        root: site.root.clone(),
        _site: site,
    }
}

/// Renders the site config of `opts`, runs `firstboot --no-system` (certificates, bundles
/// under root/var/lib/regimage/out), then starts the registry and nginx.
pub fn start_site(opts: &SiteOptions<'_>) -> Site {
    for (tool, package) in [
        ("nginx", "nginx-light"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("curl", "curl"),
        ("openssl", "openssl"),
    ] {
        require_tool(tool, package);
    }
    let dir = test_dir("regimage-proxy-");
    let work = dir.path().to_path_buf();
    let root = work.join("root");
    std::fs::create_dir(&root).expect("creating root");
    let (pull, push, registry_port) = (opts.pull, opts.push, opts.registry);

    let cfg = work.join("regimage.yaml");
    std::fs::write(
        &cfg,
        format!(
            "hostname: {}\nextra-names: [{}]\nports:\n  pull: {pull}\n  push: {push}\n  registry: {registry_port}\n{}",
            opts.hostname,
            opts.extra_names.join(", "),
            opts.extra_config
        ),
    )
    .expect("writing config");
    run_ok(
        regimage()
            .args(["render", "--root"])
            .arg(&root)
            .arg("-c")
            .arg(&cfg),
    );
    run_ok(
        regimage()
            .args(["firstboot", "--no-system", "--root"])
            .arg(&root)
            .arg("-c")
            .arg(&cfg),
    );

    // The registry, as the container runs it: the unit's environment, on the loopback port.
    let config = regimage::config::Config::load(Some(&cfg)).expect("loading config");
    let data = work.join("registry-data");
    std::fs::create_dir(&data).expect("creating registry data dir");
    let registry_yml = work.join("registry.yml");
    std::fs::write(
        &registry_yml,
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n",
    )
    .expect("writing registry config");
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&registry_yml);
    for (k, v) in regimage::render::registry_environment(&config) {
        cmd.env(k, v);
    }
    // Only the listen address and the storage path differ from the container.
    cmd.env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{registry_port}"))
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data)
        .env("REGISTRY_HTTP_SECRET", "loopback-test-secret");
    if let Some(ns) = opts.netns {
        cmd = ns.wrap(&cmd);
    }
    let mut registry = Background::start("docker-registry", &mut cmd, &work.join("registry.log"));
    match opts.netns {
        Some(ns) => ns.wait_for_port(&mut registry, "127.0.0.1", registry_port),
        None => registry.wait_for_port(registry_port),
    }

    let conf_text =
        std::fs::read_to_string(root.join("etc/registry/nginx.conf")).expect("reading nginx.conf");
    let nginx = start_nginx_in(
        &conf_text,
        &root,
        &work,
        "registry-proxy",
        &[pull, push],
        opts.netns,
    );
    Site {
        registry_port,
        work,
        root,
        _nginx: nginx,
        _registry: registry,
        _dir: dir,
    }
}

/// nginx running `conf_text` (an nginx.conf as `regimage render` writes it) with the files
/// under `root`; only the absolute path prefixes move: the run directory to `root/run/NAME`
/// (nginx.pid, where `regimage renew --root` finds it), the logs into `work` (the access log
/// is `log/NAME/access.log`, errors go to `NAME.out`). Returns once it listens on every port in `ports`.
pub fn start_nginx(
    conf_text: &str,
    root: &Path,
    work: &Path,
    name: &str,
    ports: &[u16],
) -> Background {
    start_nginx_in(conf_text, root, work, name, ports, None)
}

/// [`start_nginx`], inside `netns` when given.
pub fn start_nginx_in(
    conf_text: &str,
    root: &Path,
    work: &Path,
    name: &str,
    ports: &[u16],
    netns: Option<&Netns>,
) -> Background {
    // Under root, where `regimage renew --root ROOT` looks for nginx's PID file.
    let run_dir = root.join("run").join(name);
    let log_dir = work.join("log").join(name);
    std::fs::create_dir_all(&run_dir).expect("creating run dir");
    std::fs::create_dir_all(&log_dir).expect("creating log dir");
    let conf_text = conf_text
        .replace("/etc/registry/", &format!("{}/etc/registry/", s(root)))
        .replace("/run/registry-proxy", &s(&run_dir))
        .replace("/var/log/registry-proxy", &s(&log_dir))
        // The journal's socket may be missing here; a file the tests can read instead.
        .replace(
            regimage::render::PROXY_ACCESS_LOG,
            &s(&log_dir.join("access.log")),
        );
    let conf = work.join(format!("{name}.conf"));
    std::fs::write(&conf, conf_text).expect("writing nginx.conf");
    let error_log = log_dir.join("startup-error.log");
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&error_log)
        .args(["-g", "daemon off; user root;"]);
    if let Some(ns) = netns {
        cmd = ns.wrap(&cmd);
    }
    let mut nginx = Background::start("nginx", &mut cmd, &work.join(format!("{name}.out")));
    for port in ports {
        match netns {
            Some(ns) => ns.wait_for_port(&mut nginx, "127.0.0.1", *port),
            None => nginx.wait_for_port(*port),
        }
    }
    nginx
}
