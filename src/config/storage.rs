//! Where the registry keeps images (`registry.storage`) and the cluster a node belongs to
//! (`cluster`), issue 12: several nodes serve one registry from shared S3 storage.
//!
//! Nothing here is secret: S3 credentials come from a file put on the machine out of band
//! (or the instance's role), and a config that inlines one is refused ([`find_inline_secret`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checks::check_dns_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageDriver {
    /// `registry.storage-dir` on this machine's disk.
    #[default]
    Filesystem,
    /// An S3-compatible bucket, which several nodes can share.
    S3,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Storage {
    pub driver: StorageDriver,
    /// Required with `driver: s3`, refused otherwise.
    pub s3: Option<S3Storage>,
}

/// Distribution's `s3` storage driver, as the pinned registry image and Debian's
/// docker-registry have it built in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct S3Storage {
    /// `http://` or `https://` URL of an S3-compatible service; unset: AWS S3 of `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// A key prefix inside the bucket (`/regimage`); unset: the bucket's root.
    pub root_directory: Option<String>,
    /// `bucket` in the path (`https://host/bucket/key`) instead of the host name. Distribution
    /// 2.8 (the default image) always uses it with an `endpoint`.
    pub path_style: bool,
    /// PEM bundle on the machine that signs the endpoint's certificate (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Do not verify the endpoint's certificate (a test bucket only).
    pub skip_verify: bool,
    /// AWS shared-credentials file the operator puts on the machine (root, 0600); unset:
    /// the instance's role (EC2 instance profile or the like).
    pub credentials_file: Option<PathBuf>,
    /// How long first boot waits for `credentials-file` before it stops.
    pub credentials_wait_seconds: u32,
}

impl Default for S3Storage {
    fn default() -> Self {
        S3Storage {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: String::new(),
            root_directory: None,
            path_style: true,
            ca_file: None,
            skip_verify: false,
            credentials_file: Some(PathBuf::from(DEFAULT_CREDENTIALS_FILE)),
            credentials_wait_seconds: 900,
        }
    }
}

/// Where the README tells the operator to put the S3 credentials.
pub const DEFAULT_CREDENTIALS_FILE: &str = "/etc/regimage/s3-credentials";

impl S3Storage {
    /// Whether the endpoint is reached with TLS (AWS S3 always is).
    pub fn secure(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_none_or(|e| e.starts_with("https://"))
    }
}

/// Several nodes serving one registry (issue 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Cluster {
    /// The name clients use for the whole cluster (a load balancer's or a DNS round-robin
    /// name): in every node's server certificate, and the registry name in bundles.
    pub name: Option<String>,
    /// The join file of `regimage cluster export` from a node of the cluster: first boot
    /// waits for it and takes the CAs and the HTTP secret from it instead of making them.
    pub join_file: Option<PathBuf>,
    /// How long first boot waits for `join-file` before it stops.
    pub join_wait_seconds: u32,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            name: None,
            join_file: None,
            join_wait_seconds: 900,
        }
    }
}

/// Key names that would carry a secret, as Distribution, AWS and regimage users write them.
const SECRET_KEYS: &[&str] = &[
    "accesskey",
    "access-key",
    "access-key-id",
    "accesskeyid",
    "aws-access-key-id",
    "aws_access_key_id",
    "secretkey",
    "secret-key",
    "secret-access-key",
    "aws-secret-access-key",
    "aws_secret_access_key",
    "sessiontoken",
    "session-token",
    "aws_session_token",
    "password",
    "secret",
    "http-secret",
];

