//! Client bundles: one NAME.tar.gz per client with the certs.d layouts and a README.
//!
//! A bundle holds, under one top directory NAME/, the server CA and the client pair in
//! containers/image's layout (`containers/certs.d/HOST:PORT/{ca.crt,client.cert,client.key}`)
//! and in Docker's (`docker/certs.d/...`), plus README.md with the commands to install and use
//! it. Bundles are reproducible: fixed owners, modes and times, so the same certificates give
//! the same bytes and a rerun leaves an unchanged bundle alone.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::fsutil;
use crate::pki::{self, Action, PkiPaths};

/// The README template (tera), rendered into every bundle.
pub const README_TEMPLATE: &str = include_str!("../templates/bundle-README.md");

/// The output directory holds client keys: root only.
const OUTPUT_DIR_MODE: u32 = 0o700;
const BUNDLE_MODE: u32 = 0o600;

/// Everything one bundle is made from.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    /// The client name: the bundle's file name and top directory.
    pub client: &'a str,
    /// The registry's primary name (the server certificate's CN).
    pub host: &'a str,
    pub push_port: u16,
    pub pull_port: u16,
    pub organization: &'a str,
    pub server_ca_pem: &'a [u8],
    pub client_cert_pem: &'a [u8],
    pub client_key_pem: &'a [u8],
    /// Modification time of every entry (seconds since the epoch).
    pub mtime: u64,
}

/// One bundle written (or found up to date) by [`write_bundles`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    pub client: String,
    pub path: PathBuf,
    pub action: Action,
    /// SHA-256 of the .tar.gz file, lowercase hex.
    pub sha256: String,
}

/// How clients name the registry on `port`: `HOST` for 443 (containers/image and Docker
/// drop the default port), `HOST:PORT` otherwise; an IPv6 address gets brackets.
///
/// A single-label name other than `localhost` keeps `:443`: Docker, Podman, Skopeo and
/// containerd read the first part of `vm/ci/app` as a registry only when it has a dot, a
/// colon or is `localhost`, so `vm/ci/app` would be a Docker Hub repository.
pub fn registry_host(host: &str, port: u16) -> String {
    let bare = url_host(host);
    if port == 443 && names_a_registry(&bare) {
        bare
    } else {
        format!("{bare}:{port}")
    }
}

/// `host` as it goes into a URL: an IPv6 address gets brackets.
pub fn url_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_string(),
    }
}

/// Whether clients read `host` (no port) as a registry host in an image reference: the
/// rule of Docker's reference parser, which Podman, Skopeo and containerd share.
fn names_a_registry(host: &str) -> bool {
    host == "localhost" || host.contains('.') || host.contains(':')
}

/// The bundle's README.md.
pub fn render_readme(spec: &BundleSpec<'_>) -> Result<String> {
    let client_not_after = cert_times(spec.client_cert_pem)
        .map(|(_, not_after)| not_after)
        .unwrap_or_else(|_| "(unknown)".into());
    let ca_sha256 = pem_der(spec.server_ca_pem)
        .map(|der| pki::fingerprint(&der))
        .context("reading the server CA certificate for the bundle README")?;
    let mut context = tera::Context::new();
    context.insert("name", spec.client);
    context.insert("host", spec.host);
    context.insert("organization", spec.organization);
    context.insert("push_host", &registry_host(spec.host, spec.push_port));
    context.insert("pull_host", &registry_host(spec.host, spec.pull_port));
    context.insert("ca_sha256", &ca_sha256);
    context.insert("client_not_after", &client_not_after);
    // Markdown, not HTML: no escaping (autoescape would turn '/' into "&#x2F;").
    tera::Tera::one_off(README_TEMPLATE, &context, false)
        .map_err(crate::render::tera_error)
        .context("rendering the bundle README")
}

