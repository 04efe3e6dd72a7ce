//! `regimage fetch-image`: the pinned registry image as an OCI archive, the input of
//! `regimage build --format qcow2 --registry-archive`.
//!
//! `skopeo copy --preserve-digests --multi-arch all docker://NAME@DIGEST oci-archive:FILE`
//! into a temporary file beside the output, then the archive is read back
//! ([`crate::oci_archive`]) and kept only if its manifest (or image index) is the pin.
//! `--preserve-digests` makes skopeo fail rather than change the manifest (DESIGN.md: a
//! changed manifest digest would no longer match the pin). `--multi-arch all` matters only
//! when the pin names an image index: the archive then carries the index, which the pin
//! is checked against, and every platform (larger; pinning the linux/amd64 manifest avoids
//! that, and the summary prints its digest).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{ConfigArg, UsageError};
use crate::cmd::Task;

/// The skopeo to run instead of the one on PATH (README, "Environment"; the tests' fake).
pub const SKOPEO_ENV: &str = "REGIMAGE_SKOPEO";
/// Mode of the archive: a public image, nothing secret.
const OUTPUT_MODE: u32 = 0o644;

#[derive(Debug, Args)]
#[command(
    after_help = "Environment: REGIMAGE_SKOPEO is the skopeo to run instead of the one on PATH."
)]
pub struct FetchImageArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where to write the OCI archive of registry.image.
    #[arg(short, long, value_name = "ARCHIVE")]
    pub output: PathBuf,
}

/// skopeo's arguments for copying `pinned` (`NAME@sha256:...`) to `dest`.
pub fn skopeo_args(pinned: &str, dest: &Path) -> Vec<String> {
    vec![
        "copy".into(),
        "--quiet".into(),
        "--preserve-digests".into(),
        "--multi-arch".into(),
        "all".into(),
        format!("docker://{pinned}"),
        format!("oci-archive:{}", dest.display()),
    ]
}

pub fn run(args: FetchImageArgs) -> Result<()> {
    let started = Instant::now();
    if args.output.is_dir() || args.output.as_os_str() == "-" {
        return Err(UsageError(format!(
            "-o {}: expected a file path for the archive",
            args.output.display()
        ))
        .into());
    }
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "-o {}: directory {} does not exist",
            args.output.display(),
            dir.display()
        ))
        .into());
    }
    let config = args.config.load()?;
    let image = config.image_ref()?;
    let skopeo = match std::env::var_os(SKOPEO_ENV) {
        Some(p) => PathBuf::from(p),
        None => crate::qcow2::qemu::find_tool("skopeo", "skopeo")?,
    };

    let work = tempfile::Builder::new()
        .prefix(".regimage-fetch-")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    let tmp = work.path().join("image.oci.tar");
    let pinned = image.pinned();
    eprintln!("copying {pinned} with skopeo...");
    Task::new(format!("Copying {pinned} with skopeo"), &skopeo)
        .args(skopeo_args(&pinned, &tmp))
        .run()
        .with_context(|| format!("copying {pinned} to an OCI archive"))?;
    let info = crate::oci_archive::inspect_pinned(&tmp, &image.digest)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(OUTPUT_MODE))
            .with_context(|| format!("setting mode {OUTPUT_MODE:o} on {}", tmp.display()))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.output.display()))?;
    let size = std::fs::metadata(&args.output)
        .with_context(|| format!("reading the size of {}", args.output.display()))?
        .len();
    eprintln!(
        "wrote {}: {} of {pinned}",
        args.output.display(),
        crate::qcow2::progress::format_size(size)
    );
    eprintln!(
        "manifest {} (linux/amd64), image ID {}",
        info.manifest_digest, info.config_digest
    );
    if let Some(index) = &info.index_digest {
        eprintln!(
            "registry.image pins the image index {index}: the archive holds every platform. \
             Pin the linux/amd64 manifest for a smaller archive: {}@{}",
            image.name, info.manifest_digest
        );
    }
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
