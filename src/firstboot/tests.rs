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
use super::steps::{Ctx, IMAGE_ARCHIVE_PATH, MIGRATE_PENDING_PATH};
use super::system::{Manager, UserInfo};
use super::ufw::UfwCommand;
use super::*;
use crate::oci_archive::PinMismatch;

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
    ] {
        let unit = &state.units[&(key.0, key.1.to_string())];
        assert!(unit.enabled && unit.active, "{key:?}: {unit:?}");
    }
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
        "etc/registry/certs/private/registry.key",
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
    assert_eq!(json["steps"].as_array().unwrap().len(), 9);
    assert!(json["steps"][1]["duration_ms"].is_u64());
    assert_eq!(json["steps"][1]["result"], "changed");
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
    assert_eq!(
        ready_line(&m.config, &status),
        "regimage: registry ready: pull https://reg1.example.test/ push https://reg1.example.test:4443/ bundles in /var/lib/regimage/out"
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
    // SSH is allowed before anything else in ufw, and ufw is enabled last.
    assert!(
        pos("ufw allow in proto tcp from any to any port 2222")
            < pos("ufw allow in proto tcp from any to any port 443")
    );
    let last_ufw = calls.iter().rposition(|c| c.starts_with("ufw ")).unwrap();
    assert_eq!(calls[last_ufw], "ufw --force enable");
    // Services after the image and the firewall.
    assert!(pos("podman_tag") < pos("start_unit User"));
    assert!(last_ufw < pos("start_unit User"));
}

