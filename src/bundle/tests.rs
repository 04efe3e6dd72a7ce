//! Tests of the bundles: layouts, modes, hosts.toml, the README's runnable blocks.

use super::*;
use std::io::Read;

/// A throwaway CA-less pair is enough: the bundle code only copies and parses PEM.
fn self_signed(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = rcgen::date_time_ymd(2025, 1, 2);
    params.not_after = rcgen::date_time_ymd(2026, 2, 3);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// PEM texts that outlive the specs borrowing them.
struct Pems {
    ca: String,
    cert: String,
    key: String,
}

fn pems() -> Pems {
    let (ca, _) = self_signed("ca");
    let (cert, key) = self_signed("ci");
    Pems { ca, cert, key }
}

fn spec<'a>(p: &'a Pems, client: &'a str, host: &'a str, pull_port: u16) -> BundleSpec<'a> {
    BundleSpec {
        client,
        host,
        push_port: 4443,
        pull_port,
        organization: "Example Org",
        bundle_path: Path::new("/var/lib/regimage/out/ci.tar.gz"),
        login_user: None,
        server_ca_pem: p.ca.as_bytes(),
        client_cert_pem: p.cert.as_bytes(),
        client_key_pem: p.key.as_bytes(),
        mtime: 1_735_776_000,
    }
}

fn entries(bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                data,
            )
        })
        .collect()
}

