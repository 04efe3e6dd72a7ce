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
    context.insert(
        "copy_off",
        &copy_off_command(spec.login_user, spec.host, spec.bundle_path, spec.client),
    );
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

/// The command that copies a bundle off the registry `host` as `login` (the README's and
/// `client add`'s; [`LOGIN_PLACEHOLDER`] when the login is unknown).
pub fn copy_off_command(
    login: Option<&str>,
    host: &str,
    bundle_path: &Path,
    client: &str,
) -> String {
    format!(
        "ssh {}@{host} sudo cat {} > {client}.tar.gz",
        login.unwrap_or(LOGIN_PLACEHOLDER),
        bundle_path.display()
    )
}

/// The cloud image's default user when the machine under `root` runs a distribution regimage
/// knows and that user exists (a site may have set up another).
pub fn cloud_login(root: &Path) -> Option<&'static str> {
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

/// Writes NAME.tar.gz for every client in `clients` into the output directory under `root`
/// (0700), from the certificates in `paths`. An unchanged bundle is left as it is.
pub fn write_bundles(
    root: &Path,
    config: &Config,
    host: &str,
    paths: &PkiPaths,
    clients: &[String],
) -> Result<Vec<BundleReport>> {
    let out_dir = fsutil::under_root(root, &config.output_dir);
    fsutil::refuse_symlink(&out_dir, "output-dir")?;
    fsutil::ensure_dir(&out_dir, OUTPUT_DIR_MODE)?;
    let server_ca_pem = read(&paths.ca_cert)?;
    let login_user = cloud_login(root);
    let mut reports = Vec::new();
    for client in clients {
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
mod tests;
