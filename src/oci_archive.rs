//! Reading an OCI archive (`skopeo copy ... oci-archive:FILE`): which image it holds.
//!
//! One pass over the tar: `index.json` is kept, every blob under `blobs/sha256/` is hashed
//! (a blob whose bytes do not match its name is an error) and the small ones are kept, since
//! manifests, indexes and configs are small JSON documents. Then `index.json` is followed to
//! the image manifest: directly, or through an image index to its linux/amd64 child.
//!
//! The registry image is pinned by its manifest digest (DESIGN.md: "Pin the platform manifest
//! digest ... verify after load by the image ID (config digest)"), so [`check_pin`] compares
//! the sha256 of the manifest blob's bytes with the pin; a pin may also name the image index.
//! This is the single OCI-archive reader of the crate: the bake uses it before it starts a VM,
//! `fetch-image` after skopeo wrote the file, first boot before `podman load`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Blobs up to this size are kept in memory for parsing (manifests, indexes, configs).
const SMALL_BLOB_MAX: u64 = 4 * 1024 * 1024;
/// `index.json` larger than this is not an OCI layout index.
const INDEX_JSON_MAX: u64 = 1024 * 1024;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The platform the appliance runs on; an image index is resolved to this child.
pub const PLATFORM_OS: &str = "linux";
pub const PLATFORM_ARCH: &str = "amd64";

/// A blob the image needs: digest (`sha256:<hex>`) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// What an OCI archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Digest of the image index when `index.json` points at one (a multi-platform archive).
    pub index_digest: Option<String>,
    /// Digest of the linux/amd64 image manifest: sha256 of the manifest blob's bytes.
    pub manifest_digest: String,
    /// Media type of that manifest (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// Digest of the image config: podman's image ID after `podman load`.
    pub config_digest: String,
    /// The layers, in order.
    pub layers: Vec<BlobRef>,
    /// `org.opencontainers.image.ref.name` of the `index.json` entry, e.g.
    /// `docker.io/library/registry:2`, when skopeo recorded one.
    pub ref_name: Option<String>,
    /// The config's `os` and `architecture`.
    pub os: String,
    pub architecture: String,
}

impl ArchiveInfo {
    /// True when `digest` names this archive's image manifest or its image index.
    pub fn matches(&self, digest: &str) -> bool {
        self.manifest_digest == digest || self.index_digest.as_deref() == Some(digest)
    }
}

/// The pin and the archive disagree: the build refuses the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PinMismatch {
    pub archive: String,
    pub pinned: String,
    pub manifest_digest: String,
    pub index_digest: Option<String>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} holds the image manifest {}",
            self.archive, self.manifest_digest
        )?;
        if let Some(index) = &self.index_digest {
            write!(f, " (image index {index})")?;
        }
        write!(
            f,
            ", but registry.image pins {}; make the archive from the pinned image with \
             `regimage fetch-image -c CONFIG -o ARCHIVE`, or fix the pin",
            self.pinned
        )
    }
}

/// Reads `path` and returns the image it holds (see the module docs).
pub fn inspect(path: &Path) -> Result<ArchiveInfo> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    inspect_reader(BufReader::new(file))
        .with_context(|| format!("reading the OCI archive {}", path.display()))
}

/// Like [`inspect`], then refuses an archive whose manifest (or index) is not `pinned`
/// (`sha256:<hex>`); the error is a [`PinMismatch`].
pub fn inspect_pinned(path: &Path, pinned: &str) -> Result<ArchiveInfo> {
    let info = inspect(path)?;
    check_pin(&info, pinned, path)?;
    Ok(info)
}

/// Fails with [`PinMismatch`] unless `pinned` names the archive's manifest or index.
pub fn check_pin(info: &ArchiveInfo, pinned: &str, path: &Path) -> Result<()> {
    if info.matches(pinned) {
        return Ok(());
    }
    Err(PinMismatch {
        archive: path.display().to_string(),
        pinned: pinned.to_string(),
        manifest_digest: info.manifest_digest.clone(),
        index_digest: info.index_digest.clone(),
    }
    .into())
}

/// The archive as one tar stream.
pub fn inspect_reader<R: Read>(reader: R) -> Result<ArchiveInfo> {
    let contents = scan(reader)?;
    resolve(&contents)
}

/// What the single pass over the tar collected.
#[derive(Debug, Default)]
struct Contents {
    index_json: Option<Vec<u8>>,
    /// hex digest -> size, for every blob (all verified).
    sizes: HashMap<String, u64>,
    /// hex digest -> bytes, for blobs up to [`SMALL_BLOB_MAX`].
    small: HashMap<String, Vec<u8>>,
}

