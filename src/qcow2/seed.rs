//! The bake VM's inputs besides its disk: the NoCloud seed (an ISO 9660 image with volume
//! id `cidata` holding `user-data` and `meta-data`, made with genisoimage) and the payload
//! drive: the registry image archive and the regimage binary on one raw, read-only drive.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::cloudinit::DriveExtent;
use crate::cmd::Task;

/// Sector size of the payload drive.
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
    Task::new("Making the seed image", genisoimage)
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(&ud)
        .arg(&md)
        .run()
        .with_context(|| format!("making the seed image {}", iso.display()))?;
    Ok(iso)
}

/// The bake VM's payload drive: the registry image archive, then the regimage binary, each
/// from a sector boundary and zero-padded to whole sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadDrive {
    pub path: PathBuf,
    pub archive: DriveExtent,
    pub binary: DriveExtent,
}

/// Writes the payload drive at `drive` (see [`PayloadDrive`]), hashing each part as it is
/// copied: the guest checks what it reads against these digests.
pub fn make_payload_drive(archive: &Path, binary: &[u8], drive: &Path) -> Result<PayloadDrive> {
    let mut out = File::create(drive).with_context(|| format!("creating {}", drive.display()))?;
    let src = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let archive_extent = append_padded(&mut BufReader::new(src), &mut out, 0)
        .with_context(|| format!("copying {} to {}", archive.display(), drive.display()))?;
    if archive_extent.size == 0 {
        anyhow::bail!("{} is empty", archive.display());
    }
    let offset = archive_extent.size.div_ceil(SECTOR) * SECTOR;
    let binary_extent = append_padded(&mut &binary[..], &mut out, offset)
        .with_context(|| format!("copying the regimage binary to {}", drive.display()))?;
    if binary_extent.size == 0 {
        anyhow::bail!("the regimage binary is empty");
    }
    // Zeros by extension: the padding costs no disk space.
    let end = (offset + binary_extent.size).div_ceil(SECTOR) * SECTOR;
    out.set_len(end)
        .with_context(|| format!("padding {}", drive.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", drive.display()))?;
    Ok(PayloadDrive {
        path: drive.to_path_buf(),
        archive: archive_extent,
        binary: binary_extent,
    })
}

/// Copies `src` to `out` from byte `offset`, returning the extent it fills.
fn append_padded(src: &mut impl Read, out: &mut File, offset: u64) -> io::Result<DriveExtent> {
    out.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok(DriveExtent {
        offset,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_drive_holds_archive_then_binary_on_sector_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.tar");
        let data: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        let bin = b"\x7fELF regimage".to_vec();
        fs::write(&src, &data).unwrap();
        let d = make_payload_drive(&src, &bin, &dir.path().join("a.img")).unwrap();
        assert_eq!(d.archive.offset, 0);
        assert_eq!(d.archive.size, 1300);
        assert_eq!(d.archive.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(d.binary.offset, 1536);
        assert_eq!(d.binary.size, bin.len() as u64);
        assert_eq!(d.binary.sha256, hex::encode(Sha256::digest(&bin)));
        let img = fs::read(&d.path).unwrap();
        assert_eq!(img.len(), 2048);
        assert_eq!(&img[..1300], &data[..]);
        assert!(img[1300..1536].iter().all(|&b| b == 0));
        assert_eq!(&img[1536..1536 + bin.len()], &bin[..]);
        assert!(img[1536 + bin.len()..].iter().all(|&b| b == 0));
        // An archive of whole sectors leaves no gap.
        fs::write(&src, vec![7u8; 1024]).unwrap();
        let d = make_payload_drive(&src, &[1u8; 512], &dir.path().join("b.img")).unwrap();
        assert_eq!(d.binary.offset, 1024);
        assert_eq!(fs::metadata(&d.path).unwrap().len(), 1536);
        // Empty parts are refused.
        assert!(make_payload_drive(&src, &[], &dir.path().join("c.img")).is_err());
        fs::write(&src, b"").unwrap();
        assert!(make_payload_drive(&src, &bin, &dir.path().join("d.img")).is_err());
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
