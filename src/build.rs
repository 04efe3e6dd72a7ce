//! `regimage build`: the site config to a cloud-init user-data file or a qcow2 image.
//!
//! Every argument is checked before anything is rendered or written; the output appears
//! atomically (a temporary file renamed into place) or not at all, also when it is over
//! `--max-size`. The summary goes to stderr; stdout carries data only (`-o -`).
//! `--format qcow2` bakes the same payload into a cloud image: see [`crate::qcow2`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{ConfigArg, UsageError};
use crate::cloudinit::{self, BinaryPayload};
use crate::distro::Distro;
use crate::qcow2::qemu::Accel;
use crate::qcow2::{BakeOptions, BaseSource};

/// Default output of `--format qcow2`.
const DEFAULT_QCOW2_OUTPUT: &str = "regimage.qcow2";
/// Default output of `--format user-data`.
const DEFAULT_USER_DATA_OUTPUT: &str = "user-data";
/// Bake VM memory: enough for apt and cloud-init under TCG.
const DEFAULT_MEMORY_MIB: u32 = 2048;
/// Bound of boot+bake: a TCG bake takes 10-20 minutes on 2 cores.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// Mode of the user-data file: it holds nothing secret (no keys, no certificates, no
/// passwords) and is meant to be handed to cloud tooling, like any config file.
const OUTPUT_MODE: u32 = 0o644;

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "user-data")]
    pub format: Format,
    /// Output file; `-` for standard output (user-data only). Default: `user-data`, or
    /// `regimage.qcow2` with --format qcow2.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Target distribution: package names, Podman version, rootless network helper.
    #[arg(long, value_enum, default_value_t = Distro::default())]
    pub distro: Distro,
    /// Fail instead of writing output larger than this: a byte count with an optional
    /// K, KiB, M or MiB suffix, or a cloud's user-data limit: ec2 (16 KiB), openstack or
    /// azure (64 KiB), gce (256 KiB).
    #[arg(long, value_name = "BYTES|PRESET", value_parser = parse_max_size)]
    pub max_size: Option<MaxSize>,
    /// Download the regimage binary from this http(s) URL at first boot instead of
    /// embedding it (needs --binary-sha256). Use it where user-data size is limited.
    #[arg(long, value_name = "URL", requires = "binary_sha256", value_parser = parse_binary_url)]
    pub binary_url: Option<String>,
    /// sha256 of the binary at --binary-url (64 hex digits, `sha256sum regimage`); the
    /// machine refuses to install a download that does not match.
    #[arg(long, value_name = "HEX", requires = "binary_url", value_parser = parse_sha256)]
    pub binary_sha256: Option<String>,
    /// qcow2: the cloud image to bake, a qcow2 or raw file (never modified), or
    /// `ubuntu-24.04` for the official Ubuntu 24.04 cloud image (downloaded, checked against
    /// its SHA256SUMS and cached in ~/.cache/regimage/bases).
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// qcow2: OCI archive of the registry image pinned by registry.image (make it with
    /// `regimage fetch-image`); refused unless its manifest digest is the pin.
    #[arg(long, value_name = "ARCHIVE")]
    pub registry_archive: Option<PathBuf>,
    /// qcow2: how QEMU runs the bake VM [default: auto]. Environment: REGIMAGE_QEMU_SYSTEM
    /// (the QEMU to run), REGIMAGE_KVM_DEVICE (the device auto probes, else /dev/kvm).
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// qcow2: memory of the bake VM in MiB [default: 2048]
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(1024..=65536))]
    pub memory: Option<u32>,
    /// qcow2: give up on boot+bake after this many seconds [default: 3600]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// qcow2: directory URL of the official base image and its checksum file (a mirror);
    /// also REGIMAGE_UBUNTU_BASE_URL.
    #[arg(long, value_name = "URL", hide = true)]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A #cloud-config for a stock Ubuntu 24.04 (or Debian 13) cloud image.
    UserData,
    /// A qcow2 image with everything installed: a cloud image baked in a QEMU VM.
    Qcow2,
}

/// A size limit, from a byte count or a cloud preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxSize {
    pub bytes: u64,
    /// The preset name, when one was given.
    pub preset: Option<&'static str>,
}

/// Cloud user-data limits (DESIGN.md, cloud-init).
const PRESETS: [(&str, u64); 4] = [
    ("ec2", 16 * 1024),
    ("openstack", 64 * 1024),
    ("azure", 64 * 1024),
    ("gce", 256 * 1024),
];

