//! The proxy on loopback, with real parts: Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system`. skopeo and curl are the clients.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl: `make test` runs it (`.ci/run` installs them).

mod common;

use std::process::Command;

use common::client::{self, Client};
use common::vm::Background;
use common::{regimage, require_tool, run_ok, s, test_dir};

struct Setup {
    _dir: tempfile::TempDir,
    /// The bundle of client `ci`, installed under $HOME as its README says.
    client: Client,
    _registry: Background,
    _nginx: Background,
}

fn setup() -> Setup {
    for (tool, package) in [
        ("nginx", "nginx-light"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("curl", "curl"),
        ("openssl", "openssl"),
    ] {
        require_tool(tool, package);
    }
    let dir = test_dir("regimage-proxy-");
    let work = dir.path().to_path_buf();
    let root = work.join("root");
    std::fs::create_dir(&root).expect("creating root");
    let (pull, push, registry_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    assert!(pull != push && push != registry_port && pull != registry_port);

    let cfg = work.join("regimage.yaml");
    std::fs::write(
        &cfg,
        format!(
            "hostname: localhost\nextra-names: [127.0.0.1]\nports:\n  pull: {pull}\n  push: {push}\n  registry: {registry_port}\n"
        ),
    )
    .expect("writing config");
    run_ok(
        regimage()
            .args(["render", "--root"])
            .arg(&root)
            .arg("-c")
            .arg(&cfg),
    );
    run_ok(
        regimage()
            .args(["firstboot", "--no-system", "--root"])
            .arg(&root)
            .arg("-c")
            .arg(&cfg),
    );

    // The registry, as the container runs it: the unit's environment, on the loopback port.
    let config = regimage::config::Config::load(Some(&cfg)).expect("loading config");
    let data = work.join("registry-data");
    std::fs::create_dir(&data).expect("creating registry data dir");
    let registry_yml = work.join("registry.yml");
    std::fs::write(
        &registry_yml,
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n",
    )
    .expect("writing registry config");
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&registry_yml);
    for (k, v) in regimage::render::registry_environment(&config) {
        cmd.env(k, v);
    }
    // Only the listen address and the storage path differ from the container.
    cmd.env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{registry_port}"))
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data)
        .env("REGISTRY_HTTP_SECRET", "loopback-test-secret");
    let mut registry = Background::start("docker-registry", &mut cmd, &work.join("registry.log"));
    registry.wait_for_port(registry_port);

    // nginx with the rendered config; only the absolute path prefixes move into the test dir.
    let conf_text =
        std::fs::read_to_string(root.join("etc/registry/nginx.conf")).expect("reading nginx.conf");
    let run_dir = work.join("run/registry-proxy");
    let log_dir = work.join("log/registry-proxy");
    std::fs::create_dir_all(&run_dir).expect("creating run dir");
    std::fs::create_dir_all(&log_dir).expect("creating log dir");
    let conf_text = conf_text
        .replace("/etc/registry/", &format!("{}/etc/registry/", s(&root)))
        .replace("/run/registry-proxy", &s(&run_dir))
        .replace("/var/log/registry-proxy", &s(&log_dir));
    let conf = work.join("nginx.conf");
    std::fs::write(&conf, conf_text).expect("writing nginx.conf");
    let error_log = log_dir.join("startup-error.log");
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&error_log)
        .args(["-g", "daemon off; user root;"]);
    let mut nginx = Background::start("nginx", &mut cmd, &work.join("nginx.out"));
    nginx.wait_for_port(pull);
    nginx.wait_for_port(push);

    // Install the client bundle as its README says, per user: ~/.config/containers/certs.d.
    let client_work = work.join("client");
    std::fs::create_dir(&client_work).expect("creating the client dir");
    let client = client::install_bundle(
        &root.join("var/lib/regimage/out/ci.tar.gz"),
        "ci",
        &client_work,
        pull,
        push,
    );
    Setup {
        _dir: dir,
        client,
        _registry: registry,
        _nginx: nginx,
    }
}

#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo: run by `make test`"]
fn push_with_bundle_pull_anonymously_and_refuse_the_rest() {
    let setup = setup();
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
}
