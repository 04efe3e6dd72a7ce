//! `regimage render` end to end, through the built binary: the file set and its manifest
//! on disk; the rendered nginx.conf under the real nginx (`nginx -t`, then a running proxy
//! answering with registry-style JSON errors); the units under `systemd-analyze verify`;
//! the content rules themselves are unit tests in src/render.rs.
//!
//! Needs nginx-light, openssl, curl, systemd and cloud-init installed (.ci/run installs
//! them); a missing tool fails the test and names the package.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, output, p, regimage, require_tool, run_ok, s, test_dir};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "usr/share/regimage/manifest.json";

/// Every file render writes besides the manifest, relative to the root.
const FILES: &[&str] = &[
    "etc/containers/policy.json",
    "etc/regimage/regimage.yaml",
    "etc/registry/nginx.conf",
    "etc/systemd/system/regimage-firstboot.service",
    "etc/systemd/system/regimage-renew.service",
    "etc/systemd/system/regimage-renew.timer",
    "etc/systemd/system/registry-proxy.service",
    "etc/systemd/user/registry.service",
];

/// A config unlike the defaults in every key render uses. Port 15123 appears nowhere
/// else, so every place it shows up can be checked.
fn custom_config(pull: u16, push: u16, registry: u16) -> String {
    format!(
        "service-user: ci-registry\n\
         proxy-user: edge-proxy\n\
         ports:\n  pull: {pull}\n  push: {push}\n  registry: {registry}\n\
         registry:\n  image: quay.io/acme/registry@sha256:{digest}\n  storage-dir: /srv/registry-data\n  memory-max: 768M\n  cpu-quota: 150%\n\
         proxy:\n  pull-rate: 4\n  pull-burst: 6\n  push-rate: 2\n  push-burst: 3\n  max-body-size: 512m\n",
        digest = "ab".repeat(32)
    )
}

fn custom() -> String {
    custom_config(18443, 18444, 15123)
}

