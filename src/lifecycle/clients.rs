//! `regimage client add|revoke|list`: clients on the running appliance, without touching the
//! site config or rerunning first boot.
//!
//! A revoke is recorded in the client index first (the commit point), then the CRL lists
//! every unexpired certificate of that client, the proxy is reloaded, and only then are its
//! bundle, key and certificate removed: a run stopped anywhere is finished by the next
//! command ([`super::certify`] converges from the index).

use std::fmt::Write as _;

use anyhow::Result;

use super::index::{Origin, State};
use super::renew::current_sans;
use super::status::{client_entries, sans_of_server_cert, ClientEntry};
use super::{apply, bundle_path, describe_reload, Appliance, CertifyOptions};
use crate::config::check_client_name;
use crate::error::UsageError;
use crate::identity::Sans;

/// A name as a client: the config's rules, and not the CA's file name.
fn check_name(name: &str) -> Result<(), UsageError> {
    check_client_name(name).map_err(UsageError)?;
    if name == "ca" {
        return Err(UsageError(
            "\"ca\" cannot name a client: its certificate would be clients/ca.crt, the client CA; choose another name".into(),
        ));
    }
    Ok(())
}

/// The server's SANs for a run: this machine's now, or the certificate's own when the
/// network is not up.
pub(super) fn sans(app: &Appliance<'_>) -> Result<Sans> {
    match current_sans(app)? {
        Some(sans) => Ok(sans),
        None => sans_of_server_cert(app),
    }
}

/// Issues a certificate to a new client and writes its bundle.
pub fn add(app: &Appliance<'_>, name: &str, reissue_revoked: bool) -> Result<String> {
    check_name(name)?;
    let _lock = app.lock()?;
    app.require_certificates()?;
    let mut index = app.load_index()?;
    match index
        .get(name)
        .map(|c| (c.state, c.origin, c.revoked_at.clone()))
    {
        Some((State::Active, Origin::Cluster, _)) => {
            return Err(UsageError(format!(
                "client {name} was added on another node of the cluster: its key and bundle \
                 are there (`regimage client list` on that node). To give it a bundle from \
                 this node, revoke it (`regimage client revoke {name}`) and add it again \
                 with --reissue-revoked"
            ))
            .into());
        }
        Some((State::Active, _, _)) => {
            // An add stopped after it was recorded: finish it rather than refuse.
            let applied = apply(app, &sans(app)?, CertifyOptions::default())?;
            if applied.changed_anything() {
                return Ok(format!(
                    "client {name}: finished the add an earlier run left unfinished\nbundle: {} (copy it off as its README.md says)\n",
                    bundle_path(app, name).display()
                ));
            }
            return Err(UsageError(format!(
                "client {name} exists and is active; its bundle is {}. To give it a new \
                 certificate, `regimage renew --force` renews every client, or revoke it \
                 (`regimage client revoke {name}`) and add it again with --reissue-revoked",
                bundle_path(app, name).display()
            ))
            .into());
        }
        Some((State::Revoked, _, at)) if !reissue_revoked => {
            return Err(UsageError(format!(
                "client {name} was revoked ({}); a revoked name is not issued again by \
                 accident. To issue it a new certificate on purpose: regimage client add \
                 {name} --reissue-revoked (its old certificates stay revoked)",
                at.as_deref().unwrap_or("date unknown")
            ))
            .into())
        }
        _ => {}
    }
    index.activate(name, Origin::Added);
    app.save_index(&index)?;
    let sans = sans(app)?;
    let applied = apply(app, &sans, CertifyOptions::default())?;
    let cert = applied
        .certified
        .pki
        .report
        .certificate("client", Some(name))
        .map(|c| (c.serial.clone(), c.not_after.clone()))
        .unwrap_or_default();
    let bundle = applied
        .bundles
        .iter()
        .find(|b| b.client == name)
        .map(|b| b.path.display().to_string())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "client {name}: added (serial {}, ends {})",
        cert.0, cert.1
    );
    let _ = writeln!(out, "bundle: {bundle}");
    let _ = writeln!(
        out,
        "copy it off (then follow its README.md): {}",
        crate::bundle::copy_off_command(
            crate::bundle::cloud_login(&app.root),
            &sans.primary_name,
            &app.config.output_dir.join(format!("{name}.tar.gz")),
            name
        )
    );
    if applied.reloaded.is_some() {
        let _ = writeln!(out, "{}", describe_reload(&applied.reloaded));
    }
    if let Some(line) = super::cluster::publish_after_change(app) {
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

/// Revokes a client: the proxy refuses its certificates once this returns.
pub fn revoke(app: &Appliance<'_>, name: &str) -> Result<String> {
    check_name(name)?;
    let _lock = app.lock()?;
    app.require_certificates()?;
    let mut index = app.load_index()?;
    match index.get(name).map(|c| (c.state, c.revoked_at.clone())) {
        None => {
            return Err(UsageError(format!(
                "no client named {name}; `regimage client list` shows the clients"
            ))
            .into())
        }
        Some((State::Revoked, at)) => {
            // A revoke stopped after it was recorded: finish it rather than refuse.
            let applied = apply(app, &sans(app)?, CertifyOptions::default())?;
            if applied.changed_anything() {
                return Ok(format!(
                    "client {name}: finished the revoke an earlier run left unfinished ({})\n{}\n",
                    at.as_deref().unwrap_or("date unknown"),
                    describe_reload(&applied.reloaded)
                ));
            }
            return Err(UsageError(format!(
                "client {name} is already revoked ({})",
                at.as_deref().unwrap_or("date unknown")
            ))
            .into());
        }
        Some((State::Active, _)) => {}
    }
    // The certificate on disk may be one a stopped run did not record yet.
    super::record_current(&mut index, &app.pki_paths(), name, app.now);
    let serials = index.revoke(name, app.now);
    app.save_index(&index)?;
    let sans = sans(app)?;
    let applied = apply(app, &sans, CertifyOptions::default())?;
    let certified = &applied.certified;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "client {name}: revoked (serials {}); the CRL lists {} certificate(s), next update {}",
        serials.join(", "),
        certified.pki.crl.revoked,
        crate::pki::rfc3339(certified.pki.crl.next_update)
    );
    let _ = writeln!(out, "removed {}", bundle_path(app, name).display());
    let _ = writeln!(out, "{}", describe_reload(&applied.reloaded));
    if let Some(line) = super::cluster::publish_after_change(app) {
        let _ = writeln!(out, "{line}");
    }
    Ok(out)
}

/// Every client the appliance knows.
pub fn list(app: &Appliance<'_>) -> Result<Vec<ClientEntry>> {
    let index = app.load_index()?;
    Ok(client_entries(app, &index))
}
