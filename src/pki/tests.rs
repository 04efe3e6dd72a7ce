//! Tests of the whole layout: modes, openssl verification, reruns, broken CAs.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::CertificateParams;
use time::OffsetDateTime;

use super::ca::{limited_cn, subject, FoundCa};
use super::report::pem_to_der;
use super::*;
use crate::config::KeyAlgorithm;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::config::Pki;

fn config(algorithm: KeyAlgorithm) -> Config {
    Config {
        organization: "Example Org".into(),
        clients: vec!["ci".into(), "laptop".into()],
        pki: Pki {
            key_algorithm: algorithm,
            ..Pki::default()
        },
        ..Config::default()
    }
}

fn sans() -> Sans {
    Sans {
        primary_name: "reg.example.test".into(),
        dns_names: vec!["reg.example.test".into(), "alias.example.test".into()],
        ip_addresses: vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ],
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Runs openssl and returns stdout; panics with stderr when it fails.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl_fails(args: &[&str]) -> bool {
    !Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl")
        .status
        .success()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn make(dir: &Path, algorithm: KeyAlgorithm) -> (PkiPaths, PkiReport) {
    let paths = PkiPaths::new(dir);
    let report = ensure_pki(&paths, &config(algorithm), &sans(), None).unwrap();
    (paths, report)
}

/// The files land where the guide (and the nginx config, and the README) say, and nowhere else.
#[test]
fn files_land_where_the_guide_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), KeyAlgorithm::EcdsaP256);
    let written: Vec<String> = snapshot(dir.path())
        .into_keys()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    let mut want = [
        "ca/ca.crt",
        "clients/ca.crt",
        "clients/ci.crt",
        "clients/crl.pem",
        "clients/laptop.crt",
        "private/ca.key",
        "private/client-ca.key",
        "private/client-ci.key",
        "private/client-laptop.key",
        "private/registry.pem",
        "registry.crt",
    ]
    .map(|f| format!("etc/registry/certs/{f}"));
    want.sort();
    assert_eq!(written, want);
}

