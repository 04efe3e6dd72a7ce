//! Leaves: the server certificate (with its SANs) and the client certificates, kept while
//! they are valid for the current CA and made again with a new key otherwise.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::ca::{subject, LoadedCa};
use super::keys::{generate_key, is_rsa, key_matches, random_serial};
use super::layout::{read_optional, set_mode, write, CERT_MODE};
use super::report::{common_name, pem_to_der, rfc3339, Action, PkiReport};
use super::BACKDATE;
use crate::config::{Config, KeyAlgorithm};
use crate::identity::Sans;

pub(super) struct LeafSpec<'a> {
    pub(super) role: &'static str,
    pub(super) cn: String,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    pub(super) key_mode: u32,
    pub(super) key_group: Option<u32>,
    pub(super) usage: ExtendedKeyUsagePurpose,
    /// Server only: the names the certificate must carry.
    pub(super) sans: Option<&'a Sans>,
    /// `key` holds the key followed by the certificate (what nginx loads, replaced by one
    /// rename); `cert` is a public copy of that certificate, written after it.
    pub(super) combined: bool,
}

/// When a leaf is made again although it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reissue {
    /// Only when it is missing, invalid, names too little or expires within the window.
    WhenDue,
    /// Always (`regimage renew --force`).
    Always,
}

/// Why an existing leaf cannot be kept, or that it can.
pub(super) enum LeafCheck {
    Valid,
    Missing,
    Invalid(String),
}

#[allow(clippy::too_many_arguments)]
pub(super) fn ensure_leaf(
    spec: &LeafSpec<'_>,
    ca: &LoadedCa,
    issuer: &Issuer<'_, KeyPair>,
    config: &Config,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
    reissue_within: Duration,
    reissue: Reissue,
    report: &mut PkiReport,
) -> Result<()> {
    let check = match check_leaf(spec, ca, now, reissue_within)? {
        LeafCheck::Valid if reissue == Reissue::Always => {
            LeafCheck::Invalid("a new one was asked for (--force)".into())
        }
        check => check,
    };
    let (action, reason) = match check {
        LeafCheck::Valid => {
            set_mode(spec.key, spec.key_mode, spec.key_group)?;
            report.file(spec.key, Action::Kept, None);
            let cert_pem = read_leaf(spec)?
                .1
                .with_context(|| format!("reading {}", spec.cert.display()))?;
            if spec.combined {
                keep_copy(spec.cert, &cert_pem, report)?;
            } else {
                set_mode(spec.cert, CERT_MODE, None)?;
                report.file(spec.cert, Action::Kept, None);
            }
            let der = pem_to_der(&cert_pem)?;
            return report.cert(spec.role, &spec.cn, spec.cert, &der, Action::Kept);
        }
        LeafCheck::Missing => (Action::Made, None),
        LeafCheck::Invalid(reason) => {
            tracing::info!("making {} again: {reason}", spec.cert.display());
            (Action::Replaced, Some(reason))
        }
    };
    let key = generate_key(algorithm)?;
    let mut params = CertificateParams::default();
    // A CN holds at most 64 characters; a longer host name lives in the SANs only.
    let cn = (spec.cn.len() <= 64).then_some(spec.cn.as_str());
    params.distinguished_name = subject(&config.organization, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.usage == ExtendedKeyUsagePurpose::ServerAuth && is_rsa(algorithm) {
        // TLS 1.2 RSA key exchange encrypts to the server key.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![spec.usage.clone()];
    params.use_authority_key_identifier_extension = true;
    if let Some(sans) = spec.sans {
        for name in &sans.dns_names {
            let ia5 = name
                .as_str()
                .try_into()
                .with_context(|| format!("using {name:?} as a DNS name"))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(sans.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    }
    params.serial_number = Some(random_serial()?);
    params.not_before = now - BACKDATE;
    // A leaf cannot outlive its CA.
    params.not_after =
        (now + Duration::days(i64::from(config.pki.leaf_validity_days))).min(ca.not_after);
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the certificate {}", spec.cert.display()))?;
    let key_pem = key.serialize_pem();
    if spec.combined {
        // One rename replaces both halves: nginx can never load this key with another
        // certificate, whenever the machine stops.
        let pair = format!("{key_pem}{}", cert.pem());
        write(spec.key, pair.as_bytes(), spec.key_mode, spec.key_group)?;
    } else {
        write(spec.key, key_pem.as_bytes(), spec.key_mode, spec.key_group)?;
    }
    write(spec.cert, cert.pem().as_bytes(), CERT_MODE, None)?;
    report.file(spec.key, action, reason.clone());
    report.file(spec.cert, action, reason);
    report.cert(spec.role, &spec.cn, spec.cert, cert.der(), action)
}

pub(super) fn check_leaf(
    spec: &LeafSpec<'_>,
    ca: &LoadedCa,
    now: OffsetDateTime,
    reissue_within: Duration,
) -> Result<LeafCheck> {
    let invalid = |why: String| Ok(LeafCheck::Invalid(why));
    let (key_pem, cert_pem) = match read_leaf(spec)? {
        (None, None) => return Ok(LeafCheck::Missing),
        (None, Some(_)) => {
            return invalid(format!("its key {} is missing", spec.key.display()));
        }
        (_, None) if spec.combined => {
            return invalid(format!("{} holds no certificate", spec.key.display()));
        }
        (_, None) => return Ok(LeafCheck::Missing),
        (Some(key), Some(cert)) => (key, cert),
    };
    let der = match pem_to_der(&cert_pem) {
        Ok(der) => der,
        Err(e) => return invalid(format!("it is not a PEM certificate ({e})")),
    };
    let x509 = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, x509)) => x509,
        Err(e) => return invalid(format!("it does not parse ({e})")),
    };
    let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca.der)
        .map_err(|e| anyhow::anyhow!("parsing the CA {}: {e}", ca.cert_path.display()))?;
    if x509.issuer().as_raw() != ca_x509.subject().as_raw()
        || x509.verify_signature(Some(ca_x509.public_key())).is_err()
    {
        return invalid(format!(
            "it is not signed by the current CA {}",
            ca.cert_path.display()
        ));
    }
    let not_after = x509.validity().not_after.to_datetime();
    if not_after - now < reissue_within {
        return invalid(format!("it expires on {}", rfc3339(not_after)));
    }
    match KeyPair::from_pem(&key_pem) {
        Ok(key) if key_matches(&key, &x509) => {}
        Ok(_) => return invalid(format!("its key {} does not match it", spec.key.display())),
        Err(e) => {
            return invalid(format!(
                "its key {} does not parse ({e})",
                spec.key.display()
            ))
        }
    }
    if let Some(wanted) = spec.sans {
        let (dns, ips) = cert_sans(&x509);
        let missing = wanted.missing_in(&dns, &ips);
        if !missing.is_empty() {
            return invalid(format!("it does not name {}", missing.join(", ")));
        }
    }
    Ok(LeafCheck::Valid)
}

