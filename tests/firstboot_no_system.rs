//! `regimage firstboot --no-system --root DIR`: certificates and client bundles under DIR,
//! checked with openssl (chains, purposes, names, a real mutual-TLS handshake), file modes,
//! the bundle layout, reruns and a broken CA.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, output, regimage, require_tool, run_ok, s, test_dir};

const CONFIG: &str = "\
hostname: reg.example.test
extra-names: [alias.example.test, 192.0.2.50]
organization: Example Org
clients: [ci, build-2]
";

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn setup(prefix: &str) -> Setup {
    require_tool("openssl", "openssl");
    let dir = test_dir(prefix);
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("creating root");
    let config = dir.path().join("regimage.yaml");
    std::fs::write(&config, CONFIG).expect("writing config");
    Setup {
        _dir: dir,
        root,
        config,
    }
}

fn firstboot(setup: &Setup) -> std::process::Output {
    run_ok(
        regimage()
            .args(["firstboot", "--no-system", "-c"])
            .arg(&setup.config)
            .arg("--root")
            .arg(&setup.root),
    )
}

fn certs(root: &Path, rel: &str) -> PathBuf {
    root.join("etc/registry/certs").join(rel)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Every file and directory under `dir` with its mode and (for files) bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("listing") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                all.insert(path.clone(), (mode(&path), Vec::new()));
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("reading");
                all.insert(path.clone(), (mode(&path), bytes));
            }
        }
    }
    all
}

