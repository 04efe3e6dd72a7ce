//! Certificates: server CA, server certificate, client CA and client certificates (rcgen),
//! in the guide's layout under /etc/registry/certs, kept when they exist and are valid.
//!
//! A CA is never replaced: an existing one is loaded and reused, and a CA certificate without
//! its key (or the reverse) stops the run before anything is written. A leaf is kept while it
//! parses, is signed by the current CA, matches its key, does not end within
//! `pki.renew-before-days` and (for the server) names every wanted SAN; otherwise it is made
//! again with a new key. The server's key and certificate live in one file (registry.pem)
//! that nginx loads whole; the client CA's CRL sits next to the client certificates.
//!
//! Paths, modes and groups are in `layout`, key generation in `keys`, the CAs in `ca`,
//! leaves in `leaf`, the revocation list in `crl` and what a run reports in `report`; [`ensure_pki`] here ties them
//! together, and the public names are re-exported here (`crate::pki::PkiPaths`, ...).

mod ca;
mod crl;
mod keys;
mod layout;
mod leaf;
mod report;

use anyhow::{bail, Result};
use rcgen::ExtendedKeyUsagePurpose;
use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::fsutil;
use crate::identity::Sans;

pub use crl::{
    crl_near_end, parse_crl, read_crl, CrlInfo, CrlReport, Revoked, CRL_RESIGN_WITHIN_DAYS,
    CRL_VALIDITY_DAYS,
};
pub use keys::generate_key;
pub use layout::{PkiPaths, CERTS_DIR};
pub use report::{
    fingerprint, rfc3339, serial_and_end, Action, CertFacts, CertReport, FileReport, PkiReport,
};

pub use ca::CaPem;
use ca::{adopt_ca, check_ca_pem, ensure_ca, limited_cn, load_ca, read_ca_pem, CaSpec};
use layout::{set_group, CERT_MODE, DIR_MODE, KEY_MODE, PRIVATE_DIR_MODE, PROXY_READABLE_MODE};
pub use leaf::served_sans;
use leaf::{ensure_leaf, LeafSpec, Reissue};

/// Certificates are dated a little in the past so a clock slightly behind still accepts them.
const BACKDATE: Duration = Duration::minutes(5);

/// A CA this close to its own end is warned about at every run (CA rotation is the
/// operator's decision; it never happens by itself).
pub const CA_WARN_WITHIN_DAYS: i64 = 365;

/// What one run of [`ensure`] should leave.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub config: &'a Config,
    /// The names and addresses the server certificate must carry.
    pub sans: &'a Sans,
    /// The clients that should hold a certificate (active ones; revoked ones are left out).
    pub clients: &'a [String],
    /// The serials the CRL must list.
    pub revoked: &'a [Revoked],
    /// The group that gets private/, registry.pem and clients/ca.crt (`None`: groups are
    /// left alone).
    pub proxy_gid: Option<u32>,
    /// The clock (tests move it).
    pub now: OffsetDateTime,
    /// Issue every leaf and the CRL again, valid or not (`regimage renew --force`).
    pub force: bool,
}

/// Everything [`ensure`] made or kept.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: PkiReport,
    pub crl: CrlReport,
    /// One line per CA that ends within [`CA_WARN_WITHIN_DAYS`].
    pub ca_warnings: Vec<String>,
}

/// [`ensure`] as first boot's `--no-system` and the tests use it: now, the configured
/// clients, nothing revoked, nothing forced.
pub fn ensure_pki(
    paths: &PkiPaths,
    config: &Config,
    sans: &Sans,
    proxy_gid: Option<u32>,
) -> Result<PkiReport> {
    let outcome = ensure(
        paths,
        &Request {
            config,
            sans,
            clients: &config.clients,
            revoked: &[],
            proxy_gid,
            now: OffsetDateTime::now_utc(),
            force: false,
        },
    )?;
    Ok(outcome.report)
}

/// The server CA and the client CA of this node, whole (for `regimage cluster export`).
pub fn read_cas(paths: &PkiPaths, now: OffsetDateTime) -> Result<(CaPem, CaPem)> {
    Ok((
        read_ca_pem(&paths.ca_cert, &paths.ca_key, "server CA", now)?,
        read_ca_pem(
            &paths.client_ca_cert,
            &paths.client_ca_key,
            "client CA",
            now,
        )?,
    ))
}

/// Checks a cluster's two CAs as [`adopt_cas`] would, without writing anything.
pub fn adopt_check(server: &CaPem, client: &CaPem, now: OffsetDateTime) -> Result<()> {
    check_ca_pem(server, "server CA", now)?;
    check_ca_pem(client, "client CA", now)
}

