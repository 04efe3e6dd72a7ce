//! Helpers shared by the integration tests: running the built binary, free ports, and a
//! tiny OCI image made on the spot (nothing can be pulled here).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub mod blob;
pub mod blob_http;
pub mod client;
pub mod garage;
pub mod loopback;
pub mod netns;
pub mod readme;
pub mod vm;

/// The regimage binary cargo built for this test run.
pub fn regimage() -> Command {
    Command::new(env!("CARGO_BIN_EXE_regimage"))
}

/// Runs `cmd`, returning its output; panics with the command line if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs `cmd` and panics with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Ports this test process has handed out: tests running side by side (the VM tests run
/// two at a time) must not get the same "free" port before either has bound it.
static CLAIMED_PORTS: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Claims `port` for this process; false when another test of it already has it.
pub fn claim_port(port: u16) -> bool {
    CLAIMED_PORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(port)
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that no other test of this
/// process got.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
        let port = l.local_addr().expect("local address").port();
        if claim_port(port) {
            return port;
        }
    }
}

/// Fails the test with the package to install when `tool` is not on PATH.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new(tool).is_file();
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (.ci/run does)"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an OCI image layout at `dir` holding one image tagged `tag`, whose single layer
/// carries `hello.txt` with `text`. Returns the manifest digest (`sha256:...`).
pub fn make_oci_layout(dir: &Path, tag: &str, text: &str) -> String {
    make_oci_layout_layers(dir, tag, text, 1)
}

/// One gzipped tar layer holding `name` with `text`; returns it and its diff ID.
fn tar_gz_layer(name: &str, text: &str) -> (Vec<u8>, String) {
    let mut tar_bytes = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut tar_bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, text.as_bytes())
            .expect("adding layer file");
        tar.finish().expect("finishing layer tar");
    }
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).expect("compressing layer");
    (gz.finish().expect("finishing gzip"), diff_id)
}

/// [`make_oci_layout`] with `layers` layers: the first is its one layer (`hello.txt` with
/// `text`), layer `i` after it holds `layer-i.txt` with `i` and `text`, so two images with
/// different `text` share no blob. Returns the manifest digest.
pub fn make_oci_layout_layers(dir: &Path, tag: &str, text: &str, layers: usize) -> String {
    assert!(layers >= 1, "an image needs a layer");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("creating blobs dir");
    let put = |data: &[u8]| -> (String, usize) {
        let hex = sha256_hex(data);
        std::fs::write(blobs.join(&hex), data).expect("writing blob");
        (format!("sha256:{hex}"), data.len())
    };

    let (mut diff_ids, mut descriptors) = (Vec::new(), Vec::new());
    for i in 0..layers {
        let (layer, diff_id) = if i == 0 {
            tar_gz_layer("hello.txt", text)
        } else {
            tar_gz_layer(&format!("layer-{i}.txt"), &format!("{i} {text}"))
        };
        let (digest, size) = put(&layer);
        diff_ids.push(diff_id);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size}));
    }

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).expect("encoding config");
    let (config_digest, config_size) = put(&config_bytes);

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("encoding manifest");
    let (manifest_digest, manifest_size) = put(&manifest_bytes);

    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("writing index.json");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    manifest_digest
}

/// A directory removed at drop, kept when REGIMAGE_KEEP_TEST_DIRS is set (for debugging).
pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating temp dir");
    if std::env::var_os("REGIMAGE_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// `cmd` run under `prefix` (e.g. `ip netns exec NAME`), keeping its environment and
/// working directory.
pub fn wrapped(prefix: &[&str], cmd: &Command) -> Command {
    let mut wrapped = Command::new(prefix[0]);
    wrapped
        .args(&prefix[1..])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// `path` as a String, for command arguments and substitutions.
pub fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Joins a path under `base`.
pub fn p(base: &Path, rel: &str) -> PathBuf {
    base.join(rel)
}

/// Prints a command's output (cargo test shows it for a failing test) and returns stdout.
pub fn print_run(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "--- {what}: {}\n{stdout}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