/// The bundle as .tar.gz bytes; the same spec always gives the same bytes.
pub fn bundle_tar_gz(spec: &BundleSpec<'_>) -> Result<Vec<u8>> {
    let readme = render_readme(spec)?;
    let top = spec.client;
    let push = registry_host(spec.host, spec.push_port);
    let pull = registry_host(spec.host, spec.pull_port);
    let mut entries: Vec<(String, u32, Option<&[u8]>)> = vec![
        (format!("{top}/"), 0o755, None),
        (format!("{top}/README.md"), 0o644, Some(readme.as_bytes())),
    ];
    for tool in ["containers", "docker"] {
        let certs_d = format!("{top}/{tool}/certs.d");
        entries.extend([
            (format!("{top}/{tool}/"), 0o755, None),
            (format!("{certs_d}/"), 0o755, None),
            (format!("{certs_d}/{push}/"), 0o755, None),
            (
                format!("{certs_d}/{push}/ca.crt"),
                0o644,
                Some(spec.server_ca_pem),
            ),
            (
                format!("{certs_d}/{push}/client.cert"),
                0o644,
                Some(spec.client_cert_pem),
            ),
            (
                format!("{certs_d}/{push}/client.key"),
                0o600,
                Some(spec.client_key_pem),
            ),
            (format!("{certs_d}/{pull}/"), 0o755, None),
            (
                format!("{certs_d}/{pull}/ca.crt"),
                0o644,
                Some(spec.server_ca_pem),
            ),
        ]);
    }

    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        match data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
            }
        }
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header
            .set_username("root")
            .and_then(|()| header.set_groupname("root"))
            .context("setting the owner of a bundle entry")?;
        header.set_mtime(spec.mtime);
        tar.append_data(&mut header, &path, data.unwrap_or_default())
            .with_context(|| format!("adding {path} to the bundle"))?;
    }
    let tar_bytes = tar.into_inner().context("finishing the bundle tar")?;
    // GzBuilder's header has no file name and mtime 0, so it does not vary between runs.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar_bytes).context("compressing the bundle")?;
    gz.finish().context("compressing the bundle")
}

