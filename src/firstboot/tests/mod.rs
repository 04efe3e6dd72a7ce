//! First boot end to end against the recording fake and a temporary root: a clean run,
//! a second run that changes nothing, a kill after every step and before every change
//! followed by a rerun that ends where a clean run ends, dry runs, a wrong image digest,
//! and health failures.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fake::{FakeState, FakeSystem};
use super::status::StepResult;
use super::steps::{Ctx, IMAGE_ARCHIVE_PATH, MIGRATE_PENDING_PATH, UFW_RELOAD_PENDING_PATH};
use super::system::{Manager, UserInfo};
use super::ufw::UfwCommand;
use super::*;
use crate::oci_archive::PinMismatch;

mod calls;
mod cluster;
mod crash;
mod dry_run;
mod edges;
mod existing;
mod health;
mod image;
mod modes;

/// A tiny OCI archive (`oci-layout`, `index.json`, blobs) of one linux/amd64 image.
struct TestArchive {
    bytes: Vec<u8>,
    /// `sha256:...` of the manifest blob: what registry.image pins.
    amd64_manifest: String,
    /// `sha256:...` of the config: Podman's image ID after loading.
    amd64_config: String,
}

fn test_archive() -> TestArchive {
    use sha2::{Digest, Sha256};
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let layer = b"not really a layer".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        digest(&config),
        config.len(),
        digest(&layer),
        layer.len()
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}]}}"#,
        digest(&manifest),
        manifest.len()
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), index.as_bytes());
    for blob in [&layer, &config, &manifest] {
        let name = digest(blob);
        add(
            format!("blobs/sha256/{}", name.trim_start_matches("sha256:")),
            blob,
        );
    }
    TestArchive {
        bytes: tar.into_inner().unwrap(),
        amd64_manifest: digest(&manifest),
        amd64_config: digest(&config),
    }
}

struct Machine {
    dir: tempfile::TempDir,
    fake: FakeSystem,
    config: Config,
    archive: TestArchive,
}

impl Machine {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, target: &str) -> PathBuf {
        fsutil::under_root(self.root(), Path::new(target))
    }

    fn run_with(&self, opts: &Options) -> Result<Status> {
        run_system(&self.fake, self.root(), &self.config, opts)
    }

    fn run(&self) -> Result<Status> {
        self.run_with(&opts())
    }

    fn mutations(&self) -> Vec<String> {
        self.fake.mutations.borrow().clone()
    }

    fn user(&self, name: &str) -> UserInfo {
        self.fake.state.borrow().users[name].clone()
    }
}

fn opts() -> Options {
    Options {
        dry_run: false,
        health_timeout: Duration::from_secs(180),
        network_timeout: Duration::from_secs(120),
    }
}

/// A machine as the image leaves it: sshd on port 2222 (as the fake's `sshd -T` says), the
/// units installed (the fake's managers know them), and, with `with_archive`, the baked
/// registry image.
fn machine(with_archive: bool) -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let archive = test_archive();
    if with_archive {
        let state = root.join("var/lib/regimage");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            root.join("var/lib/regimage/registry-image.oci.tar"),
            &archive.bytes,
        )
        .unwrap();
    }
    let pinned = format!("docker.io/library/registry@{}", archive.amd64_manifest);
    let config = Config {
        clients: vec!["ci".into(), "laptop".into()],
        push_allowed_cidrs: vec![
            "10.0.0.0/8".into(),
            "192.168.0.0/16".into(),
            "fd00::/8".into(),
        ],
        registry: crate::config::Registry {
            image: pinned.clone(),
            ..Default::default()
        },
        ..Config::default()
    };
    let fake = FakeSystem::new(root);
    *fake.ssh_ports.borrow_mut() = Some(vec![2222]);
    *fake.load_yields.borrow_mut() = archive
        .amd64_config
        .trim_start_matches("sha256:")
        .to_string();
    fake.registry_images
        .borrow_mut()
        .insert(pinned, "f00d".repeat(16));
    Machine {
        dir,
        fake,
        config,
        archive,
    }
}

/// A file's content in a snapshot; made-at-random files can be masked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Dir,
    Bytes(Vec<u8>),
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    files: BTreeMap<String, (u32, Content)>,
    fake: FakeState,
}

