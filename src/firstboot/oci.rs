//! The baked registry image archive (an OCI archive: `oci-layout`, `index.json` and
//! `blobs/sha256/*` in a tar), checked against the pinned digest before Podman sees it.
//!
//! `podman load` may rewrite the manifest, so the check happens on the archive itself: the
//! SHA-256 of the manifest blob's bytes must equal the pin. The pin may also name an image
//! index (a multi-platform list); then its linux/amd64 child is the image. Every blob read
//! is hashed, so a blob that does not match its name is refused too. The image ID Podman
//! reports after loading is the config digest found here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Manifests and indexes are small (registries cap them at 4 MiB); layers are not read.
const MAX_JSON_BLOB: u64 = 4 << 20;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The pinned image as found in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// `sha256:...` of the image manifest (the pin, or the pinned index's amd64 child).
    pub manifest_digest: String,
    /// `sha256:...` of the image config: Podman's image ID after loading.
    pub config_digest: String,
    /// The pinned index's digest, when the pin named an index.
    pub index_digest: Option<String>,
}

/// The archive holds an image, but not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the registry image archive {archive} holds {found} but the config pins {pinned}; \
     nothing was loaded or started and the archive is left in place: rebuild the image with \
     the pinned digest (or fix registry.image)"
)]
pub struct DigestMismatch {
    pub archive: String,
    pub pinned: String,
    /// The digests the archive's index.json names, comma separated.
    pub found: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads `archive` and finds the image `pinned` (`sha256:...`) in it.
pub fn inspect_archive(archive: &Path, pinned: &str) -> Result<ArchiveImage> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let files = small_entries(file).with_context(|| format!("reading {}", archive.display()))?;
    find_image(&files, pinned, &archive.display().to_string())
}

/// Every entry of the tar small enough to be JSON, by normalized path.
fn small_entries(reader: impl Read) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().context("listing the tar entries")? {
        let mut entry = entry.context("reading a tar entry")?;
        if !entry.header().entry_type().is_file() || entry.size() > MAX_JSON_BLOB {
            continue;
        }
        let path = entry
            .path()
            .context("reading a tar entry's path")?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {path} from the tar"))?;
        files.insert(path, bytes);
    }
    Ok(files)
}

/// The pinned image among `files` (an OCI layout's paths and contents).
fn find_image(files: &BTreeMap<String, Vec<u8>>, pinned: &str, name: &str) -> Result<ArchiveImage> {
    let index_bytes = files.get("index.json").with_context(|| {
        format!("{name} is not an OCI archive: it has no index.json (make it with `skopeo copy --preserve-digests ... oci-archive:FILE`)")
    })?;
    let index: IndexDoc =
        serde_json::from_slice(index_bytes).with_context(|| format!("parsing index.json in {name}"))?;
    let mut found = Vec::new();
    for desc in &index.manifests {
        found.push(desc.digest.clone());
        let bytes = blob(files, &desc.digest, name)?;
        if desc.digest == pinned {
            return image_from(files, pinned, bytes, name);
        }
        // A top-level index whose child is the pin (a platform manifest pinned directly).
        if is_index(desc.media_type.as_deref(), bytes) {
            let child_index: IndexDoc = serde_json::from_slice(bytes)
                .with_context(|| format!("parsing the index {} in {name}", desc.digest))?;
            for child in &child_index.manifests {
                found.push(child.digest.clone());
                if child.digest == pinned {
                    let child_bytes = blob(files, &child.digest, name)?;
                    return image_from(files, pinned, child_bytes, name);
                }
            }
        }
    }
    Err(DigestMismatch {
        archive: name.to_string(),
        pinned: pinned.to_string(),
        found: if found.is_empty() {
            "no image".into()
        } else {
            found.join(", ")
        },
    }
    .into())
}

fn is_index(media_type: Option<&str>, bytes: &[u8]) -> bool {
    if media_type.is_some_and(|t| INDEX_TYPES.contains(&t)) {
        return true;
    }
    serde_json::from_slice::<IndexDoc>(bytes).is_ok_and(|doc| {
        doc.media_type.as_deref().is_some_and(|t| INDEX_TYPES.contains(&t))
    })
}

/// The image behind the pinned blob: the blob itself when it is a manifest, its linux/amd64
/// child when it is an index.
fn image_from(
    files: &BTreeMap<String, Vec<u8>>,
    pinned: &str,
    bytes: &[u8],
    name: &str,
) -> Result<ArchiveImage> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).with_context(|| format!("parsing the manifest {pinned} in {name}"))?;
    let is_list = doc.media_type.as_deref().is_some_and(|t| INDEX_TYPES.contains(&t))
        || (doc.config.is_none() && doc.manifests.is_some());
    if !is_list {
        return manifest_image(files, pinned, &doc, None, name);
    }
    let children = doc.manifests.unwrap_or_default();
    let Some(child) = children.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    }) else {
        bail!("the pinned index {pinned} in {name} has no linux/amd64 image");
    };
    let child_bytes = blob(files, &child.digest, name)?;
    let child_doc: ManifestDoc = serde_json::from_slice(child_bytes)
        .with_context(|| format!("parsing the manifest {} in {name}", child.digest))?;
    manifest_image(files, &child.digest, &child_doc, Some(pinned.to_string()), name)
}

