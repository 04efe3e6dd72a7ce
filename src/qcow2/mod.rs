//! `regimage build qcow2`: bakes the appliance into a cloud image.
//!
//! Stages:
//! 1. prepare: check the registry image archive against the pin, resolve the base (a file,
//!    or the official cloud image, downloaded and verified), make a copy-on-write overlay of
//!    it in a temporary directory beside the output (the base is only read), the seed ISO
//!    and the payload drive (the archive and the binary);
//! 2. boot+bake: boot the overlay in QEMU (KVM or TCG), where cloud-init applies the payload
//!    of [`crate::cloudinit::Mode::Bake`], resets the image and powers off; the guest's
//!    console goes to `OUT.serial.log` and its `regimage-bake:` steps to the progress line;
//! 3. convert: `qemu-img convert -c -O qcow2` flattens and compresses the overlay into a
//!    temporary file, renamed to the output.
//!
//! Nothing is written at the output path unless every stage succeeded. SIGINT and SIGTERM
//! stop the VM (or qemu-img) and remove the temporary directory; a second SIGINT exits at
//! once. A failed bake ends with the last lines of the serial log and its path.

pub mod base;
pub mod progress;
pub mod qemu;
pub mod seed;
pub mod serial;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cloudinit::{self, Mode};
use crate::config::Config;
use crate::distro::Distro;
use crate::render::FileEntry;
use progress::{format_duration, format_size, Progress};
use qemu::{Accel, AccelKind, VmEnd};

/// The overlay (and so the output) has at least this virtual size; cloud-init's growpart
/// grows the root filesystem into it during the bake, and again at the real first boot.
pub const MIN_DISK_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Lines of the serial log shown when a bake fails.
const FAILURE_TAIL_LINES: usize = 30;
/// Mode of the output image: it holds nothing secret (keys are made at first boot).
const OUTPUT_MODE: u32 = 0o644;

/// SIGINT or SIGTERM arrived: the VM was stopped and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal; the VM was stopped and nothing was written")]
pub struct Interrupted;

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// A qcow2 or raw image file.
    File(PathBuf),
    /// The official cloud image of this distribution (its table row has one); the URL
    /// overrides the table's directory (a mirror, or a test server).
    Official {
        distro: Distro,
        base_url: Option<String>,
    },
}

/// Everything the bake needs besides the config.
#[derive(Debug, Clone)]
pub struct BakeOptions {
    pub base: BaseSource,
    pub archive: PathBuf,
    pub output: PathBuf,
    pub accel: Accel,
    pub distro: Distro,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// The regimage binary to install in the image (on the payload drive).
    pub binary: Vec<u8>,
    /// Where an official base is cached (`None`: [`base::cache_dir`]).
    pub cache_dir: Option<PathBuf>,
}

/// What a good bake did, for the summary.
#[derive(Debug, Clone)]
pub struct BakeReport {
    pub output: PathBuf,
    pub output_bytes: u64,
    pub virtual_bytes: u64,
    pub serial_log: PathBuf,
    pub accel: AccelKind,
    pub prepare: Duration,
    pub bake: Duration,
    pub convert: Duration,
    pub manifest_digest: String,
    pub config_digest: String,
}

/// `OUT.serial.log`: the guest's console, kept beside the output.
pub fn serial_log_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".serial.log");
    PathBuf::from(name)
}

/// Registers SIGINT and SIGTERM: the first sets the returned flag (the bake stops cleanly);
/// a second SIGINT while the flag is set exits at once with status 130.
pub fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit is checked before the flag is set.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .context("registering a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("registering a signal handler")?;
    }
    Ok(flag)
}

/// Runs the three stages (see the module docs).
pub fn bake(config: &Config, files: &[FileEntry], opts: &BakeOptions) -> Result<BakeReport> {
    let interrupted = install_signal_flag()?;
    let mut progress = Progress::new();
    bake_with(config, files, opts, &interrupted, &mut progress)
}

