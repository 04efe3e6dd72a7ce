//! `regimage status`: whether the registry is ready and what needs the operator, from the
//! files on the machine and the proxy's state. Changes nothing.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;
use time::Duration;

use super::index::State;
use super::renew::{last_record, RenewRecord};
use super::{Appliance, RELOAD_PENDING_PATH};
use crate::bundle;
use crate::identity::Sans;
use crate::pki::{self, rfc3339, CertFacts};

/// A certificate this close to its end while renew fails needs the operator.
const URGENT_DAYS: i64 = 7;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub ready: bool,
    /// What needs the operator now (exit status 1 when any).
    pub problems: Vec<String>,
    /// What will need the operator later.
    pub warnings: Vec<String>,
    pub first_boot_done: bool,
    pub primary_name: String,
    pub endpoints: Endpoints,
    /// SHA-256 of the server CA certificate: what clients compare with their bundle's ca.crt.
    pub server_ca_sha256: String,
    pub certificates: Vec<Certificate>,
    pub crl: Option<Crl>,
    pub clients: Vec<ClientEntry>,
    pub proxy: ProxyState,
    pub last_renew: Option<RenewRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub pull: String,
    pub push: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub role: String,
    pub name: String,
    pub serial: String,
    pub sha256: String,
    pub not_after: String,
    pub days_left: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Crl {
    pub this_update: String,
    pub next_update: Option<String>,
    pub revoked: usize,
}

/// One client, as `client list` and `status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientEntry {
    pub name: String,
    /// `active` or `revoked`.
    pub state: String,
    /// `config` or `added`.
    pub origin: String,
    /// Of its current certificate (active clients).
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyState {
    pub active: bool,
    pub main_pid: Option<u32>,
    /// A changed file is waiting for a reload.
    pub reload_pending: bool,
}

/// The server certificate's own names and addresses (what it serves now).
pub fn sans_of_server_cert(app: &Appliance<'_>) -> Result<Sans> {
    pki::served_sans(&app.pki_paths().server_cert)
}

/// Reads everything `status` shows.
pub fn gather(app: &Appliance<'_>) -> Result<Status> {
    let paths = app.pki_paths();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let first_boot_done = app.first_boot_done();
    if !first_boot_done {
        problems.push(
            "first boot has not finished (systemctl status regimage-firstboot.service)".into(),
        );
    }
    let last_renew = last_record(app);
    let renew_failing = last_renew.as_ref().is_some_and(|r| r.result != "ok");
    if let Some(record) = last_renew.as_ref().filter(|r| r.result != "ok") {
        warnings.push(format!(
            "the last renew ({}) failed: {}",
            record.finished_at,
            record.error.as_deref().unwrap_or("no reason recorded")
        ));
    }

    let mut certificates = Vec::new();
    let mut server_ca_sha256 = String::new();
    let index = app.load_index()?;
    let mut files = vec![
        ("server-ca", paths.ca_cert.clone()),
        ("client-ca", paths.client_ca_cert.clone()),
        ("server", paths.server_cert.clone()),
    ];
    for name in index.issuable() {
        files.push(("client", paths.client_cert(&name)));
    }
    let window = Duration::days(i64::from(app.config.pki.renew_before_days));
    for (role, path) in files {
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) => {
                problems.push(format!("{role} certificate {}: {e}", path.display()));
                continue;
            }
        };
        let facts =
            CertFacts::from_pem(&pem).with_context(|| format!("reading {}", path.display()))?;
        let end = facts.not_after;
        let left = end - app.now;
        let name = facts.cn.unwrap_or_default();
        let label = format!("{role} certificate {name}");
        if left <= Duration::ZERO {
            problems.push(format!("{label} ended on {}", rfc3339(end)));
        } else if role.ends_with("-ca") {
            if left < Duration::days(pki::CA_WARN_WITHIN_DAYS) {
                warnings.push(format!(
                    "{label} ends on {} ({} days left); regimage never replaces a CA by itself",
                    rfc3339(end),
                    left.whole_days()
                ));
            }
        } else if left < Duration::days(URGENT_DAYS) && renew_failing {
            problems.push(format!(
                "{label} ends on {} and renew is failing",
                rfc3339(end)
            ));
        } else if left < window {
            warnings.push(format!(
                "{label} ends on {}; the next renew issues it again",
                rfc3339(end)
            ));
        }
        if role == "server-ca" {
            server_ca_sha256 = facts.sha256.clone();
        }
        certificates.push(Certificate {
            role: role.to_string(),
            name,
            serial: facts.serial,
            sha256: facts.sha256,
            not_after: rfc3339(end),
            days_left: left.whole_days(),
        });
    }

    if let Err(e) = pki::check_server_pair(&paths) {
        problems.push(format!("the proxy cannot load its server pair: {e:#}"));
    }
    let crl = match pki::read_crl(&paths.client_crl, &paths.client_ca_cert) {
        Ok(info) => {
            match info.next_update {
                Some(next) if next <= app.now => problems.push(format!(
                    "the CRL {} ended on {}: the proxy refuses every client certificate until `regimage renew` signs it again",
                    paths.client_crl.display(),
                    rfc3339(next)
                )),
                None => problems.push("the CRL has no nextUpdate".into()),
                _ => {}
            }
            if !info.signed_by_ca {
                problems.push("the CRL is not signed by the client CA".into());
            }
            Some(Crl {
                this_update: rfc3339(info.this_update),
                next_update: info.next_update.map(rfc3339),
                revoked: info.serials.len(),
            })
        }
        Err(e) => {
            problems.push(format!("the CRL: {e:#}"));
            None
        }
    };

    let clients = client_entries(app, &index);
    let main_pid = app.proxy.main_pid().unwrap_or(None);
    let proxy = ProxyState {
        active: main_pid.is_some(),
        main_pid,
        reload_pending: app.path(RELOAD_PENDING_PATH).exists(),
    };
    if !proxy.active && !matches!(app.proxy, super::proxy::Proxy::None) {
        problems.push("the TLS proxy (registry-proxy.service) is not running".into());
    }
    if proxy.reload_pending {
        warnings.push(
            "a changed certificate waits for a proxy reload; `regimage renew` does it".into(),
        );
    }
    let primary_name = sans_of_server_cert(app)
        .map(|s| s.primary_name)
        .unwrap_or_default();
    let ports = &app.config.ports;
    Ok(Status {
        ready: problems.is_empty(),
        problems,
        warnings,
        first_boot_done,
        endpoints: Endpoints {
            pull: format!(
                "https://{}/",
                bundle::registry_host(&primary_name, ports.pull)
            ),
            push: format!(
                "https://{}/",
                bundle::registry_host(&primary_name, ports.push)
            ),
        },
        primary_name,
        server_ca_sha256,
        certificates,
        crl,
        clients,
        proxy,
        last_renew,
    })
}