/// `ec2`, `openstack`, `azure`, `gce`, or `N`, `NK`, `NKiB`, `NM`, `NMiB` (powers of 1024).
pub fn parse_max_size(s: &str) -> Result<MaxSize, String> {
    let lower = s.trim().to_ascii_lowercase();
    if let Some((name, bytes)) = PRESETS.iter().find(|(name, _)| *name == lower) {
        return Ok(MaxSize {
            bytes: *bytes,
            preset: Some(name),
        });
    }
    let expected = "expected a byte count with an optional K, KiB, M or MiB suffix, or one of ec2, openstack, azure, gce";
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, suffix) = lower.split_at(digits_end);
    let unit: u64 = match suffix {
        "" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => 1024 * 1024,
        _ => return Err(format!("{s:?} is not a size; {expected}")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; {expected}"))?;
    match n.checked_mul(unit) {
        Some(0) => Err(format!(
            "{s:?}: a limit of 0 bytes fits nothing; {expected}"
        )),
        Some(bytes) => Ok(MaxSize {
            bytes,
            preset: None,
        }),
        None => Err(format!("{s:?} is too large")),
    }
}

fn parse_binary_url(s: &str) -> Result<String, String> {
    cloudinit::check_binary_url(s).map(|()| s.to_string())
}

/// Accepts either case (some tools print uppercase) and keeps it lowercase.
fn parse_sha256(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    cloudinit::check_sha256(&lower).map(|()| lower)
}

pub fn run(args: BuildArgs) -> Result<()> {
    match args.format {
        Format::UserData => run_user_data(args),
        Format::Qcow2 => run_qcow2(args),
    }
}

/// Flags that belong to the other format are refused, not ignored.
fn check_format_flags(args: &BuildArgs) -> Result<()> {
    let (format, given): (&str, Vec<&str>) = match args.format {
        Format::UserData => (
            "user-data",
            [
                (args.base.is_some(), "--base"),
                (args.registry_archive.is_some(), "--registry-archive"),
                (args.accel.is_some(), "--accel"),
                (args.memory.is_some(), "--memory"),
                (args.timeout.is_some(), "--timeout"),
                (args.base_url.is_some(), "--base-url"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect(),
        ),
        Format::Qcow2 => (
            "qcow2",
            [
                (args.max_size.is_some(), "--max-size"),
                (args.binary_url.is_some(), "--binary-url"),
                (args.binary_sha256.is_some(), "--binary-sha256"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect(),
        ),
    };
    if given.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "{} cannot be used with --format {format}",
        given.join(", ")
    ))
    .into())
}

fn run_user_data(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    check_format_flags(&args)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_USER_DATA_OUTPUT));
    let to_stdout = output == Path::new("-");
    if !to_stdout {
        check_output_path(&output)?;
    }
    let config = args.config.load()?;
    let files = user_data_files(&config)?;
    let binary = match (args.binary_url, args.binary_sha256) {
        (Some(url), Some(sha256)) => BinaryPayload::Url { url, sha256 },
        (None, None) => BinaryPayload::Embedded(read_own_binary()?),
        _ => {
            return Err(UsageError(
                "--binary-url and --binary-sha256 go together; give both or neither".into(),
            )
            .into())
        }
    };
    let user_data = cloudinit::build_user_data(&config, &files, &binary, args.distro)?;
    let size = user_data.text.len();

    if let Some(limit) = args.max_size {
        if size as u64 > limit.bytes {
            return Err(UsageError(too_big_message(size, limit, &binary, &user_data)).into());
        }
    }

    if to_stdout {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(user_data.text.as_bytes())
            .and_then(|()| stdout.flush())
            .context("writing the user-data to standard output")?;
    } else {
        crate::fsutil::write_atomic(&output, user_data.text.as_bytes(), OUTPUT_MODE)?;
    }

    let shown = if to_stdout {
        "standard output".to_string()
    } else {
        output.display().to_string()
    };
    eprintln!(
        "wrote {shown}: {size} bytes ({}) of user-data for {}, {} files",
        kib(size),
        args.distro,
        files.len(),
    );
    match &binary {
        BinaryPayload::Embedded(bytes) => eprintln!(
            "embedded {}: {} bytes raw, {} bytes as gz+b64",
            cloudinit::BINARY_PATH,
            bytes.len(),
            user_data.binary_encoded_bytes,
        ),
        BinaryPayload::Url { url, sha256 } => eprintln!(
            "{} is downloaded at first boot from {url} and must have sha256 {sha256}",
            cloudinit::BINARY_PATH,
        ),
        // Only a bake's seed gets the binary on a drive.
        BinaryPayload::OnDrive(extent) => eprintln!(
            "{} is copied from a drive and must have sha256 {}",
            cloudinit::BINARY_PATH,
            extent.sha256,
        ),
    }
    if let Some(limit) = args.max_size {
        eprintln!("within --max-size {}", describe_limit(limit));
    }
    eprintln!("took {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `--format qcow2`: checks every argument, then bakes (see [`crate::qcow2`]).
fn run_qcow2(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    check_format_flags(&args)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QCOW2_OUTPUT));
    if output == Path::new("-") {
        return Err(UsageError(
            "-o -: a qcow2 image is not written to standard output; give a file path".into(),
        )
        .into());
    }
    check_output_path(&output)?;
    let base = match args.base.as_deref() {
        None => {
            return Err(UsageError(
                "--format qcow2 needs --base IMAGE (a qcow2 or raw file, or ubuntu-24.04)".into(),
            )
            .into())
        }
        Some(name) => base_source(name, args.distro, args.base_url.clone())?,
    };
    let archive = args.registry_archive.clone().ok_or_else(|| {
        UsageError(
            "--format qcow2 needs --registry-archive ARCHIVE (make it with `regimage \
             fetch-image -c CONFIG -o ARCHIVE`)"
                .into(),
        )
    })?;
    if !archive.is_file() {
        return Err(UsageError(format!(
            "--registry-archive {}: no such file",
            archive.display()
        ))
        .into());
    }
    let config = args.config.load()?;
    let files = user_data_files(&config)?;
    let binary = read_own_binary()?;
    let opts = BakeOptions {
        base,
        archive,
        output,
        accel: args.accel.unwrap_or_default(),
        distro: args.distro,
        memory_mib: args.memory.unwrap_or(DEFAULT_MEMORY_MIB),
        timeout: std::time::Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)),
        binary,
        cache_dir: None,
    };
    let report = crate::qcow2::bake(&config, &files, &opts)?;
    eprintln!(
        "wrote {}: {} ({} bytes), qcow2 for {}, {} virtual disk",
        report.output.display(),
        crate::qcow2::progress::format_size(report.output_bytes),
        report.output_bytes,
        args.distro,
        crate::qcow2::progress::format_size(report.virtual_bytes),
    );
    eprintln!(
        "registry image {} (image ID {}) at {}",
        report.manifest_digest,
        report.config_digest,
        cloudinit::REGISTRY_ARCHIVE_PATH
    );
    eprintln!(
        "stages: prepare {}, boot+bake {} ({}), convert {}; total {}",
        crate::qcow2::progress::format_duration(report.prepare),
        crate::qcow2::progress::format_duration(report.bake),
        report.accel.name(),
        crate::qcow2::progress::format_duration(report.convert),
        crate::qcow2::progress::format_duration(started.elapsed()),
    );
    eprintln!("the guest's console log: {}", report.serial_log.display());
    Ok(())
}

