//! The client CA's revocation list (clients/crl.pem), which nginx checks on the push port.
//!
//! nginx with `ssl_crl` refuses every client when the list is missing or past its
//! nextUpdate, so there is always one (empty at first boot), it is valid for
//! [`CRL_VALIDITY_DAYS`], and it is signed again when fewer than [`CRL_RESIGN_WITHIN_DAYS`]
//! remain, when the revoked serials differ from the wanted ones, or when it is not the current
//! client CA's. The CRL number is the signing time in seconds: it only grows, without state.

use anyhow::{Context, Result};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use super::ca::LoadedCa;
use super::layout::{read_optional, set_mode, write, CERT_MODE};
use super::report::{pem_to_der, rfc3339, Action};
use super::BACKDATE;

/// How long a signed list is valid: long enough that a machine switched off for weeks still
/// accepts its clients when it comes back (the daily renew signs it again long before).
pub const CRL_VALIDITY_DAYS: i64 = 90;
/// The daily renew signs the list again when fewer days than this remain.
pub const CRL_RESIGN_WITHIN_DAYS: i64 = 60;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Lowercase hex of the serial's bytes (as `CertReport::serial`).
    pub serial: String,
    pub revoked_at: OffsetDateTime,
}

/// What a CRL on disk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    /// Lowercase hex serials, sorted.
    pub serials: Vec<String>,
    /// Signed by the current client CA.
    pub signed_by_ca: bool,
}

/// What [`ensure_crl`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlReport {
    pub action: Action,
    /// Why it was signed again (None when kept or made).
    pub reason: Option<String>,
    pub next_update: OffsetDateTime,
    pub revoked: usize,
}

/// Keeps the CRL at `path` when it lists exactly `revoked`, is the client CA's and has more
/// than [`CRL_RESIGN_WITHIN_DAYS`] left; signs a new one otherwise (or when `force`).
pub(super) fn ensure_crl(
    path: &std::path::Path,
    client_ca: &LoadedCa,
    revoked: &[Revoked],
    now: OffsetDateTime,
    force: bool,
) -> Result<CrlReport> {
    let mut wanted: Vec<String> = revoked.iter().map(|r| r.serial.clone()).collect();
    wanted.sort();
    wanted.dedup();
    let existing = read_optional(path)?;
    let existed = existing.is_some();
    let reason = match existing.map(|pem| parse_crl(&pem, &client_ca.der)) {
        None => None,
        Some(Err(e)) => Some(format!("it does not parse ({e:#})")),
        Some(Ok(info)) => match crl_due(&info, &wanted, now, force) {
            None => {
                set_mode(path, CERT_MODE, None)?;
                return Ok(CrlReport {
                    action: Action::Kept,
                    reason: None,
                    next_update: info.next_update.unwrap_or(info.this_update),
                    revoked: info.serials.len(),
                });
            }
            reason => reason,
        },
    };
    let pem = sign_crl(client_ca, revoked, now)?;
    write(path, pem.as_bytes(), CERT_MODE, None)?;
    Ok(CrlReport {
        action: if existed {
            Action::Replaced
        } else {
            Action::Made
        },
        reason,
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        revoked: wanted.len(),
    })
}

/// Why `info` must be signed again, or `None` when it can stay.
fn crl_due(info: &CrlInfo, wanted: &[String], now: OffsetDateTime, force: bool) -> Option<String> {
    if force {
        return Some("a new one was asked for (--force)".into());
    }
    if !info.signed_by_ca {
        return Some("it is not signed by the current client CA".into());
    }
    if info.serials != wanted {
        return Some(format!(
            "it lists {} revoked certificate(s), {} are revoked",
            info.serials.len(),
            wanted.len()
        ));
    }
    match info.next_update {
        None => Some("it has no nextUpdate".into()),
        Some(next) if crl_near_end(Some(next), now) => Some(format!(
            "its nextUpdate {} is {}",
            rfc3339(next),
            if next <= now { "past" } else { "near" }
        )),
        Some(_) => None,
    }
}

/// Whether a CRL with this nextUpdate is signed again at `now` (none at all: yes).
pub fn crl_near_end(next_update: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    next_update.is_none_or(|next| next - now < Duration::days(CRL_RESIGN_WITHIN_DAYS))
}

/// A CRL of `revoked`, signed by `client_ca` at `now`, as PEM.
fn sign_crl(client_ca: &LoadedCa, revoked: &[Revoked], now: OffsetDateTime) -> Result<String> {
    let issuer = client_ca.issuer()?;
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            let bytes = hex::decode(&r.serial)
                .with_context(|| format!("reading the serial {:?}", r.serial))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from(bytes),
                revocation_time: r.revoked_at,
                // No reason code: it would say little, and costs bytes per entry.
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let number = u64::try_from(now.unix_timestamp()).unwrap_or(1);
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        // The CA's own subject key identifier, so verifiers match the list to the CA.
        key_identifier_method: subject_key_id(&client_ca.der)
            .map(KeyIdMethod::PreSpecified)
            .unwrap_or(KeyIdMethod::Sha256),
    };
    let crl = params
        .signed_by(&issuer)
        .context("signing the client CA's revocation list")?;
    crl.pem()
        .context("encoding the client CA's revocation list as PEM")
}

fn subject_key_id(ca_der: &[u8]) -> Option<Vec<u8>> {
    let (_, x509) = x509_parser::parse_x509_certificate(ca_der).ok()?;
    let id = x509
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    id
}

/// Reads a PEM CRL and checks its signature against the CA certificate `ca_der`.
pub fn parse_crl(pem: &str, ca_der: &[u8]) -> Result<CrlInfo> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("reading PEM: {e}"))?;
    if block.label != "X509 CRL" {
        anyhow::bail!("expected an X509 CRL, found {}", block.label);
    }
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents)
        .map_err(|e| anyhow::anyhow!("parsing the CRL: {e}"))?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| anyhow::anyhow!("parsing the client CA: {e}"))?;
    let signed_by_ca = crl.issuer().as_raw() == ca.subject().as_raw()
        && crl.verify_signature(ca.public_key()).is_ok();
    let mut serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    serials.sort();
    Ok(CrlInfo {
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        serials,
        signed_by_ca,
    })
}

/// The CRL at `path` read against the client CA certificate at `ca_cert` (for `status`).
pub fn read_crl(path: &std::path::Path, ca_cert: &std::path::Path) -> Result<CrlInfo> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ca_pem = std::fs::read_to_string(ca_cert)
        .with_context(|| format!("reading {}", ca_cert.display()))?;
    parse_crl(&pem, &pem_to_der(&ca_pem)?).with_context(|| format!("reading {}", path.display()))
}
