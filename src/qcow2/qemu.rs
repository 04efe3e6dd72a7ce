//! QEMU for the bake: `qemu-img` (inspect the base, make the copy-on-write overlay, write the
//! flattened output) and `qemu-system-x86_64` (the bake VM, killed when its guard is dropped).
//!
//! Accelerators (DESIGN.md, "This machine"): /dev/kvm can exist while KVM does not work;
//! `-cpu host` then aborts at start ("failed to set MSR 0x10a") and the default CPU dies in
//! early boot with "KVM internal error" while QEMU stays up, paused. Both are recognized as
//! a failed KVM start, which `--accel auto` answers by starting over under TCG.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::progress::Progress;
use super::serial::{Observed, SerialWatch};
use crate::cloudinit::PAYLOAD_DRIVE_SERIAL;
use crate::cmd::Task;

/// The `qemu-system-x86_64` to run instead of the one on PATH (README, "Environment"; a
/// script that plays the VM in the tests).
pub const QEMU_SYSTEM_ENV: &str = "REGIMAGE_QEMU_SYSTEM";
/// The KVM device that `--accel auto` probes instead of /dev/kvm (README, "Environment").
pub const KVM_DEVICE_ENV: &str = "REGIMAGE_KVM_DEVICE";
const KVM_DEVICE: &str = "/dev/kvm";
/// How often the VM, its console and the signals are looked at.
const POLL: Duration = Duration::from_millis(200);

/// `--accel`: how QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm opens, TCG after a failed KVM start (said on stderr).
    #[default]
    Auto,
    /// KVM only: a failed KVM start fails the build.
    Kvm,
    /// TCG (software emulation, multi-threaded): slow, works everywhere.
    Tcg,
}

/// The accelerator of one VM start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    Kvm,
    Tcg,
}

impl AccelKind {
    pub fn name(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }

    /// QEMU's `-accel` and `-cpu` for this accelerator.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            AccelKind::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // thread=multi: guest code runs on its own host thread, apart from QEMU's I/O.
            AccelKind::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// The KVM device opens read-write (the test QEMU needs). `Err` says why not.
pub fn kvm_device_usable() -> Result<(), String> {
    let device =
        std::env::var_os(KVM_DEVICE_ENV).map_or_else(|| PathBuf::from(KVM_DEVICE), PathBuf::from);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", device.display()))
}

/// The accelerators to try, in order, for `--accel`; the note says why KVM is skipped.
pub fn plan(accel: Accel) -> (Vec<AccelKind>, Option<String>) {
    match accel {
        Accel::Tcg => (vec![AccelKind::Tcg], None),
        Accel::Kvm => (vec![AccelKind::Kvm], None),
        Accel::Auto => match kvm_device_usable() {
            Ok(()) => (vec![AccelKind::Kvm, AccelKind::Tcg], None),
            Err(why) => (
                vec![AccelKind::Tcg],
                Some(format!(
                    "KVM is not available ({why}); using TCG (software emulation, much slower)"
                )),
            ),
        },
    }
}

/// Finds the executable `name` on PATH, or says which package brings it.
pub fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    // which also refuses a file that is there but not executable, as a shell would.
    which::which(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} is not installed (not found on PATH); install the package {package} \
             (Debian/Ubuntu: apt-get install {package})"
        )
    })
}

/// The `qemu-system-x86_64` to run.
pub fn qemu_system() -> Result<PathBuf> {
    match std::env::var_os(QEMU_SYSTEM_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        // qemu-utils with it: on Debian 12 installing qemu-system-x86 alone removes a
        // backported qemu-utils (DESIGN.md).
        None => find_tool("qemu-system-x86_64", "qemu-system-x86 qemu-utils"),
    }
}

/// `qemu-img info --output=json`, the fields the bake uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub virtual_size: u64,
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub dirty_flag: Option<bool>,
}

/// Parses `qemu-img info --output=json` output.
pub fn parse_image_info(json: &[u8]) -> Result<ImageInfo> {
    serde_json::from_slice(json).context("parsing qemu-img info's JSON")
}

/// Inspects an image (format probed by qemu-img).
pub fn image_info(qemu_img: &Path, image: &Path) -> Result<ImageInfo> {
    let out = Task::new(format!("Inspecting {}", image.display()), qemu_img)
        .args(["info", "--output=json"])
        .arg(image)
        .run_get_stdout()
        .with_context(|| format!("inspecting {}", image.display()))?;
    parse_image_info(&out).with_context(|| format!("inspecting {}", image.display()))
}