/// [`bake`] with the signal flag and the display given.
pub fn bake_with(
    config: &Config,
    files: &[FileEntry],
    opts: &BakeOptions,
    interrupted: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<BakeReport> {
    let check = |p: &mut Progress| -> Result<()> {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            p.clear();
            return Err(Interrupted.into());
        }
        Ok(())
    };

    // ---- prepare -------------------------------------------------------------------
    let started = Instant::now();
    progress.stage("prepare");
    let qemu_img = qemu::find_tool("qemu-img", "qemu-utils")?;
    let qemu_system = qemu::qemu_system()?;
    let genisoimage = seed::genisoimage()?;

    let pin = config.image_ref()?;
    let archive = crate::oci_archive::inspect_pinned(&opts.archive, &pin.digest).map_err(|e| {
        match e.downcast::<crate::oci_archive::PinMismatch>() {
            Ok(m) => anyhow::Error::new(crate::error::UsageError(m.to_string())),
            Err(e) => e,
        }
    })?;
    progress.note(&format!(
        "registry image archive {}: manifest {} matches registry.image",
        opts.archive.display(),
        archive.manifest_digest
    ));
    check(progress)?;

    let base_path = match &opts.base {
        BaseSource::File(path) => path.clone(),
        BaseSource::Official { distro, base_url } => {
            let image = distro.info().cloud_image.as_ref().with_context(|| {
                format!("regimage knows no official cloud image for {distro}; give --base FILE")
            })?;
            let cache = match &opts.cache_dir {
                Some(dir) => dir.clone(),
                None => base::cache_dir()?,
            };
            base::ensure_cloud_image(image, base_url.as_deref(), &cache, interrupted, progress)?
                .path
        }
    };
    let base_path = std::fs::canonicalize(&base_path)
        .with_context(|| format!("finding the base image {}", base_path.display()))?;
    let out_dir = parent_dir(&opts.output);
    refuse_overlap(&base_path, &opts.archive, &opts.output)?;
    let info = qemu::image_info(&qemu_img, &base_path)?;
    qemu::check_base_format(&info, &base_path)?;
    check(progress)?;

    // Beside the output: the rename of the result stays on one filesystem. Removed on drop.
    let work = tempfile::Builder::new()
        .prefix(".regimage-bake-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a temporary directory in {}", out_dir.display()))?;
    let overlay = work.path().join("overlay.qcow2");
    let disk_size = info.virtual_size.max(MIN_DISK_BYTES);
    qemu::create_overlay(&qemu_img, &base_path, &info.format, &overlay, disk_size)?;
    let drive = seed::make_payload_drive(
        &opts.archive,
        &opts.binary,
        &work.path().join("payload.img"),
    )?;
    check(progress)?;

    let mode = Mode::Bake {
        archive: &drive.archive,
        binary: &drive.binary,
    };
    let user_data = cloudinit::build_user_data_for(config, files, opts.distro, mode)
        .context("building the bake's cloud-config")?;
    let seed_iso = seed::make_seed_iso(
        &genisoimage,
        work.path(),
        &user_data.text,
        &seed::meta_data(&seed::instance_id()),
    )?;
    let prepare = started.elapsed();
    progress.note(&format!(
        "prepared in {}: base {} ({}, {} virtual), overlay {}, seed with {} of user-data",
        format_duration(prepare),
        base_path.display(),
        info.format,
        format_size(info.virtual_size),
        format_size(disk_size),
        format_size(user_data.text.len() as u64),
    ));
    check(progress)?;

    // ---- boot+bake -----------------------------------------------------------------
    let serial_log = serial_log_path(&opts.output);
    let spec = qemu::VmSpec {
        overlay: overlay.clone(),
        seed_iso,
        payload_drive: drive.path.clone(),
        serial_log: serial_log.clone(),
        qemu_log: work.path().join("qemu.log"),
        memory_mib: opts.memory_mib,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(4),
    };
    let (attempts, note) = qemu::plan(opts.accel);
    if let Some(note) = note {
        progress.note(&note);
    }
    let started = Instant::now();
    let deadline = started + opts.timeout;
    progress.stage("boot+bake");
    progress.note(&format!(
        "the guest's console goes to {} (tail -f it to watch)",
        serial_log.display()
    ));
    let mut used = None;
    for (i, accel) in attempts.iter().copied().enumerate() {
        if i > 0 {
            // A fresh overlay: the failed start may have written to the old one.
            std::fs::remove_file(&overlay)
                .with_context(|| format!("removing {}", overlay.display()))?;
            qemu::create_overlay(&qemu_img, &base_path, &info.format, &overlay, disk_size)?;
        }
        let outcome = qemu::run_vm(&qemu_system, &spec, accel, deadline, interrupted, progress)?;
        match outcome.end {
            VmEnd::Done => {
                used = Some(accel);
                break;
            }
            VmEnd::KvmFailed(reason) => {
                if opts.accel == Accel::Auto && i + 1 < attempts.len() {
                    progress.note(&format!(
                        "KVM failed to start the VM ({reason}); falling back to TCG (software \
                         emulation, much slower). Pass --accel tcg to skip the KVM attempt."
                    ));
                    continue;
                }
                progress.clear();
                bail!(
                    "KVM failed to start the VM: {reason}. KVM is broken on some hosts even \
                     when /dev/kvm exists; pass --accel tcg to use software emulation.\n{}",
                    failure_details(&serial_log, &outcome.qemu_log_tail)
                );
            }
            VmEnd::Interrupted => {
                progress.clear();
                return Err(anyhow::Error::new(Interrupted).context(format!(
                    "the guest's console so far is in {}",
                    serial_log.display()
                )));
            }
            VmEnd::KernelPanic(line) => {
                progress.clear();
                bail!(
                    "the guest's kernel panicked ({line}); the VM was stopped and nothing was \
                     written. Run the build again; if it panics again, the console log has the \
                     kernel's report.\n{}",
                    failure_details(&serial_log, &outcome.qemu_log_tail)
                );
            }
            VmEnd::TimedOut => {
                progress.clear();
                bail!(
                    "the bake did not finish within --timeout {} s ({} VM); the VM was \
                     stopped and nothing was written{}.\n{}",
                    opts.timeout.as_secs(),
                    accel.name(),
                    outcome
                        .observed
                        .step
                        .as_deref()
                        .map(|s| format!("; the guest's last step: {s}"))
                        .unwrap_or_default(),
                    failure_details(&serial_log, &outcome.qemu_log_tail)
                );
            }
            VmEnd::Exited(status) => {
                progress.clear();
                let why = match &outcome.observed.failure {
                    Some(failure) => format!("the guest reported: {failure}"),
                    None if outcome.observed.done => format!(
                        "the guest finished, but QEMU exited with {status} instead of a clean \
                         power-off"
                    ),
                    None => match &outcome.observed.step {
                        Some(step) => format!(
                            "QEMU exited ({status}) without the guest's success line; its \
                             last step: {step}"
                        ),
                        None => {
                            format!("QEMU exited ({status}) before the guest printed any bake step")
                        }
                    },
                };
                bail!(
                    "the bake failed: {why}; nothing was written.\n{}",
                    failure_details(&serial_log, &outcome.qemu_log_tail)
                );
            }
        }
    }
    let accel = used.context("no accelerator was tried")?;
    let bake = started.elapsed();
    progress.note(&format!(
        "the guest baked the image and powered off ({}, {})",
        accel.name(),
        format_duration(bake)
    ));

    // ---- convert -------------------------------------------------------------------
    let started = Instant::now();
    progress.stage("convert");
    let tmp_out = work.path().join("output.qcow2");
    qemu::convert_compressed(&qemu_img, &overlay, &tmp_out, interrupted, progress)?;
    check(progress)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp_out, std::fs::Permissions::from_mode(OUTPUT_MODE))
            .with_context(|| format!("setting mode {OUTPUT_MODE:o} on {}", tmp_out.display()))?;
    }
    std::fs::File::open(&tmp_out)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp_out.display()))?;
    std::fs::rename(&tmp_out, &opts.output).with_context(|| {
        format!(
            "renaming {} to {}",
            tmp_out.display(),
            opts.output.display()
        )
    })?;
    std::fs::File::open(&out_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", out_dir.display()))?;
    let convert = started.elapsed();
    progress.clear();
    let output_bytes = std::fs::metadata(&opts.output)
        .with_context(|| format!("reading the size of {}", opts.output.display()))?
        .len();
    drop(work);
    Ok(BakeReport {
        output: opts.output.clone(),
        output_bytes,
        virtual_bytes: disk_size,
        serial_log,
        accel,
        prepare,
        bake,
        convert,
        manifest_digest: archive.manifest_digest,
        config_digest: archive.config_digest,
    })
}

