//! The first-boot steps, in order. Each one looks at the machine first and changes only
//! what differs, so any step can run again after a kill anywhere and a run on a ready
//! machine changes nothing. Changes go through `Ctx::change`, which --dry-run turns into
//! "would ..." lines.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::status::ImageStatus;
use super::subids;
use super::system::{Manager, NewUser, PodmanUser, Probe, System, UserInfo};
use super::ufw::{self, Wanted};
use super::Options;
use crate::bundle::{self, BundleReport};
use crate::cloudinit;
use crate::config::Config;
use crate::fsutil;
use crate::identity::{self, Sans};
use crate::oci_archive;
use crate::pki::{self, Action, PkiPaths, PkiReport};
use crate::render;

/// The registry image baked into qcow2 builds.
pub const IMAGE_ARCHIVE_PATH: &str = cloudinit::REGISTRY_ARCHIVE_PATH;
/// Left while Podman's storage still has to learn new subordinate ids (`podman system
/// migrate`), so a kill between writing /etc/subuid and migrating is not forgotten.
pub const MIGRATE_PENDING_PATH: &str = "/var/lib/regimage/podman-migrate.pending";
/// Home of the users first boot creates: none (the same as the cloud-init users).
pub const USER_HOME: &str = cloudinit::SYSTEM_USER_HOME;
const NOLOGIN: &str = "/usr/sbin/nologin";
const STATE_DIR_MODE: u32 = 0o700;
const PODMAN_DIR_MODE: u32 = 0o700;
const STORAGE_DIR_MODE: u32 = 0o750;
const REGISTRY_ENV_MODE: u32 = 0o640;
const REGISTRY_UNIT: &str = "registry.service";
const PROXY_UNIT: &str = "registry-proxy.service";
/// How long user@UID.service may take to come up (TCG machines are slow).
const USER_MANAGER_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_secs(1);

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

/// Step 1: the names and addresses clients use, merged into the server certificate's SANs.
pub fn host_identity(ctx: &mut Ctx<'_>) -> Result<()> {
    let facts = ctx.sys.host_facts();
    let sans = identity::server_sans(ctx.config, &facts);
    if sans.primary_name.starts_with("*.") {
        bail!(
            "hostname {:?} is a wildcard, which cannot name the registry in clients' certs.d \
             directories; set hostname to one name and put the wildcard in extra-names",
            sans.primary_name
        );
    }
    let ips: Vec<String> = sans.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    ctx.note(format!(
        "registry name {}; certificate names {}; addresses {}",
        sans.primary_name,
        sans.dns_names.join(", "),
        if ips.is_empty() {
            "none".to_string()
        } else {
            ips.join(", ")
        }
    ));
    ctx.sans = Some(sans);
    Ok(())
}

/// Step 2: the certificates. Existing valid ones are kept; a CA is never made again (a CA
/// key left without its certificate by a kill between the two writes gets its certificate
/// again, from that key: see pki.rs).
pub fn pki(ctx: &mut Ctx<'_>) -> Result<()> {
    let paths = PkiPaths::new(ctx.root);
    if ctx.opts.dry_run {
        let mut files = vec![
            paths.ca_cert.clone(),
            paths.ca_key.clone(),
            paths.client_ca_cert.clone(),
            paths.client_ca_key.clone(),
            paths.server_cert.clone(),
            paths.server_key.clone(),
        ];
        for client in &ctx.config.clients {
            files.push(paths.client_cert(client));
            files.push(paths.client_key(client));
        }
        for file in files {
            let shown = Path::new("/").join(file.strip_prefix(ctx.root).unwrap_or(&file));
            if file.exists() {
                ctx.note(format!("{} exists: kept if valid", shown.display()));
            } else {
                ctx.change(format!("make {}", shown.display()), |_| Ok(()))?;
            }
        }
        return Ok(());
    }
    let sans = ctx.sans()?.clone();
    // Groups are set by the users step (through System), so the owner seam stays in one place.
    let report = pki::ensure_pki(&paths, ctx.config, &sans, None)?;
    for file in &report.files {
        if file.action != Action::Kept {
            let reason = file
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            ctx.changes
                .push(format!("{} {}{reason}", file.action, file.path.display()));
        }
    }
    ctx.pki = Some(report);
    Ok(())
}

