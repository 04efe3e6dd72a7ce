//! [`System`] on the running host: users through the passwd database and useradd,
//! logind and systemd over D-Bus (zbus, blocking), ufw, Podman and curl as commands.
//!
//! Reaching the service user's systemd manager as root: `systemctl --user -M UID@`, which
//! runs systemd-stdio-bridge as that user in a transient unit and talks to the user's bus
//! through it (no `su`, no XDG_RUNTIME_DIR games). Measured in a Debian 13 guest (systemd
//! 257), the two direct ways fail: zbus on the manager's private socket
//! /run/user/UID/systemd/private panics, because systemd marks every message on a private
//! connection with the sender `org.freedesktop.systemd1` (sd_bus_set_sender), which zbus 5
//! rejects as "Invalid unique name" inside its executor thread; and `systemctl --user` as
//! root with the user's XDG_RUNTIME_DIR refuses ("Operation not permitted (consider using
//! --machine=<user>@.host --user ...)"). The system manager stays on D-Bus (zbus).

use std::cell::RefCell;
#[cfg(test)]
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use zbus::blocking::Connection;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

use super::system::{
    Manager, NewUser, PodmanImage, PodmanUser, Probe, System, UnitStatus, UserInfo,
};
use super::ufw::{self, UfwCommand, UfwState};
use crate::cmd::CommandRunExt;
use crate::identity::HostFacts;
use crate::render;

/// logind's manager object; only the call first boot makes.
#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_async = false,
    blocking_name = "LoginManagerProxy"
)]
trait LoginManager {
    fn set_user_linger(&self, uid: u32, enable: bool, interactive: bool) -> zbus::Result<()>;
}

/// One change EnableUnitFiles made: (type, symlink, destination).
type UnitFileChange = (String, String, String);

/// systemd's manager object (system or user); only the calls first boot makes.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "SystemdManagerProxy"
)]
trait SystemdManager {
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;
    fn reload(&self) -> zbus::Result<()>;
}

/// One unit object; properties are read fresh on every call (no caching, no signals).
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "SystemdUnitProxy"
)]
trait SystemdUnit {
    #[zbus(property(emits_changed_signal = "false"))]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn need_daemon_reload(&self) -> zbus::Result<bool>;
}

/// PATH for the commands first boot runs (a oneshot's environment is minimal).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The running host.
pub struct RealSystem {
    started: Instant,
    system_bus: RefCell<Option<Connection>>,
}

impl Default for RealSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl RealSystem {
    pub fn new() -> RealSystem {
        RealSystem {
            started: Instant::now(),
            system_bus: RefCell::new(None),
        }
    }

    fn system_bus(&self) -> Result<Connection> {
        if let Some(conn) = self.system_bus.borrow().as_ref() {
            return Ok(conn.clone());
        }
        let conn = Connection::system().context("connecting to the D-Bus system bus")?;
        *self.system_bus.borrow_mut() = Some(conn.clone());
        Ok(conn)
    }
}

/// `systemctl --user` for the user manager of `uid`, reached through `-M UID@` (see the
/// module docs for why not the private socket).
fn user_systemctl(uid: u32) -> Command {
    let mut cmd = command("systemctl");
    cmd.args(["--user", "-M", &format!("{uid}@"), "--no-ask-password"]);
    cmd
}

/// The properties first boot reads of a unit in the user manager of `uid`.
fn user_unit_properties(uid: u32, unit: &str) -> Result<Vec<(String, String)>> {
    let out = user_systemctl(uid)
        .args([
            "show",
            "-p",
            "LoadState",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
        ])
        .args(["-p", "Job", "-p", "NeedDaemonReload", unit])
        .run_get_stdout()
        .with_context(|| format!("reading the state of {unit} in the user manager of uid {uid}"))?;
    Ok(parse_properties(&String::from_utf8_lossy(&out)))
}

/// `systemctl show` output: one `Key=value` per line.
fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn property<'a>(props: &'a [(String, String)], key: &str) -> &'a str {
    props
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

fn user_unit_status(uid: u32, unit: &str) -> Result<UnitStatus> {
    let props = user_unit_properties(uid, unit)?;
    let load_state = property(&props, "LoadState");
    if load_state.is_empty() {
        anyhow::bail!(
            "systemctl show printed no LoadState for {unit} in the user manager of uid {uid}"
        );
    }
    Ok(UnitStatus {
        load_state: load_state.to_string(),
        active_state: property(&props, "ActiveState").to_string(),
        sub_state: property(&props, "SubState").to_string(),
        // Set by the caller (enabled globally, see enable_unit).
        unit_file_state: "unknown".into(),
        // `Job=` is empty without a queued job, else the job's id.
        job_pending: !property(&props, "Job").is_empty(),
    })
}

