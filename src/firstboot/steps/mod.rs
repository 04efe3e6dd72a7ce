//! The first-boot steps, in order. Each one looks at the machine first and changes only
//! what differs, so any step can run again after a kill anywhere and a run on a ready
//! machine changes nothing. Changes go through `Ctx::change`, which --dry-run turns into
//! "would ..." lines.
//!
//! This module holds what the steps share ([`Ctx`], owner and mode helpers); each step (or
//! pair of steps) lives in its own file.

mod firewall;
mod identity_pki;
mod listeners;
mod output;
mod packages;
mod services;
mod user_manager;
mod users;

pub use firewall::firewall;
pub use identity_pki::{host_identity, pki};
pub use listeners::without_ipv6_listeners;
pub use output::output;
pub use packages::packages;
pub use services::{health, services};
pub use user_manager::{registry_image, user_manager};
pub use users::users;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::status::ImageStatus;
use super::system::{PodmanUser, System, UserInfo};
use super::Options;
use crate::bundle::BundleReport;
use crate::cloudinit;
use crate::config::Config;
use crate::fsutil;
use crate::identity::Sans;
use crate::pki::PkiReport;

/// The registry image baked into qcow2 builds.
pub const IMAGE_ARCHIVE_PATH: &str = cloudinit::REGISTRY_ARCHIVE_PATH;
/// Left while Podman's storage still has to learn new subordinate ids (`podman system
/// migrate`), so a kill between writing /etc/subuid and migrating is not forgotten.
pub const MIGRATE_PENDING_PATH: &str = "/var/lib/regimage/podman-migrate.pending";
/// Left while an enabled firewall has not yet loaded the rules first boot wrote to its
/// files, so a kill between the write and `ufw reload` is not forgotten.
pub const UFW_RELOAD_PENDING_PATH: &str = "/var/lib/regimage/ufw-reload.pending";
/// Home of the users first boot creates: none (the same as the cloud-init users).
pub const USER_HOME: &str = cloudinit::SYSTEM_USER_HOME;
const NOLOGIN: &str = "/usr/sbin/nologin";
const STATE_DIR_MODE: u32 = 0o700;
const PODMAN_DIR_MODE: u32 = 0o700;
const STORAGE_DIR_MODE: u32 = 0o750;
const REGISTRY_ENV_MODE: u32 = 0o640;
const REGISTRY_UNIT: &str = "registry.service";
const PROXY_UNIT: &str = "registry-proxy.service";
/// Runs `regimage renew` daily (issue 11); its file is [`crate::render::RENEW_TIMER_PATH`].
pub const RENEW_TIMER_UNIT: &str = "regimage-renew.timer";
/// Runs `regimage cluster sync` every 30 s with s3 storage (issue 12); its file is
/// [`crate::render::CLUSTER_SYNC_TIMER_PATH`].
pub const CLUSTER_SYNC_TIMER_UNIT: &str = "regimage-cluster-sync.timer";
/// How long user@UID.service may take to come up (TCG machines are slow).
const USER_MANAGER_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a wait looks again: short, since a ready service should not wait out a long
/// sleep; the waits bound the total (issue 9).
const POLL: Duration = Duration::from_millis(200);
/// How often a wait whose cheap check fails asks systemd (a process) instead.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// What the steps share: inputs, results of earlier steps, and the current step's changes.
pub struct Ctx<'a> {
    pub sys: &'a dyn System,
    /// Stands for `/` (a temporary directory in tests).
    pub root: &'a Path,
    pub config: &'a Config,
    pub opts: &'a Options,
    pub sans: Option<Sans>,
    pub pki: Option<PkiReport>,
    pub service: Option<UserInfo>,
    pub image: Option<ImageStatus>,
    pub bundles: Vec<BundleReport>,
    /// This step's changes (done, or with --dry-run to do).
    pub changes: Vec<String>,
    /// This step's findings that change nothing.
    pub notes: Vec<String>,
}

/// First boot's clock for the bounded waits of `cluster` (tests fake it through System).
pub(super) struct SysClock<'a>(pub(super) &'a dyn System);

impl crate::cluster::wait::Clock for SysClock<'_> {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.0.sleep(d)
    }
}

