//! Certificates: server CA, server certificate, client CA and client certificates (rcgen),
//! in the guide's layout under /etc/registry/certs, kept when they exist and are valid.
//!
//! A CA is never replaced: an existing one is loaded and reused, and a CA certificate without
//! its key (or the reverse) stops the run before anything is written. A leaf is kept while it
//! parses, is signed by the current CA, matches its key, does not expire soon and (for the
//! server) names every wanted SAN; otherwise it is made again with a new key.
//!
//! Paths, modes and groups are in `layout`, key generation in `keys`, the CAs in `ca`,
//! leaves in `leaf` and what a run reports in `report`; [`ensure_pki`] here ties them
//! together, and the public names are re-exported here (`crate::pki::PkiPaths`, ...).

mod ca;
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

pub use keys::generate_key;
pub use layout::{PkiPaths, CERTS_DIR};
pub use report::{fingerprint, rfc3339, Action, CertReport, FileReport, PkiReport};

use ca::{ensure_ca, limited_cn, load_ca, CaSpec};
use layout::{set_group, CERT_MODE, DIR_MODE, KEY_MODE, PRIVATE_DIR_MODE, PROXY_READABLE_MODE};
use leaf::{ensure_leaf, LeafSpec};

/// Certificates are dated a little in the past so a clock slightly behind still accepts them.
const BACKDATE: Duration = Duration::minutes(5);

/// When first boot runs again, a leaf that expires within this many days is issued again
/// (shortened to a third of the leaf validity for short validities), and a CA that does is
/// warned about. Nothing renews certificates after first boot: this acts only on a rerun.
const REISSUE_ON_RERUN_WITHIN_DAYS: i64 = 30;

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
        if ca.not_after - now < Duration::days(REISSUE_ON_RERUN_WITHIN_DAYS) {
            tracing::warn!(
                "the CA {} expires on {}; leaves cannot outlive it",
                ca.cert_path.display(),
                rfc3339(ca.not_after)
            );
        }
    }

    let server_issuer = server_ca.issuer()?;
    let client_issuer = client_ca.issuer()?;
    let reissue_within = Duration::days(
        REISSUE_ON_RERUN_WITHIN_DAYS.min(i64::from(config.pki.leaf_validity_days) / 3),
    );

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
        reissue_within,
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
            reissue_within,
            &mut report,
        )?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