/// The ```sh blocks of the README section at `path` (`["Docker", "Push"]` is the `###
/// Push` under `## Docker`), in the contract's reading (readme-contract.md).
fn section_blocks(readme: &str, path: &[&str]) -> Vec<String> {
    let mut headings: Vec<String> = Vec::new();
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(b) = block.as_mut() {
            if line == "```" {
                blocks.push(block.take().unwrap());
            } else {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if line == "```sh" && headings == path {
            block = Some(String::new());
        } else if let Some(h) = line.strip_prefix("## ") {
            headings = vec![h.to_string()];
        } else if let Some(h) = line.strip_prefix("### ") {
            headings.truncate(1);
            headings.push(h.to_string());
        }
    }
    assert!(!blocks.is_empty(), "no sh block under {path:?}:\n{readme}");
    blocks
}

#[test]
fn registry_host_drops_443_and_brackets_ipv6() {
    assert_eq!(registry_host("reg.example.com", 443), "reg.example.com");
    assert_eq!(
        registry_host("reg.example.com", 4443),
        "reg.example.com:4443"
    );
    assert_eq!(registry_host("192.0.2.1", 8443), "192.0.2.1:8443");
    assert_eq!(registry_host("2001:db8::1", 4443), "[2001:db8::1]:4443");
    assert_eq!(registry_host("2001:db8::1", 443), "[2001:db8::1]");
    assert_eq!(registry_host("localhost", 443), "localhost");
    // A single-label name would be read as a Docker Hub repository without the port.
    assert_eq!(registry_host("vm", 443), "vm:443");
    assert_eq!(registry_host("vm", 4443), "vm:4443");
    assert_eq!(url_host("2001:db8::1"), "[2001:db8::1]");
    assert_eq!(url_host("vm"), "vm");
}

#[test]
fn layout_modes_owners_and_reproducibility() {
    let p = pems();
    let spec = BundleSpec {
        pull_port: 8443,
        ..spec(&p, "ci", "reg.example.com", 8443)
    };
    let bytes = bundle_tar_gz(&spec).unwrap();
    assert_eq!(bytes, bundle_tar_gz(&spec).unwrap(), "not reproducible");
    let got = entries(&bytes);
    let listing: Vec<(String, u32)> = got.iter().map(|e| (e.0.clone(), e.1)).collect();
    let mut want = vec![("ci/".to_string(), 0o755), ("ci/README.md".into(), 0o644)];
    for tool in ["containers", "docker", "containerd"] {
        let d = format!("ci/{tool}/certs.d");
        let push = format!("{d}/reg.example.com:4443");
        let pull = format!("{d}/reg.example.com:8443");
        want.extend([(format!("ci/{tool}/"), 0o755), (format!("{d}/"), 0o755)]);
        want.push((format!("{push}/"), 0o755));
        if tool == "containerd" {
            want.push((format!("{push}/hosts.toml"), 0o644));
        }
        want.extend([
            (format!("{push}/ca.crt"), 0o644),
            (format!("{push}/client.cert"), 0o644),
            (format!("{push}/client.key"), 0o600),
            (format!("{pull}/"), 0o755),
        ]);
        if tool == "containerd" {
            want.push((format!("{pull}/hosts.toml"), 0o644));
        }
        want.push((format!("{pull}/ca.crt"), 0o644));
    }
    assert_eq!(listing, want);
    for (path, _, uid, gid, mtime, data) in &got {
        assert_eq!((*uid, *gid, *mtime), (0, 0, 1_735_776_000), "{path}");
        let data = String::from_utf8(data.clone()).unwrap();
        if path.ends_with("ca.crt") {
            assert_eq!(data, p.ca, "{path}");
        } else if path.ends_with("client.cert") {
            assert_eq!(data, p.cert, "{path}");
        } else if path.ends_with("client.key") {
            assert_eq!(data, p.key, "{path}");
        } else if path.ends_with(":4443/hosts.toml") {
            assert_eq!(data, hosts_toml("reg.example.com:4443", true), "{path}");
        } else if path.ends_with(":8443/hosts.toml") {
            assert_eq!(data, hosts_toml("reg.example.com:8443", false), "{path}");
        }
    }
    // A different time gives different bytes (the time really is in the archive).
    let later = BundleSpec {
        mtime: 1_735_776_001,
        ..spec.clone()
    };
    assert_ne!(bytes, bundle_tar_gz(&later).unwrap());
}

#[test]
fn hosts_toml_names_the_files_beside_it() {
    assert_eq!(
        hosts_toml("vm:4443", true),
        "# containerd registry host config, made by regimage; paths are relative to this file.\n\
         server = \"https://vm:4443\"\n\
         \n\
         [host.\"https://vm:4443\"]\n  \
         capabilities = [\"pull\", \"resolve\", \"push\"]\n  \
         ca = \"ca.crt\"\n  \
         client = [[\"client.cert\", \"client.key\"]]\n"
    );
    assert_eq!(
        hosts_toml("reg.example.com", false),
        "# containerd registry host config, made by regimage; paths are relative to this file.\n\
         server = \"https://reg.example.com\"\n\
         \n\
         [host.\"https://reg.example.com\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n  \
         ca = \"ca.crt\"\n"
    );
}

#[test]
fn certs_d_directories_use_the_client_names() {
    let p = pems();
    let names = |host| -> Vec<String> {
        entries(&bundle_tar_gz(&spec(&p, "build-1", host, 443)).unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect()
    };
    let dotted = names("reg.example.com");
    for tool in ["containers", "docker", "containerd"] {
        let want = format!("build-1/{tool}/certs.d/reg.example.com/ca.crt");
        assert!(dotted.contains(&want), "{want} not in {dotted:?}");
    }
    assert!(!dotted.iter().any(|n| n.contains(":443/")), "{dotted:?}");
    // A single-label name keeps :443 in every layout, as in the references.
    let single = names("vm");
    for tool in ["containers", "docker", "containerd"] {
        for want in [
            format!("build-1/{tool}/certs.d/vm:443/ca.crt"),
            format!("build-1/{tool}/certs.d/vm:4443/client.key"),
        ] {
            assert!(single.contains(&want), "{want} not in {single:?}");
        }
    }
    assert!(
        !single.iter().any(|n| n.contains("certs.d/vm/")),
        "{single:?}"
    );
}

/// The README's fingerprint check points at where the registry shows it: first boot's ready
/// line (`firstboot::ready_line`) and `regimage status` (issue 11).
#[test]
fn readme_says_where_the_registry_shows_its_ca_fingerprint() {
    let p = pems();
    let readme = render_readme(&spec(&p, "ci", "vm", 443)).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "regimage: registry ready: ... server CA SHA-256",
        "`sudo regimage status`",
        "journalctl -u regimage-firstboot.service",
    ] {
        assert!(flat.contains(want), "{want:?} missing:\n{readme}");
    }
    let status = crate::firstboot::status::Status {
        server_ca_sha256: "AB:CD".into(),
        ..Default::default()
    };
    let line = crate::firstboot::ready_line(&crate::config::Config::default(), &status);
    assert!(line.starts_with("regimage: registry ready: "), "{line}");
    assert!(line.contains(" server CA SHA-256 AB:CD "), "{line}");
}

#[test]
fn readme_headings_follow_the_contract() {
    let p = pems();
    let readme = render_readme(&spec(&p, "ci", "vm", 443)).unwrap();
    let headings: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        .collect();
    assert_eq!(
        headings,
        [
            "## Copy the bundle off the registry",
            "## Unpack",
            "## Podman, Buildah and Skopeo",
            "### Install",
            "### Install for one user",
            "### Push",
            "### Pull",
            "## Docker",
            "### Install",
            "### Push",
            "### Pull",
            "## containerd",
            "### Install",
            "### Push",
            "### Pull",
            "## Check the connection",
            "## Clean up",
        ]
    );
    // Every fence is an sh block (or its end): nothing runnable hides in another kind.
    for line in readme.lines().filter(|l| l.starts_with("```")) {
        assert!(line == "```sh" || line == "```", "{line:?}");
    }
    assert!(!readme.contains("{{"), "unrendered variable:\n{readme}");
}

#[test]
fn readme_commands_for_a_single_label_host() {
    let p = pems();
    let spec = BundleSpec {
        login_user: Some("debian"),
        ..spec(&p, "ci", "vm", 443)
    };
    let readme = render_readme(&spec).unwrap();
    let blocks = |path: &[&str]| section_blocks(&readme, path).concat();
    assert_eq!(
        blocks(&["Copy the bundle off the registry"]),
        "ssh debian@vm sudo cat /var/lib/regimage/out/ci.tar.gz > ci.tar.gz\n"
    );
    assert!(readme.contains("`debian` is the default user"), "{readme}");
    assert_eq!(
        blocks(&["Unpack"]),
        "dir=$(mktemp -d)\ntar -xzf ci.tar.gz -C \"$dir\"\n"
    );
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Install"]),
        "sudo mkdir -p /etc/containers/certs.d\n\
         sudo cp -r \"$dir/ci/containers/certs.d/.\" /etc/containers/certs.d/\n"
    );
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Install for one user"]),
        "mkdir -p ~/.config/containers/certs.d\n\
         cp -r \"$dir/ci/containers/certs.d/.\" ~/.config/containers/certs.d/\n"
    );
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Push"]),
        "podman tag localhost/myimage:1.0 vm:4443/ci/myimage:1.0\n\
         podman push vm:4443/ci/myimage:1.0\n\
         skopeo copy oci-archive:myimage.tar docker://vm:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Pull"]),
        "podman pull vm:443/ci/myimage:1.0\n\
         skopeo inspect docker://vm:443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Docker", "Install"]),
        "sudo mkdir -p /etc/docker/certs.d\n\
         sudo cp -r \"$dir/ci/docker/certs.d/.\" /etc/docker/certs.d/\n"
    );
    assert_eq!(
        blocks(&["Docker", "Push"]),
        "docker tag myimage:1.0 vm:4443/ci/myimage:1.0\n\
         docker push vm:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Docker", "Pull"]),
        "docker pull vm:443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["containerd", "Install"]),
        "sudo mkdir -p /etc/containerd/certs.d\n\
         sudo cp -r \"$dir/ci/containerd/certs.d/.\" /etc/containerd/certs.d/\n"
    );
    assert_eq!(
        blocks(&["containerd", "Push"]),
        "sudo ctr images tag docker.io/library/myimage:1.0 vm:4443/ci/myimage:1.0\n\
         sudo ctr images push --hosts-dir /etc/containerd/certs.d vm:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["containerd", "Pull"]),
        "sudo ctr images pull --hosts-dir /etc/containerd/certs.d vm:443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Check the connection"]),
        "certs=/etc/containers/certs.d\n\
         (cd \"$certs/vm:4443\" && sudo curl --fail -w '\\n' --cacert ./ca.crt --cert ./client.cert --key ./client.key https://vm:4443/v2/)\n\
         (cd \"$certs/vm:443\" && curl --fail -w '\\n' --cacert ./ca.crt https://vm:443/v2/)\n"
    );
    assert_eq!(blocks(&["Clean up"]), "rm -rf \"$dir\"\n");
    assert!(readme.contains("`vm` has no dot"), "{readme}");
}

