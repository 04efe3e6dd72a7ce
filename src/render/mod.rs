//! The appliance's file set: templates rendered from the config into files with their
//! target path, mode and owner, and writing that set under a root with a manifest.
//!
//! [`appliance_files`] is pure (config in, files out); [`write_tree`] does the I/O. The
//! cloud-init and image builders take the same [`FileEntry`] list, so what `render`
//! writes is exactly what lands on the machine.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::fsutil;

/// One file as it will stand on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path on the machine, e.g. `/etc/registry/nginx.conf`.
    pub path: PathBuf,
    /// Permission bits, e.g. 0o644.
    pub mode: u32,
    /// Owner and group names (resolved on the machine, not at build time).
    pub owner: String,
    pub group: String,
    pub contents: Vec<u8>,
}

/// Path of the manifest, itself not listed in it.
pub const MANIFEST_PATH: &str = "/usr/share/regimage/manifest.json";

/// The installed copy of the site config; first boot reads it.
pub const INSTALLED_CONFIG_PATH: &str = "/etc/regimage/regimage.yaml";
/// nginx's config for the TLS proxy.
pub const NGINX_CONF_PATH: &str = "/etc/registry/nginx.conf";
/// The registry's user unit (every user manager reads it; ConditionUser picks one).
pub const REGISTRY_UNIT_PATH: &str = "/etc/systemd/user/registry.service";
/// The proxy's system unit.
pub const PROXY_UNIT_PATH: &str = "/etc/systemd/system/registry-proxy.service";
/// The first-boot oneshot.
pub const FIRSTBOOT_UNIT_PATH: &str = "/etc/systemd/system/regimage-firstboot.service";
/// The day-2 oneshot: `regimage renew` (issue 11).
pub const RENEW_SERVICE_PATH: &str = "/etc/systemd/system/regimage-renew.service";
/// Starts [`RENEW_SERVICE_PATH`] daily; first boot enables and starts it.
pub const RENEW_TIMER_PATH: &str = "/etc/systemd/system/regimage-renew.timer";
/// The cluster oneshot: `regimage cluster sync` (issue 12).
pub const CLUSTER_SYNC_SERVICE_PATH: &str = "/etc/systemd/system/regimage-cluster-sync.service";
/// Starts [`CLUSTER_SYNC_SERVICE_PATH`] every 30 s; first boot enables it with s3 storage.
pub const CLUSTER_SYNC_TIMER_PATH: &str = "/etc/systemd/system/regimage-cluster-sync.timer";
/// containers/image signature policy.
pub const POLICY_PATH: &str = "/etc/containers/policy.json";
/// registries.conf drop-in naming the mirror of the pinned image, when one is configured.
pub const MIRROR_CONF_PATH: &str = "/etc/containers/registries.conf.d/50-regimage-mirror.conf";
/// REGISTRY_HTTP_SECRET for the container; made at first boot, not rendered.
pub const REGISTRY_ENV_PATH: &str = "/etc/registry/registry.env";
/// First boot's marker; while it is missing, regimage-firstboot.service runs at boot.
pub const FIRSTBOOT_DONE_PATH: &str = "/var/lib/regimage/firstboot.done";
/// Rootless Podman state of the service user (root/, tmp/, xdg-data/, xdg-config/).
pub const PODMAN_STATE_DIR: &str = "/var/lib/registry-podman";
/// The tag first boot gives the verified pinned image; the unit runs only this.
pub const REGISTRY_IMAGE_TAG: &str = "localhost/regimage/registry:pinned";
/// The registry's port inside the container.
pub const REGISTRY_CONTAINER_PORT: u16 = 5000;
/// Where the registry stores blobs inside the container.
pub const REGISTRY_CONTAINER_STORAGE: &str = "/var/lib/registry";
/// nginx's RuntimeDirectory (pid file, temp paths).
pub const PROXY_RUN_DIR: &str = "/run/registry-proxy";
/// nginx's access log target: journald's syslog socket, so the log is bounded by the
/// journal's own limits (issue 10) and `journalctl -u registry-proxy` shows it with the
/// error log (stderr). Tests put a file in its place.
pub const PROXY_ACCESS_LOG: &str =
    "syslog:server=unix:/run/systemd/journal/dev-log,tag=registry_proxy,nohostname";
