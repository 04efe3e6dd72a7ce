//! [`System`] on the running host: users through the passwd database and useradd, logind
//! and systemd through `loginctl` and `systemctl`, ufw, Podman and curl as commands, every
//! one through [`crate::cmd`].
//!
//! One way to talk to systemd, for both kinds of manager: systemctl. The system manager is
//! plain `systemctl`; a service user's manager, reached as root, is `systemctl --user -M
//! UID@`, which runs systemd-stdio-bridge as that user in a transient unit and talks to the
//! user's bus through it (no `su`, no XDG_RUNTIME_DIR games). Measured in a Debian 13 guest
//! (systemd 257), the two direct ways to the user manager fail: zbus on the manager's
//! private socket /run/user/UID/systemd/private panics, because systemd marks every message
//! on a private connection with the sender `org.freedesktop.systemd1` (sd_bus_set_sender),
//! which zbus 5 rejects as "Invalid unique name" inside its executor thread; and `systemctl
//! --user` as root with the user's XDG_RUNTIME_DIR refuses ("Operation not permitted
//! (consider using --machine=<user>@.host --user ...)"). The system manager and logind were
//! on D-Bus (zbus) before issue 8; the same calls through systemctl and loginctl (`show`,
//! `start --no-block` = StartUnit mode `replace`, `enable` = EnableUnitFiles and Reload,
//! `enable-linger` = SetUserLinger) left zbus with no use.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::system::{
    Manager, NewUser, PodmanImage, PodmanUser, Probe, System, UnitStatus, UserInfo,
};
use super::ufw::{self, UfwCommand, UfwState};
use crate::cmd::CommandRunExt;
use crate::identity::HostFacts;
use crate::render;

/// PATH for the commands first boot runs (a oneshot's environment is minimal).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where logind keeps one file per lingering user (what `loginctl enable-linger` makes).
const LINGER_DIR: &str = "/var/lib/systemd/linger";

/// The running host.
pub struct RealSystem {
    started: Instant,
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
        }
    }
}

/// `systemctl` talking to `manager`: the system manager as is, a user manager through
/// `--user -M UID@` (see the module docs for why not its private socket).
fn systemctl(manager: Manager) -> Command {
    let mut cmd = command("systemctl");
    if let Manager::User(uid) = manager {
        cmd.args(["--user", "-M", &format!("{uid}@")]);
    }
    cmd.arg("--no-ask-password");
    cmd
}

/// The properties first boot reads of `unit` in `manager`.
fn unit_properties(manager: Manager, unit: &str) -> Result<Vec<(String, String)>> {
    let out = systemctl(manager)
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
        .with_context(|| format!("reading the state of {unit} in {manager}"))?;
    Ok(parse_properties(&String::from_utf8_lossy(&out)))
}

/// `systemctl show` output: one `Key=value` per line (not `--value`, whose order is the
/// unit's, not the order of the `-p` options).
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

/// The unit's state from `systemctl show` output.
fn status_from_properties(
    props: &[(String, String)],
    manager: Manager,
    unit: &str,
) -> Result<UnitStatus> {
    let load_state = property(props, "LoadState");
    if load_state.is_empty() {
        anyhow::bail!("systemctl show printed no LoadState for {unit} in {manager}");
    }
    Ok(UnitStatus {
        load_state: load_state.to_string(),
        active_state: property(props, "ActiveState").to_string(),
        sub_state: property(props, "SubState").to_string(),
        // `Job=` is empty (or left out) without a queued job, else the job's id.
        job_pending: !matches!(property(props, "Job"), "" | "0"),
        need_daemon_reload: property(props, "NeedDaemonReload") == "yes",
    })
}