fn manifest_image(
    files: &BTreeMap<String, Vec<u8>>,
    digest: &str,
    doc: &ManifestDoc,
    index_digest: Option<String>,
    name: &str,
) -> Result<ArchiveImage> {
    let config = doc
        .config
        .as_ref()
        .with_context(|| format!("the manifest {digest} in {name} has no config"))?;
    // The config is the image ID; make sure the archive really carries it.
    blob(files, &config.digest, name)?;
    Ok(ArchiveImage {
        manifest_digest: digest.to_string(),
        config_digest: config.digest.clone(),
        index_digest,
    })
}

/// The blob named `digest`, checked against its own name.
fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str, name: &str) -> Result<&'a [u8]> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest:?} in {name} is not a sha256 digest"))?;
    let bytes = files
        .get(&format!("blobs/sha256/{hex}"))
        .with_context(|| format!("{name} lacks the blob {digest}"))?;
    let actual = sha256_digest(bytes);
    if actual != digest {
        bail!("the blob {digest} in {name} is damaged: its SHA-256 is {actual}");
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
pub(crate) mod tests {
    use super::*;

    /// A tar of an OCI layout: one amd64 image and one arm64 image under an index, with
    /// index.json naming either the index or (with `top_is_manifest`) the amd64 manifest.
    pub(crate) struct TestArchive {
        pub bytes: Vec<u8>,
        pub amd64_manifest: String,
        pub amd64_config: String,
        pub index: String,
    }

    fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data).unwrap();
    }

    pub(crate) fn test_archive(top_is_manifest: bool, corrupt_config: bool) -> TestArchive {
        let mut tar = tar::Builder::new(Vec::new());
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut put = |bytes: Vec<u8>| {
            let d = sha256_digest(&bytes);
            blobs.push((d.clone(), bytes));
            d
        };
        let layer = put(b"not really a layer".to_vec());
        let mut manifest_for = |arch: &str| {
            let config = put(format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).into_bytes());
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
            );
            (put(manifest.into_bytes()), config)
        };
        let (amd64, amd64_config) = manifest_for("amd64");
        let (arm64, _) = manifest_for("arm64");
        let index_doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{arm64}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{amd64}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let index = put(index_doc.into_bytes());
        let top = if top_is_manifest {
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{amd64}","size":1}}]}}"#
            )
        } else {
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{index}","size":1}}]}}"#
            )
        };
        add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add(&mut tar, "index.json", top.as_bytes());
        for (digest, bytes) in &blobs {
            let mut bytes = bytes.clone();
            if corrupt_config && *digest == amd64_config {
                bytes.push(b' ');
            }
            let hex = digest.trim_start_matches("sha256:");
            add(&mut tar, &format!("blobs/sha256/{hex}"), &bytes);
        }
        TestArchive {
            bytes: tar.into_inner().unwrap(),
            amd64_manifest: amd64,
            amd64_config,
            index,
        }
    }

    fn inspect(bytes: &[u8], pin: &str) -> Result<ArchiveImage> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.oci.tar");
        std::fs::write(&path, bytes).unwrap();
        inspect_archive(&path, pin)
    }

    #[test]
    fn pinned_manifest_is_found() {
        let a = test_archive(true, false);
        let image = inspect(&a.bytes, &a.amd64_manifest).unwrap();
        assert_eq!(image.manifest_digest, a.amd64_manifest);
        assert_eq!(image.config_digest, a.amd64_config);
        assert_eq!(image.index_digest, None);
    }

    #[test]
    fn pinned_index_gives_its_amd64_child() {
        let a = test_archive(false, false);
        let image = inspect(&a.bytes, &a.index).unwrap();
        assert_eq!(image.manifest_digest, a.amd64_manifest);
        assert_eq!(image.config_digest, a.amd64_config);
        assert_eq!(image.index_digest.as_deref(), Some(a.index.as_str()));
        // The platform manifest pinned directly, inside an archive of the whole index.
        let image = inspect(&a.bytes, &a.amd64_manifest).unwrap();
        assert_eq!(image.config_digest, a.amd64_config);
    }

    #[test]
    fn another_digest_is_a_mismatch_naming_both() {
        let a = test_archive(true, false);
        let pin = format!("sha256:{}", "1".repeat(64));
        let e = inspect(&a.bytes, &pin).unwrap_err();
        let mismatch = e.downcast_ref::<DigestMismatch>().unwrap();
        assert_eq!(mismatch.found, a.amd64_manifest);
        let text = e.to_string();
        assert!(text.contains(&pin) && text.contains(&a.amd64_manifest), "{text}");
        assert!(text.contains("left in place"), "{text}");
    }

    #[test]
    fn damaged_blob_and_non_oci_archive_are_refused() {
        let a = test_archive(true, true);
        let e = inspect(&a.bytes, &a.amd64_manifest).unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
        let mut tar = tar::Builder::new(Vec::new());
        add(&mut tar, "manifest.json", b"[]");
        let e = inspect(&tar.into_inner().unwrap(), &a.amd64_manifest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no index.json"), "{e}");
        let e = inspect_archive(Path::new("/nonexistent.tar"), "sha256:0").unwrap_err();
        assert!(format!("{e:#}").contains("opening /nonexistent.tar"), "{e:#}");
    }
}