/// Writes NAME.tar.gz for every configured client into the output directory under `root`
/// (0700), from the certificates in `paths`. An unchanged bundle is left as it is.
pub fn write_bundles(
    root: &Path,
    config: &Config,
    host: &str,
    paths: &PkiPaths,
) -> Result<Vec<BundleReport>> {
    let out_dir = fsutil::under_root(root, &config.output_dir);
    fsutil::refuse_symlink(&out_dir, "output-dir")?;
    fsutil::ensure_dir(&out_dir, OUTPUT_DIR_MODE)?;
    let server_ca_pem = read(&paths.ca_cert)?;
    let mut reports = Vec::new();
    for client in &config.clients {
        let cert_path = paths.client_cert(client);
        let client_cert_pem = read(&cert_path)?;
        let client_key_pem = read(&paths.client_key(client))?;
        // The certificate's own start time: fixed for a given certificate.
        let mtime = cert_times(&client_cert_pem)
            .with_context(|| format!("reading {}", cert_path.display()))?
            .0;
        let spec = BundleSpec {
            client,
            host,
            push_port: config.ports.push,
            pull_port: config.ports.pull,
            organization: &config.organization,
            server_ca_pem: &server_ca_pem,
            client_cert_pem: &client_cert_pem,
            client_key_pem: &client_key_pem,
            mtime,
        };
        let bytes = bundle_tar_gz(&spec)
            .with_context(|| format!("making the bundle for client {client}"))?;
        let path = out_dir.join(format!("{client}.tar.gz"));
        let action = match fs::read(&path) {
            Ok(existing) if existing == bytes => {
                fs::set_permissions(&path, fs::Permissions::from_mode(BUNDLE_MODE))
                    .with_context(|| format!("setting mode 600 on {}", path.display()))?;
                Action::Kept
            }
            Ok(_) => Action::Replaced,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Action::Made,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if action != Action::Kept {
            fsutil::write_atomic(&path, &bytes, BUNDLE_MODE)?;
        }
        reports.push(BundleReport {
            client: client.clone(),
            path,
            action,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    Ok(reports)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn pem_der(pem: &[u8]) -> Result<Vec<u8>> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| anyhow::anyhow!("reading PEM: {e}"))?;
    Ok(pem.contents)
}

/// (not_before as seconds since the epoch, not_after as RFC 3339) of a PEM certificate.
fn cert_times(pem: &[u8]) -> Result<(u64, String)> {
    let der = pem_der(pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let validity = x509.validity();
    let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
    Ok((not_before, pki::rfc3339(validity.not_after.to_datetime())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
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
        let (ca, _) = self_signed("ca");
        let (cert, key) = self_signed("ci");
        let spec = BundleSpec {
            client: "ci",
            host: "reg.example.com",
            push_port: 4443,
            pull_port: 8443,
            organization: "Example Org",
            server_ca_pem: ca.as_bytes(),
            client_cert_pem: cert.as_bytes(),
            client_key_pem: key.as_bytes(),
            mtime: 1_735_776_000,
        };
        let bytes = bundle_tar_gz(&spec).unwrap();
        assert_eq!(bytes, bundle_tar_gz(&spec).unwrap(), "not reproducible");
        let got = entries(&bytes);
        let listing: Vec<(String, u32)> = got.iter().map(|e| (e.0.clone(), e.1)).collect();
        let mut want = vec![("ci/".to_string(), 0o755), ("ci/README.md".into(), 0o644)];
        for tool in ["containers", "docker"] {
            let d = format!("ci/{tool}/certs.d");
            want.extend([
                (format!("ci/{tool}/"), 0o755),
                (format!("{d}/"), 0o755),
                (format!("{d}/reg.example.com:4443/"), 0o755),
                (format!("{d}/reg.example.com:4443/ca.crt"), 0o644),
                (format!("{d}/reg.example.com:4443/client.cert"), 0o644),
                (format!("{d}/reg.example.com:4443/client.key"), 0o600),
                (format!("{d}/reg.example.com:8443/"), 0o755),
                (format!("{d}/reg.example.com:8443/ca.crt"), 0o644),
            ]);
        }
        assert_eq!(listing, want);
        for (path, _, uid, gid, mtime, data) in &got {
            assert_eq!((*uid, *gid, *mtime), (0, 0, 1_735_776_000), "{path}");
            if path.ends_with("ca.crt") {
                assert_eq!(data, ca.as_bytes(), "{path}");
            } else if path.ends_with("client.cert") {
                assert_eq!(data, cert.as_bytes(), "{path}");
            } else if path.ends_with("client.key") {
                assert_eq!(data, key.as_bytes(), "{path}");
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
    fn pull_on_443_is_the_bare_host() {
        let (ca, _) = self_signed("ca");
        let (cert, key) = self_signed("ci");
        let spec = BundleSpec {
            client: "build-1",
            host: "reg.example.com",
            push_port: 4443,
            pull_port: 443,
            organization: "Example Org",
            server_ca_pem: ca.as_bytes(),
            client_cert_pem: cert.as_bytes(),
            client_key_pem: key.as_bytes(),
            mtime: 0,
        };
        let names: Vec<String> = entries(&bundle_tar_gz(&spec).unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert!(names.contains(&"build-1/containers/certs.d/reg.example.com/ca.crt".to_string()));
        assert!(names.contains(&"build-1/docker/certs.d/reg.example.com/ca.crt".to_string()));
        assert!(!names.iter().any(|n| n.contains(":443/")), "{names:?}");
    }

    #[test]
    fn readme_has_the_exact_commands() {
        let (ca, _) = self_signed("ca");
        let (cert, key) = self_signed("ci");
        let spec = BundleSpec {
            client: "ci",
            host: "reg.example.com",
            push_port: 4443,
            pull_port: 443,
            organization: "Example & <Org>",
            server_ca_pem: ca.as_bytes(),
            client_cert_pem: cert.as_bytes(),
            client_key_pem: key.as_bytes(),
            mtime: 0,
        };
        let readme = render_readme(&spec).unwrap();
        for needle in [
            "tar -xzf ci.tar.gz -C \"$dir\"",
            "sudo cp -r \"$dir/ci/containers/certs.d/.\" /etc/containers/certs.d/",
            "cp -r \"$dir/ci/containers/certs.d/.\" ~/.config/containers/certs.d/",
            "sudo cp -r \"$dir/ci/docker/certs.d/.\" /etc/docker/certs.d/",
            "skopeo copy oci-archive:myimage.tar docker://reg.example.com:4443/ci/myimage:1.0",
            "podman push reg.example.com:4443/ci/myimage:1.0",
            "podman pull reg.example.com/ci/myimage:1.0",
            "valid until 2026-02-03T00:00:00Z",
            // No HTML escaping in markdown.
            "Example & <Org>",
        ] {
            assert!(readme.contains(needle), "missing {needle:?} in:\n{readme}");
        }
        let der = pem_der(ca.as_bytes()).unwrap();
        assert!(readme.contains(&pki::fingerprint(&der)));
        assert!(!readme.contains("{{"), "unrendered variable:\n{readme}");
    }
}
