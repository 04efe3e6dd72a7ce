//! The base image of a bake: a file given by path, or a distribution's official cloud image
//! (`--base ubuntu-24.04`) downloaded into a cache and checked against the checksum file
//! published beside it.
//!
//! Cache: `$XDG_CACHE_HOME/regimage/bases` (or `~/.cache/regimage/bases`). The checksum file
//! is fetched on every build, so a cached image is re-verified each time: one that no longer
//! matches (damaged, or `current` moved to a newer build) is removed and fetched again. A
//! download goes to a temporary name in the cache and is renamed only after it verified.
//! Trust rests on HTTPS to the publisher; the checksum file's GPG signature is not checked.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::progress::{format_size, Progress};
use crate::distro::CloudImage;

/// A mirror (README, "Environment"; the tests' local server): the directory URL of the Ubuntu 24.04 image and its
/// SHA256SUMS (the hidden `--base-url` flag wins over it).
pub const UBUNTU_BASE_URL_ENV: &str = "REGIMAGE_UBUNTU_BASE_URL";
/// The checksum file is small; anything larger is not one.
const SUMS_MAX: u64 = 1024 * 1024;

/// A base image ready for the bake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBase {
    pub path: PathBuf,
    pub sha256: String,
    /// False when the cached copy verified and nothing was downloaded.
    pub downloaded: bool,
}

/// `$XDG_CACHE_HOME/regimage/bases`, else `$HOME/.cache/regimage/bases`.
pub fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
                "neither XDG_CACHE_HOME nor HOME is set; cannot place the base image cache",
            )?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("regimage").join("bases"))
}

/// The sha256 of `file` in a `sha256sum`-format list (`<hex>  name` or `<hex> *name`).
pub fn parse_sha256sums(text: &str, file: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (hex, name) = line.trim().split_once(char::is_whitespace)?;
        let name = name.trim_start();
        let name = name.strip_prefix('*').unwrap_or(name);
        let hex = hex.to_ascii_lowercase();
        (name == file && crate::cloudinit::check_sha256(&hex).is_ok()).then_some(hex)
    })
}

/// An HTTP agent: rustls with the aws-lc-rs provider (already in the tree for rcgen) and
/// the webpki root store; errors for 4xx/5xx.
fn agent() -> ureq::Agent {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer fails instead of hanging the build.
        .timeout_recv_body(None)
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("regimage/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Joins a directory URL and a file name.
pub fn join_url(base_url: &str, file: &str) -> String {
    if base_url.ends_with('/') {
        format!("{base_url}{file}")
    } else {
        format!("{base_url}/{file}")
    }
}

/// Makes sure `cache/<image.file>` is the published image: fetches the checksum file from
/// `base_url` (the table's URL when `None`), re-verifies a cached copy, downloads otherwise.
pub fn ensure_cloud_image(
    image: &CloudImage,
    base_url: Option<&str>,
    cache: &Path,
    interrupted: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<CachedBase> {
    let base_url = base_url.unwrap_or(image.base_url);
    let agent = agent();
    let sums_url = join_url(base_url, image.sha256sums);
    let sums = agent
        .get(&sums_url)
        .call()
        .with_context(|| format!("fetching {sums_url}"))?
        .body_mut()
        .with_config()
        .limit(SUMS_MAX)
        .read_to_string()
        .with_context(|| format!("reading {sums_url}"))?;
    let expected = parse_sha256sums(&sums, image.file)
        .with_context(|| format!("{sums_url} has no sha256 line for {}", image.file))?;

    crate::fsutil::ensure_dir(cache, 0o755)
        .with_context(|| format!("creating the base image cache {}", cache.display()))?;
    let cached = cache.join(image.file);
    if cached.exists() {
        progress.note(&format!("verifying the cached {}", cached.display()));
        let actual = sha256_file(&cached, interrupted)?;
        if actual == expected {
            return Ok(CachedBase {
                path: cached,
                sha256: expected,
                downloaded: false,
            });
        }
        progress.note(&format!(
            "the cached {} does not match {sums_url} (damaged, or a newer image was \
             published); removing it and downloading again",
            cached.display()
        ));
        fs::remove_file(&cached).with_context(|| format!("removing {}", cached.display()))?;
    }

    let url = join_url(base_url, image.file);
    progress.note(&format!("downloading {url}"));
    let mut response = agent
        .get(&url)
        .call()
        .with_context(|| format!("fetching {url}"))?;
    let total = response.body().content_length();
    let mut reader = response.body_mut().as_reader();
    // A temporary name in the cache (same filesystem): renamed only after it verified,
    // removed on any error or interruption.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.part-", image.file))
        .tempfile_in(cache)
        .with_context(|| format!("creating a temporary file in {}", cache.display()))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Err(super::Interrupted.into());
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("downloading {url}")),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        done += n as u64;
        let detail = match total {
            Some(t) if t > 0 => format!(
                "{} of {} ({}%)",
                format_size(done),
                format_size(t),
                done * 100 / t
            ),
            _ => format_size(done),
        };
        progress.tick(Some(&detail));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        bail!(
            "the download of {url} does not match {sums_url}: sha256 {actual}, published \
             {expected}; nothing was kept (try again, or check the mirror)"
        );
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(&cached)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the download to {}", cached.display()))?;
    progress.note(&format!(
        "downloaded and verified {} ({})",
        cached.display(),
        format_size(done)
    ));
    Ok(CachedBase {
        path: cached,
        sha256: expected,
        downloaded: true,
    })
}

/// sha256 of a file as hex; stops on SIGINT/SIGTERM.
pub fn sha256_file(path: &Path, interrupted: &Arc<AtomicBool>) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1024 * 1024, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Err(super::Interrupted.into());
        }
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines() {
        let hex = "ab".repeat(32);
        let text = format!(
            "{} *other.img\n{hex} *noble-server-cloudimg-amd64.img\n{} noble.tar.gz\n",
            "cd".repeat(32),
            "ef".repeat(32)
        );
        assert_eq!(
            parse_sha256sums(&text, "noble-server-cloudimg-amd64.img").as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(
            parse_sha256sums(&format!("{hex}  a.img\n"), "a.img").as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(parse_sha256sums(&text, "missing.img"), None);
        assert_eq!(parse_sha256sums("xyz *a.img\n", "a.img"), None);
        // Uppercase digests are accepted and lowered.
        assert_eq!(
            parse_sha256sums(&format!("{} *a.img", "AB".repeat(32)), "a.img").as_deref(),
            Some(hex.as_str())
        );
    }

    #[test]
    fn urls_join() {
        assert_eq!(join_url("http://h/d/", "f"), "http://h/d/f");
        assert_eq!(join_url("http://h/d", "f"), "http://h/d/f");
    }
}
