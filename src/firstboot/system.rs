//! The one seam between first boot and the machine: every operation on users and groups,
//! file owners, logind, systemd, ufw, sshd's effective ports, Podman, the health probes,
//! dpkg and apt, and the kernel's IPv6 goes through [`System`]. Plain files under the root
//! directory (subuid, the PKI, nginx.conf, the status file) are read and written directly. `real.rs` implements the trait on the
//! running host (through commands), `fake.rs` in memory for the unit tests, and [`ReadOnly`]
//! guards --dry-run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::ufw::{UfwCommand, UfwState};
use crate::identity::HostFacts;

/// A user from the passwd database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// A system user to create: `--system --user-group`, no login shell, no home created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub home: PathBuf,
    /// The GECOS comment.
    pub comment: String,
}

/// Which systemd manager a unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Manager {
    System,
    /// The user manager of this uid (`user@UID.service`).
    User(u32),
}

impl std::fmt::Display for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Manager::System => f.write_str("the system manager"),
            Manager::User(uid) => write!(f, "the user manager of uid {uid}"),
        }
    }
}

/// What systemd says about a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// `loaded`, `not-found`, ...
    pub load_state: String,
    /// `active`, `activating`, `inactive`, `failed`, ...
    pub active_state: String,
    pub sub_state: String,
    /// A job (a start, say) is queued for the unit.
    pub job_pending: bool,
    /// The unit file changed since the manager loaded it: reload before starting it.
    pub need_daemon_reload: bool,
}

impl UnitStatus {
    /// Running, or on its way there: nothing to start.
    pub fn is_up(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading"
        )
    }
}

/// The service user as Podman runs it: who, and its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// `/run/user/UID`: XDG_RUNTIME_DIR, and where Podman's run root lives.
    pub runtime_dir: PathBuf,
}

/// One image of `podman images --format json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodmanImage {
    /// The image ID: the config digest's hex, without `sha256:`.
    pub id: String,
    /// Tags (`localhost/regimage/registry:pinned`); Podman leaves the key out when none.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    #[serde(default)]
    pub repo_digests: Option<Vec<String>>,
    #[serde(default)]
    pub digest: Option<String>,
}

impl PodmanImage {
    pub fn has_name(&self, name: &str) -> bool {
        self.names.iter().flatten().any(|n| n == name)
    }

    pub fn has_repo_digest(&self, reference: &str) -> bool {
        self.repo_digests.iter().flatten().any(|d| d == reference)
    }
}

/// One HTTP(S) health request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub url: String,
    /// The CA that must have signed the server certificate (TLS is verified).
    pub cacert: Option<PathBuf>,
    /// curl's `--resolve HOST:PORT:ADDRESS`, so a name reaches this machine.
    pub resolve: Option<String>,
}

/// Every system operation first boot performs. Methods before `create_user` only look;
/// the others change the machine (the dry-run guard refuses those).
pub trait System {
    /// Host name, FQDN and interface addresses.
    fn host_facts(&self) -> HostFacts;
    fn lookup_user(&self, name: &str) -> Result<Option<UserInfo>>;
    fn lookup_group(&self, name: &str) -> Result<Option<u32>>;
    /// Owner and group of `path` (not following a final symlink).
    fn file_owner(&self, path: &Path) -> Result<(u32, u32)>;
    /// Whether logind keeps the user's manager running without a session.
    fn linger_enabled(&self, user: &str) -> Result<bool>;
    /// What the manager says about the unit (one `systemctl show`).
    fn unit_status(&self, manager: Manager, unit: &str) -> Result<UnitStatus>;
    /// `enabled`, `disabled`, `static`, ... (`unknown` when systemd cannot tell); for a
    /// user manager, as enabled for every user (`--global`).
    fn unit_file_state(&self, manager: Manager, unit: &str) -> Result<String>;
    /// ufw's settings and rules as stored on disk.
    fn ufw_state(&self) -> Result<UfwState>;
    /// The ports sshd listens on, as `sshd -T` says; `None` when sshd is not installed.
    fn ssh_ports(&self) -> Result<Option<Vec<u16>>>;
    /// The images in the user's rootless storage.
    fn podman_images(&self, user: &PodmanUser) -> Result<Vec<PodmanImage>>;
    /// Sends one GET; the HTTP status, or an error saying why there was none.
    fn http_status(&self, probe: &Probe) -> Result<u16>;
    /// Whether the kernel gives out IPv6 sockets (not when booted with ipv6.disable=1).
    fn has_ipv6(&self) -> Result<bool>;
    /// Which of `packages` dpkg does not have installed, in the order given.
    fn missing_packages(&self, packages: &[&str]) -> Result<Vec<String>>;
    /// Time since this system handle was made (monotonic).
    fn elapsed(&self) -> Duration;
    fn sleep(&self, duration: Duration);

