//! `regimage build user-data|qcow2`: the site config to a cloud-init user-data file or a
//! qcow2 image.
//!
//! Every option is checked before anything is rendered or written; the output appears
//! atomically (a temporary file renamed into place) or not at all, also when it is over
//! `--max-size`. The summary goes to stderr; stdout carries data only (`-o -`).
//! [`qcow2`] bakes the same payload into a cloud image: see [`crate::qcow2`]. The flags
//! are parsed in the `cli` module; this module takes [`UserDataOptions`] and [`Qcow2Options`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cloudinit::{self, BinaryPayload};
use crate::config::Config;
use crate::distro::Distro;
use crate::error::UsageError;
use crate::qcow2::qemu::Accel;
use crate::qcow2::{BakeOptions, BaseSource};

/// Default output of `build qcow2`.
pub const DEFAULT_QCOW2_OUTPUT: &str = "regimage.qcow2";
/// Default output of `build user-data`.
pub const DEFAULT_USER_DATA_OUTPUT: &str = "user-data";
/// Bake VM memory: enough for apt and cloud-init under TCG.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// Bound of boot+bake: a TCG bake takes 10-20 minutes on 2 cores.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// Mode of the user-data file: it holds nothing secret (no keys, no certificates, no
/// passwords) and is meant to be handed to cloud tooling, like any config file.
const OUTPUT_MODE: u32 = 0o644;

/// What `build user-data` writes, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDataOptions {
    /// The site config; `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    /// Output file; `-` for standard output.
    pub output: PathBuf,
    pub distro: Distro,
    /// Refuse output larger than this.
    pub max_size: Option<MaxSize>,
    /// Download the binary at first boot from here instead of embedding it.
    pub binary_url: Option<BinaryUrl>,
}

/// Where the machine downloads the regimage binary, and the sha256 it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryUrl {
    pub url: String,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

/// What `build qcow2` bakes, from what, and how; turned into [`BakeOptions`] once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Options {
    /// The site config; `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    pub output: PathBuf,
    pub distro: Distro,
    /// A qcow2 or raw file, or a distribution id with an official cloud image.
    pub base: String,
    /// Mirror of the official base image's directory.
    pub base_url: Option<String>,
    pub registry_archive: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub timeout: std::time::Duration,
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

/// `--binary-url`: an http(s) URL the machine can fetch.
pub fn parse_binary_url(s: &str) -> Result<String, String> {
    cloudinit::check_binary_url(s).map(|()| s.to_string())
}

/// Accepts either case (some tools print uppercase) and keeps it lowercase.
pub fn parse_sha256(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    cloudinit::check_sha256(&lower).map(|()| lower)
}

/// `build user-data`: checks the output path, then renders and writes the cloud-config.
pub fn user_data(opts: &UserDataOptions) -> Result<()> {
    let started = Instant::now();
    let output = &opts.output;
    let to_stdout = output == Path::new("-");
    if !to_stdout {
        check_output_path(output)?;
    }
    let config = Config::load(opts.config.as_deref())?;
    let files = user_data_files(&config)?;
    let binary = match &opts.binary_url {
        Some(BinaryUrl { url, sha256 }) => BinaryPayload::Url {
            url: url.clone(),
            sha256: sha256.clone(),
        },
        None => BinaryPayload::Embedded(read_own_binary()?),
    };
    let user_data = cloudinit::build_user_data(&config, &files, &binary, opts.distro)?;
    let size = user_data.text.len();

    if let Some(limit) = opts.max_size {
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
        crate::fsutil::write_atomic(output, user_data.text.as_bytes(), OUTPUT_MODE)?;
    }

    let shown = if to_stdout {
        "standard output".to_string()
    } else {
        output.display().to_string()
    };
    eprintln!(
        "wrote {shown}: {size} bytes ({}) of user-data for {}, {} files",
        kib(size),
        opts.distro,
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
    }
    if let Some(limit) = opts.max_size {
        eprintln!("within --max-size {}", describe_limit(limit));
    }
    eprintln!("took {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `build qcow2`: checks every option, then bakes (see [`crate::qcow2`]).
pub fn qcow2(opts: &Qcow2Options) -> Result<()> {
    let started = Instant::now();
    let output = opts.output.clone();
    if output == Path::new("-") {
        return Err(UsageError(
            "-o -: a qcow2 image is not written to standard output; give a file path".into(),
        )
        .into());
    }
    check_output_path(&output)?;
    let base = base_source(&opts.base, opts.distro, opts.base_url.clone())?;
    let archive = opts.registry_archive.clone();
    if !archive.is_file() {
        return Err(UsageError(format!(
            "--registry-archive {}: no such file (make it with `regimage fetch-image -c CONFIG \
             -o ARCHIVE`)",
            archive.display()
        ))
        .into());
    }
    let config = Config::load(opts.config.as_deref())?;
    let files = user_data_files(&config)?;
    let binary = read_own_binary()?;
    let bake = BakeOptions {
        base,
        archive,
        output,
        accel: opts.accel,
        distro: opts.distro,
        memory_mib: opts.memory_mib,
        timeout: opts.timeout,
        binary,
        cache_dir: None,
    };
    let report = crate::qcow2::bake(&config, &files, &bake)?;
    eprintln!(
        "wrote {}: {} ({} bytes), qcow2 for {}, {} virtual disk",
        report.output.display(),
        crate::qcow2::progress::format_size(report.output_bytes),
        report.output_bytes,
        bake.distro,
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
pub fn user_data_files(config: &Config) -> Result<Vec<crate::render::FileEntry>> {
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
        BinaryPayload::Url { .. } => format!(
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