/// The formats a base may have, and why others are refused.
pub fn check_base_format(info: &ImageInfo, path: &Path) -> Result<()> {
    if info.encrypted == Some(true) {
        bail!(
            "{} is encrypted; the bake needs a plain image",
            path.display()
        );
    }
    match info.format.as_str() {
        "qcow2" | "raw" => Ok(()),
        other => bail!(
            "{} is a {other} image; the base must be qcow2 or raw (convert it with \
             `qemu-img convert -O qcow2 {} base.qcow2`)",
            path.display(),
            path.display()
        ),
    }
}

/// `qemu-img create -f qcow2 -F FORMAT -b BASE OVERLAY SIZE`: writes go to the overlay, the
/// base is only read. `base` must be absolute (a relative backing path is taken relative to
/// the overlay's directory).
pub fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    base_format: &str,
    overlay: &Path,
    size: u64,
) -> Result<()> {
    if !base.is_absolute() {
        bail!(
            "the backing file {} must be an absolute path",
            base.display()
        );
    }
    Task::new(
        format!("Creating the overlay {}", overlay.display()),
        qemu_img,
    )
    .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
    .arg(base)
    .arg(overlay)
    .arg(size.to_string())
    .run()
    .with_context(|| format!("creating the overlay {}", overlay.display()))
}

/// Everything a bake VM needs.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub overlay: PathBuf,
    pub seed_iso: PathBuf,
    /// The registry image archive and the binary (see [`super::seed::PayloadDrive`]).
    pub payload_drive: PathBuf,
    pub serial_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    pub memory_mib: u32,
    /// vCPUs under KVM; TCG gets one (see [`vcpus`]).
    pub cpus: usize,
}

/// vCPUs for `accel`. Under TCG with two vCPUs a Debian 13 guest Oopsed ("int3" in
/// dequeue_entities, then a panic) while loading netfilter modules: the kernel patches its
/// own code with int3-based text_poke, and the other vCPU ran a stale translation of the
/// half-patched code. One vCPU cannot race itself; the bake's work is mostly one process
/// at a time (apt, cloud-init) anyway.
pub fn vcpus(spec: &VmSpec, accel: AccelKind) -> usize {
    match accel {
        AccelKind::Kvm => spec.cpus.max(1),
        AccelKind::Tcg => 1,
    }
}

/// QEMU's arguments for `spec` under `accel` (pure, for tests and for the error message).
pub fn vm_args(spec: &VmSpec, accel: AccelKind) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-name".into(),
        "regimage-bake".into(),
        // Only the devices listed here: no default NIC, VGA, monitor, CD-ROM or floppy.
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // A guest reboot (a kernel panic) ends the VM instead of starting the bake again.
        "-no-reboot".into(),
    ];
    args.extend(accel.qemu_args().iter().map(|s| s.to_string()));
    args.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        vcpus(spec, accel).to_string(),
        "-serial".into(),
        format!("file:{}", spec.serial_log.display()),
        // discard=unmap: the guest's fstrim leaves freed blocks out of the overlay.
        // cache=unsafe: the guest's flushes are not passed on to the host's disk. The
        // overlay is thrown away unless the VM powers off cleanly, and the convert reads it
        // through the same page cache, so no flush buys anything; under TCG dpkg's fsyncs
        // otherwise each wait for the host disk.
        "-drive".into(),
        format!(
            "if=none,id=disk0,file={},format=qcow2,discard=unmap,cache=unsafe",
            qemu_path(&spec.overlay)
        ),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,bootindex=0".into(),
        "-drive".into(),
        format!(
            "if=none,id=seed,file={},format=raw,readonly=on",
            qemu_path(&spec.seed_iso)
        ),
        "-device".into(),
        "virtio-blk-pci,drive=seed".into(),
        "-drive".into(),
        format!(
            "if=none,id=payload,file={},format=raw,readonly=on",
            qemu_path(&spec.payload_drive)
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive=payload,serial={PAYLOAD_DRIVE_SERIAL}"),
        // User networking: the guest installs packages from its distribution's mirrors.
        "-netdev".into(),
        "user,id=net0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
        // Entropy for a guest that has little of its own under TCG.
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-pci,rng=rng0".into(),
    ]);
    args
}