    fn create_user(&self, user: &NewUser) -> Result<()>;
    fn create_group(&self, name: &str) -> Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()>;
    /// logind SetUserLinger(uid, true, false).
    fn enable_linger(&self, uid: u32) -> Result<()>;
    /// Makes the manager load changed unit files (see [`UnitStatus::need_daemon_reload`]).
    fn daemon_reload(&self, manager: Manager) -> Result<()>;
    /// Queues a start job (mode `replace`); does not wait for it.
    fn start_unit(&self, manager: Manager, unit: &str) -> Result<()>;
    /// Enables the unit so its manager starts it at every boot.
    fn enable_unit(&self, manager: Manager, unit: &str) -> Result<()>;
    /// Disables the unit and stops it (`systemctl disable --now`).
    fn disable_unit(&self, manager: Manager, unit: &str) -> Result<()>;
    /// `apt-get update`, then installs `packages` (no Recommends), bounded in time.
    fn install_packages(&self, packages: &[String]) -> Result<()>;
    /// Makes the `Allow` and `Delete` edits in ufw's rules files (user.rules, user6.rules),
    /// each file written atomically; a running firewall enforces them after the next
    /// enable or reload. `ipv6` is ufw's IPV6 setting.
    fn ufw_write_rules(&self, edits: &[UfwCommand], ipv6: bool) -> Result<()>;
    /// Runs ufw: enable, reload, the default policy.
    fn ufw(&self, command: &UfwCommand) -> Result<()>;
    /// `podman load` of an archive into the user's storage.
    fn podman_load(&self, user: &PodmanUser, archive: &Path) -> Result<()>;
    fn podman_pull(&self, user: &PodmanUser, reference: &str) -> Result<()>;
    fn podman_tag(&self, user: &PodmanUser, image: &str, tag: &str) -> Result<()>;
    /// `podman system migrate`, after the user's subordinate ids changed.
    fn podman_migrate(&self, user: &PodmanUser) -> Result<()>;
}

/// --dry-run's view of a [`System`]: every look passes through, every change is refused.
/// First boot's steps never call a changing method in a dry run; this makes a slip loud.
pub struct ReadOnly<'a>(pub &'a dyn System);

fn refuse<T>(what: &str) -> Result<T> {
    bail!("--dry-run must not {what}; this is a bug in regimage")
}