fn openssl(args: &[&str]) -> String {
    let out = run_ok(Command::new("openssl").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl_fails(args: &[&str]) -> bool {
    !output(Command::new("openssl").args(args)).status.success()
}

#[test]
fn no_system_makes_a_verified_pki_and_bundles() {
    let setup = setup("regimage-fb-");
    let root = &setup.root;
    let out = firstboot(&setup);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("registry name: reg.example.test"),
        "{stdout}"
    );

    // Modes of every directory and file.
    let want: &[(&str, u32)] = &[
        ("", 0o755),
        ("ca", 0o755),
        ("ca/ca.crt", 0o644),
        ("private", 0o750),
        ("private/ca.key", 0o600),
        ("private/client-ca.key", 0o600),
        ("private/registry.pem", 0o640),
        ("clients/crl.pem", 0o644),
        ("private/client-ci.key", 0o600),
        ("private/client-build-2.key", 0o600),
        ("registry.crt", 0o644),
        ("clients", 0o755),
        ("clients/ca.crt", 0o640),
        ("clients/ci.crt", 0o644),
        ("clients/build-2.crt", 0o644),
    ];
    for (rel, m) in want {
        assert_eq!(mode(&certs(root, rel)), *m, "{rel}");
    }
    assert_eq!(
        snapshot(&certs(root, "")).len(),
        want.len() - 1,
        "unexpected files"
    );
    let out_dir = root.join("var/lib/regimage/out");
    assert_eq!(mode(&out_dir), 0o700);
    for client in ["ci", "build-2"] {
        assert_eq!(mode(&out_dir.join(format!("{client}.tar.gz"))), 0o600);
    }

    // Chains, purposes and names, as a TLS client would check them.
    let ca = s(&certs(root, "ca/ca.crt"));
    let client_ca = s(&certs(root, "clients/ca.crt"));
    let server = s(&certs(root, "registry.crt"));
    for check in [
        vec!["-verify_hostname", "reg.example.test"],
        vec!["-verify_hostname", "alias.example.test"],
        vec!["-verify_ip", "192.0.2.50"],
    ] {
        let mut args = vec!["verify", "-purpose", "sslserver", "-CAfile", &ca];
        args.extend(check);
        args.push(&server);
        assert!(openssl(&args).contains(": OK"));
    }
    assert!(openssl_fails(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &ca,
        "-verify_hostname",
        "other.example.test",
        &server
    ]));
    for client in ["ci", "build-2"] {
        let cert = s(&certs(root, &format!("clients/{client}.crt")));
        assert!(openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &client_ca,
            &cert
        ])
        .contains(": OK"));
        assert!(openssl_fails(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &ca,
            &cert
        ]));
        let subject = openssl(&["x509", "-noout", "-subject", "-in", &cert]);
        assert_eq!(
            subject.trim(),
            format!("subject=O = Example Org, CN = {client}")
        );
    }
    let ext = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage,basicConstraints",
        "-in",
        &server,
    ]);
    for want in [
        "DNS:reg.example.test",
        "DNS:alias.example.test",
        "IP Address:192.0.2.50",
        "TLS Web Server Authentication",
        "CA:FALSE",
    ] {
        assert!(ext.contains(want), "missing {want:?} in\n{ext}");
    }
    let ca_ext = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "basicConstraints,keyUsage",
        "-in",
        &ca,
    ]);
    assert!(
        ca_ext.contains("CA:TRUE, pathlen:0") && ca_ext.contains("Certificate Sign, CRL Sign"),
        "{ca_ext}"
    );

    // The summary prints the fingerprints openssl computes.
    for cert in [&ca, &server, &client_ca] {
        let fp = openssl(&["x509", "-noout", "-fingerprint", "-sha256", "-in", cert]);
        let fp = fp.trim().trim_start_matches("sha256 Fingerprint=");
        assert!(stdout.contains(fp), "{fp} not in\n{stdout}");
    }

    // The bundle: layout, modes, owners, and contents equal to the PKI files.
    let bundle = out_dir.join("ci.tar.gz");
    let file = std::fs::File::open(&bundle).expect("opening bundle");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut listing = Vec::new();
    let mut contents = BTreeMap::new();
    for entry in archive.entries().expect("reading bundle") {
        let mut entry = entry.expect("bundle entry");
        let header = entry.header().clone();
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        assert_eq!(
            (header.uid().expect("uid"), header.gid().expect("gid")),
            (0, 0),
            "{path}"
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("reading entry");
        listing.push((path.clone(), header.mode().expect("mode")));
        contents.insert(path, data);
    }
    let push = "reg.example.test:4443";
    let pull = "reg.example.test";
    let mut want = vec![("ci/".to_string(), 0o755), ("ci/README.md".into(), 0o644)];
    for tool in ["containers", "docker", "containerd"] {
        let d = format!("ci/{tool}/certs.d");
        // containerd's layout has a hosts.toml naming the files beside it.
        let toml =
            |host: &str| (tool == "containerd").then(|| (format!("{d}/{host}/hosts.toml"), 0o644));
        want.extend([(format!("ci/{tool}/"), 0o755), (format!("{d}/"), 0o755)]);
        want.push((format!("{d}/{push}/"), 0o755));
        want.extend(toml(push));
        want.extend([
            (format!("{d}/{push}/ca.crt"), 0o644),
            (format!("{d}/{push}/client.cert"), 0o644),
            (format!("{d}/{push}/client.key"), 0o600),
            (format!("{d}/{pull}/"), 0o755),
        ]);
        want.extend(toml(pull));
        want.push((format!("{d}/{pull}/ca.crt"), 0o644));
    }
    assert_eq!(listing, want);
    let read = |rel: &str| std::fs::read(certs(root, rel)).expect("reading pki file");
    for tool in ["containers", "docker", "containerd"] {
        let d = format!("ci/{tool}/certs.d");
        assert_eq!(contents[&format!("{d}/{push}/ca.crt")], read("ca/ca.crt"));
        assert_eq!(contents[&format!("{d}/{pull}/ca.crt")], read("ca/ca.crt"));
        assert_eq!(
            contents[&format!("{d}/{push}/client.cert")],
            read("clients/ci.crt")
        );
        assert_eq!(
            contents[&format!("{d}/{push}/client.key")],
            read("private/client-ci.key")
        );
    }
    let readme = String::from_utf8_lossy(&contents["ci/README.md"]).into_owned();
    assert!(
        readme.contains("podman push reg.example.test:4443/ci/myimage:1.0"),
        "{readme}"
    );
    assert!(
        readme.contains("podman pull reg.example.test/ci/myimage:1.0"),
        "{readme}"
    );
}

