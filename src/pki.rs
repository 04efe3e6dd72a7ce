//! Certificates: server CA, server certificate, client CA and client certificates (rcgen),
//! in the guide's layout under /etc/registry/certs, kept when they exist and are valid.
//!
//! A CA is never replaced: an existing one is loaded and reused, and a CA certificate without
//! its key (or the reverse) stops the run before anything is written. A leaf is kept while it
//! parses, is signed by the current CA, matches its key, does not expire soon and (for the
//! server) names every wanted SAN; otherwise it is made again with a new key.

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, RsaKeySize, SanType, SerialNumber,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::config::{Config, KeyAlgorithm};
use crate::fsutil::{self, Ownership};
use crate::identity::Sans;

/// Where every certificate lives on the machine.
pub const CERTS_DIR: &str = "/etc/registry/certs";

const DIR_MODE: u32 = 0o755;
/// root:<proxy group>, so nginx reaches registry.key (the guide's root:root 0750 does not).
const PRIVATE_DIR_MODE: u32 = 0o750;
const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;
/// registry.key and clients/ca.crt: read by the proxy through its group.
const PROXY_READABLE_MODE: u32 = 0o640;

/// Certificates are dated a little in the past so a clock slightly behind still accepts them.
const BACKDATE: Duration = Duration::minutes(5);
/// A leaf expiring within this time is made again (shortened for short validities).
const RENEW_BEFORE_DAYS: i64 = 30;

/// Every path of the certificate layout under a root directory (`/` on the machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// /etc/registry/certs (0755).
    pub dir: PathBuf,
    /// ca/ (0755): the server CA certificate.
    pub ca_dir: PathBuf,
    /// private/ (0750 root:<proxy group>): every private key.
    pub private_dir: PathBuf,
    /// clients/ (0755): the client CA certificate and the client certificates.
    pub clients_dir: PathBuf,
    /// ca/ca.crt (0644).
    pub ca_cert: PathBuf,
    /// private/ca.key (0600).
    pub ca_key: PathBuf,
    /// registry.crt (0644), the server certificate (leaf only).
    pub server_cert: PathBuf,
    /// private/registry.key (0640 root:<proxy group>).
    pub server_key: PathBuf,
    /// clients/ca.crt (0640 root:<proxy group>).
    pub client_ca_cert: PathBuf,
    /// private/client-ca.key (0600).
    pub client_ca_key: PathBuf,
}

impl PkiPaths {
    /// The layout under `root`.
    pub fn new(root: &Path) -> PkiPaths {
        let dir = fsutil::under_root(root, Path::new(CERTS_DIR));
        let ca_dir = dir.join("ca");
        let private_dir = dir.join("private");
        let clients_dir = dir.join("clients");
        PkiPaths {
            ca_cert: ca_dir.join("ca.crt"),
            ca_key: private_dir.join("ca.key"),
            server_cert: dir.join("registry.crt"),
            server_key: private_dir.join("registry.key"),
            client_ca_cert: clients_dir.join("ca.crt"),
            client_ca_key: private_dir.join("client-ca.key"),
            dir,
            ca_dir,
            private_dir,
            clients_dir,
        }
    }

    /// clients/NAME.crt (0644).
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.clients_dir.join(format!("{name}.crt"))
    }

    /// private/client-NAME.key (0600).
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.private_dir.join(format!("client-{name}.key"))
    }
}

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

/// Everything [`ensure_pki`] made or kept.
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