/// `--base`: a distribution id with an official cloud image (it must match `--distro`),
/// or a file path (`./ubuntu-24.04` for a file of that name).
fn base_source(name: &str, distro: Distro, base_url: Option<String>) -> Result<BaseSource> {
    if let Some(named) = Distro::from_id(name) {
        if named.info().cloud_image.is_none() {
            return Err(UsageError(format!(
                "--base {name}: regimage does not download {name} images; give an image file"
            ))
            .into());
        }
        if named != distro {
            return Err(UsageError(format!(
                "--base {name} with --distro {distro}: the base and the target distribution \
                 must be the same; add --distro {name}"
            ))
            .into());
        }
        let base_url = base_url.or_else(|| {
            std::env::var(crate::qcow2::base::UBUNTU_BASE_URL_ENV)
                .ok()
                .filter(|u| !u.is_empty())
        });
        if let Some(url) = &base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(UsageError(format!(
                    "base URL {url:?} is not an http:// or https:// URL"
                ))
                .into());
            }
        }
        return Ok(BaseSource::Official {
            distro: named,
            base_url,
        });
    }
    if base_url.is_some() {
        return Err(UsageError("--base-url applies only to a downloaded base".into()).into());
    }
    let path = PathBuf::from(name);
    if !path.is_file() {
        return Err(UsageError(format!(
            "--base {name}: no such file (or give ubuntu-24.04 for the official image)"
        ))
        .into());
    }
    Ok(BaseSource::File(path))
}

/// The files the user-data writes: render's file set and its manifest (as `regimage
/// render` writes them; the binary is added by [`cloudinit`]).
pub fn user_data_files(config: &crate::config::Config) -> Result<Vec<crate::render::FileEntry>> {
    let mut files =
        crate::render::appliance_files(config).context("rendering the appliance's files")?;
    let manifest = crate::render::manifest_file(&files).context("making the manifest")?;
    files.push(manifest);
    Ok(files)
}

