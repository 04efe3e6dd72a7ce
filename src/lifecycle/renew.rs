//! `regimage renew`: run daily by regimage-renew.timer. Certificates that end within
//! `pki.renew-before-days` (or, for the server, no longer name this machine's names and
//! addresses) are issued again, the CRL is signed again long before its nextUpdate, clients
//! the config dropped are revoked, changed bundles are rewritten, and the proxy is reloaded
//! only when a file it serves changed. Every run leaves its result in renew.json.

use std::fmt::Write as _;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{apply, describe_reload, Appliance, Applied, CertifyOptions, RENEW_RECORD_PATH};
use crate::fsutil;
use crate::identity::{self, HostFacts, Sans};
use crate::pki::{self, rfc3339, Action};

/// How `renew` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenewOptions {
    pub dry_run: bool,
    pub force: bool,
}

/// The last run, as renew.json holds it (read by `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRecord {
    pub finished_at: String,
    /// `ok` or `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub changes: Vec<String>,
}

/// The names and addresses the server certificate should carry now. When the machine has
/// no usable address or name yet (a boot before DHCP), the certificate's own names stand:
/// a renew must never shrink it to what a half-up network shows.
pub fn current_sans(app: &Appliance<'_>) -> Result<Option<Sans>> {
    if let Some(sans) = &app.sans {
        return Ok(Some(sans.clone()));
    }
    let facts = HostFacts::gather();
    if identity::missing_for_clients(app.config, &facts).is_some() {
        return Ok(None);
    }
    Ok(Some(identity::server_sans(app.config, &facts)))
}

/// Runs renew and records its result; returns the report lines.
pub fn run(app: &Appliance<'_>, sans: Option<Sans>, opts: RenewOptions) -> Result<String> {
    if opts.dry_run {
        return dry_run(app, sans);
    }
    let result = renew(app, sans, opts);
    let record = match &result {
        Ok((_, changes)) => RenewRecord {
            finished_at: rfc3339(time::OffsetDateTime::now_utc()),
            result: "ok".into(),
            error: None,
            changes: changes.clone(),
        },
        Err(e) => RenewRecord {
            finished_at: rfc3339(time::OffsetDateTime::now_utc()),
            result: "failed".into(),
            error: Some(format!("{e:#}")),
            changes: Vec::new(),
        },
    };
    if let Err(e) = write_record(app, &record) {
        tracing::warn!("writing {RENEW_RECORD_PATH}: {e:#}");
    }
    result.map(|(text, _)| text)
}

fn write_record(app: &Appliance<'_>, record: &RenewRecord) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record)?;
    bytes.push(b'\n');
    fsutil::write_atomic(&app.path(RENEW_RECORD_PATH), &bytes, 0o600)
}

/// The last run's record, `None` before the first.
pub fn last_record(app: &Appliance<'_>) -> Option<RenewRecord> {
    let text = std::fs::read_to_string(app.path(RENEW_RECORD_PATH)).ok()?;
    serde_json::from_str(&text).ok()
}

fn renew(
    app: &Appliance<'_>,
    sans: Option<Sans>,
    opts: RenewOptions,
) -> Result<(String, Vec<String>)> {
    let _lock = app.lock()?;
    app.require_certificates()?;
    let sans = match sans {
        Some(sans) => sans,
        None => super::status::sans_of_server_cert(app)?,
    };
    let applied = apply(
        app,
        &sans,
        CertifyOptions {
            force: opts.force,
            revoke_dropped: true,
        },
    )?;
    let Applied {
        certified,
        bundles,
        reloaded,
        ..
    } = &applied;

    let mut out = String::new();
    let mut changes = Vec::new();
    for cert in &certified.pki.report.certificates {
        let what = match cert.role {
            "server" => "server certificate".to_string(),
            "client" => format!("client {}", cert.name),
            "server-ca" => "server CA".to_string(),
            "client-ca" => "client CA".to_string(),
            other => other.to_string(),
        };
        let reason = certified
            .pki
            .report
            .files
            .iter()
            .find(|f| f.path == cert.path)
            .and_then(|f| f.reason.clone());
        let line = match cert.action {
            Action::Kept => format!(
                "{what}: kept (serial {}, ends {})",
                cert.serial, cert.not_after
            ),
            action => {
                let line = format!(
                    "{what}: {action} (serial {}, ends {}){}",
                    cert.serial,
                    cert.not_after,
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                );
                changes.push(line.clone());
                line
            }
        };
        let _ = writeln!(out, "{line}");
    }
    for name in &certified.dropped {
        let line = format!("client {name}: revoked (the site config no longer lists it)");
        changes.push(line.clone());
        let _ = writeln!(out, "{line}");
    }
    for name in &certified.skipped_revoked {
        let _ = writeln!(
            out,
            "client {name}: revoked, not issued again although the config lists it (`regimage client add {name} --reissue-revoked` does it on purpose)"
        );
    }
    let crl = &certified.pki.crl;
    let crl_line = match crl.action {
        Action::Kept => format!(
            "CRL: kept ({} revoked, next update {})",
            crl.revoked,
            rfc3339(crl.next_update)
        ),
        action => {
            let line = format!(
                "CRL: {action} ({} revoked, next update {}){}",
                crl.revoked,
                rfc3339(crl.next_update),
                crl.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            changes.push(line.clone());
            line
        }
    };
    let _ = writeln!(out, "{crl_line}");
    for bundle in bundles.iter().filter(|b| b.action != Action::Kept) {
        let line = format!("bundle {}: {}", bundle.path.display(), bundle.action);
        changes.push(line.clone());
        let _ = writeln!(out, "{line}");
    }
    for warning in &certified.pki.ca_warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let _ = writeln!(out, "{}", describe_reload(reloaded));
    Ok((out, changes))
}

/// What a run would do, from the same checks, changing nothing.
fn dry_run(app: &Appliance<'_>, sans: Option<Sans>) -> Result<String> {
    app.require_certificates()?;
    let status = super::status::gather(app)?;
    let mut out = String::from("regimage renew --dry-run: nothing was changed\n");
    let window = time::Duration::days(i64::from(app.config.pki.renew_before_days));
    for cert in &status.certificates {
        if cert.role.ends_with("-ca") {
            continue;
        }
        let end = super::index::parse_time(&cert.not_after)?;
        let due = end - app.now < window;
        let _ = writeln!(
            out,
            "{} {}: {} (ends {})",
            cert.role,
            cert.name,
            if due { "would renew" } else { "kept" },
            cert.not_after
        );
    }
    if let Some(sans) = sans {
        let server = super::status::sans_of_server_cert(app)?;
        let missing = sans.missing_in(&server.dns_names, &server.ip_addresses);
        if !missing.is_empty() {
            let _ = writeln!(
                out,
                "server certificate: would renew: it does not name {}",
                missing.join(", ")
            );
        }
    }
    if let Some(crl) = &status.crl {
        let next_update = crl
            .next_update
            .as_deref()
            .and_then(|t| super::index::parse_time(t).ok());
        let resign = pki::crl_near_end(next_update, app.now);
        let _ = writeln!(
            out,
            "CRL: {} (next update {})",
            if resign { "would sign again" } else { "kept" },
            crl.next_update.as_deref().unwrap_or("none")
        );
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    Ok(out)
}
