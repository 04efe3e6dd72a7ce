//! `regimage firstboot`: turns a booted machine into a ready registry.
//!
//! regimage-firstboot.service runs it once (the unit's condition skips it after
//! /var/lib/regimage/firstboot.done exists). Ten steps run in order, each looking before
//! it changes anything, so a run killed anywhere is finished by the next one and a run on a
//! ready machine changes nothing: host identity (waiting for an address and a name),
//! packages, certificates, users, the user manager, the registry image, the firewall, the
//! services, health, client bundles. Then the status
//! file, then the marker, last. Every system operation goes through one trait,
//! [`system::System`]; the unit tests run all steps against a recording fake.
//!
//! `--no-system` writes only the certificates and client bundles under `--root`;
//! `--dry-run` prints what a run would change on this machine and changes nothing.

pub mod real;
pub mod status;
pub mod steps;
pub mod subids;
pub mod system;
pub mod ufw;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::bundle::{self, BundleReport};
use crate::cloudinit;
use crate::config::Config;
use crate::error::UsageError;
use crate::fsutil;
use crate::identity::{self, HostFacts, Sans};
use crate::pki::{self, PkiReport};
use crate::render;
use status::{BundleStatus, CertStatus, Endpoints, Status, StepResult, StepStatus};
use steps::Ctx;
use system::{ReadOnly, System};

/// The health wait when --health-timeout is not given: TCG virtual machines are slow.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 180;
/// The wait for an address and a name when --network-timeout is not given: DHCP and a
/// slow link, not a machine that has no network at all.
pub const DEFAULT_NETWORK_TIMEOUT_SECS: u64 = 120;

/// What `regimage firstboot` does: the whole machine, or only files under a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The full first boot on this machine (`/`).
    System(Options),
    /// Only the certificates and client bundles, under `root` standing for `/`.
    NoSystem { root: PathBuf },
}

/// How the full first boot runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub dry_run: bool,
    pub health_timeout: Duration,
    /// How long host identity waits for an address and a name clients can use.
    pub network_timeout: Duration,
}

/// What a `--no-system` run found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub host: HostFacts,
    pub sans: Sans,
    pub pki: PkiReport,
    pub bundles: Vec<BundleReport>,
}

