//! Client bundles: one NAME.tar.gz per client with the certs.d layouts and a README.
//!
//! A bundle holds, under one top directory NAME/, the server CA and the client pair in
//! containers/image's layout (`containers/certs.d/HOST:PORT/{ca.crt,client.cert,client.key}`),
//! in Docker's (`docker/certs.d/...`) and in containerd's (`containerd/certs.d/HOST:PORT/`, the
//! same files plus a `hosts.toml` naming them), plus README.md with the commands to install and
//! use it. Bundles are reproducible: fixed owners, modes and times, so the same certificates
//! give the same bytes and a rerun leaves an unchanged bundle alone.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::distro::Distro;
use crate::fsutil;
use crate::pki::{self, Action, PkiPaths};

/// The README template (tera), rendered into every bundle.
pub const README_TEMPLATE: &str = include_str!("../templates/bundle-README.md");

/// The README's stand-in for the login that copies bundles off, when the machine's cloud
/// image is not one regimage knows.
const LOGIN_PLACEHOLDER: &str = "ADMIN";

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
    /// Where the bundle lies on the registry, for the README's copy command.
    pub bundle_path: &'a Path,
    /// The cloud image's default user (it has sudo), for the README's copy command; `None`
    /// when unknown, and the README shows a placeholder.
    pub login_user: Option<&'a str>,
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
    context.insert("single_label", &!names_a_registry(&url_host(spec.host)));
    context.insert("organization", spec.organization);
    context.insert("bundle_path", &spec.bundle_path.display().to_string());
    context.insert("login_known", &spec.login_user.is_some());
    context.insert("ssh_user", spec.login_user.unwrap_or(LOGIN_PLACEHOLDER));
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
    let push_toml = hosts_toml(&push, true);
    let pull_toml = hosts_toml(&pull, false);
    let mut entries: Vec<(String, u32, Option<&[u8]>)> = vec![
        (format!("{top}/"), 0o755, None),
        (format!("{top}/README.md"), 0o644, Some(readme.as_bytes())),
    ];
    for tool in ["containers", "docker", "containerd"] {
        let certs_d = format!("{top}/{tool}/certs.d");
        // containerd reads its files through hosts.toml; the others find them by name.
        let containerd = tool == "containerd";
        let push_files = [
            (
                "hosts.toml",
                0o644,
                containerd.then_some(push_toml.as_bytes()),
            ),
            ("ca.crt", 0o644, Some(spec.server_ca_pem)),
            ("client.cert", 0o644, Some(spec.client_cert_pem)),
            ("client.key", 0o600, Some(spec.client_key_pem)),
        ];
        let pull_files = [
            (
                "hosts.toml",
                0o644,
                containerd.then_some(pull_toml.as_bytes()),
            ),
            ("ca.crt", 0o644, Some(spec.server_ca_pem)),
        ];
        entries.push((format!("{top}/{tool}/"), 0o755, None));
        entries.push((format!("{certs_d}/"), 0o755, None));
        for (host, files) in [(&push, &push_files[..]), (&pull, &pull_files[..])] {
            entries.push((format!("{certs_d}/{host}/"), 0o755, None));
            for &(file, mode, data) in files {
                if let Some(data) = data {
                    entries.push((format!("{certs_d}/{host}/{file}"), mode, Some(data)));
                }
            }
        }
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

/// containerd's `hosts.toml` for the registry host `host` (`HOST[:PORT]`, as in image
/// references): that host only, with the CA and, for the push host, the client pair.
///
/// containerd 1.5+ (`remotes/docker/config/hosts.go`) looks for `certs.d/HOST:PORT/` (after
/// `HOST_PORT_/`) under the hosts directory, named as the reference names the host (`vm:443`
/// stays `vm:443`), and resolves relative `ca` and `client` paths against the directory of
/// hosts.toml, so the directory works wherever it is installed. Its `[host]` table must be
/// there: without one containerd 1.6 rejects the file and falls back to Docker's file pattern.
pub fn hosts_toml(host: &str, push: bool) -> String {
    let url = format!("https://{host}");
    let (capabilities, client) = if push {
        (
            r#"["pull", "resolve", "push"]"#,
            "\n  client = [[\"client.cert\", \"client.key\"]]",
        )
    } else {
        (r#"["pull", "resolve"]"#, "")
    };
    format!(
        "# containerd registry host config, made by regimage; paths are relative to this file.\n\
         server = \"{url}\"\n\
         \n\
         [host.\"{url}\"]\n  \
         capabilities = {capabilities}\n  \
         ca = \"ca.crt\"{client}\n"
    )
}

/// The cloud image's default user when the machine under `root` runs a distribution regimage
/// knows and that user exists (a site may have set up another).
fn cloud_login(root: &Path) -> Option<&'static str> {
    let os_release = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(fsutil::under_root(root, Path::new(p))).ok())?;
    let user = Distro::from_os_release(&os_release)?.cloud_user;
    let passwd = fs::read_to_string(fsutil::under_root(root, Path::new("/etc/passwd"))).ok()?;
    passwd
        .lines()
        .any(|line| line.split(':').next() == Some(user))
        .then_some(user)
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
    let login_user = cloud_login(root);
    let mut reports = Vec::new();
    for client in &config.clients {
        let cert_path = paths.client_cert(client);
        let client_cert_pem = read(&cert_path)?;
        let client_key_pem = read(&paths.client_key(client))?;
        // The certificate's own start time: fixed for a given certificate.
        let mtime = cert_times(&client_cert_pem)
            .with_context(|| format!("reading {}", cert_path.display()))?
            .0;
        let bundle_path = config.output_dir.join(format!("{client}.tar.gz"));
        let spec = BundleSpec {
            client,
            host,
            push_port: config.ports.push,
            pull_port: config.ports.pull,
            organization: &config.organization,
            bundle_path: &bundle_path,
            login_user,
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
}
