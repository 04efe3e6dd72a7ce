//! The appliance's life after first boot: certificates renewed before they end, clients
//! added and revoked, the CRL kept fresh, and a status that says what needs the operator.
//!
//! State lives on the machine, never in the image: the certificates under
//! /etc/registry/certs, the client index (issued and revoked certificates) in
//! /var/lib/regimage/clients.json, the last renew run in /var/lib/regimage/renew.json. Every
//! command converges the same way ([`certify`]): first boot's certificate step, `renew`,
//! `client add` and `client revoke` all end in it, so a run stopped anywhere is finished by
//! the next one. A lock keeps the daily timer and an operator's command apart.

pub mod clients;
pub mod cluster;
pub mod index;
pub mod proxy;
pub mod renew;
pub mod status;

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use time::OffsetDateTime;

use crate::bundle::{self, BundleReport};
use crate::cloudinit;
use crate::config::Config;
use crate::fsutil;
use crate::identity::Sans;
use crate::pki::{self, PkiPaths};
use crate::render;
use index::{Index, Origin, State};
use proxy::{Proxy, Reloaded};

/// The client index (see [`index`]).
pub const CLIENT_INDEX_PATH: &str = "/var/lib/regimage/clients.json";
/// The last `regimage renew` run and its result.
pub const RENEW_RECORD_PATH: &str = "/var/lib/regimage/renew.json";
/// Exists while a file the proxy serves may have changed and the proxy has not been
/// reloaded since: a run stopped between the change and the reload leaves it, and the next
/// run reloads.
pub const RELOAD_PENDING_PATH: &str = "/var/lib/regimage/proxy-reload.pending";
/// Held (flock) by every command that changes certificates.
const LOCK_PATH: &str = "/var/lib/regimage/lifecycle.lock";

/// One appliance: its files (under `root`, `/` on the machine), its config, its clock and
/// its proxy.
pub struct Appliance<'a> {
    pub root: PathBuf,
    pub config: &'a Config,
    pub now: OffsetDateTime,
    pub proxy: Proxy,
    /// The proxy's group, which must be able to read registry.pem (`None` under a test root).
    pub proxy_gid: Option<u32>,
    /// The names and addresses the server certificate must carry; `None`: this machine's
    /// (unit tests fix them).
    pub sans: Option<Sans>,
}

impl Appliance<'_> {
    /// `target` (absolute, as on the machine) under the root.
    pub fn path(&self, target: impl AsRef<Path>) -> PathBuf {
        fsutil::under_root(&self.root, target.as_ref())
    }

    pub fn pki_paths(&self) -> PkiPaths {
        PkiPaths::new(&self.root)
    }

    /// Whether first boot finished on this machine.
    pub fn first_boot_done(&self) -> bool {
        self.path(render::FIRSTBOOT_DONE_PATH).exists()
    }

    /// Refuses to work before first boot made the CAs: there is nothing to renew or sign
    /// with yet.
    pub fn require_certificates(&self) -> Result<()> {
        let paths = self.pki_paths();
        if !paths.ca_cert.exists() || !paths.client_ca_key.exists() {
            bail!(
                "this machine has no regimage certificates yet ({} is missing): first boot \
                 makes them (systemctl status regimage-firstboot.service)",
                paths.ca_cert.display()
            );
        }
        Ok(())
    }

    /// Takes the lifecycle lock (waits for another run to finish).
    pub fn lock(&self) -> Result<Lock> {
        let path = self.path(LOCK_PATH);
        fsutil::ensure_dir(&self.path(cloudinit::STATE_DIR), 0o700)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            Ok(lock) => lock,
            Err((file, _)) => {
                eprintln!(
                    "waiting for another regimage run to finish ({})",
                    path.display()
                );
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("locking {}", path.display()))?
            }
        };
        Ok(Lock { _held: lock })
    }

    pub fn load_index(&self) -> Result<Index> {
        Index::load(&self.path(CLIENT_INDEX_PATH))
    }

    pub fn save_index(&self, index: &Index) -> Result<()> {
        index.save(&self.path(CLIENT_INDEX_PATH))
    }
}

/// The lifecycle lock, released when dropped.
pub struct Lock {
    _held: nix::fcntl::Flock<File>,
}