#[test]
fn readme_commands_for_a_dotted_host() {
    let p = pems();
    let spec = BundleSpec {
        organization: "Example & <Org>",
        ..spec(&p, "ci", "reg.example.com", 443)
    };
    let readme = render_readme(&spec).unwrap();
    let blocks = |path: &[&str]| section_blocks(&readme, path).concat();
    // No login known: a placeholder the prose explains.
    assert_eq!(
        blocks(&["Copy the bundle off the registry"]),
        "ssh ADMIN@reg.example.com sudo cat /var/lib/regimage/out/ci.tar.gz > ci.tar.gz\n"
    );
    assert!(readme.contains("Replace `ADMIN`"), "{readme}");
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Push"]),
        "podman tag localhost/myimage:1.0 reg.example.com:4443/ci/myimage:1.0\n\
         podman push reg.example.com:4443/ci/myimage:1.0\n\
         skopeo copy oci-archive:myimage.tar docker://reg.example.com:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Podman, Buildah and Skopeo", "Pull"]),
        "podman pull reg.example.com/ci/myimage:1.0\n\
         skopeo inspect docker://reg.example.com/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Docker", "Push"]),
        "docker tag myimage:1.0 reg.example.com:4443/ci/myimage:1.0\n\
         docker push reg.example.com:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Docker", "Pull"]),
        "docker pull reg.example.com/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["containerd", "Push"]),
        "sudo ctr images tag docker.io/library/myimage:1.0 reg.example.com:4443/ci/myimage:1.0\n\
         sudo ctr images push --hosts-dir /etc/containerd/certs.d reg.example.com:4443/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["containerd", "Pull"]),
        "sudo ctr images pull --hosts-dir /etc/containerd/certs.d reg.example.com/ci/myimage:1.0\n"
    );
    assert_eq!(
        blocks(&["Check the connection"]),
        "certs=/etc/containers/certs.d\n\
         (cd \"$certs/reg.example.com:4443\" && sudo curl --fail -w '\\n' --cacert ./ca.crt --cert ./client.cert --key ./client.key https://reg.example.com:4443/v2/)\n\
         (cd \"$certs/reg.example.com\" && curl --fail -w '\\n' --cacert ./ca.crt https://reg.example.com/v2/)\n"
    );
    for needle in [
        "valid until 2026-02-03T00:00:00Z",
        // No HTML escaping in markdown.
        "Example & <Org>",
    ] {
        assert!(readme.contains(needle), "missing {needle:?} in:\n{readme}");
    }
    assert!(!readme.contains("has no dot"), "{readme}");
    let der = pem_der(p.ca.as_bytes()).unwrap();
    assert!(readme.contains(&pki::fingerprint(&der)));
}

