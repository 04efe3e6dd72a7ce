//! Steps 1 and 2: the names the registry answers to, and the certificates for them.

use std::path::Path;

use anyhow::{bail, Result};

use super::Ctx;
use crate::identity;
use crate::pki::{self, Action, PkiPaths};

/// Step 1: the names and addresses clients use, merged into the server certificate's SANs.
pub fn host_identity(ctx: &mut Ctx<'_>) -> Result<()> {
    let facts = ctx.sys.host_facts();
    let sans = identity::server_sans(ctx.config, &facts);
    if sans.primary_name.starts_with("*.") {
        bail!(
            "hostname {:?} is a wildcard, which cannot name the registry in clients' certs.d \
             directories; set hostname to one name and put the wildcard in extra-names",
            sans.primary_name
        );
    }
    let ips: Vec<String> = sans.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    ctx.note(format!(
        "registry name {}; certificate names {}; addresses {}",
        sans.primary_name,
        sans.dns_names.join(", "),
        if ips.is_empty() {
            "none".to_string()
        } else {
            ips.join(", ")
        }
    ));
    ctx.sans = Some(sans);
    Ok(())
}

/// Step 2: the certificates. Existing valid ones are kept; a CA is never made again (a CA
/// key left without its certificate by a kill between the two writes gets its certificate
/// again, from that key: see pki/ca.rs).
pub fn pki(ctx: &mut Ctx<'_>) -> Result<()> {
    let paths = PkiPaths::new(ctx.root);
    if ctx.opts.dry_run {
        let mut files = vec![
            paths.ca_cert.clone(),
            paths.ca_key.clone(),
            paths.client_ca_cert.clone(),
            paths.client_ca_key.clone(),
            paths.server_cert.clone(),
            paths.server_key.clone(),
        ];
        for client in &ctx.config.clients {
            files.push(paths.client_cert(client));
            files.push(paths.client_key(client));
        }
        for file in files {
            let shown = Path::new("/").join(file.strip_prefix(ctx.root).unwrap_or(&file));
            if file.exists() {
                ctx.note(format!("{} exists: kept if valid", shown.display()));
            } else {
                ctx.change(format!("make {}", shown.display()), |_| Ok(()))?;
            }
        }
        return Ok(());
    }
    let sans = ctx.sans()?.clone();
    // Groups are set by the users step (through System), so the owner seam stays in one place.
    let report = pki::ensure_pki(&paths, ctx.config, &sans, None)?;
    for file in &report.files {
        if file.action != Action::Kept {
            let reason = file
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            ctx.changes
                .push(format!("{} {}{reason}", file.action, file.path.display()));
        }
    }
    ctx.pki = Some(report);
    Ok(())
}
