//! The two CAs: loading and checking one found on disk, issuing a new one, and issuing the
//! certificate again from a key left without it (what a power cut between the two writes
//! leaves). A CA is never replaced behind the operator's back.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::keys::{generate_key, key_matches, random_serial};
use super::layout::{read_optional, set_mode, write, KEY_MODE};
use super::report::{pem_to_der, rfc3339, Action, PkiReport};
use super::BACKDATE;
use crate::config::Config;

/// A CA found on disk (checked) or just made.
pub(super) struct LoadedCa {
    pub(super) cert_path: PathBuf,
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    pub(super) der: Vec<u8>,
    pub(super) not_after: OffsetDateTime,
}

impl LoadedCa {
    pub(super) fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)
            .with_context(|| format!("loading the key of {}", self.cert_path.display()))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .with_context(|| format!("loading the CA {}", self.cert_path.display()))
    }
}

/// What [`load_ca`] found of a CA.
pub(super) enum FoundCa {
    /// Neither file: a new CA is made.
    Nothing,
    /// The key without its certificate: what a power cut between the two writes of a new
    /// CA leaves (the key is written first). No certificate can have left the machine
    /// without its key, so a certificate is issued again from that key.
    KeyOnly(KeyPair),
    /// Both, checked.
    Whole(LoadedCa),
}

/// Reads and checks an existing CA. Anything that is not a usable CA, a lone key aside (a
/// certificate without its key, a key that does not match, an expired or non-CA
/// certificate), is an error: a CA is never replaced behind the operator's back.
pub(super) fn load_ca(
    cert_path: &Path,
    key_path: &Path,
    label: &str,
    now: OffsetDateTime,
) -> Result<FoundCa> {
    let keep_advice = "regimage never replaces a CA by itself";
    let new_ca_advice =
        "or move both files away to make a new CA (every client then needs a new bundle)";
    let cert_pem = read_optional(cert_path)?;
    let key_pem = read_optional(key_path)?;
    let broken = |what: String| {
        anyhow::anyhow!("the {label} {what}; {keep_advice}: fix it, {new_ca_advice}")
    };
    let (cert_pem, key_pem) = match (cert_pem, key_pem) {
        (None, None) => return Ok(FoundCa::Nothing),
        (Some(_), None) => bail!(
            "the {label} certificate {} exists but its key {} is missing; {keep_advice}: restore the key, {new_ca_advice}",
            cert_path.display(),
            key_path.display()
        ),
        (None, Some(k)) => {
            let key = KeyPair::from_pem(&k)
                .map_err(|e| broken(format!("key {} does not parse ({e})", key_path.display())))?;
            return Ok(FoundCa::KeyOnly(key));
        }
        (Some(c), Some(k)) => (c, k),
    };
    let der = pem_to_der(&cert_pem).map_err(|e| {
        broken(format!(
            "certificate {} is not a PEM certificate ({e})",
            cert_path.display()
        ))
    })?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        broken(format!(
            "certificate {} does not parse ({e})",
            cert_path.display()
        ))
    })?;
    if !x509.is_ca() {
        return Err(broken(format!(
            "certificate {} is not a CA certificate (no basicConstraints CA:TRUE)",
            cert_path.display()
        )));
    }
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| broken(format!("key {} does not parse ({e})", key_path.display())))?;
    if !key_matches(&key, &x509) {
        return Err(broken(format!(
            "key {} does not belong to the certificate {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    let not_after = x509.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(broken(format!(
            "certificate {} expired on {}",
            cert_path.display(),
            rfc3339(not_after)
        )));
    }
    Ok(FoundCa::Whole(LoadedCa {
        cert_path: cert_path.to_path_buf(),
        cert_pem,
        key_pem,
        der,
        not_after,
    }))
}

pub(super) struct CaSpec<'a> {
    pub(super) role: &'static str,
    pub(super) cn: String,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    pub(super) cert_mode: u32,
    pub(super) cert_group: Option<u32>,
}

