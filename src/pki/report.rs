//! What a run made or kept: [`PkiReport`] with one entry per file and per certificate, and
//! how a certificate is described (SHA-256 fingerprint, serial, RFC 3339 expiry).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// It did not exist and was made.
    Made,
    /// It existed, was valid and was left as it was (its mode and group were set).
    Kept,
    /// It existed but was not valid (see the reason) and was made again.
    Replaced,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Made => "made",
            Action::Kept => "kept",
            Action::Replaced => "replaced",
        })
    }
}

/// One file of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub action: Action,
    /// Why a file was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One certificate, for the status file and the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertReport {
    /// `server-ca`, `server`, `client-ca` or `client`.
    pub role: &'static str,
    /// The subject CN (the client name for client certificates).
    pub name: String,
    pub path: PathBuf,
    pub action: Action,
    /// SHA-256 of the DER, uppercase hex pairs joined by ':' (as `openssl x509 -fingerprint`).
    pub sha256: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Expiry, RFC 3339 in UTC (`2035-01-31T12:00:00Z`).
    pub not_after: String,
}

/// Everything [`ensure_pki`](super::ensure_pki) made or kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PkiReport {
    pub files: Vec<FileReport>,
    pub certificates: Vec<CertReport>,
}

impl PkiReport {
    /// The certificate with `role` (and, for clients, `name`).
    pub fn certificate(&self, role: &str, name: Option<&str>) -> Option<&CertReport> {
        self.certificates
            .iter()
            .find(|c| c.role == role && name.is_none_or(|n| c.name == n))
    }
}

impl PkiReport {
    pub(super) fn file(&mut self, path: &Path, action: Action, reason: Option<String>) {
        self.files.push(FileReport {
            path: path.to_path_buf(),
            action,
            reason,
        });
    }

    /// Records a certificate; `fallback` names it when it has no CN.
    pub(super) fn cert(
        &mut self,
        role: &'static str,
        fallback: &str,
        path: &Path,
        der: &[u8],
        action: Action,
    ) -> Result<()> {
        let facts =
            CertFacts::from_der(der).with_context(|| format!("parsing {}", path.display()))?;
        self.certificates.push(CertReport {
            role,
            name: facts.cn.unwrap_or_else(|| fallback.to_string()),
            path: path.to_path_buf(),
            action,
            sha256: facts.sha256,
            serial: facts.serial,
            not_after: rfc3339(facts.not_after),
        });
        Ok(())
    }
}

/// What a certificate says of itself, as reports and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject's CN, when it has one.
    pub cn: Option<String>,
    /// Lowercase hex of the serial's bytes.
    pub serial: String,
    /// SHA-256 of the DER ([`fingerprint`]).
    pub sha256: String,
    pub not_after: OffsetDateTime,
}

impl CertFacts {
    pub fn from_der(der: &[u8]) -> Result<CertFacts> {
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
        Ok(CertFacts {
            cn: common_name(&x509),
            serial: hex::encode(x509.raw_serial()),
            sha256: fingerprint(der),
            not_after: x509.validity().not_after.to_datetime(),
        })
    }

    /// The first certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<CertFacts> {
        CertFacts::from_der(&pem_to_der(pem)?)
    }
}

/// The subject's CN of a certificate, when it has one.
pub(super) fn common_name(x509: &X509Certificate<'_>) -> Option<String> {
    x509.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The DER of the first certificate in `pem`.
pub(super) fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("reading PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        bail!("expected a CERTIFICATE, found {}", pem.label);
    }
    Ok(pem.contents)
}

/// `2035-01-31T12:00:00Z`: UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let whole = utc.replace_nanosecond(0).unwrap_or(utc);
    // Fails only for years outside 0..=9999, which X.509 times cannot hold; still say something.
    whole.format(&Rfc3339).unwrap_or_else(|_| whole.to_string())
}

/// SHA-256 of `der` as uppercase hex pairs joined by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The serial (lowercase hex) and the end (RFC 3339) of the first certificate in `pem`.
pub fn serial_and_end(pem: &str) -> Result<(String, String)> {
    let facts = CertFacts::from_pem(pem)?;
    Ok((facts.serial, rfc3339(facts.not_after)))
}
