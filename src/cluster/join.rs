//! The join file: what makes a new node part of an existing cluster. `regimage cluster
//! export` writes it on a node (root only, 0600: it holds both CA keys and the HTTP
//! secret); a joining node's first boot waits for it at `cluster.join-file` and takes the
//! CAs and the HTTP secret from it instead of making its own, so one client bundle works
//! against every node and an upload may continue on another node.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::wait::{self, Clock};
use crate::config::Config;
use crate::fsutil;
use crate::pki::{self, CaPem, PkiPaths};
use crate::registry_env;
use crate::render::REGISTRY_ENV_PATH;

const VERSION: u32 = 1;
/// Root's alone: it carries both CA keys.
pub const JOIN_FILE_MODE: u32 = 0o600;
/// `cluster export`'s default file name, in the output directory next to the bundles.
pub const DEFAULT_FILE_NAME: &str = "cluster-join.json";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinFile {
    pub version: u32,
    /// `cluster.name` of the exporting node, if it had one.
    pub cluster_name: Option<String>,
    pub server_ca: CaPem,
    pub client_ca: CaPem,
    pub http_secret: String,
    pub exported_at: String,
}

// Keys and the secret stay out of logs.
impl std::fmt::Debug for JoinFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinFile")
            .field("version", &self.version)
            .field("cluster_name", &self.cluster_name)
            .field("exported_at", &self.exported_at)
            .finish_non_exhaustive()
    }
}

impl JoinFile {
    /// This node's identity under `root`, for another node to join.
    pub fn export(root: &Path, config: &Config, now: OffsetDateTime) -> Result<JoinFile> {
        if !config.is_s3() {
            bail!(
                "this node keeps its images on its own disk (registry.storage.driver: \
                 filesystem); the nodes of a cluster share one S3 bucket: set \
                 registry.storage.driver: s3 first"
            );
        }
        let (server_ca, client_ca) = pki::read_cas(&PkiPaths::new(root), now)?;
        let env_path = fsutil::under_root(root, Path::new(REGISTRY_ENV_PATH));
        let env = std::fs::read_to_string(&env_path).with_context(|| {
            format!("reading {REGISTRY_ENV_PATH} (made by first boot) for the HTTP secret")
        })?;
        let http_secret = registry_env::value(&env, registry_env::HTTP_SECRET)
            .with_context(|| format!("{REGISTRY_ENV_PATH} has no {}", registry_env::HTTP_SECRET))?
            .to_string();
        Ok(JoinFile {
            version: VERSION,
            cluster_name: config.cluster.name.clone(),
            server_ca,
            client_ca,
            http_secret,
            exported_at: pki::rfc3339(now),
        })
    }

    /// Writes the file 0600 (one rename: a reader never sees half of it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).context("encoding the join file")?;
        bytes.push(b'\n');
        fsutil::write_atomic(path, &bytes, JOIN_FILE_MODE)
    }

    /// Reads and checks the join file at `path` (`shown`: as on the machine) for a node
    /// with `config`.
    pub fn read(
        path: &Path,
        shown: &Path,
        config: &Config,
        now: OffsetDateTime,
    ) -> Result<JoinFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the join file {}", shown.display()))?;
        let join: JoinFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a regimage join file; expected the file `regimage cluster export` \
                 writes on a node of the cluster",
                shown.display()
            )
        })?;
        if join.version != VERSION {
            bail!(
                "{}: join file version {} is not {VERSION}; export it again with this regimage",
                shown.display(),
                join.version
            );
        }
        if let (Some(theirs), Some(ours)) = (&join.cluster_name, &config.cluster.name) {
            if !theirs.eq_ignore_ascii_case(ours) {
                bail!(
                    "{}: the join file is for cluster {theirs:?}, but this node's cluster.name \
                     is {ours:?}; use that cluster's join file or fix cluster.name",
                    shown.display()
                );
            }
        }
        if !registry_env::is_http_secret(&join.http_secret) {
            bail!(
                "{}: http_secret is not a regimage HTTP secret",
                shown.display()
            );
        }
        // The CAs are checked in full when they are adopted; a broken one fails here too.
        pki::adopt_check(&join.server_ca, &join.client_ca, now)
            .with_context(|| format!("{}", shown.display()))?;
        Ok(join)
    }
}

/// The join file this node is configured to join with (`cluster.join-file`), once it is
/// there (waiting up to `cluster.join-wait-seconds`); `None` when the node does not join.
pub fn wait_and_read(
    clock: &dyn Clock,
    root: &Path,
    config: &Config,
    now: OffsetDateTime,
) -> Result<Option<JoinFile>> {
    let Some(shown) = &config.cluster.join_file else {
        return Ok(None);
    };
    let path = fsutil::under_root(root, shown);
    wait::for_file(
        clock,
        &path,
        shown,
        "the cluster's join file",
        &format!(
            "on a node of the cluster run `sudo regimage cluster export`, then copy the file \
             here (scp, then `sudo install -m 0600 FILE {}`)",
            shown.display()
        ),
        Duration::from_secs(u64::from(config.cluster.join_wait_seconds)),
    )?;
    JoinFile::read(&path, shown, config, now).map(Some)
}