/// Files whose bytes are new on every machine: keys, certificates, bundles made from them,
/// the registry secret, and the status file (times and durations).
fn is_random(rel: &str) -> bool {
    rel.starts_with("etc/registry/certs/")
        || rel.ends_with(".tar.gz")
        || rel == "etc/registry/registry.env"
        || rel.ends_with("status.json")
        // Serials of the certificates.
        || rel == "var/lib/regimage/clients.json"
}

fn snapshot(m: &Machine, mask_random: bool) -> Snapshot {
    let mut files = BTreeMap::new();
    let mut stack = vec![m.root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(m.root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let content = if meta.is_dir() {
                stack.push(path.clone());
                Content::Dir
            } else if mask_random && is_random(&rel) {
                Content::Random
            } else {
                Content::Bytes(std::fs::read(&path).unwrap())
            };
            files.insert(rel, (mode, content));
        }
    }
    Snapshot {
        files,
        fake: m.fake.state.borrow().clone(),
    }
}

fn clean_snapshot() -> Snapshot {
    let m = machine(true);
    m.run().unwrap();
    snapshot(&m, true)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn clean_run_makes_a_ready_machine() {
    let m = machine(true);
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    let names: Vec<&str> = status.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, STEPS.map(|(n, _)| n));
    assert!(status.steps.iter().all(|s| s.result != StepResult::Failed));
    assert_eq!(status.primary_name, "reg1.example.test");
    assert_eq!(status.endpoints.pull, "https://reg1.example.test/");
    assert_eq!(status.endpoints.push, "https://reg1.example.test:4443/");

    let registry = m.user("registry");
    let proxy = m.user("registry-proxy");
    assert_eq!(registry.home, Path::new("/nonexistent"));
    assert_eq!(registry.shell, Path::new("/usr/sbin/nologin"));
    for file in ["etc/subuid", "etc/subgid"] {
        assert_eq!(
            std::fs::read_to_string(m.root().join(file)).unwrap(),
            "registry:100000:65536\n"
        );
        assert_eq!(mode(&m.root().join(file)), 0o644);
    }
    assert!(!m.path(MIGRATE_PENDING_PATH).exists());
    assert_eq!(m.fake.migrations.get(), 1);

    let state = m.fake.state.borrow();
    assert!(state.linger.contains(&registry.uid));
    for key in [
        (Manager::User(registry.uid), "registry.service"),
        (Manager::System, "registry-proxy.service"),
        // Day 2: renewals run daily from first boot on (issue 11).
        (Manager::System, steps::RENEW_TIMER_UNIT),
    ] {
        let unit = &state.units[&(key.0, key.1.to_string())];
        assert!(unit.enabled && unit.active, "{key:?}: {unit:?}");
    }
    assert_eq!(
        Path::new(render::RENEW_TIMER_PATH).file_name().unwrap(),
        steps::RENEW_TIMER_UNIT
    );
    // Firewall: sshd's port, pulls, pushes per network, never the registry; on.
    let ufw = &state.ufw;
    assert!(ufw.enabled);
    assert!(ufw
        .rules
        .iter()
        .any(|r| r.opens_port(2222) && r.src == "0.0.0.0/0"));
    assert!(
        !ufw.rules.iter().any(|r| r.opens_port(22)),
        "sshd moved to 2222"
    );
    assert!(ufw
        .rules
        .iter()
        .any(|r| r.opens_port(443) && r.src == "::/0"));
    let push: Vec<&str> = ufw
        .rules
        .iter()
        .filter(|r| r.opens_port(4443))
        .map(|r| r.src.as_str())
        .collect();
    assert_eq!(push, ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]);
    assert!(!ufw.rules.iter().any(|r| r.opens_port(5000)));
    // The verified image carries the tag the unit runs.
    let images = &state.images[&registry.uid];
    let tagged: Vec<_> = images
        .iter()
        .filter(|i| i.has_name(render::REGISTRY_IMAGE_TAG))
        .collect();
    assert_eq!(tagged.len(), 1);
    assert_eq!(format!("sha256:{}", tagged[0].id), m.archive.amd64_config);
    let image = status.image.clone().unwrap();
    assert_eq!(
        (image.id.as_str(), image.source.as_str()),
        (m.archive.amd64_config.as_str(), "archive")
    );

    // Owners and modes.
    let owner = |rel: &str| state.owners.get(Path::new(rel)).copied();
    for rel in [
        "var/lib/registry-podman",
        "var/lib/registry-podman/root",
        "var/lib/registry-podman/tmp",
        "var/lib/registry-podman/xdg-data",
        "var/lib/registry-podman/xdg-config",
    ] {
        assert_eq!(owner(rel), Some((registry.uid, registry.gid)), "{rel}");
        assert_eq!(mode(&m.root().join(rel)), 0o700, "{rel}");
    }
    assert_eq!(
        owner("var/lib/registry"),
        Some((registry.uid, registry.gid))
    );
    assert_eq!(mode(&m.path("/var/lib/registry")), 0o750);
    assert_eq!(owner("etc/registry/registry.env"), Some((0, registry.gid)));
    assert_eq!(mode(&m.path("/etc/registry/registry.env")), 0o640);
    let env = std::fs::read_to_string(m.path("/etc/registry/registry.env")).unwrap();
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("REGISTRY_HTTP_SECRET="))
        .unwrap();
    assert!(
        secret.len() == 64 && secret.chars().all(|c| c.is_ascii_hexdigit()),
        "{env}"
    );
    for rel in [
        "etc/registry/certs/private",
        "etc/registry/certs/private/registry.pem",
        "etc/registry/certs/clients/ca.crt",
    ] {
        assert_eq!(owner(rel), Some((0, proxy.gid)), "{rel}");
    }
    assert_eq!(
        owner("etc/registry/certs/private/ca.key"),
        None,
        "stays root's"
    );
    drop(state);

    // Output: bundles, status, marker; root-only state.
    assert_eq!(mode(&m.path("/var/lib/regimage")), 0o700);
    assert_eq!(mode(&m.path("/var/lib/regimage/out")), 0o700);
    for client in ["ci", "laptop"] {
        assert_eq!(
            mode(&m.path(&format!("/var/lib/regimage/out/{client}.tar.gz"))),
            0o600
        );
    }
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.path("/var/lib/regimage/out/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["steps"].as_array().unwrap().len(), STEPS.len());
    let pki = &json["steps"][2];
    assert_eq!(pki["name"], "pki");
    assert!(pki["duration_ms"].is_u64());
    assert_eq!(pki["result"], "changed");
    // host-identity only looks: no empty "changes" list, and a ready run has no "error".
    assert_eq!(json["steps"][0]["name"], "host-identity");
    assert!(json["steps"][0].get("changes").is_none(), "{json:#}");
    assert!(json.get("error").is_none(), "{json:#}");
    assert_eq!(json["image"]["id"], m.archive.amd64_config.as_str());
    let certs = json["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 5, "2 CAs, the server, 2 clients");
    assert!(certs
        .iter()
        .all(|c| c["sha256"].as_str().unwrap().len() == 95 && c["not_after"].is_string()));
    assert!(m.path(render::FIRSTBOOT_DONE_PATH).is_file());
    // The server CA's fingerprint, as the bundle README asks clients to compare it: the
    // SHA-256 of the DER of ca/ca.crt, in status.json and on the console (issue 11).
    let ca_pem = std::fs::read(crate::pki::PkiPaths::new(m.root()).ca_cert).unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let ca_sha256 = pki::fingerprint(&ca.contents);
    assert_eq!(ca_sha256.len(), 95);
    assert_eq!(json["server_ca_sha256"], ca_sha256.as_str());
    assert_eq!(status.server_ca_sha256, ca_sha256);
    assert_eq!(
        ready_line(&m.config, &status),
        format!(
            "regimage: registry ready: pull https://reg1.example.test/ push https://reg1.example.test:4443/ \
             server CA SHA-256 {ca_sha256} bundles in /var/lib/regimage/out"
        )
    );
    // The archive stays for a later run.
    assert_eq!(
        std::fs::read(m.path(IMAGE_ARCHIVE_PATH)).unwrap(),
        m.archive.bytes
    );
}

#[test]
fn order_of_system_calls_is_safe() {
    let m = machine(true);
    m.run().unwrap();
    let calls = m.mutations();
    let pos = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} never called: {calls:#?}"))
    };
    // Linger and the user manager before anything rootless; migrate before the image.
    assert!(pos("enable_linger") < pos("start_unit System user@"));
    assert!(pos("start_unit System user@") < pos("podman_migrate"));
    assert!(pos("podman_migrate") < pos("podman_load"));
    assert!(pos("podman_load") < pos("podman_tag"));
    // Every rule in one write of ufw's files (SSH first), then one ufw start: enable.
    let ufw: Vec<&String> = calls.iter().filter(|c| c.starts_with("ufw")).collect();
    assert_eq!(ufw.len(), 2, "{ufw:#?}");
    assert!(
        ufw[0].starts_with(
            "ufw_write_rules allow TCP port 2222 from anywhere, allow TCP port 443 from anywhere"
        ),
        "{ufw:#?}"
    );
    assert_eq!(ufw[1], "ufw --force enable");
    let last_ufw = pos("ufw --force enable");
    assert!(pos("ufw_write_rules") < last_ufw);
    let state = m.fake.state.borrow();
    assert_eq!(
        state.ufw_live, state.ufw.rules,
        "the running firewall has the rules"
    );
    drop(state);
    // Services after the image and the firewall.
    assert!(pos("podman_tag") < pos("start_unit User"));
    assert!(last_ufw < pos("start_unit User"));
    // The renew timer enabled and started in the system manager, after the proxy.
    let timer = steps::RENEW_TIMER_UNIT;
    assert!(
        pos("start_unit System registry-proxy.service")
            < pos(&format!("enable_unit System {timer}"))
    );
    assert!(
        pos(&format!("enable_unit System {timer}")) < pos(&format!("start_unit System {timer}"))
    );
}

