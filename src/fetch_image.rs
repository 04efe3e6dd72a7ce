//! `regimage fetch-image`: the pinned registry image as an OCI archive, the input of
//! `regimage build qcow2 --registry-archive`.
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

use crate::cmd::Task;
use crate::config::Config;
use crate::error::UsageError;

/// The skopeo to run instead of the one on PATH (README, "Environment"; the tests' fake).
pub const SKOPEO_ENV: &str = "REGIMAGE_SKOPEO";
/// Mode of the archive: a public image, nothing secret.
const OUTPUT_MODE: u32 = 0o644;

/// What `fetch-image` fetches (the image the config pins) and where it writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The site config; `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    /// The OCI archive to write.
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

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    if opts.output.is_dir() || opts.output.as_os_str() == "-" {
        return Err(UsageError(format!(
            "-o {}: expected a file path for the archive",
            opts.output.display()
        ))
        .into());
    }
    let dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "-o {}: directory {} does not exist",
            opts.output.display(),
            dir.display()
        ))
        .into());
    }
    let config = Config::load(opts.config.as_deref())?;
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
    std::fs::rename(&tmp, &opts.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), opts.output.display()))?;
    let size = std::fs::metadata(&opts.output)
        .with_context(|| format!("reading the size of {}", opts.output.display()))?
        .len();
    eprintln!(
        "wrote {}: {} of {pinned}",
        opts.output.display(),
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