type StepFn = fn(&mut Ctx<'_>) -> Result<()>;

/// The steps, in the order they run; the names go into the status file and the journal.
pub const STEPS: [(&str, StepFn); 10] = [
    ("host-identity", steps::host_identity),
    ("packages", steps::packages),
    ("pki", steps::pki),
    ("users", steps::users),
    ("user-manager", steps::user_manager),
    ("registry-image", steps::registry_image),
    ("firewall", steps::firewall),
    ("services", steps::services),
    ("health", steps::health),
    ("output", steps::output),
];

/// `regimage firstboot`: loads the site config (`None`: the built-in defaults) and runs.
pub fn run(config: Option<&Path>, mode: Mode) -> Result<()> {
    let opts = match mode {
        Mode::NoSystem { root } => {
            check_root(&root)?;
            let config = Config::load(config)?;
            let outcome = run_no_system(&root, &config)?;
            print!("{}", summary(&outcome));
            return Ok(());
        }
        Mode::System(opts) => opts,
    };
    let config = Config::load(config)?;
    check_privileges(nix::unistd::geteuid().is_root(), opts.dry_run)?;
    let sys = real::RealSystem::new();
    let status = run_system(&sys, Path::new("/"), &config, &opts)?;
    if opts.dry_run {
        print!("{}", dry_run_report(&status));
        let failed = status
            .steps
            .iter()
            .filter(|s| s.result == StepResult::Failed)
            .count();
        if failed > 0 {
            bail!("--dry-run could not look at {failed} step(s); see the lines marked \"cannot tell\"");
        }
    } else {
        println!("{}", ready_line(&config, &status));
    }
    Ok(())
}

/// The full first boot changes users, the firewall and services: root only. A dry run
/// may try without (it then cannot see everything).
pub fn check_privileges(is_root: bool, dry_run: bool) -> Result<()> {
    if !is_root && !dry_run {
        bail!(
            "regimage firstboot creates users, changes the firewall and starts services, so it \
             must run as root (sudo regimage firstboot ...); --dry-run shows what it would do"
        );
    }
    Ok(())
}

/// Runs every step on `sys` with `root` standing for `/`, then (unless dry) writes the
/// status file and, when everything is up, the completion marker. A failing step stops the
/// run (a dry run notes it and goes on) and the error names it.
pub fn run_system(
    sys: &dyn System,
    root: &Path,
    config: &Config,
    opts: &Options,
) -> Result<Status> {
    let guard = ReadOnly(sys);
    let sys: &dyn System = if opts.dry_run { &guard } else { sys };
    let mut ctx = Ctx::new(sys, root, config, opts);
    let (steps, error) = run_steps(&mut ctx, &STEPS);
    let mut status = build_status(&ctx, steps, error.as_ref());
    if opts.dry_run {
        return Ok(status);
    }
    if let Err(e) = write_status(root, config, &status) {
        // The step's error matters more; the status file is a report of it.
        tracing::warn!("writing the status file: {e:#}");
    }
    if let Some(e) = error {
        return Err(e);
    }
    let marker = fsutil::under_root(root, Path::new(render::FIRSTBOOT_DONE_PATH));
    fsutil::ensure_dir(
        &fsutil::under_root(root, Path::new(cloudinit::STATE_DIR)),
        0o700,
    )?;
    if !marker.exists() {
        let text = format!(
            "regimage {}: first boot finished; the status is in {}/status.json\n",
            env!("CARGO_PKG_VERSION"),
            config.output_dir.display()
        );
        fsutil::write_atomic(&marker, text.as_bytes(), 0o644)?;
    }
    status.ready = true;
    Ok(status)
}

/// Runs `steps` in order; stops at the first failure unless this is a dry run.
pub(crate) fn run_steps(
    ctx: &mut Ctx<'_>,
    steps: &[(&str, StepFn)],
) -> (Vec<StepStatus>, Option<anyhow::Error>) {
    let mut done = Vec::new();
    let mut first_error = None;
    for (name, step) in steps {
        let span = tracing::info_span!("step", name = *name);
        let _entered = span.enter();
        ctx.changes.clear();
        ctx.notes.clear();
        let started = Instant::now();
        let result = step(ctx);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (result, error) = match result {
            Ok(()) if ctx.opts.dry_run => (StepResult::Planned, None),
            Ok(()) if ctx.changes.is_empty() => (StepResult::Unchanged, None),
            Ok(()) => (StepResult::Changed, None),
            Err(e) => {
                let e = e.context(format!("first boot step {name}"));
                tracing::error!(step = *name, duration_ms, "{e:#}");
                (StepResult::Failed, Some(e))
            }
        };
        tracing::info!(step = *name, duration_ms, result = ?result, changes = ctx.changes.len(), "step finished");
        done.push(StepStatus {
            name: name.to_string(),
            duration_ms,
            result,
            changes: ctx.changes.clone(),
            notes: ctx.notes.clone(),
            error: error.as_ref().map(|e| format!("{e:#}")),
        });
        if let Some(e) = error {
            if first_error.is_none() {
                first_error = Some(e);
            }
            if !ctx.opts.dry_run {
                break;
            }
        }
    }
    (done, first_error)
}

fn build_status(ctx: &Ctx<'_>, steps: Vec<StepStatus>, error: Option<&anyhow::Error>) -> Status {
    let config = ctx.config;
    let host = ctx
        .sans
        .as_ref()
        .map(|s| s.primary_name.clone())
        .unwrap_or_default();
    let url = |port| format!("https://{}/", bundle::registry_host(&host, port));
    Status {
        ready: false,
        version: env!("CARGO_PKG_VERSION").into(),
        finished_at: pki::rfc3339(time::OffsetDateTime::now_utc()),
        primary_name: host.clone(),
        endpoints: Endpoints {
            pull: url(config.ports.pull),
            push: url(config.ports.push),
            registry: format!("http://127.0.0.1:{}/", config.ports.registry),
        },
        server_ca_sha256: ctx
            .pki
            .as_ref()
            .and_then(|r| r.certificate("server-ca", None))
            .map(|c| c.sha256.clone())
            .unwrap_or_default(),
        certificates: ctx
            .pki
            .iter()
            .flat_map(|r| &r.certificates)
            .map(|c| CertStatus {
                role: c.role.to_string(),
                name: c.name.clone(),
                sha256: c.sha256.clone(),
                not_after: c.not_after.clone(),
            })
            .collect(),
        image: ctx.image.clone(),
        bundles: ctx
            .bundles
            .iter()
            .map(|b| BundleStatus {
                client: b.client.clone(),
                path: b
                    .path
                    .strip_prefix(ctx.root)
                    .map(|p| Path::new("/").join(p))
                    .unwrap_or_else(|_| b.path.clone())
                    .display()
                    .to_string(),
                sha256: b.sha256.clone(),
            })
            .collect(),
        steps,
        error: error.map(|e| format!("{e:#}")),
    }
    .with_ready(error.is_none())
}

impl Status {
    fn with_ready(mut self, ready: bool) -> Status {
        self.ready = ready && !self.steps.iter().any(|s| s.result == StepResult::Planned);
        self
    }
}

fn write_status(root: &Path, config: &Config, status: &Status) -> Result<()> {
    let out = fsutil::under_root(root, &config.output_dir);
    // Keys of clients end up next to it: root only.
    fsutil::refuse_symlink(&out, "output-dir")?;
    fsutil::ensure_dir(&out, 0o700)?;
    fsutil::write_atomic(&out.join("status.json"), &status.to_json()?, 0o600)
}

/// The one line on the console when the registry is ready. It carries the server CA's
/// fingerprint, which the bundle README asks clients to compare with their `ca.crt`.
pub fn ready_line(config: &Config, status: &Status) -> String {
    format!(
        "regimage: registry ready: pull {} push {} server CA SHA-256 {} bundles in {}",
        status.endpoints.pull,
        status.endpoints.push,
        status.server_ca_sha256,
        config.output_dir.display()
    )
}

/// --dry-run's output: per step, what it found and what it would change.
pub fn dry_run_report(status: &Status) -> String {
    let mut out = String::from(
        "regimage firstboot --dry-run: what a run would do on this machine (nothing was changed)\n",
    );
    for step in &status.steps {
        let _ = writeln!(out, "{}:", step.name);
        for change in &step.changes {
            let _ = writeln!(out, "  would {change}");
        }
        for note in &step.notes {
            let _ = writeln!(out, "  {note}");
        }
        if let Some(e) = &step.error {
            let _ = writeln!(out, "  cannot tell: {e}");
        }
        if step.notes.is_empty() && step.changes.is_empty() && step.error.is_none() {
            let _ = writeln!(out, "  nothing to do");
        }
    }
    out
}

/// The `--no-system` steps, in order: host identity, certificates, client bundles.
pub fn run_no_system(root: &Path, config: &Config) -> Result<Outcome> {
    let host = HostFacts::gather();
    let sans = identity::server_sans(config, &host);
    if sans.primary_name.starts_with("*.") {
        bail!(
            "hostname {:?} is a wildcard, which cannot name the registry in clients' certs.d \
             directories; set hostname to one name and put the wildcard in extra-names",
            sans.primary_name
        );
    }
    tracing::info!(primary = %sans.primary_name, dns = ?sans.dns_names, ips = ?sans.ip_addresses, "server names");
    // A joining node takes the cluster's CAs first, then certify keeps them.
    let clock = crate::cluster::wait::RealClock::default();
    let now = time::OffsetDateTime::now_utc();
    let joined = crate::cluster::join::wait_and_read(&clock, root, config, now)?;
    if let Some(join) = &joined {
        crate::pki::adopt_cas(
            &crate::pki::PkiPaths::new(root),
            &join.server_ca,
            &join.client_ca,
            now,
        )?;
    }
    write_registry_env(root, config, &clock, joined.map(|j| j.http_secret))?;
    // --no-system never changes owners: the proxy's group is set by the full first boot.
    let app = crate::lifecycle::Appliance {
        root: root.to_path_buf(),
        config,
        now: time::OffsetDateTime::now_utc(),
        proxy: crate::lifecycle::proxy::Proxy::None,
        proxy_gid: None,
        sans: Some(sans.clone()),
    };
    let certified = crate::lifecycle::certify(&app, &sans, Default::default())?;
    let bundles = crate::lifecycle::write_bundles(&app, &certified.index, &sans.primary_name)?;
    let pki = certified.pki.report;
    Ok(Outcome {
        host,
        sans,
        pki,
        bundles,
    })
}

/// registry.env as the full first boot writes it (without its owner): the HTTP secret (the
/// joined cluster's, the one there, or a new one) and the S3 keys, so tests run the
/// registry with what a node would have.
fn write_registry_env(
    root: &Path,
    config: &Config,
    clock: &dyn crate::cluster::wait::Clock,
    joined_secret: Option<String>,
) -> Result<()> {
    use crate::registry_env;
    let path = crate::fsutil::under_root(root, Path::new(crate::render::REGISTRY_ENV_PATH));
    let existing = std::fs::read_to_string(&path).ok();
    let keys = crate::cluster::credentials::wait_and_read(clock, root, config)?;
    let secret = match joined_secret.or_else(|| {
        existing
            .as_deref()
            .and_then(|t| registry_env::value(t, registry_env::HTTP_SECRET))
            .map(str::to_string)
    }) {
        Some(secret) => secret,
        None => registry_env::new_http_secret()?,
    };
    let wanted = registry_env::contents(&secret, keys.as_ref());
    if existing.as_deref() != Some(wanted.as_str()) {
        if let Some(dir) = path.parent() {
            crate::fsutil::ensure_dir(dir, 0o755)?;
        }
        crate::fsutil::write_atomic(&path, wanted.as_bytes(), 0o640)?;
    }
    Ok(())
}

/// --root must be an existing directory: a typo must not scatter files somewhere new.
fn check_root(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(UsageError(format!("--root {}: not a directory", root.display())).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError(format!(
            "--root {}: no such directory; create it first",
            root.display()
        ))
        .into()),
        Err(e) => Err(UsageError(format!("--root {}: {e}", root.display())).into()),
    }
}

/// A short human summary of a `--no-system` run for stdout.
pub fn summary(outcome: &Outcome) -> String {
    let mut out = String::new();
    let sans = &outcome.sans;
    let ips: Vec<String> = sans.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    let _ = writeln!(out, "registry name: {}", sans.primary_name);
    let _ = writeln!(
        out,
        "server certificate names: {}",
        sans.dns_names.join(", ")
    );
    let _ = writeln!(out, "server certificate addresses: {}", ips.join(", "));
    let _ = writeln!(out, "files:");
    for file in &outcome.pki.files {
        let _ = write!(
            out,
            "  {:<8} {}",
            file.action.to_string(),
            file.path.display()
        );
        if let Some(reason) = &file.reason {
            let _ = write!(out, " ({reason})");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "certificates:");
    for cert in &outcome.pki.certificates {
        let _ = writeln!(
            out,
            "  {:<9} {}: SHA-256 {} expires {}",
            cert.role, cert.name, cert.sha256, cert.not_after
        );
    }
    let _ = writeln!(out, "client bundles:");
    for bundle in &outcome.bundles {
        let _ = writeln!(
            out,
            "  {:<8} {}",
            bundle.action.to_string(),
            bundle.path.display()
        );
    }
    out
}