#[test]
fn fresh_layout_has_exact_modes_and_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (p, report) = make(dir.path(), KeyAlgorithm::EcdsaP256);

    for (d, m) in [
        (&p.dir, 0o755),
        (&p.ca_dir, 0o755),
        (&p.private_dir, 0o750),
        (&p.clients_dir, 0o755),
    ] {
        assert_eq!(mode(d), m, "{}", d.display());
    }
    let files = [
        (p.ca_cert.clone(), 0o644),
        (p.ca_key.clone(), 0o600),
        (p.server_cert.clone(), 0o644),
        (p.server_pem.clone(), 0o640),
        (p.client_ca_cert.clone(), 0o640),
        (p.client_ca_key.clone(), 0o600),
        (p.client_cert("ci"), 0o644),
        (p.client_key("ci"), 0o600),
        (p.client_cert("laptop"), 0o644),
        (p.client_key("laptop"), 0o600),
        (p.client_crl.clone(), 0o644),
    ];
    for (f, m) in &files {
        assert_eq!(mode(f), *m, "{}", f.display());
    }
    // Nothing else (no temporary files, no requests/).
    assert_eq!(snapshot(&p.dir).len(), files.len());
    let reported: Vec<&PathBuf> = report.files.iter().map(|f| &f.path).collect();
    for (f, _) in &files {
        assert!(reported.contains(&f), "{} not reported", f.display());
    }
    assert!(report.files.iter().all(|f| f.action == Action::Made));

    // Chains and purposes.
    let ok = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        s(&p.ca_cert),
        s(&p.server_cert),
    ]);
    assert!(ok.contains(": OK"), "{ok}");
    for client in ["ci", "laptop"] {
        let ok = openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.client_cert(client)),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
    }
    // The two CAs are separate: neither leaf verifies against the other CA, and the
    // server certificate is not a client certificate.
    assert!(openssl_fails(&[
        "verify",
        "-CAfile",
        s(&p.client_ca_cert),
        s(&p.server_cert)
    ]));
    assert!(openssl_fails(&[
        "verify",
        "-CAfile",
        s(&p.ca_cert),
        s(&p.client_cert("ci"))
    ]));
    assert!(openssl_fails(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        s(&p.ca_cert),
        s(&p.server_cert)
    ]));

    // Extensions and subjects.
    let ext = "subjectAltName,extendedKeyUsage,basicConstraints,keyUsage";
    let server = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-ext",
        ext,
        "-in",
        s(&p.server_cert),
    ]);
    for want in [
        "subject=O = Example Org, CN = reg.example.test",
        "DNS:reg.example.test",
        "DNS:alias.example.test",
        "IP Address:192.0.2.10",
        "IP Address:2001:DB8:0:0:0:0:0:10",
        "TLS Web Server Authentication",
        "CA:FALSE",
        "Digital Signature",
    ] {
        assert!(server.contains(want), "missing {want:?} in\n{server}");
    }
    // IP addresses are IP SANs, never DNS names.
    assert!(!server.contains("DNS:192.0.2.10"), "{server}");
    assert!(!server.contains("Key Encipherment"), "{server}");
    let client = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-ext",
        ext,
        "-in",
        s(&p.client_cert("ci")),
    ]);
    for want in [
        "subject=O = Example Org, CN = ci",
        "TLS Web Client Authentication",
        "CA:FALSE",
    ] {
        assert!(client.contains(want), "missing {want:?} in\n{client}");
    }
    assert!(!client.contains("Server Authentication"), "{client}");
    for (ca, cn) in [
        (&p.ca_cert, "Example Org Registry CA"),
        (&p.client_ca_cert, "Example Org Client CA"),
    ] {
        let text = openssl(&["x509", "-noout", "-subject", "-ext", ext, "-in", s(ca)]);
        for want in [
            format!("subject=O = Example Org, CN = {cn}"),
            "critical".into(),
            "CA:TRUE, pathlen:0".into(),
            "Certificate Sign, CRL Sign".into(),
        ] {
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
    }

    // Random 16-byte serials, all different.
    let mut serials = Vec::new();
    for cert in [
        &p.ca_cert,
        &p.server_cert,
        &p.client_ca_cert,
        &p.client_cert("ci"),
        &p.client_cert("laptop"),
    ] {
        let out = openssl(&["x509", "-noout", "-serial", "-in", s(cert)]);
        let serial = out.trim().trim_start_matches("serial=").to_string();
        assert_eq!(serial.len(), 32, "{serial}");
        serials.push(serial);
    }
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), serials.len(), "{serials:?}");

    // Validity from the config, backdated a little; the report matches openssl.
    let der = pem_to_der(&fs::read_to_string(&p.server_cert).unwrap()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let now = OffsetDateTime::now_utc();
    let before = now - x509.validity().not_before.to_datetime();
    assert!(
        before > Duration::minutes(4) && before < Duration::minutes(6),
        "{before}"
    );
    let days = (x509.validity().not_after.to_datetime() - now).whole_days();
    assert!((396..=397).contains(&days), "{days}");
    let server_report = report.certificate("server", None).unwrap();
    let fp = openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        s(&p.server_cert),
    ]);
    assert_eq!(
        fp.trim(),
        format!("sha256 Fingerprint={}", server_report.sha256)
    );
    assert_eq!(server_report.name, "reg.example.test");
    assert_eq!(server_report.serial, serials[1].to_ascii_lowercase());
    let ca_days = (fs::read_to_string(&p.ca_cert).map(|pem| {
        let der = pem_to_der(&pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.validity().not_after.to_datetime() - now
    }))
    .unwrap()
    .whole_days();
    assert!((3649..=3650).contains(&ca_days), "{ca_days}");
    assert!(report.certificate("client", Some("laptop")).is_some());
}