#[test]
fn second_run_changes_nothing() {
    let m = machine(true);
    let first = m.run().unwrap();
    let before = snapshot(&m, false);
    let mutations = m.mutations().len();
    let second = m.run().unwrap();
    assert!(second.ready);
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

#[test]
fn kill_after_any_step_then_rerun_ends_like_a_clean_run() {
    let clean = clean_snapshot();
    for n in 0..=STEPS.len() {
        let m = machine(true);
        {
            let o = opts();
            let mut ctx = Ctx::new(&m.fake, m.root(), &m.config, &o);
            let (_, error) = run_steps(&mut ctx, &STEPS[..n]);
            assert!(error.is_none(), "{error:?}");
        }
        // Killed here: no status file and no marker yet.
        assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
        let status = m.run().unwrap();
        assert!(status.ready);
        assert_eq!(snapshot(&m, true), clean, "killed after {n} steps");
        assert!(m.fake.migrations.get() >= 1);
    }
}

#[test]
fn kill_before_any_change_then_rerun_ends_like_a_clean_run() {
    let reference = machine(true);
    reference.run().unwrap();
    let clean = snapshot(&reference, true);
    let changes = reference.mutations();
    assert!(changes.len() > 20, "{changes:#?}");
    for k in 1..=changes.len() {
        let m = machine(true);
        m.fake.crash_at.set(Some(k));
        let e = m.run().unwrap_err();
        assert!(format!("{e:#}").contains("injected crash"), "{e:#}");
        assert!(
            !m.path(render::FIRSTBOOT_DONE_PATH).exists(),
            "marker after a crash at {k}"
        );
        m.fake.crash_at.set(None);
        let status = m.run().unwrap();
        assert!(status.ready);
        assert_eq!(
            snapshot(&m, true),
            clean,
            "killed before change {k} ({})",
            changes[k - 1]
        );
        assert!(
            m.fake.migrations.get() >= 1,
            "podman system migrate forgotten"
        );
        // No duplicate rules or subuid lines after the crash either.
        let subuid = std::fs::read_to_string(m.path("/etc/subuid")).unwrap();
        assert_eq!(subuid.lines().count(), 1, "{subuid}");
    }
}

#[test]
fn kill_between_ca_key_and_certificate_is_recovered() {
    let m = machine(true);
    let paths = PkiPaths::new(m.root());
    std::fs::create_dir_all(&paths.private_dir).unwrap();
    let orphan = pki::generate_key(crate::config::KeyAlgorithm::EcdsaP256)
        .unwrap()
        .serialize_pem();
    std::fs::write(&paths.client_ca_key, &orphan).unwrap();
    let status = m.run().unwrap();
    assert!(status.ready);
    assert!(paths.client_ca_cert.is_file());
    // The key is the CA's: kept, and its certificate issued from it.
    assert_eq!(
        std::fs::read_to_string(&paths.client_ca_key).unwrap(),
        orphan
    );
    let pki_step = &status.steps[1];
    assert!(
        pki_step
            .changes
            .iter()
            .any(|c| c.contains("issued again from the existing key")),
        "{pki_step:#?}"
    );
    // On a finished machine too: the same key signs, so the client certificates stay.
    let client = std::fs::read(paths.client_cert("ci")).unwrap();
    std::fs::remove_file(&paths.client_ca_cert).unwrap();
    let status = m.run().unwrap();
    assert!(status.ready);
    assert!(paths.client_ca_cert.is_file());
    assert_eq!(std::fs::read(paths.client_cert("ci")).unwrap(), client);
    assert_eq!(
        std::fs::read_to_string(&paths.client_ca_key).unwrap(),
        orphan
    );
}

#[test]
fn digest_mismatch_stops_before_anything_starts() {
    let mut m = machine(true);
    let other = format!("sha256:{}", "ab".repeat(32));
    m.config.registry.image = format!("docker.io/library/registry@{other}");
    let e = m.run().unwrap_err();
    let mismatch = e.chain().find_map(|c| c.downcast_ref::<PinMismatch>());
    assert!(mismatch.is_some(), "{e:#}");
    let text = format!("{e:#}");
    assert!(
        text.contains(&other) && text.contains(&m.archive.amd64_manifest),
        "{text}"
    );
    assert!(text.contains("registry-image"), "names the step: {text}");
    let calls = m.mutations();
    assert!(
        !calls.iter().any(|c| c.starts_with("podman_load")
            || c.starts_with("podman_tag")
            || c.starts_with("enable_unit")
            || c.starts_with("ufw")
            || (c.starts_with("start_unit") && !c.contains("user@"))),
        "{calls:#?}"
    );
    assert_eq!(
        std::fs::read(m.path(IMAGE_ARCHIVE_PATH)).unwrap(),
        m.archive.bytes
    );
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.path("/var/lib/regimage/out/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["ready"], false);
    assert!(json["error"].as_str().unwrap().contains(&other));
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["name"], "registry-image");
    assert_eq!(steps.last().unwrap()["result"], "failed");
}

#[test]
fn loaded_image_must_have_the_pinned_id() {
    let m = machine(true);
    *m.fake.load_yields.borrow_mut() = "0".repeat(64);
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(
        e.contains(&format!("no image with ID {}", m.archive.amd64_config)),
        "{e}"
    );
    assert!(!m
        .mutations()
        .iter()
        .any(|c| c.starts_with("podman_tag") || c.starts_with("start_unit User")));
}

#[test]
fn without_an_archive_the_pinned_image_is_pulled() {
    let m = machine(false);
    let status = m.run().unwrap();
    let pinned = m.config.registry.image.clone();
    assert!(m
        .mutations()
        .contains(&format!("podman_pull registry {pinned}")));
    let image = status.image.unwrap();
    assert_eq!(image.source, "pull");
    assert_eq!(image.id, format!("sha256:{}", "f00d".repeat(16)));
    let before = m.mutations().len();
    m.run().unwrap();
    assert_eq!(m.mutations().len(), before, "no second pull");
}

#[test]
fn dry_run_on_a_fresh_machine_changes_nothing_and_says_what_it_would_do() {
    let m = machine(true);
    let before = snapshot(&m, false);
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.mutations(), Vec::<String>::new());
    assert_eq!(snapshot(&m, false), before);
    assert!(!status.ready);
    for step in &status.steps {
        assert_eq!(step.result, StepResult::Planned, "{step:#?}");
    }
    let report = dry_run_report(&status);
    for want in [
        "would make /etc/registry/certs/ca/ca.crt",
        "would create the system user registry (",
        "would create the system user registry-proxy (",
        "would allow TCP port 2222 from anywhere",
        "would allow TCP port 4443 from 10.0.0.0/8",
        "would enable the firewall",
        "holds the pinned image",
        "would write /var/lib/regimage/out/ci.tar.gz",
        "a run waits up to 180 s",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    assert!(!report.contains("cannot tell"), "{report}");
}

#[test]
fn dry_run_on_a_ready_machine_finds_nothing_to_do() {
    let m = machine(true);
    m.run().unwrap();
    let before = snapshot(&m, false);
    let count = m.mutations().len();
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.mutations().len(), count);
    assert_eq!(snapshot(&m, false), before);
    for step in &status.steps {
        assert!(step.changes.is_empty() && step.error.is_none(), "{step:#?}");
    }
}