/// Every client of the index with its current certificate.
pub fn client_entries(app: &Appliance<'_>, index: &super::index::Index) -> Vec<ClientEntry> {
    let paths = app.pki_paths();
    index
        .clients
        .iter()
        .map(|c| {
            let current = (c.state == State::Active)
                .then(|| std::fs::read_to_string(paths.client_cert(&c.name)).ok())
                .flatten()
                .and_then(|pem| pki::serial_and_end(&pem).ok());
            ClientEntry {
                name: c.name.clone(),
                state: match c.state {
                    State::Active => "active",
                    State::Revoked => "revoked",
                }
                .into(),
                origin: match c.origin {
                    super::index::Origin::Config => "config",
                    super::index::Origin::Added => "added",
                    super::index::Origin::Cluster => "cluster",
                }
                .into(),
                serial: current.as_ref().map(|(s, _)| s.clone()),
                not_after: current.map(|(_, e)| e),
                revoked_at: c.revoked_at.clone(),
            }
        })
        .collect()
}

/// `status` for people.
pub fn render_text(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "registry: {}",
        if status.ready { "ready" } else { "NOT READY" }
    );
    let _ = writeln!(out, "pull: {}", status.endpoints.pull);
    let _ = writeln!(out, "push: {}", status.endpoints.push);
    let _ = writeln!(out, "server CA SHA-256: {}", status.server_ca_sha256);
    let _ = writeln!(
        out,
        "proxy: {}{}",
        match status.proxy.main_pid {
            Some(pid) => format!("running (main PID {pid})"),
            None => "not running".into(),
        },
        if status.proxy.reload_pending {
            ", reload pending"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "certificates:");
    for c in &status.certificates {
        let _ = writeln!(
            out,
            "  {:<9} {:<24} ends {} ({} days) serial {}",
            c.role, c.name, c.not_after, c.days_left, c.serial
        );
    }
    match &status.crl {
        Some(crl) => {
            let _ = writeln!(
                out,
                "CRL: {} revoked, next update {}",
                crl.revoked,
                crl.next_update.as_deref().unwrap_or("none")
            );
        }
        None => {
            let _ = writeln!(out, "CRL: missing");
        }
    }
    out.push_str(&render_clients(&status.clients));
    match &status.last_renew {
        Some(r) => {
            let _ = writeln!(out, "last renew: {} {}", r.finished_at, r.result);
        }
        None => {
            let _ = writeln!(out, "last renew: never");
        }
    }
    for w in &status.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for p in &status.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

/// The client table of `client list` and `status`.
pub fn render_clients(clients: &[ClientEntry]) -> String {
    let mut out = String::from("clients:\n");
    if clients.is_empty() {
        out.push_str("  (none)\n");
    }
    for c in clients {
        let _ = match c.state.as_str() {
            "active" => writeln!(
                out,
                "  {:<20} active   ({}) serial {} ends {}",
                c.name,
                c.origin,
                c.serial.as_deref().unwrap_or("(no certificate)"),
                c.not_after.as_deref().unwrap_or("-")
            ),
            _ => writeln!(
                out,
                "  {:<20} revoked  ({}) since {}",
                c.name,
                c.origin,
                c.revoked_at.as_deref().unwrap_or("-")
            ),
        };
    }
    out
}
