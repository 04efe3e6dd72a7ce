//! The #cloud-config document built from the appliance's file set.
//!
//! Pure: the config, the files from [`crate::render::appliance_files`], the regimage binary
//! (embedded, or a URL and its sha256) and the target distribution go in, the user-data
//! text comes out. Nothing secret or host-unique goes in it: keys and certificates are
//! made on the machine by regimage-firstboot.service.
//!
//! What cloud-init does with it, in stage order (cloud.cfg of Ubuntu 24.04 and Debian 13):
//! init: `bootcmd`, then `users` (after `write_files`, which is why every file here is
//! deferred); config: `runcmd` is written to a script; final: `packages` installed, then
//! deferred `write_files`, then the runcmd script runs.
//!
//! Two [`Mode`]s share this one builder. [`Mode::FirstBoot`] is cloud user-data: the machine
//! installs everything and starts regimage-firstboot.service itself. [`Mode::Bake`] is the
//! seed of `regimage build --format qcow2`'s throwaway VM: the same packages, users and files,
//! plus the binary and the registry image archive read from a second drive (cloud-init parses
//! a seed with the binary embedded for minutes under TCG); first boot is enabled but
//! not started, and once cloud-init has finished a transient unit resets the image for its real
//! first boot (no SSH host keys, no keys of any kind, machine-id uninitialized, no seed, no
//! cloud-init state or logs) and powers the VM off. Progress goes to the console as lines
//! starting with [`BAKE_PROGRESS_PREFIX`], which the host shows while it waits.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::config::Config;
use crate::distro::Distro;
use crate::render::FileEntry;
use crate::yaml_out::{self, Value};

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
/// Text files up to this size stay readable in the user-data.
const TEXT_INLINE_MAX: usize = 2048;
/// Where the bake leaves the pinned registry image (an oci-archive) for first boot's
/// `podman load`: root-only, like the rest of the state directory.
pub const REGISTRY_ARCHIVE_PATH: &str = "/var/lib/regimage/registry-image.oci.tar";
/// Serial number of the bake VM's read-only drive that carries the registry image archive
/// and the binary; udev names it /dev/disk/by-id/virtio-<serial> (virtio-blk serials hold
/// at most 20 bytes).
pub const PAYLOAD_DRIVE_SERIAL: &str = "regimage-payload";
/// Every progress line the bake guest prints on its console starts with this.
pub const BAKE_PROGRESS_PREFIX: &str = "regimage-bake: ";
/// The last progress step of a good bake: the image is reset and the VM powers off. The
/// host accepts the output only after this line and a clean QEMU exit.
pub const BAKE_DONE_STEP: &str = "image ready, powering off";
/// A step starting with this means the bake failed; the guest powers off without resetting.
pub const BAKE_FAILED_STEP: &str = "FAILED";
/// The bake's finishing script: on /run (a tmpfs), so it never lands in the image.
const BAKE_RUN_DIR: &str = "/run/regimage-bake";
const BAKE_FINISH_SCRIPT: &str = "/run/regimage-bake/finish.sh";
/// Left by the last runcmd step: the payload script ran to its end.
const BAKE_PAYLOAD_DONE: &str = "/run/regimage-bake/payload-done";
const BAKE_FINISH_UNIT: &str = "regimage-bake-finish.service";
/// With machine-id `uninitialized` the image's first boot is systemd's "first boot", which
/// enables every unit whose preset says so; without a preset line the default is `enable`,
/// which would enable the distribution's nginx again. A `disable` line keeps it off.
pub const BAKE_PRESET_PATH: &str = "/etc/systemd/system-preset/80-regimage.preset";

/// What the document is for (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Cloud user-data: everything is installed at the machine's first boot, which then
    /// starts regimage-firstboot.service.
    #[default]
    FirstBoot,
    /// The seed of a bake VM; the registry image archive is this extent of the payload
    /// drive.
    Bake { archive: DriveExtent },
}

/// A file laid on the bake VM's payload drive: `size` bytes from byte `offset` (a whole
/// number of sectors), whose sha256 is `sha256` (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveExtent {
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// How the machine gets the regimage binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryPayload {
    /// The binary's bytes, written by cloud-init as gz+b64.
    Embedded(Vec<u8>),
    /// Downloaded at first boot with curl and checked with `sha256sum -c`; a mismatch stops
    /// the runcmd script, so the binary is not installed and first boot never starts.
    Url { url: String, sha256: String },
    /// Copied from the bake VM's payload drive and checked the same way ([`Mode::Bake`]
    /// only).
    OnDrive(DriveExtent),
}