/// What [`certify`] should do beyond converging.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertifyOptions {
    /// Issue every leaf and the CRL again (`renew --force`).
    pub force: bool,
    /// Revoke clients that came from the config and are no longer in it (`renew`).
    pub revoke_dropped: bool,
}

/// What [`certify`] did.
#[derive(Debug, Clone)]
pub struct Certified {
    pub pki: pki::Outcome,
    pub index: Index,
    /// Clients revoked because the config no longer lists them.
    pub dropped: Vec<String>,
    /// Config clients left out because they are revoked.
    pub skipped_revoked: Vec<String>,
}

/// Brings the certificates, the CRL and the client index in line: config clients the index
/// does not know become active clients, revoked ones stay out, every active client has a
/// valid certificate, every revoked certificate is in the CRL. The index is written before
/// the certificates change (what is revoked is known before the CRL says it) and after.
pub fn certify(app: &Appliance<'_>, sans: &Sans, opts: CertifyOptions) -> Result<Certified> {
    let paths = app.pki_paths();
    let mut index = app.load_index()?;
    let mut skipped_revoked = Vec::new();
    for name in &app.config.clients {
        match index.get(name).map(|c| c.state) {
            None => index.activate(name, Origin::Config),
            Some(State::Revoked) => skipped_revoked.push(name.clone()),
            Some(State::Active) => {}
        }
    }
    let mut dropped = Vec::new();
    if opts.revoke_dropped {
        let gone: Vec<String> = index
            .clients
            .iter()
            .filter(|c| {
                c.origin == Origin::Config
                    && c.state == State::Active
                    && !app.config.clients.contains(&c.name)
            })
            .map(|c| c.name.clone())
            .collect();
        for name in gone {
            record_current(&mut index, &paths, &name, app.now);
            index.revoke(&name, app.now);
            dropped.push(name);
        }
    }
    for name in index.active() {
        record_current(&mut index, &paths, &name, app.now);
    }
    index.prune(app.now);
    app.save_index(&index)?;

    let clients = index.issuable();
    let revoked = index.revoked_serials();
    let outcome = pki::ensure(
        &paths,
        &pki::Request {
            config: app.config,
            sans,
            clients: &clients,
            revoked: &revoked,
            proxy_gid: app.proxy_gid,
            now: app.now,
            force: opts.force,
        },
    )?;
    for cert in outcome
        .report
        .certificates
        .iter()
        .filter(|c| c.role == "client")
    {
        index.record(&cert.name, &cert.serial, &cert.not_after, app.now);
    }
    app.save_index(&index)?;
    Ok(Certified {
        pki: outcome,
        index,
        dropped,
        skipped_revoked,
    })
}

/// Puts the serial of `name`'s certificate on disk into the index (a certificate written by
/// a run stopped before it recorded it).
pub(super) fn record_current(index: &mut Index, paths: &PkiPaths, name: &str, now: OffsetDateTime) {
    let Ok(pem) = std::fs::read_to_string(paths.client_cert(name)) else {
        return;
    };
    if let Ok((serial, not_after)) = pki::serial_and_end(&pem) {
        index.record(name, &serial, &not_after, now);
    }
}