#[test]
fn rerun_keeps_everything_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let before = snapshot(&p.dir);
    // A kept file gets its mode back.
    fs::set_permissions(&p.ca_key, fs::Permissions::from_mode(0o644)).unwrap();
    let (_, second) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    assert_eq!(snapshot(&p.dir), before);
    assert_eq!(mode(&p.ca_key), 0o600);
    assert!(
        second.files.iter().all(|f| f.action == Action::Kept),
        "{second:?}"
    );
    let fps = |r: &PkiReport| {
        r.certificates
            .iter()
            .map(|c| c.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(fps(&first), fps(&second));
}

#[test]
fn deleting_a_leaf_remakes_only_that_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let before = snapshot(&p.dir);
    // registry.pem is the server's pair (registry.crt only a copy of its certificate).
    fs::remove_file(&p.server_pem).unwrap();
    fs::remove_file(p.client_key("laptop")).unwrap();
    let (_, report) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let after = snapshot(&p.dir);
    let changed: Vec<&PathBuf> = after
        .iter()
        .filter(|(path, bytes)| before.get(*path) != Some(bytes))
        .map(|(path, _)| path)
        .collect();
    let want = [
        p.server_cert.clone(),
        p.server_pem.clone(),
        p.client_cert("laptop"),
        p.client_key("laptop"),
    ];
    assert_eq!(changed.len(), want.len(), "{changed:?}");
    for w in &want {
        assert!(changed.contains(&w), "{} not remade", w.display());
    }
    let action = |path: &Path| {
        report
            .files
            .iter()
            .find(|f| f.path == path)
            .unwrap()
            .clone()
    };
    assert_eq!(action(&p.server_cert).action, Action::Made);
    let laptop = action(&p.client_cert("laptop"));
    assert_eq!(laptop.action, Action::Replaced);
    assert!(laptop.reason.unwrap().contains("key"));
    assert_eq!(action(&p.client_cert("ci")).action, Action::Kept);
    let ok = openssl(&["verify", "-CAfile", s(&p.ca_cert), s(&p.server_cert)]);
    assert!(ok.contains(": OK"), "{ok}");
}

#[test]
fn missing_wanted_san_remakes_the_server_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let before = snapshot(&p.dir);
    let mut wanted = sans();
    wanted.ip_addresses.push("198.51.100.4".parse().unwrap());
    let report = ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &wanted, None).unwrap();
    let server = report
        .files
        .iter()
        .find(|f| f.path == p.server_cert)
        .unwrap();
    assert_eq!(server.action, Action::Replaced);
    assert!(
        server.reason.as_deref().unwrap().contains("198.51.100.4"),
        "{server:?}"
    );
    let text = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        s(&p.server_cert),
    ]);
    assert!(text.contains("IP Address:198.51.100.4"), "{text}");
    assert_eq!(
        fs::read(p.client_cert("ci")).unwrap(),
        before[&p.client_cert("ci")]
    );
    assert_eq!(fs::read(&p.ca_cert).unwrap(), before[&p.ca_cert]);
    // Fewer wanted names than the certificate has: still covered, kept.
    let mut fewer = sans();
    fewer.dns_names.pop();
    let server_now = fs::read(&p.server_cert).unwrap();
    ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &fewer, None).unwrap();
    assert_eq!(fs::read(&p.server_cert).unwrap(), server_now);
}

#[test]
fn leaf_of_another_ca_or_expiring_soon_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    // A client certificate from some other CA, with its matching key.
    let other = tempfile::tempdir().unwrap();
    let (q, _) = make(other.path(), KeyAlgorithm::EcdsaP256);
    fs::copy(q.client_cert("ci"), p.client_cert("ci")).unwrap();
    fs::copy(q.client_key("ci"), p.client_key("ci")).unwrap();
    // A client certificate of the right CA that expires in 10 days.
    let ca = load_ca(
        &p.client_ca_cert,
        &p.client_ca_key,
        "client CA",
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let FoundCa::Whole(ca) = ca else {
        panic!("the client CA is not whole")
    };
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = subject("Example Org", Some("laptop"));
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(10);
    let cert = params.signed_by(&key, &ca.issuer().unwrap()).unwrap();
    fs::write(p.client_cert("laptop"), cert.pem()).unwrap();
    fs::write(p.client_key("laptop"), key.serialize_pem()).unwrap();

    let report = ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &sans(), None).unwrap();
    let reason = |path: &Path| {
        let f = report.files.iter().find(|f| f.path == path).unwrap();
        assert_eq!(f.action, Action::Replaced, "{f:?}");
        f.reason.clone().unwrap()
    };
    assert!(reason(&p.client_cert("ci")).contains("not signed by the current CA"));
    assert!(reason(&p.client_cert("laptop")).contains("expires on"));
    for client in ["ci", "laptop"] {
        let ok = openssl(&[
            "verify",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.client_cert(client)),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
    }
}

