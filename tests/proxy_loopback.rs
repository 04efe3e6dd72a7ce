//! The proxy on loopback, with real parts: Debian's Distribution registry binary run with the
//! environment the unit gives the container, behind the real nginx running the rendered
//! nginx.conf on high ports, with certificates and a client bundle from `regimage firstboot
//! --no-system`. skopeo and curl are the clients.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl: `make test` runs it (`.ci/run` installs them).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{output, regimage, require_tool, run_ok, s, test_dir};

/// A background server killed when the test ends, however it ends.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    /// SIGTERM first: a SIGKILLed nginx master leaves its workers running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> Server {
        let file = std::fs::File::create(&log).expect("creating server log");
        let err = file.try_clone().expect("cloning log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, child, log }
    }

    /// Waits until `port` accepts connections; panics with the server's log otherwise.
    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} did not listen on {port}:\n{}",
            self.name,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    work: PathBuf,
    pull: u16,
    push: u16,
    /// certs.d layout for the client, installed from the bundle under $HOME.
    client_home: PathBuf,
    server_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _registry: Server,
    _nginx: Server,
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
    let mut registry = Server::start("docker-registry", &mut cmd, work.join("registry.log"));
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
    let mut nginx = Server::start("nginx", &mut cmd, work.join("nginx.out"));
    nginx.wait_for_port(pull);
    nginx.wait_for_port(push);

    // Install the client bundle as its README says, per user: ~/.config/containers/certs.d.
    let bundle = root.join("var/lib/regimage/out/ci.tar.gz");
    let unpacked = work.join("bundle");
    std::fs::create_dir(&unpacked).expect("creating bundle dir");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpacked),
    );
    let readme =
        std::fs::read_to_string(unpacked.join("ci/README.md")).expect("reading bundle README");
    assert!(
        readme.contains(".config/containers/certs.d"),
        "bundle README lacks the per-user install:\n{readme}"
    );
    let client_home = work.join("client-home");
    let certs_d = client_home.join(".config/containers/certs.d");
    std::fs::create_dir_all(&certs_d).expect("creating certs.d");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(unpacked.join("ci/containers/certs.d/."))
            .arg(&certs_d),
    );
    let push_dir = certs_d.join(format!("localhost:{push}"));
    for f in ["ca.crt", "client.cert", "client.key"] {
        assert!(
            push_dir.join(f).is_file(),
            "bundle lacks {f} for localhost:{push}"
        );
    }
    assert!(
        certs_d.join(format!("localhost:{pull}/ca.crt")).is_file(),
        "bundle lacks the pull CA"
    );

    // curl reads a ':' in --cert as a passphrase separator: give it colon-free copies.
    let pem = work.join("client-pem");
    std::fs::create_dir(&pem).expect("creating pem dir");
    std::fs::copy(push_dir.join("client.cert"), pem.join("client.cert")).expect("copying cert");
    std::fs::copy(push_dir.join("client.key"), pem.join("client.key")).expect("copying key");

    Setup {
        server_ca: root.join("etc/registry/certs/ca/ca.crt"),
        client_cert: pem.join("client.cert"),
        client_key: pem.join("client.key"),
        _dir: dir,
        work,
        pull,
        push,
        client_home,
        _registry: registry,
        _nginx: nginx,
    }
}

fn skopeo(home: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    // Only certs.d under HOME is to count: no system-wide trust or policy from this host.
    cmd.env("HOME", home).arg("--insecure-policy");
    cmd
}

/// curl's status code, headers and body for one request.
fn curl(setup: &Setup, args: &[&str], url: &str) -> (u16, String, String) {
    let headers = setup.work.join("curl.headers");
    let body = setup.work.join("curl.body");
    let out = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&setup.server_ca)
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(url),
    );
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let body = if code == 0 {
        // curl itself failed (TLS, connection): its message is what matters.
        format!("curl: {}", String::from_utf8_lossy(&out.stderr))
    } else {
        std::fs::read_to_string(&body).unwrap_or_default()
    };
    (
        code,
        std::fs::read_to_string(&headers).unwrap_or_default(),
        body,
    )
}

fn assert_registry_error(body: &str, code: &str) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"));
    assert_eq!(v["errors"][0]["code"], code, "body: {body}");
}