/// The connection check, run by bash as written against the installed files, gives curl
/// file names it can open: no ':' for curl to split --cert at (it would read the rest as
/// a passphrase and exit 58).
#[test]
fn connection_check_passes_curl_whole_file_names() {
    let p = pems();
    let spec = spec(&p, "ci", "vm", 443);
    let readme = render_readme(&spec).unwrap();
    let check = section_blocks(&readme, &["Check the connection"]).concat();
    let tmp = tempfile::tempdir().unwrap();
    // The system-wide install, under a temporary directory instead of /etc.
    let certs = tmp.path().join("certs.d");
    let bytes = bundle_tar_gz(&spec).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    archive.unpack(tmp.path()).unwrap();
    fs::rename(tmp.path().join("ci/containers/certs.d"), &certs).unwrap();
    // Shims: sudo runs its arguments; curl checks every file it is given and logs them.
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("curl.log");
    let shims = [
        ("sudo", "#!/bin/bash\nexec \"$@\"\n".to_string()),
        (
            "curl",
            format!(
                "#!/bin/bash\nwhile [ $# -gt 0 ]; do\n  case $1 in\n    --cacert|--cert|--key)\n      \
                 [ -f \"$2\" ] || {{ echo \"curl: $1 $2: no such file in $PWD\" >&2; exit 58; }}\n      \
                 case $2 in *:*) echo \"curl: $1 $2 holds ':'\" >&2; exit 58;; esac\n      \
                 echo \"$PWD $1 $2\" >> {log:?}; shift;;\n  esac\n  shift\ndone\necho '{{}}'\n",
                log = log.display().to_string()
            ),
        ),
    ];
    for (name, text) in shims {
        fsutil::write_atomic(&bin.join(name), text.as_bytes(), 0o755).unwrap();
    }
    let script = check.replace("/etc/containers/certs.d", &certs.display().to_string());
    assert_ne!(
        script, check,
        "the check does not use /etc/containers/certs.d"
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\nfailed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{}\n{}\n");
    let push = certs.join("vm:4443").display().to_string();
    let pull = certs.join("vm:443").display().to_string();
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!(
            "{push} --cacert ./ca.crt\n{push} --cert ./client.cert\n{push} --key ./client.key\n\
             {pull} --cacert ./ca.crt\n"
        )
    );
}