/// The server certificate (leaf only): a public copy for humans and the health check,
/// written after [`SERVER_PEM_PATH`].
pub const SERVER_CERT_PATH: &str = "/etc/registry/certs/registry.crt";
/// The server key followed by its certificate: nginx's `ssl_certificate` and
/// `ssl_certificate_key` both. One file replaced by one rename, so nginx never loads a
/// key with another key's certificate (issue 11).
pub const SERVER_PEM_PATH: &str = "/etc/registry/certs/private/registry.pem";
/// The client CA, which signs the certificates the push port accepts.
pub const CLIENT_CA_PATH: &str = "/etc/registry/certs/clients/ca.crt";
/// The client CA's CRL (`ssl_crl` on the push port); re-signed by `regimage renew`.
pub const CLIENT_CRL_PATH: &str = "/etc/registry/certs/clients/crl.pem";

const NGINX_TEMPLATE: &str = include_str!("../../templates/nginx.conf");
const POLICY_TEMPLATE: &str = include_str!("../../templates/containers-policy.json");
const REGISTRY_UNIT_TEMPLATE: &str = include_str!("../../units/registry.service");
const PROXY_UNIT_TEMPLATE: &str = include_str!("../../units/registry-proxy.service");
const FIRSTBOOT_UNIT_TEMPLATE: &str = include_str!("../../units/regimage-firstboot.service");
const RENEW_SERVICE_TEMPLATE: &str = include_str!("../../units/regimage-renew.service");
const RENEW_TIMER_TEMPLATE: &str = include_str!("../../units/regimage-renew.timer");
const CLUSTER_SYNC_SERVICE_TEMPLATE: &str =
    include_str!("../../units/regimage-cluster-sync.service");
const CLUSTER_SYNC_TIMER_TEMPLATE: &str = include_str!("../../units/regimage-cluster-sync.timer");

/// The registry's environment, the same for the container and for a direct run of the
/// registry binary (tests): listen on all addresses inside the container (`127.0.0.1`
/// there would make the published port reset connections), relative upload URLs (so the
/// proxy's port survives), delete off, tracing off, and the storage driver (see
/// [`storage_environment`]). Secrets are not here: REGISTRY_HTTP_SECRET and the S3 keys are
/// host-unique and come from [`REGISTRY_ENV_PATH`]. REGISTRY_HTTP_HOST is never set (it
/// would pin upload URLs to one host and port), and no debug port is configured.
pub fn registry_environment(config: &Config) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("REGISTRY_HTTP_ADDR", format!(":{REGISTRY_CONTAINER_PORT}")),
        ("REGISTRY_HTTP_RELATIVEURLS", "true".into()),
        ("OTEL_TRACES_EXPORTER", "none".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(storage_environment(config));
    env
}

/// Where the container sees `registry.storage.s3.ca-file` (mounted read-only).
pub const S3_CA_CONTAINER_PATH: &str = "/etc/regimage-s3-ca.pem";