fn scan<R: Read>(reader: R) -> Result<Contents> {
    let mut archive = tar::Archive::new(reader);
    let mut contents = Contents::default();
    for entry in archive.entries().context("reading the tar stream")? {
        let mut entry = entry.context("reading a tar entry")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().context("reading a tar entry's path")?;
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./").to_string();
        let size = entry.size();
        if name == "index.json" {
            if size > INDEX_JSON_MAX {
                bail!("index.json is {size} bytes; not an OCI image layout index");
            }
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            entry
                .read_to_end(&mut bytes)
                .context("reading index.json")?;
            contents.index_json = Some(bytes);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            check_hex(hex).with_context(|| format!("blob name {name}"))?;
            let keep = size <= SMALL_BLOB_MAX;
            let mut kept = Vec::new();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = entry
                    .read(&mut buf)
                    .with_context(|| format!("reading {name}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
                total += n as u64;
            }
            let actual = hex::encode(hasher.finalize());
            if actual != hex {
                bail!("blob {name} is corrupt: its sha256 is {actual}");
            }
            contents.sizes.insert(hex.to_string(), total);
            if keep {
                contents.small.insert(hex.to_string(), kept);
            }
        }
    }
    Ok(contents)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// Just enough of a manifest or index to tell which one it is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

fn resolve(contents: &Contents) -> Result<ArchiveInfo> {
    let index_json = contents
        .index_json
        .as_deref()
        .context("the archive has no index.json; is it an oci-archive made by skopeo?")?;
    let index: Index = serde_json::from_slice(index_json).context("parsing index.json")?;
    if index.schema_version != 2 {
        bail!(
            "index.json has schemaVersion {}; expected 2",
            index.schema_version
        );
    }
    let top = match index.manifests.as_slice() {
        [one] => one,
        [] => bail!("index.json lists no image"),
        many => bail!(
            "index.json lists {} images; expected exactly one (the pinned registry image)",
            many.len()
        ),
    };
    let ref_name = top
        .annotations
        .get("org.opencontainers.image.ref.name")
        .cloned();
    let top_bytes = blob(contents, top)?;
    let probe: Probe =
        serde_json::from_slice(top_bytes).with_context(|| format!("parsing {}", top.digest))?;
    let top_type = probe
        .media_type
        .clone()
        .or_else(|| top.media_type.clone())
        .unwrap_or_default();
    let is_index = top_type == OCI_INDEX
        || top_type == DOCKER_LIST
        || (top_type.is_empty() && probe.manifests.is_some());

    let list: Option<Index> = if is_index {
        Some(
            serde_json::from_slice(top_bytes)
                .with_context(|| format!("parsing the image index {}", top.digest))?,
        )
    } else {
        None
    };
    let (index_digest, manifest_desc) = if let Some(list) = &list {
        let child = list
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == PLATFORM_OS && p.architecture == PLATFORM_ARCH)
            })
            .with_context(|| {
                format!(
                    "the image index {} has no {PLATFORM_OS}/{PLATFORM_ARCH} image",
                    top.digest
                )
            })?;
        (Some(top.digest.clone()), child)
    } else {
        (None, top)
    };

    let manifest_bytes = blob(contents, manifest_desc)?;
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .with_context(|| format!("parsing the image manifest {}", manifest_desc.digest))?;
    if manifest.schema_version != 2 {
        bail!(
            "the image manifest {} has schemaVersion {}; expected 2",
            manifest_desc.digest,
            manifest.schema_version
        );
    }
    let media_type = manifest
        .media_type
        .clone()
        .or_else(|| manifest_desc.media_type.clone())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        bail!(
            "{} has media type {media_type}; expected an image manifest",
            manifest_desc.digest
        );
    }
    let config_bytes = blob(contents, &manifest.config)?;
    let config: ImageConfig = serde_json::from_slice(config_bytes)
        .with_context(|| format!("parsing the image config {}", manifest.config.digest))?;
    if config.os != PLATFORM_OS || config.architecture != PLATFORM_ARCH {
        bail!(
            "the image is for {}/{}; the appliance needs {PLATFORM_OS}/{PLATFORM_ARCH}",
            config.os,
            config.architecture
        );
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        present(contents, layer)?;
        layers.push(BlobRef {
            digest: layer.digest.clone(),
            size: layer.size,
        });
    }
    Ok(ArchiveInfo {
        index_digest,
        manifest_digest: manifest_desc.digest.clone(),
        manifest_media_type: media_type,
        config_digest: manifest.config.digest.clone(),
        layers,
        ref_name,
        os: config.os,
        architecture: config.architecture,
    })
}

/// The blob `desc` names must be in the archive with the size the descriptor gives.
fn present(contents: &Contents, desc: &Descriptor) -> Result<()> {
    let hex = digest_hex(&desc.digest)?;
    match contents.sizes.get(hex) {
        None => bail!("blob {} is not in the archive", desc.digest),
        Some(size) if *size != desc.size => bail!(
            "blob {} is {size} bytes; its descriptor says {}",
            desc.digest,
            desc.size
        ),
        Some(_) => Ok(()),
    }
}

/// The bytes of a small blob (already checked against its digest while reading).
fn blob<'a>(contents: &'a Contents, desc: &Descriptor) -> Result<&'a [u8]> {
    present(contents, desc)?;
    let hex = digest_hex(&desc.digest)?;
    contents
        .small
        .get(hex)
        .map(Vec::as_slice)
        .with_context(|| format!("blob {} is too large for a JSON document", desc.digest))
}