/// Makes or keeps the whole layout under `paths`: both CAs, the server certificate for
/// `sans`, and one client certificate per configured client. `proxy_gid`: the group that
/// gets private/, registry.key and clients/ca.crt (`None`: groups are left alone).
pub fn ensure_pki(
    paths: &PkiPaths,
    config: &Config,
    sans: &Sans,
    proxy_gid: Option<u32>,
) -> Result<PkiReport> {
    for (i, client) in config.clients.iter().enumerate() {
        // clients/ca.crt and private/client-ca.key belong to the client CA.
        if client == "ca" {
            bail!("clients[{i}]: \"ca\" cannot name a client: its certificate would be clients/ca.crt, the client CA; choose another name");
        }
    }
    let now = OffsetDateTime::now_utc();
    // Look at both CAs before writing anything, so a broken one leaves every file untouched.
    let server_ca = load_ca(&paths.ca_cert, &paths.ca_key, "server CA", now)?;
    let client_ca = load_ca(
        &paths.client_ca_cert,
        &paths.client_ca_key,
        "client CA",
        now,
    )?;

    fsutil::ensure_dir(&paths.dir, DIR_MODE)?;
    fsutil::ensure_dir(&paths.ca_dir, DIR_MODE)?;
    fsutil::ensure_dir(&paths.private_dir, PRIVATE_DIR_MODE)?;
    fsutil::ensure_dir(&paths.clients_dir, DIR_MODE)?;
    if let Some(gid) = proxy_gid {
        set_group(&paths.private_dir, gid)?;
    }

    let mut report = PkiReport::default();
    let org = &config.organization;
    let algorithm = config.pki.key_algorithm;

    let server_ca = ensure_ca(
        server_ca,
        &CaSpec {
            role: "server-ca",
            cn: limited_cn(org, " Registry CA"),
            cert: &paths.ca_cert,
            key: &paths.ca_key,
            cert_mode: CERT_MODE,
            cert_group: None,
        },
        config,
        now,
        &mut report,
    )?;
    let client_ca = ensure_ca(
        client_ca,
        &CaSpec {
            role: "client-ca",
            cn: limited_cn(org, " Client CA"),
            cert: &paths.client_ca_cert,
            key: &paths.client_ca_key,
            cert_mode: PROXY_READABLE_MODE,
            cert_group: proxy_gid,
        },
        config,
        now,
        &mut report,
    )?;
    for ca in [&server_ca, &client_ca] {
        if ca.not_after - now < Duration::days(RENEW_BEFORE_DAYS) {
            tracing::warn!(
                "the CA {} expires on {}; leaves cannot outlive it",
                ca.cert_path.display(),
                rfc3339(ca.not_after)
            );
        }
    }

    let server_issuer = server_ca.issuer()?;
    let client_issuer = client_ca.issuer()?;
    let renew_before =
        Duration::days(RENEW_BEFORE_DAYS.min(i64::from(config.pki.leaf_validity_days) / 3));

    ensure_leaf(
        &LeafSpec {
            role: "server",
            cn: sans.primary_name.clone(),
            cert: &paths.server_cert,
            key: &paths.server_key,
            key_mode: PROXY_READABLE_MODE,
            key_group: proxy_gid,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            sans: Some(sans),
        },
        &server_ca,
        &server_issuer,
        config,
        algorithm,
        now,
        renew_before,
        &mut report,
    )?;
    for client in &config.clients {
        ensure_leaf(
            &LeafSpec {
                role: "client",
                cn: client.clone(),
                cert: &paths.client_cert(client),
                key: &paths.client_key(client),
                key_mode: KEY_MODE,
                key_group: None,
                usage: ExtendedKeyUsagePurpose::ClientAuth,
                sans: None,
            },
            &client_ca,
            &client_issuer,
            config,
            algorithm,
            now,
            renew_before,
            &mut report,
        )?;
    }
    Ok(report)
}

/// A CA found on disk (checked) or just made.
struct LoadedCa {
    cert_path: PathBuf,
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    not_after: OffsetDateTime,
}

impl LoadedCa {
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)
            .with_context(|| format!("loading the key of {}", self.cert_path.display()))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .with_context(|| format!("loading the CA {}", self.cert_path.display()))
    }
}

