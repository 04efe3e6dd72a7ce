//! The proxy on loopback with real parts, shared by tests/proxy_loopback.rs and the
//! benchmark (benches/bench.rs): Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system`.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl.

use std::collections::BTreeMap;
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
    /// The site config (`-c`).
    pub config: PathBuf,
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
    /// Files put under the root before first boot, as an operator copies them onto the
    /// machine out of band (S3 credentials, a cluster's join file): (path at `/`, contents).
    pub root_files: &'a [(&'a str, Vec<u8>)],
}

/// The registry and nginx of one site; they stop and the directory goes when this is
/// dropped.
pub struct Site {
    pub registry_port: u16,
    pub work: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
    // Dropped in this order: nginx, the registry, then the directory.
    _nginx: Background,
    _registry: Background,
    _dir: tempfile::TempDir,
}

/// The name [`start_site`] gives the proxy's nginx in [`start_nginx_in`]: its config is
/// `WORK/registry-proxy.conf`, its pid file `ROOT/run/registry-proxy/nginx.pid` (where the
/// day-2 commands look with `--root`).
const PROXY: &str = "registry-proxy";

/// The global directives the tests' nginx runs with (it stays in the foreground, as the
/// unit runs it, and as root: the files under the test's root are root's).
const NGINX_GLOBALS: &str = "daemon off; user root;";

impl Loopback {
    /// nginx's access log (`regimage` log_format), as [`start_nginx`] places it.
    pub fn access_log(&self) -> PathBuf {
        self.work.join(format!("log/{PROXY}/access.log"))
    }

    /// The proxy's pid file, as [`start_nginx_in`] places it.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join(format!("run/{PROXY}/nginx.pid"))
    }

    /// The nginx master's PID, from its pid file.
    pub fn nginx_master_pid(&self) -> u32 {
        let pid_file = self.pid_file();
        std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()))
            .trim()
            .parse()
            .expect("nginx.pid holds a pid")
    }

    /// What `--reload-command` runs to reload this nginx as registry-proxy.service's
    /// `ExecReload=` does: `nginx -t` on the config, then SIGHUP to the master (a graceful
    /// reload: same master, new workers, old ones finish their transfers). `-e stderr`:
    /// the default error log (/var/log/nginx) is not this nginx's.
    pub fn reload_command(&self) -> String {
        format!(
            "{} && kill -s HUP \"$(cat '{}')\"",
            self.config_test_command(),
            s(&self.pid_file())
        )
    }

    /// `nginx -t` on this nginx's config, as the unit's `ExecReload=` runs it first (it loads
    /// every certificate, key and CRL the config names).
    pub fn config_test_command(&self) -> String {
        let conf = self.work.join(format!("{PROXY}.conf"));
        format!(
            "nginx -t -q -c '{}' -e stderr -g '{NGINX_GLOBALS}'",
            s(&conf)
        )
    }

    /// `regimage ARGS --root ROOT -c CONFIG`: a day-2 command (renew, client, status) on
    /// this site's files.
    pub fn regimage(&self, args: &[&str]) -> Command {
        let mut cmd = regimage();
        cmd.args(args)
            .arg("--root")
            .arg(&self.root)
            .arg("-c")
            .arg(&self.config);
        cmd
    }

    /// [`Loopback::regimage`] with `--reload-command` reloading this nginx.
    pub fn regimage_reloading(&self, args: &[&str]) -> Command {
        let mut cmd = self.regimage(args);
        cmd.arg("--reload-command").arg(self.reload_command());
        cmd
    }

    /// First boot's marker under the root (firstboot.done).
    pub fn first_boot_marker(&self) -> PathBuf {
        self.root
            .join(regimage::render::FIRSTBOOT_DONE_PATH.trim_start_matches('/'))
    }

    /// Makes sure first boot's marker (firstboot.done) exists under the root, as on an
    /// appliance whose first boot finished: the day-2 commands wait for it. Returns
    /// whether `firstboot --no-system` had already written it.
    pub fn mark_first_boot_done(&self) -> bool {
        let marker = self.first_boot_marker();
        if marker.is_file() {
            return true;
        }
        std::fs::write(&marker, "first boot finished (tests/common/loopback.rs)\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", marker.display()));
        false
    }

    /// Installs the bundle `client add NAME` (or first boot) wrote for client `name`, as
    /// [`start`] installs `ci`'s, in its own directory under the work dir.
    pub fn install_client(&self, name: &str) -> Client {
        let dir = self.work.join(format!("client-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("creating the client dir");
        client::install_bundle(
            &self.bundle(name),
            name,
            &dir,
            self.client.pull,
            self.client.push,
        )
    }

    /// Where the bundle of client `name` is (the output dir under the root).
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("var/lib/regimage/out/{name}.tar.gz"))
    }

    /// nginx's resident memory now, master and workers together (VmRSS, KiB).
    pub fn nginx_rss_kib(&self) -> u64 {
        let master = self.nginx_master_pid();
        std::iter::once(master)
            .chain(self.nginx_workers().into_keys())
            .filter_map(|pid| proc_status_field(pid, "VmRSS:"))
            .sum()
    }

    /// The nginx master's children (workers, cache processes) and their process titles
    /// ("nginx: worker process", "... is shutting down" while a reload retires it).
    pub fn nginx_workers(&self) -> BTreeMap<u32, String> {
        let master = u64::from(self.nginx_master_pid());
        std::fs::read_dir("/proc")
            .expect("listing /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| proc_status_field(*pid, "PPid:") == Some(master))
            .filter_map(|pid| {
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let title = String::from_utf8_lossy(&title).replace('\0', " ");
                Some((pid, title.trim().to_string()))
            })
            .collect()
    }
}