/// The last lines of the serial log, its path and QEMU's own last words.
fn failure_details(serial_log: &Path, qemu_log_tail: &str) -> String {
    let mut text = String::new();
    match serial::tail(serial_log, FAILURE_TAIL_LINES) {
        Ok(lines) if !lines.is_empty() => {
            text.push_str(&format!(
                "--- last {} lines of the guest's console ---\n",
                lines.len()
            ));
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
            text.push_str("---\n");
        }
        Ok(_) => text.push_str("the guest's console is empty\n"),
        Err(e) => text.push_str(&format!("the guest's console cannot be read: {e:#}\n")),
    }
    if !qemu_log_tail.is_empty() {
        text.push_str(&format!("QEMU said: {qemu_log_tail}\n"));
    }
    text.push_str(&format!("the whole console log: {}", serial_log.display()));
    text
}

/// The output must not be the base or the archive (the base is the overlay's backing file
/// while the bake runs).
fn refuse_overlap(base: &Path, archive: &Path, output: &Path) -> Result<()> {
    let out = match std::fs::canonicalize(output) {
        Ok(p) => p,
        Err(_) => return Ok(()), // does not exist yet: cannot be either input
    };
    for (what, input) in [("the base image", base), ("the registry archive", archive)] {
        if std::fs::canonicalize(input).is_ok_and(|p| p == out) {
            bail!(
                "-o {} is {what}; write the output to another file",
                output.display()
            );
        }
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_log_is_beside_the_output() {
        assert_eq!(
            serial_log_path(Path::new("/x/appliance.qcow2")),
            PathBuf::from("/x/appliance.qcow2.serial.log")
        );
    }

    #[test]
    fn failure_details_show_the_tail_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let text: String = (0..40).map(|i| format!("console {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let d = failure_details(&log, "qemu: terminating");
        assert!(d.contains("last 30 lines"), "{d}");
        assert!(
            d.contains("console 39") && !d.contains("console 9\n"),
            "{d}"
        );
        assert!(d.contains("QEMU said: qemu: terminating"));
        assert!(d.ends_with(&log.display().to_string()));
        let d = failure_details(&dir.path().join("missing"), "");
        assert!(d.contains("cannot be read"), "{d}");
    }

    #[test]
    fn output_may_not_overwrite_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let archive = dir.path().join("a.tar");
        std::fs::write(&base, b"b").unwrap();
        std::fs::write(&archive, b"a").unwrap();
        assert!(refuse_overlap(&base, &archive, &base).is_err());
        assert!(refuse_overlap(&base, &archive, &archive).is_err());
        assert!(refuse_overlap(&base, &archive, &dir.path().join("new.qcow2")).is_ok());
    }
}