/// Step 3: the service user, the proxy user, subordinate ids, Podman's state directories,
/// the registry's storage, registry.env, and the proxy's group on the keys nginx reads.
pub fn users(ctx: &mut Ctx<'_>) -> Result<()> {
    let service_name = ctx.config.service_user.clone();
    let proxy_name = ctx.config.proxy_user.clone();
    let service = ensure_user(ctx, &service_name, "regimage registry (rootless Podman)")?;
    ensure_user(ctx, &proxy_name, "regimage TLS proxy (nginx)")?;
    // registry-proxy.service runs with Group=<proxy user>.
    let proxy_gid = ensure_group(ctx, &proxy_name)?;
    let Some(service) = service else {
        ctx.note(format!(
            "subordinate ids, directories and registry.env follow once the user {service_name} exists"
        ));
        return Ok(());
    };
    if service.home.starts_with(render::PODMAN_STATE_DIR) {
        tracing::warn!(
            "the home of {} ({}) is inside {}; Podman's state and the home should be apart",
            service.name,
            service.home.display(),
            render::PODMAN_STATE_DIR
        );
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        ensure_subids(ctx, file, &service)?;
    }
    ensure_dir_owned(
        ctx,
        render::PODMAN_STATE_DIR,
        PODMAN_DIR_MODE,
        service.uid,
        service.gid,
    )?;
    for sub in ["root", "tmp", "xdg-data", "xdg-config"] {
        let dir = format!("{}/{sub}", render::PODMAN_STATE_DIR);
        ensure_dir_owned(ctx, &dir, PODMAN_DIR_MODE, service.uid, service.gid)?;
    }
    let storage = ctx
        .config
        .registry
        .storage_dir
        .to_string_lossy()
        .into_owned();
    ensure_dir_owned(ctx, &storage, STORAGE_DIR_MODE, service.uid, service.gid)?;
    ensure_registry_env(ctx, &service)?;
    match proxy_gid {
        Some(gid) => {
            let paths = PkiPaths::new(Path::new("/"));
            for path in [&paths.private_dir, &paths.server_key, &paths.client_ca_cert] {
                let target = path.to_string_lossy().into_owned();
                if ctx.path(&target).exists() {
                    let mode = mode_of(&ctx.path(&target))?;
                    ensure_mode_owner(ctx, &target, mode, None, gid)?;
                }
            }
        }
        None => ctx.note(format!(
            "the keys nginx reads go to the group {proxy_name} once it exists"
        )),
    }
    ctx.service = Some(service);
    Ok(())
}

fn ensure_user(ctx: &mut Ctx<'_>, name: &str, comment: &str) -> Result<Option<UserInfo>> {
    if let Some(user) = ctx.sys.lookup_user(name)? {
        ctx.note(format!("user {name} exists (uid {})", user.uid));
        return Ok(Some(user));
    }
    let spec = NewUser {
        name: name.to_string(),
        home: PathBuf::from(USER_HOME),
        comment: comment.to_string(),
    };
    ctx.change(
        format!("create the system user {name} (shell {NOLOGIN}, home {USER_HOME})"),
        |sys| sys.create_user(&spec),
    )?;
    if ctx.opts.dry_run {
        return Ok(None);
    }
    match ctx.sys.lookup_user(name)? {
        Some(user) => Ok(Some(user)),
        None => bail!("the user {name} was created but cannot be looked up"),
    }
}

fn ensure_group(ctx: &mut Ctx<'_>, name: &str) -> Result<Option<u32>> {
    if let Some(gid) = ctx.sys.lookup_group(name)? {
        return Ok(Some(gid));
    }
    // Usually made with the user (--user-group); a user made by hand may lack it.
    if ctx.sys.lookup_user(name)?.is_none() && ctx.opts.dry_run {
        return Ok(None);
    }
    let n = name.to_string();
    ctx.change(format!("create the system group {name}"), move |sys| {
        sys.create_group(&n)
    })?;
    if ctx.opts.dry_run {
        return Ok(None);
    }
    ctx.sys
        .lookup_group(name)?
        .map(Some)
        .with_context(|| format!("looking up the group {name} after creating it"))
}