impl<'a> Ctx<'a> {
    pub fn new(sys: &'a dyn System, root: &'a Path, config: &'a Config, opts: &'a Options) -> Self {
        Ctx {
            sys,
            root,
            config,
            opts,
            sans: None,
            pki: None,
            service: None,
            image: None,
            bundles: Vec::new(),
            changes: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// `target` (absolute, as on the machine) under the root.
    pub fn path(&self, target: impl AsRef<Path>) -> PathBuf {
        fsutil::under_root(self.root, target.as_ref())
    }

    /// Does `what` (an imperative phrase: "create the user x") unless this is a dry run;
    /// either way it is recorded as this step's change.
    fn change(&mut self, what: String, f: impl FnOnce(&dyn System) -> Result<()>) -> Result<()> {
        if !self.opts.dry_run {
            f(self.sys)?;
            tracing::info!("changed: {what}");
        }
        self.changes.push(what);
        Ok(())
    }

    /// Like [`Ctx::change`] for several changes made by one action (`f` runs once).
    fn change_all(
        &mut self,
        whats: Vec<String>,
        f: impl FnOnce(&dyn System) -> Result<()>,
    ) -> Result<()> {
        if !self.opts.dry_run {
            f(self.sys)?;
            for what in &whats {
                tracing::info!("changed: {what}");
            }
        }
        self.changes.extend(whats);
        Ok(())
    }

    fn note(&mut self, what: String) {
        tracing::info!("{what}");
        self.notes.push(what);
    }

    fn sans(&self) -> Result<&Sans> {
        self.sans
            .as_ref()
            .context("the host-identity step has not run")
    }

    /// The service user; `None` only in a dry run before it exists.
    fn service_user(&mut self, later: &str) -> Result<Option<UserInfo>> {
        match (&self.service, self.opts.dry_run) {
            (Some(user), _) => Ok(Some(user.clone())),
            (None, true) => {
                let name = self.config.service_user.clone();
                self.note(format!("{later} once the user {name} exists"));
                Ok(None)
            }
            (None, false) => bail!("the users step has not run"),
        }
    }

    fn podman_user(&self, user: &UserInfo) -> PodmanUser {
        PodmanUser {
            name: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
            home: user.home.clone(),
            runtime_dir: PathBuf::from(format!("/run/user/{}", user.uid)),
        }
    }

    /// Waits (bounded) until `check` says ready (`Ok(None)`); `Ok(Some(why))`: not yet.
    fn wait(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<String>>,
        on_timeout: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        let start = self.sys.elapsed();
        loop {
            let why = match check()? {
                None => return Ok(()),
                Some(why) => why,
            };
            if self.sys.elapsed().saturating_sub(start) >= timeout {
                bail!("{}", on_timeout(&why));
            }
            self.sys.sleep(POLL);
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(fs::symlink_metadata(path)
        .with_context(|| format!("inspecting {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// Makes `path` a directory with exactly `mode` owned by `uid:gid`, changing only what
/// differs (a kill between mkdir and chown is mended by the next run).
fn ensure_dir_owned(ctx: &mut Ctx<'_>, target: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let path = ctx.path(target);
    if !path.is_dir() {
        let p = path.clone();
        return ctx.change(
            format!("create the directory {target} ({mode:o}, owner {uid}:{gid})"),
            move |sys| {
                fsutil::ensure_dir(&p, mode)?;
                sys.chown(&p, uid, gid)
            },
        );
    }
    ensure_mode_owner(ctx, target, mode, Some(uid), gid)
}

/// Sets the mode and owner of an existing file or directory when they differ; `uid: None`
/// keeps the owner.
fn ensure_mode_owner(
    ctx: &mut Ctx<'_>,
    target: &str,
    mode: u32,
    uid: Option<u32>,
    gid: u32,
) -> Result<()> {
    let path = ctx.path(target);
    let (have_uid, have_gid) = ctx.sys.file_owner(&path)?;
    let uid = uid.unwrap_or(have_uid);
    if (have_uid, have_gid) != (uid, gid) {
        let p = path.clone();
        ctx.change(format!("give {target} to {uid}:{gid}"), move |sys| {
            sys.chown(&p, uid, gid)
        })?;
    }
    if mode_of(&path)? != mode {
        let p = path.clone();
        ctx.change(format!("set the mode of {target} to {mode:o}"), move |_| {
            set_mode(&p, mode)
        })?;
    }
    Ok(())
}