/// What [`load_ca`] found of a CA.
enum FoundCa {
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
fn load_ca(cert_path: &Path, key_path: &Path, label: &str, now: OffsetDateTime) -> Result<FoundCa> {
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

struct CaSpec<'a> {
    role: &'static str,
    cn: String,
    cert: &'a Path,
    key: &'a Path,
    cert_mode: u32,
    cert_group: Option<u32>,
}

fn ensure_ca(
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

struct LeafSpec<'a> {
    role: &'static str,
    cn: String,
    cert: &'a Path,
    key: &'a Path,
    key_mode: u32,
    key_group: Option<u32>,
    usage: ExtendedKeyUsagePurpose,
    /// Server only: the names the certificate must carry.
    sans: Option<&'a Sans>,
}

/// Why an existing leaf cannot be kept, or that it can.
enum LeafCheck {
    Valid,
    Missing,
    Invalid(String),
}

#[allow(clippy::too_many_arguments)]
fn ensure_leaf(
    spec: &LeafSpec<'_>,
    ca: &LoadedCa,
    issuer: &Issuer<'_, KeyPair>,
    config: &Config,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
    renew_before: Duration,
    report: &mut PkiReport,
) -> Result<()> {
    let (action, reason) = match check_leaf(spec, ca, now, renew_before)? {
        LeafCheck::Valid => {
            set_mode(spec.key, spec.key_mode, spec.key_group)?;
            set_mode(spec.cert, CERT_MODE, None)?;
            report.file(spec.key, Action::Kept, None);
            report.file(spec.cert, Action::Kept, None);
            let der = pem_to_der(
                &fs::read_to_string(spec.cert)
                    .with_context(|| format!("reading {}", spec.cert.display()))?,
            )?;
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
    write(
        spec.key,
        key.serialize_pem().as_bytes(),
        spec.key_mode,
        spec.key_group,
    )?;
    write(spec.cert, cert.pem().as_bytes(), CERT_MODE, None)?;
    report.file(spec.key, action, reason.clone());
    report.file(spec.cert, action, reason);
    report.cert(spec.role, &spec.cn, spec.cert, cert.der(), action)
}

fn check_leaf(
    spec: &LeafSpec<'_>,
    ca: &LoadedCa,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Result<LeafCheck> {
    let Some(cert_pem) = read_optional(spec.cert)? else {
        return Ok(LeafCheck::Missing);
    };
    let invalid = |why: String| Ok(LeafCheck::Invalid(why));
    let Some(key_pem) = read_optional(spec.key)? else {
        return invalid(format!("its key {} is missing", spec.key.display()));
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
    if not_after - now < renew_before {
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
        let missing: Vec<String> = wanted
            .dns_names
            .iter()
            .filter(|n| !dns.contains(n))
            .cloned()
            .chain(
                wanted
                    .ip_addresses
                    .iter()
                    .filter(|ip| !ips.contains(ip))
                    .map(IpAddr::to_string),
            )
            .collect();
        if !missing.is_empty() {
            return invalid(format!("it does not name {}", missing.join(", ")));
        }
    }
    Ok(LeafCheck::Valid)
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

/// Whether `key` is the private half of the certificate's public key.
fn key_matches(key: &KeyPair, x509: &X509Certificate<'_>) -> bool {
    // For EC keys both are the encoded point, for RSA both are the PKCS#1 RSAPublicKey.
    key.public_key_raw() == &*x509.public_key().subject_public_key.data
}

fn is_rsa(algorithm: KeyAlgorithm) -> bool {
    matches!(algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096)
}

/// A new key of the configured algorithm (RSA generation needs rcgen's aws_lc_rs backend).
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair> {
    let key = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
    };
    key.with_context(|| format!("generating a {} key", algorithm.as_str()))
}

/// A random positive 16-byte serial (rcgen's default derives it from the key).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading random bytes for a serial number from /dev/urandom")?;
    // Positive, and no leading zero byte, so the DER integer keeps all 16 bytes.
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// O=organization[, CN=cn].
fn subject(organization: &str, cn: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

/// `<organization><suffix>`, the organization shortened so the CN fits in 64 characters.
fn limited_cn(organization: &str, suffix: &str) -> String {
    let room = 64usize.saturating_sub(suffix.chars().count());
    let org: String = organization.chars().take(room).collect();
    format!("{}{suffix}", org.trim_end())
}

/// The DER of the first certificate in `pem`.
fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("reading PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        bail!("expected a CERTIFICATE, found {}", pem.label);
    }
    Ok(pem.contents)
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write(path: &Path, contents: &[u8], mode: u32, group: Option<u32>) -> Result<()> {
    let owner = group.map(|gid| Ownership {
        uid: nix::unistd::geteuid().as_raw(),
        gid,
    });
    fsutil::write_atomic_owned(path, contents, mode, owner)
}

/// Puts a kept file back to its mode (and group).
fn set_mode(path: &Path, mode: u32, group: Option<u32>) -> Result<()> {
    if let Some(gid) = group {
        set_group(path, gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

fn set_group(path: &Path, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))
        .with_context(|| format!("changing the group of {} to {gid}", path.display()))
}

/// `2035-01-31T12:00:00Z`; written by hand because time's formatting feature is off.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// SHA-256 of `der` as uppercase hex pairs joined by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl PkiReport {
    fn file(&mut self, path: &Path, action: Action, reason: Option<String>) {
        self.files.push(FileReport {
            path: path.to_path_buf(),
            action,
            reason,
        });
    }

    /// Records a certificate; `fallback` names it when it has no CN.
    fn cert(
        &mut self,
        role: &'static str,
        fallback: &str,
        path: &Path,
        der: &[u8],
        action: Action,
    ) -> Result<()> {
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
        let name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or(fallback)
            .to_string();
        self.certificates.push(CertReport {
            role,
            name,
            path: path.to_path_buf(),
            action,
            sha256: fingerprint(der),
            serial: hex::encode(x509.raw_serial()),
            not_after: rfc3339(x509.validity().not_after.to_datetime()),
        });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use crate::config::Pki;

    fn config(algorithm: KeyAlgorithm) -> Config {
        Config {
            organization: "Example Org".into(),
            clients: vec!["ci".into(), "laptop".into()],
            pki: Pki {
                key_algorithm: algorithm,
                ..Pki::default()
            },
            ..Config::default()
        }
    }

    fn sans() -> Sans {
        Sans {
            primary_name: "reg.example.test".into(),
            dns_names: vec!["reg.example.test".into(), "alias.example.test".into()],
            ip_addresses: vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .mode()
            & 0o7777
    }

    /// Every file under `dir` with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.insert(path.clone(), fs::read(&path).unwrap());
                }
            }
        }
        files
    }

    /// Runs openssl and returns stdout; panics with stderr when it fails.
    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("running openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn openssl_fails(args: &[&str]) -> bool {
        !Command::new("openssl")
            .args(args)
            .output()
            .expect("running openssl")
            .status
            .success()
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn make(dir: &Path, algorithm: KeyAlgorithm) -> (PkiPaths, PkiReport) {
        let paths = PkiPaths::new(dir);
        let report = ensure_pki(&paths, &config(algorithm), &sans(), None).unwrap();
        (paths, report)
    }

    #[test]
    fn paths_follow_the_guide_layout() {
        let p = PkiPaths::new(Path::new("/"));
        assert_eq!(p.ca_cert, Path::new("/etc/registry/certs/ca/ca.crt"));
        assert_eq!(p.ca_key, Path::new("/etc/registry/certs/private/ca.key"));
        assert_eq!(p.server_cert, Path::new("/etc/registry/certs/registry.crt"));
        assert_eq!(
            p.server_key,
            Path::new("/etc/registry/certs/private/registry.key")
        );
        assert_eq!(
            p.client_ca_cert,
            Path::new("/etc/registry/certs/clients/ca.crt")
        );
        assert_eq!(
            p.client_ca_key,
            Path::new("/etc/registry/certs/private/client-ca.key")
        );
        assert_eq!(
            p.client_cert("ci"),
            Path::new("/etc/registry/certs/clients/ci.crt")
        );
        assert_eq!(
            p.client_key("ci"),
            Path::new("/etc/registry/certs/private/client-ci.key")
        );
        let r = PkiPaths::new(Path::new("/tmp/r"));
        assert_eq!(r.ca_cert, Path::new("/tmp/r/etc/registry/certs/ca/ca.crt"));
    }

    #[test]
    fn fresh_layout_has_exact_modes_and_verifies_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let (p, report) = make(dir.path(), KeyAlgorithm::EcdsaP256);

        for (d, m) in [
            (&p.dir, 0o755),
            (&p.ca_dir, 0o755),
            (&p.private_dir, 0o750),
            (&p.clients_dir, 0o755),
        ] {
            assert_eq!(mode(d), m, "{}", d.display());
        }
        let files = [
            (p.ca_cert.clone(), 0o644),
            (p.ca_key.clone(), 0o600),
            (p.server_cert.clone(), 0o644),
            (p.server_key.clone(), 0o640),
            (p.client_ca_cert.clone(), 0o640),
            (p.client_ca_key.clone(), 0o600),
            (p.client_cert("ci"), 0o644),
            (p.client_key("ci"), 0o600),
            (p.client_cert("laptop"), 0o644),
            (p.client_key("laptop"), 0o600),
        ];
        for (f, m) in &files {
            assert_eq!(mode(f), *m, "{}", f.display());
        }
        // Nothing else (no temporary files, no requests/).
        assert_eq!(snapshot(&p.dir).len(), files.len());
        let reported: Vec<&PathBuf> = report.files.iter().map(|f| &f.path).collect();
        for (f, _) in &files {
            assert!(reported.contains(&f), "{} not reported", f.display());
        }
        assert!(report.files.iter().all(|f| f.action == Action::Made));

        // Chains and purposes.
        let ok = openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            s(&p.ca_cert),
            s(&p.server_cert),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        for client in ["ci", "laptop"] {
            let ok = openssl(&[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                s(&p.client_ca_cert),
                s(&p.client_cert(client)),
            ]);
            assert!(ok.contains(": OK"), "{ok}");
        }
        // The two CAs are separate: neither leaf verifies against the other CA, and the
        // server certificate is not a client certificate.
        assert!(openssl_fails(&[
            "verify",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.server_cert)
        ]));
        assert!(openssl_fails(&[
            "verify",
            "-CAfile",
            s(&p.ca_cert),
            s(&p.client_cert("ci"))
        ]));
        assert!(openssl_fails(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&p.ca_cert),
            s(&p.server_cert)
        ]));

        // Extensions and subjects.
        let ext = "subjectAltName,extendedKeyUsage,basicConstraints,keyUsage";
        let server = openssl(&[
            "x509",
            "-noout",
            "-subject",
            "-ext",
            ext,
            "-in",
            s(&p.server_cert),
        ]);
        for want in [
            "subject=O = Example Org, CN = reg.example.test",
            "DNS:reg.example.test",
            "DNS:alias.example.test",
            "IP Address:192.0.2.10",
            "IP Address:2001:DB8:0:0:0:0:0:10",
            "TLS Web Server Authentication",
            "CA:FALSE",
            "Digital Signature",
        ] {
            assert!(server.contains(want), "missing {want:?} in\n{server}");
        }
        // IP addresses are IP SANs, never DNS names.
        assert!(!server.contains("DNS:192.0.2.10"), "{server}");
        assert!(!server.contains("Key Encipherment"), "{server}");
        let client = openssl(&[
            "x509",
            "-noout",
            "-subject",
            "-ext",
            ext,
            "-in",
            s(&p.client_cert("ci")),
        ]);
        for want in [
            "subject=O = Example Org, CN = ci",
            "TLS Web Client Authentication",
            "CA:FALSE",
        ] {
            assert!(client.contains(want), "missing {want:?} in\n{client}");
        }
        assert!(!client.contains("Server Authentication"), "{client}");
        for (ca, cn) in [
            (&p.ca_cert, "Example Org Registry CA"),
            (&p.client_ca_cert, "Example Org Client CA"),
        ] {
            let text = openssl(&["x509", "-noout", "-subject", "-ext", ext, "-in", s(ca)]);
            for want in [
                format!("subject=O = Example Org, CN = {cn}"),
                "critical".into(),
                "CA:TRUE, pathlen:0".into(),
                "Certificate Sign, CRL Sign".into(),
            ] {
                assert!(text.contains(&want), "missing {want:?} in\n{text}");
            }
        }

        // Random 16-byte serials, all different.
        let mut serials = Vec::new();
        for cert in [
            &p.ca_cert,
            &p.server_cert,
            &p.client_ca_cert,
            &p.client_cert("ci"),
            &p.client_cert("laptop"),
        ] {
            let out = openssl(&["x509", "-noout", "-serial", "-in", s(cert)]);
            let serial = out.trim().trim_start_matches("serial=").to_string();
            assert_eq!(serial.len(), 32, "{serial}");
            serials.push(serial);
        }
        let mut unique = serials.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), serials.len(), "{serials:?}");

