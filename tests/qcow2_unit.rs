//! `regimage build qcow2` and `regimage fetch-image` without a real VM or network.
//!
//! A shell script stands in for qemu-system-x86_64 (REGIMAGE_QEMU_SYSTEM): it records the
//! seed and the payload drive it was given, writes a console log like a guest's, writes into
//! the overlay with qemu-io, and exits, fails, or hangs. Everything else is real: qemu-img,
//! genisoimage, the OCI archive check, the conversion, the signals. The Ubuntu base download
//! is tested against an HTTP server on 127.0.0.1. The real bake (a TCG VM, 10-20 minutes) is
//! run by hand; see the report of issue 4.

// Integration tests are test code throughout; a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{make_oci_layout, output, regimage, require_tool, s, test_dir};
use regimage::cloudinit::{BAKE_DONE_STEP, BAKE_FAILED_STEP, BAKE_PROGRESS_PREFIX};
use regimage::distro::CloudImage;
use regimage::qcow2::base::{ensure_cloud_image, CachedBase};
use regimage::qcow2::progress::Progress;
use sha2::{Digest, Sha256};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn tools() {
    require_tool("qemu-img", "qemu-utils");
    require_tool("qemu-io", "qemu-utils");
    require_tool("genisoimage", "genisoimage");
    require_tool("isoinfo", "genisoimage");
}

/// An oci-archive of a tiny image (tests/common's layout, tarred as skopeo would).
fn make_archive(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
    let layout = dir.join(format!("{name}-layout"));
    let digest = make_oci_layout(&layout, "docker.io/library/registry:2", text);
    let path = dir.join(format!("{name}.oci.tar"));
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    (path, digest)
}

fn write_config(dir: &Path, digest: &str) -> PathBuf {
    let path = dir.join("regimage.yaml");
    fs::write(
        &path,
        format!("registry:\n  image: localhost/regimage/registry@{digest}\n"),
    )
    .unwrap();
    path
}

fn make_base(dir: &Path, format: &str) -> PathBuf {
    let path = dir.join(format!("base.{format}"));
    let out = output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", format])
            .arg(&path)
            .arg("64M"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Something to keep: a pattern the overlay must still show after the bake.
    let out = output(
        Command::new("qemu-io")
            .args(["-f", format, "-c", "write -P 0x11 0 64k"])
            .arg(&path),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    path
}

/// The stand-in for qemu-system-x86_64; FAKE_MODE picks what the "guest" does.
fn fake_qemu(dir: &Path) -> PathBuf {
    let record = dir.join("record");
    fs::create_dir_all(&record).unwrap();
    let script = format!(
        r#"#!/bin/sh
rec='{rec}'
serial= overlay= seed= payload= kvm=no
for a in "$@"; do
  case "$a" in
    file:*) serial="${{a#file:}}" ;;
    if=none,id=disk0,file=*) overlay=$(echo "$a" | sed 's/^if=none,id=disk0,file=\([^,]*\),.*/\1/') ;;
    if=none,id=seed,file=*) seed=$(echo "$a" | sed 's/^if=none,id=seed,file=\([^,]*\),.*/\1/') ;;
    if=none,id=payload,file=*) payload=$(echo "$a" | sed 's/^if=none,id=payload,file=\([^,]*\),.*/\1/') ;;
    kvm) kvm=yes ;;
  esac
done
echo "$@" >> "$rec/args"
echo $$ > "$rec/pid"
cp "$seed" "$rec/seed.iso"
cp "$payload" "$rec/payload.img"
if [ "$FAKE_MODE" = kvmfail ] && [ "$kvm" = yes ]; then
  echo "KVM internal error. Suberror: 1" >&2
  exec sleep 600
