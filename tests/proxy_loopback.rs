//! The proxy on loopback, with real parts: Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system` (set up by tests/common/loopback.rs, which the benchmark shares). skopeo and
//! curl are the clients.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl: `make test` runs it (`.ci/run` installs them).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::blob::Blob;
use common::s;

#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo: run by `make test`"]
fn push_with_bundle_pull_anonymously_and_refuse_the_rest() {
    let setup = common::loopback::start("");
    let client = &setup.client;

    // Push through the push port with the bundle's client certificate; pull anonymously
    // through the pull port: the same manifest digest, the same index.
    client.push_and_pull("test/hello", "hello from regimage\n");

    // Reads on the pull port work, with the API version header exactly once.
    let reply = client.curl(&[], &client.pull_url("/v2/"));
    assert_eq!(reply.code, 200, "{}", reply.body);
    let n = reply
        .headers
        .to_lowercase()
        .matches("docker-distribution-api-version")
        .count();
    assert_eq!(
        n, 1,
        "Docker-Distribution-Api-Version appears {n} times:\n{}",
        reply.headers
    );

    // An upload started on the push port stays on the push port (Host $http_host, relative URLs).
    let (cert, key) = (s(&client.cert), s(&client.key));
    let reply = client.curl(
        &["-X", "POST", "--cert", &cert, "--key", &key],
        &client.push_url("/v2/test/hello/blobs/uploads/"),
    );
    assert_eq!(
        reply.code, 202,
        "starting an upload on the push port: {}",
        reply.body
    );
    let location = reply
        .headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("no Location header:\n{}", reply.headers));
    assert!(
        !location.contains(&format!(":{}", client.pull)),
        "upload sent to the pull port: {location}"
    );
    let target = location.split_once(':').map_or("", |(_, v)| v.trim());
    // REGISTRY_HTTP_RELATIVEURLS=true: the client resolves it against the push port it used.
    assert!(
        target.starts_with("/v2/test/hello/blobs/uploads/"),
        "upload location is not relative: {location}"
    );

    // Writes on the pull port get 403 with a JSON body (skopeo's push and every method); the
    // push port refuses no certificate and another CA's, and takes the bundle's.
    client.check_refusals("test/hello");

    // The repository list: refused on the pull port (JSON), served on the push port; tag
    // lists stay public.
    let reply = client.curl(&[], &client.pull_url("/v2/_catalog"));
    assert_eq!(reply.code, 403, "{}", reply.body);
    common::client::assert_registry_error(&reply.body, "DENIED");
    assert!(reply.body.contains("public-catalog"), "{}", reply.body);
    let reply = client.curl(&[], &client.pull_url("/v2/_catalog?n=10"));
    assert_eq!(reply.code, 403, "{}", reply.body);
    let reply = client.curl(
        &["--cert", &cert, "--key", &key],
        &client.push_url("/v2/_catalog"),
    );
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert!(reply.body.contains("test/hello"), "{}", reply.body);
    let reply = client.curl(&[], &client.pull_url("/v2/test/hello/tags/list"));
    assert_eq!(reply.code, 200, "{}", reply.body);

    // Bodies: the pull port caps them at 1m (it takes none); the push port has no cap by
    // default, so only the registry judges an upload.
    let big = setup.work.join("2m.bin");
    std::fs::write(&big, vec![0u8; 2 << 20]).expect("writing 2m.bin");
    let data = format!("@{}", s(&big));
    let reply = client.curl(
        &["-X", "GET", "--data-binary", &data],
        &client.pull_url("/v2/"),
    );
    assert_eq!(reply.code, 413, "{}", reply.body);
    common::client::assert_registry_error(&reply.body, "SIZE_INVALID");
}

