//! A recording, in-memory [`System`] for the unit tests: users and groups, file owners,
//! lingering, two kinds of systemd managers, ufw, Podman images, the health endpoints,
//! dpkg and apt, the kernel's IPv6 and a network that comes late (or never), with the
//! effects the steps rely on (starting user@UID.service makes /run/user/UID under the test
//! root; podman refuses to run before it exists; the registry answers only once its unit
//! runs the tagged image). It can fail the N-th changing call to stand for a kill.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::system::{
    Manager, NewUser, PodmanImage, PodmanUser, Probe, System, UnitStatus, UserInfo,
};
use super::ufw::{UfwCommand, UfwRule, UfwState};
use crate::identity::HostFacts;
use crate::render;

/// One unit as the fake managers keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeUnit {
    pub enabled: bool,
    pub active: bool,
    pub failed: bool,
}

/// Everything the fake machine remembers; compared whole between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeState {
    pub users: BTreeMap<String, UserInfo>,
    pub groups: BTreeMap<String, u32>,
    /// Owners set with chown, by path relative to the test root.
    pub owners: BTreeMap<PathBuf, (u32, u32)>,
    pub linger: BTreeSet<u32>,
    pub units: BTreeMap<(Manager, String), FakeUnit>,
    /// ufw's files: settings and the rules in user.rules and user6.rules.
    pub ufw: UfwState,
    /// The rules the running firewall enforces: the files' rules at the last enable or
    /// reload (empty while ufw is off).
    pub ufw_live: Vec<UfwRule>,
    /// Images per uid.
    pub images: BTreeMap<u32, Vec<PodmanImage>>,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            owners: BTreeMap::new(),
            linger: BTreeSet::new(),
            units: BTreeMap::new(),
            // A fresh Ubuntu/Debian install: ufw present, off, input policy DROP, IPv6 on.
            ufw: UfwState {
                enabled: false,
                default_input: "DROP".into(),
                ipv6: true,
                rules: Vec::new(),
            },
            ufw_live: Vec::new(),
            images: BTreeMap::new(),
        }
    }
}

pub struct FakeSystem {
    root: PathBuf,
    pub state: RefCell<FakeState>,
    pub facts: HostFacts,
    /// The image ID (hex) `podman load` puts into storage.
    pub load_yields: RefCell<String>,
    /// What `podman pull REF` finds: reference -> image ID (hex).
    pub registry_images: RefCell<BTreeMap<String, String>>,
    /// Every call, in order, with its arguments.
    pub calls: RefCell<Vec<String>>,
    /// The changing calls only.
    pub mutations: RefCell<Vec<String>>,
    /// Fail the N-th changing call (1-based, counted over the fake's life) before it acts.
    pub crash_at: Cell<Option<usize>>,
    /// The registry never answers (its container dies), to test the health step.
    pub registry_broken: Cell<bool>,
    /// nginx never answers, to test the health step.
    pub proxy_broken: Cell<bool>,
    /// What `sshd -T` would say sshd listens on; `None`: sshd is not installed.
    pub ssh_ports: RefCell<Option<Vec<u16>>>,
    /// The proxy's start job stays queued (an ordering cycle with the first-boot unit).
    pub proxy_job_held: Cell<bool>,
    pub migrations: Cell<u32>,
    /// The kernel gives out IPv6 sockets (false: booted with ipv6.disable=1).
    pub ipv6: Cell<bool>,
    /// How many `host_facts` calls answer as a machine without network (host name
    /// `localhost`, no address) before `facts`; `usize::MAX`: the network never comes.
    pub offline_polls: Cell<usize>,
    /// Packages dpkg does not have; every other name is installed.
    pub missing: RefCell<BTreeSet<String>>,
    /// `apt-get` fails (a dead mirror).
    pub apt_broken: Cell<bool>,
    /// Units whose file is not installed (an image rendered before they existed).
    pub uninstalled: RefCell<BTreeSet<String>>,
    clock: Cell<Duration>,
}

