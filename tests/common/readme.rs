//! The bundle README as executable documentation: its ```` ```sh ```` blocks, found by
//! heading (the structure in the README contract), joined into one `bash -euo pipefail`
//! script and run as written, with a `sudo` that just runs its arguments (tests are root).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{output, s};

/// The sh blocks of the section found by following `path` through the headings: each
/// element is a heading's exact text, the next one a heading below it (deeper level,
/// before the next heading of the same or a higher level). `&["Docker", "Push"]` is the
/// `### Push` under `## Docker`; `&["Unpack"]` the blocks of `## Unpack` (with any
/// subsections). Panics naming the path when the section is missing or holds no sh block.
pub fn section_blocks(readme: &str, path: &[&str]) -> Vec<String> {
    assert!(!path.is_empty(), "section_blocks: an empty heading path");
    // The open headings from level 2 down: `path[i]` is a heading of level i + 2.
    let mut open: Vec<(usize, &str)> = Vec::new();
    let mut found = false;
    let mut blocks = Vec::new();
    let mut block: Option<String> = None; // Some while inside a ```sh block
    let mut in_other_fence = false;
    let inside = |open: &[(usize, &str)]| {
        open.len() >= path.len()
            && open
                .iter()
                .zip(path)
                .enumerate()
                .all(|(i, ((level, text), want))| *level == i + 2 && text == want)
    };
    for line in readme.lines() {
        if let Some(b) = block.as_mut() {
            if line.trim_end() == "```" {
                blocks.push(block.take().unwrap_or_default());
            } else {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if in_other_fence {
            in_other_fence = line.trim_end() != "```";
            continue;
        }
        if line.starts_with("```") {
            if line.trim_end() == "```sh" && inside(&open) {
                block = Some(String::new());
            } else {
                in_other_fence = true;
            }
            continue;
        }
        let Some((level, text)) = heading(line) else {
            continue;
        };
        while open.last().is_some_and(|&(l, _)| level <= l) {
            open.pop();
        }
        if level >= 2 {
            open.push((level, text));
            if open.len() == path.len() && inside(&open) {
                assert!(!found, "README section {path:?} appears twice");
                found = true;
            }
        }
    }
    assert!(found, "the README has no section {path:?}");
    assert!(
        !blocks.is_empty(),
        "README section {path:?} holds no ```sh block"
    );
    blocks
}

/// `(level, text)` of a Markdown ATX heading line.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &line[level..];
    rest.starts_with(' ').then(|| (level, rest.trim()))
}

/// Where and how README scripts run.
#[derive(Clone)]
pub struct Runner {
    /// The working directory (holds NAME.tar.gz and myimage.tar).
    pub cwd: PathBuf,
    /// Extra environment (HOME, DOCKER_HOST, CONTAINERD_ADDRESS...).
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// A command the script runs under (e.g. a private mount namespace), if any.
    pub prefix: Vec<String>,
    /// Run as this uid and gid (`setpriv`), not root.
    pub user: Option<u32>,
    shim: PathBuf,
}

impl Runner {
    /// A runner in `cwd`; the `sudo` shim is written under `scratch`.
    pub fn new(cwd: &Path, scratch: &Path) -> Runner {
        let shim = scratch.join("shim");
        std::fs::create_dir_all(&shim).expect("creating the shim dir");
        let sudo = shim.join("sudo");
        // The tests run as root: sudo runs its arguments (options such as -E are dropped).
        std::fs::write(
            &sudo,
            "#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n",
        )
        .expect("writing the sudo shim");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the sudo shim");
        Runner {
            cwd: cwd.to_path_buf(),
            env: Vec::new(),
            netns: None,
            prefix: Vec::new(),
            user: None,
            shim,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Runner {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs `blocks` joined as one `bash -euo pipefail` script; returns its stdout.
    /// Panics with the script, stdout and stderr unless it exits 0.
    pub fn run(&self, blocks: &[String]) -> String {
        let script = blocks.join("\n");
        // Debian's /usr/bin/docker (the 20.10 client) before /usr/local/bin, where these
        // machines may have a newer client-only docker.
        let path = format!(
            "{}:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin",
            s(&self.shim)
        );
        let mut argv: Vec<String> = self.prefix.clone();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(uid) = self.user {
            argv.extend(["setpriv", "--clear-groups"].map(String::from));
            argv.push(format!("--reuid={uid}"));
            argv.push(format!("--regid={uid}"));
        }
        argv.extend(["bash", "-euo", "pipefail", "-c", &script].map(String::from));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.cwd)
            .env("PATH", path);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = output(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README script failed with {}\n--- script ---\n{script}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}