fn user_start_unit(uid: u32, unit: &str) -> Result<()> {
    // Unit files written after the manager loaded them (cloud-init) need a reload first.
    if property(&user_unit_properties(uid, unit)?, "NeedDaemonReload") == "yes" {
        user_systemctl(uid)
            .arg("daemon-reload")
            .run()
            .with_context(|| format!("reloading the user manager of uid {uid} for {unit}"))?;
    }
    // --no-block: queue the start job and return, as StartUnit does.
    user_systemctl(uid)
        .args(["start", "--no-block", unit])
        .run()
        .with_context(|| format!("starting {unit} in the user manager of uid {uid}"))
}

/// A peer-to-peer connection to a systemd manager's private socket (no bus: no Hello).
/// Only the tests use it now (a zbus server stands in for systemd there).
#[cfg(test)]
fn connect_private(socket: &Path) -> Result<Connection> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    zbus::blocking::connection::Builder::async_io_unix_stream(stream)
        .p2p()
        .build()
        .with_context(|| format!("opening a D-Bus connection on {}", socket.display()))
}

fn manager_proxy(conn: &Connection, manager: Manager) -> Result<SystemdManagerProxy<'static>> {
    SystemdManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .with_context(|| format!("creating a proxy for {manager}"))
}

fn unit_proxy(
    conn: &Connection,
    manager: Manager,
    unit: &str,
) -> Result<SystemdUnitProxy<'static>> {
    let path = manager_proxy(conn, manager)?
        .load_unit(unit)
        .with_context(|| format!("loading {unit} in {manager}"))?;
    SystemdUnitProxy::builder(conn)
        .path(path)
        .context("using the unit's object path")?
        .cache_properties(CacheProperties::No)
        .build()
        .with_context(|| format!("creating a proxy for {unit}"))
}

fn unit_status_on(conn: &Connection, manager: Manager, unit: &str) -> Result<UnitStatus> {
    let proxy = unit_proxy(conn, manager, unit)?;
    let read = |what: &str, r: zbus::Result<String>| {
        r.with_context(|| format!("reading {what} of {unit} from {manager}"))
    };
    let unit_file_state = manager_proxy(conn, manager)?
        .get_unit_file_state(unit)
        // Instances such as user@1000.service have no unit file of their own.
        .unwrap_or_else(|_| "unknown".into());
    Ok(UnitStatus {
        load_state: read("LoadState", proxy.load_state())?,
        active_state: read("ActiveState", proxy.active_state())?,
        sub_state: read("SubState", proxy.sub_state())?,
        unit_file_state,
        job_pending: proxy
            .job()
            .with_context(|| format!("reading Job of {unit} from {manager}"))?
            .0
            != 0,
    })
}

fn start_unit_on(conn: &Connection, manager: Manager, unit: &str) -> Result<()> {
    let mgr = manager_proxy(conn, manager)?;
    // Unit files written after the manager loaded them (cloud-init) need a reload first.
    if unit_proxy(conn, manager, unit)?
        .need_daemon_reload()
        .unwrap_or(false)
    {
        mgr.reload()
            .with_context(|| format!("reloading {manager} for {unit}"))?;
    }
    mgr.start_unit(unit, "replace")
        .with_context(|| format!("starting {unit} in {manager}"))?;
    Ok(())
}

/// A podman command for `user`: run as that user, with the global options and environment
/// every podman call of the service user shares with the registry unit (render.rs).
fn podman(user: &PodmanUser) -> Command {
    let runtime_dir = user.runtime_dir.to_string_lossy().into_owned();
    let mut cmd = Command::new("podman");
    cmd.args(render::podman_global_args(&runtime_dir))
        .env_clear()
        .envs(render::podman_environment())
        .env("PATH", PATH)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={runtime_dir}/bus"),
        )
        .current_dir("/")
        // std drops root's supplementary groups (setgroups) before setuid.
        .uid(user.uid)
        .gid(user.gid);
    cmd
}

fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", PATH).env("LC_ALL", "C");
    cmd
}