/// The storage driver's settings. Filesystem: the container's storage directory. S3:
/// `REGISTRY_STORAGE=s3` sorts before every `REGISTRY_STORAGE_*`, so Distribution replaces
/// the image's whole storage section with it (the in-memory blob cache too: nodes on one
/// bucket share no cache, so none is used). Blob downloads never redirect to the bucket
/// (clients may not reach it), and a storage health check makes every request a 503
/// `UNAVAILABLE` while the bucket is unreachable, until it answers again.
fn storage_environment(config: &Config) -> Vec<(String, String)> {
    let mut env = vec![("REGISTRY_STORAGE_DELETE_ENABLED", "false".to_string())];
    match config.s3() {
        None => env.push((
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            REGISTRY_CONTAINER_STORAGE.into(),
        )),
        Some(s3) => {
            env.extend([
                ("REGISTRY_STORAGE", "s3".to_string()),
                ("REGISTRY_STORAGE_S3_REGION", s3.region.clone()),
                ("REGISTRY_STORAGE_S3_BUCKET", s3.bucket.clone()),
                ("REGISTRY_STORAGE_S3_SECURE", s3.secure().to_string()),
                ("REGISTRY_STORAGE_S3_SKIPVERIFY", s3.skip_verify.to_string()),
                (
                    "REGISTRY_STORAGE_S3_FORCEPATHSTYLE",
                    s3.path_style.to_string(),
                ),
                ("REGISTRY_STORAGE_S3_V4AUTH", "true".into()),
                ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true".into()),
                ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "true".into()),
                ("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL", "5s".into()),
                ("REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD", "2".into()),
            ]);
            if let Some(endpoint) = &s3.endpoint {
                env.push(("REGISTRY_STORAGE_S3_REGIONENDPOINT", endpoint.clone()));
            }
            if let Some(dir) = &s3.root_directory {
                env.push(("REGISTRY_STORAGE_S3_ROOTDIRECTORY", dir.clone()));
            }
            if s3.ca_file.is_some() {
                // Go reads its trusted roots from here instead of the system's.
                env.push(("SSL_CERT_FILE", S3_CA_CONTAINER_PATH.into()));
            }
        }
    }
    env.sort();
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The secret variables first boot writes to [`REGISTRY_ENV_PATH`] with the S3 keys of the
/// credentials file; the unit passes them by name (`--env NAME`).
pub const S3_KEY_VARIABLES: [&str; 2] = [
    "REGISTRY_STORAGE_S3_ACCESSKEY",
    "REGISTRY_STORAGE_S3_SECRETKEY",
];

/// Podman's global options for the service user. Every podman call for that user (the
/// unit, and first boot's `podman load`/`tag`) must pass exactly these: Podman refuses a
/// database whose graph root, run root or tmp dir differ from the ones it was made with.
/// `runtime_dir` is the user's XDG_RUNTIME_DIR (`/run/user/UID`; `%t` in the unit).
/// `--tmpdir` is libpod's reboot-detection state and must be on a tmpfs, so it is under
/// the runtime dir; big temporary files go to TMPDIR (see [`podman_environment`]).
pub fn podman_global_args(runtime_dir: &str) -> Vec<String> {
    vec![
        format!("--root={PODMAN_STATE_DIR}/root"),
        format!("--runroot={runtime_dir}/podman-run"),
        format!("--tmpdir={runtime_dir}/podman-tmp"),
        "--events-backend=file".to_string(),
    ]
}

/// Environment for every podman call of the service user: config and data outside
/// $HOME, and image temporary files (`podman load`) outside /var/tmp.
pub fn podman_environment() -> Vec<(String, String)> {
    [
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("TMPDIR", "tmp"),
    ]
    .into_iter()
    .map(|(k, sub)| (k.to_string(), format!("{PODMAN_STATE_DIR}/{sub}")))
    .collect()
}