/// A path inside a `-drive` option: commas are doubled (QEMU's option escaping).
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// How a VM run ended.
#[derive(Debug)]
pub enum VmEnd {
    /// The guest printed the done step and powered off.
    Done,
    /// QEMU exited otherwise (the guest failed, crashed, or powered off early).
    Exited(ExitStatus),
    /// KVM did not work; the reason.
    KvmFailed(String),
    /// The guest's kernel panicked (its panic line); the VM was killed.
    KernelPanic(String),
    /// The deadline passed; the VM was killed.
    TimedOut,
    /// SIGINT or SIGTERM; the VM was killed.
    Interrupted,
}

/// The outcome of [`run_vm`]: how it ended and what the console showed.
#[derive(Debug)]
pub struct VmOutcome {
    pub end: VmEnd,
    pub observed: Observed,
    /// The end of QEMU's own stderr/stdout.
    pub qemu_log_tail: String,
}

/// A running QEMU: killed (and reaped) when dropped, whatever the reason for leaving.
#[derive(Debug)]
pub struct VmGuard {
    child: Option<Child>,
}

impl VmGuard {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("checking on QEMU"),
            None => Ok(None),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::debug!("killing QEMU: {e}");
            }
            if let Err(e) = child.wait() {
                tracing::warn!("reaping QEMU: {e}");
            }
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line of QEMU's stderr that means KVM does not work, if any.
pub fn kvm_failure_in(qemu_log: &str) -> Option<String> {
    const SIGNS: [&str; 5] = [
        "KVM internal error",
        "failed to set MSR",
        "Could not access KVM kernel module",
        "failed to initialize kvm",
        "failed to initialize KVM",
    ];
    qemu_log
        .lines()
        .find(|l| SIGNS.iter().any(|s| l.contains(s)))
        .map(|l| l.trim().to_string())
}

