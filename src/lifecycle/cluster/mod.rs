//! `regimage cluster sync`: the nodes of a cluster share the registry's storage, and through
//! the registry itself (on loopback) their client indexes. Each node pushes its index as the
//! config blob of a manifest under its own tag of [`registry::REPOSITORY`] (no two nodes
//! write the same tag), reads the others', merges them into its own ([`merge`]), and when
//! that changed anything converges as every day-2 command does ([`super::apply`]: the CRL
//! signed again, the proxy reloaded, a revoked client's files removed).

pub mod merge;
pub mod registry;

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};

use super::index::{Index, State};
use super::{apply, describe_reload, Appliance, CertifyOptions, RELOAD_PENDING_PATH};
use crate::config::Config;
use crate::fsutil;
use registry::{Manifest, Registry};

/// This node's id (16 hex digits), made once.
pub const NODE_ID_PATH: &str = "/var/lib/regimage/cluster/node-id";
const TAG_PREFIX: &str = "node-";

/// Whether the registry's storage can be shared with other nodes (S3): only then is
/// there a cluster to sync with.
pub fn enabled(config: &Config) -> bool {
    config.is_s3()
}

/// This node's tag, `node-<id>`; the id is made on first use and kept.
pub fn node_tag(app: &Appliance<'_>) -> Result<String> {
    let path = app.path(NODE_ID_PATH);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(format!("{TAG_PREFIX}{id}"));
        }
        tracing::warn!(
            "{} is not 16 hex digits: making a new node id",
            path.display()
        );
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("getting random bytes: {e}"))?;
    let id = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, 0o700)?;
    }
    fsutil::write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)?;
    Ok(format!("{TAG_PREFIX}{id}"))
}

/// The bytes a node publishes for `index`: what clients.json holds.
fn state_bytes(index: &Index) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(index).context("encoding the client index")?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Publishes `index` under `tag` unless the registry holds it already. Returns whether it
/// pushed.
fn publish_index(registry: &Registry, tag: &str, index: &Index) -> Result<bool> {
    let bytes = state_bytes(index)?;
    let manifest = Manifest::for_state(&bytes);
    if registry.manifest(tag)?.as_ref() == Some(&manifest) {
        return Ok(false);
    }
    registry.push_blob(&bytes)?;
    registry.push_manifest(tag, &manifest)?;
    Ok(true)
}

/// The states of the other nodes (tag, index); one that cannot be read is skipped with a
/// warning (its node publishes again at its next run).
fn other_states(registry: &Registry, own: &str) -> Result<Vec<(String, Index)>> {
    let mut out = Vec::new();
    let mut tags = registry
        .tags()
        .context("listing the nodes of the cluster (is the registry up? `regimage status` says)")?;
    tags.sort();
    for tag in tags
        .into_iter()
        .filter(|t| t.starts_with(TAG_PREFIX) && t != own)
    {
        let read = || -> Result<Option<Index>> {
            let Some(manifest) = registry.manifest(&tag)? else {
                return Ok(None);
            };
            let bytes = registry.blob(&manifest.config.digest)?;
            Ok(Some(
                serde_json::from_slice(&bytes).context("reading its client index")?,
            ))
        };
        match read() {
            Ok(Some(index)) => out.push((tag, index)),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping the state of {tag}: {e:#}"),
        }
    }
    Ok(out)
}

/// Publishes this node's index after `client add` / `client revoke` changed it (call with
/// the lifecycle lock held). A failure is a warning: the timer publishes at its next run.
pub fn publish_after_change(app: &Appliance<'_>) -> Option<String> {
    if !enabled(app.config) {
        return None;
    }
    let result = (|| -> Result<bool> {
        let registry = Registry::loopback(app.config.ports.registry);
        publish_index(&registry, &node_tag(app)?, &app.load_index()?)
    })();
    Some(match result {
        Ok(true) => "cluster: published to the other nodes".into(),
        Ok(false) => "cluster: the other nodes have it already".into(),
        Err(e) => {
            tracing::warn!("publishing to the cluster: {e:#}");
            format!(
                "warning: not published to the other nodes yet ({e:#}); \
                 regimage-cluster-sync.timer tries again within a minute"
            )
        }
    })
}

/// One `cluster sync` run; `shared` stands for shared storage (tests with a filesystem
/// registry). Returns the report.
pub fn sync(app: &Appliance<'_>, shared: bool) -> Result<String> {
    if !shared && !enabled(app.config) {
        return Ok(
            "no cluster: the registry's storage is this machine's own (registry.storage.driver \
             filesystem); nothing to sync\n"
                .into(),
        );
    }
    let started = Instant::now();
    let _lock = app.lock()?;
    app.require_certificates()?;
    let registry = Registry::loopback(app.config.ports.registry);
    let tag = node_tag(app)?;
    let others = other_states(&registry, &tag)?;
    let local = app.load_index()?;
    let remote: Vec<Index> = others.iter().map(|(_, i)| i.clone()).collect();
    let mut merged = merge::merge(&local, &remote);
    merged.prune(app.now);

    let mut out = String::new();
    let changes = describe_changes(&local, &merged);
    for line in &changes {
        let _ = writeln!(out, "{line}");
    }
    let owed = app.path(RELOAD_PENDING_PATH).exists();
    let index = if merged != local || owed {
        app.save_index(&merged)?;
        let applied = apply(app, &super::clients::sans(app)?, CertifyOptions::default())?;
        let crl = &applied.certified.pki.crl;
        if crl.action != crate::pki::Action::Kept {
            let _ = writeln!(
                out,
                "CRL: signed again, lists {} certificate(s), next update {}",
                crl.revoked,
                crate::pki::rfc3339(crl.next_update)
            );
        }
        for path in &applied.removed {
            let _ = writeln!(out, "removed {}", path.display());
        }
        if applied.reloaded.is_some() {
            let _ = writeln!(out, "{}", describe_reload(&applied.reloaded));
        }
        applied.certified.index
    } else {
        local
    };
    let published = publish_index(&registry, &tag, &index)
        .with_context(|| format!("publishing this node's state ({tag})"))?;
    let _ = writeln!(
        out,
        "cluster sync: {} change(s), {} other node(s) seen, {} as {tag}, {:.2} s",
        changes.len(),
        others.len(),
        if published {
            "published"
        } else {
            "already published"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// One line per client the merge changed.
fn describe_changes(before: &Index, after: &Index) -> Vec<String> {
    let mut lines = Vec::new();
    for client in &after.clients {
        let state = match client.state {
            State::Active => "active".to_string(),
            State::Revoked => format!(
                "revoked ({})",
                client.revoked_at.as_deref().unwrap_or("date unknown")
            ),
        };
        let Some(old) = before.get(&client.name) else {
            lines.push(format!(
                "client {}: added on another node, {state}",
                client.name
            ));
            continue;
        };
        if old.state != client.state {
            lines.push(match client.state {
                State::Revoked => format!("client {}: {state} on another node", client.name),
                State::Active => format!(
                    "client {}: issued again on another node, active",
                    client.name
                ),
            });
        }
        let serials = |c: &super::index::Client| {
            c.certificates
                .iter()
                .map(|x| (x.serial.clone(), x.revoked_at.is_some()))
                .collect::<std::collections::BTreeSet<_>>()
        };
        if serials(old) != serials(client) && old.state == client.state {
            lines.push(format!(
                "client {}: certificates of other nodes recorded",
                client.name
            ));
        }
    }
    lines
}
