//! Small filesystem helpers: atomic writes with the mode set before the file appears,
//! directories with exact modes, and ownership changes by name.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `contents` to `path` atomically: a temporary file in the same directory gets the
/// mode, the data and an fsync, then is renamed over `path`; the directory is synced after.
/// A crash leaves either the old file or the new one, never a half-written one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    crash_point(path)?;
    let dir = parent_of(path)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".regimage-tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // The umask may have narrowed the mode given at creation; set it exactly.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", tmp.path().display()))?;
    tmp.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {}", path.display()))?;
    sync_dir(dir)
}

/// Like [`write_atomic`], then gives the file to `owner`/`group` (names resolved on this
/// machine) before it is renamed into place, so it is never visible with the wrong owner.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Ownership>,
) -> Result<()> {
    let Some(owner) = owner else {
        return write_atomic(path, contents, mode);
    };
    crash_point(path)?;
    let dir = parent_of(path)?;
    let tmp = tempfile::Builder::new()
        .prefix(".regimage-tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let result = (|| -> Result<()> {
        let mut file = file;
        owner.apply(&tmp_path)?;
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", tmp_path.display()))?;
        file.write_all(contents)
            .with_context(|| format!("writing {}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        Ok(())
    })();
    result?;
    tmp_path
        .persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {}", path.display()))?;
    sync_dir(dir)
}

/// Removes `path`; a file that is already gone is fine. Returns whether it existed.
pub fn remove_file_if_exists(path: &Path) -> Result<bool> {
    crash_point(path)?;
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Unit tests stop a run before its Nth change to the filesystem, as a power cut would
/// ([`crash_points`]); elsewhere this does nothing.
fn crash_point(path: &Path) -> Result<()> {
    #[cfg(test)]
    crash_points::check(path)?;
    let _ = path;
    Ok(())
}

/// Unit tests: count the changes a run makes to the filesystem (writes and removals through
/// this module), or stop it with an error before one of them. Per thread.
#[cfg(test)]
pub mod crash_points {
    use std::cell::Cell;
    use std::path::Path;

    thread_local! {
        static SEEN: Cell<usize> = const { Cell::new(0) };
        static CRASH_AT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Starts counting from zero; with `crash_at` = Some(k), the change numbered k (from 1)
    /// fails.
    pub fn arm(crash_at: Option<usize>) {
        SEEN.with(|s| s.set(0));
        CRASH_AT.with(|c| c.set(crash_at));
    }

    /// The changes seen since [`arm`].
    pub fn seen() -> usize {
        SEEN.with(Cell::get)
    }

    pub(super) fn check(path: &Path) -> anyhow::Result<()> {
        let n = SEEN.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        if CRASH_AT.with(Cell::get) == Some(n) {
            anyhow::bail!("injected crash before change {n} ({})", path.display());
        }
        Ok(())
    }
}

/// Numeric owner and group for files that must not stay root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
}

impl Ownership {
    /// Changes the owner of `path` (not following a final symlink).
    pub fn apply(self, path: &Path) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).with_context(|| {
            format!(
                "changing owner of {} to {}:{}",
                path.display(),
                self.uid,
                self.gid
            )
        })
    }
}

/// Creates `path` and its missing parents, and sets `path` itself to exactly `mode`.
/// Parents that did not exist get 0755.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
        }
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("creating directory {}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// Refuses a symbolic link at `path`, the directory the config key `key` names (a missing
/// path or a real directory passes): first boot would chown or chmod what it points at.
/// A link is a fact of the machine, so the config check cannot see it.
pub fn refuse_symlink(path: &Path, key: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            anyhow::bail!(
                "{} ({key}) is a symbolic link to {target}; first boot will not change the owner or mode of what a link points at: set {key} to the real directory, or replace the link with a directory",
                path.display()
            )
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("looking at {}", path.display())),
    }
}

/// `root` joined with an absolute target path (`/etc/x` under `/tmp/r` is `/tmp/r/etc/x`).
pub fn under_root(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

fn parent_of(path: &Path) -> Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => anyhow::bail!("{} has no parent directory", path.display()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn ensure_dir_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/private");
        ensure_dir(&p, 0o750).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o750);
        ensure_dir(&p, 0o700).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn symlinked_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        ensure_dir(&real, 0o700).unwrap();
        refuse_symlink(&real, "output-dir").unwrap();
        refuse_symlink(&dir.path().join("missing"), "output-dir").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = refuse_symlink(&link, "registry.storage-dir").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("registry.storage-dir"), "{text}");
        assert!(text.contains("symbolic link"), "{text}");
        // A dangling link is refused too.
        fs::remove_dir(&real).unwrap();
        assert!(refuse_symlink(&link, "output-dir").is_err());
    }

    #[test]
    fn under_root_strips_leading_slash() {
        assert_eq!(
            under_root(Path::new("/r"), Path::new("/etc/x")),
            PathBuf::from("/r/etc/x")
        );
    }
}
