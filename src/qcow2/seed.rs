//! The bake VM's inputs besides its disk: the NoCloud seed (an ISO 9660 image with volume
//! id `cidata` holding `user-data` and `meta-data`, made with genisoimage) and the registry
//! image archive as a raw drive (a copy padded with zeros to whole 512-byte sectors).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::cmd::CommandRunExt as _;

/// Sector size of the archive drive.
const SECTOR: u64 = 512;

/// Finds genisoimage (or says which package brings it).
pub fn genisoimage() -> Result<PathBuf> {
    super::qemu::find_tool("genisoimage", "genisoimage")
}

/// meta-data of the bake: a fresh instance id, so cloud-init runs as on a new machine. No
/// `local-hostname`: cloud-init then keeps the base's hostname, instead of leaving a bake
/// name in /etc/hostname for clouds that do not set one.
pub fn meta_data(instance_id: &str) -> String {
    format!("instance-id: {instance_id}\n")
}

/// An instance id that differs from run to run (time and process id; not a secret).
pub fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("regimage-bake-{:x}-{:x}", nanos, std::process::id())
}

/// Writes `user-data` and `meta-data` under `dir/seed/` and makes `dir/seed.iso`.
pub fn make_seed_iso(
    genisoimage: &Path,
    dir: &Path,
    user_data: &str,
    meta_data: &str,
) -> Result<PathBuf> {
    let seed_dir = dir.join("seed");
    fs::create_dir(&seed_dir).with_context(|| format!("creating {}", seed_dir.display()))?;
    let ud = seed_dir.join("user-data");
    let md = seed_dir.join("meta-data");
    fs::write(&ud, user_data).with_context(|| format!("writing {}", ud.display()))?;
    fs::write(&md, meta_data).with_context(|| format!("writing {}", md.display()))?;
    let iso = dir.join("seed.iso");
    std::process::Command::new(genisoimage)
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(&ud)
        .arg(&md)
        .run()
        .with_context(|| format!("making the seed image {}", iso.display()))?;
    Ok(iso)
}

/// The archive as the guest will check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveDrive {
    pub path: PathBuf,
    /// The archive's own size (the drive is this, rounded up to whole sectors).
    pub size: u64,
    pub sha256: String,
}

/// Copies `archive` to `drive`, hashing it, and pads the copy with zeros to a multiple of
/// 512 bytes (a block device has whole sectors; the guest reads back exactly `size` bytes).
pub fn make_archive_drive(archive: &Path, drive: &Path) -> Result<ArchiveDrive> {
    let src = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut reader = BufReader::new(src);
    let mut out = File::create(drive).with_context(|| format!("creating {}", drive.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", archive.display())),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", drive.display()))?;
        size += n as u64;
    }
    if size == 0 {
        anyhow::bail!("{} is empty", archive.display());
    }
    let padded = size.div_ceil(SECTOR) * SECTOR;
    // Zeros by extension: the padding costs no disk space.
    out.set_len(padded)
        .with_context(|| format!("padding {}", drive.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", drive.display()))?;
    Ok(ArchiveDrive {
        path: drive.to_path_buf(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_drive_is_padded_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.tar");
        let data: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &data).unwrap();
        let d = make_archive_drive(&src, &dir.path().join("a.img")).unwrap();
        assert_eq!(d.size, 1300);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&data)));
        let img = fs::read(&d.path).unwrap();
        assert_eq!(img.len(), 1536);
        assert_eq!(&img[..1300], &data[..]);
        assert!(img[1300..].iter().all(|&b| b == 0));
        // A whole number of sectors stays as it is.
        fs::write(&src, vec![7u8; 1024]).unwrap();
        let d = make_archive_drive(&src, &dir.path().join("b.img")).unwrap();
        assert_eq!(fs::metadata(&d.path).unwrap().len(), 1024);
        fs::write(&src, b"").unwrap();
        assert!(make_archive_drive(&src, &dir.path().join("c.img")).is_err());
    }

    #[test]
    fn meta_data_and_instance_ids() {
        let a = instance_id();
        assert!(a.starts_with("regimage-bake-"));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a, instance_id());
        assert_eq!(meta_data("x"), "instance-id: x\n");
    }
}
