//! The little of the registry v2 API the nodes need to share their client indexes: the
//! registry on loopback (plain HTTP, no credentials), whose storage every node shares.
//! Blobs go up monolithically (POST, then PUT ?digest=); every digest read is checked.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The repository holding one tag per node. The public ports refuse it (nginx.conf).
pub const REPOSITORY: &str = "regimage-cluster/state";
/// The media type of a node's state (its client index), the manifest's config blob.
pub const STATE_MEDIA_TYPE: &str = "application/vnd.regimage.cluster-state.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// A client index is a few KiB; nothing a node reads may be larger than this.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// An OCI image manifest, as much of it as a node's state uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Manifest {
    /// The manifest of a state whose config blob is `config`.
    pub fn for_state(config: &[u8]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: Descriptor {
                media_type: STATE_MEDIA_TYPE.into(),
                digest: digest_of(config),
                size: config.len() as u64,
            },
            layers: Vec::new(),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The registry on 127.0.0.1:`port`.
pub struct Registry {
    base: String,
    agent: ureq::Agent,
}

impl Registry {
    pub fn loopback(port: u16) -> Registry {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent(concat!("regimage/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Registry {
            base: format!("http://127.0.0.1:{port}/v2/{REPOSITORY}"),
            agent,
        }
    }

    /// The repository's tags; none when nothing was pushed yet.
    pub fn tags(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let url = format!("{}/tags/list", self.base);
        let (status, _, body) = self.send(self.agent.get(&url), &url)?;
        if status == 404 {
            return Ok(Vec::new());
        }
        expect(status, 200, &url, &body)?;
        let tags: Tags =
            serde_json::from_slice(&body).with_context(|| format!("reading the tags of {url}"))?;
        Ok(tags.tags.unwrap_or_default())
    }

    /// The manifest tagged `tag`, `None` when there is none; its digest is checked against
    /// the one the registry names.
    pub fn manifest(&self, tag: &str) -> Result<Option<Manifest>> {
        let url = format!("{}/manifests/{tag}", self.base);
        let (status, digest, body) = self.send(
            self.agent.get(&url).header("Accept", MANIFEST_MEDIA_TYPE),
            &url,
        )?;
        if status == 404 {
            return Ok(None);
        }
        expect(status, 200, &url, &body)?;
        if let Some(digest) = digest {
            check_digest(&digest, &body, &url)?;
        }
        let manifest: Manifest =
            serde_json::from_slice(&body).with_context(|| format!("reading the manifest {url}"))?;
        Ok(Some(manifest))
    }

    /// The blob `digest`, checked against it.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/blobs/{digest}", self.base);
        let (status, _, body) = self.send(self.agent.get(&url), &url)?;
        expect(status, 200, &url, &body)?;
        check_digest(digest, &body, &url)?;
        Ok(body)
    }

    /// Uploads `bytes` as one blob (POST, then PUT ?digest=); returns its digest.
    pub fn push_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let url = format!("{}/blobs/uploads/", self.base);
        let response = self
            .agent
            .post(&url)
            .send_empty()
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("Location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        if status != 202 {
            bail!("POST {url} answered {status}, not 202");
        }
        let location = location.with_context(|| format!("POST {url} gave no Location"))?;
        let upload = if location.starts_with('/') {
            format!("http://{}{location}", self.host())
        } else {
            location
        };
        let sep = if upload.contains('?') { '&' } else { '?' };
        let put = format!("{upload}{sep}digest={digest}");
        let (status, _, body) = self.send_with(
            self.agent
                .put(&put)
                .header("Content-Type", "application/octet-stream"),
            bytes,
            &put,
        )?;
        expect(status, 201, &format!("PUT {}", self.base), &body)?;
        Ok(digest)
    }

    /// Puts `manifest` under `tag`.
    pub fn push_manifest(&self, tag: &str, manifest: &Manifest) -> Result<()> {
        let url = format!("{}/manifests/{tag}", self.base);
        let bytes = serde_json::to_vec(manifest).context("encoding the manifest")?;
        let (status, _, body) = self.send_with(
            self.agent
                .put(&url)
                .header("Content-Type", MANIFEST_MEDIA_TYPE),
            &bytes,
            &url,
        )?;
        expect(status, 201, &format!("PUT {url}"), &body)
    }

    /// 127.0.0.1:PORT of the base URL.
    fn host(&self) -> &str {
        let rest = self.base.trim_start_matches("http://");
        rest.split('/').next().unwrap_or(rest)
    }

    fn send(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        url: &str,
    ) -> Result<(u16, Option<String>, Vec<u8>)> {
        let response = request.call().with_context(|| format!("GET {url}"))?;
        read(response, url)
    }

    fn send_with(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        bytes: &[u8],
        url: &str,
    ) -> Result<(u16, Option<String>, Vec<u8>)> {
        let response = request.send(bytes).with_context(|| format!("PUT {url}"))?;
        read(response, url)
    }
}

/// The status, the Docker-Content-Digest header and the body.
fn read(
    mut response: ureq::http::Response<ureq::Body>,
    url: &str,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let status = response.status().as_u16();
    let digest = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|d| d.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .with_context(|| format!("reading the answer of {url}"))?;
    Ok((status, digest, body))
}

fn expect(status: u16, wanted: u16, what: &str, body: &[u8]) -> Result<()> {
    if status != wanted {
        bail!(
            "{what} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]).trim()
        );
    }
    Ok(())
}

fn check_digest(digest: &str, bytes: &[u8], url: &str) -> Result<()> {
    let actual = digest_of(bytes);
    if actual != digest {
        bail!("{url}: the content's digest is {actual}, not {digest}");
    }
    Ok(())
}
