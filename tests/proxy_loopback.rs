//! The proxy on loopback, with real parts: Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system` (set up by tests/common/loopback.rs, which the benchmark shares). skopeo and
//! curl are the clients.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl: `make test` runs it (`.ci/run` installs them).

mod common;

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