/// Renders every file the appliance needs from `config`. Pure: no I/O.
pub fn appliance_files(config: &Config) -> Result<Vec<FileEntry>> {
    let tera = templates()?;
    let image = config.image_ref()?;
    let mut files = vec![
        root_file(INSTALLED_CONFIG_PATH, installed_config(config)?),
        root_file(
            NGINX_CONF_PATH,
            render(&tera, "nginx.conf", &nginx_context(config))?,
        ),
        root_file(
            REGISTRY_UNIT_PATH,
            render(&tera, "registry.service", &registry_unit_context(config))?,
        ),
        root_file(
            PROXY_UNIT_PATH,
            render(&tera, "registry-proxy.service", &proxy_unit_context(config))?,
        ),
        root_file(
            FIRSTBOOT_UNIT_PATH,
            render(
                &tera,
                "regimage-firstboot.service",
                &firstboot_unit_context(config),
            )?,
        ),
        root_file(
            RENEW_SERVICE_PATH,
            render(&tera, "regimage-renew.service", &renew_unit_context(config))?,
        ),
        root_file(
            RENEW_TIMER_PATH,
            render(&tera, "regimage-renew.timer", &tera::Context::new())?,
        ),
        root_file(POLICY_PATH, render_policy(&tera, &image.name)?),
    ];
    if let Some(mirror) = &config.registry.mirror {
        files.push(root_file(
            MIRROR_CONF_PATH,
            mirror_conf(&image.name, mirror, config.registry.mirror_insecure)?,
        ));
    }
    // Only a node of a cluster syncs; a lone appliance's user-data stays as small as it was.
    if crate::lifecycle::cluster::enabled(config) {
        files.extend(cluster_sync_units(&tera, config)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// regimage-cluster-sync.service and its timer (every 30 s).
fn cluster_sync_units(tera: &tera::Tera, config: &Config) -> Result<Vec<FileEntry>> {
    Ok(vec![
        root_file(
            CLUSTER_SYNC_SERVICE_PATH,
            render(
                tera,
                "regimage-cluster-sync.service",
                &renew_unit_context(config),
            )?,
        ),
        root_file(
            CLUSTER_SYNC_TIMER_PATH,
            render(tera, "regimage-cluster-sync.timer", &tera::Context::new())?,
        ),
    ])
}

/// One manifest line: what a file on the machine should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    /// Octal permission bits as text, e.g. `"0644"`.
    pub mode: String,
    pub owner: String,
    pub group: String,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// The manifest document at [`MANIFEST_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Sorted by path; the manifest itself is not listed.
    pub files: Vec<ManifestEntry>,
}

/// The manifest of `files` as a file of its own (0644 root:root at [`MANIFEST_PATH`]).
/// Refuses relative paths, paths with `..`, duplicates, and the manifest path itself.
pub fn manifest_file(files: &[FileEntry]) -> Result<FileEntry> {
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        check_target_path(&file.path)?;
        let path = file.path.to_str().with_context(|| {
            format!("listing {} in the manifest: not UTF-8", file.path.display())
        })?;
        if path == MANIFEST_PATH {
            anyhow::bail!("{path} is the manifest's own path; it cannot be in the file set");
        }
        if !seen.insert(path.to_string()) {
            anyhow::bail!("{path} is in the file set twice");
        }
        entries.push(ManifestEntry {
            path: path.to_string(),
            mode: format!("{:04o}", file.mode),
            owner: file.owner.clone(),
            group: file.group.clone(),
            sha256: hex::encode(Sha256::digest(&file.contents)),
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut json =
        serde_json::to_vec_pretty(&Manifest { files: entries }).context("encoding the manifest")?;
    json.push(b'\n');
    Ok(root_file(MANIFEST_PATH, json))
}

/// Writes `files` under `root` (which stands for `/`) and the manifest at MANIFEST_PATH.
///
/// Each file is written atomically with its mode; owners are only recorded in the
/// manifest (a build runs unprivileged, and on the machine everything here is root's).
/// Missing directories are created 0755; existing ones are left as they are.
pub fn write_tree(root: &Path, files: &[FileEntry]) -> Result<()> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => anyhow::bail!("{} exists and is not a directory", root.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            create_missing_dirs(root)?;
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", root.display())),
    }
    let manifest = manifest_file(files)?;
    for file in files.iter().chain(std::iter::once(&manifest)) {
        let target = fsutil::under_root(root, &file.path);
        if let Some(parent) = target.parent() {
            create_missing_dirs(parent)?;
        }
        fsutil::write_atomic(&target, &file.contents, file.mode)?;
    }
    Ok(())
}

/// `regimage render`: the appliance's files and the manifest under `root` (created if
/// missing); returns how many files there are besides the manifest.
pub fn render_to(config: &Config, root: &Path) -> Result<usize> {
    let files = appliance_files(config)?;
    write_tree(root, &files)?;
    Ok(files.len())
}

/// registries.conf(5) drop-in: pulls of the pinned repository try the mirror first. Pulls
/// by digest are always allowed from a mirror, so the pin is what keeps the image honest.
fn mirror_conf(repository: &str, mirror: &str, insecure: bool) -> Result<Vec<u8>> {
    // A mirror given without a path serves the repository under its own path.
    let location = if mirror.contains('/') {
        mirror.to_string()
    } else {
        let path = repository
            .split_once('/')
            .map_or(repository, |(first, rest)| {
                if first.contains('.') || first.contains(':') || first == "localhost" {
                    rest
                } else {
                    repository
                }
            });
        format!("{mirror}/{path}")
    };
    let quote = |v: &str| serde_json::to_string(v).context("quoting a registries.conf value");
    let text = format!(
        "# regimage: the pinned registry image may come from this mirror (registry.mirror).\n\
         # Generated by `regimage render`.\n\
         [[registry]]\nprefix = {repo}\nlocation = {repo}\n\n\
         [[registry.mirror]]\nlocation = {location}\ninsecure = {insecure}\n",
        repo = quote(repository)?,
        location = quote(&location)?,
    );
    Ok(text.into_bytes())
}

// Why this policy: podman and skopeo check the *source* of every copy against it. First
// boot loads the registry image from a local archive (oci-archive or docker-archive) and
// then verifies the image ID against the pinned digest itself, so archives are accepted
// as they are; a registry pull is allowed only for the configured image's repository
// (the user-data flavour may fetch it by digest), and everything else is rejected. Running
// `localhost/regimage/registry:pinned` with --pull=never copies nothing, so no policy
// applies to it. There is no signature to check: the pin is the digest.
fn render_policy(tera: &tera::Tera, repository: &str) -> Result<Vec<u8>> {
    let mut ctx = tera::Context::new();
    ctx.insert(
        "image_repository",
        &serde_json::to_string(repository).context("encoding the image repository")?,
    );
    let text = render(tera, "containers-policy.json", &ctx)?;
    // A template slip here would lock podman out entirely; parse before shipping it.
    serde_json::from_slice::<serde_json::Value>(&text)
        .context("checking the rendered containers policy is valid JSON")?;
    Ok(text)
}

fn installed_config(config: &Config) -> Result<Vec<u8>> {
    let yaml = config.to_yaml().context("encoding the site config")?;
    Ok(format!(
        "# regimage site config, installed by `regimage render`; `regimage firstboot -c {INSTALLED_CONFIG_PATH}` reads it.\n{yaml}"
    )
    .into_bytes())
}

fn templates() -> Result<tera::Tera> {
    let mut tera = tera::Tera::default();
    // Nothing here is HTML; escaping would corrupt nginx and unit syntax.
    tera.autoescape_on(vec![]);
    tera.add_raw_templates(vec![
        ("nginx.conf", NGINX_TEMPLATE),
        ("containers-policy.json", POLICY_TEMPLATE),
        ("registry.service", REGISTRY_UNIT_TEMPLATE),
        ("registry-proxy.service", PROXY_UNIT_TEMPLATE),
        ("regimage-firstboot.service", FIRSTBOOT_UNIT_TEMPLATE),
        ("regimage-renew.service", RENEW_SERVICE_TEMPLATE),
        ("regimage-renew.timer", RENEW_TIMER_TEMPLATE),
        (
            "regimage-cluster-sync.service",
            CLUSTER_SYNC_SERVICE_TEMPLATE,
        ),
        ("regimage-cluster-sync.timer", CLUSTER_SYNC_TIMER_TEMPLATE),
    ])
    .context("parsing the built-in templates")?;
    Ok(tera)
}

fn render(tera: &tera::Tera, name: &str, ctx: &tera::Context) -> Result<Vec<u8>> {
    tera.render(name, ctx)
        .map(String::into_bytes)
        .map_err(tera_error)
        .with_context(|| format!("rendering template {name}"))
}

/// A tera error as one message: tera hides the useful part of its errors in `source()`,
/// which anyhow would not print for a plain `to_string()`. Every template renderer uses it.
pub(crate) fn tera_error(e: tera::Error) -> anyhow::Error {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    anyhow::anyhow!(text)
}

fn root_file(path: &str, contents: Vec<u8>) -> FileEntry {
    FileEntry {
        path: PathBuf::from(path),
        mode: 0o644,
        owner: "root".into(),
        group: "root".into(),
        contents,
    }
}

#[derive(Serialize)]
struct ServerBlock {
    title: String,
    port: u16,
    mtls: bool,
    zone: &'static str,
    burst: u32,
    denied_message: String,
    /// client_max_body_size of this port.
    max_body_size: String,
    /// Set: the answer to `/v2/_catalog` here instead of the registry's list.
    catalog_refusal: Option<String>,
    /// Set: the answer to an address outside `pull-allowed-cidrs`.
    address_refusal: Option<String>,
}

/// The pull port takes GET and HEAD only, which send no body; 1m refuses anything more.
pub const PULL_PORT_MAX_BODY_SIZE: &str = "1m";

/// A registry-style JSON error body (one line), as nginx's `return` sends it.
fn json_error(code: &str, message: &str) -> String {
    serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string()
}

fn nginx_context(config: &Config) -> tera::Context {
    let ports = &config.ports;
    let proxy = &config.proxy;
    let servers = vec![
        ServerBlock {
            title: format!("Port {}: anonymous pulls, GET and HEAD only.", ports.pull),
            port: ports.pull,
            mtls: false,
            zone: "regimage_pull",
            burst: proxy.pull_burst,
            denied_message: format!(
                "this port serves pulls only (GET and HEAD); push to port {} with a client certificate",
                ports.push
            ),
            max_body_size: PULL_PORT_MAX_BODY_SIZE.into(),
            catalog_refusal: (!proxy.public_catalog).then(|| {
                json_error(
                    "DENIED",
                    &format!(
                        "the repository list is served on port {} (client certificate) only; proxy.public-catalog: true serves it here",
                        ports.push
                    ),
                )
            }),
            address_refusal: (!config.pull_allowed_cidrs.is_empty()).then(|| {
                json_error(
                    "DENIED",
                    "this address is not in pull-allowed-cidrs",
                )
            }),
        },
        ServerBlock {
            title: format!(
                "Port {}: pushes (and pulls) with a client certificate (mTLS).",
                ports.push
            ),
            port: ports.push,
            mtls: true,
            zone: "regimage_push",
            burst: proxy.push_burst,
            denied_message: "access denied".into(),
            max_body_size: proxy.max_body_size.clone(),
            catalog_refusal: None,
            address_refusal: None,
        },
    ];
    let mut ctx = tera::Context::new();
    ctx.insert("pull_port", &ports.pull);
    ctx.insert("push_port", &ports.push);
    ctx.insert("registry_port", &ports.registry);
    ctx.insert("proxy_user", &config.proxy_user);
    ctx.insert("pull_rate", &proxy.pull_rate);
    ctx.insert("push_rate", &proxy.push_rate);
    ctx.insert("pull_allowed_cidrs", &config.pull_allowed_cidrs);
    ctx.insert("run_dir", PROXY_RUN_DIR);
    ctx.insert("access_log", PROXY_ACCESS_LOG);
    ctx.insert("server_pem", SERVER_PEM_PATH);
    ctx.insert("client_ca", CLIENT_CA_PATH);
    ctx.insert("client_crl", CLIENT_CRL_PATH);
    ctx.insert("servers", &servers);
    ctx
}

fn registry_unit_context(config: &Config) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("service_user", &config.service_user);
    ctx.insert("registry_port", &config.ports.registry);
    ctx.insert("container_port", &REGISTRY_CONTAINER_PORT);
    ctx.insert("podman_state_dir", PODMAN_STATE_DIR);
    ctx.insert("podman_global", &podman_global_args("%t").join(" "));
    ctx.insert("podman_env", &podman_environment());
    ctx.insert("registry_env", &registry_environment(config));
    ctx.insert("registry_env_file", REGISTRY_ENV_PATH);
    // Secrets passed by name from registry.env: the S3 keys only with a credentials file.
    let mut secret_env = vec!["REGISTRY_HTTP_SECRET"];
    let mut volumes = Vec::new();
    match config.s3() {
        None => volumes.push(format!(
            "{}:{REGISTRY_CONTAINER_STORAGE}:Z",
            config.registry.storage_dir.display()
        )),
        Some(s3) => {
            if s3.credentials_file.is_some() {
                secret_env.extend(S3_KEY_VARIABLES);
            }
            if let Some(ca) = &s3.ca_file {
                volumes.push(format!("{}:{S3_CA_CONTAINER_PATH}:ro", ca.display()));
            }
        }
    }
    ctx.insert("secret_env", &secret_env);
    ctx.insert("volumes", &volumes);
    ctx.insert("image", REGISTRY_IMAGE_TAG);
    ctx.insert("memory_max", &config.registry.memory_max);
    ctx.insert("cpu_quota", &config.registry.cpu_quota);
    ctx
}

fn proxy_unit_context(config: &Config) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("pull_port", &config.ports.pull);
    ctx.insert("push_port", &config.ports.push);
    ctx.insert("registry_port", &config.ports.registry);
    ctx.insert("proxy_user", &config.proxy_user);
    // The proxy user's own group (made with it); it is also registry.pem's group.
    ctx.insert("proxy_group", &config.proxy_user);
    ctx.insert("nginx_conf", NGINX_CONF_PATH);
    ctx.insert("server_cert", SERVER_CERT_PATH);
    ctx
}

fn firstboot_unit_context(config: &Config) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("installed_config", INSTALLED_CONFIG_PATH);
    ctx.insert("done_file", FIRSTBOOT_DONE_PATH);
    ctx.insert("output_dir", &config.output_dir);
    ctx
}

/// The day-2 oneshots' context (renew, cluster sync): both rewrite or remove bundles.
fn renew_unit_context(config: &Config) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("binary", crate::cloudinit::BINARY_PATH);
    ctx.insert("installed_config", INSTALLED_CONFIG_PATH);
    ctx.insert("done_file", FIRSTBOOT_DONE_PATH);
    ctx.insert("output_dir", &config.output_dir);
    // renew rewrites client bundles in output-dir: ProtectHome= would hide one under it.
    let hidden = ["/home", "/root", "/run/user"]
        .iter()
        .any(|d| config.output_dir.starts_with(d));
    ctx.insert("protect_home", &!hidden);
    ctx
}

/// Target paths must be absolute and plain, so `under_root` cannot leave the root.
fn check_target_path(path: &Path) -> Result<()> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        anyhow::bail!(
            "{} is not a plain absolute path (no `.` or `..` components)",
            path.display()
        )
    }
}

/// Creates `dir` and its missing ancestors with exactly 0755 (not narrowed by the umask);
/// existing directories keep their mode.
fn create_missing_dirs(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        current = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting mode 755 on {}", d.display()))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e).with_context(|| format!("creating directory {}", d.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