#[test]
fn ca_half_missing_is_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let cfg = config(KeyAlgorithm::EcdsaP256);

    // Certificate without key; another leaf missing too, which must not be remade.
    fs::remove_file(&p.ca_key).unwrap();
    fs::remove_file(p.client_cert("ci")).unwrap();
    let before = snapshot(&p.dir);
    let e = ensure_pki(&p, &cfg, &sans(), None).unwrap_err().to_string();
    assert!(
        e.contains("server CA certificate") && e.contains("ca.key is missing"),
        "{e}"
    );
    assert_eq!(snapshot(&p.dir), before);

    // An unparsable key without its certificate.
    let dir2 = tempfile::tempdir().unwrap();
    let (p2, _) = make(dir2.path(), KeyAlgorithm::EcdsaP256);
    fs::remove_file(&p2.client_ca_cert).unwrap();
    let good_key = fs::read(&p2.client_ca_key).unwrap();
    fs::write(&p2.client_ca_key, b"not a key").unwrap();
    let before = snapshot(&p2.dir);
    let e = ensure_pki(&p2, &cfg, &sans(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("client CA key") && e.contains("does not parse"),
        "{e}"
    );
    assert_eq!(snapshot(&p2.dir), before);
    fs::write(&p2.client_ca_key, good_key).unwrap();

    // A key that belongs to another CA.
    let dir3 = tempfile::tempdir().unwrap();
    let (p3, _) = make(dir3.path(), KeyAlgorithm::EcdsaP256);
    fs::copy(&p2.ca_key, &p3.ca_key).unwrap();
    let before = snapshot(&p3.dir);
    let e = ensure_pki(&p3, &cfg, &sans(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to the certificate"), "{e}");
    assert_eq!(snapshot(&p3.dir), before);

    // A lone CA certificate in an empty tree: nothing at all is created.
    let dir4 = tempfile::tempdir().unwrap();
    let p4 = PkiPaths::new(dir4.path());
    fs::create_dir_all(&p4.ca_dir).unwrap();
    fs::copy(&p2.ca_cert, &p4.ca_cert).unwrap();
    assert!(ensure_pki(&p4, &cfg, &sans(), None).is_err());
    assert_eq!(snapshot(&p4.dir).len(), 1);
    assert!(!p4.private_dir.exists());
}

#[test]
fn ca_key_without_certificate_gets_its_certificate_again() {
    // What a power cut between the CA key's write and its certificate's leaves.
    let dir = tempfile::tempdir().unwrap();
    let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let cfg = config(KeyAlgorithm::EcdsaP256);
    let key = fs::read(&p.client_ca_key).unwrap();
    let client = fs::read(p.client_cert("ci")).unwrap();
    fs::remove_file(&p.client_ca_cert).unwrap();
    let report = ensure_pki(&p, &cfg, &sans(), None).unwrap();
    // The key is kept; a certificate is made for it; the client certificate it signed
    // still verifies against the new one, so it is kept too.
    assert_eq!(fs::read(&p.client_ca_key).unwrap(), key);
    assert_eq!(mode(&p.client_ca_key), 0o600);
    let ca = report.certificate("client-ca", None).unwrap();
    assert_eq!(ca.action, Action::Made);
    assert_ne!(
        ca.sha256,
        first.certificate("client-ca", None).unwrap().sha256
    );
    let cert_file = report
        .files
        .iter()
        .find(|f| f.path == p.client_ca_cert)
        .unwrap();
    assert!(cert_file
        .reason
        .as_deref()
        .unwrap()
        .contains("existing key"));
    let client_report = report.certificate("client", Some("ci")).unwrap();
    assert_eq!(client_report.action, Action::Kept);
    assert_eq!(fs::read(p.client_cert("ci")).unwrap(), client);
    let verify = openssl(&[
        "verify",
        "-CAfile",
        s(&p.client_ca_cert),
        s(&p.client_cert("ci")),
    ]);
    assert!(verify.contains(": OK"), "{verify}");
    // The key matches the new certificate.
    let pubkey = |args: &[&str]| openssl(args);
    assert_eq!(
        pubkey(&["pkey", "-in", s(&p.client_ca_key), "-pubout"]),
        pubkey(&["x509", "-in", s(&p.client_ca_cert), "-noout", "-pubkey"])
    );
    // And the next run keeps everything.
    let again = ensure_pki(&p, &cfg, &sans(), None).unwrap();
    assert!(again.files.iter().all(|f| f.action == Action::Kept));
}

#[test]
fn existing_ca_is_reused_for_new_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (p, first) = make(dir.path(), KeyAlgorithm::EcdsaP256);
    let mut cfg = config(KeyAlgorithm::EcdsaP256);
    cfg.clients.push("new-runner".into());
    let report = ensure_pki(&p, &cfg, &sans(), None).unwrap();
    let fp = |r: &PkiReport, role| r.certificate(role, None).unwrap().sha256.clone();
    assert_eq!(fp(&first, "server-ca"), fp(&report, "server-ca"));
    assert_eq!(fp(&first, "client-ca"), fp(&report, "client-ca"));
    let ok = openssl(&[
        "verify",
        "-CAfile",
        s(&p.client_ca_cert),
        s(&p.client_cert("new-runner")),
    ]);
    assert!(ok.contains(": OK"), "{ok}");
}

#[test]
fn client_named_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(KeyAlgorithm::EcdsaP256);
    cfg.clients = vec!["ci".into(), "ca".into()];
    let e = ensure_pki(&PkiPaths::new(dir.path()), &cfg, &sans(), None).unwrap_err();
    assert!(e.to_string().contains("clients[1]"), "{e}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
#[ignore = "needs root (make unit runs it)"]
fn proxy_group_is_given_to_what_nginx_reads() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "changing a file's group to another group needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = PkiPaths::new(dir.path());
    let gid = 54321;
    ensure_pki(&p, &config(KeyAlgorithm::EcdsaP256), &sans(), Some(gid)).unwrap();
    let group = |path: &Path| fs::metadata(path).unwrap().gid();
    for path in [&p.private_dir, &p.server_pem, &p.client_ca_cert] {
        assert_eq!(group(path), gid, "{}", path.display());
    }
    for path in [
        &p.ca_key,
        &p.client_ca_key,
        &p.client_key("ci"),
        &p.ca_cert,
        &p.server_cert,
    ] {
        assert_ne!(group(path), gid, "{}", path.display());
    }
    assert_eq!(mode(&p.server_pem), 0o640);
}

#[test]
fn each_key_algorithm_makes_its_key_type() {
    // RSA-4096 runs once, here; it is the slow one.
    for (algorithm, want) in [
        (KeyAlgorithm::EcdsaP256, "ASN1 OID: prime256v1"),
        (KeyAlgorithm::EcdsaP384, "ASN1 OID: secp384r1"),
        (KeyAlgorithm::Rsa2048, "Private-Key: (2048 bit, 2 primes)"),
        (KeyAlgorithm::Rsa4096, "Private-Key: (4096 bit, 2 primes)"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(algorithm);
        cfg.clients = vec!["ci".into()];
        let p = PkiPaths::new(dir.path());
        ensure_pki(&p, &cfg, &sans(), None).unwrap();
        for key in [
            &p.ca_key,
            &p.server_pem,
            &p.client_ca_key,
            &p.client_key("ci"),
        ] {
            let text = openssl(&["pkey", "-noout", "-text", "-in", s(key)]);
            assert!(
                text.contains(want),
                "{algorithm:?} {}: {}",
                key.display(),
                text.lines().next().unwrap_or("")
            );
        }
        let ok = openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            s(&p.ca_cert),
            s(&p.server_cert),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        let ok = openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&p.client_ca_cert),
            s(&p.client_cert("ci")),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        let usage = openssl(&[
            "x509",
            "-noout",
            "-ext",
            "keyUsage",
            "-in",
            s(&p.server_cert),
        ]);
        let rsa = matches!(algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096);
        assert_eq!(
            usage.contains("Key Encipherment"),
            rsa,
            "{algorithm:?}: {usage}"
        );
        // Reloading the existing CA (rcgen Issuer from PEM) works for every key type.
        fs::remove_file(&p.server_cert).unwrap();
        ensure_pki(&p, &cfg, &sans(), None).unwrap();
        let ok = openssl(&["verify", "-CAfile", s(&p.ca_cert), s(&p.server_cert)]);
        assert!(ok.contains(": OK"), "{ok}");
    }
}

#[test]
fn cn_fits_in_64_characters() {
    let cn = limited_cn(&"x".repeat(64), " Registry CA");
    assert_eq!(cn.chars().count(), 64);
    assert!(cn.ends_with(" Registry CA"));
    assert_eq!(limited_cn("Org", " Client CA"), "Org Client CA");
    let t = OffsetDateTime::from_unix_timestamp(2_053_857_605).unwrap();
    assert_eq!(rfc3339(t), "2035-01-31T12:00:05Z");
    // Whole seconds in UTC, whatever the offset and the fraction.
    let t = (t + time::Duration::nanoseconds(999_999_999))
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
    assert_eq!(rfc3339(t), "2035-01-31T12:00:05Z");
}