impl FakeSystem {
    pub fn new(root: &Path) -> FakeSystem {
        FakeSystem {
            root: root.to_path_buf(),
            state: RefCell::new(FakeState::default()),
            facts: HostFacts {
                hostname: Some("reg1".into()),
                fqdn: Some("reg1.example.test".into()),
                addresses: vec!["192.0.2.10".parse().expect("a literal address")],
            },
            load_yields: RefCell::new(String::new()),
            registry_images: RefCell::new(BTreeMap::new()),
            calls: RefCell::new(Vec::new()),
            mutations: RefCell::new(Vec::new()),
            crash_at: Cell::new(None),
            registry_broken: Cell::new(false),
            proxy_broken: Cell::new(false),
            ssh_ports: RefCell::new(Some(vec![22])),
            proxy_job_held: Cell::new(false),
            migrations: Cell::new(0),
            ipv6: Cell::new(true),
            offline_polls: Cell::new(0),
            missing: RefCell::new(BTreeSet::new()),
            apt_broken: Cell::new(false),
            uninstalled: RefCell::new(BTreeSet::new()),
            clock: Cell::new(Duration::ZERO),
        }
    }

    fn look(&self, call: String) {
        self.calls.borrow_mut().push(call);
    }

    fn change(&self, call: String) -> Result<()> {
        self.calls.borrow_mut().push(call.clone());
        let mut mutations = self.mutations.borrow_mut();
        mutations.push(call.clone());
        if self.crash_at.get() == Some(mutations.len()) {
            bail!("injected crash before {call}");
        }
        Ok(())
    }

    fn relative(&self, path: &Path) -> Result<PathBuf> {
        path.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .with_context(|| format!("{} is outside the test root", path.display()))
    }

    fn runtime_dir(&self, uid: u32) -> PathBuf {
        self.root.join(format!("run/user/{uid}"))
    }

    fn user_manager_running(&self, uid: u32) -> bool {
        self.runtime_dir(uid).join("systemd/private").exists()
    }

    fn require_user_manager(&self, uid: u32) -> Result<()> {
        if !self.user_manager_running(uid) {
            bail!("connecting to /run/user/{uid}/systemd/private: no such file or directory");
        }
        Ok(())
    }

    fn require_podman(&self, user: &PodmanUser) -> Result<()> {
        // Rootless podman needs the runtime dir the user manager makes.
        if user.runtime_dir != Path::new(&format!("/run/user/{}", user.uid)) {
            bail!("podman got runtime dir {}", user.runtime_dir.display());
        }
        if !self.runtime_dir(user.uid).is_dir() {
            bail!(
                "podman as {}: /run/user/{} does not exist",
                user.name,
                user.uid
            );
        }
        Ok(())
    }

    fn next_system_id(&self) -> u32 {
        // useradd --system counts down from 999.
        let state = self.state.borrow();
        let used: BTreeSet<u32> = state
            .users
            .values()
            .map(|u| u.uid)
            .chain(state.groups.values().copied())
            .collect();
        (100..=999)
            .rev()
            .find(|id| !used.contains(id))
            .unwrap_or(100)
    }

    fn registry_answers(&self) -> bool {
        let state = self.state.borrow();
        !self.registry_broken.get()
            && state.units.iter().any(|((m, name), u)| {
                matches!(m, Manager::User(_)) && name == "registry.service" && u.active
            })
    }

    fn proxy_answers(&self) -> bool {
        let state = self.state.borrow();
        !self.proxy_broken.get()
            && state
                .units
                .get(&(Manager::System, "registry-proxy.service".to_string()))
                .is_some_and(|u| u.active)
    }
}

/// Whether `unit`'s file is installed in `manager`.
fn known_unit(fake: &FakeSystem, manager: Manager, unit: &str) -> bool {
    if fake.uninstalled.borrow().contains(unit) {
        return false;
    }
    match manager {
        Manager::System => {
            unit == "registry-proxy.service"
                || unit == "regimage-renew.timer"
                || unit == "regimage-cluster-sync.timer"
                || unit == DISTRO_NGINX
                || unit.starts_with("user@")
        }
        Manager::User(_) => unit == "registry.service",
    }
}

/// The distribution's own nginx, which its package enables and starts on install.
const DISTRO_NGINX: &str = "nginx.service";

impl System for FakeSystem {
    fn host_facts(&self) -> HostFacts {
        self.look("host_facts".into());
        let offline = self.offline_polls.get();
        if offline > 0 {
            if offline != usize::MAX {
                self.offline_polls.set(offline - 1);
            }
            return HostFacts {
                hostname: Some("localhost".into()),
                fqdn: None,
                addresses: Vec::new(),
            };
        }
        self.facts.clone()
    }

    fn lookup_user(&self, name: &str) -> Result<Option<UserInfo>> {
        self.look(format!("lookup_user {name}"));
        Ok(self.state.borrow().users.get(name).cloned())
    }