fn too_big_message(
    size: usize,
    limit: MaxSize,
    binary: &BinaryPayload,
    user_data: &cloudinit::UserData,
) -> String {
    let head = format!(
        "the user-data would be {size} bytes ({}), over --max-size {}; nothing was written",
        kib(size),
        describe_limit(limit),
    );
    match binary {
        BinaryPayload::Embedded(_) => format!(
            "{head}. The embedded regimage binary takes {} bytes of it (gz+b64): host the \
             binary where the machine can fetch it and pass --binary-url URL --binary-sha256 \
             HEX (HEX from `sha256sum regimage`) so the machine downloads and checks it",
            user_data.binary_encoded_bytes
        ),
        BinaryPayload::Url { .. } | BinaryPayload::OnDrive(_) => format!(
            "{head}, even without the binary embedded. Use fewer clients or a cloud with a \
             larger limit (NoCloud has none)"
        ),
    }
}

fn describe_limit(limit: MaxSize) -> String {
    let bytes = usize::try_from(limit.bytes).unwrap_or(usize::MAX);
    match limit.preset {
        Some(name) => format!("{name} ({} bytes, {})", limit.bytes, kib(bytes)),
        None => format!("{} bytes ({})", limit.bytes, kib(bytes)),
    }
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// The output must be a file in an existing directory: found out before any work.
fn check_output_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(UsageError(format!(
            "-o {}: is a directory; expected a file path",
            path.display()
        ))
        .into());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(UsageError(format!(
            "-o {}: directory {} does not exist",
            path.display(),
            parent.display()
        ))
        .into());
    }
    Ok(())
}

/// The running executable, read whole. /proc/self/exe is the inode that is running even if
/// the file was replaced since (a rebuild); current_exe() is the fallback elsewhere.
fn read_own_binary() -> Result<Vec<u8>> {
    match std::fs::read("/proc/self/exe") {
        Ok(bytes) => Ok(bytes),
        Err(_) => {
            let path = std::env::current_exe().context("finding the running executable")?;
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_size_presets_and_units() {
        let b = |s: &str| parse_max_size(s).unwrap().bytes;
        assert_eq!(b("ec2"), 16384);
        assert_eq!(b("EC2"), 16384);
        assert_eq!(b("openstack"), 65536);
        assert_eq!(b("azure"), 65536);
        assert_eq!(b("gce"), 262144);
        assert_eq!(b("1000"), 1000);
        assert_eq!(b("16K"), 16384);
        assert_eq!(b("16KiB"), 16384);
        assert_eq!(b("2M"), 2 * 1024 * 1024);
        assert_eq!(b("2MiB"), 2 * 1024 * 1024);
        assert_eq!(parse_max_size("ec2").unwrap().preset, Some("ec2"));
        for bad in [
            "",
            "0",
            "0K",
            "16KB",
            "1.5M",
            "-1",
            "aws",
            "16 K",
            "99999999999999999999",
        ] {
            assert!(parse_max_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_is_normalized() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_sha256(&upper).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
    }

    #[test]
    fn base_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.qcow2");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            base_source(file.to_str().unwrap(), Distro::Debian13, None).unwrap(),
            BaseSource::File(file.clone())
        );
        assert_eq!(
            base_source(
                "ubuntu-24.04",
                Distro::Ubuntu2404,
                Some("http://127.0.0.1:1/d/".into())
            )
            .unwrap(),
            BaseSource::Official {
                distro: Distro::Ubuntu2404,
                base_url: Some("http://127.0.0.1:1/d/".into())
            }
        );
        for (name, distro, url) in [
            ("ubuntu-24.04", Distro::Debian13, None),
            ("debian-13", Distro::Debian13, None),
            ("/nonexistent/base.qcow2", Distro::Debian13, None),
            ("ubuntu-24.04", Distro::Ubuntu2404, Some("ftp://x/")),
        ] {
            let e = base_source(name, distro, url.map(str::to_string)).unwrap_err();
            assert!(e.is::<UsageError>(), "{name}: {e}");
        }
        assert!(base_source(
            file.to_str().unwrap(),
            Distro::Debian13,
            Some("http://x/".into())
        )
        .is_err());
    }

    #[test]
    fn output_path_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output_path(dir.path()).is_err());
        assert!(check_output_path(&dir.path().join("missing/user-data")).is_err());
        assert!(check_output_path(&dir.path().join("user-data")).is_ok());
    }
}