fn ensure_subids(ctx: &mut Ctx<'_>, file: &str, user: &UserInfo) -> Result<()> {
    let path = ctx.path(file);
    let text = read_optional(&path)?.unwrap_or_default();
    let plan =
        subids::plan(&text, &user.name, user.uid).with_context(|| format!("planning {file}"))?;
    let range = &plan.range;
    let last = range.start + range.count - 1;
    let Some(new_text) = plan.new_text else {
        ctx.note(format!(
            "{file}: {} keeps {}-{last}",
            user.name, range.start
        ));
        return Ok(());
    };
    let mode = if path.exists() {
        mode_of(&path)?
    } else {
        0o644
    };
    let pending = ctx.path(MIGRATE_PENDING_PATH);
    let state_dir = ctx.path(cloudinit::STATE_DIR);
    ctx.change(
        format!(
            "give {} the subordinate ids {}-{last} in {file}",
            user.name, range.start
        ),
        move |_| {
            // The marker first: a kill after the new range is in place still migrates.
            fsutil::ensure_dir(&state_dir, STATE_DIR_MODE)?;
            fsutil::write_atomic(&pending, b"", 0o600)?;
            fsutil::write_atomic(&path, new_text.as_bytes(), mode)
        },
    )
}

/// registry.env holds REGISTRY_HTTP_SECRET; made once, kept after (a new secret would
/// break uploads in flight across a restart).
fn ensure_registry_env(ctx: &mut Ctx<'_>, service: &UserInfo) -> Result<()> {
    let target = render::REGISTRY_ENV_PATH;
    let path = ctx.path(target);
    let has_secret = read_optional(&path)?.is_some_and(|text| {
        text.lines().any(|l| {
            l.strip_prefix("REGISTRY_HTTP_SECRET=")
                .is_some_and(|v| !v.trim().is_empty())
        })
    });
    if !has_secret {
        let p = path.clone();
        let gid = service.gid;
        ctx.change(
            format!("make {target} with a new REGISTRY_HTTP_SECRET (0640 root:{})", service.name),
            move |sys| {
                let secret = random_hex(32)?;
                if let Some(dir) = p.parent() {
                    if !dir.is_dir() {
                        fsutil::ensure_dir(dir, 0o755)?;
                    }
                }
                fsutil::write_atomic(
                    &p,
                    format!("# Made by regimage at first boot; keep it.\nREGISTRY_HTTP_SECRET={secret}\n").as_bytes(),
                    REGISTRY_ENV_MODE,
                )?;
                sys.chown(&p, 0, gid)
            },
        )?;
        if ctx.opts.dry_run {
            return Ok(());
        }
    }
    ensure_mode_owner(ctx, target, REGISTRY_ENV_MODE, Some(0), service.gid)
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading random bytes from /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// Step 4: lingering (logind), the user's manager running, its runtime directory, and
/// `podman system migrate` when the subordinate ids changed.
pub fn user_manager(ctx: &mut Ctx<'_>) -> Result<()> {
    let Some(user) = ctx.service_user("lingering and the user manager follow")? else {
        return Ok(());
    };
    if !ctx.sys.linger_enabled(&user.name)? {
        let uid = user.uid;
        ctx.change(
            format!("enable lingering for {} (logind SetUserLinger)", user.name),
            move |sys| sys.enable_linger(uid),
        )?;
    }
    let unit = format!("user@{}.service", user.uid);
    let status = ctx.sys.unit_status(Manager::System, &unit)?;
    if !status.is_up() {
        let u = unit.clone();
        ctx.change(format!("start {unit}"), move |sys| {
            sys.start_unit(Manager::System, &u)
        })?;
    }
    if ctx.opts.dry_run {
        return Ok(());
    }
    let runtime = ctx.path(format!("/run/user/{}", user.uid));
    let socket = runtime.join("systemd/private");
    // `systemctl --user -M UID@` (how real.rs reaches this manager) goes through the
    // user's D-Bus socket (dbus-user-session), made when the manager starts its sockets.
    let bus = runtime.join("bus");
    let sys = ctx.sys;
    ctx.wait(
        USER_MANAGER_TIMEOUT,
        || {
            let status = sys.unit_status(Manager::System, &unit)?;
            if status.active_state == "failed" {
                bail!(
                    "{unit} failed; look at it with `systemctl status {unit}` and `journalctl -b -u {unit}`"
                );
            }
            Ok(if status.active_state != "active" {
                Some(format!("{unit} is {}", status.active_state))
            } else if !socket.exists() {
                Some(format!("{} does not exist yet", socket.display()))
            } else if !bus.exists() {
                Some(format!("{} does not exist yet", bus.display()))
            } else {
                None
            })
        },
        |why| {
            format!(
                "the user manager of {} did not come up within {} s ({why}); look at it with \
                 `systemctl status {unit}`",
                user.name,
                USER_MANAGER_TIMEOUT.as_secs()
            )
        },
    )?;
    let pending = ctx.path(MIGRATE_PENDING_PATH);
    if pending.exists() {
        let pu = ctx.podman_user(&user);
        ctx.change(
            format!(
                "run `podman system migrate` for {} (its subordinate ids changed)",
                user.name
            ),
            move |sys| {
                sys.podman_migrate(&pu)?;
                fs::remove_file(&pending).with_context(|| format!("removing {}", pending.display()))
            },
        )?;
    }
    Ok(())
}

/// Step 5: the pinned registry image in the service user's storage, verified by ID and
/// tagged for the unit. A baked archive is checked against the pin before it is loaded.
pub fn registry_image(ctx: &mut Ctx<'_>) -> Result<()> {
    let image = ctx.config.image_ref()?;
    let archive = ctx.path(IMAGE_ARCHIVE_PATH);
    // The archive is checked even in a dry run: a wrong one should show before a real run.
    let from_archive = if archive.exists() {
        let found = oci_archive::inspect_pinned(&archive, &image.digest).with_context(|| {
            format!(
                "checking {IMAGE_ARCHIVE_PATH} against registry.image (nothing was loaded or \
                 started; the archive is left in place)"
            )
        })?;
        ctx.note(format!(
            "{IMAGE_ARCHIVE_PATH} holds the pinned image (manifest {}, image ID {})",
            found.manifest_digest, found.config_digest
        ));
        Some(found)
    } else {
        None
    };
    let Some(user) = ctx.service_user("the registry image is loaded")? else {
        return Ok(());
    };
    let pu = ctx.podman_user(&user);
    if ctx.opts.dry_run && !ctx.path(&pu.runtime_dir).is_dir() {
        let what = match &from_archive {
            Some(_) => format!(
                "load {IMAGE_ARCHIVE_PATH} into the storage of {}",
                user.name
            ),
            None => format!("pull {} as {}", image.pinned(), user.name),
        };
        ctx.change(what, |_| Ok(()))?;
        ctx.change(format!("tag it {}", render::REGISTRY_IMAGE_TAG), |_| Ok(()))?;
        return Ok(());
    }
    let images = ctx.sys.podman_images(&pu)?;
    let (id, source) = match &from_archive {
        Some(found) => {
            let id = found
                .config_digest
                .trim_start_matches("sha256:")
                .to_string();
            if !images.iter().any(|i| i.id == id) {
                let (p, a) = (pu.clone(), archive.clone());
                ctx.change(
                    format!(
                        "load {IMAGE_ARCHIVE_PATH} into the storage of {} (podman load)",
                        user.name
                    ),
                    move |sys| sys.podman_load(&p, &a),
                )?;
                if !ctx.opts.dry_run && !ctx.sys.podman_images(&pu)?.iter().any(|i| i.id == id) {
                    bail!(
                        "after loading {IMAGE_ARCHIVE_PATH}, {}'s storage has no image with ID \
                         sha256:{id} (the pinned image's config digest); the archive is left in place",
                        user.name
                    );
                }
            }
            (id, "archive")
        }
        None => {
            let pinned = image.pinned();
            let find = |images: &[super::system::PodmanImage]| {
                images
                    .iter()
                    .find(|i| i.has_repo_digest(&pinned))
                    .map(|i| i.id.clone())
            };
            let id = match find(&images) {
                Some(id) => id,
                None => {
                    let (p, r) = (pu.clone(), pinned.clone());
                    ctx.change(format!("pull {pinned} as {}", user.name), move |sys| {
                        sys.podman_pull(&p, &r)
                    })?;
                    if ctx.opts.dry_run {
                        String::new()
                    } else {
                        find(&ctx.sys.podman_images(&pu)?).with_context(|| {
                            format!("after pulling {pinned}, {}'s storage has no image with that digest", user.name)
                        })?
                    }
                }
            };
            (id, "pull")
        }
    };
    let tag = render::REGISTRY_IMAGE_TAG;
    let tagged = images.iter().any(|i| i.id == id && i.has_name(tag));
    if !tagged {
        let (p, i) = (pu.clone(), id.clone());
        ctx.change(format!("tag image sha256:{id} as {tag}"), move |sys| {
            sys.podman_tag(&p, &i, tag)
        })?;
        if !ctx.opts.dry_run
            && !ctx
                .sys
                .podman_images(&pu)?
                .iter()
                .any(|i| i.id == id && i.has_name(tag))
        {
            bail!(
                "after tagging, {tag} does not name image sha256:{id} in {}'s storage",
                user.name
            );
        }
    }
    ctx.image = Some(ImageStatus {
        pinned: image.pinned(),
        id: format!("sha256:{id}"),
        tag: tag.to_string(),
        source: source.to_string(),
    });
    Ok(())
}

/// Step 6: ufw. SSH stays reachable, the pull port opens, the push port only for the
/// configured networks, the registry port never; deny by default; enabled last.
pub fn firewall(ctx: &mut Ctx<'_>) -> Result<()> {
    let ssh_ports = match ctx.sys.ssh_ports()? {
        Some(ports) => ports,
        None => {
            let port = ufw::DEFAULT_SSH_PORT;
            ctx.note(format!(
                "sshd is not installed; keeping its default port {port} open"
            ));
            vec![port]
        }
    };
    let cfg = ctx.config;
    let mut open: Vec<(u16, String)> = ssh_ports
        .iter()
        .map(|p| (*p, "regimage: ssh".to_string()))
        .collect();
    open.push((cfg.ports.pull, "regimage: pulls".into()));
    let wanted = Wanted {
        open,
        restricted: Some((
            cfg.ports.push,
            cfg.push_allowed_cidrs.clone(),
            "regimage: pushes (mTLS)".into(),
        )),
        closed: vec![cfg.ports.registry],
    };
    let state = ctx.sys.ufw_state()?;
    let commands = ufw::plan(&state, &wanted);
    if commands.is_empty() {
        ctx.note(format!(
            "ufw is enabled with every rule in place (ssh {})",
            ssh_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for command in commands {
        ctx.change(command.describe(), move |sys| sys.ufw(&command))?;
    }
    Ok(())
}

/// Step 7: the registry (the service user's manager) and the proxy (the system manager)
/// enabled for later boots and started now.
pub fn services(ctx: &mut Ctx<'_>) -> Result<()> {
    let Some(user) = ctx.service_user("the registry and the proxy are started")? else {
        return Ok(());
    };
    let user_manager_up = ctx
        .path(format!("/run/user/{}/systemd/private", user.uid))
        .exists();
    for (manager, unit) in [
        (Manager::User(user.uid), REGISTRY_UNIT),
        (Manager::System, PROXY_UNIT),
    ] {
        if ctx.opts.dry_run && manager != Manager::System && !user_manager_up {
            ctx.change(format!("enable and start {unit} in {manager}"), |_| Ok(()))?;
            continue;
        }
        let status = ctx.sys.unit_status(manager, unit)?;
        if status.load_state == "not-found" {
            bail!(
                "{unit} is not installed in {manager}; `regimage render` (or the image build) \
                 puts it in place"
            );
        }
        if status.unit_file_state != "enabled" {
            ctx.change(format!("enable {unit} in {manager}"), move |sys| {
                sys.enable_unit(manager, unit)
            })?;
        }
        if !status.is_up() {
            ctx.change(format!("start {unit} in {manager}"), move |sys| {
                sys.start_unit(manager, unit)
            })?;
        }
    }
    Ok(())
}

/// Step 8: the registry answers on loopback and the proxy on the pull port, over TLS checked
/// with the new server CA; bounded by --health-timeout.
pub fn health(ctx: &mut Ctx<'_>) -> Result<()> {
    let host = ctx.sans()?.primary_name.clone();
    let ports = ctx.config.ports.clone();
    let registry_url = format!("http://127.0.0.1:{}/v2/", ports.registry);
    // registry_host brackets an IPv6 address (and leaves 443 off, so the port is added here).
    let pull_url = format!(
        "https://{}:{}/v2/",
        bundle::registry_host(&host, 443),
        ports.pull
    );
    // curl's --resolve makes the certificate's name reach this machine; an address is used as is.
    let resolve = host
        .parse::<std::net::IpAddr>()
        .is_err()
        .then(|| format!("{host}:{}:127.0.0.1", ports.pull));
    let timeout = ctx.opts.health_timeout;
    if ctx.opts.dry_run {
        ctx.note(format!(
            "a run waits up to {} s for GET {registry_url} and {pull_url} to answer 200",
            timeout.as_secs()
        ));
        return Ok(());
    }
    let user = ctx.service.clone().context("the users step has not run")?;
    let ca = PkiPaths::new(ctx.root).ca_cert;
    let sys = ctx.sys;
    let registry_probe = Probe {
        url: registry_url.clone(),
        cacert: None,
        resolve: None,
    };
    let pull_probe = Probe {
        url: pull_url.clone(),
        cacert: Some(ca.clone()),
        resolve,
    };
    let registry_hint = format!(
        "look at it with `systemctl --user -M {}@ status {REGISTRY_UNIT}` and `journalctl -b _UID={}`",
        user.name, user.uid
    );
    let proxy_hint = format!(
        "look at it with `systemctl status {PROXY_UNIT}` and `journalctl -b -u {PROXY_UNIT}`"
    );
    let start = sys.elapsed();
    let left = || timeout.saturating_sub(sys.elapsed().saturating_sub(start));
    let probe = |probe: &Probe,
                 unit_manager: Manager,
                 unit: &str,
                 hint: &str,
                 what: &str|
     -> Result<Option<String>> {
        let status = sys.unit_status(unit_manager, unit)?;
        if status.active_state == "failed" {
            bail!("{what} is not up: {unit} failed; {hint}");
        }
        let answer = match sys.http_status(probe) {
            Ok(200) => return Ok(None),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => format!("{e:#}"),
        };
        // A start job that never runs is held by an ordering dependency; one on
        // regimage-firstboot.service would hold it until this run gives up.
        Ok(Some(if status.job_pending && !status.is_up() {
            format!(
                "{answer}; {unit} is {} with its start job still queued (is it ordered after \
                 regimage-firstboot.service?)",
                status.active_state
            )
        } else {
            format!("{answer}; {unit} is {}", status.active_state)
        }))
    };
    ctx.wait(
        left(),
        || probe(&registry_probe, Manager::User(user.uid), REGISTRY_UNIT, &registry_hint, "the registry"),
        |why| {
            format!(
                "the registry is not up: GET {registry_url} did not answer 200 within {} s (last: {why}); {registry_hint}",
                timeout.as_secs()
            )
        },
    )?;
    ctx.wait(
        left(),
        || probe(&pull_probe, Manager::System, PROXY_UNIT, &proxy_hint, "the TLS proxy"),
        |why| {
            format!(
                "the TLS proxy is not up: GET {pull_url} (TLS checked with the new server CA {}) did \
                 not answer 200 within {} s (last: {why}); {proxy_hint}",
                ca.display(),
                timeout.as_secs()
            )
        },
    )?;
    ctx.note(format!("{registry_url} and {pull_url} answer 200"));
    Ok(())
}

/// Step 9: the client bundles in the output directory (root only).
pub fn output(ctx: &mut Ctx<'_>) -> Result<()> {
    let host = ctx.sans()?.primary_name.clone();
    if ctx.opts.dry_run {
        let out = ctx.config.output_dir.display().to_string();
        for client in ctx.config.clients.clone() {
            let bundle = format!("{out}/{client}.tar.gz");
            if ctx.path(&bundle).is_file() {
                ctx.note(format!(
                    "{bundle} exists: rewritten only if its certificates change"
                ));
            } else {
                ctx.change(format!("write {bundle}"), |_| Ok(()))?;
            }
        }
        if ctx.path(render::FIRSTBOOT_DONE_PATH).is_file() {
            ctx.note(format!(
                "{} exists: first boot finished before",
                render::FIRSTBOOT_DONE_PATH
            ));
        } else {
            ctx.change(
                format!(
                    "write {out}/status.json, then {}",
                    render::FIRSTBOOT_DONE_PATH
                ),
                |_| Ok(()),
            )?;
        }
        return Ok(());
    }
    let paths = PkiPaths::new(ctx.root);
    let bundles = bundle::write_bundles(ctx.root, ctx.config, &host, &paths)?;
    for b in &bundles {
        if b.action != Action::Kept {
            ctx.changes
                .push(format!("{} {}", b.action, b.path.display()));
        }
    }
    ctx.bundles = bundles;
    Ok(())
}