#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo: run by `make test`"]
fn public_catalog_and_allowed_pull_networks() {
    // Loopback's own networks allowed: pulls and, with public-catalog, the list.
    let setup = common::loopback::start(
        "pull-allowed-cidrs: [127.0.0.0/8, '::1/128']\nproxy:\n  public-catalog: true\n",
    );
    let client = &setup.client;
    client.push_and_pull("test/listed", "listed\n");
    let reply = client.curl(&[], &client.pull_url("/v2/_catalog"));
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert!(reply.body.contains("test/listed"), "{}", reply.body);
    drop(setup);

    // An address outside pull-allowed-cidrs gets a JSON 403 on the pull port (reached
    // through this machine's own address: loopback is always allowed, as ufw never filters
    // it and first boot's health check comes from it); the push port still answers.
    let setup = common::loopback::start("pull-allowed-cidrs: [198.51.100.0/24]\n");
    let client = &setup.client;
    let reply = client.curl(&[], &client.pull_url("/v2/"));
    assert_eq!(reply.code, 200, "loopback refused: {}", reply.body);
    let Some(own) = own_ipv4_address() else {
        eprintln!("no non-loopback IPv4 address here: the refusal is not checked");
        return;
    };
    let resolve = format!("localhost:{}:{own}", client.pull);
    let reply = client.curl(&["--resolve", &resolve], &client.pull_url("/v2/"));
    assert_eq!(reply.code, 403, "from {own}: {}", reply.body);
    common::client::assert_registry_error(&reply.body, "DENIED");
    assert!(reply.body.contains("pull-allowed-cidrs"), "{}", reply.body);
    let (cert, key) = (s(&client.cert), s(&client.key));
    let resolve = format!("localhost:{}:{own}", client.push);
    let reply = client.curl(
        &["--resolve", &resolve, "--cert", &cert, "--key", &key],
        &client.push_url("/v2/"),
    );
    assert_eq!(reply.code, 200, "{}", reply.body);
}

/// The rate limit counts manifests, tag lists and `/v2/`, never blob transfers; beyond it,
/// 429 with a JSON body.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo: run by `make test`"]
fn rate_limits_spare_blobs_and_answer_429_in_json() {
    let setup = common::loopback::start("proxy:\n  pull-rate: 1\n  pull-burst: 5\n");
    let client = &setup.client;
    client.push_and_pull("test/limited", "limited\n");
    let reply = client.curl(
        &["-H", "Accept: application/vnd.oci.image.manifest.v1+json"],
        &client.pull_url("/v2/test/limited/manifests/v1"),
    );
    assert_eq!(reply.code, 200, "{}", reply.body);
    let manifest: serde_json::Value = serde_json::from_str(&reply.body).expect("manifest JSON");
    let layer = manifest["layers"][0]["digest"].as_str().expect("a layer");
    let blob = client.pull_url(&format!("/v2/test/limited/blobs/{layer}"));
    for _ in 0..20 {
        let reply = client.curl(&[], &blob);
        assert_eq!(reply.code, 200, "a blob GET was limited: {}", reply.body);
    }
    let codes: Vec<u16> = (0..20)
        .map(|_| {
            client
                .curl(&[], &client.pull_url("/v2/test/limited/tags/list"))
                .code
        })
        .collect();
    assert!(
        codes.contains(&429),
        "20 tag lists at once, none limited: {codes:?}"
    );
    let reply = client.curl(&[], &client.pull_url("/v2/test/limited/tags/list"));
    assert_eq!(reply.code, 429, "{}", reply.body);
    common::client::assert_registry_error(&reply.body, "TOOMANYREQUESTS");
}

/// This machine's first non-loopback IPv4 address (`hostname -I`).
fn own_ipv4_address() -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
}

/// Layers per image in the ordinary-use run (issue 10: a 100-layer image).
const LAYERS: usize = 100;