/// Removes what a revoked client left: its key, its certificate and its bundle. Returns the
/// paths removed.
fn remove_revoked_files(app: &Appliance<'_>, index: &Index) -> Result<Vec<PathBuf>> {
    let paths = app.pki_paths();
    let mut removed = Vec::new();
    for name in index.revoked_names() {
        for path in [
            paths.client_key(&name),
            paths.client_cert(&name),
            bundle_path(app, &name),
        ] {
            if fsutil::remove_file_if_exists(&path)? {
                tracing::info!("removed {} (client {name} is revoked)", path.display());
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// `<output-dir>/NAME.tar.gz` under the root.
pub fn bundle_path(app: &Appliance<'_>, name: &str) -> PathBuf {
    app.path(app.config.output_dir.join(format!("{name}.tar.gz")))
}

/// The bundles of every active client this node issues to, for the registry named `host`.
pub fn write_bundles(app: &Appliance<'_>, index: &Index, host: &str) -> Result<Vec<BundleReport>> {
    bundle::write_bundles(
        &app.root,
        app.config,
        host,
        &app.pki_paths(),
        &index.issuable(),
    )
}

/// What [`apply`] did.
pub struct Applied {
    pub certified: Certified,
    pub bundles: Vec<BundleReport>,
    /// Files of revoked clients removed.
    pub removed: Vec<PathBuf>,
    /// `None` when nothing the proxy serves changed.
    pub reloaded: Option<Reloaded>,
}

impl Applied {
    /// Whether the run changed anything at all.
    pub fn changed_anything(&self) -> bool {
        self.reloaded.is_some()
            || !self.removed.is_empty()
            || self
                .certified
                .pki
                .report
                .files
                .iter()
                .any(|f| f.action != pki::Action::Kept)
            || self.bundles.iter().any(|b| b.action != pki::Action::Kept)
    }
}

/// The whole convergence every changing command ends in: [`certify`], the bundles of the
/// active clients, a proxy reload when (and only when) something it serves changed, and
/// only then the removal of revoked clients' files. The reload is owed (a marker file)
/// before the first certificate can change, so a run stopped before it reloads at the next.
pub fn apply(app: &Appliance<'_>, sans: &Sans, opts: CertifyOptions) -> Result<Applied> {
    let owed = begin_proxy_change(app)?;
    let certified = certify(app, sans, opts)?;
    let bundles = write_bundles(app, &certified.index, &sans.primary_name)?;
    let changed = owed || proxy_files_changed(app, &certified);
    let reloaded = finish_proxy_change(app, changed)?;
    let removed = remove_revoked_files(app, &certified.index)?;
    Ok(Applied {
        certified,
        bundles,
        removed,
        reloaded,
    })
}

/// Whether `certified` changed a file the proxy serves or trusts.
fn proxy_files_changed(app: &Appliance<'_>, certified: &Certified) -> bool {
    let paths = app.pki_paths();
    let served = [&paths.server_pem, &paths.client_ca_cert, &paths.client_crl];
    certified
        .pki
        .report
        .files
        .iter()
        .any(|f| f.action != pki::Action::Kept && served.contains(&&f.path))
}

/// Marks a reload as owed before files the proxy serves may change; see [`RELOAD_PENDING_PATH`].
/// Returns whether one was already owed.
fn begin_proxy_change(app: &Appliance<'_>) -> Result<bool> {
    let path = app.path(RELOAD_PENDING_PATH);
    let owed = path.exists();
    if !owed {
        fsutil::ensure_dir(&app.path(cloudinit::STATE_DIR), 0o700)?;
        fsutil::write_atomic(&path, b"the TLS proxy must be reloaded\n", 0o600)?;
    }
    Ok(owed)
}

/// Reloads the proxy when `changed`, then clears the owed reload.
fn finish_proxy_change(app: &Appliance<'_>, changed: bool) -> Result<Option<Reloaded>> {
    let reloaded = if changed {
        Some(app.proxy.reload()?)
    } else {
        None
    };
    fsutil::remove_file_if_exists(&app.path(RELOAD_PENDING_PATH))?;
    Ok(reloaded)
}

/// The proxy's group id, from the config's proxy user (made by first boot with its group).
pub fn proxy_gid(config: &Config) -> Result<Option<u32>> {
    let group = nix::unistd::Group::from_name(&config.proxy_user)
        .with_context(|| format!("looking up the group {}", config.proxy_user))?;
    Ok(group.map(|g| g.gid.as_raw()))
}

/// Reads a reload result as one line for people.
pub fn describe_reload(reloaded: &Option<Reloaded>) -> String {
    match reloaded {
        None => "proxy: not reloaded (nothing it serves changed)".into(),
        Some(Reloaded::Done { main_pid, took }) => format!(
            "proxy: reloaded in {:.2} s (main PID {main_pid} kept; transfers in flight finish on the old workers)",
            took.as_secs_f64()
        ),
        Some(Reloaded::NotRunning) => {
            "proxy: not running; it loads the new files when it starts".into()
        }
        Some(Reloaded::NoProxy) => "proxy: not reloaded (no proxy to reach)".into(),
    }
}

#[cfg(test)]
mod tests;
