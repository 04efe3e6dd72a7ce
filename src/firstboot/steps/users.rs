//! Step 4: the service and proxy users, their subordinate ids, Podman's directories, the
//! registry's storage and registry.env, and the proxy's group on the keys nginx reads.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::SysClock;
use super::{
    ensure_dir_owned, ensure_mode_owner, mode_of, read_optional, Ctx, MIGRATE_PENDING_PATH,
    NOLOGIN, PODMAN_DIR_MODE, REGISTRY_ENV_MODE, STATE_DIR_MODE, STORAGE_DIR_MODE, USER_HOME,
};
use crate::cloudinit;
use crate::cluster;
use crate::firstboot::subids;
use crate::firstboot::system::{NewUser, UserInfo};
use crate::fsutil;
use crate::pki::PkiPaths;
use crate::registry_env;
use crate::render;

/// Step 4: the service user, the proxy user, subordinate ids, Podman's state directories,
/// the registry's storage, registry.env, and the proxy's group on the keys nginx reads.
pub fn users(ctx: &mut Ctx<'_>) -> Result<()> {
    let service_name = ctx.config.service_user.clone();
    let proxy_name = ctx.config.proxy_user.clone();
    let (service, proxy_gid) = ensure_accounts(ctx, &service_name, &proxy_name)?;
    let Some(service) = service else {
        ctx.note(format!(
            "subordinate ids, directories and registry.env follow once the user {service_name} exists"
        ));
        return Ok(());
    };
    for file in ["/etc/subuid", "/etc/subgid"] {
        ensure_subids(ctx, file, &service)?;
    }
    ensure_service_dirs(ctx, &service)?;
    ensure_registry_env(ctx, &service)?;
    match proxy_gid {
        Some(gid) => give_keys_to_proxy_group(ctx, gid)?,
        None => ctx.note(format!(
            "the keys nginx reads go to the group {proxy_name} once it exists"
        )),
    }
    ctx.service = Some(service);
    Ok(())
}

/// The service user, the proxy user and the proxy's group (registry-proxy.service runs
/// with Group=<proxy user>); `None` for what a dry run has not made yet.
fn ensure_accounts(
    ctx: &mut Ctx<'_>,
    service_name: &str,
    proxy_name: &str,
) -> Result<(Option<UserInfo>, Option<u32>)> {
    let service = ensure_user(ctx, service_name, "regimage registry (rootless Podman)")?;
    ensure_user(ctx, proxy_name, "regimage TLS proxy (nginx)")?;
    let proxy_gid = ensure_group(ctx, proxy_name)?;
    Ok((service, proxy_gid))
}

/// Podman's state directories and the registry's storage, owned by the service user.
fn ensure_service_dirs(ctx: &mut Ctx<'_>, service: &UserInfo) -> Result<()> {
    if service.home.starts_with(render::PODMAN_STATE_DIR) {
        tracing::warn!(
            "the home of {} ({}) is inside {}; Podman's state and the home should be apart",
            service.name,
            service.home.display(),
            render::PODMAN_STATE_DIR
        );
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
    if ctx.config.is_s3() {
        // Images live in the bucket; the container mounts no storage directory.
        return Ok(());
    }
    let storage = ctx
        .config
        .registry
        .storage_dir
        .to_string_lossy()
        .into_owned();
    fsutil::refuse_symlink(&ctx.path(&storage), "registry.storage-dir")?;
    ensure_dir_owned(ctx, &storage, STORAGE_DIR_MODE, service.uid, service.gid)
}

/// private/, registry.pem and clients/ca.crt go to the proxy's group (modes kept), so nginx
/// reads them; pki leaves groups alone so the owner seam stays in [`System`].
///
/// [`System`]: crate::firstboot::system::System
fn give_keys_to_proxy_group(ctx: &mut Ctx<'_>, gid: u32) -> Result<()> {
    let paths = PkiPaths::new(Path::new("/"));
    for path in [&paths.private_dir, &paths.server_pem, &paths.client_ca_cert] {
        let target = path.to_string_lossy().into_owned();
        if ctx.path(&target).exists() {
            let mode = mode_of(&ctx.path(&target))?;
            ensure_mode_owner(ctx, &target, mode, None, gid)?;
        }
    }
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

/// registry.env holds REGISTRY_HTTP_SECRET, made once and kept after (a new secret would
/// break uploads in flight across a restart), or the cluster's from the join file; and,
/// with S3 storage and a credentials file, the S3 keys (waiting for that file, bounded).
fn ensure_registry_env(ctx: &mut Ctx<'_>, service: &UserInfo) -> Result<()> {
    let target = render::REGISTRY_ENV_PATH;
    let path = ctx.path(target);
    let existing = read_optional(&path)?;
    if ctx.opts.dry_run {
        if ctx
            .config
            .s3()
            .is_some_and(|s3| s3.credentials_file.is_some())
        {
            ctx.note(
                "a run waits for the S3 credentials file, then writes its keys to registry.env"
                    .into(),
            );
        }
        if existing
            .as_deref()
            .and_then(|t| registry_env::value(t, registry_env::HTTP_SECRET))
            .is_none()
        {
            ctx.change(format!("make {target} with a REGISTRY_HTTP_SECRET"), |_| {
                Ok(())
            })?;
        }
        return Ok(());
    }
    let clock = SysClock(ctx.sys);
    let now = time::OffsetDateTime::now_utc();
    let joined = cluster::join::wait_and_read(&clock, ctx.root, ctx.config, now)?;
    let keys = cluster::credentials::wait_and_read(&clock, ctx.root, ctx.config)?;
    let kept = existing
        .as_deref()
        .and_then(|t| registry_env::value(t, registry_env::HTTP_SECRET))
        .map(str::to_string);
    let (secret, whence) = match (joined, kept) {
        (Some(join), _) => (join.http_secret, "the cluster's HTTP secret"),
        (None, Some(kept)) => (kept, "its HTTP secret"),
        (None, None) => (registry_env::new_http_secret()?, "a new HTTP secret"),
    };
    let wanted = registry_env::contents(&secret, keys.as_ref());
    if existing.as_deref() != Some(wanted.as_str()) {
        let with_keys = if keys.is_some() {
            " and the S3 keys"
        } else {
            ""
        };
        let p = path.clone();
        let gid = service.gid;
        ctx.change(
            format!(
                "write {target} with {whence}{with_keys} (0640 root:{})",
                service.name
            ),
            move |sys| {
                if let Some(dir) = p.parent() {
                    if !dir.is_dir() {
                        fsutil::ensure_dir(dir, 0o755)?;
                    }
                }
                fsutil::write_atomic(&p, wanted.as_bytes(), REGISTRY_ENV_MODE)?;
                sys.chown(&p, 0, gid)
            },
        )?;
    }
    ensure_mode_owner(ctx, target, REGISTRY_ENV_MODE, Some(0), service.gid)
}