/// Renders `config` (None: built-in defaults) under `dir/root` and returns the root.
fn render(dir: &Path, config: Option<&str>) -> PathBuf {
    let root = p(dir, "root");
    let mut cmd = regimage();
    cmd.arg("render").arg("--root").arg(&root);
    if let Some(text) = config {
        let cfg = p(dir, "site.yaml");
        fs::write(&cfg, text).expect("writing the site config");
        cmd.arg("-c").arg(&cfg);
    }
    let out = run_ok(&mut cmd);
    // The summary is a message: stderr; stdout is for data.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("wrote {} files", FILES.len())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    root
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(p(root, rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Non-comment lines, for assertions on directives rather than on explanations.
fn directives(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .expect("reading metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// Every regular file under `dir`, relative to `base`.
fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).expect("listing a directory") {
        let path = entry.expect("reading a directory entry").path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            out.insert(s(path.strip_prefix(base).expect("path under the root")));
        }
    }
}

#[test]
fn render_writes_every_file_with_its_manifest_entry_and_mode() {
    let custom = custom();
    for (name, config) in [("defaults", None), ("custom", Some(custom.as_str()))] {
        let dir = test_dir("regimage-render-");
        let root = render(dir.path(), config);

        let manifest: serde_json::Value = serde_json::from_str(&read(&root, MANIFEST)).unwrap();
        let entries = manifest["files"].as_array().unwrap();
        let listed: Vec<String> = entries
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = FILES.iter().map(|f| format!("/{f}")).collect();
        assert_eq!(listed, want, "{name}: manifest paths (sorted, complete)");

        for entry in entries {
            let path = p(&root, &entry["path"].as_str().unwrap()[1..]);
            let contents = fs::read(&path).unwrap();
            assert_eq!(
                entry["sha256"].as_str().unwrap(),
                hex::encode(Sha256::digest(&contents)),
                "{name}: sha256 of {}",
                path.display()
            );
            let mode = u32::from_str_radix(entry["mode"].as_str().unwrap(), 8).unwrap();
            assert_eq!(mode, 0o644, "{name}: {entry}");
            assert_eq!(entry["mode"], "0644");
            assert_eq!(
                mode_of(&path),
                mode,
                "{name}: mode on disk of {}",
                path.display()
            );
            assert_eq!(
                (entry["owner"].as_str(), entry["group"].as_str()),
                (Some("root"), Some("root"))
            );
        }
        assert_eq!(mode_of(&p(&root, MANIFEST)), 0o644);

        // Nothing else under the root: no temporary files left behind.
        let mut on_disk = BTreeSet::new();
        walk(&root, &root, &mut on_disk);
        let mut expected: BTreeSet<String> = FILES.iter().map(|f| f.to_string()).collect();
        expected.insert(MANIFEST.to_string());
        assert_eq!(on_disk, expected, "{name}");

        // The installed config is a valid config, the one that was rendered.
        let installed = p(&root, "etc/regimage/regimage.yaml");
        run_ok(regimage().arg("check").arg("-c").arg(&installed));
        if config.is_some() {
            assert!(read(&root, "etc/regimage/regimage.yaml").contains("service-user: ci-registry"));
        }

        // Rendering again gives the same bytes.
        let before = read(&root, MANIFEST);
        render(dir.path(), config);
        assert_eq!(
            read(&root, MANIFEST),
            before,
            "{name}: render is not deterministic"
        );
    }
}

#[test]
fn render_refuses_a_root_that_is_a_file() {
    let dir = test_dir("regimage-render-file-");
    let file = p(dir.path(), "not-a-dir");
    fs::write(&file, "keep me").unwrap();
    let out = output(regimage().arg("render").arg("--root").arg(&file));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

// ---------------------------------------------------------------------------------------
// nginx

/// Throwaway certificates in the machine's layout under `certs`: server CA, the server key
/// and certificate for 127.0.0.1/localhost in one `private/registry.pem` (and the public
/// `registry.crt`), client CA, client certificates `ci` and `gone`, and the client CA's CRL
/// listing `gone`.
fn make_certs(certs: &Path) {
    for d in ["ca", "private", "clients"] {
        fs::create_dir_all(p(certs, d)).expect("creating certs dir");
    }
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(certs));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = |key: &str, crt: &str, cn: &str| {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", key, "-out", crt, "-days", "2", "-subj", cn]);
        openssl(&args);
    };
    let leaf = |key: &str, crt: &str, cn: &str, ca_crt: &str, ca_key: &str, ext: &str| {
        let csr = format!("{crt}.csr");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", key, "-out", &csr, "-subj", cn]);
        openssl(&args);
        let extfile = format!("{crt}.ext");
        fs::write(p(certs, &extfile), ext).expect("writing extfile");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            crt,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    };
    ca("private/ca.key", "ca/ca.crt", "/CN=regimage test server CA");
    leaf(
        "private/registry.key",
        "registry.crt",
        "/CN=localhost",
        "ca/ca.crt",
        "private/ca.key",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    ca(
        "private/client-ca.key",
        "clients/ca.crt",
        "/CN=regimage test client CA",
    );
    for name in ["ci", "gone"] {
        leaf(
            &format!("private/client-{name}.key"),
            &format!("clients/{name}.crt"),
            &format!("/CN={name}"),
            "clients/ca.crt",
            "private/client-ca.key",
            "extendedKeyUsage=clientAuth\n",
        );
    }
    // Key then certificate, one file for both of nginx's directives (issue 11); no
    // registry.key, so nginx cannot be reading it.
    let key = fs::read(p(certs, "private/registry.key")).expect("reading registry.key");
    let crt = fs::read(p(certs, "registry.crt")).expect("reading registry.crt");
    fs::write(p(certs, "private/registry.pem"), [key, crt].concat()).expect("writing registry.pem");
    fs::remove_file(p(certs, "private/registry.key")).expect("removing registry.key");
    // The client CA's CRL with `gone` revoked, made by openssl's own CA.
    fs::write(
        p(certs, "crl-ca.cnf"),
        "[ca]\ndefault_ca = client_ca\n[client_ca]\ndatabase = crl-index.txt\n\
         default_md = sha256\ndefault_crl_days = 2\n",
    )
    .expect("writing crl-ca.cnf");
    fs::write(p(certs, "crl-index.txt"), "").expect("writing crl-index.txt");
    let ca_args = [
        "-config",
        "crl-ca.cnf",
        "-keyfile",
        "private/client-ca.key",
        "-cert",
        "clients/ca.crt",
    ];
    openssl(&[&["ca"][..], &ca_args, &["-revoke", "clients/gone.crt"]].concat());
    openssl(
        &[
            &["ca"][..],
            &ca_args,
            &["-gencrl", "-out", "clients/crl.pem"],
        ]
        .concat(),
    );
}

/// The rendered nginx.conf with only its absolute path prefixes moved under `tmp`.
fn relocate_nginx_conf(conf: &str, tmp: &Path) -> String {
    let relocated = conf
        .replace("/etc/registry", &s(&p(tmp, "etc-registry")))
        .replace("/run/registry-proxy", &s(&p(tmp, "run")))
        .replace("/var/log/registry-proxy", &s(&p(tmp, "log")));
    // Nothing may still point at the machine's own paths.
    for line in directives(&relocated) {
        for path in ["/etc/", "/run/", "/var/"] {
            assert!(
                !line.contains(&format!(" {path}")),
                "unrelocated path in {line:?}"
            );
        }
    }
    relocated
}

/// nginx started in the foreground, stopped when dropped. SIGTERM, not Child::kill: a
/// SIGKILLed master leaves its workers running, holding the ports.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, nginx: &mut Nginx, errlog: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = nginx.0.try_wait() {
            panic!(
                "nginx exited with {status}:\n{}",
                fs::read_to_string(errlog).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The registry error code of a JSON error body (and that it is JSON).
    fn error_code(&self) -> String {
        assert_eq!(
            self.header_values("content-type"),
            ["application/json"],
            "{}",
            self.body
        );
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body));
        v["errors"][0]["code"]
            .as_str()
            .expect("an error code")
            .to_string()
    }
}

fn curl(args: &[&str]) -> Reply {
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args),
    );
    let text = String::from_utf8(out.stdout).expect("curl output is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

#[test]
fn rendered_nginx_conf_passes_nginx_t_and_answers_with_json_errors() {
    require_tool("nginx", "nginx-light");
    require_tool("openssl", "openssl");
    require_tool("curl", "curl");
    let dir = test_dir("regimage-render-nginx-");
    let tmp = dir.path();
    let (pull, push, registry) = loop {
        let ports = (free_port(), free_port(), free_port());
        if ports.0 != ports.1 && ports.1 != ports.2 && ports.0 != ports.2 {
            break ports;
        }
    };
    let root = render(tmp, Some(&custom_config(pull, push, registry)));
    let certs = p(tmp, "etc-registry/certs");
    make_certs(&certs);
    for d in ["run", "log"] {
        fs::create_dir_all(p(tmp, d)).unwrap();
    }
    let conf = p(tmp, "nginx.conf");
    fs::write(
        &conf,
        relocate_nginx_conf(&read(&root, "etc/registry/nginx.conf"), tmp),
    )
    .unwrap();
    let errlog = p(tmp, "log/error.log");

    let out = output(
        Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&errlog),
    );
    assert!(
        out.status.success(),
        "nginx -t refused the rendered config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("test is successful"));

    // Run it (no registry behind it) and check what clients see from nginx itself.
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&errlog)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    let mut nginx = Nginx(child);
    wait_for_port(pull, &mut nginx, &errlog);
    wait_for_port(push, &mut nginx, &errlog);

    let ca = s(&p(&certs, "ca/ca.crt"));
    let pull_url = format!("https://127.0.0.1:{pull}/v2/");
    let push_url = format!("https://127.0.0.1:{push}/v2/");

    // Writes on the pull port: 403 with a registry-style body naming the push port.
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let r = curl(&[
            "--cacert",
            &ca,
            "-X",
            method,
            &format!("{pull_url}x/blobs/uploads/a.html"),
        ]);
        assert_eq!(r.status, 403, "{method}: {}", r.body);
        assert_eq!(r.error_code(), "DENIED", "{method}");
        assert!(r.body.contains(&format!("port {push}")), "{}", r.body);
        assert_eq!(
            r.header_values("docker-distribution-api-version"),
            ["registry/2.0"]
        );
    }
    // A read passes the method check and reaches the (absent) registry: JSON 502.
    let r = curl(&["--cacert", &ca, &pull_url]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "UNAVAILABLE"),
        "{}",
        r.body
    );
    assert_eq!(
        r.header_values("docker-distribution-api-version"),
        ["registry/2.0"]
    );
    assert_eq!(r.header_values("strict-transport-security").len(), 1);
    // Outside /v2/: JSON 404, not nginx's default page.
    let r = curl(&["--cacert", &ca, &format!("https://127.0.0.1:{pull}/")]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "UNSUPPORTED"));
    // The push port without a client certificate: 400 with a JSON body.
    let r = curl(&["--cacert", &ca, &push_url]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "DENIED"),
        "{}",
        r.body
    );
    // An upload start on `url` as `client` (its certificate and key from the layout).
    let upload_as = |client: &str, url: &str| {
        curl(&[
            "--cacert",
            &ca,
            "--cert",
            &s(&p(&certs, &format!("clients/{client}.crt"))),
            "--key",
            &s(&p(&certs, &format!("private/client-{client}.key"))),
            "-X",
            "POST",
            &format!("{url}x/blobs/uploads/"),
        ])
    };
    // With the client certificate, the request gets through to the (absent) registry.
    let r = upload_as("ci", &push_url);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "UNAVAILABLE"),
        "{}",
        r.body
    );
    // A certificate of the same CA that the CRL lists: the same JSON 400 as none at all.
    let r = upload_as("gone", &push_url);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "DENIED"),
        "{}",
        r.body
    );
    // The pull port serves the certificate from registry.pem (checked by --cacert above),
    // and never asks for a client certificate, revoked or not.
    let r = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &s(&p(&certs, "clients/gone.crt")),
        "--key",
        &s(&p(&certs, "private/client-gone.key")),
        &pull_url,
    ]);
    assert_eq!(r.status, 502, "{}", r.body);
    drop(nginx);
}

