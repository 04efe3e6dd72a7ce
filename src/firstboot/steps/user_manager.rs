//! Steps 5 and 6: the service user's systemd manager (lingering, started, Podman migrated
//! after new subordinate ids), and the pinned registry image in its storage.

use std::fs;

use anyhow::{bail, Context, Result};

use super::{Ctx, IMAGE_ARCHIVE_PATH, MIGRATE_PENDING_PATH, STATUS_INTERVAL, USER_MANAGER_TIMEOUT};
use crate::firstboot::status::ImageStatus;
use crate::firstboot::system::{Manager, PodmanImage};
use crate::oci_archive;
use crate::render;

/// Step 5: lingering (logind), the user's manager running, its runtime directory, and
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
    // logind starts the manager itself when lingering is enabled; then it is up already.
    if !status.is_up() {
        let (u, reload) = (unit.clone(), status.need_daemon_reload);
        ctx.change(format!("start {unit}"), move |sys| {
            if reload {
                sys.daemon_reload(Manager::System)?;
            }
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
    // The sockets are cheap to look at; asking systemd starts a process (up to a second
    // under TCG, on the CPU the manager is starting on): once the sockets are there, and
    // otherwise about once a second to notice a failure early.
    // Active at the first look (a rerun): with its sockets there, nothing more to ask.
    let active_before = status.active_state == "active";
    let mut asked_at = None;
    ctx.wait(
        USER_MANAGER_TIMEOUT,
        || {
            let sockets_up = socket.exists() && bus.exists();
            if sockets_up && active_before {
                return Ok(None);
            }
            let now = sys.elapsed();
            let due = asked_at.is_none_or(|at| now.saturating_sub(at) >= STATUS_INTERVAL);
            if !sockets_up && !due {
                return Ok(Some(format!("{} does not exist yet", socket.display())));
            }
            asked_at = Some(now);
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

/// Step 6: the pinned registry image in the service user's storage, verified by ID and
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
    let mut loaded = false;
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
                // No listing after the load (a Podman start, a second or more under TCG):
                // tagging by the pinned ID below fails unless the load made that image.
                loaded = true;
            }
            (id, "archive")
        }
        None => {
            let pinned = image.pinned();
            let find = |images: &[PodmanImage]| {
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
        let (p, i, name) = (pu.clone(), id.clone(), user.name.clone());
        ctx.change(format!("tag image sha256:{id} as {tag}"), move |sys| {
            let Err(e) = sys.podman_tag(&p, &i, tag) else {
                return Ok(());
            };
            if loaded && !sys.podman_images(&p)?.iter().any(|img| img.id == i) {
                bail!(
                    "after loading {IMAGE_ARCHIVE_PATH}, {name}'s storage has no image with ID \
                     sha256:{i} (the pinned image's config digest); the archive is left in place"
                );
            }
            Err(e)
        })?;
    }
    ctx.image = Some(ImageStatus {
        pinned: image.pinned(),
        id: format!("sha256:{id}"),
        tag: tag.to_string(),
        source: source.to_string(),
    });
    Ok(())
}
