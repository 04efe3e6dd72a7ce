//! The appliance's file set: templates rendered from the config into files with their
//! target path, mode and owner, and writing that set under a root with a manifest.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::Config;

/// One file as it will stand on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path on the machine, e.g. `/etc/registry/nginx.conf`.
    pub path: PathBuf,
    /// Permission bits, e.g. 0o644.
    pub mode: u32,
    /// Owner and group names (resolved on the machine, not at build time).
    pub owner: String,
    pub group: String,
    pub contents: Vec<u8>,
}

/// Path of the manifest, itself not listed in it.
pub const MANIFEST_PATH: &str = "/usr/share/regimage/manifest.json";

/// Renders every file the appliance needs from `config`. Pure: no I/O.
pub fn appliance_files(config: &Config) -> Result<Vec<FileEntry>> {
    let _ = config;
    anyhow::bail!("render: not implemented yet")
}

/// Writes `files` under `root` (which stands for `/`) and the manifest at MANIFEST_PATH.
pub fn write_tree(root: &Path, files: &[FileEntry]) -> Result<()> {
    let _ = (root, files);
    anyhow::bail!("render: not implemented yet")
}