// ---------------------------------------------------------------------------------------
// systemd

/// Absolute program paths of every Exec*= line of a unit.
fn exec_programs(unit: &str) -> Vec<String> {
    directives(unit)
        .iter()
        .filter(|l| l.starts_with("Exec"))
        .filter_map(|l| l.split_once('='))
        .filter_map(|(_, cmd)| {
            cmd.trim_start_matches(['-', '@', '+', '!', ':'])
                .split_whitespace()
                .next()
        })
        .map(str::to_string)
        .collect()
}

fn stub_program(root: &Path, program: &str) {
    let path = p(root, &program[1..]);
    fs::create_dir_all(path.parent().expect("a parent")).expect("creating stub dir");
    fs::write(&path, "#!/bin/sh\nexit 0\n").expect("writing stub");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stub");
}

fn host_unit_dir() -> PathBuf {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("multi-user.target").is_file())
        .expect(
            "no systemd unit directory with multi-user.target: install the Debian package systemd",
        )
}

/// `systemd-analyze verify` with its messages on stderr (without a journal they vanish).
fn analyze(args: &[&str], extra_env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.env("SYSTEMD_LOG_TARGET", "console").args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = output(&mut cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    require_tool("systemctl", "systemd");
    let units = host_unit_dir();
    assert!(
        units.join("cloud-final.service").is_file(),
        "cloud-final.service is missing: install the Debian package cloud-init (the ordering check needs it)"
    );
    let dir = test_dir("regimage-render-systemd-");
    let root = render(dir.path(), Some(&custom()));
    let root_s = s(&root);

    // An image-like root: the host's vendor units, our units enabled the way an image
    // build enables them, and cloud-init enabled as on a cloud image (its generator adds
    // cloud-init.target to multi-user.target at boot).
    let vendor = p(&root, "usr/lib/systemd");
    fs::create_dir_all(&vendor).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(&units).arg(&vendor));
    for rel in FILES.iter().filter(|f| f.ends_with(".service")) {
        for program in exec_programs(&read(&root, rel)) {
            stub_program(&root, &program);
        }
    }
    run_ok(Command::new("systemctl").args([
        &format!("--root={root_s}"),
        "enable",
        "registry-proxy.service",
        "regimage-firstboot.service",
        "regimage-renew.timer",
        "cloud-final.service",
    ]));
    run_ok(Command::new("systemctl").args([
        &format!("--root={root_s}"),
        "--global",
        "enable",
        "registry.service",
    ]));
    // Links point at the machine's paths, so look at the links, not through them.
    let is_link = |rel: &str| fs::symlink_metadata(p(&root, rel)).is_ok();
    assert!(is_link(
        "etc/systemd/user/default.target.wants/registry.service"
    ));
    assert!(is_link(
        "etc/systemd/system/multi-user.target.wants/regimage-firstboot.service"
    ));
    assert!(is_link(
        "etc/systemd/system/multi-user.target.wants/registry-proxy.service"
    ));
    assert!(is_link(
        "etc/systemd/system/timers.target.wants/regimage-renew.timer"
    ));
    let wants = p(
        &root,
        "etc/systemd/system/multi-user.target.wants/cloud-init.target",
    );
    if fs::symlink_metadata(&wants).is_err() {
        symlink(units.join("cloud-init.target"), &wants).unwrap();
    }

    let verify = [
        "verify",
        "--man=no",
        "--generators=no",
        &format!("--root={root_s}"),
        "multi-user.target",
        "registry-proxy.service",
        "regimage-firstboot.service",
        "regimage-renew.service",
        "regimage-renew.timer",
    ];
    let (ok, messages) = analyze(&verify, &[]);
    assert!(
        ok && messages.is_empty(),
        "systemd-analyze verify:\n{messages}"
    );

    // The same check sees the cycle the firstboot unit avoids by being After=
    // multi-user.target as well as After=cloud-final.service. (systemd may break it by
    // dropping a job and still exit 0, so the message is what counts, above too.)
    let fb = p(&root, "etc/systemd/system/regimage-firstboot.service");
    let good = fs::read_to_string(&fb).unwrap();
    let after = "\nAfter=network-online.target multi-user.target cloud-final.service\n";
    assert!(good.contains(after), "{good}");
    fs::write(
        &fb,
        good.replace(after, "\nAfter=network-online.target cloud-final.service\n"),
    )
    .unwrap();
    let (_, messages) = analyze(&verify, &[]);
    assert!(
        messages.contains("ordering cycle"),
        "cycle not reported:\n{messages}"
    );
    fs::write(&fb, good).unwrap();

    // The user unit, with the user manager's checks. `--user` has no --root, so podman
    // is replaced by a stub in a copy of the unit.
    let runtime = p(dir.path(), "xdg-runtime");
    fs::create_dir_all(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let stub_root = p(dir.path(), "stub");
    stub_program(&stub_root, "/podman");
    let user_units = p(dir.path(), "user-units");
    fs::create_dir_all(&user_units).unwrap();
    let user_unit = p(&user_units, "registry.service");
    let text = read(&root, "etc/systemd/user/registry.service");
    assert!(text.contains("/usr/bin/podman "));
    fs::write(
        &user_unit,
        text.replace(
            "/usr/bin/podman ",
            &format!("{} ", s(&p(&stub_root, "podman"))),
        ),
    )
    .unwrap();
    let user_verify = [
        "--user",
        "verify",
        "--man=no",
        "--generators=no",
        &s(&user_unit),
    ];
    let env = [("XDG_RUNTIME_DIR", runtime.as_path())];
    let (ok, messages) = analyze(&user_verify, &env);
    assert!(
        ok && messages.is_empty(),
        "systemd-analyze --user verify:\n{messages}"
    );
    // ...and that check does report a bad value.
    fs::write(
        &user_unit,
        fs::read_to_string(&user_unit)
            .unwrap()
            .replace("MemoryMax=768M", "MemoryMax=lots"),
    )
    .unwrap();
    let (_, messages) = analyze(&user_verify, &env);
    assert!(
        messages.contains("'lots'"),
        "bad MemoryMax not reported:\n{messages}"
    );
}