fi
case "$FAKE_MODE" in
  success|kvmfail)
    printf '[    0.0] Linux version 6.12.0 (fake)\r\n{prefix}booted\r\n' > "$serial"
    qemu-io -f qcow2 -c 'write -P 0x5a 1M 64k' "$overlay" >/dev/null || exit 3
    printf '{prefix}{done}\r\n' >> "$serial"
    exit 0 ;;
  fail)
    i=0; while [ $i -lt 40 ]; do echo "console line $i"; i=$((i+1)); done > "$serial"
    echo "{prefix}{failed}: packages not installed: podman" >> "$serial"
    exit 0 ;;
  hang)
    printf 'Linux version 6.12.0 (fake)\n{prefix}installing\n' > "$serial"
    exec sleep 600 ;;
  panic)
    printf 'Linux version 6.12.0 (fake)\n{prefix}installing\n' > "$serial"
    printf '[   96.7] Kernel panic - not syncing: Fatal exception in interrupt\r\n' >> "$serial"
    exec sleep 600 ;;
esac
exit 9
"#,
        rec = s(&record),
        prefix = BAKE_PROGRESS_PREFIX,
        done = BAKE_DONE_STEP,
        failed = BAKE_FAILED_STEP,
    );
    let path = dir.join("fake-qemu");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    archive: PathBuf,
    digest: String,
    qemu: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        tools();
        let dir = test_dir("regimage-qcow2-");
        let (archive, digest) = make_archive(dir.path(), "registry", "hello");
        let config = write_config(dir.path(), &digest);
        let qemu = fake_qemu(dir.path());
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        let out = out_dir.join("appliance.qcow2");
        Setup {
            dir,
            config,
            archive,
            digest,
            qemu,
            out,
        }
    }

    fn record(&self, name: &str) -> PathBuf {
        self.dir.path().join("record").join(name)
    }

    fn command(&self, base: &Path, mode: &str, extra: &[&str]) -> Command {
        let mut cmd = regimage();
        cmd.args(["build", "qcow2", "--distro", "debian-13", "-c"])
            .arg(&self.config)
            .arg("--base")
            .arg(base)
            .arg("--registry-archive")
            .arg(&self.archive)
            .arg("-o")
            .arg(&self.out)
            .args(extra)
            .env("REGIMAGE_QEMU_SYSTEM", &self.qemu)
            .env("FAKE_MODE", mode)
            .env_remove("REGIMAGE_KVM_DEVICE");
        cmd
    }

    /// Nothing at the output path, and no temporary directory left beside it.
    fn assert_no_output(&self) {
        assert!(!self.out.exists(), "{} exists", self.out.display());
        let leftovers: Vec<String> = fs::read_dir(self.out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".serial.log"))
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }

    fn fake_pid_is_dead(&self) -> bool {
        let pid = fs::read_to_string(self.record("pid")).unwrap();
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    }
}

