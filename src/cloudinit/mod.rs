//! The #cloud-config document built from the appliance's file set.
//!
//! Pure: the config, the files from [`crate::render::appliance_files`], how the regimage
//! binary gets there and the target distribution go in, the user-data text comes out.
//! Nothing secret or host-unique goes in it: keys and certificates are made on the machine
//! by regimage-firstboot.service.
//!
//! What cloud-init does with it, in stage order (cloud.cfg of Ubuntu 24.04 and Debian 13):
//! init: `bootcmd`, then `users` (after `write_files`, which is why every file here is
//! deferred); config: `runcmd` is written to a script; final: `packages` installed, then
//! deferred `write_files`, then the runcmd script runs.
//!
//! Two [`Mode`]s share this one builder. [`Mode::FirstBoot`] is cloud user-data: the machine
//! installs everything and starts regimage-firstboot.service itself (`runcmd.rs`).
//! [`Mode::Bake`] is the seed of `regimage build qcow2`'s throwaway VM: the same
//! packages, users and files, plus the binary and the registry image archive read from a
//! second drive (cloud-init parses a seed with the binary embedded for minutes under TCG);
//! first boot is enabled but not started, and once cloud-init has finished a transient unit
//! resets the image for its real first boot and powers the VM off (`bake.rs`).
//!
//! Where each job lives: this file holds the document's tree; `files.rs` the `write_files`
//! items; `runcmd.rs` the user-data's runcmd; `bake.rs` the bake's bootcmd and runcmd;
//! `lean_install.rs` the exact package install both share (no Recommends, no initramfs
//! rebuild); `checks.rs` the checks of a binary URL and a sha256. The shell that runs on the guest is
//! in `guest/*.sh`, embedded as it is and given its parameters as arguments or environment.

mod bake;
mod checks;
mod files;
mod lean_install;
mod runcmd;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::distro::Distro;
use crate::render::FileEntry;
use crate::yaml_out::{self, Value};

pub use bake::{BAKE_DONE_STEP, BAKE_FAILED_STEP, BAKE_PRESET_PATH, BAKE_PROGRESS_PREFIX};
pub use checks::{check_binary_url, check_sha256};

/// Where the regimage binary is installed on the machine.
pub const BINARY_PATH: &str = "/usr/local/bin/regimage";
/// The oneshot unit that makes the machine a registry.
pub const FIRSTBOOT_UNIT: &str = "regimage-firstboot.service";
/// Root-only state directory (contract layout); the `--binary-url` download lands here
/// before it is checked, never in /tmp.
pub const STATE_DIR: &str = "/var/lib/regimage";
/// Where a downloaded binary waits for its checksum.
pub const DOWNLOAD_PATH: &str = "/var/lib/regimage/regimage.download";
/// Home of the system users: Debian policy's canonical non-existent home. Nothing may write
/// to $HOME (the guide's "No $HOME I/O"); Podman state lives in /var/lib/registry-podman,
/// so every podman call must set XDG_CONFIG_HOME/XDG_DATA_HOME (podman#26667: a missing
/// home breaks rootless podman only when those are unset).
pub const SYSTEM_USER_HOME: &str = "/nonexistent";
/// Where the bake leaves the pinned registry image (an oci-archive) for first boot's
/// `podman load`: root-only, like the rest of the state directory.
pub const REGISTRY_ARCHIVE_PATH: &str = "/var/lib/regimage/registry-image.oci.tar";
/// Serial number of the bake VM's read-only drive that carries the registry image archive
/// and the binary; udev names it `/dev/disk/by-id/virtio-<serial>` (virtio-blk serials hold
/// at most 20 bytes).
pub const PAYLOAD_DRIVE_SERIAL: &str = "regimage-payload";

/// What the document is for, with what that kind of document needs (see the module docs).
/// Each mode takes only the binary deliveries it can carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Cloud user-data: everything is installed at the machine's first boot, which then
    /// starts regimage-firstboot.service.
    FirstBoot(&'a BinaryPayload),
    /// The seed of a bake VM: the registry image archive and the regimage binary are these
    /// extents of the payload drive.
    Bake {
        archive: &'a DriveExtent,
        binary: &'a DriveExtent,
    },
}

/// A file laid on the bake VM's payload drive: `size` bytes from byte `offset` (a whole
/// number of sectors), whose sha256 is `sha256` (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveExtent {
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// How a machine booted with cloud user-data gets the regimage binary (a bake VM gets it
/// on its payload drive: [`Mode::Bake`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryPayload {
    /// The binary's bytes, written by cloud-init as gz+b64.
    Embedded(Vec<u8>),
    /// Downloaded at first boot with curl and checked with `sha256sum -c`; a mismatch stops
    /// the runcmd script, so the binary is not installed and first boot never starts.
    Url { url: String, sha256: String },
}