#[test]
fn dry_run_reports_a_wrong_archive() {
    let mut m = machine(true);
    m.config.registry.image = format!("docker.io/library/registry@sha256:{}", "cd".repeat(32));
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    let report = dry_run_report(&status);
    assert!(
        report.contains("cannot tell") && report.contains("pins sha256:cdcd"),
        "{report}"
    );
    // It goes on with the later steps.
    assert_eq!(status.steps.len(), STEPS.len());
    assert_eq!(m.mutations(), Vec::<String>::new());
}

#[test]
fn registry_that_never_answers_fails_health_with_where_to_look() {
    let m = machine(true);
    m.fake.registry_broken.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(30),
            ..opts()
        })
        .unwrap_err()
    );
    let uid = m.user("registry").uid;
    assert!(e.contains("the registry is not up"), "{e}");
    assert!(e.contains("within 30 s"), "{e}");
    assert!(
        e.contains("systemctl --user -M registry@ status registry.service"),
        "{e}"
    );
    assert!(e.contains(&format!("journalctl -b _UID={uid}")), "{e}");
    assert!(m.fake.elapsed() >= Duration::from_secs(30));
    assert!(m.fake.elapsed() < Duration::from_secs(40), "bounded");
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    // Fixed (say, the operator restarted it): the next run finishes.
    m.fake.registry_broken.set(false);
    assert!(m.run().unwrap().ready);
    assert!(m.path(render::FIRSTBOOT_DONE_PATH).exists());
}

#[test]
fn proxy_that_never_answers_names_the_proxy() {
    let m = machine(true);
    m.fake.proxy_broken.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(5),
            ..opts()
        })
        .unwrap_err()
    );
    assert!(e.contains("the TLS proxy is not up"), "{e}");
    assert!(e.contains("https://reg1.example.test:443/v2/"), "{e}");
    assert!(e.contains("journalctl -b -u registry-proxy.service"), "{e}");
}

#[test]
fn proxy_start_job_held_by_ordering_is_named() {
    let m = machine(true);
    m.fake.proxy_job_held.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(3),
            ..opts()
        })
        .unwrap_err()
    );
    assert!(e.contains("start job still queued"), "{e}");
    assert!(e.contains("regimage-firstboot.service"), "{e}");
}

#[test]
fn existing_subordinate_ids_and_users_are_respected() {
    let m = machine(true);
    for file in ["etc/subuid", "etc/subgid"] {
        std::fs::write(m.root().join(file), "ubuntu:100000:65536\nother:200000:10").unwrap();
    }
    // cloud-init made both users already.
    {
        let mut state = m.fake.state.borrow_mut();
        for (name, id) in [("registry", 990), ("registry-proxy", 991)] {
            state.users.insert(
                name.into(),
                UserInfo {
                    name: name.into(),
                    uid: id,
                    gid: id,
                    home: "/nonexistent".into(),
                    shell: "/usr/sbin/nologin".into(),
                },
            );
            state.groups.insert(name.into(), id);
        }
    }
    m.run().unwrap();
    assert!(!m.mutations().iter().any(|c| c.starts_with("create_")));
    for file in ["etc/subuid", "etc/subgid"] {
        assert_eq!(
            std::fs::read_to_string(m.root().join(file)).unwrap(),
            "ubuntu:100000:65536\nother:200000:10\nregistry:200010:65536\n"
        );
    }
    assert_eq!(
        m.fake.state.borrow().owners[Path::new("var/lib/registry-podman")],
        (990, 990)
    );
    m.run().unwrap();
    let subuid = std::fs::read_to_string(m.root().join("etc/subuid")).unwrap();
    assert_eq!(subuid.matches("registry:").count(), 1, "{subuid}");
}