pub(super) fn ensure_ca(
    existing: FoundCa,
    spec: &CaSpec<'_>,
    config: &Config,
    now: OffsetDateTime,
    report: &mut PkiReport,
) -> Result<LoadedCa> {
    let (key, key_action) = match existing {
        FoundCa::Whole(ca) => {
            set_mode(spec.key, KEY_MODE, None)?;
            set_mode(spec.cert, spec.cert_mode, spec.cert_group)?;
            report.file(spec.key, Action::Kept, None);
            report.file(spec.cert, Action::Kept, None);
            report.cert(spec.role, &spec.cn, spec.cert, &ca.der, Action::Kept)?;
            return Ok(ca);
        }
        FoundCa::KeyOnly(key) => (key, Action::Kept),
        FoundCa::Nothing => (generate_key(config.pki.key_algorithm)?, Action::Made),
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&config.organization, Some(&spec.cn));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(config.pki.ca_validity_days));
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("signing the CA certificate {}", spec.cert.display()))?;
    let key_pem = key.serialize_pem();
    let cert_pem = cert.pem();
    // The key first: a certificate on disk always has its key.
    if key_action == Action::Made {
        write(spec.key, key_pem.as_bytes(), KEY_MODE, None)?;
        report.file(spec.key, Action::Made, None);
    } else {
        set_mode(spec.key, KEY_MODE, None)?;
        report.file(spec.key, Action::Kept, None);
    }
    write(
        spec.cert,
        cert_pem.as_bytes(),
        spec.cert_mode,
        spec.cert_group,
    )?;
    let reason = (key_action == Action::Kept)
        .then(|| "the certificate was missing; issued again from the existing key".to_string());
    report.file(spec.cert, Action::Made, reason);
    let der = cert.der().to_vec();
    report.cert(spec.role, &spec.cn, spec.cert, &der, Action::Made)?;
    Ok(LoadedCa {
        cert_path: spec.cert.to_path_buf(),
        cert_pem,
        key_pem,
        der,
        not_after: params.not_after,
    })
}

/// O=organization[, CN=cn].
pub(super) fn subject(organization: &str, cn: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

/// `<organization><suffix>`, the organization shortened so the CN fits in 64 characters.
pub(super) fn limited_cn(organization: &str, suffix: &str) -> String {
    let room = 64usize.saturating_sub(suffix.chars().count());
    let org: String = organization.chars().take(room).collect();
    format!("{}{suffix}", org.trim_end())
}

/// A CA's certificate and key as PEM text: what a cluster's join file carries (issue 12).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

/// The CA at `cert_path`/`key_path`, whole and valid, as PEM text (for `cluster export`).
pub(super) fn read_ca_pem(
    cert_path: &Path,
    key_path: &Path,
    label: &str,
    now: OffsetDateTime,
) -> Result<CaPem> {
    match load_ca(cert_path, key_path, label, now)? {
        FoundCa::Whole(ca) => Ok(CaPem {
            cert: ca.cert_pem,
            key: ca.key_pem,
        }),
        _ => bail!(
            "the {label} {} is not complete on this node; run first boot (or `regimage renew`) first",
            cert_path.display()
        ),
    }
}

/// Checks `ca` the way [`load_ca`] checks one on disk, without writing anything.
pub(super) fn check_ca_pem(ca: &CaPem, label: &str, now: OffsetDateTime) -> Result<()> {
    let der = pem_to_der(&ca.cert)
        .with_context(|| format!("the {label} certificate is not a PEM certificate"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("the {label} certificate does not parse ({e})"))?;
    if !x509.is_ca() {
        bail!("the {label} certificate is not a CA certificate");
    }
    let key = KeyPair::from_pem(&ca.key)
        .map_err(|e| anyhow::anyhow!("the {label} key does not parse ({e})"))?;
    if !key_matches(&key, &x509) {
        bail!("the {label} key does not belong to its certificate");
    }
    let not_after = x509.validity().not_after.to_datetime();
    if not_after <= now {
        bail!("the {label} certificate expired on {}", rfc3339(not_after));
    }
    Ok(())
}

/// Puts `ca` (checked by [`check_ca_pem`]) at `cert_path`/`key_path`: kept when the same CA
/// is there, written (key first) when neither file is, refused when another CA is there.
pub(super) fn adopt_ca(
    ca: &CaPem,
    cert_path: &Path,
    key_path: &Path,
    cert_mode: u32,
    label: &str,
    now: OffsetDateTime,
) -> Result<Action> {
    let wanted = pem_to_der(&ca.cert).context("reading the joined CA certificate")?;
    match load_ca(cert_path, key_path, label, now)? {
        FoundCa::Whole(found) if found.der == wanted => Ok(Action::Kept),
        FoundCa::Whole(_) => bail!(
            "this node already has a {label} of its own ({}), not the cluster's; a node joins \
             before its first boot makes CAs: remove {} and {} (nothing has been issued from \
             them to keep) and run first boot again",
            cert_path.display(),
            cert_path.display(),
            key_path.display()
        ),
        FoundCa::Nothing | FoundCa::KeyOnly(_) => {
            write(key_path, ca.key.as_bytes(), KEY_MODE, None)?;
            write(cert_path, ca.cert.as_bytes(), cert_mode, None)?;
            Ok(Action::Made)
        }
    }
}