/// The user-data text and what went into it, for the build summary.
#[derive(Debug, Clone)]
pub struct UserData {
    pub text: String,
    /// Size of the embedded binary (0 when it is not embedded).
    pub binary_raw_bytes: usize,
    /// Size of its gz+b64 text in the document (0 when it is not embedded).
    pub binary_encoded_bytes: usize,
    /// The tree the text was emitted from.
    pub tree: Value,
}

/// The `#cloud-config` document (see the module docs).
pub fn render_user_data(
    config: &Config,
    files: &[FileEntry],
    binary: &BinaryPayload,
    distro: Distro,
) -> Result<String> {
    build_user_data(config, files, binary, distro).map(|u| u.text)
}

/// Like [`render_user_data`], with the tree and the binary's sizes.
pub fn build_user_data(
    config: &Config,
    files: &[FileEntry],
    binary: &BinaryPayload,
    distro: Distro,
) -> Result<UserData> {
    build_user_data_for(config, files, distro, Mode::FirstBoot(binary))
}

/// The document for `mode`: cloud user-data, or a bake VM's seed.
pub fn build_user_data_for(
    config: &Config,
    files: &[FileEntry],
    distro: Distro,
    mode: Mode<'_>,
) -> Result<UserData> {
    let (tree, binary_raw_bytes, binary_encoded_bytes) = tree_for(config, files, distro, mode)?;
    let info = distro.info();
    let mut text = String::from("#cloud-config\n");
    match mode {
        Mode::FirstBoot(_) => text.push_str(&format!(
            "# regimage {}: private container registry appliance for {} ({}).\n\
             # Nothing secret is in this file: keys and certificates are made on the machine\n\
             # by {FIRSTBOOT_UNIT}, which leaves client bundles in {}.\n",
            env!("CARGO_PKG_VERSION"),
            info.pretty_name,
            info.id,
            config.output_dir.display(),
        )),
        Mode::Bake { .. } => text.push_str(&format!(
            "# regimage {}: bake seed for {} ({}), applied in a throwaway VM by\n\
             # `regimage build qcow2`; not cloud user-data. Nothing secret is in it.\n",
            env!("CARGO_PKG_VERSION"),
            info.pretty_name,
            info.id,
        )),
    }
    text.push_str(&yaml_out::to_yaml(&tree));
    Ok(UserData {
        text,
        binary_raw_bytes,
        binary_encoded_bytes,
        tree,
    })
}

/// The document as a value tree, plus the embedded binary's raw and encoded sizes: the one
/// builder behind both documents.
fn tree_for(
    config: &Config,
    files: &[FileEntry],
    distro: Distro,
    mode: Mode<'_>,
) -> Result<(Value, usize, usize)> {
    let info = distro.info();
    let mut seen = HashSet::new();
    let mut write_files = Vec::with_capacity(files.len() + 1);
    for entry in files {
        files::check_entry(entry)?;
        if !seen.insert(entry.path.clone()) {
            bail!("{} is in the file set twice", entry.path.display());
        }
        if entry.path == Path::new(BINARY_PATH) {
            bail!("{BINARY_PATH} is in the file set; the binary is added by the build");
        }
        write_files.push(files::write_file_item(entry)?);
    }

    let (mut raw, mut encoded) = (0, 0);
    match mode {
        Mode::FirstBoot(BinaryPayload::Embedded(bytes)) => {
            let (item, content_len) =
                files::embedded_binary_item(bytes).context("compressing the regimage binary")?;
            raw = bytes.len();
            encoded = content_len;
            write_files.push(item);
        }
        Mode::FirstBoot(BinaryPayload::Url { url, sha256 }) => {
            check_binary_url(url).map_err(anyhow::Error::msg)?;
            check_sha256(sha256).map_err(anyhow::Error::msg)?;
        }
        Mode::Bake { archive, binary } => {
            check_sha256(&archive.sha256).map_err(anyhow::Error::msg)?;
            check_sha256(&binary.sha256).map_err(anyhow::Error::msg)?;
        }
    }

    let mut users = Vec::with_capacity(3);
    if let Mode::FirstBoot(_) = mode {
        // Without `default` the cloud's own login user (ubuntu, debian) is not created. A
        // baked image leaves that to its real first boot, whose user-data brings the keys.
        users.push(Value::str("default"));
    }
    users.push(system_user(
        &config.service_user,
        "regimage registry (rootless Podman)",
        info.nologin_shell,
    ));
    users.push(system_user(
        &config.proxy_user,
        "regimage TLS proxy (nginx)",
        info.nologin_shell,
    ));

    let mut tree = vec![
        ("package_update", Value::Bool(true)),
        ("packages", Value::strs(info.packages.iter().copied())),
        ("users", Value::Seq(users)),
        ("write_files", Value::Seq(write_files)),
    ];
    match mode {
        Mode::FirstBoot(binary) => {
            tree.push(("bootcmd", Value::Seq(vec![lean_install::bootcmd()])));
            tree.push(("runcmd", Value::Seq(runcmd::runcmd(binary, distro))));
        }
        Mode::Bake { archive, binary } => {
            tree.push(("bootcmd", Value::Seq(bake::bootcmd())));
            tree.push(("runcmd", Value::Seq(bake::runcmd(distro, archive, binary))));
        }
    }
    Ok((Value::map(tree), raw, encoded))
}