#[test]
fn wrong_firewall_rules_are_removed_and_none_duplicated() {
    let m = machine(true);
    {
        let mut state = m.fake.state.borrow_mut();
        let ufw = &mut state.ufw;
        for (port, from) in [(4443, None), (5000, None), (2222, None)] {
            ufw.rules.extend(
                UfwCommand::Allow {
                    port,
                    from,
                    comment: "by hand".into(),
                }
                .stored_rules(true),
            );
        }
        ufw.enabled = true;
        ufw.default_input = "ACCEPT".into();
    }
    m.run().unwrap();
    let ufw_calls: Vec<String> = m
        .mutations()
        .into_iter()
        .filter(|c| c.starts_with("ufw"))
        .collect();
    assert!(
        ufw_calls.contains(&"ufw delete allow in proto tcp from any to any port 4443".to_string())
    );
    assert!(
        ufw_calls.contains(&"ufw delete allow in proto tcp from any to any port 5000".to_string())
    );
    assert!(ufw_calls.contains(&"ufw default deny incoming".to_string()));
    assert!(
        !ufw_calls.iter().any(|c| c.contains("port 2222")),
        "kept: {ufw_calls:#?}"
    );
    assert!(!ufw_calls.contains(&"ufw --force enable".to_string()));
    let state = m.fake.state.borrow();
    let mut seen = std::collections::BTreeSet::new();
    for rule in &state.ufw.rules {
        let mut key = rule.clone();
        key.comment = None;
        assert!(seen.insert(key), "duplicate {rule:?}");
    }
    assert!(!state.ufw.rules.iter().any(|r| r.opens_port(5000)));
    assert_eq!(state.ufw.default_input, "DROP");
}

#[test]
fn only_root_runs_the_real_thing() {
    let e = check_privileges(false, false).unwrap_err().to_string();
    assert!(
        e.contains("must run as root") && e.contains("--dry-run"),
        "{e}"
    );
    check_privileges(false, true).unwrap();
    check_privileges(true, false).unwrap();
}

#[test]
fn root_must_be_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let args = |root: PathBuf| Mode::NoSystem { root };
    let missing = dir.path().join("nope");
    let e = run(None, args(missing.clone())).unwrap_err();
    assert!(
        e.is::<UsageError>() && e.to_string().contains("no such directory"),
        "{e}"
    );
    assert!(!missing.exists());
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = run(None, args(file)).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn no_system_writes_pki_and_bundles_under_root() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        hostname: Some("reg.example.test".into()),
        clients: vec!["ci".into(), "laptop".into()],
        ..Config::default()
    };
    let outcome = run_no_system(dir.path(), &config).unwrap();
    assert_eq!(outcome.sans.primary_name, "reg.example.test");
    assert!(dir.path().join("etc/registry/certs/registry.crt").is_file());
    for client in ["ci", "laptop"] {
        assert!(dir
            .path()
            .join(format!("var/lib/regimage/out/{client}.tar.gz"))
            .is_file());
    }
    let text = summary(&outcome);
    assert!(text.contains("registry name: reg.example.test"), "{text}");
    assert!(text.contains("laptop.tar.gz"), "{text}");
    // Nothing outside the two trees.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "var"]);
}

#[test]
fn without_sshd_the_firewall_keeps_port_22_open_and_says_so() {
    let m = machine(true);
    *m.fake.ssh_ports.borrow_mut() = None;
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    assert!(m
        .fake
        .state
        .borrow()
        .ufw
        .rules
        .iter()
        .any(|r| r.opens_port(22)));
    let firewall = status.steps.iter().find(|s| s.name == "firewall").unwrap();
    assert!(
        firewall
            .notes
            .iter()
            .any(|n| n.contains("sshd is not installed")),
        "{firewall:#?}"
    );
}