/// The user-data text and what went into it, for the build summary.
#[derive(Debug, Clone)]
pub struct UserData {
    pub text: String,
    /// Size of the embedded binary (0 for a URL payload).
    pub binary_raw_bytes: usize,
    /// Size of its gz+b64 text in the document (0 for a URL payload).
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
    build_user_data_for(config, files, binary, distro, &Mode::FirstBoot)
}

/// The document for `mode`: cloud user-data, or a bake VM's seed.
pub fn build_user_data_for(
    config: &Config,
    files: &[FileEntry],
    binary: &BinaryPayload,
    distro: Distro,
    mode: &Mode,
) -> Result<UserData> {
    let (tree, binary_raw_bytes, binary_encoded_bytes) =
        user_data_tree_for(config, files, binary, distro, mode)?;
    let info = distro.info();
    let mut text = String::from("#cloud-config\n");
    match mode {
        Mode::FirstBoot => text.push_str(&format!(
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
             # `regimage build --format qcow2`; not cloud user-data. Nothing secret is in it.\n",
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

/// The document as a value tree, plus the embedded binary's raw and encoded sizes.
pub fn user_data_tree(
    config: &Config,
    files: &[FileEntry],
    binary: &BinaryPayload,
    distro: Distro,
) -> Result<(Value, usize, usize)> {
    user_data_tree_for(config, files, binary, distro, &Mode::FirstBoot)
}

/// [`user_data_tree`] for `mode`: the one builder behind both documents.
pub fn user_data_tree_for(
    config: &Config,
    files: &[FileEntry],
    binary: &BinaryPayload,
    distro: Distro,
    mode: &Mode,
) -> Result<(Value, usize, usize)> {
    let info = distro.info();
    if let Mode::Bake { archive } = mode {
        check_sha256(&archive.sha256).map_err(anyhow::Error::msg)?;
    }
    let mut seen = HashSet::new();
    let mut write_files = Vec::with_capacity(files.len() + 1);
    for entry in files {
        check_entry(entry)?;
        if !seen.insert(entry.path.clone()) {
            bail!("{} is in the file set twice", entry.path.display());
        }
        if entry.path == Path::new(BINARY_PATH) {
            bail!("{BINARY_PATH} is in the file set; the binary is added by the build");
        }
        write_files.push(write_file_item(entry)?);
    }

    let (mut raw, mut encoded) = (0, 0);
    match binary {
        BinaryPayload::Embedded(bytes) => {
            let content = gz_b64(bytes).context("compressing the regimage binary")?;
            raw = bytes.len();
            encoded = content.len();
            write_files.push(Value::map([
                ("path", Value::str(BINARY_PATH)),
                ("owner", Value::str("root:root")),
                ("permissions", Value::str("0755")),
                ("encoding", Value::str("gz+b64")),
                ("content", Value::Str(content)),
                ("defer", Value::Bool(true)),
            ]));
        }
        BinaryPayload::Url { url, sha256 } => {
            check_binary_url(url).map_err(anyhow::Error::msg)?;
            check_sha256(sha256).map_err(anyhow::Error::msg)?;
        }
        BinaryPayload::OnDrive(extent) => {
            if *mode == Mode::FirstBoot {
                bail!("the binary comes on a drive only in a bake VM's seed");
            }
            check_sha256(&extent.sha256).map_err(anyhow::Error::msg)?;
        }
    }

    let mut users = Vec::with_capacity(3);
    if *mode == Mode::FirstBoot {
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
        Mode::FirstBoot => tree.push(("runcmd", Value::Seq(runcmd(binary, distro)))),
        Mode::Bake { archive } => {
            tree.push(("bootcmd", Value::Seq(bake_bootcmd())));
            tree.push(("runcmd", Value::Seq(bake_runcmd(distro, archive, binary)?)));
        }
    }
    Ok((Value::map(tree), raw, encoded))
}

/// A `write_files` item. Every file is deferred to the final stage (`defer: true`):
/// `write_files` runs before `users`, so a file owned by (or grouped to) the service or
/// proxy user would fail its chown; and deferred files land after `packages`, so our
/// /etc/containers/policy.json replaces the package's copy instead of racing dpkg's
/// conffile handling. Nothing needs to exist earlier: the runcmd script runs after both.
fn write_file_item(entry: &FileEntry) -> Result<Value> {
    let path = entry
        .path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", entry.path.display()))?;
    let mut item = vec![
        ("path", Value::str(path)),
        (
            "owner",
            Value::Str(format!("{}:{}", entry.owner, entry.group)),
        ),
        ("permissions", Value::Str(permissions(entry.mode))),
    ];
    match encode_content(&entry.contents)
        .with_context(|| format!("encoding {}", entry.path.display()))?
    {
        Content::Text(text) => item.push(("content", Value::Str(text))),
        Content::GzB64(b64) => {
            item.push(("encoding", Value::str("gz+b64")));
            item.push(("content", Value::Str(b64)));
        }
    }
    item.push(("defer", Value::Bool(true)));
    Ok(Value::map(item))
}

/// True for every file: see [`write_file_item`] for why root's files are deferred too.
pub fn needs_defer(entry: &FileEntry) -> bool {
    let _ = entry;
    true
}

/// `mode` as the quoted octal string cloud-init expects, e.g. "0644" (an unquoted 0644 is
/// the integer 420 to YAML 1.1, which cloud-init's schema rejects).
pub fn permissions(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// A file's content as written in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    GzB64(String),
}

/// Text stays text when it is clean UTF-8 (no control characters but newline and tab) and
/// small, or when compressing would save under a fifth; everything else is gz+b64.
pub fn encode_content(bytes: &[u8]) -> Result<Content> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
    match text {
        Some(s) if s.len() <= TEXT_INLINE_MAX => Ok(Content::Text(s.to_string())),
        Some(s) => {
            let b64 = gz_b64(bytes)?;
            if b64.len() * 5 < s.len() * 4 {
                Ok(Content::GzB64(b64))
            } else {
                Ok(Content::Text(s.to_string()))
            }
        }
        None => Ok(Content::GzB64(gz_b64(bytes)?)),
    }
}

/// gzip (level 6, mtime 0, so the output depends only on the input) then base64.
/// Level 6 instead of 9: measured on a 91 MB debug binary, 9 took 2.4 times as long
/// (45 s against 19 s, unoptimized miniz_oxide) for an output 0.4% smaller.
pub fn gz_b64(bytes: &[u8]) -> Result<String> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).context("compressing")?;
    let compressed = gz.finish().context("compressing")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
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

/// The runcmd list. cloud-init writes it as one `#!/bin/sh` script with no `-e`, so the
/// first line adds it: a failed step (above all a binary that fails its checksum) must
/// stop the script before the first-boot service is enabled.
fn runcmd(binary: &BinaryPayload, distro: Distro) -> Vec<Value> {
    let info = distro.info();
    let mut cmds = vec![
        Value::str("set -eu"),
        // The distribution's nginx starts on install and holds port 80; ours is
        // registry-proxy.service with its own config.
        Value::strs(["systemctl", "disable", "--now", info.distro_nginx_unit]),
    ];
    if let BinaryPayload::Url { url, sha256 } = binary {
        cmds.push(Value::strs([
            "install", "-d", "-m", "0700", "-o", "root", "-g", "root", STATE_DIR,
        ]));
        cmds.push(Value::strs([
            "curl",
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--retry",
            "5",
            "--retry-delay",
            "5",
            "--connect-timeout",
            "30",
            "--max-time",
            "600",
            "--output",
            DOWNLOAD_PATH,
            url.as_str(),
        ]));
        // A string, for the pipe; sha256 is 64 hex digits and the path a constant, so
        // nothing here needs quoting beyond what is written.
        cmds.push(Value::Str(format!(
            "echo '{sha256}  {DOWNLOAD_PATH}' | sha256sum --check --strict - || \
             {{ echo 'regimage: the downloaded binary does not match --binary-sha256 \
             {sha256}; not installed, {FIRSTBOOT_UNIT} not started' >&2; exit 1; }}"
        )));
        cmds.push(Value::strs([
            "install",
            "-m",
            "0755",
            "-o",
            "root",
            "-g",
            "root",
            DOWNLOAD_PATH,
            BINARY_PATH,
        ]));
        cmds.push(Value::strs(["rm", "-f", DOWNLOAD_PATH]));
    }
    cmds.push(Value::strs(["systemctl", "daemon-reload"]));
    // Enabled so an interrupted first boot resumes on the next boot.
    cmds.push(Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT]));
    // --no-block: runcmd runs inside cloud-final.service. The unit is WantedBy=
    // multi-user.target and therefore NOT After=cloud-final.service (cloud-final is after
    // multi-user.target: that pair is an ordering cycle); on this first boot its file did
    // not exist when multi-user.target was queued, so runcmd starts it. Blocking would hold
    // cloud-final (and `cloud-init status --wait`) for all of first boot, and deadlock if
    // the unit ever gained After=cloud-final.service. Queued, it runs beside the rest of
    // cloud-final, after the packages and deferred files it needs are in place.
    cmds.push(Value::strs([
        "systemctl",
        "start",
        "--no-block",
        FIRSTBOOT_UNIT,
    ]));
    cmds
}