/// Starts the registry and nginx as the appliance runs them; `extra_config` is appended to
/// the site config (the ports and names are set here).
pub fn start(extra_config: &str) -> Loopback {
    start_node(extra_config, &[], None)
}

/// [`start`] for a node: `root_files` are put under the root before first boot (see
/// [`SiteOptions::root_files`]), and `name` is the registry's name for the client when it is
/// not `localhost` (a cluster's name, resolved by the given hosts file).
pub fn start_node(
    extra_config: &str,
    root_files: &[(&str, Vec<u8>)],
    name: Option<(&str, PathBuf)>,
) -> Loopback {
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
        root_files,
    });
    // Install the client bundle as its README says, per user: ~/.config/containers/certs.d.
    let client_work = site.work.join("client");
    std::fs::create_dir(&client_work).expect("creating the client dir");
    let mut names = client::Names::localhost(pull, push);
    if let Some((host, hosts_file)) = name {
        names.host = host.to_string();
        names.hosts_file = Some(hosts_file);
    }
    let client = client::install_bundle_for(
        &site.root.join("var/lib/regimage/out/ci.tar.gz"),
        "ci",
        &client_work,
        names,
    );
    Loopback {
        client,
        registry_port: site.registry_port,
        work: site.work.clone(),
        root: site.root.clone(),
        config: site.config.clone(),
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
    for (path, contents) in opts.root_files {
        let target = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a file's directory"))
            .expect("creating a root file's directory");
        std::fs::write(&target, contents).expect("writing a root file");
    }
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
    // The secrets first boot wrote (HTTP secret, S3 keys), as the unit's EnvironmentFile=.
    let env_file = root.join(regimage::render::REGISTRY_ENV_PATH.trim_start_matches('/'));
    let env_text = std::fs::read_to_string(&env_file).expect("reading registry.env");
    for line in env_text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Only the listen address and the storage path differ from the container. This host's
    // AWS_CA_BUNDLE (the container has none) makes the S3 driver's AWS session fail to start.
    cmd.env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{registry_port}"))
        .env_remove("AWS_CA_BUNDLE");
    if !config.is_s3() {
        cmd.env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data);
    }
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
    let nginx = start_nginx_in(&conf_text, &root, &work, PROXY, &[pull, push], opts.netns);
    Site {
        registry_port,
        work,
        root,
        config: cfg,
        _nginx: nginx,
        _registry: registry,
        _dir: dir,
    }
}

/// nginx running `conf_text` (an nginx.conf as `regimage render` writes it) with the files
/// under `root`; only the absolute path prefixes move: its run directory to `root/run/NAME`
/// (the pid file where the appliance has it), its logs to `work/log/NAME` (the access log is
/// `log/NAME/access.log`, errors go to `NAME.out`), its config to `work/NAME.conf`. Returns
/// once it listens on every port in `ports`.
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
        .args(["-g", NGINX_GLOBALS]);
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

/// The number in field `name` (e.g. `VmRSS:`) of /proc/PID/status.
fn proc_status_field(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The SHA-256 fingerprint (`AB:CD:...`) of the certificate the TLS server on 127.0.0.1:`port`
/// presents now, on a new connection.
pub fn served_cert_sha256(port: u16) -> String {
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    )));
    fingerprint(&out.stdout)
}

/// The SHA-256 fingerprint (`AB:CD:...`) of the certificate in PEM file `path`.
pub fn file_cert_sha256(path: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(path),
    );
    fingerprint(&out.stdout)
}

/// The value of openssl's `sha256 Fingerprint=AB:CD:...` line.
fn fingerprint(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let value = text.trim().split_once('=').map_or("", |(_, v)| v);
    assert!(value.len() == 95, "not a SHA-256 fingerprint: {text:?}");
    value.to_string()
}
