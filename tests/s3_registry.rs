//! The storage plan of issue 12 with real parts: Debian's Distribution registry (2.8) run
//! with exactly the environment /work/s3-contract.md lists for s3 mode, in front of a real
//! 3-node Garage cluster on loopback (tests/common/garage.rs). Proves: skopeo push and pull
//! by digest land in the bucket; one Garage node down (not the registry's endpoint) changes
//! nothing; all down, the registry answers 503 UNAVAILABLE to every request within ~15 s
//! (its storage-driver health check); all back, it recovers by itself. And prints the
//! throughput of a 1 GiB blob (`S3_BENCH_MIB`) pushed and pulled against S3 and against
//! filesystem storage in the same run (a figure, not an assertion).
//!
//! Needs root, Garage (`make garage` builds it once), docker-registry, skopeo, curl,
//! openssl: `make test` runs it.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::blob_http::{self, Way};
use common::client::assert_registry_error;
use common::garage::{s3_query_value, wait_for, GarageCluster, GarageOptions};
use common::vm::{progress, Background};
use common::{free_port, make_oci_layout, output, require_tool, run_ok, s, test_dir};

/// The two tests never overlap: the throughput figures would include the other's load.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: u64 = 1024 * 1024;
/// The key prefix the registry writes under (`registry.storage.s3.root-directory`).
const ROOT_DIRECTORY: &str = "/regimage";