/// The dotted path of the first key anywhere in `value` that names a secret.
pub fn find_inline_secret(value: &serde_yaml_ng::Value, at: &str) -> Option<String> {
    match value {
        serde_yaml_ng::Value::Mapping(map) => map.iter().find_map(|(key, child)| {
            let key = key.as_str()?;
            let path = if at.is_empty() {
                key.to_string()
            } else {
                format!("{at}.{key}")
            };
            if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                return Some(path);
            }
            find_inline_secret(child, &path)
        }),
        serde_yaml_ng::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_inline_secret(item, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Checks `registry.storage` and `cluster`: (key, message) of the first problem.
pub(super) fn check(storage: &Storage, cluster: &Cluster) -> Result<(), (String, String)> {
    let err = |key: &str, message: String| Err((key.to_string(), message));
    match (storage.driver, &storage.s3) {
        (StorageDriver::Filesystem, Some(_)) => return err(
            "registry.storage.s3",
            "given with driver filesystem; set registry.storage.driver: s3 or remove this section"
                .into(),
        ),
        (StorageDriver::S3, None) => {
            return err(
                "registry.storage.s3",
                "missing: driver s3 needs at least a bucket (and an endpoint unless it is AWS S3)"
                    .into(),
            )
        }
        (StorageDriver::S3, Some(s3)) => {
            check_s3(s3).map_err(|(k, m)| (format!("registry.storage.s3.{k}"), m))?
        }
        (StorageDriver::Filesystem, None) => {}
    }
    if let Some(name) = &cluster.name {
        check_dns_name(name).map_err(|m| ("cluster.name".to_string(), m))?;
        if name.starts_with("*.") {
            return err(
                "cluster.name",
                format!("{name:?} is a wildcard; clients need one real name"),
            );
        }
    }
    if let Some(file) = &cluster.join_file {
        check_absolute_file(file).map_err(|m| ("cluster.join-file".to_string(), m))?;
        if storage.driver != StorageDriver::S3 {
            return err(
                "cluster.join-file",
                "set, but registry.storage.driver is filesystem: the nodes of a cluster share one S3 bucket, or clients would see different images on each node".into(),
            );
        }
    }
    if cluster.join_wait_seconds == 0 {
        return err(
            "cluster.join-wait-seconds",
            "0 would never wait; expected seconds, 1 or more".into(),
        );
    }
    Ok(())
}

fn check_s3(s3: &S3Storage) -> Result<(), (String, String)> {
    let err = |key: &str, message: String| Err((key.to_string(), message));
    if let Some(endpoint) = &s3.endpoint {
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        let host = rest.map(|r| r.trim_end_matches('/'));
        let ok = host.is_some_and(|h| {
            !h.is_empty()
                && !h.contains('/')
                && !h.contains('?')
                && !h.contains(char::is_whitespace)
        });
        if !ok {
            return err(
                "endpoint",
                format!("{endpoint:?} is not an S3 endpoint; expected http(s)://HOST[:PORT], e.g. https://s3.example.com or http://10.0.2.2:3900"),
            );
        }
    }
    if s3.endpoint.is_some() && !s3.path_style {
        return err(
            "path-style",
            "false with an endpoint: Distribution 2.8 (the pinned registry image) always addresses a custom endpoint path-style; leave it true".into(),
        );
    }
    let region_ok = !s3.region.is_empty()
        && s3
            .region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !region_ok {
        return err(
            "region",
            format!(
                "{:?} is not a region; expected letters, digits and '-', e.g. us-east-1 or garage",
                s3.region
            ),
        );
    }
    let bucket_ok = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s3.bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !bucket_ok {
        return err(
            "bucket",
            format!(
                "{:?} is not a bucket name; expected 3-63 lowercase letters, digits, '.' or '-'",
                s3.bucket
            ),
        );
    }
    if let Some(dir) = &s3.root_directory {
        let ok = dir.starts_with('/')
            && dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
            && !dir.split('/').any(|c| c == "..");
        if !ok {
            return err(
                "root-directory",
                format!("{dir:?} is not a key prefix; expected an absolute path of letters, digits, '-', '_', '.', e.g. /regimage"),
            );
        }
    }
    if let Some(file) = &s3.ca_file {
        check_absolute_file(file).map_err(|m| ("ca-file".to_string(), m))?;
    }
    if s3.ca_file.is_some() && s3.skip_verify {
        return err(
            "skip-verify",
            "true together with ca-file; verify with the CA (remove skip-verify) or skip verification (remove ca-file)".into(),
        );
    }
    if let Some(file) = &s3.credentials_file {
        check_absolute_file(file).map_err(|m| ("credentials-file".to_string(), m))?;
    }
    if s3.credentials_wait_seconds == 0 {
        return err(
            "credentials-wait-seconds",
            "0 would never wait; expected seconds, 1 or more".into(),
        );
    }
    Ok(())
}

/// An absolute path to a file the operator puts on the machine.
fn check_absolute_file(path: &Path) -> Result<(), String> {
    let text = path.to_string_lossy();
    if !path.is_absolute()
        || text.ends_with('/')
        || path.components().any(|c| c.as_os_str() == "..")
    {
        return Err(format!(
            "{text:?} is not an absolute file path; expected e.g. /etc/regimage/FILE"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(format!(
            "{text:?} contains a space, a control character or ':'; expected a plain path"
        ));
    }
    Ok(())
}
