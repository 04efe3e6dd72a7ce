//! `write_files` items: the check of each file target, the choice of text or gz+b64, the
//! permissions string and the deferral.

use std::io::Write as _;
use std::path::Component;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::BINARY_PATH;
use crate::render::FileEntry;
use crate::yaml_out::Value;

/// A `write_files` item. Every file is deferred to the final stage (`defer: true`), whoever
/// owns it: `write_files` runs before `users`, so a file owned by (or grouped to) the
/// service or proxy user would fail its chown; and deferred files land after `packages`, so
/// our /etc/containers/policy.json replaces the package's copy instead of racing dpkg's
/// conffile handling. Nothing needs to exist earlier: the runcmd script runs after both.
///
/// `owner` and `permissions` are left out where they are cloud-init's documented defaults
/// (`root:root`, `0644`; cloud-init sets both on every file it writes), which most files
/// are: the user-data must fit EC2's 16 KiB with `--binary-url`.
pub(super) fn write_file_item(entry: &FileEntry) -> Result<Value> {
    let path = entry
        .path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", entry.path.display()))?;
    let mut item = vec![("path", Value::str(path))];
    let owner = format!("{}:{}", entry.owner, entry.group);
    if owner != DEFAULT_OWNER {
        item.push(("owner", Value::Str(owner)));
    }
    let mode = permissions(entry.mode);
    if mode != DEFAULT_PERMISSIONS {
        item.push(("permissions", Value::Str(mode)));
    }
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

/// The `write_files` item of the embedded regimage binary, and the length of its gz+b64
/// content.
pub(super) fn embedded_binary_item(bytes: &[u8]) -> Result<(Value, usize)> {
    let content = gz_b64(bytes)?;
    let len = content.len();
    let item = Value::map([
        ("path", Value::str(BINARY_PATH)),
        // root:root, cloud-init's default owner.
        ("permissions", Value::str("0755")),
        ("encoding", Value::str("gz+b64")),
        ("content", Value::Str(content)),
        ("defer", Value::Bool(true)),
    ]);
    Ok((item, len))
}

/// What cloud-init's write_files gives a file without `owner` (cc_write_files).
pub(super) const DEFAULT_OWNER: &str = "root:root";
/// What cloud-init's write_files gives a file without `permissions` (cc_write_files).
pub(super) const DEFAULT_PERMISSIONS: &str = "0644";

/// `mode` as the quoted octal string cloud-init expects, e.g. "0644" (an unquoted 0644 is
/// the integer 420 to YAML 1.1, which cloud-init's schema rejects).
fn permissions(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// A file's content as written in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Text(String),
    GzB64(String),
}

/// Text stays text when it is clean UTF-8 (no control characters but newline and tab) and
/// its gz+b64 would not be shorter; everything else is gz+b64. The user-data must fit
/// EC2's 16 KiB with `--binary-url` (issue 11 brought two units), so only files too small
/// to gain stay readable here; `regimage render` shows every file as it lands.
fn encode_content(bytes: &[u8]) -> Result<Content> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
    let b64 = gz_b64(bytes)?;
    match text {
        Some(s) if s.len() <= b64.len() => Ok(Content::Text(s.to_string())),
        _ => Ok(Content::GzB64(b64)),
    }
}

/// gzip (level 6, mtime 0, so the output depends only on the input) then base64.
/// Level 6 instead of 9: measured on a 91 MB debug binary, 9 took 2.4 times as long
/// (45 s against 19 s, unoptimized miniz_oxide) for an output 0.4% smaller.
fn gz_b64(bytes: &[u8]) -> Result<String> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).context("compressing")?;
    let compressed = gz.finish().context("compressing")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
}

/// A file target the document can carry: absolute, no `.`/`..`, not under a directory that
/// may be emptied after cloud-init wrote it, with plain owner and group names and a mode.
pub(super) fn check_entry(entry: &FileEntry) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudinit::tests::{entry, unpack};

    #[test]
    fn every_file_is_deferred_whoever_owns_it() {
        for (owner, group) in [("root", "root"), ("registry", "registry"), ("root", "x")] {
            let e = entry("/etc/x", 0o644, owner, group, b"x");
            let item = write_file_item(&e).unwrap();
            assert_eq!(item.get("defer"), Some(&Value::Bool(true)), "{owner}");
            // cloud-init's default owner is left out; any other is written.
            let want = (owner, group) != ("root", "root");
            assert_eq!(
                item.get("owner"),
                want.then(|| Value::Str(format!("{owner}:{group}")))
                    .as_ref()
            );
        }
        let (binary, _) = embedded_binary_item(b"\x7fELF").unwrap();
        assert_eq!(binary.get("defer"), Some(&Value::Bool(true)));
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
        // A text that gains from compression is compressed, however short.
        let unit =
            "[Unit]\nDescription=x\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n".repeat(4);
        assert!(unit.len() < 400);
        assert!(matches!(
            encode_content(unit.as_bytes()).unwrap(),
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
    fn only_modes_other_than_cloud_inits_default_are_written() {
        for (mode, want) in [
            (0o644, None),
            (0o600, Some("0600")),
            (0o640, Some("0640")),
            (0o755, Some("0755")),
            (0o4644, Some("4644")),
        ] {
            let item = write_file_item(&entry("/etc/x", mode, "root", "root", b"x")).unwrap();
            assert_eq!(
                item.get("permissions"),
                want.map(Value::str).as_ref(),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn permissions_are_octal_strings() {
        assert_eq!(permissions(0o644), "0644");
        assert_eq!(permissions(0o755), "0755");
        assert_eq!(permissions(0o600), "0600");
        assert_eq!(permissions(0o4755), "4755");
    }
}