        // Validity from the config, backdated a little; the report matches openssl.
        let der = pem_to_der(&fs::read_to_string(&p.server_cert).unwrap()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let now = OffsetDateTime::now_utc();
        let before = now - x509.validity().not_before.to_datetime();
        assert!(
            before > Duration::minutes(4) && before < Duration::minutes(6),
            "{before}"
        );
        let days = (x509.validity().not_after.to_datetime() - now).whole_days();
        assert!((396..=397).contains(&days), "{days}");
        let server_report = report.certificate("server", None).unwrap();
        let fp = openssl(&[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            s(&p.server_cert),
        ]);
        assert_eq!(
            fp.trim(),
            format!("sha256 Fingerprint={}", server_report.sha256)
        );
        assert_eq!(server_report.name, "reg.example.test");
        assert_eq!(server_report.serial, serials[1].to_ascii_lowercase());
        let ca_days = (fs::read_to_string(&p.ca_cert).map(|pem| {
            let der = pem_to_der(&pem).unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            c.validity().not_after.to_datetime() - now
        }))
        .unwrap()
        .whole_days();
        assert!((3649..=3650).contains(&ca_days), "{ca_days}");
        assert!(report.certificate("client", Some("laptop")).is_some());
    }

    #[test]
    fn rerun_keeps_everything_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let before = snapshot(&p.dir);
        // A kept file gets its mode back.
        fs::set_permissions(&p.ca_key, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, second) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        assert_eq!(snapshot(&p.dir), before);
        assert_eq!(mode(&p.ca_key), 0o600);
        assert!(
            second.files.iter().all(|f| f.action == Action::Kept),
            "{second:?}"
        );
        let fps = |r: &PkiReport| {
            r.certificates
                .iter()
                .map(|c| c.sha256.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(fps(&first), fps(&second));
    }

    #[test]
    fn deleting_a_leaf_remakes_only_that_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let before = snapshot(&p.dir);
        fs::remove_file(&p.server_cert).unwrap();
        fs::remove_file(p.client_key("laptop")).unwrap();
        let (_, report) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let after = snapshot(&p.dir);
        let changed: Vec<&PathBuf> = after
            .iter()
            .filter(|(path, bytes)| before.get(*path) != Some(bytes))
            .map(|(path, _)| path)
            .collect();
        let want = [
            p.server_cert.clone(),
            p.server_key.clone(),
            p.client_cert("laptop"),
            p.client_key("laptop"),
        ];
        assert_eq!(changed.len(), want.len(), "{changed:?}");
        for w in &want {
            assert!(changed.contains(&w), "{} not remade", w.display());
        }
        let action = |path: &Path| {
            report
                .files
                .iter()
                .find(|f| f.path == path)
                .unwrap()
                .clone()
        };
        assert_eq!(action(&p.server_cert).action, Action::Made);
        let laptop = action(&p.client_cert("laptop"));
        assert_eq!(laptop.action, Action::Replaced);
        assert!(laptop.reason.unwrap().contains("key"));
        assert_eq!(action(&p.client_cert("ci")).action, Action::Kept);
        let ok = openssl(&["verify", "-CAfile", s(&p.ca_cert), s(&p.server_cert)]);
        assert!(ok.contains(": OK"), "{ok}");
    }