/// A progress line for the console, as a runcmd/bootcmd item.
fn bake_say(step: &str) -> Value {
    Value::Str(format!("echo '{BAKE_PROGRESS_PREFIX}{step}'"))
}

/// bootcmd of the bake (cloud-init's init stage, before any package is installed): write
/// the finishing script to /run and queue it as a transient unit. It waits for cloud-init
/// to finish, so it also reports a failure that happens before runcmd (a package that
/// does not install) and powers the VM off instead of leaving the host to time out.
/// `cloud-init clean` must not run inside runcmd itself: cloud-init still writes its own
/// state and logs after runcmd, which would race the reset.
fn bake_bootcmd() -> Vec<Value> {
    vec![
        Value::strs(["install", "-d", "-m", "0700", BAKE_RUN_DIR]),
        // A quoted heredoc keeps the script literal. The script is a file, not a
        // `systemd-run sh -c '...'` argument, because systemd expands $VARIABLES in a
        // transient unit's command line.
        Value::Str(format!(
            "cat > {BAKE_FINISH_SCRIPT} <<'REGIMAGE_BAKE_EOF'\n{}REGIMAGE_BAKE_EOF",
            bake_finish_script()
        )),
        Value::strs([
            "systemd-run",
            "--no-block",
            &format!("--unit={BAKE_FINISH_UNIT}"),
            // The default description is the command line; this one reads better on the
            // console.
            "--description=regimage bake: reset the image for its first boot",
            "--property=StandardOutput=journal+console",
            "--property=StandardError=journal+console",
            "/bin/sh",
            BAKE_FINISH_SCRIPT,
        ]),
        bake_say("booted; cloud-init installs the packages next (the longest step)"),
    ]
}

