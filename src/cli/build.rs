//! `regimage build [user-data|qcow2]`: each format its own subcommand with only its own
//! flags, so a flag of the other format is refused by clap; no subcommand is `user-data`.
//!
//! The old spelling `build --format user-data|qcow2 ...` is rewritten to the subcommand
//! before parsing ([`respell_format`]), so scripts written for it keep working.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::ConfigArg;
use crate::build::{
    self, BinaryUrl, MaxSize, Qcow2Options, UserDataOptions, DEFAULT_MEMORY_MIB,
    DEFAULT_QCOW2_OUTPUT, DEFAULT_TIMEOUT_SECS, DEFAULT_USER_DATA_OUTPUT,
};
use crate::distro::Distro;
use crate::error::UsageError;
use crate::qcow2::qemu::Accel;

/// `regimage build`: without a subcommand, the flags are those of `build user-data`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BuildArgs {
    #[command(subcommand)]
    pub format: Option<BuildFormat>,
    #[command(flatten)]
    pub user_data: UserDataArgs,
}

#[derive(Debug, Subcommand)]
pub enum BuildFormat {
    /// A #cloud-config for a stock Ubuntu 24.04 (or Debian 13) cloud image (the default).
    UserData(UserDataArgs),
    /// A qcow2 image with everything installed: a cloud image baked in a QEMU VM.
    Qcow2(Qcow2Args),
}

/// The flags both formats take besides `-o`.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct Target {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Target distribution: package names, Podman version, rootless network helper.
    #[arg(long, value_enum, default_value_t = Distro::default())]
    pub distro: Distro,
}

#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct UserDataArgs {
    #[command(flatten)]
    pub target: Target,
    /// Output file; `-` for standard output.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_USER_DATA_OUTPUT)]
    pub output: PathBuf,
    /// Fail instead of writing output larger than this: a byte count with an optional
    /// K, KiB, M or MiB suffix, or a cloud's user-data limit: ec2 (16 KiB), openstack or
    /// azure (64 KiB), gce (256 KiB).
    #[arg(long, value_name = "BYTES|PRESET", value_parser = build::parse_max_size)]
    pub max_size: Option<MaxSize>,
    /// Download the regimage binary from this http(s) URL at first boot instead of
    /// embedding it (needs --binary-sha256). Use it where user-data size is limited.
    #[arg(
        long,
        value_name = "URL",
        requires = "binary_sha256",
        value_parser = build::parse_binary_url
    )]
    pub binary_url: Option<String>,
    /// sha256 of the binary at --binary-url (64 hex digits, `sha256sum regimage`); the
    /// machine refuses to install a download that does not match.
    #[arg(
        long,
        value_name = "HEX",
        requires = "binary_url",
        value_parser = build::parse_sha256
    )]
    pub binary_sha256: Option<String>,
}

#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct Qcow2Args {
    #[command(flatten)]
    pub target: Target,
    /// Output file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_QCOW2_OUTPUT)]
    pub output: PathBuf,
    /// The cloud image to bake, a qcow2 or raw file (never modified), or `ubuntu-24.04`
    /// for the official Ubuntu 24.04 cloud image (downloaded, checked against its
    /// SHA256SUMS and cached in ~/.cache/regimage/bases).
    #[arg(long, value_name = "IMAGE", required = true)]
    pub base: String,
    /// OCI archive of the registry image pinned by registry.image (make it with
    /// `regimage fetch-image`); refused unless its manifest digest is the pin.
    #[arg(long, value_name = "ARCHIVE", required = true)]
    pub registry_archive: PathBuf,
    /// How QEMU runs the bake VM. Environment: REGIMAGE_QEMU_SYSTEM (the QEMU to run),
    /// REGIMAGE_KVM_DEVICE (the device auto probes, else /dev/kvm).
    #[arg(long, value_enum, default_value_t = Accel::default())]
    pub accel: Accel,
    /// Memory of the bake VM in MiB.
    #[arg(
        long,
        value_name = "MiB",
        default_value_t = DEFAULT_MEMORY_MIB,
        value_parser = clap::value_parser!(u32).range(1024..=65536)
    )]
    pub memory: u32,
    /// Give up on boot+bake after this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: u64,
    /// Directory URL of the official base image and its checksum file (a mirror);
    /// also REGIMAGE_UBUNTU_BASE_URL.
    #[arg(long, value_name = "URL", hide = true)]
    pub base_url: Option<String>,
}