/// A guest script as the user-data carries it: without its comment lines (they stay in
/// `guest/*.sh`), since the user-data must fit EC2's 16 KiB with `--binary-url`. No guest
/// script has a line starting with `#` inside a quoted string.
pub(super) fn without_comments(script: &str) -> String {
    script
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn system_user(name: &str, gecos: &str, shell: &str) -> Value {
    Value::map([
        ("name", Value::str(name)),
        ("gecos", Value::str(gecos)),
        // useradd --system: a UID below 1000 and its own group; cloud-init adds -M.
        ("system", Value::Bool(true)),
        ("shell", Value::str(shell)),
        ("homedir", Value::str(SYSTEM_USER_HOME)),
        ("no_create_home", Value::Bool(true)),
        ("lock_passwd", Value::Bool(true)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::io::Read as _;
    use std::path::PathBuf;

    pub(super) fn entry(
        path: &str,
        mode: u32,
        owner: &str,
        group: &str,
        contents: &[u8],
    ) -> FileEntry {
        FileEntry {
            path: PathBuf::from(path),
            mode,
            owner: owner.into(),
            group: group.into(),
            contents: contents.to_vec(),
        }
    }

    pub(super) fn sample_files() -> Vec<FileEntry> {
        vec![
            entry(
                "/etc/systemd/system/registry-proxy.service",
                0o644,
                "root",
                "root",
                b"[Unit]\nDescription=proxy\n",
            ),
            entry(
                "/var/lib/registry-podman/marker",
                0o600,
                "registry",
                "registry",
                b"on\n",
            ),
            entry(
                "/etc/registry/blob",
                0o640,
                "root",
                "registry-proxy",
                &[0, 1, 2, 255],
            ),
        ]
    }

    pub(super) fn unpack(b64: &str) -> Vec<u8> {
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    pub(super) fn items<'a>(tree: &'a Value, key: &str) -> &'a [Value] {
        match tree.get(key) {
            Some(Value::Seq(v)) => v,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// The runcmd/bootcmd items as cloud-init writes them to a script (strings verbatim,
    /// lists shell-quoted).
    pub(super) fn shellify(items: &[Value]) -> String {
        let mut script = String::from("#!/bin/sh\n");
        for item in items {
            match item {
                Value::Str(s) => script.push_str(s),
                Value::Seq(args) => {
                    let quoted: Vec<String> = args
                        .iter()
                        .map(|a| match a {
                            Value::Str(s) => format!("'{}'", s.replace('\'', "'\\''")),
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    script.push_str(&quoted.join(" "));
                }
                other => panic!("{other:?}"),
            }
            script.push('\n');
        }
        script
    }

    pub(super) fn sh_syntax_ok(script: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, script).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sh -n: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every string of the document as read back from its text, the way cloud-init reads it.
    pub(super) fn strings_read_back(text: &str) -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                serde_json::Value::Object(m) => m.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let body = text.split_once('\n').unwrap().1;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(body).unwrap();
        let mut out = Vec::new();
        walk(&parsed, &mut out);
        out
    }

    #[test]
    fn document_shape() {
        let config = Config::default();
        let bin = BinaryPayload::Embedded(b"\x7fELF fake".to_vec());
        let ud = build_user_data(&config, &sample_files(), &bin, Distro::Ubuntu2404).unwrap();
        assert!(ud.text.starts_with("#cloud-config\n"));
        let tree = &ud.tree;
        assert_eq!(tree.get("package_update"), Some(&Value::Bool(true)));
        let users = items(tree, "users");
        assert_eq!(users[0], Value::str("default"));
        assert_eq!(users[1].get("name"), Some(&Value::str("registry")));
        assert_eq!(users[2].get("name"), Some(&Value::str("registry-proxy")));
        assert_eq!(
            users[1].get("shell"),
            Some(&Value::str("/usr/sbin/nologin"))
        );

        let files = items(tree, "write_files");
        assert_eq!(files.len(), 4);
        for f in files {
            assert_eq!(f.get("defer"), Some(&Value::Bool(true)));
        }
        // cloud-init's defaults (root:root 0644) are left out, anything else is written.
        assert_eq!(files[0].get("owner"), None);
        assert_eq!(files[0].get("permissions"), None);
        assert_eq!(
            files[2].get("owner"),
            Some(&Value::str("root:registry-proxy"))
        );
        assert_eq!(files[2].get("permissions"), Some(&Value::str("0640")));
        assert_eq!(
            files[1].get("owner"),
            Some(&Value::str("registry:registry"))
        );
        assert_eq!(files[1].get("permissions"), Some(&Value::str("0600")));
        assert_eq!(files[1].get("content"), Some(&Value::str("on\n")));
        // Binary content is gz+b64 and decodes to the same bytes.
        assert_eq!(files[2].get("encoding"), Some(&Value::str("gz+b64")));
        let bin_item = &files[3];
        assert_eq!(bin_item.get("path"), Some(&Value::str(BINARY_PATH)));
        assert_eq!(bin_item.get("permissions"), Some(&Value::str("0755")));
        let Some(Value::Str(b64)) = bin_item.get("content") else {
            panic!("no content")
        };
        assert_eq!(unpack(b64), b"\x7fELF fake");
        assert_eq!(ud.binary_raw_bytes, 9);
        assert_eq!(ud.binary_encoded_bytes, b64.len());

        let runcmd = items(tree, "runcmd");
        assert_eq!(runcmd[0], Value::str("set -eu"));
        // First boot is queued before anything that can fail (runcmd.rs).
        assert_eq!(
            runcmd[3],
            Value::strs(["systemctl", "start", "--no-block", FIRSTBOOT_UNIT])
        );
        // Nothing is downloaded when the binary is embedded.
        assert!(!format!("{runcmd:?}").contains("curl"));
        // bootcmd only prepares the lean install; runcmd undoes it once first boot is queued.
        assert_eq!(items(tree, "bootcmd"), [lean_install::bootcmd()]);
        assert_eq!(runcmd[4], lean_install::runcmd());
        // The text parses back to the same tree.
        let body = ud.text.split_once('\n').unwrap().1;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(body).unwrap();
        assert_eq!(parsed, ud.tree.to_json());
    }

    #[test]
    fn url_payload_downloads_and_checks() {
        let sha = "ab".repeat(32);
        let bin = BinaryPayload::Url {
            url: "https://example.com/regimage".into(),
            sha256: sha.clone(),
        };
        let ud =
            build_user_data(&Config::default(), &sample_files(), &bin, Distro::Debian13).unwrap();
        // The install script reaches the document as it is but for its comments, its
        // parameters beside it.
        let strings = strings_read_back(&ud.text);
        let at = strings
            .iter()
            .position(|s| *s == without_comments(runcmd::INSTALL_BINARY_SH))
            .expect("install-binary.sh is not in the user-data as it is");
        assert_eq!(
            strings[at + 1..at + 6],
            [
                "regimage-install-binary",
                "https://example.com/regimage",
                &sha,
                DOWNLOAD_PATH,
                BINARY_PATH
            ]
        );
        sh_syntax_ok(&shellify(items(&ud.tree, "runcmd")));
        assert!(!ud.text.contains("/tmp"));
        // Debian's row brings passt.
        assert!(items(&ud.tree, "packages").contains(&Value::str("passt")));
        // No binary embedded.
        assert_eq!((ud.binary_raw_bytes, ud.binary_encoded_bytes), (0, 0));
        assert!(items(&ud.tree, "write_files")
            .iter()
            .all(|f| f.get("path") != Some(&Value::str(BINARY_PATH))));
        // A URL or digest the guest's shell could misread is refused.
        for bad in [
            BinaryPayload::Url {
                url: "https://x/'r".into(),
                sha256: sha.clone(),
            },
            BinaryPayload::Url {
                url: "https://example.com/regimage".into(),
                sha256: "xyz".into(),
            },
        ] {
            assert!(build_user_data(&Config::default(), &[], &bad, Distro::Debian13).is_err());
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        let bin = BinaryPayload::Embedded(vec![1]);
        for bad in [
            entry("/tmp/x", 0o644, "root", "root", b""),
            entry("/var/tmp/x", 0o644, "root", "root", b""),
            entry("etc/x", 0o644, "root", "root", b""),
            entry("/etc/../x", 0o644, "root", "root", b""),
            entry("/etc/x", 0o644, "ro:ot", "root", b""),
            entry("/etc/x", 0o10644, "root", "root", b""),
            entry(BINARY_PATH, 0o755, "root", "root", b""),
        ] {
            let r = render_user_data(
                &Config::default(),
                std::slice::from_ref(&bad),
                &bin,
                Distro::Ubuntu2404,
            );
            assert!(r.is_err(), "{bad:?}");
        }
        let dup = vec![
            entry("/etc/x", 0o644, "root", "root", b""),
            entry("/etc/x", 0o644, "root", "root", b""),
        ];
        assert!(render_user_data(&Config::default(), &dup, &bin, Distro::Ubuntu2404).is_err());
    }
}