#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo: run by `make test`"]
fn push_with_bundle_pull_anonymously_and_refuse_the_rest() {
    let setup = setup();
    let (pull, push) = (setup.pull, setup.push);
    let src = setup.work.join("src-image");
    let digest = common::make_oci_layout(&src, "v1", "hello from regimage\n");

    // Push through the push port with the bundle's client certificate.
    run_ok(skopeo(&setup.client_home).args([
        "copy",
        &format!("oci:{}:v1", s(&src)),
        &format!("docker://localhost:{push}/test/hello:v1"),
    ]));

    // Pull anonymously through the pull port: same manifest digest, same layer content.
    let out = run_ok(skopeo(&setup.client_home).args([
        "inspect",
        "--raw",
        &format!("docker://localhost:{pull}/test/hello:v1"),
    ]));
    let pulled = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&out.stdout))
    );
    assert_eq!(
        pulled, digest,
        "the pulled manifest differs from the pushed one"
    );
    let dst = setup.work.join("dst-image");
    run_ok(skopeo(&setup.client_home).args([
        "copy",
        &format!("docker://localhost:{pull}/test/hello:v1"),
        &format!("oci:{}:v1", s(&dst)),
    ]));
    let index = std::fs::read_to_string(dst.join("index.json")).expect("reading pulled index");
    assert!(
        index.contains(&digest),
        "pulled index lacks {digest}: {index}"
    );

    // A push to the pull port fails with the registry-style 403 body, not nginx's HTML.
    let out = output(skopeo(&setup.client_home).args([
        "copy",
        &format!("oci:{}:v1", s(&src)),
        &format!("docker://localhost:{pull}/test/denied:v1"),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "push to the pull port succeeded");
    assert!(
        stderr.to_lowercase().contains("denied"),
        "skopeo did not report denied: {stderr}"
    );
    assert!(
        !stderr.contains("invalid character '<'"),
        "nginx answered HTML: {stderr}"
    );

    // Writes on the pull port: 403 with a JSON body, for every method.
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let (code, _, body) = curl(
            &setup,
            &["-X", method],
            &format!("https://localhost:{pull}/v2/test/hello/blobs/uploads/"),
        );
        assert_eq!(code, 403, "{method} on the pull port: {body}");
        assert_registry_error(&body, "DENIED");
    }

    // Reads on the pull port work, with the API version header exactly once.
    let (code, headers, _) = curl(&setup, &[], &format!("https://localhost:{pull}/v2/"));
    assert_eq!(code, 200);
    let n = headers
        .to_lowercase()
        .matches("docker-distribution-api-version")
        .count();
    assert_eq!(
        n, 1,
        "Docker-Distribution-Api-Version appears {n} times:\n{headers}"
    );

    // An upload started on the push port stays on the push port (Host $http_host, relative URLs).
    let cert = s(&setup.client_cert);
    let key = s(&setup.client_key);
    let (code, headers, body) = curl(
        &setup,
        &["-X", "POST", "--cert", &cert, "--key", &key],
        &format!("https://localhost:{push}/v2/test/hello/blobs/uploads/"),
    );
    assert_eq!(code, 202, "starting an upload on the push port: {body}");
    let location = headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("no Location header:\n{headers}"));
    assert!(
        !location.contains(&format!(":{pull}")),
        "upload sent to the pull port: {location}"
    );
    let target = location.split_once(':').map_or("", |(_, v)| v.trim());
    // REGISTRY_HTTP_RELATIVEURLS=true: the client resolves it against the push port it used.
    assert!(
        target.starts_with("/v2/test/hello/blobs/uploads/"),
        "upload location is not relative: {location}"
    );

    // The push port refuses a client without a certificate ...
    let (code, _, _) = curl(&setup, &[], &format!("https://localhost:{push}/v2/"));
    assert_eq!(
        code, 400,
        "push port answered a client without a certificate"
    );
    let no_cert_home = setup.work.join("no-cert-home");
    let d = no_cert_home.join(format!(".config/containers/certs.d/localhost:{push}"));
    std::fs::create_dir_all(&d).expect("creating certs dir");
    std::fs::copy(&setup.server_ca, d.join("ca.crt")).expect("copying CA");
    let out = output(skopeo(&no_cert_home).args([
        "copy",
        &format!("oci:{}:v1", s(&src)),
        &format!("docker://localhost:{push}/test/nocert:v1"),
    ]));
    assert!(
        !out.status.success(),
        "push without a client certificate succeeded"
    );

    // ... and one whose certificate comes from another CA.
    let other = setup.work.join("other-ca");
    std::fs::create_dir(&other).expect("creating other CA dir");
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=other-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN=ci 2>/dev/null; \
         printf 'extendedKeyUsage=clientAuth\\n' > ext; \
         openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.cert -days 2 -extfile ext 2>/dev/null",
        d = s(&other)
    );
    run_ok(Command::new("sh").args(["-c", &sh]));
    let (code, _, _) = curl(
        &setup,
        &[
            "--cert",
            &s(&other.join("client.cert")),
            "--key",
            &s(&other.join("client.key")),
        ],
        &format!("https://localhost:{push}/v2/"),
    );
    assert_eq!(
        code, 400,
        "push port accepted a certificate from another CA"
    );
    let other_home = setup.work.join("other-home");
    let d = other_home.join(format!(".config/containers/certs.d/localhost:{push}"));
    std::fs::create_dir_all(&d).expect("creating certs dir");
    std::fs::copy(&setup.server_ca, d.join("ca.crt")).expect("copying CA");
    std::fs::copy(other.join("client.cert"), d.join("client.cert")).expect("copying cert");
    std::fs::copy(other.join("client.key"), d.join("client.key")).expect("copying key");
    let out = output(skopeo(&other_home).args([
        "copy",
        &format!("oci:{}:v1", s(&src)),
        &format!("docker://localhost:{push}/test/othercert:v1"),
    ]));
    assert!(
        !out.status.success(),
        "push with another CA's certificate succeeded"
    );

    // With the bundle's certificate, the push port answers.
    let (code, _, _) = curl(
        &setup,
        &["--cert", &cert, "--key", &key],
        &format!("https://localhost:{push}/v2/"),
    );
    assert_eq!(code, 200);
}