/// `systemctl is-enabled`: in the system manager, or for user managers the way
/// enable_unit enables there (globally, /etc/systemd/user). It exits non-zero for
/// `disabled` and prints nothing for a unit without a unit file: `unknown` then.
fn unit_file_state(manager: Manager, unit: &str) -> Result<String> {
    let mut cmd = match manager {
        Manager::System => systemctl(Manager::System),
        Manager::User(_) => {
            let mut cmd = command("systemctl");
            cmd.arg("--global");
            cmd
        }
    };
    let out = cmd.args(["is-enabled", unit]).run_unchecked()?;
    Ok(match out.stdout_text() {
        text if text.is_empty() => "unknown".into(),
        text => text,
    })
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

/// Whether logind's linger directory `dir` holds a file for `user`.
fn lingers(dir: &Path, user: &str) -> Result<bool> {
    let path = dir.join(user);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

fn read_text(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path} (is ufw installed?)"))
}

/// Bounds of first boot's own package install (`timeout` seconds).
const APT_UPDATE_SECS: &str = "300";
const APT_INSTALL_SECS: &str = "900";

/// The names among `wanted` that `dpkg-query -W -f='${db:Status-Status} ${Package}\n'`
/// output does not list as installed.
fn packages_not_installed(dpkg_query: &str, wanted: &[&str]) -> Vec<String> {
    let installed: Vec<&str> = dpkg_query
        .lines()
        .filter_map(|l| l.trim().strip_prefix("installed "))
        // Multi-arch names come back as name:arch.
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect()
}

const UFW_USER_RULES: &str = "/etc/ufw/user.rules";
const UFW_USER6_RULES: &str = "/etc/ufw/user6.rules";

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
        lingers(Path::new(LINGER_DIR), user)
    }

    fn unit_status(&self, manager: Manager, unit: &str) -> Result<UnitStatus> {
        status_from_properties(&unit_properties(manager, unit)?, manager, unit)
    }

    fn unit_file_state(&self, manager: Manager, unit: &str) -> Result<String> {
        unit_file_state(manager, unit)
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
        let mut rules = ufw::parse_rules(&read_text(UFW_USER_RULES)?, false);
        rules.extend(ufw::parse_rules(&read_text(UFW_USER6_RULES)?, true));
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

    fn has_ipv6(&self) -> Result<bool> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        // What nginx does for `listen [::]:PORT`: a kernel booted with ipv6.disable=1 (or
        // built without IPv6) refuses the socket with EAFNOSUPPORT. The socket closes on drop.
        match socket(
            AddressFamily::Inet6,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EAFNOSUPPORT) => Ok(false),
            Err(e) => Err(e).context("opening an IPv6 socket to see whether the kernel has IPv6"),
        }
    }

    fn missing_packages(&self, packages: &[&str]) -> Result<Vec<String>> {
        // dpkg-query prints nothing on stdout for a name it has never seen (exit 1), and
        // "deinstall"/"not-installed" for removed ones: only "installed" counts.
        let out = command("dpkg-query")
            .args(["-W", "-f=${db:Status-Status} ${Package}\\n"])
            .args(packages)
            .run_unchecked()
            .context("asking dpkg which packages are installed")?;
        Ok(packages_not_installed(&out.stdout_text(), packages))
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
        command("loginctl")
            .args(["--no-ask-password", "enable-linger", &uid.to_string()])
            .run()
            .with_context(|| format!("enabling lingering for uid {uid} through logind"))
    }

    fn daemon_reload(&self, manager: Manager) -> Result<()> {
        systemctl(manager)
            .arg("daemon-reload")
            .run()
            .with_context(|| format!("reloading {manager}"))
    }

    fn start_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        // --no-block: queue the start job (mode replace) and return; callers wait themselves.
        systemctl(manager)
            .args(["start", "--no-block", unit])
            .run()
            .with_context(|| format!("starting {unit} in {manager}"))
    }

    fn enable_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        match manager {
            // --no-reload: the link is for later boots, which read it at startup; the
            // manager's own reload (seconds under TCG) would buy this boot nothing.
            Manager::System => systemctl(manager)
                .args(["enable", "--no-reload", unit])
                .run()
                .with_context(|| format!("enabling {unit}")),
            // Enabling in the user manager would link into the user's ~/.config; --global
            // links into /etc/systemd/user, and ConditionUser= keeps other users out.
            Manager::User(_) => command("systemctl")
                .args(["--global", "enable", unit])
                .run()
                .with_context(|| format!("enabling {unit} for user managers")),
        }
    }

    fn disable_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        systemctl(manager)
            .args(["disable", "--now", unit])
            .run()
            .with_context(|| format!("disabling and stopping {unit} in {manager}"))
    }

    fn install_packages(&self, packages: &[String]) -> Result<()> {
        // Bounded: a dead mirror must not hold first boot (and the boot) for the unit's
        // whole TimeoutStartSec. No Recommends, as the image build installs them.
        let apt = |args: &[&str], secs: &str| {
            let mut cmd = command("timeout");
            cmd.args(["--kill-after=30", secs, "apt-get", "-q", "-y"])
                .args(["-o", "DPkg::Lock::Timeout=120"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        apt(&["update"], APT_UPDATE_SECS)
            .run()
            .context("updating the package lists (apt-get update)")?;
        apt(&["install", "--no-install-recommends"], APT_INSTALL_SECS)
            .args(packages)
            .run()
            .with_context(|| format!("installing {}", packages.join(" ")))
    }

    fn ufw_write_rules(&self, edits: &[UfwCommand], ipv6: bool) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (path, v6) in [(UFW_USER_RULES, false), (UFW_USER6_RULES, true)] {
            let text = read_text(path)?;
            let new = ufw::edit_rules(&text, v6, ipv6, edits)
                .with_context(|| format!("editing {path}"))?;
            if new == text {
                continue;
            }
            // ufw's own mode for the file (0640 from the package) stays.
            let mode = std::fs::metadata(path)
                .with_context(|| format!("inspecting {path}"))?
                .permissions()
                .mode()
                & 0o7777;
            crate::fsutil::write_atomic(Path::new(path), new.as_bytes(), mode)?;
        }
        Ok(())
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
    fn linger_is_a_file_per_user() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registry"), "").unwrap();
        assert!(lingers(dir.path(), "registry").unwrap());
        assert!(!lingers(dir.path(), "other").unwrap());
        // A directory that cannot be read is an error, not "does not linger".
        let file = dir.path().join("registry");
        let e = lingers(&file, "x").unwrap_err();
        assert!(format!("{e:#}").contains("inspecting"), "{e:#}");
    }

    #[test]
    fn systemctl_reaches_each_manager() {
        let args = |cmd: Command| -> Vec<String> {
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(args(systemctl(Manager::System)), ["--no-ask-password"]);
        assert_eq!(
            args(systemctl(Manager::User(998))),
            ["--user", "-M", "998@", "--no-ask-password"]
        );
    }

    #[test]
    fn lookups_of_missing_users_are_none() {
        let sys = RealSystem::new();
        assert_eq!(sys.lookup_user("regimage-no-such-user").unwrap(), None);
        assert_eq!(sys.lookup_group("regimage-no-such-group").unwrap(), None);
        assert_eq!(sys.lookup_user("root").unwrap().unwrap().uid, 0);
    }

    #[test]
    fn unit_status_from_systemctl_show() {
        let manager = Manager::User(989);
        // `systemctl --user -M 989@ show -p ...` in a Debian 13 guest: no job queued.
        let idle = parse_properties(
            "LoadState=loaded\nActiveState=inactive\nSubState=dead\nJob=\nNeedDaemonReload=no\n",
        );
        let status = status_from_properties(&idle, manager, "registry.service").unwrap();
        assert_eq!(
            status,
            UnitStatus {
                load_state: "loaded".into(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                job_pending: false,
                need_daemon_reload: false,
            }
        );
        assert!(!status.is_up());
        let changed = parse_properties("LoadState=loaded\nNeedDaemonReload=yes\n");
        let status = status_from_properties(&changed, manager, "registry.service").unwrap();
        assert!(status.need_daemon_reload);
        // A queued start job shows its id; an empty Job= may also be left out.
        let starting = parse_properties("LoadState=loaded\nActiveState=activating\nJob=42\n");
        let status = status_from_properties(&starting, manager, "registry.service").unwrap();
        assert!(status.job_pending && status.is_up());
        let no_job = parse_properties("LoadState=not-found\nActiveState=inactive\n");
        let status = status_from_properties(&no_job, Manager::System, "x.service").unwrap();
        assert!(!status.job_pending);
        assert_eq!(status.load_state, "not-found");
        let e = status_from_properties(&[], Manager::System, "x.service").unwrap_err();
        assert!(e.to_string().contains("no LoadState for x.service"), "{e}");
    }

    #[test]
    fn dpkg_query_output_to_missing_packages() {
        // dpkg-query -W of podman, nginx (removed, config kept), libc6 (multi-arch), and a
        // name it never saw (nothing printed for it).
        let out = "installed podman\ndeinstall nginx\ninstalled libc6:amd64\n";
        assert_eq!(
            packages_not_installed(out, &["podman", "nginx", "libc6", "gone"]),
            ["nginx", "gone"]
        );
        assert!(packages_not_installed(out, &["podman"]).is_empty());
    }

    #[test]
    fn dpkg_query_on_this_machine() {
        if which::which("dpkg-query").is_err() {
            eprintln!("skipped: no dpkg-query");
            return;
        }
        let missing = RealSystem::new()
            .missing_packages(&["dpkg", "regimage-no-such-package"])
            .unwrap();
        assert_eq!(missing, ["regimage-no-such-package"]);
    }

    #[test]
    fn this_kernel_answers_about_ipv6() {
        // Whatever it says, it says it without an error.
        RealSystem::new().has_ipv6().unwrap();
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