impl BuildArgs {
    pub fn run(self) -> Result<()> {
        match self.format {
            None => build::user_data(&self.user_data.into_options()),
            Some(BuildFormat::UserData(args)) => build::user_data(&args.into_options()),
            Some(BuildFormat::Qcow2(args)) => build::qcow2(&args.into_options()),
        }
    }
}

impl UserDataArgs {
    pub fn into_options(self) -> UserDataOptions {
        // clap's `requires` makes the two flags come together or not at all.
        let binary_url = match (self.binary_url, self.binary_sha256) {
            (Some(url), Some(sha256)) => Some(BinaryUrl { url, sha256 }),
            _ => None,
        };
        UserDataOptions {
            config: self.target.config.config,
            output: self.output,
            distro: self.target.distro,
            max_size: self.max_size,
            binary_url,
        }
    }
}

impl Qcow2Args {
    pub fn into_options(self) -> Qcow2Options {
        Qcow2Options {
            config: self.target.config.config,
            output: self.output,
            distro: self.target.distro,
            base: self.base,
            base_url: self.base_url,
            registry_archive: self.registry_archive,
            accel: self.accel,
            memory_mib: self.memory,
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

/// The subcommand names `--format` used to take.
const FORMATS: [&str; 2] = ["user-data", "qcow2"];

/// Rewrites the old spelling `build ... --format F ...` (or `--format=F`) to
/// `build F ...`; other command lines pass unchanged. A `--format` that names no format, or
/// comes with a format subcommand, is refused with the new spelling.
pub(super) fn respell_format(mut args: Vec<OsString>) -> Result<Vec<OsString>, UsageError> {
    // The top-level flags take no value, so the first word that is not a flag is the
    // command (argument 0 is the program).
    let Some(build) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|i| i + 1)
        .filter(|&i| args[i] == "build")
    else {
        return Ok(args);
    };
    let rest = &args[build + 1..];
    let end = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    let found = rest[..end].iter().enumerate().find_map(|(i, a)| {
        let a = a.to_string_lossy();
        if a == "--format" {
            Some((
                i,
                2,
                rest.get(i + 1).map(|v| v.to_string_lossy().into_owned()),
            ))
        } else {
            a.strip_prefix("--format=")
                .map(|v| (i, 1, Some(v.to_string())))
        }
    });
    let Some((at, len, value)) = found else {
        return Ok(args);
    };
    let hint = "regimage build user-data [FLAGS] or regimage build qcow2 [FLAGS]";
    let format = match value {
        Some(v) if FORMATS.contains(&v.as_str()) => v,
        Some(v) => {
            return Err(UsageError(format!(
                "--format {v}: unknown format; the formats are subcommands now: {hint}"
            )))
        }
        None => {
            return Err(UsageError(format!(
                "--format needs a value; the formats are subcommands now: {hint}"
            )))
        }
    };
    if rest.first().is_some_and(|a| {
        let a = a.to_string_lossy();
        FORMATS.contains(&a.as_ref())
    }) {
        return Err(UsageError(format!(
            "--format {format} with a format subcommand: drop --format ({hint})"
        )));
    }
    let at = build + 1 + at;
    args.drain(at..at + len);
    args.insert(build + 1, format.into());
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn build(args: &[&str]) -> BuildArgs {
        let mut all = vec!["regimage", "build"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::Build(b) => b,
            other => panic!("not build: {other:?}"),
        }
    }

    fn user_data(args: &[&str]) -> UserDataArgs {
        match build(args) {
            BuildArgs {
                format: Some(BuildFormat::UserData(u)),
                ..
            } => u,
            other => panic!("not user-data: {other:?}"),
        }
    }

    fn qcow2(args: &[&str]) -> Qcow2Args {
        match build(args).format {
            Some(BuildFormat::Qcow2(q)) => q,
            other => panic!("not qcow2: {other:?}"),
        }
    }

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn no_subcommand_is_user_data_on_defaults() {
        let b = build(&[]);
        assert!(b.format.is_none());
        let opts = b.user_data.into_options();
        assert_eq!(opts.output, PathBuf::from("user-data"));
        assert_eq!(opts.config, None);
        assert_eq!(opts.distro, Distro::default());
        assert_eq!(opts.binary_url, None);
        // Its flags, too.
        let b = build(&["-o", "-", "--max-size", "ec2", "--distro", "debian-13"]);
        assert!(b.format.is_none());
        assert_eq!(b.user_data.output, PathBuf::from("-"));
        assert_eq!(b.user_data.target.distro, Distro::Debian13);
        assert_eq!(b.user_data.max_size.map(|m| m.bytes), Some(16384));
    }

    #[test]
    fn subcommands_and_their_defaults() {
        let u = user_data(&["user-data", "-c", "site.yaml"]);
        assert_eq!(u.output, PathBuf::from("user-data"));
        assert_eq!(u.target.config.config, Some(PathBuf::from("site.yaml")));
        let q = qcow2(&["qcow2", "--base", "b.img", "--registry-archive", "r.tar"]);
        let opts = q.into_options();
        assert_eq!(opts.output, PathBuf::from("regimage.qcow2"));
        assert_eq!(opts.memory_mib, 2048);
        assert_eq!(opts.timeout, Duration::from_secs(3600));
        assert_eq!(opts.accel, Accel::default());
        assert_eq!(opts.base, "b.img");
    }

    #[test]
    fn the_old_spelling_means_the_subcommand() {
        assert_eq!(
            user_data(&["--format", "user-data", "-o", "user-data"]),
            user_data(&["user-data", "-o", "user-data"])
        );
        assert_eq!(
            user_data(&["-o", "x", "--format=user-data", "--distro", "debian-13"]),
            user_data(&["user-data", "-o", "x", "--distro", "debian-13"])
        );
        let q = [
            "--base",
            "b.img",
            "--registry-archive",
            "r.tar",
            "--accel",
            "tcg",
        ];
        let mut old = vec!["--format", "qcow2"];
        old.extend_from_slice(&q);
        let mut new = vec!["qcow2"];
        new.extend_from_slice(&q);
        assert_eq!(qcow2(&old), qcow2(&new));
        // A global flag may come before the command; other commands are left alone.
        assert_eq!(
            respell_format(words(&[
                "regimage", "-v", "build", "--format", "qcow2", "-o", "x"
            ]))
            .unwrap(),
            words(&["regimage", "-v", "build", "qcow2", "-o", "x"])
        );
        let untouched = words(&["regimage", "check", "--format", "qcow2"]);
        assert_eq!(respell_format(untouched.clone()).unwrap(), untouched);
    }

    #[test]
    fn the_old_spelling_gone_wrong_names_the_new_one() {
        for args in [
            &["regimage", "build", "--format", "qcow3"][..],
            &["regimage", "build", "-o", "x", "--format"],
            &["regimage", "build", "qcow2", "--format", "qcow2"],
        ] {
            let e = respell_format(words(args)).unwrap_err().to_string();
            assert!(e.contains("regimage build user-data"), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_of_the_other_format_are_refused() {
        for args in [
            &["regimage", "build", "--accel", "tcg"][..],
            &["regimage", "build", "user-data", "--base", "b.img"],
            &[
                "regimage",
                "build",
                "--format",
                "user-data",
                "--timeout",
                "9",
            ],
            &[
                "regimage",
                "build",
                "qcow2",
                "--base",
                "b",
                "--registry-archive",
                "r",
                "--max-size",
                "ec2",
            ],
            &[
                "regimage",
                "build",
                "qcow2",
                "--base",
                "b",
                "--registry-archive",
                "r",
                "--binary-url",
                "https://example.com/r",
            ],
            // Build-level flags and a subcommand do not mix.
            &["regimage", "build", "-o", "x", "qcow2"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        // qcow2 needs its inputs.
        let e = parse(&["regimage", "build", "qcow2", "--base", "b"]).unwrap_err();
        assert!(e.to_string().contains("--registry-archive"), "{e}");
        // The binary's URL and its digest come together.
        let sha = "a".repeat(64);
        assert!(parse(&["regimage", "build", "--binary-sha256", &sha]).is_err());
    }
}