fn fingerprint(path: &Path) -> (String, i64, i64) {
    let meta = fs::metadata(path).unwrap();
    (
        sha_hex(&fs::read(path).unwrap()),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = output(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(path),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn qemu_io_reads(path: &Path, pattern: &str, offset: &str) -> bool {
    let out = output(
        Command::new("qemu-io")
            .args([
                "-r",
                "-f",
                "qcow2",
                "-c",
                &format!("read -P {pattern} {offset} 64k"),
            ])
            .arg(path),
    );
    out.status.success() && !text(&out.stdout).contains("Pattern verification failed")
}

fn iso_file(iso: &Path, name: &str) -> String {
    let out = output(
        Command::new("isoinfo")
            .args(["-R", "-i"])
            .arg(iso)
            .args(["-x", &format!("/{name}")]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn bake_writes_a_flat_compressed_image_and_never_touches_the_base() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let before = fingerprint(&base);
    let out = output(&mut t.command(&base, "success", &["--accel", "tcg"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout is for data only");

    // The output: qcow2, no backing file, the base's data and the guest's writes.
    let info = qemu_img_info(&t.out);
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"], 4u64 * 1024 * 1024 * 1024);
    assert!(qemu_io_reads(&t.out, "0x11", "0"));
    assert!(qemu_io_reads(&t.out, "0x5a", "1M"));
    assert_eq!(fs::metadata(&t.out).unwrap().mode() & 0o777, 0o644);
    // The base: same bytes, same mtime.
    assert_eq!(fingerprint(&base), before);
    // No temporary directory left; the console log kept beside the output.
    let serial = PathBuf::from(format!("{}.serial.log", s(&t.out)));
    assert!(fs::read_to_string(&serial)
        .unwrap()
        .contains(BAKE_DONE_STEP));
    let names: Vec<String> = fs::read_dir(t.out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // The summary: size and each stage's time.
    for needed in [
        "prepare",
        "boot+bake",
        "convert",
        "wrote ",
        "(tcg)",
        &t.digest,
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing in:\n{stderr}");
    }
    let args = fs::read_to_string(t.record("args")).unwrap();
    assert!(args.contains("-accel tcg,thread=multi -cpu max"), "{args}");
    assert!(!args.contains("kvm"));

    // The seed the guest got: a bake-mode cloud-config for this archive.
    let seed = t.record("seed.iso");
    let user_data = iso_file(&seed, "user-data");
    assert!(user_data.starts_with("#cloud-config\n"));
    assert!(user_data.contains("bootcmd:"));
    let archive = fs::read(&t.archive).unwrap();
    // The payload script reads the archive's extent of this drive from its environment.
    for needed in [
        "\"REGIMAGE_PAYLOAD_DEVICE=/dev/disk/by-id/virtio-regimage-payload\"".to_string(),
        "\"REGIMAGE_ARCHIVE_OFFSET=0\"".into(),
        format!("\"REGIMAGE_ARCHIVE_SIZE={}\"", archive.len()),
    ] {
        assert!(user_data.contains(&needed), "{needed} missing");
    }
    assert!(user_data.contains(&sha_hex(&archive)));
    assert!(iso_file(&seed, "meta-data").starts_with("instance-id: regimage-bake-"));
    // The payload drive: the archive, then the binary that ran the build, each from a
    // sector boundary, zero-padded to whole sectors.
    let drive = fs::read(t.record("payload.img")).unwrap();
    assert_eq!(drive.len() % 512, 0);
    assert_eq!(&drive[..archive.len()], &archive[..]);
    let offset = archive.len().div_ceil(512) * 512;
    assert!(drive[archive.len()..offset].iter().all(|&b| b == 0));
    let binary = fs::read(env!("CARGO_BIN_EXE_regimage")).unwrap();
    assert_eq!(&drive[offset..offset + binary.len()], &binary[..]);
    assert!(drive[offset + binary.len()..].iter().all(|&b| b == 0));
    assert!(user_data.contains(&format!("\"REGIMAGE_BINARY_OFFSET={offset}\"")));
    assert!(user_data.contains(&format!("\"REGIMAGE_BINARY_SIZE={}\"", binary.len())));
    assert!(user_data.contains(&sha_hex(&binary)));
    // The seed stays small: cloud-init parses it in every stage.
    assert!(user_data.len() < 64 * 1024, "{}", user_data.len());
}

#[test]
fn a_raw_base_works_and_kvm_failure_falls_back_to_tcg() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "raw");
    let before = fingerprint(&base);
    // /dev/null opens read-write: `auto` believes KVM is there and tries it first.
    let out = output(
        t.command(&base, "kvmfail", &[])
            .env("REGIMAGE_KVM_DEVICE", "/dev/null"),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("KVM failed to start the VM"), "{stderr}");
    assert!(stderr.contains("falling back to TCG"), "{stderr}");
    assert!(stderr.contains("--accel tcg"), "{stderr}");
    let args = fs::read_to_string(t.record("args")).unwrap();
    let runs: Vec<&str> = args.lines().collect();
    assert_eq!(runs.len(), 2, "{args}");
    assert!(runs[0].contains("-accel kvm -cpu host"));
    assert!(runs[1].contains("-accel tcg,thread=multi"));
    assert!(qemu_io_reads(&t.out, "0x11", "0"));
    assert_eq!(fingerprint(&base), before);
}

#[test]
fn forced_kvm_failure_fails_with_the_way_out() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let out = output(
        t.command(&base, "kvmfail", &["--accel", "kvm"])
            .env("REGIMAGE_KVM_DEVICE", "/dev/null"),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("KVM internal error"), "{stderr}");
    assert!(stderr.contains("pass --accel tcg"), "{stderr}");
    assert!(t.fake_pid_is_dead());
    t.assert_no_output();
}

#[test]
fn failed_bake_shows_the_console_tail_and_writes_nothing() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let out = output(&mut t.command(&base, "fail", &["--accel", "tcg"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the guest reported: FAILED: packages not installed: podman"),
        "{stderr}"
    );
    assert!(stderr.contains("last 30 lines"), "{stderr}");
    assert!(stderr.contains("console line 39") && !stderr.contains("console line 10\n"));
    assert!(
        stderr.contains(&format!("{}.serial.log", s(&t.out))),
        "{stderr}"
    );
    t.assert_no_output();
}

#[test]
fn timeout_stops_the_vm_and_writes_nothing() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let started = Instant::now();
    let out = output(&mut t.command(&base, "hang", &["--accel", "tcg", "--timeout", "3"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("within --timeout 3 s"), "{stderr}");
    assert!(
        stderr.contains("the guest's last step: installing"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(t.fake_pid_is_dead(), "the VM was not stopped");
    t.assert_no_output();
}

#[test]
fn kernel_panic_stops_the_vm_at_once_and_writes_nothing() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    // The default timeout is far away: the panic line, not the deadline, ends the bake.
    let out = output(&mut t.command(&base, "panic", &["--accel", "tcg"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the guest's kernel panicked ([   96.7] Kernel panic - not syncing"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was"), "{stderr}");
    assert!(t.fake_pid_is_dead(), "the VM was not stopped");
    // One vCPU under TCG (see qemu::vcpus).
    let args = fs::read_to_string(t.record("args")).unwrap();
    assert!(args.contains("-smp 1 "), "{args}");
    t.assert_no_output();
}

#[test]
fn sigint_stops_the_vm_and_leaves_no_partial_output() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let mut child = t
        .command(&base, "hang", &["--accel", "tcg"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the VM to be running (embedding the binary takes seconds in debug builds).
    let deadline = Instant::now() + Duration::from_secs(180);
    while !t.record("pid").exists() {
        assert!(Instant::now() < deadline, "the VM never started");
        assert!(child.try_wait().unwrap().is_none(), "regimage ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let kill = output(Command::new("kill").args(["-INT", &child.id().to_string()]));
    assert!(kill.status.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(t.fake_pid_is_dead(), "the VM was not stopped");
    t.assert_no_output();
}

#[test]
fn an_archive_of_another_image_is_refused_before_any_vm() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let (other, other_digest) = make_archive(t.dir.path(), "other", "not the pinned one");
    assert_ne!(other_digest, t.digest);
    fs::copy(&other, &t.archive).unwrap();
    let out = output(&mut t.command(&base, "success", &["--accel", "tcg"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&other_digest) && stderr.contains(&t.digest),
        "{stderr}"
    );
    assert!(stderr.contains("fetch-image"), "{stderr}");
    assert!(!t.record("args").exists(), "a VM was started");
    t.assert_no_output();
}

#[test]
fn usage_errors_come_before_any_work() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let (c, b, a, o) = (s(&t.config), s(&base), s(&t.archive), s(&t.out));
    let qcow2 = ["build", "qcow2", "-c", &c];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--registry-archive", &a, "-o", &o], "--base"),
        (vec!["--base", &b, "-o", &o], "--registry-archive"),
        (
            vec!["--base", &b, "--registry-archive", &a, "-o", "-"],
            "standard output",
        ),
        (
            vec![
                "--base",
                &b,
                "--registry-archive",
                &a,
                "-o",
                &o,
                "--max-size",
                "ec2",
            ],
            "--max-size",
        ),
        (
            vec![
                "--base",
                "ubuntu-24.04",
                "--distro",
                "debian-13",
                "--registry-archive",
                &a,
                "-o",
                &o,
            ],
            "--distro ubuntu-24.04",
        ),
        (
            vec![
                "--base",
                "/nonexistent.qcow2",
                "--registry-archive",
                &a,
                "-o",
                &o,
            ],
            "no such file",
        ),
        (
            vec![
                "--base",
                &b,
                "--registry-archive",
                "/nonexistent.tar",
                "-o",
                &o,
            ],
            "no such file",
        ),
    ];
    for (args, needle) in cases {
        let out = output(regimage().args(qcow2).args(&args));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
    // qcow2 flags with user-data are refused, not ignored, in either spelling.
    for spelling in [&["build"][..], &["build", "--format", "user-data"]] {
        let out =
            output(
                regimage()
                    .args(spelling)
                    .args(["-o", &o, "--accel", "tcg", "--timeout", "9"]),
            );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("unexpected argument '--accel'"), "{stderr}");
    }
    // The old spelling still bakes-or-refuses like the new one: here, the same refusal.
    let old = [
        "build", "--format", "qcow2", "-c", &c, "--base", &b, "-o", &o,
    ];
    let out = output(regimage().args(old));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--registry-archive"), "{stderr}");
    // clap's own range checks.
    for bad in [["--memory", "512"], ["--timeout", "0"]] {
        let out = output(regimage().args(qcow2).args(bad));
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    t.assert_no_output();
}

// ---- the official base: download, verify, cache ------------------------------------

/// A one-thread HTTP/1.1 server on 127.0.0.1 serving fixed files; counts requests per path.
struct Server {
    url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start() -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/noble/current/", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (f, h) = (Arc::clone(&files), Arc::clone(&hits));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = text(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                *h.lock().unwrap().entry(name.clone()).or_default() += 1;
                let body = f.lock().unwrap().get(&name).cloned();
                let _ = match body {
                    Some(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&body)),
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        Server { url, files, hits }
    }

    fn put(&self, name: &str, body: &[u8]) {
        self.files
            .lock()
            .unwrap()
            .insert(name.into(), body.to_vec());
    }

    fn hits(&self, name: &str) -> usize {
        self.hits.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

const IMAGE: CloudImage = CloudImage {
    base_url: "https://unused.invalid/",
    file: "noble-server-cloudimg-amd64.img",
    sha256sums: "SHA256SUMS",
};

fn ensure(server: &Server, cache: &Path) -> anyhow::Result<CachedBase> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut progress = Progress::with_tty(false);
    ensure_cloud_image(&IMAGE, Some(&server.url), cache, &flag, &mut progress)
}

fn cache_entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn official_base_is_verified_cached_reverified_and_refetched() {
    let dir = test_dir("regimage-base-");
    let cache = dir.path().join("cache/regimage/bases");
    let server = Server::start();
    let image = b"stand-in for the noble cloud image".repeat(1000);
    let sums = format!(
        "{} *noble-server-cloudimg-amd64.tar.gz\n{} *noble-server-cloudimg-amd64.img\n",
        "0".repeat(64),
        sha_hex(&image)
    );
    server.put("SHA256SUMS", sums.as_bytes());
    server.put("noble-server-cloudimg-amd64.img", &image);

    // First use: downloaded, verified, renamed into the cache.
    let got = ensure(&server, &cache).unwrap();
    assert!(got.downloaded);
    assert_eq!(got.sha256, sha_hex(&image));
    assert_eq!(fs::read(&got.path).unwrap(), image);
    assert_eq!(
        cache_entries(&cache),
        vec!["noble-server-cloudimg-amd64.img"]
    );
    assert_eq!(server.hits("noble-server-cloudimg-amd64.img"), 1);

    // Second use: the cached copy verifies against a fresh SHA256SUMS; no download.
    let got = ensure(&server, &cache).unwrap();
    assert!(!got.downloaded);
    assert_eq!(server.hits("noble-server-cloudimg-amd64.img"), 1);
    assert_eq!(server.hits("SHA256SUMS"), 2);

    // A damaged cached copy is removed and fetched again.
    fs::write(&got.path, b"damaged").unwrap();
    let got = ensure(&server, &cache).unwrap();
    assert!(got.downloaded);
    assert_eq!(fs::read(&got.path).unwrap(), image);
    assert_eq!(server.hits("noble-server-cloudimg-amd64.img"), 2);

    // A download that does not match is not kept, not even under a temporary name.
    let newer = b"a newer image, but the mirror serves the wrong bytes".to_vec();
    server.put(
        "SHA256SUMS",
        format!("{} *noble-server-cloudimg-amd64.img\n", sha_hex(&newer)).as_bytes(),
    );
    let e = ensure(&server, &cache).unwrap_err();
    assert!(format!("{e:#}").contains("does not match"), "{e:#}");
    assert!(
        cache_entries(&cache).is_empty(),
        "{:?}",
        cache_entries(&cache)
    );

    // No line for the image, or no SHA256SUMS at all: an error, nothing fetched.
    server.put("SHA256SUMS", b"0000 *other.img\n");
    let e = ensure(&server, &cache).unwrap_err();
    assert!(format!("{e:#}").contains("has no sha256 line"), "{e:#}");
    server.files.lock().unwrap().remove("SHA256SUMS");
    assert!(ensure(&server, &cache).is_err());
    assert_eq!(server.hits("noble-server-cloudimg-amd64.img"), 3);
}

#[test]
fn build_with_base_ubuntu_uses_the_mirror_and_the_cache() {
    let t = Setup::new();
    let base = make_base(t.dir.path(), "qcow2");
    let image = fs::read(&base).unwrap();
    let server = Server::start();
    server.put(
        "SHA256SUMS",
        format!("{} *noble-server-cloudimg-amd64.img\n", sha_hex(&image)).as_bytes(),
    );
    server.put("noble-server-cloudimg-amd64.img", &image);
    let xdg = t.dir.path().join("xdg-cache");
    let mut cmd = regimage();
    cmd.args([
        "build",
        "qcow2",
        "--accel",
        "tcg",
        "--base",
        "ubuntu-24.04",
        "-c",
    ])
    .arg(&t.config)
    .arg("--registry-archive")
    .arg(&t.archive)
    .arg("-o")
    .arg(&t.out)
    .env("REGIMAGE_QEMU_SYSTEM", &t.qemu)
    .env("FAKE_MODE", "success")
    .env("XDG_CACHE_HOME", &xdg)
    .env("REGIMAGE_UBUNTU_BASE_URL", &server.url);
    let out = output(&mut cmd);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let cached = xdg.join("regimage/bases/noble-server-cloudimg-amd64.img");
    assert_eq!(fs::read(&cached).unwrap(), image);
    assert!(qemu_io_reads(&t.out, "0x11", "0"));
    // The overlay was made on the cached file (the fake recorded the drive options).
    assert_eq!(server.hits("noble-server-cloudimg-amd64.img"), 1);
    // The user-data targets Ubuntu: no passt (Podman 4.9 uses slirp4netns).
    let user_data = iso_file(&t.record("seed.iso"), "user-data");
    assert!(user_data.contains("Ubuntu 24.04"), "{}", &user_data[..300]);
}

// ---- fetch-image ------------------------------------------------------------------

fn fake_skopeo(dir: &Path, serve: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
echo "$@" > '{rec}'
for a in "$@"; do
  case "$a" in oci-archive:*) cp '{serve}' "${{a#oci-archive:}}" ;; esac
done
"#,
        rec = s(&dir.join("skopeo-args")),
        serve = s(serve),
    );
    let path = dir.join("fake-skopeo");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn fetch_image_keeps_only_the_pinned_archive() {
    let dir = test_dir("regimage-fetch-");
    let (archive, digest) = make_archive(dir.path(), "registry", "hello");
    let config = write_config(dir.path(), &digest);
    let out_path = dir.path().join("fetched.oci.tar");

    let skopeo = fake_skopeo(dir.path(), &archive);
    let out = output(
        regimage()
            .args(["fetch-image", "-c"])
            .arg(&config)
            .arg("-o")
            .arg(&out_path)
            .env("REGIMAGE_SKOPEO", &skopeo),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(fs::read(&out_path).unwrap(), fs::read(&archive).unwrap());
    let args = fs::read_to_string(dir.path().join("skopeo-args")).unwrap();
    assert!(args.starts_with("copy "), "{args}");
    assert!(args.contains("--preserve-digests"), "{args}");
    assert!(
        args.contains(&format!(
            "docker://localhost/regimage/registry@{digest} oci-archive:"
        )),
        "{args}"
    );
    assert!(stderr.contains(&digest), "{stderr}");

    // skopeo hands back another image: refused, nothing written, no temporary left.
    let (other, _) = make_archive(dir.path(), "other", "something else");
    let skopeo = fake_skopeo(dir.path(), &other);
    let out_path2 = dir.path().join("refused.oci.tar");
    let out = output(
        regimage()
            .args(["fetch-image", "-c"])
            .arg(&config)
            .arg("-o")
            .arg(&out_path2)
            .env("REGIMAGE_SKOPEO", &skopeo),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("registry.image pins"), "{stderr}");
    assert!(!out_path2.exists());
    assert!(!fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".regimage-fetch-")));

    // A failing skopeo (no network) is reported with its stderr.
    let failing = dir.path().join("failing-skopeo");
    fs::write(
        &failing,
        "#!/bin/sh\necho 'dial tcp: lookup registry-1.docker.io: no such host' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).unwrap();
    let out: Output = output(
        regimage()
            .args(["fetch-image", "-c"])
            .arg(&config)
            .arg("-o")
            .arg(&out_path2)
            .env("REGIMAGE_SKOPEO", &failing),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no such host"), "{stderr}");
    assert!(!out_path2.exists());
}

#[test]
fn bake_seed_passes_cloud_init_schema() {
    let cloud_init = Path::new("/usr/bin/cloud-init");
    assert!(cloud_init.exists(), "apt-get install cloud-init");
    let dir = test_dir("regimage-bake-schema-");
    let config = regimage::config::Config::default();
    let files = regimage::build::user_data_files(&config).unwrap();
    let extent = |offset, size, sha: &str| regimage::cloudinit::DriveExtent {
        offset,
        size,
        sha256: sha.repeat(32),
    };
    let (archive, binary) = (extent(0, 7494100, "ab"), extent(7494144, 8_000_000, "cd"));
    let mode = regimage::cloudinit::Mode::Bake {
        archive: &archive,
        binary: &binary,
    };
    for distro in regimage::distro::Distro::all() {
        let ud = regimage::cloudinit::build_user_data_for(&config, &files, distro, mode).unwrap();
        let path = dir.path().join(format!("bake-{distro}"));
        fs::write(&path, &ud.text).unwrap();
        let out = output(
            Command::new(cloud_init)
                .args(["schema", "--config-file"])
                .arg(&path),
        );
        assert!(
            out.status.success(),
            "{distro}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}