/// The bundle's files make a real mutual-TLS connection to the server certificate and key.
#[test]
fn bundle_completes_a_mutual_tls_handshake() {
    let setup = setup("regimage-fb-tls-");
    let root = &setup.root;
    firstboot(&setup);
    let unpack = setup.root.parent().expect("parent").join("unpacked");
    std::fs::create_dir(&unpack).expect("creating unpack dir");
    let bundle = root.join("var/lib/regimage/out/ci.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpack),
    );
    let pair = unpack.join("ci/containers/certs.d/reg.example.test:4443");

    let port = free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(certs(root, "registry.crt"))
        .arg("-key")
        .arg(certs(root, "private/registry.pem"))
        .arg("-CAfile")
        .arg(certs(root, "clients/ca.crt"))
        .args(["-Verify", "1", "-verify_return_error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let connect = |with_cert: bool| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-servername",
                "reg.example.test",
                "-verify_hostname",
                "reg.example.test",
            ])
            // -ign_eof: read the answer after our request's end of input.
            .args(["-verify_return_error", "-ign_eof", "-CAfile"])
            .arg(pair.join("ca.crt"));
        if with_cert {
            cmd.arg("-cert")
                .arg(pair.join("client.cert"))
                .arg("-key")
                .arg(pair.join("client.key"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting openssl s_client");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
        let out = child.wait_with_output().expect("waiting for s_client");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let with = connect(true);
    let without = connect(false);
    let _ = server.kill();
    let _ = server.wait();
    assert!(with.contains("Verify return code: 0 (ok)"), "{with}");
    assert!(with.contains("HTTP/1.0 200 ok"), "{with}");
    assert!(
        !without.contains("HTTP/1.0 200 ok"),
        "served without a client certificate:\n{without}"
    );
    assert!(without.contains("certificate required"), "{without}");
}

#[test]
fn rerun_keeps_every_file_and_bundle() {
    let setup = setup("regimage-fb-rerun-");
    firstboot(&setup);
    let before = snapshot(&setup.root);
    let out = firstboot(&setup);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(snapshot(&setup.root), before);
    assert!(
        !stdout.contains("made") && !stdout.contains("replaced"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("  kept ").count(), 11 + 2, "{stdout}");

    // Deleting one leaf remakes that leaf and its bundle only.
    std::fs::remove_file(certs(&setup.root, "clients/build-2.crt")).expect("removing");
    firstboot(&setup);
    let after = snapshot(&setup.root);
    let changed: Vec<String> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| s(p.strip_prefix(&setup.root).expect("under root")))
        .collect();
    assert_eq!(
        changed,
        [
            "etc/registry/certs/clients/build-2.crt",
            "etc/registry/certs/private/client-build-2.key",
            // The client index records the new certificate's serial.
            "var/lib/regimage/clients.json",
            "var/lib/regimage/out/build-2.tar.gz",
        ]
    );
}

#[test]
fn ca_certificate_without_key_fails_and_changes_nothing() {
    let setup = setup("regimage-fb-broken-");
    firstboot(&setup);
    std::fs::remove_file(certs(&setup.root, "private/client-ca.key")).expect("removing key");
    std::fs::remove_file(certs(&setup.root, "registry.crt")).expect("removing leaf");
    let before = snapshot(&setup.root);
    let out = output(
        regimage()
            .args(["firstboot", "--no-system", "-c"])
            .arg(&setup.config)
            .arg("--root")
            .arg(&setup.root),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("client CA certificate") && stderr.contains("client-ca.key is missing"),
        "{stderr}"
    );
    assert_eq!(snapshot(&setup.root), before);
}

#[test]
fn refuses_full_first_boot_and_a_bad_root() {
    let setup = setup("regimage-fb-args-");
    let out = output(regimage().args(["firstboot", "--root"]).arg(&setup.root));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-system"));
    let missing = setup.root.join("missing");
    let out = output(
        regimage()
            .args(["firstboot", "--no-system", "--root"])
            .arg(&missing),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));
    let file = setup.root.join("file");
    std::fs::write(&file, "").expect("writing file");
    let out = output(
        regimage()
            .args(["firstboot", "--no-system", "--root"])
            .arg(&file),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&setup.root).expect("listing").count(), 1);
}