fn read_text(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path} (is ufw installed?)"))
}

impl System for RealSystem {
    fn host_facts(&self) -> HostFacts {
        HostFacts::gather()
    }

    fn lookup_user(&self, name: &str) -> Result<Option<UserInfo>> {
        let user = nix::unistd::User::from_name(name)
            .with_context(|| format!("looking up the user {name}"))?;
        Ok(user.map(|u| UserInfo {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
            shell: u.shell,
        }))
    }

    fn lookup_group(&self, name: &str) -> Result<Option<u32>> {
        let group = nix::unistd::Group::from_name(name)
            .with_context(|| format!("looking up the group {name}"))?;
        Ok(group.map(|g| g.gid.as_raw()))
    }

    fn file_owner(&self, path: &Path) -> Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("inspecting {}", path.display()))?;
        Ok((meta.uid(), meta.gid()))
    }

    fn linger_enabled(&self, user: &str) -> Result<bool> {
        // logind keeps one file per lingering user; it is what `loginctl enable-linger` makes.
        let path = Path::new("/var/lib/systemd/linger").join(user);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
        }
    }

    fn unit_status(&self, manager: Manager, unit: &str) -> Result<UnitStatus> {
        let mut status = match manager {
            Manager::System => unit_status_on(&self.system_bus()?, manager, unit)?,
            Manager::User(uid) => user_unit_status(uid, unit)?,
        };
        if let Manager::User(_) = manager {
            // Enabled the way enable_unit enables it: globally, in /etc/systemd/user.
            let out = command("systemctl")
                .args(["--global", "is-enabled", unit])
                .run_unchecked()?;
            status.unit_file_state = match out.stdout_text() {
                text if text.is_empty() => "unknown".into(),
                text => text,
            };
        }
        Ok(status)
    }

    fn ssh_ports(&self) -> Result<Option<Vec<u16>>> {
        let Some(sshd) = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            return Ok(None);
        };
        // sshd -T refuses to run without its privilege separation directory, which only
        // ssh.service makes (RuntimeDirectory=sshd): first boot may run before it starts, and
        // Ubuntu's ssh.socket starts it only on a connection. A runtime directory on tmpfs,
        // made as ssh.service makes it; no configuration changes.
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() {
            crate::fsutil::ensure_dir(privsep, 0o755)
                .context("making sshd's privilege separation directory for sshd -T")?;
        }
        // -T: the effective configuration, drop-ins and defaults included.
        let out = command(sshd)
            .arg("-T")
            .run_get_stdout()
            .context("asking sshd for the ports it listens on")?;
        Ok(Some(ufw::sshd_t_ports(&String::from_utf8_lossy(&out))))
    }

    fn ufw_state(&self) -> Result<UfwState> {
        let conf = read_text("/etc/ufw/ufw.conf")?;
        let defaults = read_text("/etc/default/ufw")?;
        let mut rules = ufw::parse_rules(&read_text("/etc/ufw/user.rules")?, false);
        rules.extend(ufw::parse_rules(&read_text("/etc/ufw/user6.rules")?, true));
        Ok(UfwState {
            enabled: ufw::conf_value(&conf, "ENABLED").is_some_and(|v| v == "yes"),
            default_input: ufw::conf_value(&defaults, "DEFAULT_INPUT_POLICY").unwrap_or_default(),
            ipv6: ufw::conf_value(&defaults, "IPV6").is_some_and(|v| v == "yes"),
            rules,
        })
    }

    fn podman_images(&self, user: &PodmanUser) -> Result<Vec<PodmanImage>> {
        let images: Option<Vec<PodmanImage>> = podman(user)
            .args(["images", "--all", "--format", "json"])
            .run_and_parse_json()
            .with_context(|| format!("listing the images of {}", user.name))?;
        Ok(images.unwrap_or_default())
    }

    fn http_status(&self, probe: &Probe) -> Result<u16> {
        let mut cmd = command("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ]);
        if let Some(ca) = &probe.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(resolve) = &probe.resolve {
            cmd.args(["--resolve", resolve]);
        }
        cmd.arg(&probe.url);
        let out = cmd.run_unchecked()?;
        if !out.status.success() {
            anyhow::bail!(
                "curl {} failed with {}: {}",
                probe.url,
                out.status,
                out.stderr_tail
            );
        }
        out.stdout_text()
            .parse()
            .with_context(|| format!("reading curl's HTTP status for {}", probe.url))
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration)
    }

    fn create_user(&self, user: &NewUser) -> Result<()> {
        // --user-group fails when a group of that name is already there; join it instead.
        let group_exists = self.lookup_group(&user.name)?.is_some();
        let group_args = if group_exists {
            ["--gid", user.name.as_str()].to_vec()
        } else {
            ["--user-group"].to_vec()
        };
        command("useradd")
            .arg("--system")
            .args(group_args)
            .args(["--shell", "/usr/sbin/nologin"])
            .arg("--home-dir")
            .arg(&user.home)
            .args(["--no-create-home", "--comment", &user.comment, &user.name])
            .run()
            .with_context(|| format!("creating the user {}", user.name))
    }

    fn create_group(&self, name: &str) -> Result<()> {
        command("groupadd")
            .args(["--system", name])
            .run()
            .with_context(|| format!("creating the group {name}"))
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("changing the owner of {} to {uid}:{gid}", path.display()))
    }

    fn enable_linger(&self, uid: u32) -> Result<()> {
        let conn = self.system_bus()?;
        LoginManagerProxy::new(&conn)
            .context("creating a proxy for logind")?
            .set_user_linger(uid, true, false)
            .with_context(|| format!("enabling lingering for uid {uid} through logind"))
    }

    fn start_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        match manager {
            Manager::System => start_unit_on(&self.system_bus()?, manager, unit),
            Manager::User(uid) => user_start_unit(uid, unit),
        }
    }

    fn enable_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        match manager {
            Manager::System => {
                let mgr = manager_proxy(&self.system_bus()?, manager)?;
                mgr.enable_unit_files(&[unit], false, false)
                    .with_context(|| format!("enabling {unit}"))?;
                // What `systemctl enable` does after linking: make the manager see it.
                mgr.reload()
                    .with_context(|| format!("reloading {manager} after enabling {unit}"))
            }
            // Enabling in the user manager would link into the user's ~/.config; --global
            // links into /etc/systemd/user, and ConditionUser= keeps other users out.
            Manager::User(_) => command("systemctl")
                .args(["--global", "enable", unit])
                .run()
                .with_context(|| format!("enabling {unit} for user managers")),
        }
    }

    fn ufw(&self, command_: &UfwCommand) -> Result<()> {
        command("ufw")
            .args(command_.args())
            .run()
            .with_context(|| format!("asking ufw to {}", command_.describe()))
    }

    fn podman_load(&self, user: &PodmanUser, archive: &Path) -> Result<()> {
        // The archive sits in root's 0700 state directory: root opens it and hands podman
        // the open file on stdin.
        let file = std::fs::File::open(archive)
            .with_context(|| format!("opening {}", archive.display()))?;
        podman(user)
            .arg("load")
            .run_with_stdin(file)
            .with_context(|| format!("loading {} as {}", archive.display(), user.name))?;
        Ok(())
    }

    fn podman_pull(&self, user: &PodmanUser, reference: &str) -> Result<()> {
        podman(user)
            .args(["pull", "--quiet", reference])
            .run()
            .with_context(|| format!("pulling {reference} as {}", user.name))
    }

    fn podman_tag(&self, user: &PodmanUser, image: &str, tag: &str) -> Result<()> {
        podman(user)
            .args(["tag", image, tag])
            .run()
            .with_context(|| format!("tagging {image} as {tag}"))
    }

    fn podman_migrate(&self, user: &PodmanUser) -> Result<()> {
        podman(user)
            .args(["system", "migrate"])
            .run()
            .with_context(|| format!("migrating the Podman storage of {}", user.name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    fn user() -> PodmanUser {
        PodmanUser {
            name: "registry".into(),
            uid: 998,
            gid: 997,
            home: "/var/lib/registry-home".into(),
            runtime_dir: "/run/user/998".into(),
        }
    }

    #[test]
    fn podman_runs_as_the_user_with_the_units_options() {
        let cmd = podman(&user());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, render::podman_global_args("/run/user/998"));
        let env: Vec<(String, String)> = cmd
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        for (k, v) in render::podman_environment() {
            assert!(
                env.contains(&(k.clone(), v.clone())),
                "{k} missing: {env:?}"
            );
        }
        assert!(env.contains(&("XDG_RUNTIME_DIR".into(), "/run/user/998".into())));
        assert!(env.contains(&("HOME".into(), "/var/lib/registry-home".into())));
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/")));
    }

    #[test]
    fn linger_is_read_from_logind_files() {
        // A user that surely does not linger here.
        assert!(!RealSystem::new()
            .linger_enabled("regimage-no-such-user")
            .unwrap());
    }

    #[test]
    fn lookups_of_missing_users_are_none() {
        let sys = RealSystem::new();
        assert_eq!(sys.lookup_user("regimage-no-such-user").unwrap(), None);
        assert_eq!(sys.lookup_group("regimage-no-such-group").unwrap(), None);
        assert_eq!(sys.lookup_user("root").unwrap().unwrap().uid, 0);
    }

    /// Stands in for systemd's manager and one unit on a private (peer-to-peer) socket.
    struct Manager1 {
        started: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl Manager1 {
        fn load_unit(&self, name: &str) -> OwnedObjectPath {
            assert_eq!(name, "registry.service");
            OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/registry_2eservice").unwrap()
        }
        fn get_unit_file_state(&self, _file: &str) -> String {
            "enabled".into()
        }
        fn start_unit(&self, name: &str, mode: &str) -> OwnedObjectPath {
            self.started.lock().unwrap().push(format!("{name} {mode}"));
            OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap()
        }
        fn reload(&self) {}
    }

    struct Unit1;

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl Unit1 {
        #[zbus(property)]
        fn load_state(&self) -> String {
            "loaded".into()
        }
        #[zbus(property)]
        fn active_state(&self) -> String {
            "activating".into()
        }
        #[zbus(property)]
        fn sub_state(&self) -> String {
            "start".into()
        }
        #[zbus(property)]
        fn job(&self) -> (u32, OwnedObjectPath) {
            (
                7,
                OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap(),
            )
        }
        #[zbus(property)]
        fn need_daemon_reload(&self) -> bool {
            false
        }
    }

    #[test]
    fn proxies_work_over_a_private_peer_to_peer_socket() {
        // What root does with /run/user/UID/systemd/private: a UNIX socket, no bus, no
        // Hello; the messages still name org.freedesktop.systemd1 as systemctl's do.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("private");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let server_started = started.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let conn = zbus::blocking::connection::Builder::async_io_unix_stream(stream)
                .server(zbus::Guid::generate())
                .unwrap()
                .p2p()
                .serve_at(
                    "/org/freedesktop/systemd1",
                    Manager1 {
                        started: server_started,
                    },
                )
                .unwrap()
                .serve_at("/org/freedesktop/systemd1/unit/registry_2eservice", Unit1)
                .unwrap()
                .build()
                .unwrap();
            // Keep serving until the client is done.
            done_rx.recv().unwrap();
            drop(conn);
        });
        let conn = connect_private(&socket).unwrap();
        let manager = Manager::User(998);
        let status = unit_status_on(&conn, manager, "registry.service").unwrap();
        assert_eq!(
            status,
            UnitStatus {
                load_state: "loaded".into(),
                active_state: "activating".into(),
                sub_state: "start".into(),
                unit_file_state: "enabled".into(),
                job_pending: true,
            }
        );
        start_unit_on(&conn, manager, "registry.service").unwrap();
        assert_eq!(*started.lock().unwrap(), ["registry.service replace"]);
        drop(conn);
        done_tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn user_unit_properties_parse() {
        // `systemctl --user -M 989@ show -p ...` in a Debian 13 guest: no job queued.
        let idle = parse_properties(
            "LoadState=loaded\nActiveState=inactive\nSubState=dead\nJob=\nNeedDaemonReload=no\n",
        );
        assert_eq!(property(&idle, "LoadState"), "loaded");
        assert_eq!(property(&idle, "ActiveState"), "inactive");
        assert_eq!(property(&idle, "Job"), "");
        assert_eq!(property(&idle, "Missing"), "");
        let starting = parse_properties("LoadState=loaded\nActiveState=activating\nJob=42\n");
        assert_eq!(property(&starting, "Job"), "42");
        assert_eq!(property(&starting, "ActiveState"), "activating");
    }

    #[test]
    fn curl_errors_say_why() {
        // Nothing listens on port 1 of loopback.
        let e = RealSystem::new()
            .http_status(&Probe {
                url: "http://127.0.0.1:1/v2/".into(),
                cacert: None,
                resolve: None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("curl http://127.0.0.1:1/v2/ failed"), "{e}");
    }
}