    #[test]
    fn missing_wanted_san_remakes_the_server_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let before = snapshot(&p.dir);
        let mut wanted = sans();
        wanted.ip_addresses.push("198.51.100.4".parse().unwrap());
        let report = ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &wanted, None).unwrap();
        let server = report
            .files
            .iter()
            .find(|f| f.path == p.server_cert)
            .unwrap();
        assert_eq!(server.action, Action::Replaced);
        assert!(
            server.reason.as_deref().unwrap().contains("198.51.100.4"),
            "{server:?}"
        );
        let text = openssl(&[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            s(&p.server_cert),
        ]);
        assert!(text.contains("IP Address:198.51.100.4"), "{text}");
        assert_eq!(
            fs::read(p.client_cert("ci")).unwrap(),
            before[&p.client_cert("ci")]
        );
        assert_eq!(fs::read(&p.ca_cert).unwrap(), before[&p.ca_cert]);
        // Fewer wanted names than the certificate has: still covered, kept.
        let mut fewer = sans();
        fewer.dns_names.pop();
        let server_now = fs::read(&p.server_cert).unwrap();
        ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &fewer, None).unwrap();
        assert_eq!(fs::read(&p.server_cert).unwrap(), server_now);
    }

    #[test]
    fn leaf_of_another_ca_or_expiring_soon_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        // A client certificate from some other CA, with its matching key.
        let other = tempfile::tempdir().unwrap();
        let (q, _) = make(other.path(), KeyAlgorithm::EcdsaP256);
        fs::copy(q.client_cert("ci"), p.client_cert("ci")).unwrap();
        fs::copy(q.client_key("ci"), p.client_key("ci")).unwrap();
        // A client certificate of the right CA that expires in 10 days.
        let ca = load_ca(
            &p.client_ca_cert,
            &p.client_ca_key,
            "client CA",
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let FoundCa::Whole(ca) = ca else {
            panic!("the client CA is not whole")
        };
        let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = subject("Example Org", Some("laptop"));
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(10);
        let cert = params.signed_by(&key, &ca.issuer().unwrap()).unwrap();
        fs::write(p.client_cert("laptop"), cert.pem()).unwrap();
        fs::write(p.client_key("laptop"), key.serialize_pem()).unwrap();

        let report = ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &sans(), None).unwrap();
        let reason = |path: &Path| {
            let f = report.files.iter().find(|f| f.path == path).unwrap();
            assert_eq!(f.action, Action::Replaced, "{f:?}");
            f.reason.clone().unwrap()
        };
        assert!(reason(&p.client_cert("ci")).contains("not signed by the current CA"));
        assert!(reason(&p.client_cert("laptop")).contains("expires on"));
        for client in ["ci", "laptop"] {
            let ok = openssl(&[
                "verify",
                "-CAfile",
                s(&p.client_ca_cert),
                s(&p.client_cert(client)),
            ]);
            assert!(ok.contains(": OK"), "{ok}");
        }
    }

    #[test]
    fn ca_half_missing_is_an_error_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let cfg = config(KeyAlgorithm::EcdsaP256);

        // Certificate without key; another leaf missing too, which must not be remade.
        fs::remove_file(&p.ca_key).unwrap();
        fs::remove_file(p.client_cert("ci")).unwrap();
        let before = snapshot(&p.dir);
        let e = ensure_pki(&p, &cfg, &sans(), None).unwrap_err().to_string();
        assert!(
            e.contains("server CA certificate") && e.contains("ca.key is missing"),
            "{e}"
        );
        assert_eq!(snapshot(&p.dir), before);

        // An unparsable key without its certificate.
        let dir2 = tempfile::tempdir().unwrap();
        let (p2, _) = make(dir2.path(), KeyAlgorithm::EcdsaP256);
        fs::remove_file(&p2.client_ca_cert).unwrap();
        let good_key = fs::read(&p2.client_ca_key).unwrap();
        fs::write(&p2.client_ca_key, b"not a key").unwrap();
        let before = snapshot(&p2.dir);
        let e = ensure_pki(&p2, &cfg, &sans(), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client CA key") && e.contains("does not parse"),
            "{e}"
        );
        assert_eq!(snapshot(&p2.dir), before);
        fs::write(&p2.client_ca_key, good_key).unwrap();

        // A key that belongs to another CA.
        let dir3 = tempfile::tempdir().unwrap();
        let (p3, _) = make(dir3.path(), KeyAlgorithm::EcdsaP256);
        fs::copy(&p2.ca_key, &p3.ca_key).unwrap();
        let before = snapshot(&p3.dir);
        let e = ensure_pki(&p3, &cfg, &sans(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert_eq!(snapshot(&p3.dir), before);

        // A lone CA certificate in an empty tree: nothing at all is created.
        let dir4 = tempfile::tempdir().unwrap();
        let p4 = PkiPaths::new(dir4.path());
        fs::create_dir_all(&p4.ca_dir).unwrap();
        fs::copy(&p2.ca_cert, &p4.ca_cert).unwrap();
        assert!(ensure_pki(&p4, &cfg, &sans(), None).is_err());
        assert_eq!(snapshot(&p4.dir).len(), 1);
        assert!(!p4.private_dir.exists());
    }

    #[test]
    fn ca_key_without_certificate_gets_its_certificate_again() {
        // What a power cut between the CA key's write and its certificate's leaves.
        let dir = tempfile::tempdir().unwrap();
        let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let cfg = config(KeyAlgorithm::EcdsaP256);
        let key = fs::read(&p.client_ca_key).unwrap();
        let client = fs::read(p.client_cert("ci")).unwrap();
        fs::remove_file(&p.client_ca_cert).unwrap();
        let report = ensure_pki(&p, &cfg, &sans(), None).unwrap();
        // The key is kept; a certificate is made for it; the client certificate it signed
        // still verifies against the new one, so it is kept too.
        assert_eq!(fs::read(&p.client_ca_key).unwrap(), key);
        assert_eq!(mode(&p.client_ca_key), 0o600);
        let ca = report.certificate("client-ca", None).unwrap();
        assert_eq!(ca.action, Action::Made);
        assert_ne!(
            ca.sha256,
            first.certificate("client-ca", None).unwrap().sha256
        );
        let cert_file = report
            .files
            .iter()
            .find(|f| f.path == p.client_ca_cert)
            .unwrap();
        assert!(cert_file
            .reason
            .as_deref()
            .unwrap()
            .contains("existing key"));
        let client_report = report.certificate("client", Some("ci")).unwrap();
        assert_eq!(client_report.action, Action::Kept);
        assert_eq!(fs::read(p.client_cert("ci")).unwrap(), client);
        let verify = openssl(&[
            "verify",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.client_cert("ci")),
        ]);
        assert!(verify.contains(": OK"), "{verify}");
        // The key matches the new certificate.
        let pubkey = |args: &[&str]| openssl(args);
        assert_eq!(
            pubkey(&["pkey", "-in", s(&p.client_ca_key), "-pubout"]),
            pubkey(&["x509", "-in", s(&p.client_ca_cert), "-noout", "-pubkey"])
        );
        // And the next run keeps everything.
        let again = ensure_pki(&p, &cfg, &sans(), None).unwrap();
        assert!(again.files.iter().all(|f| f.action == Action::Kept));
    }

    #[test]
    fn existing_ca_is_reused_for_new_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
        let mut cfg = config(KeyAlgorithm::EcdsaP256);
        cfg.clients.push("new-runner".into());
        let report = ensure_pki(&p, &cfg, &sans(), None).unwrap();
        let fp = |r: &PkiReport, role| r.certificate(role, None).unwrap().sha256.clone();
        assert_eq!(fp(&first, "server-ca"), fp(&report, "server-ca"));
        assert_eq!(fp(&first, "client-ca"), fp(&report, "client-ca"));
        let ok = openssl(&[
            "verify",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.client_cert("new-runner")),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
    }

    #[test]
    fn client_named_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(KeyAlgorithm::EcdsaP256);
        cfg.clients = vec!["ci".into(), "ca".into()];
        let e = ensure_pki(&PkiPaths::new(dir.path()), &cfg, &sans(), None).unwrap_err();
        assert!(e.to_string().contains("clients[1]"), "{e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn proxy_group_is_given_to_what_nginx_reads() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's group to another group needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = PkiPaths::new(dir.path());
        let gid = 54321;
        ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &sans(), Some(gid)).unwrap();
        let group = |path: &Path| fs::metadata(path).unwrap().gid();
        for path in [&p.private_dir, &p.server_key, &p.client_ca_cert] {
            assert_eq!(group(path), gid, "{}", path.display());
        }
        for path in [
            &p.ca_key,
            &p.client_ca_key,
            &p.client_key("ci"),
            &p.ca_cert,
            &p.server_cert,
        ] {
            assert_ne!(group(path), gid, "{}", path.display());
        }
        assert_eq!(mode(&p.server_key), 0o640);
    }

    #[test]
    fn each_key_algorithm_makes_its_key_type() {
        // RSA-4096 runs once, here; it is the slow one.
        for (algorithm, want) in [
            (KeyAlgorithm::EcdsaP256, "ASN1 OID: prime256v1"),
            (KeyAlgorithm::EcdsaP384, "ASN1 OID: secp384r1"),
            (KeyAlgorithm::Rsa2048, "Private-Key: (2048 bit, 2 primes)"),
            (KeyAlgorithm::Rsa4096, "Private-Key: (4096 bit, 2 primes)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(algorithm);
            cfg.clients = vec!["ci".into()];
            let p = PkiPaths::new(dir.path());
            ensure_pki(&p, &cfg, &sans(), None).unwrap();
            for key in [
                &p.ca_key,
                &p.server_key,
                &p.client_ca_key,
                &p.client_key("ci"),
            ] {
                let text = openssl(&["pkey", "-noout", "-text", "-in", s(key)]);
                assert!(
                    text.contains(want),
                    "{algorithm:?} {}: {}",
                    key.display(),
                    text.lines().next().unwrap_or("")
                );
            }
            let ok = openssl(&[
                "verify",
                "-purpose",
                "sslserver",
                "-CAfile",
                s(&p.ca_cert),
                s(&p.server_cert),
            ]);
            assert!(ok.contains(": OK"), "{ok}");
            let ok = openssl(&[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                s(&p.client_ca_cert),
                s(&p.client_cert("ci")),
            ]);
            assert!(ok.contains(": OK"), "{ok}");
            let usage = openssl(&[
                "x509",
                "-noout",
                "-ext",
                "keyUsage",
                "-in",
                s(&p.server_cert),
            ]);
            let rsa = matches!(algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096);
            assert_eq!(
                usage.contains("Key Encipherment"),
                rsa,
                "{algorithm:?}: {usage}"
            );
            // Reloading the existing CA (rcgen Issuer from PEM) works for every key type.
            fs::remove_file(&p.server_cert).unwrap();
            ensure_pki(&p, &cfg, &sans(), None).unwrap();
            let ok = openssl(&["verify", "-CAfile", s(&p.ca_cert), s(&p.server_cert)]);
            assert!(ok.contains(": OK"), "{ok}");
        }
    }

    #[test]
    fn cn_fits_in_64_characters() {
        let cn = limited_cn(&"x".repeat(64), " Registry CA");
        assert_eq!(cn.chars().count(), 64);
        assert!(cn.ends_with(" Registry CA"));
        assert_eq!(limited_cn("Org", " Client CA"), "Org Client CA");
        let t = OffsetDateTime::from_unix_timestamp(2_053_857_605).unwrap();
        assert_eq!(rfc3339(t), "2035-01-31T12:00:05Z");
    }
}