/// Puts a cluster's two CAs in place on a joining node before [`ensure`] runs, which then
/// keeps them and issues this node's leaves from them. Both are checked before either is
/// written; the same CAs already there are kept; a node's own different CA is refused.
/// Returns what was done to each CA certificate.
pub fn adopt_cas(
    paths: &PkiPaths,
    server: &CaPem,
    client: &CaPem,
    now: OffsetDateTime,
) -> Result<[(std::path::PathBuf, Action); 2]> {
    adopt_check(server, client, now)?;
    fsutil::ensure_dir(&paths.dir, DIR_MODE)?;
    fsutil::ensure_dir(&paths.ca_dir, DIR_MODE)?;
    fsutil::ensure_dir(&paths.private_dir, PRIVATE_DIR_MODE)?;
    fsutil::ensure_dir(&paths.clients_dir, DIR_MODE)?;
    let server_action = adopt_ca(
        server,
        &paths.ca_cert,
        &paths.ca_key,
        CERT_MODE,
        "server CA",
        now,
    )?;
    let client_action = adopt_ca(
        client,
        &paths.client_ca_cert,
        &paths.client_ca_key,
        PROXY_READABLE_MODE,
        "client CA",
        now,
    )?;
    Ok([
        (paths.ca_cert.clone(), server_action),
        (paths.client_ca_cert.clone(), client_action),
    ])
}

/// Makes or keeps the whole layout under `paths`: both CAs, the server certificate for the
/// request's SANs, one client certificate per wanted client, and the client CA's CRL. A
/// leaf is issued again within `pki.renew-before-days` of its end, when it no longer names
/// every wanted SAN, or when forced.
pub fn ensure(paths: &PkiPaths, req: &Request<'_>) -> Result<Outcome> {
    let config = req.config;
    for (i, client) in req.clients.iter().enumerate() {
        // clients/ca.crt and private/client-ca.key belong to the client CA.
        if client == "ca" {
            bail!("clients[{i}]: \"ca\" cannot name a client: its certificate would be clients/ca.crt, the client CA; choose another name");
        }
    }
    let now = req.now;
    let proxy_gid = req.proxy_gid;
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
    let mut ca_warnings = Vec::new();
    for (label, ca) in [("server CA", &server_ca), ("client CA", &client_ca)] {
        let left = ca.not_after - now;
        if left < Duration::days(CA_WARN_WITHIN_DAYS) {
            let line = format!(
                "the {label} {} ends on {} ({} days left); no certificate can outlive it, and \
                 regimage never replaces a CA by itself: plan a new CA and new client bundles",
                ca.cert_path.display(),
                rfc3339(ca.not_after),
                left.whole_days()
            );
            tracing::warn!("{line}");
            ca_warnings.push(line);
        }
    }

    let server_issuer = server_ca.issuer()?;
    let client_issuer = client_ca.issuer()?;
    let reissue_within = Duration::days(i64::from(config.pki.renew_before_days));
    let reissue = if req.force {
        Reissue::Always
    } else {
        Reissue::WhenDue
    };

    ensure_leaf(
        &LeafSpec {
            role: "server",
            cn: req.sans.primary_name.clone(),
            cert: &paths.server_cert,
            key: &paths.server_pem,
            key_mode: PROXY_READABLE_MODE,
            key_group: proxy_gid,
            usage: ExtendedKeyUsagePurpose::ServerAuth,
            sans: Some(req.sans),
            combined: true,
        },
        &server_ca,
        &server_issuer,
        config,
        algorithm,
        now,
        reissue_within,
        reissue,
        &mut report,
    )?;
    for client in req.clients {
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
                combined: false,
            },
            &client_ca,
            &client_issuer,
            config,
            algorithm,
            now,
            reissue_within,
            reissue,
            &mut report,
        )?;
    }
    let crl = crl::ensure_crl(&paths.client_crl, &client_ca, req.revoked, now, req.force)?;
    report.file(&paths.client_crl, crl.action, crl.reason.clone());
    Ok(Outcome {
        report,
        crl,
        ca_warnings,
    })
}

/// Whether nginx can load the server pair: registry.pem holds a key and, after it, the
/// certificate of that key, signed by the server CA.
pub fn check_server_pair(paths: &PkiPaths) -> Result<()> {
    let pair = std::fs::read_to_string(&paths.server_pem)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", paths.server_pem.display()))?;
    let at = pair
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", paths.server_pem.display()))?;
    let key = rcgen::KeyPair::from_pem(&pair[..at]).map_err(|e| {
        anyhow::anyhow!(
            "{}: the key does not parse ({e})",
            paths.server_pem.display()
        )
    })?;
    let der = report::pem_to_der(&pair[at..])?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths.server_pem.display()))?;
    if !keys::key_matches(&key, &cert) {
        bail!(
            "{}: the key and the certificate do not belong together",
            paths.server_pem.display()
        );
    }
    let ca_pem = std::fs::read_to_string(&paths.ca_cert)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", paths.ca_cert.display()))?;
    let ca_der = report::pem_to_der(&ca_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", paths.ca_cert.display()))?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        bail!(
            "{}: the certificate is not signed by the server CA",
            paths.server_pem.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