/// The key's PEM and the certificate's PEM of a leaf, each `None` when missing. A combined
/// file holds both (the key first); its certificate is the one that counts, not the copy.
fn read_leaf(spec: &LeafSpec<'_>) -> Result<(Option<String>, Option<String>)> {
    if !spec.combined {
        return Ok((read_optional(spec.key)?, read_optional(spec.cert)?));
    }
    let Some(pair) = read_optional(spec.key)? else {
        return Ok((None, None));
    };
    Ok(match pair.find("-----BEGIN CERTIFICATE-----") {
        Some(at) => (Some(pair[..at].to_string()), Some(pair[at..].to_string())),
        None => (Some(pair), None),
    })
}

/// Makes the public copy `path` hold `cert_pem` (what a stop between the pair's write and the
/// copy's leaves behind is put right here).
fn keep_copy(path: &Path, cert_pem: &str, report: &mut PkiReport) -> Result<()> {
    if read_optional(path)?.as_deref() == Some(cert_pem) {
        set_mode(path, CERT_MODE, None)?;
        report.file(path, Action::Kept, None);
    } else {
        write(path, cert_pem.as_bytes(), CERT_MODE, None)?;
        report.file(
            path,
            Action::Replaced,
            Some("a copy of the certificate the proxy serves".into()),
        );
    }
    Ok(())
}

/// The names the server certificate at `path` carries (what the proxy serves): its CN (else
/// its first name or address) as the primary name, and its SANs.
pub fn served_sans(path: &Path) -> Result<Sans> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let der = pem_to_der(&pem).with_context(|| format!("reading {}", path.display()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    let (dns_names, ip_addresses) = cert_sans(&x509);
    let primary_name = common_name(&x509)
        .or_else(|| dns_names.first().cloned())
        .or_else(|| ip_addresses.first().map(IpAddr::to_string))
        .unwrap_or_default();
    Ok(Sans {
        primary_name,
        dns_names,
        ip_addresses,
    })
}

/// The DNS names (lowercased) and IP addresses in a certificate's SAN extension.
fn cert_sans(x509: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(ext)) = x509.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(octets) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*octets) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*octets) {
                        ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}
