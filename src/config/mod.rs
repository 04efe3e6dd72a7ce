//! The site config (`regimage.yaml`): types, defaults and validation.
//!
//! Every field has a default, so an empty file (or no file at all) is a valid config.
//! Parsing and validation report one [`ConfigError`] that names the key, the bad value
//! and the expected form; the CLI turns it into exit status 2.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod checks;
mod image_ref;
mod storage;

use checks::*;
pub use checks::{check_cidr, check_client_name, check_dns_name};
pub use image_ref::{parse_image_ref, ImageRef};
pub use storage::{Cluster, S3Storage, Storage, StorageDriver, DEFAULT_CREDENTIALS_FILE};

/// The guide's pinned registry image (registry:2, linux/amd64 platform manifest).
pub const DEFAULT_REGISTRY_IMAGE: &str = "docker.io/library/registry@sha256:8be26f81ffea54106bae012c6f349df70f4d5e7e2ec01b143c46e2c03b9e551d";

/// A config that cannot be used: names the key, the bad value and what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    /// Where the config came from (a path, or "built-in defaults").
    pub source_name: String,
    /// Dotted path of the offending key, e.g. `ports.push`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Key algorithm for every key regimage makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }
}

/// The whole site config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Config {
    /// Name clients use to reach the registry; unset: the machine's FQDN at first boot.
    pub hostname: Option<String>,
    /// More DNS names or IP addresses for the server certificate.
    pub extra_names: Vec<String>,
    /// Organization (O=) in every certificate subject.
    pub organization: String,
    /// The unprivileged user that runs the rootless registry (the guide's CI_SERVICE_USER).
    pub service_user: String,
    /// The system user nginx runs as.
    pub proxy_user: String,
    pub ports: Ports,
    /// Source networks allowed to reach the push port (ufw rules).
    pub push_allowed_cidrs: Vec<String>,
    /// Source networks allowed to reach the pull port (ufw rules and nginx); empty: any.
    pub pull_allowed_cidrs: Vec<String>,
    pub pki: Pki,
    /// One client certificate and bundle per name.
    pub clients: Vec<String>,
    pub registry: Registry,
    pub proxy: Proxy,
    /// Where first boot leaves client bundles and its status file (root only).
    pub output_dir: PathBuf,
    /// Several nodes serving one registry from shared S3 storage (issue 12).
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Ports {
    /// Anonymous pulls (TLS).
    pub pull: u16,
    /// Pushes with a client certificate (mTLS).
    pub push: u16,
    /// The registry on 127.0.0.1 only; never opened in the firewall.
    pub registry: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Pki {
    pub key_algorithm: KeyAlgorithm,
    pub ca_validity_days: u32,
    pub leaf_validity_days: u32,
    /// `regimage renew` issues a leaf again when it ends within this many days (validated:
    /// 1 to leaf-validity-days - 1).
    pub renew_before_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Registry {
    /// Registry image, pinned by digest (`NAME@sha256:HEX`).
    pub image: String,
    /// Where pushed images live on the host (with `storage.driver: filesystem`).
    pub storage_dir: PathBuf,
    /// The registry's storage driver: this machine's disk, or a shared S3 bucket.
    pub storage: Storage,
    /// systemd MemoryMax= for the registry (e.g. `1G`).
    pub memory_max: String,
    /// systemd CPUQuota= for the registry (e.g. `100%`).
    pub cpu_quota: String,
    /// A registry serving the pinned image in place of its own registry
    /// (`HOST[:PORT][/PATH]`), for sites without access to it; pulls stay pinned by digest.
    pub mirror: Option<String>,
    /// Reach the mirror over plain HTTP or unverified TLS (a mirror on a private network).
    pub mirror_insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Proxy {
    /// Requests per second per client address on the pull port, blob transfers not counted
    /// (manifests, tag lists, `/v2/`): README "Limits".
    pub pull_rate: u32,
    /// Such requests one address may make at once beyond the rate before it gets 429.
    pub pull_burst: u32,
    /// The same on the push port, where starting an upload (POST) counts too.
    pub push_rate: u32,
    pub push_burst: u32,
    /// Largest request body (one layer) the push port accepts, nginx size syntax (`2g`,
    /// `512m`); `0`: no limit. The pull port takes no bodies and keeps a small cap.
    #[serde(deserialize_with = "text_or_number")]
    pub max_body_size: String,
    /// Serve `/v2/_catalog` (the list of every repository) on the pull port too.
    pub public_catalog: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: None,
            extra_names: Vec::new(),
            organization: "regimage".into(),
            service_user: "registry".into(),
            proxy_user: "registry-proxy".into(),
            ports: Ports::default(),
            push_allowed_cidrs: vec![
                "10.0.0.0/8".into(),
                "172.16.0.0/12".into(),
                "192.168.0.0/16".into(),
            ],
            pull_allowed_cidrs: Vec::new(),
            pki: Pki::default(),
            clients: vec!["ci".into()],
            registry: Registry::default(),
            proxy: Proxy::default(),
            output_dir: PathBuf::from("/var/lib/regimage/out"),
            cluster: Cluster::default(),
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            pull: 443,
            push: 4443,
            registry: 5000,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            ca_validity_days: 3650,
            leaf_validity_days: 397,
            renew_before_days: 30,
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            image: DEFAULT_REGISTRY_IMAGE.into(),
            storage_dir: PathBuf::from("/var/lib/registry"),
            storage: Storage::default(),
            memory_max: "1G".into(),
            cpu_quota: "100%".into(),
            mirror: None,
            mirror_insecure: false,
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            pull_rate: 50,
            pull_burst: 500,
            push_rate: 50,
            push_burst: 1000,
            max_body_size: "0".into(),
            public_catalog: false,
        }
    }
}

impl Config {
    /// Loads and validates `path`, or returns the validated defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => {
                let config = Config::default();
                config.validate("built-in defaults")?;
                Ok(config)
            }
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    key: "(file)".into(),
                    message: format!("cannot read the config file: {e}"),
                })?;
                Config::parse(&text, &name)
            }
        }
    }

    /// Parses and validates YAML text; `source_name` goes into error messages.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let error = |key: String, message: String| ConfigError {
            source_name: source_name.to_string(),
            key,
            message,
        };
        // An empty file (or only comments) is the defaults.
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
            .map_err(|e| error("(document)".into(), format!("not valid YAML: {e}")))?;
        if value.is_null() {
            let config = Config::default();
            config.validate(source_name)?;
            return Ok(config);
        }
        if !value.is_mapping() {
            return Err(error(
                "(document)".into(),
                "expected a mapping of keys to values at the top level".into(),
            ));
        }
        // Before serde, so the message is about the secret and not an unknown key.
        if let Some(key) = storage::find_inline_secret(&value, "") {
            return Err(error(
                key,
                format!(
                    "a secret must not be in the site config: it would be baked into user-data and images; \
                     put S3 credentials in the file named by registry.storage.s3.credentials-file \
                     (default {DEFAULT_CREDENTIALS_FILE}) on the machine, or leave that unset to use \
                     the instance's role"
                ),
            ));
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                "(document)".to_string()
            } else {
                path
            };
            error(key, describe_serde_error(&e.into_inner().to_string()))
        })?;
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks every value serde cannot: ranges, formats, uniqueness.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let error = |key: &str, message: String| ConfigError {
            source_name: source_name.to_string(),
            key: key.to_string(),
            message,
        };
        // Any DNS name works for clients (bundle::registry_host keeps :443 for a single
        // label, identity lowercases it), and so does an address, as in extra-names.
        if let Some(hostname) = self
            .hostname
            .as_ref()
            .filter(|h| h.parse::<IpAddr>().is_err())
        {
            check_dns_name(hostname).map_err(|m| {
                error(
                    "hostname",
                    format!("{m}; an IPv4 or IPv6 address is accepted too"),
                )
            })?;
            if hostname.starts_with("*.") {
                return Err(error(
                    "hostname",
                    format!("{hostname:?} is a wildcard; clients need one real name (put wildcards in extra-names)"),
                ));
            }
        }
        for (i, name) in self.extra_names.iter().enumerate() {
            if name.parse::<IpAddr>().is_err() {
                check_dns_name(name).map_err(|m| {
                    error(
                        &format!("extra-names[{i}]"),
                        format!("{m}; an IPv4 or IPv6 address is accepted too"),
                    )
                })?;
            }
        }
        check_text("organization", &self.organization).map_err(|m| error("organization", m))?;
        check_user_name(&self.service_user).map_err(|m| error("service-user", m))?;
        check_user_name(&self.proxy_user).map_err(|m| error("proxy-user", m))?;
        if self.service_user == self.proxy_user {
            return Err(error(
                "proxy-user",
                format!(
                    "{:?} is also service-user; the proxy and the registry must run as different users",
                    self.proxy_user
                ),
            ));
        }
        let ports = [
            ("ports.pull", self.ports.pull),
            ("ports.push", self.ports.push),
            ("ports.registry", self.ports.registry),
        ];
        for (i, (key, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(error(
                    key,
                    "0 is not a usable port; expected 1 to 65535".into(),
                ));
            }
            if port_is_ssh(*port) {
                return Err(error(
                    key,
                    format!("{port} is the SSH port, which stays reserved for the operator"),
                ));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(error(
                    key,
                    format!("{port} is already used by {other}; each port must be different"),
                ));
            }
        }
        for (i, cidr) in self.push_allowed_cidrs.iter().enumerate() {
            check_cidr(cidr).map_err(|m| error(&format!("push-allowed-cidrs[{i}]"), m))?;
        }
        for (i, cidr) in self.pull_allowed_cidrs.iter().enumerate() {
            check_cidr(cidr).map_err(|m| error(&format!("pull-allowed-cidrs[{i}]"), m))?;
        }
        if self.pki.ca_validity_days == 0 || self.pki.ca_validity_days > 36500 {
            return Err(error(
                "pki.ca-validity-days",
                format!(
                    "{} is out of range; expected 1 to 36500 days",
                    self.pki.ca_validity_days
                ),
            ));
        }
        if self.pki.leaf_validity_days == 0
            || self.pki.leaf_validity_days > self.pki.ca_validity_days
        {
            return Err(error(
                "pki.leaf-validity-days",
                format!(
                    "{} is out of range; expected 1 to pki.ca-validity-days ({})",
                    self.pki.leaf_validity_days, self.pki.ca_validity_days
                ),
            ));
        }
        if self.pki.renew_before_days == 0
            || self.pki.renew_before_days >= self.pki.leaf_validity_days
        {
            return Err(error(
                "pki.renew-before-days",
                format!(
                    "{} is out of range; expected 1 to one less than pki.leaf-validity-days ({}), \
                     so a certificate is renewed before it ends and not at every run",
                    self.pki.renew_before_days, self.pki.leaf_validity_days
                ),
            ));
        }
        if self.clients.is_empty() {
            return Err(error(
                "clients",
                "the list is empty; expected at least one client name, e.g. [ci]".into(),
            ));
        }
        for (i, client) in self.clients.iter().enumerate() {
            check_client_name(client).map_err(|m| error(&format!("clients[{i}]"), m))?;
            if client == "ca" || client == "client-ca" {
                return Err(error(
                    &format!("clients[{i}]"),
                    format!("{client:?} is reserved: the CA files use that name; pick another client name"),
                ));
            }
            if self.clients[..i].contains(client) {
                return Err(error(
                    &format!("clients[{i}]"),
                    format!("{client:?} is listed twice; each client name must be unique"),
                ));
            }
        }
        parse_image_ref(&self.registry.image).map_err(|m| error("registry.image", m))?;
        check_absolute_dir(&self.registry.storage_dir)
            .map_err(|m| error("registry.storage-dir", m))?;
        check_systemd_size(&self.registry.memory_max)
            .map_err(|m| error("registry.memory-max", m))?;
        check_cpu_quota(&self.registry.cpu_quota).map_err(|m| error("registry.cpu-quota", m))?;
        if let Some(mirror) = &self.registry.mirror {
            check_mirror(mirror).map_err(|m| error("registry.mirror", m))?;
        }
        if self.registry.mirror_insecure && self.registry.mirror.is_none() {
            return Err(error(
                "registry.mirror-insecure",
                "true without registry.mirror; set a mirror or remove this key".into(),
            ));
        }
        for (key, value) in [
            ("proxy.pull-rate", self.proxy.pull_rate),
            ("proxy.push-rate", self.proxy.push_rate),
        ] {
            if value == 0 {
                return Err(error(
                    key,
                    "0 would refuse every request; expected requests per second, 1 or more".into(),
                ));
            }
        }
        check_nginx_size(&self.proxy.max_body_size).map_err(|m| error("proxy.max-body-size", m))?;
        storage::check(&self.registry.storage, &self.cluster).map_err(|(k, m)| error(&k, m))?;
        check_absolute_dir(&self.output_dir).map_err(|m| error("output-dir", m))?;
        let (storage, output) = (&self.registry.storage_dir, &self.output_dir);
        if storage.starts_with(output) || output.starts_with(storage) {
            return Err(error(
                "output-dir",
                format!(
                    "{} overlaps registry.storage-dir ({}); the registry's user owns the storage and the output holds client keys, so keep them apart",
                    output.display(),
                    storage.display()
                ),
            ));
        }
        Ok(())
    }

    /// Whether images live in a shared S3 bucket (a node that can join a cluster).
    pub fn is_s3(&self) -> bool {
        self.registry.storage.driver == StorageDriver::S3
    }

    /// The S3 settings, when the driver is s3 (validated: then they are present).
    pub fn s3(&self) -> Option<&S3Storage> {
        self.registry.storage.s3.as_ref().filter(|_| self.is_s3())
    }

    /// The pinned image reference, parsed. Valid after [`Config::validate`].
    pub fn image_ref(&self) -> anyhow::Result<ImageRef> {
        parse_image_ref(&self.registry.image).map_err(|m| anyhow::anyhow!("registry.image: {m}"))
    }

    /// The config as YAML, as installed on the machine.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml_ng::to_string(self)?)
    }

    /// `regimage check`'s report: the config from `source` (`None`: the built-in defaults)
    /// is valid, and the image it pins.
    pub fn check_report(&self, source: Option<&Path>) -> anyhow::Result<String> {
        let source = source.map_or("built-in defaults".to_string(), |p| p.display().to_string());
        let image = self.image_ref()?;
        Ok(format!("{source}: valid\nregistry image: {image}\n"))
    }
}