/// The script of regimage-bake-finish.service (see [`bake_bootcmd`]).
pub fn bake_finish_script() -> String {
    const SCRIPT: &str = r#"#!/bin/sh
# regimage bake: runs once cloud-init has finished; resets the image for its real first
# boot, then powers the VM off. On /run, so it is not part of the image.
set -u
say() { echo "@PREFIX@$*"; }
fail() {
  say "@FAILED@: $*"
  cloud-init status --long 2>&1 || true
  echo '--- end of /var/log/cloud-init-output.log ---'
  tail -n 40 /var/log/cloud-init-output.log 2>&1 || true
  sync
  systemctl poweroff
  exit 1
}
cloud-init status --wait >/dev/null 2>&1
rc=$?
# 0: done; 2: done with recoverable errors (deprecation warnings and the like).
case "$rc" in
  0) ;;
  2) say "warning: cloud-init reported recoverable errors"
     cloud-init status --long 2>&1 || true ;;
  *) fail "cloud-init finished with errors (cloud-init status exit $rc)" ;;
esac
test -f @PAYLOAD_DONE@ || fail "the payload script did not run to its end"
say "resetting the image for its first boot"
# --configs network drops the bake NIC's network config (cloud-init >= 24.1).
cloud-init clean --logs --machine-id --seed --configs network \
  || cloud-init clean --logs --machine-id --seed \
  || fail "cloud-init clean failed"
# Host-unique files: SSH host keys, the ssl-cert package's snakeoil pair, systemd's random
# seed and credential secret; each machine makes its own. systemd-random-seed.service
# saves a new seed when it stops: stopped now, it does not write one at power-off.
systemctl stop systemd-random-seed.service >/dev/null 2>&1 || true
rm -f /etc/ssh/ssh_host_* /etc/ssl/private/ssl-cert-snakeoil.key \
  /etc/ssl/certs/ssl-cert-snakeoil.pem /var/lib/systemd/random-seed \
  /var/lib/systemd/credential.secret