    fn lookup_group(&self, name: &str) -> Result<Option<u32>> {
        self.look(format!("lookup_group {name}"));
        Ok(self.state.borrow().groups.get(name).copied())
    }

    fn file_owner(&self, path: &Path) -> Result<(u32, u32)> {
        self.look(format!("file_owner {}", path.display()));
        let rel = self.relative(path)?;
        std::fs::symlink_metadata(path)
            .with_context(|| format!("inspecting {}", path.display()))?;
        Ok(self
            .state
            .borrow()
            .owners
            .get(&rel)
            .copied()
            .unwrap_or((0, 0)))
    }

    fn linger_enabled(&self, user: &str) -> Result<bool> {
        self.look(format!("linger_enabled {user}"));
        let state = self.state.borrow();
        Ok(state
            .users
            .get(user)
            .is_some_and(|u| state.linger.contains(&u.uid)))
    }

    fn unit_status(&self, manager: Manager, unit: &str) -> Result<UnitStatus> {
        self.look(format!("unit_status {manager:?} {unit}"));
        if let Manager::User(uid) = manager {
            self.require_user_manager(uid)?;
        }
        let state = self.state.borrow();
        let u = state
            .units
            .get(&(manager, unit.to_string()))
            .cloned()
            .unwrap_or_default();
        Ok(UnitStatus {
            load_state: if known_unit(self, manager, unit) {
                "loaded"
            } else {
                "not-found"
            }
            .into(),
            active_state: if u.active {
                "active"
            } else if u.failed {
                "failed"
            } else {
                "inactive"
            }
            .into(),
            sub_state: if u.active { "running" } else { "dead" }.into(),
            need_daemon_reload: false,
            job_pending: self.proxy_job_held.get()
                && manager == Manager::System
                && unit == "registry-proxy.service",
        })
    }

    fn unit_file_state(&self, manager: Manager, unit: &str) -> Result<String> {
        self.look(format!("unit_file_state {manager:?} {unit}"));
        let state = self.state.borrow();
        let enabled = state
            .units
            .get(&(manager, unit.to_string()))
            .is_some_and(|u| u.enabled);
        Ok(if unit.starts_with("user@") {
            "unknown"
        } else if enabled {
            "enabled"
        } else {
            "disabled"
        }
        .into())
    }

    fn ufw_state(&self) -> Result<UfwState> {
        self.look("ufw_state".into());
        Ok(self.state.borrow().ufw.clone())
    }

    fn ssh_ports(&self) -> Result<Option<Vec<u16>>> {
        self.look("ssh_ports".into());
        Ok(self.ssh_ports.borrow().clone())
    }

    fn podman_images(&self, user: &PodmanUser) -> Result<Vec<PodmanImage>> {
        self.look(format!("podman_images {}", user.name));
        self.require_podman(user)?;
        Ok(self
            .state
            .borrow()
            .images
            .get(&user.uid)
            .cloned()
            .unwrap_or_default())
    }

    fn http_status(&self, probe: &Probe) -> Result<u16> {
        self.look(format!("http_status {}", probe.url));
        if probe.url.starts_with("http://127.0.0.1:") {
            return if self.registry_answers() {
                Ok(200)
            } else {
                bail!("curl: (7) Failed to connect to 127.0.0.1: Connection refused")
            };
        }
        let Some(ca) = &probe.cacert else {
            bail!("curl: (60) SSL certificate problem: no CA given");
        };
        if !ca.is_file() {
            bail!(
                "curl: (77) error setting certificate file: {}",
                ca.display()
            );
        }
        match (self.proxy_answers(), self.registry_answers()) {
            (false, _) => bail!("curl: (7) Failed to connect: Connection refused"),
            (true, false) => Ok(502),
            (true, true) => Ok(200),
        }
    }

    fn has_ipv6(&self) -> Result<bool> {
        self.look("has_ipv6".into());
        Ok(self.ipv6.get())
    }

    fn missing_packages(&self, packages: &[&str]) -> Result<Vec<String>> {
        self.look(format!("missing_packages {}", packages.join(" ")));
        let missing = self.missing.borrow();
        Ok(packages
            .iter()
            .filter(|p| missing.contains(**p))
            .map(|p| p.to_string())
            .collect())
    }

    fn elapsed(&self) -> Duration {
        self.clock.get()
    }

    fn sleep(&self, duration: Duration) {
        self.clock.set(self.clock.get() + duration);
    }