/// Boots the VM and waits for it to end, showing the guest's steps; see [`VmEnd`].
pub fn run_vm(
    qemu: &Path,
    spec: &VmSpec,
    accel: AccelKind,
    deadline: Instant,
    interrupted: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<VmOutcome> {
    let log = File::create(&spec.qemu_log)
        .with_context(|| format!("creating {}", spec.qemu_log.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("duplicating {}", spec.qemu_log.display()))?;
    // A long-running child whose console the loop below reads: spawned here, not by cmd.rs.
    let child = Task::new(format!("Starting the bake VM under {}", accel.name()), qemu)
        .args(vm_args(spec, accel))
        .into_command()
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let mut vm = VmGuard { child: Some(child) };
    let mut watch = SerialWatch::new(&spec.serial_log);

    let end = loop {
        if interrupted.load(Ordering::SeqCst) {
            vm.kill();
            break VmEnd::Interrupted;
        }
        watch.poll()?;
        let detail = watch
            .observed
            .step
            .clone()
            .or_else(|| (!watch.observed.kernel_started).then(|| "starting the VM".to_string()))
            .unwrap_or_else(|| "booting".to_string());
        progress.tick(Some(&format!("[{}] {detail}", accel.name())));
        if accel == AccelKind::Kvm {
            if let Some(line) = kvm_failure_in(&read_lossy(&spec.qemu_log)) {
                vm.kill();
                break VmEnd::KvmFailed(line);
            }
        }
        if let Some(line) = watch.observed.kernel_panic.clone() {
            vm.kill();
            break VmEnd::KernelPanic(line);
        }
        if let Some(status) = vm.try_wait()? {
            vm.child = None;
            watch.finish()?;
            let log = read_lossy(&spec.qemu_log);
            if accel == AccelKind::Kvm {
                if let Some(line) = kvm_failure_in(&log) {
                    break VmEnd::KvmFailed(line);
                }
                if !status.success() && !watch.observed.kernel_started {
                    let last = log
                        .lines()
                        .last()
                        .unwrap_or("no message")
                        .trim()
                        .to_string();
                    break VmEnd::KvmFailed(format!(
                        "QEMU exited with {status} before the guest's kernel started: {last}"
                    ));
                }
            }
            if status.success() && watch.observed.done {
                break VmEnd::Done;
            }
            break VmEnd::Exited(status);
        }
        if Instant::now() >= deadline {
            vm.kill();
            break VmEnd::TimedOut;
        }
        std::thread::sleep(POLL);
    };
    drop(vm);
    watch.finish()?;
    let log = read_lossy(&spec.qemu_log);
    let start = log.len().saturating_sub(2048);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    Ok(VmOutcome {
        end,
        observed: watch.observed,
        qemu_log_tail: log[start..].trim().to_string(),
    })
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `qemu-img convert -c -O qcow2 SRC DST`: flattened (no backing file), compressed.
/// Stops (and kills qemu-img) on SIGINT/SIGTERM.
pub fn convert_compressed(
    qemu_img: &Path,
    src: &Path,
    dst: &Path,
    interrupted: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<()> {
    let mut running = Task::new(
        format!("Converting the image to {}", dst.display()),
        qemu_img,
    )
    .args(["convert", "-c", "-O", "qcow2"])
    .arg(src)
    .arg(dst)
    .start()?;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            running.kill();
            return Err(super::Interrupted.into());
        }
        if running.try_finish()? {
            return Ok(());
        }
        progress.tick(None);
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            overlay: PathBuf::from("/w/a,b/overlay.qcow2"),
            seed_iso: PathBuf::from("/w/seed.iso"),
            payload_drive: PathBuf::from("/w/payload.img"),
            serial_log: PathBuf::from("/out/x.serial.log"),
            qemu_log: PathBuf::from("/w/qemu.log"),
            memory_mib: 2048,
            cpus: 2,
        }
    }

    #[test]
    fn vm_arguments() {
        let tcg = vm_args(&spec(), AccelKind::Tcg).join(" ");
        assert!(tcg.contains("-accel tcg,thread=multi -cpu max"), "{tcg}");
        assert!(tcg.contains("-serial file:/out/x.serial.log"));
        assert!(tcg.contains("-display none"));
        assert!(!tcg.contains("-nographic"));
        assert!(
            tcg.contains("file=/w/a,,b/overlay.qcow2,format=qcow2"),
            "{tcg}"
        );
        assert!(tcg.contains("serial=regimage-payload"));
        assert!(tcg.contains("file=/w/payload.img,format=raw,readonly=on"));
        assert!(tcg.contains("file=/w/seed.iso,format=raw,readonly=on"));
        assert!(tcg.contains("-netdev user,id=net0"));
        // One vCPU under TCG whatever the spec says; the spec's count under KVM.
        assert!(tcg.contains("-m 2048 -smp 1 "), "{tcg}");
        let kvm = vm_args(&spec(), AccelKind::Kvm).join(" ");
        assert!(kvm.contains("-accel kvm -cpu host"), "{kvm}");
        assert!(kvm.contains("-m 2048 -smp 2 "), "{kvm}");
    }

    #[test]
    fn kvm_failures_are_recognized() {
        assert_eq!(
            kvm_failure_in("noise\nKVM internal error. Suberror: 1\nRAX=0\n").as_deref(),
            Some("KVM internal error. Suberror: 1")
        );
        assert!(kvm_failure_in(
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\nqemu: ... Assertion failed"
        )
        .is_some());
        assert!(kvm_failure_in("qemu-system-x86_64: terminating on signal 2").is_none());
    }

    #[test]
    fn plans() {
        assert_eq!(plan(Accel::Tcg).0, vec![AccelKind::Tcg]);
        assert_eq!(plan(Accel::Kvm).0, vec![AccelKind::Kvm]);
    }

    #[test]
    fn image_info_parsing_and_formats() {
        let json =
            br#"{"virtual-size": 2147483648, "filename": "base.qcow2", "cluster-size": 65536,
            "format": "qcow2", "actual-size": 140115968, "dirty-flag": false,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}"#;
        let info = parse_image_info(json).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 2147483648);
        assert_eq!(info.backing_filename, None);
        assert!(check_base_format(&info, Path::new("base.qcow2")).is_ok());
        let vmdk = ImageInfo {
            format: "vmdk".into(),
            ..info.clone()
        };
        let e = check_base_format(&vmdk, Path::new("b.vmdk")).unwrap_err();
        assert!(e.to_string().contains("qemu-img convert"), "{e}");
        let enc = ImageInfo {
            encrypted: Some(true),
            ..info
        };
        assert!(check_base_format(&enc, Path::new("e")).is_err());
        assert!(parse_image_info(b"{}").is_err());
    }

    #[test]
    fn tools_are_found_or_named() {
        assert!(find_tool("sh", "dash").is_ok());
        let e = find_tool("regimage-no-such-tool", "some-package").unwrap_err();
        assert!(
            e.to_string().contains("apt-get install some-package"),
            "{e}"
        );
        // A file that is there but cannot be run is not the tool.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("tool");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert!(find_tool(plain.to_str().unwrap(), "p").is_err());
    }
}