test -L /var/lib/dbus/machine-id || rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
# The bake's journal (its machine-id's directory): journald writes to /run from here on.
journalctl --relinquish-var >/dev/null 2>&1 || true
rm -rf /var/log/journal/*
left=$(find /etc /root /var/lib/regimage -xdev -type f \( -name 'ssh_host_*' -o -name '*.key' \
  -o -path '/etc/ssl/private/*' -o -path '/etc/registry/certs/*' \) 2>/dev/null)
test -z "$left" || fail "key or certificate files are left in the image: $left"
grep -qx uninitialized /etc/machine-id || fail "/etc/machine-id is not 'uninitialized'"
test ! -e /var/lib/cloud/instance || fail "cloud-init state is left in /var/lib/cloud"
# Discarded blocks stay out of the output image.
fstrim --all >/dev/null 2>&1 || true
sync
say "@DONE@"
systemctl poweroff
"#;
    SCRIPT
        .replace("@PREFIX@", BAKE_PROGRESS_PREFIX)
        .replace("@FAILED@", BAKE_FAILED_STEP)
        .replace("@PAYLOAD_DONE@", BAKE_PAYLOAD_DONE)
        .replace("@DONE@", BAKE_DONE_STEP)
}

/// runcmd of the bake: check the packages, copy the registry image archive (and the binary,
/// when it comes on the drive) from the payload drive, enable first boot without starting
/// it.
fn bake_runcmd(
    distro: Distro,
    archive: &DriveExtent,
    binary: &BinaryPayload,
) -> Result<Vec<Value>> {
    let info = distro.info();
    let device = format!("/dev/disk/by-id/virtio-{PAYLOAD_DRIVE_SERIAL}");
    let packages = info.packages.join(" ");
    let mut cmds = vec![
        Value::str("set -eu"),
        Value::Str(format!(
            "trap 'rc=$?; if [ \"$rc\" -ne 0 ]; then echo \"{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: \
             the payload script stopped with exit status $rc\"; fi' EXIT"
        )),
        bake_say("checking the installed packages"),
        // dpkg-query prints "no packages found" (no status line) for an unknown name.
        Value::Str(format!(
            "missing=$(dpkg-query -W -f='${{db:Status-Status}} ${{Package}}\\n' {packages} 2>&1 \
             | grep -v '^installed ' || true); if [ -n \"$missing\" ]; then echo \
             \"{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: packages not installed: $missing\"; exit 1; fi"
        )),
        bake_say(&format!(
            "disabling {} (the proxy is registry-proxy.service)",
            info.distro_nginx_unit
        )),
        // The distribution's nginx starts on install and holds port 80.
        Value::strs(["systemctl", "disable", "--now", info.distro_nginx_unit]),
        Value::strs(["install", "-d", "-m", "0755", "/etc/systemd/system-preset"]),
        Value::Str(format!(
            "printf '# regimage: the proxy is registry-proxy.service; first boot runs {FIRSTBOOT_UNIT}\\n\
             disable {}\\nenable {FIRSTBOOT_UNIT}\\n' > {BAKE_PRESET_PATH}",
            info.distro_nginx_unit
        )),
        Value::strs([
            "install", "-d", "-m", "0700", "-o", "root", "-g", "root", STATE_DIR,
        ]),
        Value::str("udevadm settle --timeout=60 || true"),
        Value::Str(format!(
            "test -b {device} || {{ echo \"{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: {device} is missing\"; exit 1; }}"
        )),
        bake_say("copying the registry image archive from its drive"),
    ];
    cmds.extend(copy_from_drive(
        &device,
        archive,
        REGISTRY_ARCHIVE_PATH,
        "0600",
        "registry image archive",
    ));
    match binary {
        BinaryPayload::OnDrive(extent) => {
            cmds.push(bake_say("copying the regimage binary from its drive"));
            cmds.extend(copy_from_drive(
                &device,
                extent,
                BINARY_PATH,
                "0755",
                "regimage binary",
            ));
        }
        // Written by write_files.
        BinaryPayload::Embedded(_) => {}
        BinaryPayload::Url { .. } => {
            bail!("a bake gets the binary embedded or on its drive, not from a URL")
        }
    }
    cmds.extend([
        bake_say(&format!("enabling {FIRSTBOOT_UNIT} for the first boot")),
        // Proves the binary runs on this distribution's libc before the image is kept.
        Value::strs([BINARY_PATH, "--version"]),
        Value::strs(["systemctl", "daemon-reload"]),
        // Enabled, not started: it runs at the image's real first boot.
        Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT]),
        Value::strs(["touch", BAKE_PAYLOAD_DONE]),
        bake_say("payload applied; the image is reset once cloud-init has finished"),
    ]);
    Ok(cmds)
}

/// Commands that copy `extent` of `device` to `dest` (root-owned, `mode`) through a `.part`
/// file beside it, checked against its sha256 before the rename.
fn copy_from_drive(
    device: &str,
    extent: &DriveExtent,
    dest: &str,
    mode: &str,
    what: &str,
) -> Vec<Value> {
    let part = format!("{dest}.part");
    let DriveExtent {
        offset,
        size,
        sha256,
    } = extent;
    vec![
        // The drive holds each file padded to whole sectors: read exactly its bytes.
        Value::Str(format!(
            "(umask 077; dd if={device} iflag=skip_bytes,count_bytes skip={offset} \
             count={size} bs=1M status=none > {part})"
        )),
        Value::Str(format!(
            "echo '{sha256}  {part}' | sha256sum --check --strict --quiet - || {{ echo \
             \"{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: the {what} read from {device} does not \
             have sha256 {sha256}\"; exit 1; }}"
        )),
        Value::strs(["chown", "root:root", &part]),
        Value::strs(["chmod", mode, &part]),
        Value::strs(["mv", "-f", &part, dest]),
    ]
}

fn check_entry(entry: &FileEntry) -> Result<()> {
    let path = &entry.path;
    let shown = path.display();
    if !path.is_absolute() {
        bail!("{shown}: a file target must be an absolute path");
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        bail!("{shown}: a file target must not contain '.' or '..'");
    }
    // /tmp may be a fresh tmpfs after cloud-init wrote it; /var/tmp is aged out by
    // systemd-tmpfiles.
    if path.starts_with("/tmp") || path.starts_with("/var/tmp") {
        bail!("{shown}: the appliance never writes under /tmp or /var/tmp");
    }
    for (what, name) in [("owner", &entry.owner), ("group", &entry.group)] {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            bail!("{shown}: {what} {name:?} is not a user or group name");
        }
    }
    if entry.mode > 0o7777 {
        bail!("{shown}: mode {:o} has bits beyond 7777", entry.mode);
    }
    Ok(())
}

/// An http(s) URL with a host and nothing a shell or curl could misread (no white space,
/// no control characters, no quotes).
pub fn check_binary_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(format!(
            "{url:?} has no host (or carries credentials); expected e.g. https://example.com/regimage"
        ));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\' | '`'))
    {
        return Err(format!(
            "{url:?} contains white space, a quote or a control character; percent-encode it"
        ));
    }
    if url.len() > 2048 {
        return Err(format!(
            "the URL is {} characters long; at most 2048",
            url.len()
        ));
    }
    Ok(())
}

/// 64 hexadecimal digits (lowercase, as written by `sha256sum`).
pub fn check_sha256(hex: &str) -> Result<(), String> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(format!(
            "{hex:?} is not a sha256 digest; expected 64 lowercase hex digits, as printed by `sha256sum FILE`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::path::PathBuf;

    fn entry(path: &str, mode: u32, owner: &str, group: &str, contents: &[u8]) -> FileEntry {
        FileEntry {
            path: PathBuf::from(path),
            mode,
            owner: owner.into(),
            group: group.into(),
            contents: contents.to_vec(),
        }
    }

    fn sample_files() -> Vec<FileEntry> {
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

    fn unpack(b64: &str) -> Vec<u8> {
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn items<'a>(tree: &'a Value, key: &str) -> &'a [Value] {
        match tree.get(key) {
            Some(Value::Seq(v)) => v,
            other => panic!("{key}: {other:?}"),
        }
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
            assert!(matches!(f.get("permissions"), Some(Value::Str(p)) if p.len() == 4));
        }
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
        assert_eq!(
            runcmd.last(),
            Some(&Value::strs([
                "systemctl",
                "start",
                "--no-block",
                FIRSTBOOT_UNIT
            ]))
        );
        // Nothing is downloaded when the binary is embedded.
        assert!(!format!("{runcmd:?}").contains("curl"));
        // The text parses back to the same tree.
        let body = ud.text.split_once('\n').unwrap().1;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(body).unwrap();
        assert_eq!(parsed, ud.tree.to_json());
    }

    /// The runcmd/bootcmd items as cloud-init writes them to a script (strings verbatim,
    /// lists shell-quoted).
    fn shellify(items: &[Value]) -> String {
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

    fn sh_syntax_ok(script: &str) {
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

    #[test]
    fn bake_mode_document() {
        let config = Config::default();
        let sha = "ab".repeat(32);
        let bin_sha = "cd".repeat(32);
        let bin = BinaryPayload::OnDrive(DriveExtent {
            offset: 7494144,
            size: 8_000_001,
            sha256: bin_sha.clone(),
        });
        let mode = Mode::Bake {
            archive: DriveExtent {
                offset: 0,
                size: 7494100,
                sha256: sha.clone(),
            },
        };
        let bake =
            build_user_data_for(&config, &sample_files(), &bin, Distro::Debian13, &mode).unwrap();
        let url = BinaryPayload::Url {
            url: "https://example.com/regimage".into(),
            sha256: bin_sha.clone(),
        };
        let first = build_user_data(&config, &sample_files(), &url, Distro::Debian13).unwrap();
        let tree = &bake.tree;
        // The same packages and files as the user-data; the binary is not in the document.
        assert_eq!(tree.get("packages"), first.tree.get("packages"));
        assert_eq!(tree.get("write_files"), first.tree.get("write_files"));
        assert!(items(tree, "write_files")
            .iter()
            .all(|f| f.get("path") != Some(&Value::str(BINARY_PATH))));
        assert!(bake.text.len() < 64 * 1024, "{}", bake.text.len());
        // No cloud login user is made in the bake; the service users are.
        let users = items(tree, "users");
        assert_eq!(users.len(), 2);
        assert!(!users.contains(&Value::str("default")));

        let runcmd = items(tree, "runcmd");
        let text = format!("{runcmd:?}");
        let device = format!("/dev/disk/by-id/virtio-{PAYLOAD_DRIVE_SERIAL}");
        assert!(text.contains(&format!(
            "dd if={device} iflag=skip_bytes,count_bytes skip=0 count=7494100 bs=1M status=none \
             > {REGISTRY_ARCHIVE_PATH}.part"
        )));
        assert!(text.contains(&format!("{sha}  {REGISTRY_ARCHIVE_PATH}.part")));
        assert!(text.contains(&format!(
            "dd if={device} iflag=skip_bytes,count_bytes skip=7494144 count=8000001 bs=1M \
             status=none > {BINARY_PATH}.part"
        )));
        assert!(text.contains(&format!("{bin_sha}  {BINARY_PATH}.part")));
        let pos = |v: &Value| runcmd.iter().position(|c| c == v).unwrap();
        let binary_in_place = pos(&Value::strs([
            "mv",
            "-f",
            &format!("{BINARY_PATH}.part"),
            BINARY_PATH,
        ]));
        assert!(
            pos(&Value::strs([
                "chmod",
                "0755",
                &format!("{BINARY_PATH}.part")
            ])) < binary_in_place
        );
        assert!(binary_in_place < pos(&Value::strs([BINARY_PATH, "--version"])));
        assert!(runcmd.contains(&Value::strs([
            "mv",
            "-f",
            &format!("{REGISTRY_ARCHIVE_PATH}.part"),
            REGISTRY_ARCHIVE_PATH
        ])));
        assert!(runcmd.contains(&Value::strs([
            "chmod",
            "0600",
            &format!("{REGISTRY_ARCHIVE_PATH}.part")
        ])));
        assert!(runcmd.contains(&Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT])));
        assert!(
            text.contains(&format!(
                "disable nginx.service\\\\nenable {FIRSTBOOT_UNIT}"
            )),
            "{text}"
        );
        assert!(text.contains(BAKE_PRESET_PATH));
        assert!(runcmd.contains(&Value::strs([
            "systemctl",
            "disable",
            "--now",
            "nginx.service"
        ])));
        // Enabled, never started, in the bake.
        assert!(!text.contains("--no-block"), "{text}");
        assert!(!text.contains("\"start\""), "{text}");
        // Progress lines for the host.
        assert!(text.contains(&format!("echo '{BAKE_PROGRESS_PREFIX}")));
        sh_syntax_ok(&shellify(runcmd));

        let bootcmd = items(tree, "bootcmd");
        sh_syntax_ok(&shellify(bootcmd));
        let run = bootcmd
            .iter()
            .find(|v| matches!(v, Value::Seq(a) if a.first() == Some(&Value::str("systemd-run"))))
            .unwrap();
        // systemd expands $ in a transient unit's command line: none there.
        assert!(!format!("{run:?}").contains('$'));
        assert!(format!("{run:?}").contains("--no-block"));

        let script = bake_finish_script();
        sh_syntax_ok(&script);
        for needed in [
            "cloud-init status --wait",
            "cloud-init clean --logs --machine-id --seed",
            "rm -f /etc/ssh/ssh_host_*",
            "grep -qx uninitialized /etc/machine-id",
            "systemctl poweroff",
            "systemctl stop systemd-random-seed.service",
            "journalctl --relinquish-var",
            BAKE_PAYLOAD_DONE,
        ] {
            assert!(script.contains(needed), "{needed} missing");
        }
        // The script is in the user-data through a heredoc.
        assert!(bake
            .text
            .contains("cloud-init clean --logs --machine-id --seed"));
        // The host's success line never appears literally in the seed, so only a guest
        // that ran the script can print it.
        let done_line = format!("{BAKE_PROGRESS_PREFIX}{BAKE_DONE_STEP}");
        assert!(!bake.text.contains(&done_line));
        assert!(script.contains(BAKE_DONE_STEP));
        // The first-boot document has none of this.
        assert!(first.tree.get("bootcmd").is_none());
        assert!(!first.text.contains(BAKE_PROGRESS_PREFIX));
        // The text parses back to the same tree.
        let body = bake.text.split_once('\n').unwrap().1;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(body).unwrap();
        assert_eq!(parsed, bake.tree.to_json());
        // A malformed digest is refused, and so is a binary the mode cannot deliver.
        let bad = Mode::Bake {
            archive: DriveExtent {
                offset: 0,
                size: 1,
                sha256: "xyz".into(),
            },
        };
        let build = |bin: &BinaryPayload, mode: &Mode| {
            build_user_data_for(&config, &sample_files(), bin, Distro::Debian13, mode)
        };
        assert!(build(&bin, &bad).is_err());
        let bad_bin = BinaryPayload::OnDrive(DriveExtent {
            offset: 512,
            size: 1,
            sha256: "xyz".into(),
        });
        assert!(build(&bad_bin, &mode).is_err());
        assert!(build(&url, &mode).is_err());
        assert!(build(&bin, &Mode::FirstBoot).is_err());
        // An embedded binary still works in a bake: written by write_files, not copied.
        let embedded = build(&BinaryPayload::Embedded(b"\x7fELF".to_vec()), &mode).unwrap();
        assert!(format!("{:?}", embedded.tree.get("write_files")).contains(BINARY_PATH));
        assert!(
            !format!("{:?}", embedded.tree.get("runcmd")).contains(&format!("{BINARY_PATH}.part"))
        );
    }

    #[test]
    fn non_root_owner_is_deferred() {
        let e = entry("/etc/x", 0o644, "registry", "registry", b"x");
        assert!(needs_defer(&e));
        let item = write_file_item(&e).unwrap();
        assert_eq!(item.get("defer"), Some(&Value::Bool(true)));
        assert_eq!(item.get("owner"), Some(&Value::str("registry:registry")));
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
        let runcmd = items(&ud.tree, "runcmd");
        let pos = |needle: &str| {
            runcmd
                .iter()
                .position(|c| format!("{c:?}").contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in runcmd"))
        };
        assert!(pos("https://example.com/regimage") < pos("sha256sum"));
        assert!(pos("sha256sum") < pos(BINARY_PATH));
        assert!(pos(BINARY_PATH) < pos("enable"));
        assert!(format!("{:?}", runcmd[pos("sha256sum")]).contains(&sha));
        assert!(!ud.text.contains("/tmp"));
        // Debian's row brings passt.
        assert!(items(&ud.tree, "packages").contains(&Value::str("passt")));
        // No binary embedded.
        assert!(items(&ud.tree, "write_files")
            .iter()
            .all(|f| f.get("path") != Some(&Value::str(BINARY_PATH))));
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

    #[test]
    fn content_encoding_choice() {
        assert_eq!(
            encode_content(b"small\n").unwrap(),
            Content::Text("small\n".into())
        );
        assert!(matches!(
            encode_content(&[0xff, 0]).unwrap(),
            Content::GzB64(_)
        ));
        assert!(matches!(
            encode_content(b"bell\x07").unwrap(),
            Content::GzB64(_)
        ));
        let big = "server { listen 443; }\n".repeat(200);
        let Content::GzB64(b64) = encode_content(big.as_bytes()).unwrap() else {
            panic!("big repetitive text should be compressed")
        };
        assert_eq!(unpack(&b64), big.as_bytes());
        // Deterministic: same input, same bytes.
        assert_eq!(gz_b64(big.as_bytes()).unwrap(), b64);
    }

    #[test]
    fn permissions_are_octal_strings() {
        assert_eq!(permissions(0o644), "0644");
        assert_eq!(permissions(0o755), "0755");
        assert_eq!(permissions(0o600), "0600");
        assert_eq!(permissions(0o4755), "4755");
    }

    #[test]
    fn url_and_digest_checks() {
        assert!(check_binary_url("https://example.com/r").is_ok());
        assert!(check_binary_url("http://10.0.0.1:8080/r?x=1").is_ok());
        for bad in [
            "ftp://x/r",
            "https://",
            "https:///r",
            "https://u:p@x/r",
            "https://x/a b",
            "https://x/'r",
            "example.com/r",
        ] {
            assert!(check_binary_url(bad).is_err(), "{bad}");
        }
        assert!(check_sha256(&"0".repeat(64)).is_ok());
        assert!(check_sha256(&"0".repeat(63)).is_err());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256(&"g".repeat(64)).is_err());
    }
}