    fn create_user(&self, user: &NewUser) -> Result<()> {
        self.change(format!("create_user {}", user.name))?;
        if self.state.borrow().users.contains_key(&user.name) {
            bail!("useradd: user '{}' already exists", user.name);
        }
        let id = self.next_system_id();
        let mut state = self.state.borrow_mut();
        state.groups.insert(user.name.clone(), id);
        state.users.insert(
            user.name.clone(),
            UserInfo {
                name: user.name.clone(),
                uid: id,
                gid: id,
                home: user.home.clone(),
                shell: "/usr/sbin/nologin".into(),
            },
        );
        Ok(())
    }

    fn create_group(&self, name: &str) -> Result<()> {
        self.change(format!("create_group {name}"))?;
        let id = self.next_system_id();
        self.state.borrow_mut().groups.insert(name.to_string(), id);
        Ok(())
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        self.change(format!("chown {} {uid}:{gid}", path.display()))?;
        let rel = self.relative(path)?;
        std::fs::symlink_metadata(path)
            .with_context(|| format!("changing the owner of {}", path.display()))?;
        self.state.borrow_mut().owners.insert(rel, (uid, gid));
        Ok(())
    }

    fn enable_linger(&self, uid: u32) -> Result<()> {
        self.change(format!("enable_linger {uid}"))?;
        self.state.borrow_mut().linger.insert(uid);
        Ok(())
    }

    fn daemon_reload(&self, manager: Manager) -> Result<()> {
        self.change(format!("daemon_reload {manager:?}"))
    }

