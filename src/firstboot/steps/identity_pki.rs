//! Steps 1 and 3: the names the registry answers to, and the certificates for them.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{Ctx, SysClock};
use crate::cluster;
use crate::identity::{self, HostFacts};
use crate::lifecycle;
use crate::pki::{self, Action, PkiPaths};
use crate::render::INSTALLED_CONFIG_PATH;

/// How often the wait for an address and a name looks again (each look may ask the
/// resolver for the FQDN).
const NETWORK_POLL: Duration = Duration::from_secs(1);

/// Step 1: the names and addresses clients use, merged into the server certificate's SANs.
/// Waits (up to --network-timeout) for an address and a name clients can use, and stops
/// before anything is issued when they do not come.
pub fn host_identity(ctx: &mut Ctx<'_>) -> Result<()> {
    let facts = wait_for_network(ctx)?;
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

/// The host's facts once it has an address and a name clients can use (see
/// [`identity::missing_for_clients`]); an error saying what is missing and what to do when
/// they do not come within --network-timeout. A dry run only says what it would wait for.
fn wait_for_network(ctx: &mut Ctx<'_>) -> Result<HostFacts> {
    let timeout = ctx.opts.network_timeout;
    let start = ctx.sys.elapsed();
    let mut waited = false;
    loop {
        let facts = ctx.sys.host_facts();
        let Some(missing) = identity::missing_for_clients(ctx.config, &facts) else {
            if waited {
                let secs = ctx.sys.elapsed().saturating_sub(start).as_secs();
                ctx.note(format!("an address and a name came after {secs} s"));
            }
            return Ok(facts);
        };
        if ctx.opts.dry_run {
            ctx.note(format!(
                "{missing} yet: a run waits up to {} s for them, then stops",
                timeout.as_secs()
            ));
            return Ok(facts);
        }
        if ctx.sys.elapsed().saturating_sub(start) >= timeout {
            let mut todo = Vec::new();
            if missing.address {
                todo.push(
                    "connect it to a network that gives it an address (DHCP or a static one)"
                        .to_string(),
                );
            }
            if missing.name.is_some() {
                todo.push(format!(
                    "set hostname in {INSTALLED_CONFIG_PATH} or give the machine a host name"
                ));
            }
            bail!(
                "no certificate issued: after {} s this machine has {missing}, so clients \
                 could not reach it by a name in its certificate; {}; first boot tries again \
                 at the next boot (or run `systemctl restart regimage-firstboot.service`)",
                timeout.as_secs(),
                todo.join(" and ")
            );
        }
        if !waited {
            tracing::info!("waiting up to {} s: {missing}", timeout.as_secs());
            waited = true;
        }
        ctx.sys.sleep(NETWORK_POLL);
    }
}

/// Step 3: the certificates. Existing valid ones are kept; a CA is never made again (a CA
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
            paths.server_pem.clone(),
            paths.client_crl.clone(),
        ];
        if let Some(join) = &ctx.config.cluster.join_file {
            ctx.note(format!(
                "a run waits for the join file {} and takes the CAs from it",
                join.display()
            ));
        }
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
    adopt_cluster_cas(ctx)?;
    let sans = ctx.sans()?.clone();
    // Groups are set by the users step (through System), so the owner seam stays in one place.
    // The proxy is not up yet: nothing to reload.
    let app = lifecycle::Appliance {
        root: ctx.root.to_path_buf(),
        config: ctx.config,
        now: time::OffsetDateTime::now_utc(),
        proxy: lifecycle::proxy::Proxy::None,
        proxy_gid: None,
        sans: Some(sans.clone()),
    };
    let certified = lifecycle::certify(&app, &sans, lifecycle::CertifyOptions::default())?;
    for name in &certified.skipped_revoked {
        ctx.note(format!(
            "client {name} is revoked: not issued again (regimage client add {name} --reissue-revoked does it on purpose)"
        ));
    }
    let report = certified.pki.report;
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

/// A joining node (`cluster.join-file`): waits for the join file and puts the cluster's CAs
/// in place, so certify keeps them and issues this node's leaves from them.
fn adopt_cluster_cas(ctx: &mut Ctx<'_>) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let Some(join) = cluster::join::wait_and_read(&SysClock(ctx.sys), ctx.root, ctx.config, now)?
    else {
        return Ok(());
    };
    let adopted = pki::adopt_cas(
        &PkiPaths::new(ctx.root),
        &join.server_ca,
        &join.client_ca,
        now,
    )?;
    for (path, action) in adopted {
        let shown = Path::new("/").join(path.strip_prefix(ctx.root).unwrap_or(&path));
        if action == Action::Made {
            ctx.changes.push(format!(
                "made {} from the cluster's join file",
                shown.display()
            ));
        } else {
            ctx.note(format!("{} is the cluster's CA", shown.display()));
        }
    }
    Ok(())
}
