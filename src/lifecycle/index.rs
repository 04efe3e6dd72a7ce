//! The client index, /var/lib/regimage/clients.json: every client the appliance knows, where
//! it came from (the site config or `regimage client add`), whether it is revoked, and the
//! serial of every certificate it was issued that has not ended yet.
//!
//! Certificates are state, like openssl's index.txt: the site config only says which clients
//! first boot makes. The index is what lets a revoke cover a certificate that a renewal
//! replaced but that has not ended, and what keeps a revoked name from coming back.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::fsutil;
use crate::pki::{rfc3339, Revoked};

/// Only root reads it: it is the appliance's record of who may push.
const INDEX_MODE: u32 = 0o600;

/// Where a client came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Listed in the site config; revoked by `renew` once the config drops it.
    Config,
    /// `regimage client add`; the config does not touch it.
    Added,
    /// Added on another node of the cluster (`regimage cluster sync`): its key lives there,
    /// so this node issues it no certificate and no bundle.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Active,
    Revoked,
}

/// One certificate issued to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Lowercase hex of the serial's bytes.
    pub serial: String,
    pub not_after: String,
    /// When it was issued (RFC 3339); older indexes lack it. A cluster sync weighs it
    /// against revocations made on other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// Set when the client was revoked (the CRL lists it until it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub name: String,
    pub origin: Origin,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Newest last.
    #[serde(default)]
    pub certificates: Vec<Issued>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub clients: Vec<Client>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            version: 1,
            clients: Vec::new(),
        }
    }
}

impl Index {
    /// The index at `path`; an empty one when the file does not exist yet.
    pub fn load(path: &Path) -> Result<Index> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a regimage client index; it is the appliance's record of issued and \
                 revoked client certificates: restore it from a backup rather than delete it",
                path.display()
            )
        })
    }

    /// Writes the index (one rename), when it differs from what is on disk.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).context("encoding the client index")?;
        bytes.push(b'\n');
        if std::fs::read(path).ok().as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fsutil::ensure_dir(dir, 0o700)?;
        }
        fsutil::write_atomic(path, &bytes, INDEX_MODE)
    }

    pub fn get(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.name == name)
    }

    /// Names of the clients that should hold a certificate, in index order.
    pub fn active(&self) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.state == State::Active)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Names of the active clients this node issues certificates and bundles to: not those
    /// added on another node of the cluster.
    pub fn issuable(&self) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.state == State::Active && c.origin != Origin::Cluster)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Names of the revoked clients.
    pub fn revoked_names(&self) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.state == State::Revoked)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Every revoked certificate that has not ended: what the CRL lists.
    pub fn revoked_serials(&self) -> Vec<Revoked> {
        let mut out = Vec::new();
        for cert in self.clients.iter().flat_map(|c| &c.certificates) {
            if let Some(at) = &cert.revoked_at {
                out.push(Revoked {
                    serial: cert.serial.clone(),
                    revoked_at: parse_time(at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                });
            }
        }
        out
    }

    /// Adds `name` as an active client from `origin` (a new entry, or a revoked one issued
    /// again on purpose: its old certificates stay revoked).
    pub fn activate(&mut self, name: &str, origin: Origin) {
        match self.get_mut(name) {
            Some(client) => {
                client.state = State::Active;
                client.revoked_at = None;
                client.origin = origin;
            }
            None => self.clients.push(Client {
                name: name.to_string(),
                origin,
                state: State::Active,
                revoked_at: None,
                certificates: Vec::new(),
            }),
        }
    }

    /// Marks `name` revoked at `now`, with every certificate it holds. Returns the serials.
    pub fn revoke(&mut self, name: &str, now: OffsetDateTime) -> Vec<String> {
        let at = rfc3339(now);
        let Some(client) = self.get_mut(name) else {
            return Vec::new();
        };
        client.state = State::Revoked;
        client.revoked_at = Some(at.clone());
        let mut serials = Vec::new();
        for cert in &mut client.certificates {
            if cert.revoked_at.is_none() {
                cert.revoked_at = Some(at.clone());
            }
            serials.push(cert.serial.clone());
        }
        serials
    }

    /// Records a certificate issued to `name` at `now` (nothing when it is already there). A
    /// client that is revoked gets it revoked too: it can only be a leftover of an
    /// interrupted run.
    pub fn record(&mut self, name: &str, serial: &str, not_after: &str, now: OffsetDateTime) {
        let Some(client) = self.get_mut(name) else {
            return;
        };
        if client.certificates.iter().any(|c| c.serial == serial) {
            return;
        }
        let revoked_at = (client.state == State::Revoked)
            .then(|| client.revoked_at.clone())
            .flatten();
        client.certificates.push(Issued {
            serial: serial.to_string(),
            not_after: not_after.to_string(),
            issued_at: Some(rfc3339(now)),
            revoked_at,
        });
    }

    /// Forgets certificates that ended more than a day ago: no one can use them, so the CRL
    /// need not list them.
    pub fn prune(&mut self, now: OffsetDateTime) {
        for client in &mut self.clients {
            client
                .certificates
                .retain(|c| match parse_time(&c.not_after) {
                    Ok(end) => end + Duration::days(1) > now,
                    Err(_) => true,
                });
        }
    }
}

/// An RFC 3339 time as the index and the certificate reports write it.
pub fn parse_time(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).with_context(|| format!("reading the time {text:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    #[test]
    fn revoke_covers_every_certificate_and_reissue_keeps_them_revoked() {
        let now = OffsetDateTime::now_utc();
        let mut index = Index::default();
        index.activate("ci", Origin::Config);
        index.record(
            "ci",
            "01",
            "2030-01-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        index.record(
            "ci",
            "02",
            "2030-02-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        index.record(
            "ci",
            "02",
            "2030-02-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        assert_eq!(index.revoke("ci", now), vec!["01", "02"]);
        assert_eq!(index.revoked_serials().len(), 2);
        assert!(index.active().is_empty());
        index.activate("ci", Origin::Added);
        index.record(
            "ci",
            "03",
            "2030-03-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        assert_eq!(index.active(), vec!["ci"]);
        let serials: Vec<String> = index
            .revoked_serials()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(serials, vec!["01", "02"]);
    }

    #[test]
    fn ended_certificates_are_forgotten() {
        let mut index = Index::default();
        index.activate("ci", Origin::Config);
        index.record(
            "ci",
            "01",
            "2020-01-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        index.record(
            "ci",
            "02",
            "2999-01-01T00:00:00Z",
            OffsetDateTime::now_utc(),
        );
        index.revoke("ci", OffsetDateTime::now_utc());
        index.prune(OffsetDateTime::now_utc());
        assert_eq!(index.revoked_serials().len(), 1);
    }

    #[test]
    fn a_damaged_index_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = Index::load(&path).unwrap_err();
        assert!(
            format!("{e:#}").contains("restore it from a backup"),
            "{e:#}"
        );
        assert_eq!(
            Index::load(&dir.path().join("none.json")).unwrap(),
            Index::default()
        );
    }
}