    fn start_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        self.change(format!("start_unit {manager:?} {unit}"))?;
        if !known_unit(self, manager, unit) {
            bail!("Unit {unit} not found.");
        }
        let mut ok = true;
        match manager {
            Manager::System if unit.starts_with("user@") => {
                let uid: u32 = unit
                    .trim_start_matches("user@")
                    .trim_end_matches(".service")
                    .parse()
                    .context("parsing the uid of a user@ unit")?;
                let private = self.runtime_dir(uid).join("systemd");
                std::fs::create_dir_all(&private).context("making the fake runtime dir")?;
                std::fs::write(private.join("private"), b"").context("making the fake socket")?;
                // The user's D-Bus socket (dbus-user-session), which `systemctl -M` uses.
                std::fs::write(self.runtime_dir(uid).join("bus"), b"")
                    .context("making the fake bus socket")?;
            }
            Manager::System if self.proxy_job_held.get() => return Ok(()),
            Manager::System => {
                // nginx needs the certificates first boot makes.
                ok = self.root.join("etc/registry/certs/registry.crt").is_file();
            }
            Manager::User(uid) => {
                self.require_user_manager(uid)?;
                let state = self.state.borrow();
                ok = state.images.get(&uid).is_some_and(|imgs| {
                    imgs.iter().any(|i| i.has_name(render::REGISTRY_IMAGE_TAG))
                }) && self.root.join("etc/registry/registry.env").is_file();
            }
        }
        let mut state = self.state.borrow_mut();
        let u = state.units.entry((manager, unit.to_string())).or_default();
        u.active = ok;
        u.failed = !ok;
        Ok(())
    }

    fn enable_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        self.change(format!("enable_unit {manager:?} {unit}"))?;
        if !known_unit(self, manager, unit) {
            bail!("Unit file {unit} does not exist.");
        }
        self.state
            .borrow_mut()
            .units
            .entry((manager, unit.to_string()))
            .or_default()
            .enabled = true;
        Ok(())
    }

    fn disable_unit(&self, manager: Manager, unit: &str) -> Result<()> {
        self.change(format!("disable_unit {manager:?} {unit}"))?;
        if !known_unit(self, manager, unit) {
            bail!("Unit file {unit} does not exist.");
        }
        let mut state = self.state.borrow_mut();
        let u = state.units.entry((manager, unit.to_string())).or_default();
        u.enabled = false;
        u.active = false;
        Ok(())
    }

    fn install_packages(&self, packages: &[String]) -> Result<()> {
        self.change(format!("install_packages {}", packages.join(" ")))?;
        if self.apt_broken.get() {
            bail!("apt-get update failed: Temporary failure resolving 'deb.debian.org'");
        }
        for p in packages {
            self.missing.borrow_mut().remove(p);
            if p == "nginx" {
                // The package's postinst enables and starts the distribution's nginx.
                let mut state = self.state.borrow_mut();
                let u = state
                    .units
                    .entry((Manager::System, DISTRO_NGINX.to_string()))
                    .or_default();
                u.enabled = true;
                u.active = true;
            }
        }
        Ok(())
    }

    fn ufw_write_rules(&self, edits: &[UfwCommand], ipv6: bool) -> Result<()> {
        let what: Vec<String> = edits.iter().map(UfwCommand::describe).collect();
        self.change(format!("ufw_write_rules {}", what.join(", ")))?;
        let mut state = self.state.borrow_mut();
        let rules = &mut state.ufw.rules;
        for edit in edits {
            match edit {
                UfwCommand::Allow { .. } => {
                    for rule in edit.stored_rules(ipv6) {
                        // ufw skips an identical rule and updates one that differs in comment.
                        let same = |r: &UfwRule| UfwRule {
                            comment: None,
                            ..r.clone()
                        };
                        match rules.iter_mut().find(|r| same(r) == same(&rule)) {
                            Some(existing) => existing.comment = rule.comment.clone(),
                            None => rules.push(rule),
                        }
                    }
                }
                UfwCommand::Delete(rule) => {
                    let args = rule.delete_args();
                    rules.retain(|r| r.delete_args() != args);
                }
                other => bail!("ufw_write_rules got {other:?}"),
            }
        }
        Ok(())
    }

    fn ufw(&self, command: &UfwCommand) -> Result<()> {
        self.change(format!("ufw {}", command.args().join(" ")))?;
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        match command {
            // First boot writes rules in one go (ufw_write_rules); one ufw start per rule
            // is what issue 9 took out.
            UfwCommand::Allow { .. } | UfwCommand::Delete(_) => {
                bail!("a ufw start per rule: {command:?}")
            }
            // ufw reloads an enabled firewall after changing the policy.
            UfwCommand::DefaultDenyIncoming => {
                state.ufw.default_input = "DROP".into();
                if state.ufw.enabled {
                    state.ufw_live = state.ufw.rules.clone();
                }
            }
            UfwCommand::Enable => {
                state.ufw.enabled = true;
                state.ufw_live = state.ufw.rules.clone();
            }
            // "Firewall not enabled (skipping reload)" otherwise.
            UfwCommand::Reload => {
                if state.ufw.enabled {
                    state.ufw_live = state.ufw.rules.clone();
                }
            }
        }
        Ok(())
    }

    fn podman_load(&self, user: &PodmanUser, archive: &Path) -> Result<()> {
        self.change(format!("podman_load {} {}", user.name, archive.display()))?;
        self.require_podman(user)?;
        if !archive.is_file() {
            bail!("podman load: {} does not exist", archive.display());
        }
        let id = self.load_yields.borrow().clone();
        let mut state = self.state.borrow_mut();
        let images = state.images.entry(user.uid).or_default();
        if !images.iter().any(|i| i.id == id) {
            images.push(PodmanImage {
                id,
                ..PodmanImage::default()
            });
        }
        Ok(())
    }

    fn podman_pull(&self, user: &PodmanUser, reference: &str) -> Result<()> {
        self.change(format!("podman_pull {} {reference}", user.name))?;
        self.require_podman(user)?;
        let Some(id) = self.registry_images.borrow().get(reference).cloned() else {
            bail!("podman pull {reference}: manifest unknown");
        };
        let mut state = self.state.borrow_mut();
        let images = state.images.entry(user.uid).or_default();
        if !images.iter().any(|i| i.id == id) {
            images.push(PodmanImage {
                id,
                repo_digests: Some(vec![reference.to_string()]),
                ..PodmanImage::default()
            });
        }
        Ok(())
    }

    fn podman_tag(&self, user: &PodmanUser, image: &str, tag: &str) -> Result<()> {
        self.change(format!("podman_tag {} {image} {tag}", user.name))?;
        self.require_podman(user)?;
        let mut state = self.state.borrow_mut();
        let images = state.images.entry(user.uid).or_default();
        if !images.iter().any(|i| i.id == image) {
            bail!("podman tag: {image}: image not known");
        }
        for i in images.iter_mut() {
            let names = i.names.get_or_insert_with(Vec::new);
            names.retain(|n| n != tag);
            if i.id == image {
                names.push(tag.to_string());
            }
            if names.is_empty() {
                i.names = None;
            }
        }
        Ok(())
    }

    fn podman_migrate(&self, user: &PodmanUser) -> Result<()> {
        self.change(format!("podman_migrate {}", user.name))?;
        self.require_podman(user)?;
        self.migrations.set(self.migrations.get() + 1);
        Ok(())
    }
}
