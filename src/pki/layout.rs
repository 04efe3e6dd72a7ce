//! Where the certificates live: the paths of the layout, their modes and groups, and the
//! small file operations that write or keep a file with the right mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::{self, Ownership};

/// Where every certificate lives on the machine.
pub const CERTS_DIR: &str = "/etc/registry/certs";

pub(super) const DIR_MODE: u32 = 0o755;
/// `root:<proxy group>`, so nginx reaches registry.key (the guide's root:root 0750 does not).
pub(super) const PRIVATE_DIR_MODE: u32 = 0o750;
pub(super) const CERT_MODE: u32 = 0o644;
pub(super) const KEY_MODE: u32 = 0o600;
/// registry.key and clients/ca.crt: read by the proxy through its group.
pub(super) const PROXY_READABLE_MODE: u32 = 0o640;

/// Every path of the certificate layout under a root directory (`/` on the machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// /etc/registry/certs (0755).
    pub dir: PathBuf,
    /// ca/ (0755): the server CA certificate.
    pub ca_dir: PathBuf,
    /// private/ (0750 `root:<proxy group>`): every private key.
    pub private_dir: PathBuf,
    /// clients/ (0755): the client CA certificate and the client certificates.
    pub clients_dir: PathBuf,
    /// ca/ca.crt (0644).
    pub ca_cert: PathBuf,
    /// private/ca.key (0600).
    pub ca_key: PathBuf,
    /// registry.crt (0644), the server certificate (leaf only).
    pub server_cert: PathBuf,
    /// private/registry.pem (0640 `root:<proxy group>`): the server key followed by its
    /// certificate. nginx loads both from this one file, replaced by one rename, so it can
    /// never load a key with another key's certificate.
    pub server_pem: PathBuf,
    /// clients/ca.crt (0640 `root:<proxy group>`).
    pub client_ca_cert: PathBuf,
    /// private/client-ca.key (0600).
    pub client_ca_key: PathBuf,
    /// clients/crl.pem (0644): the client CA's revocation list, which the push port checks.
    pub client_crl: PathBuf,
}

impl PkiPaths {
    /// The layout under `root`.
    pub fn new(root: &Path) -> PkiPaths {
        let dir = fsutil::under_root(root, Path::new(CERTS_DIR));
        let ca_dir = dir.join("ca");
        let private_dir = dir.join("private");
        let clients_dir = dir.join("clients");
        PkiPaths {
            ca_cert: ca_dir.join("ca.crt"),
            ca_key: private_dir.join("ca.key"),
            server_cert: dir.join("registry.crt"),
            server_pem: private_dir.join("registry.pem"),
            client_ca_cert: clients_dir.join("ca.crt"),
            client_ca_key: private_dir.join("client-ca.key"),
            client_crl: clients_dir.join("crl.pem"),
            dir,
            ca_dir,
            private_dir,
            clients_dir,
        }
    }

    /// clients/NAME.crt (0644).
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.clients_dir.join(format!("{name}.crt"))
    }

    /// private/client-NAME.key (0600).
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.private_dir.join(format!("client-{name}.key"))
    }
}

/// The file's text, or `None` when it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(super) fn write(path: &Path, contents: &[u8], mode: u32, group: Option<u32>) -> Result<()> {
    let owner = group.map(|gid| Ownership {
        uid: nix::unistd::geteuid().as_raw(),
        gid,
    });
    fsutil::write_atomic_owned(path, contents, mode, owner)
}

/// Puts a kept file back to its mode (and group).
pub(super) fn set_mode(path: &Path, mode: u32, group: Option<u32>) -> Result<()> {
    if let Some(gid) = group {
        set_group(path, gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

pub(super) fn set_group(path: &Path, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))
        .with_context(|| format!("changing the group of {} to {gid}", path.display()))
}