/// Issue 10's ordinary use from ONE address, which the default limits must never refuse:
/// a 100-layer image pushed (skopeo) and pulled (skopeo and podman), then 6 parallel pushes
/// of other 100-layer images and 10 parallel pulls. Counts nginx's 429 answers in its access
/// log (Docker gives up after one). Prints `BENCH` lines with the count and the times.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, podman: run by `make test`"]
fn ordinary_use_from_one_address_is_never_refused() {
    common::require_tool("podman", "podman");
    let setup = common::loopback::start("");
    let client = &setup.client;
    let (pull_host, push_host) = (
        client.names.registry(client.pull),
        client.names.registry(client.push),
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut check = |what: &str, out: std::process::Output| {
        if !out.status.success() {
            failures.push(format!(
                "{what}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };

    // One 100-layer image: pushed, then pulled by skopeo and by podman.
    let images: Vec<PathBuf> = (0..7)
        .map(|i| {
            let dir = setup.work.join(format!("image-{i}"));
            common::make_oci_layout_layers(&dir, "v1", &format!("image {i}\n"), LAYERS);
            dir
        })
        .collect();
    let push = |i: usize| {
        client
            .skopeo(&client.home)
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:v1", s(&images[i])))
            .arg(format!("docker://{push_host}/load/image-{i}:v1"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting skopeo")
    };
    let pull = |i: usize, n: usize| {
        client
            .skopeo(&client.home)
            .args(["copy", "--quiet"])
            .arg(format!("docker://{pull_host}/load/image-{i}:v1"))
            .arg(format!(
                "oci:{}:v1",
                s(&setup.work.join(format!("pulled-{n}")))
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting skopeo")
    };
    let t = Instant::now();
    check(
        "push",
        push(0).wait_with_output().expect("waiting for skopeo"),
    );
    let push_one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    check(
        "pull",
        pull(0, 0).wait_with_output().expect("waiting for skopeo"),
    );
    let pull_one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let storage = setup.work.join("podman");
    check(
        "podman pull",
        common::output(
            Command::new("podman")
                .env("HOME", &client.home)
                .arg(format!("--root={}", s(&storage.join("root"))))
                .arg(format!("--runroot={}", s(&storage.join("run"))))
                .args(["--storage-driver=vfs", "pull", "--quiet"])
                .arg(format!("{pull_host}/load/image-0:v1")),
        ),
    );
    let podman_one = t.elapsed().as_secs_f64();

    // 6 parallel pushes of other images, then 10 parallel pulls, all from 127.0.0.1.
    let t = Instant::now();
    let pushes: Vec<_> = (1..7).map(push).collect();
    for child in pushes {
        check(
            "parallel push",
            child.wait_with_output().expect("waiting for skopeo"),
        );
    }
    let pushes_6 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pulls: Vec<_> = (0..10).map(|n| pull(n % 7, n + 1)).collect();
    for child in pulls {
        check(
            "parallel pull",
            child.wait_with_output().expect("waiting for skopeo"),
        );
    }
    let pulls_10 = t.elapsed().as_secs_f64();

    let log = std::fs::read_to_string(setup.access_log()).expect("reading the access log");
    let statuses: Vec<u16> = log.lines().filter_map(access_log_status).collect();
    let refused = statuses.iter().filter(|c| **c == 429).count();
    println!(
        "BENCH ordinary-use: {refused} answers of 429 in {} requests; {LAYERS}-layer push {push_one:.1} s, \
         skopeo pull {pull_one:.1} s, podman pull {podman_one:.1} s, 6 parallel pushes {pushes_6:.1} s, \
         10 parallel pulls {pulls_10:.1} s, {:.1} s in all",
        statuses.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(refused, 0, "nginx answered 429 {refused} times");
}

/// The status of one access-log line (`regimage` log_format: the status follows the
/// quoted request).
fn access_log_status(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("\" ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Issue 10: a layer over 4 GiB (4300 MiB; `BIG_LAYER_MIB`) pushed as clients push it
/// (POST, one streamed PATCH with its length, PUT with the digest) through the push port,
/// which has no body cap by default. The bytes are made on the fly and digested on the way
/// out by `openssl dgst` (never stored but by the registry); nginx's memory, sampled through
/// the upload, must stay flat. Prints a `BENCH` line with the time and the memory.
#[test]
#[ignore = "needs root, nginx, docker-registry, curl, openssl, 4.5 GB of disk: run by `make test`"]
fn a_layer_over_4_gib_streams_through_with_flat_memory() {
    const MIB: u64 = 1024 * 1024;
    let mib: u64 = std::env::var("BIG_LAYER_MIB")
        .ok()
        .map_or(4300, |v| v.parse().expect("BIG_LAYER_MIB: a number"));
    let len = mib * MIB;
    let setup = common::loopback::start("");
    let client = &setup.client;
    let upload = client.start_upload("big/layer");

    let rss_start = setup.nginx_rss_kib();
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let (patch, digest, rss_peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(setup.nginx_rss_kib());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            peak
        });
        let (patch, digest) = client.patch_streamed(&upload, &mut Blob::new(len), &[]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (patch, digest, sampler.join().expect("the memory sampler"))
    });
    client.finish_upload(&patch, &digest);
    let secs = started.elapsed().as_secs_f64();

    // The registry holds it under that digest, with every byte.
    client.assert_blob("big/layer", &digest, len);
    println!(
        "BENCH large-layer: {len} bytes ({:.2} GiB) pushed in {secs:.1} s ({:.0} MB/s), \
         digest {digest}; nginx RSS (master + workers) {:.1} MiB at the start, {:.1} MiB at the peak",
        len as f64 / (1024.0 * MIB as f64),
        len as f64 / 1e6 / secs,
        rss_start as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    // The 4.3 GB go now, even with REGIMAGE_KEEP_TEST_DIRS.
    std::fs::remove_dir_all(setup.work.join("registry-data/docker/registry/v2/blobs"))
        .expect("removing the registry's blobs");
    assert!(
        rss_peak < 64 * 1024,
        "nginx grew to {rss_peak} KiB during the upload"
    );
}