/// `sha256:<64 lowercase hex>` -> the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest:?} is not sha256"))?;
    check_hex(hex).with_context(|| format!("digest {digest:?}"))?;
    Ok(hex)
}

fn check_hex(hex: &str) -> Result<()> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        bail!("{hex:?} is not 64 lowercase hex digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    struct Fixture {
        tar: Vec<u8>,
        manifest: String,
        config: String,
        index: Option<String>,
    }

    fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes).unwrap();
    }

    fn blob_name(digest: &str) -> String {
        format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
    }

    /// An archive of one image; `as_index` wraps it in an image index with an arm64 sibling
    /// (whose blobs are absent, as skopeo leaves them without --all).
    fn fixture(arch: &str, as_index: bool) -> Fixture {
        let config = format!(r#"{{"architecture":"{arch}","os":"linux","config":{{}}}}"#);
        let layer = b"pretend layer bytes".to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
            sha(config.as_bytes()),
            config.len(),
            sha(&layer),
            layer.len()
        );
        let mut b = tar::Builder::new(Vec::new());
        let mut index_digest = None;
        let top = if as_index {
            let list = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":9,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
                "1".repeat(64),
                sha(manifest.as_bytes()),
                manifest.len()
            );
            append(&mut b, &blob_name(&sha(list.as_bytes())), list.as_bytes());
            index_digest = Some(sha(list.as_bytes()));
            (OCI_INDEX, sha(list.as_bytes()), list.len())
        } else {
            (OCI_MANIFEST, sha(manifest.as_bytes()), manifest.len())
        };
        let index_json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"docker.io/library/registry:2"}}}}]}}"#,
            top.0, top.1, top.2
        );
        append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        append(
            &mut b,
            &blob_name(&sha(config.as_bytes())),
            config.as_bytes(),
        );
        append(&mut b, &blob_name(&sha(&layer)), &layer);
        append(
            &mut b,
            &blob_name(&sha(manifest.as_bytes())),
            manifest.as_bytes(),
        );
        // index.json last: the reader must not depend on the order.
        append(&mut b, "index.json", index_json.as_bytes());
        Fixture {
            tar: b.into_inner().unwrap(),
            manifest: sha(manifest.as_bytes()),
            config: sha(config.as_bytes()),
            index: index_digest,
        }
    }

    #[test]
    fn single_manifest_archive() {
        let f = fixture("amd64", false);
        let info = inspect_reader(&f.tar[..]).unwrap();
        assert_eq!(info.manifest_digest, f.manifest);
        assert_eq!(info.config_digest, f.config);
        assert_eq!(info.index_digest, None);
        assert_eq!(info.layers.len(), 1);
        assert_eq!(
            info.ref_name.as_deref(),
            Some("docker.io/library/registry:2")
        );
        assert!(info.matches(&f.manifest));
        assert!(!info.matches(&f.config));
        let path = Path::new("a.tar");
        assert!(check_pin(&info, &f.manifest, path).is_ok());
        let e = check_pin(&info, &sha(b"other"), path).unwrap_err();
        let mismatch = e.downcast_ref::<PinMismatch>().unwrap();
        assert_eq!(mismatch.manifest_digest, f.manifest);
        assert!(e.to_string().contains("fetch-image"), "{e}");
    }

    #[test]
    fn index_archive_resolves_to_amd64_child() {
        let f = fixture("amd64", true);
        let info = inspect_reader(&f.tar[..]).unwrap();
        assert_eq!(info.manifest_digest, f.manifest);
        assert_eq!(info.index_digest, f.index);
        // The pin may name the index or the child.
        assert!(info.matches(f.index.as_deref().unwrap()));
        assert!(info.matches(&f.manifest));
    }

    #[test]
    fn wrong_platform_is_refused() {
        let f = fixture("arm64", false);
        let e = inspect_reader(&f.tar[..]).unwrap_err();
        assert!(format!("{e:#}").contains("linux/arm64"), "{e:#}");
    }

    #[test]
    fn corrupt_blob_is_refused() {
        let f = fixture("amd64", false);
        let mut tar = f.tar.clone();
        // Flip a byte of the layer's data (it follows its 512-byte header).
        let needle = b"pretend layer bytes";
        let pos = tar.windows(needle.len()).position(|w| w == needle).unwrap();
        tar[pos] ^= 0xff;
        let e = inspect_reader(&tar[..]).unwrap_err();
        assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    }

    #[test]
    fn missing_pieces_are_errors() {
        // No index.json at all.
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "oci-layout", b"{}");
        let tar = b.into_inner().unwrap();
        let e = inspect_reader(&tar[..]).unwrap_err();
        assert!(format!("{e:#}").contains("no index.json"), "{e:#}");
        // Not a tar.
        assert!(inspect_reader(&b"not a tar file at all"[..]).is_err());
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert_eq!(
            digest_hex(&format!("sha256:{}", "a".repeat(64)))
                .unwrap()
                .len(),
            64
        );
    }
}