/// serde's messages are mostly fine; make the common ones say what is expected.
fn describe_serde_error(message: &str) -> String {
    if message.starts_with("unknown field") {
        return format!("{message}; remove it or fix its spelling (`regimage init` writes every key with a comment)");
    }
    if message.starts_with("unknown variant") {
        return message.replace("unknown variant", "unknown value");
    }
    message.to_string()
}

/// A size written bare in YAML (`max-body-size: 0`) is a number; take it as its text.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match serde_yaml_ng::Value::deserialize(d)? {
        serde_yaml_ng::Value::String(text) => Ok(text),
        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
        _ => Err(D::Error::custom(
            "expected an nginx size such as 2g, 512m or 0 (no limit)",
        )),
    }
}

fn port_is_ssh(port: u16) -> bool {
    port == 22
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_empty_file_is_defaults() {
        Config::default().validate("defaults").unwrap();
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
        assert_eq!(
            Config::parse("# only a comment\n", "t").unwrap(),
            Config::default()
        );
    }

    fn err(yaml: &str) -> ConfigError {
        Config::parse(yaml, "t.yaml").unwrap_err()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("ports:\n  push: 443\n");
        assert_eq!(e.key, "ports.push");
        assert!(e.message.contains("ports.pull"), "{e}");
        assert_eq!(err("prots: {}\n").key, "prots");
        assert_eq!(err("ports:\n  pull: 70000\n").key, "ports.pull");
        assert_eq!(err("ports:\n  pull: https\n").key, "ports.pull");
        assert_eq!(err("clients: [ci, ci]\n").key, "clients[1]");
        assert_eq!(
            err("push-allowed-cidrs: [10.0.0.0/8, bogus]\n").key,
            "push-allowed-cidrs[1]"
        );
        assert_eq!(err("pki:\n  key-algorithm: dsa\n").key, "pki.key-algorithm");
        assert_eq!(
            err("registry:\n  image: registry:2\n").key,
            "registry.image"
        );
        assert_eq!(err("- a\n- b\n").key, "(document)");
        assert_eq!(err("hostname: bad_host\n").key, "hostname");
        assert_eq!(err("hostname: '*.example.com'\n").key, "hostname");
        // Names clients can use: a single label, upper case (lowercased later), addresses.
        for name in ["vm", "Registry.Example.COM", "10.0.0.5", "'2001:db8::1'"] {
            let c = Config::parse(&format!("hostname: {name}\n"), "t").unwrap();
            assert_eq!(c.hostname.as_deref(), Some(name.trim_matches('\'')));
        }
        assert_eq!(err("hostname: 10.0.0.256\n").key, "hostname");
        assert_eq!(err("clients: [ci, ca]\n").key, "clients[1]");
        for alg in ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096"] {
            let c = Config::parse(&format!("pki:\n  key-algorithm: {alg}\n"), "t").unwrap();
            assert_eq!(c.pki.key_algorithm.as_str(), alg);
        }
        assert_eq!(
            Config::parse("proxy:\n  max-body-size: 0\n", "t")
                .unwrap()
                .proxy
                .max_body_size,
            "0"
        );
        assert_eq!(
            err("proxy:\n  max-body-size: -1\n").key,
            "proxy.max-body-size"
        );
        assert_eq!(
            err("pull-allowed-cidrs: [10.0.0.1/8]\n").key,
            "pull-allowed-cidrs[0]"
        );
        let e = err("output-dir: /var/lib/registry/out\n");
        assert_eq!(e.key, "output-dir");
        assert!(e.message.contains("overlaps"), "{e}");
        assert_eq!(
            err("registry:\n  storage-dir: /var/lib/regimage/out/x\n").key,
            "output-dir"
        );
        let e = err("registry:\n  image: registry:2\n");
        assert!(e.to_string().starts_with("t.yaml: registry.image: "), "{e}");
    }

    #[test]
    fn s3_storage_and_cluster_keys() {
        let s3 = "registry:\n  storage:\n    driver: s3\n    s3:\n      endpoint: http://10.0.2.2:3900\n      region: garage\n      bucket: registry\n";
        let c = Config::parse(s3, "t").unwrap();
        assert!(c.is_s3());
        let got = c.s3().unwrap();
        assert_eq!(got.bucket, "registry");
        assert!(!got.secure());
        assert_eq!(
            got.credentials_file.as_deref(),
            Some(Path::new(DEFAULT_CREDENTIALS_FILE))
        );
        assert!(!Config::default().is_s3());
        let with_cluster = format!(
            "{s3}cluster:\n  name: reg.example.com\n  join-file: /etc/regimage/cluster-join.json\n"
        );
        assert_eq!(
            Config::parse(&with_cluster, "t")
                .unwrap()
                .cluster
                .name
                .as_deref(),
            Some("reg.example.com")
        );
        // Each bad value names its key.
        for (yaml, key) in [
            (
                "registry:\n  storage:\n    driver: s3\n",
                "registry.storage.s3",
            ),
            (
                "registry:\n  storage:\n    s3:\n      bucket: b12\n",
                "registry.storage.s3",
            ),
            (
                &s3.replace("http://10.0.2.2:3900", "10.0.2.2:3900"),
                "registry.storage.s3.endpoint",
            ),
            (
                &s3.replace("bucket: registry", "bucket: Bad_Bucket"),
                "registry.storage.s3.bucket",
            ),
            (
                &format!("{s3}      path-style: false\n"),
                "registry.storage.s3.path-style",
            ),
            (
                &format!("{s3}      credentials-file: relative/file\n"),
                "registry.storage.s3.credentials-file",
            ),
            (
                "cluster:\n  join-file: /etc/regimage/j.json\n",
                "cluster.join-file",
            ),
            ("cluster:\n  name: bad_name\n", "cluster.name"),
            (&format!("{s3}      drivr: x\n"), "registry.storage.s3.drivr"),
        ] {
            assert_eq!(err(yaml).key, key, "{yaml}");
        }
    }

    #[test]
    fn an_inlined_secret_is_refused_by_its_key() {
        for (yaml, key) in [
            (
                "registry:\n  storage:\n    driver: s3\n    s3:\n      bucket: b12\n      secretkey: abc\n",
                "registry.storage.s3.secretkey",
            ),
            (
                "registry:\n  storage:\n    s3:\n      access-key-id: GK1\n",
                "registry.storage.s3.access-key-id",
            ),
            ("http-secret: x\n", "http-secret"),
        ] {
            let e = err(yaml);
            assert_eq!(e.key, key, "{yaml}");
            assert!(e.message.contains("must not be in the site config"), "{e}");
            assert!(e.message.contains("credentials-file"), "{e}");
        }
    }
}