#[test]
fn second_run_changes_nothing() {
    let m = machine(true);
    let first = m.run().unwrap();
    let before = snapshot(&m, false);
    let mutations = m.mutations().len();
    let second = m.run().unwrap();
    assert!(second.ready);
    // Nothing at all: no ufw write, no reload.
    assert_eq!(
        m.mutations().len(),
        mutations,
        "{:#?}",
        &m.mutations()[mutations..]
    );
    for step in &second.steps {
        assert_eq!(step.result, StepResult::Unchanged, "{step:#?}");
    }
    let mut after = snapshot(&m, false);
    // Only the status file is rewritten (its times); everything else byte for byte.
    let status_rel = "var/lib/regimage/out/status.json".to_string();
    after
        .files
        .insert(status_rel.clone(), before.files[&status_rel].clone());
    assert_eq!(after, before);
    let fps = |s: &Status| {
        s.certificates
            .iter()
            .map(|c| c.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(fps(&first), fps(&second));
    assert_eq!(m.fake.migrations.get(), 1);
}

/// A single-label name keeps :443 in every name clients see: status.json, the console line,
/// the bundles' certs.d directories and README; the README copies bundles off as the cloud
/// image's default user found on the machine.
#[test]
fn single_label_name_keeps_443_for_clients() {
    let mut m = machine(true);
    m.config.hostname = Some("vm".into());
    std::fs::write(
        m.path("/etc/os-release"),
        "NAME=\"Debian GNU/Linux\"\nID=debian\n",
    )
    .unwrap();
    std::fs::write(
        m.path("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\n",
    )
    .unwrap();
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    assert_eq!(status.primary_name, "vm");
    assert_eq!(status.endpoints.pull, "https://vm:443/");
    assert_eq!(status.endpoints.push, "https://vm:4443/");
    assert_eq!(
        ready_line(&m.config, &status),
        format!(
            "regimage: registry ready: pull https://vm:443/ push https://vm:4443/ server CA \
             SHA-256 {} bundles in /var/lib/regimage/out",
            status.server_ca_sha256
        )
    );
    let bundle = std::fs::read(m.path("/var/lib/regimage/out/ci.tar.gz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bundle[..]));
    let mut names = Vec::new();
    let mut readme = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "ci/README.md" {
            std::io::Read::read_to_string(&mut entry, &mut readme).unwrap();
        }
        names.push(name);
    }
    for tool in ["containers", "docker", "containerd"] {
        for dir in ["vm:443", "vm:4443"] {
            let want = format!("ci/{tool}/certs.d/{dir}/ca.crt");
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
    }
    for line in [
        "ssh debian@vm sudo cat /var/lib/regimage/out/ci.tar.gz > ci.tar.gz",
        "podman pull vm:443/ci/myimage:1.0",
        "docker push vm:4443/ci/myimage:1.0",
    ] {
        assert!(readme.contains(line), "{line:?} not in:\n{readme}");
    }
}