/// The registry's environment in s3 mode as the contract lists it (what
/// `render::registry_environment` is to produce, plus the secrets of registry.env), on
/// `port`, against node `node`'s endpoint.
// TODO(issue 12): take the non-secret part from render::registry_environment once it has
// s3 mode.
fn s3_environment(cluster: &GarageCluster, node: usize, port: u16) -> Vec<(String, String)> {
    [
        ("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("REGISTRY_HTTP_RELATIVEURLS", "true".into()),
        ("OTEL_TRACES_EXPORTER", "none".into()),
        ("REGISTRY_STORAGE", "s3".into()),
        ("REGISTRY_STORAGE_S3_REGION", cluster.region.clone()),
        ("REGISTRY_STORAGE_S3_BUCKET", cluster.bucket.clone()),
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", cluster.endpoint(node)),
        ("REGISTRY_STORAGE_S3_SECURE", "false".into()),
        ("REGISTRY_STORAGE_S3_SKIPVERIFY", "false".into()),
        ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", ROOT_DIRECTORY.into()),
        ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true".into()),
        ("REGISTRY_STORAGE_S3_V4AUTH", "true".into()),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "false".into()),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true".into()),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "true".into()),
        ("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL", "5s".into()),
        ("REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD", "2".into()),
        // registry.env (secrets, written by first boot)
        ("REGISTRY_HTTP_SECRET", "s3-registry-test-secret".into()),
        (
            "REGISTRY_STORAGE_S3_ACCESSKEY",
            cluster.access_key_id.clone(),
        ),
        (
            "REGISTRY_STORAGE_S3_SECRETKEY",
            cluster.secret_access_key.clone(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The filesystem-mode environment (`render::registry_environment` of a default config)
/// on `port`, storing under `data`.
fn filesystem_environment(port: u16, data: &Path) -> Vec<(String, String)> {
    let mut env = regimage::render::registry_environment(&regimage::config::Config::default());
    env.retain(|(k, _)| k != "REGISTRY_HTTP_ADDR" && !k.starts_with("REGISTRY_STORAGE_FILESYSTEM"));
    env.extend([
        ("REGISTRY_HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".into(), s(data)),
        (
            "REGISTRY_HTTP_SECRET".into(),
            "fs-registry-test-secret".into(),
        ),
    ]);
    env
}

/// Debian's docker-registry with `env` (and no AWS_* variable or ~/.aws from the test's
/// environment). Its config file is the image's minimal one
/// with filesystem storage in an empty directory, which s3 mode must leave untouched.
fn start_registry(work: &Path, name: &str, port: u16, env: &[(String, String)]) -> Background {
    let yml = work.join(format!("{name}.yml"));
    let unused = work.join(format!("{name}-config-filesystem"));
    std::fs::create_dir_all(&unused).expect("creating the config's filesystem dir");
    std::fs::write(
        &yml,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: :5000\n",
            s(&unused)
        ),
    )
    .expect("writing the registry config");
    let mut cmd = Command::new("docker-registry");
    // env_remove, not env_clear: Background::start rebuilds the command under setpriv from
    // its explicit changes. (An inherited AWS_CA_BUNDLE alone makes Distribution 2.8.2
    // panic at start: "LoadCustomCABundleError ... unsupported transport".)
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", work)
        .arg("serve")
        .arg(&yml)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut registry = Background::start(name, &mut cmd, &work.join(format!("{name}.log")));
    registry.wait_for_port(port);
    registry
}

/// Status and body of GET `path` on the registry's loopback port (0: no answer).
fn get(port: u16, path: &str) -> (u16, String) {
    let out = output(
        Command::new("curl")
            .args([
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:{port}{path}")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls GET /v2/ until it answers `code`; returns the seconds it took and the last body.
fn wait_v2(port: u16, code: u16, timeout: Duration) -> (f64, String) {
    let t = Instant::now();
    let body = wait_for(&format!("/v2/ answering {code}"), timeout, || {
        let (got, body) = get(port, "/v2/");
        if got == code {
            Ok(body)
        } else {
            Err(format!("HTTP {got}: {body}"))
        }
    });
    (t.elapsed().as_secs_f64(), body)
}

/// skopeo for plain HTTP on loopback, with no policy or credentials from this host.
fn skopeo(work: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.env("HOME", work).arg("--insecure-policy");
    cmd
}

/// Pushes a one-layer image carrying `text` to `repo:tag` with skopeo; returns its manifest
/// digest and the seconds the push took.
fn push_image(work: &Path, port: u16, repo: &str, tag: &str, text: &str) -> (String, f64) {
    let layout = work.join(format!("src-{}-{tag}", repo.replace('/', "-")));
    let digest = make_oci_layout(&layout, tag, text);
    let t = Instant::now();
    run_ok(skopeo(work).args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", s(&layout)),
        &format!("docker://127.0.0.1:{port}/{repo}:{tag}"),
    ]));
    (digest, t.elapsed().as_secs_f64())
}

/// Pulls `repo@digest` with skopeo (manifest, config and layer, each checked by skopeo)
/// into a fresh OCI layout and checks it holds that manifest; returns the seconds it took.
fn pull_by_digest(work: &Path, port: u16, repo: &str, digest: &str) -> f64 {
    let dest = work.join(format!("pulled-{}", digest.trim_start_matches("sha256:")));
    let _ = std::fs::remove_dir_all(&dest);
    let t = Instant::now();
    run_ok(skopeo(work).args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://127.0.0.1:{port}/{repo}@{digest}"),
        &format!("oci:{}:pulled", s(&dest)),
    ]));
    let secs = t.elapsed().as_secs_f64();
    let index = std::fs::read_to_string(dest.join("index.json")).expect("reading index.json");
    let index: serde_json::Value = serde_json::from_str(&index).expect("index.json is JSON");
    assert_eq!(
        index["manifests"][0]["digest"], digest,
        "the pulled image is another manifest: {index}"
    );
    secs
}

/// The keys in the bucket under `prefix` (one ListObjectsV2 page from node `node`).
fn bucket_keys(cluster: &GarageCluster, node: usize, prefix: &str) -> Vec<String> {
    let (code, body) = cluster.s3_get(
        node,
        &format!(
            "/{}?list-type=2&prefix={}",
            cluster.bucket,
            s3_query_value(prefix)
        ),
    );
    assert_eq!(code, 200, "listing the bucket: {body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

/// Figures collected along the way, printed at the end.
#[derive(Default)]
struct Figures(Vec<(String, String)>);

impl Figures {
    fn add(&mut self, what: &str, value: String) {
        progress(&format!("{what}: {value}"));
        self.0.push((what.to_string(), value));
    }

    fn print(&self, title: &str) {
        println!("{title}:");
        for (what, value) in &self.0 {
            println!("  {what:<58} {value}");
        }
    }
}

fn require_tools() {
    for (tool, package) in [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("curl", "curl"),
        ("openssl", "openssl"),
    ] {
        require_tool(tool, package);
    }
}

#[test]
#[ignore = "needs root, Garage (make garage), docker-registry, skopeo, curl: run by `make test`"]
fn registry_on_garage_survives_a_node_and_recovers_from_an_outage() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let dir = test_dir("regimage-s3-registry-");
    let work = dir.path();
    let mut figures = Figures::default();

    let t = Instant::now();
    let mut cluster = GarageCluster::start(&GarageOptions::default());
    figures.add(
        "Garage: 3 nodes up, layout applied, key and bucket",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );

    let port = free_port();
    let env = s3_environment(&cluster, 0, port);
    let _registry = start_registry(work, "registry-s3", port, &env);
    wait_v2(port, 200, Duration::from_secs(30));

    // Push and pull back by digest; the image is in the bucket under the root directory,
    // and nothing went to the config file's filesystem storage.
    let (first, secs) = push_image(work, port, "test/hello", "v1", "hello from S3\n");
    figures.add("push, 3 nodes up", format!("{secs:.2} s"));
    let secs = pull_by_digest(work, port, "test/hello", &first);
    figures.add("pull by digest, 3 nodes up", format!("{secs:.2} s"));
    let prefix = format!(
        "{}/docker/registry/v2/repositories/test/hello/_manifests/revisions/sha256/",
        ROOT_DIRECTORY.trim_start_matches('/')
    );
    let keys = bucket_keys(&cluster, 1, &prefix);
    assert!(
        keys.iter()
            .any(|k| k.contains(first.trim_start_matches("sha256:"))),
        "the manifest is not in the bucket under {prefix}: {keys:?}"
    );
    let unused = work.join("registry-s3-config-filesystem");
    assert_eq!(
        std::fs::read_dir(&unused).expect("listing").count(),
        0,
        "REGISTRY_STORAGE=s3 did not replace the config file's filesystem storage"
    );

    // A second registry on the same bucket through another Garage node (a second appliance
    // of the cluster) serves the image pushed through the first. Its key comes from an AWS
    // shared-credentials file (AWS_SHARED_CREDENTIALS_FILE, which Distribution's S3 driver
    // reads when REGISTRY_STORAGE_S3_ACCESSKEY/SECRETKEY are unset) instead of registry.env.
    let credentials = work.join("s3-credentials");
    cluster.write_credentials_file(&credentials);
    let port2 = free_port();
    let mut env2 = s3_environment(&cluster, 1, port2);
    env2.retain(|(k, _)| !k.ends_with("_ACCESSKEY") && !k.ends_with("_SECRETKEY"));
    env2.push(("AWS_SHARED_CREDENTIALS_FILE".into(), s(&credentials)));
    {
        let _second = start_registry(work, "registry-s3-second", port2, &env2);
        wait_v2(port2, 200, Duration::from_secs(30));
        let secs = pull_by_digest(work, port2, "test/hello", &first);
        figures.add(
            "pull by digest through a second registry (credentials file)",
            format!("{secs:.2} s"),
        );
    }

    // One node down (not the registry's endpoint): pushes and pulls go on (quorum 2 of 3).
    let t = Instant::now();
    cluster.stop_node(2);
    figures.add(
        "node 3 stopped, the others see it down",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );
    let (second, secs) = push_image(work, port, "test/hello", "v2", "hello with a node down\n");
    figures.add("push, node 3 down", format!("{secs:.2} s"));
    let secs = pull_by_digest(work, port, "test/hello", &second);
    figures.add(
        "pull by digest (new image), node 3 down",
        format!("{secs:.2} s"),
    );
    let secs = pull_by_digest(work, port, "test/hello", &first);
    figures.add(
        "pull by digest (first image), node 3 down",
        format!("{secs:.2} s"),
    );
    let t = Instant::now();
    cluster.start_node(2);
    figures.add(
        "node 3 restarted, cluster healthy",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );

    // All down: the storage-driver health check fails twice (5 s apart) and every request
    // gets 503 with Distribution's UNAVAILABLE error.
    let t = Instant::now();
    cluster.stop_all();
    figures.add(
        "all nodes stopped (SIGTERM, exited)",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );
    let (outage, body) = wait_v2(port, 503, Duration::from_secs(30));
    figures.add(
        "all nodes down -> /v2/ answers 503",
        format!("{outage:.1} s"),
    );
    assert!(
        outage <= 16.0,
        "the registry took {outage:.1} s to answer 503 (contract: within ~15 s)"
    );
    assert_registry_error(&body, "UNAVAILABLE");
    let (code, body) = get(port, &format!("/v2/test/hello/manifests/{first}"));
    assert_eq!(code, 503, "a manifest GET during the outage: {body}");
    assert_registry_error(&body, "UNAVAILABLE");

    // All back: the registry recovers by itself (no restart) and serves the images.
    let t = Instant::now();
    cluster.start_all();
    let healthy = t.elapsed().as_secs_f64();
    figures.add(
        "all nodes restarted -> cluster healthy",
        format!("{healthy:.1} s"),
    );
    let (secs, _) = wait_v2(port, 200, Duration::from_secs(60));
    figures.add(
        "cluster healthy -> /v2/ answers 200 again",
        format!("{secs:.1} s"),
    );
    let secs = pull_by_digest(work, port, "test/hello", &first);
    figures.add("pull by digest after the outage", format!("{secs:.2} s"));
    pull_by_digest(work, port, "test/hello", &second);
    let (_, secs) = push_image(work, port, "test/hello", "v3", "hello after the outage\n");
    figures.add("push after the outage", format!("{secs:.2} s"));

    figures.print("registry on a 3-node Garage cluster");
}

#[test]
#[ignore = "needs root, Garage (make garage), docker-registry, curl, openssl: run by `make test`"]
fn blob_throughput_on_s3_and_on_filesystem() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let mib: u64 = std::env::var("S3_BENCH_MIB")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("S3_BENCH_MIB={v:?}: {e}"))
        })
        .unwrap_or(1024);
    assert!(
        (1..=2000).contains(&mib),
        "S3_BENCH_MIB={mib}: expected 1 to 2000"
    );
    let len = mib * MIB;
    let dir = test_dir("regimage-s3-bench-");
    let work = dir.path();
    let cluster = GarageCluster::start(&GarageOptions::default());

    let (s3_port, fs_port) = (free_port(), free_port());
    let _s3 = start_registry(
        work,
        "registry-s3",
        s3_port,
        &s3_environment(&cluster, 0, s3_port),
    );
    let data = work.join("registry-fs-data");
    std::fs::create_dir(&data).expect("creating the filesystem storage");
    let _fs = start_registry(
        work,
        "registry-fs",
        fs_port,
        &filesystem_environment(fs_port, &data),
    );
    wait_v2(s3_port, 200, Duration::from_secs(30));
    wait_v2(fs_port, 200, Duration::from_secs(30));

    let t = Instant::now();
    let digest = blob_http::blob_digest(len);
    progress(&format!(
        "{mib} MiB blob {digest} (digested in {:.1} s)",
        t.elapsed().as_secs_f64()
    ));
    let http_work = work.join("http");
    std::fs::create_dir(&http_work).expect("creating the curl dir");
    let mut figures = Figures::default();
    for (name, port) in [("filesystem", fs_port), ("s3 (Garage x3)", s3_port)] {
        let way = Way::plain("direct", &format!("http://127.0.0.1:{port}"));
        let up = blob_http::upload(&way, "bench/blob", len, &digest, &http_work);
        figures.add(
            &format!("push {mib} MiB, {name}"),
            format!("{:7.1} MiB/s ({up:.1} s)", mib as f64 / up),
        );
        let down = blob_http::download(&way, "bench/blob", &digest);
        figures.add(
            &format!("pull {mib} MiB, {name}"),
            format!("{:7.1} MiB/s ({down:.1} s)", mib as f64 / down),
        );
    }
    // The S3 registry's blob is in the bucket, not on this disk.
    let hex = digest.trim_start_matches("sha256:");
    let key = format!(
        "{}/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        ROOT_DIRECTORY.trim_start_matches('/'),
        &hex[..2]
    );
    assert_eq!(
        bucket_keys(&cluster, 2, &key),
        vec![key.clone()],
        "the blob in the bucket"
    );
    figures.print(&format!(
        "blob throughput, {mib} MiB, curl straight to the registry on loopback (single PATCH)"
    ));
}