impl System for ReadOnly<'_> {
    fn host_facts(&self) -> HostFacts {
        self.0.host_facts()
    }
    fn lookup_user(&self, name: &str) -> Result<Option<UserInfo>> {
        self.0.lookup_user(name)
    }
    fn lookup_group(&self, name: &str) -> Result<Option<u32>> {
        self.0.lookup_group(name)
    }
    fn file_owner(&self, path: &Path) -> Result<(u32, u32)> {
        self.0.file_owner(path)
    }
    fn linger_enabled(&self, user: &str) -> Result<bool> {
        self.0.linger_enabled(user)
    }
    fn unit_status(&self, manager: Manager, unit: &str) -> Result<UnitStatus> {
        self.0.unit_status(manager, unit)
    }
    fn unit_file_state(&self, manager: Manager, unit: &str) -> Result<String> {
        self.0.unit_file_state(manager, unit)
    }
    fn ufw_state(&self) -> Result<UfwState> {
        self.0.ufw_state()
    }
    fn ssh_ports(&self) -> Result<Option<Vec<u16>>> {
        self.0.ssh_ports()
    }
    fn podman_images(&self, user: &PodmanUser) -> Result<Vec<PodmanImage>> {
        self.0.podman_images(user)
    }
    fn http_status(&self, probe: &Probe) -> Result<u16> {
        self.0.http_status(probe)
    }
    fn has_ipv6(&self) -> Result<bool> {
        self.0.has_ipv6()
    }
    fn missing_packages(&self, packages: &[&str]) -> Result<Vec<String>> {
        self.0.missing_packages(packages)
    }
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&self, duration: Duration) {
        self.0.sleep(duration)
    }
    fn create_user(&self, _: &NewUser) -> Result<()> {
        refuse("create a user")
    }
    fn create_group(&self, _: &str) -> Result<()> {
        refuse("create a group")
    }
    fn chown(&self, _: &Path, _: u32, _: u32) -> Result<()> {
        refuse("change an owner")
    }
    fn enable_linger(&self, _: u32) -> Result<()> {
        refuse("enable lingering")
    }
    fn daemon_reload(&self, _: Manager) -> Result<()> {
        refuse("reload a manager")
    }
    fn start_unit(&self, _: Manager, _: &str) -> Result<()> {
        refuse("start a unit")
    }
    fn enable_unit(&self, _: Manager, _: &str) -> Result<()> {
        refuse("enable a unit")
    }
    fn disable_unit(&self, _: Manager, _: &str) -> Result<()> {
        refuse("disable a unit")
    }
    fn install_packages(&self, _: &[String]) -> Result<()> {
        refuse("install packages")
    }
    fn ufw_write_rules(&self, _: &[UfwCommand], _: bool) -> Result<()> {
        refuse("write firewall rules")
    }
    fn ufw(&self, _: &UfwCommand) -> Result<()> {
        refuse("change the firewall")
    }
    fn podman_load(&self, _: &PodmanUser, _: &Path) -> Result<()> {
        refuse("load an image")
    }
    fn podman_pull(&self, _: &PodmanUser, _: &str) -> Result<()> {
        refuse("pull an image")
    }
    fn podman_tag(&self, _: &PodmanUser, _: &str, _: &str) -> Result<()> {
        refuse("tag an image")
    }
    fn podman_migrate(&self, _: &PodmanUser) -> Result<()> {
        refuse("migrate Podman's storage")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    #[test]
    fn podman_images_json_parses_with_missing_names() {
        // `podman images --format json` from Podman 4.3 after `podman load` of an
        // untagged OCI archive and a build: Names is absent for the first, RepoTags null.
        let json = r#"[
          {"Id": "3c6b599e27cc", "ParentId": "", "RepoTags": null,
           "RepoDigests": ["localhost/test/hello@sha256:4087"], "Size": 3540,
           "Digest": "sha256:4087", "Created": 1795943175},
          {"Id": "abcd", "Names": ["localhost/regimage/registry:pinned"], "Digest": "sha256:1"}
        ]"#;
        let images: Vec<PodmanImage> = serde_json::from_str(json).unwrap();
        assert_eq!(images[0].id, "3c6b599e27cc");
        assert!(!images[0].has_name("localhost/regimage/registry:pinned"));
        assert!(images[0].has_repo_digest("localhost/test/hello@sha256:4087"));
        assert!(images[1].has_name("localhost/regimage/registry:pinned"));
    }

    #[test]
    fn read_only_refuses_every_change() {
        struct Never;
        impl System for Never {
            fn host_facts(&self) -> HostFacts {
                HostFacts::default()
            }
            fn lookup_user(&self, _: &str) -> Result<Option<UserInfo>> {
                Ok(None)
            }
            fn lookup_group(&self, _: &str) -> Result<Option<u32>> {
                Ok(Some(7))
            }
            fn file_owner(&self, _: &Path) -> Result<(u32, u32)> {
                Ok((0, 0))
            }
            fn linger_enabled(&self, _: &str) -> Result<bool> {
                Ok(false)
            }
            fn unit_status(&self, _: Manager, _: &str) -> Result<UnitStatus> {
                bail!("no")
            }
            fn unit_file_state(&self, _: Manager, _: &str) -> Result<String> {
                bail!("no")
            }
            fn ufw_state(&self) -> Result<UfwState> {
                Ok(UfwState::default())
            }
            fn ssh_ports(&self) -> Result<Option<Vec<u16>>> {
                Ok(None)
            }
            fn podman_images(&self, _: &PodmanUser) -> Result<Vec<PodmanImage>> {
                Ok(vec![])
            }
            fn http_status(&self, _: &Probe) -> Result<u16> {
                Ok(200)
            }
            fn has_ipv6(&self) -> Result<bool> {
                Ok(true)
            }
            fn missing_packages(&self, _: &[&str]) -> Result<Vec<String>> {
                Ok(vec![])
            }
            fn elapsed(&self) -> Duration {
                Duration::ZERO
            }
            fn sleep(&self, _: Duration) {}
            fn create_user(&self, _: &NewUser) -> Result<()> {
                panic!("reached the real system")
            }
            fn create_group(&self, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn chown(&self, _: &Path, _: u32, _: u32) -> Result<()> {
                panic!("reached the real system")
            }
            fn enable_linger(&self, _: u32) -> Result<()> {
                panic!("reached the real system")
            }
            fn daemon_reload(&self, _: Manager) -> Result<()> {
                panic!("reached the real system")
            }
            fn start_unit(&self, _: Manager, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn enable_unit(&self, _: Manager, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn disable_unit(&self, _: Manager, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn install_packages(&self, _: &[String]) -> Result<()> {
                panic!("reached the real system")
            }
            fn ufw_write_rules(&self, _: &[UfwCommand], _: bool) -> Result<()> {
                panic!("reached the real system")
            }
            fn ufw(&self, _: &UfwCommand) -> Result<()> {
                panic!("reached the real system")
            }
            fn podman_load(&self, _: &PodmanUser, _: &Path) -> Result<()> {
                panic!("reached the real system")
            }
            fn podman_pull(&self, _: &PodmanUser, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn podman_tag(&self, _: &PodmanUser, _: &str, _: &str) -> Result<()> {
                panic!("reached the real system")
            }
            fn podman_migrate(&self, _: &PodmanUser) -> Result<()> {
                panic!("reached the real system")
            }
        }
        let ro = ReadOnly(&Never);
        assert_eq!(ro.lookup_group("x").unwrap(), Some(7));
        let user = PodmanUser {
            name: "r".into(),
            uid: 1,
            gid: 1,
            home: "/".into(),
            runtime_dir: "/run/user/1".into(),
        };
        let refusals = [
            ro.create_user(&NewUser {
                name: "x".into(),
                home: "/".into(),
                comment: String::new(),
            }),
            ro.create_group("x"),
            ro.chown(Path::new("/x"), 1, 1),
            ro.enable_linger(1),
            ro.daemon_reload(Manager::System),
            ro.start_unit(Manager::System, "x"),
            ro.enable_unit(Manager::System, "x"),
            ro.disable_unit(Manager::System, "x"),
            ro.install_packages(&["x".into()]),
            ro.ufw_write_rules(&[], true),
            ro.ufw(&UfwCommand::Enable),
            ro.podman_load(&user, Path::new("/x")),
            ro.podman_pull(&user, "x"),
            ro.podman_tag(&user, "x", "y"),
            ro.podman_migrate(&user),
        ];
        for r in refusals {
            assert!(r.unwrap_err().to_string().contains("--dry-run must not"));
        }
    }
}
