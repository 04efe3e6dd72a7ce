//! The status file, `<output-dir>/status.json`: whether the registry is ready, where to
//! reach it, the certificates' fingerprints and expiry dates, the image, and each step's
//! name, duration and result. Written at the end of every run (a failed run too, with
//! `ready: false`), before the completion marker.

use serde::Serialize;

/// The whole status document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub ready: bool,
    /// regimage's version.
    pub version: String,
    /// When this run ended, RFC 3339 UTC.
    pub finished_at: String,
    /// The name clients use (the server certificate's CN).
    pub primary_name: String,
    pub endpoints: Endpoints,
    /// SHA-256 of the server CA certificate's DER, `AB:CD:...`: what a client compares
    /// with its bundle's `ca.crt` (the bundle README; the console's ready line has it too).
    /// Empty when the pki step has not run.
    pub server_ca_sha256: String,
    pub certificates: Vec<CertStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageStatus>,
    pub bundles: Vec<BundleStatus>,
    pub steps: Vec<StepStatus>,
    /// The first error, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// `https://HOST/` (anonymous pulls).
    pub pull: String,
    /// `https://HOST:4443/` (pushes with a client certificate).
    pub push: String,
    /// `http://127.0.0.1:5000/` (the registry itself, this machine only).
    pub registry: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    pub role: String,
    pub name: String,
    /// SHA-256 of the DER, `AB:CD:...`.
    pub sha256: String,
    pub not_after: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageStatus {
    /// The pinned reference from the config.
    pub pinned: String,
    /// Podman's image ID (`sha256:` + the config digest).
    pub id: String,
    /// The tag the registry unit runs.
    pub tag: String,
    /// `archive` (the baked OCI archive) or `pull`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleStatus {
    pub client: String,
    pub path: String,
    pub sha256: String,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    /// It changed something (listed in `changes`).
    Changed,
    /// Everything was already as wanted.
    Unchanged,
    /// It failed (see `error`); later steps did not run.
    Failed,
    /// --dry-run: it only looked.
    Planned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    pub name: String,
    pub duration_ms: u64,
    pub result: StepResult,
    /// What it changed (or, with --dry-run, would change).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// What it found that needed no change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}
