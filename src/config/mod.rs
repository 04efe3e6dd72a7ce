//! The site config (`regimage.yaml`): types, defaults and validation.
//!
//! Every field has a default, so an empty file (or no file at all) is a valid config.
//! Parsing and validation report one [`ConfigError`] that names the key, the bad value
//! and the expected form; the CLI turns it into exit status 2.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    pub pki: Pki,
    /// One client certificate and bundle per name.
    pub clients: Vec<String>,
    pub registry: Registry,
    pub proxy: Proxy,
    /// Where first boot leaves client bundles and its status file (root only).
    pub output_dir: PathBuf,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Registry {
    /// Registry image, pinned by digest (`NAME@sha256:HEX`).
    pub image: String,
    /// Where pushed images live on the host.
    pub storage_dir: PathBuf,
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
    /// Requests per second per client address on the pull port.
    pub pull_rate: u32,
    pub pull_burst: u32,
    /// Requests per second per client address on the push port.
    pub push_rate: u32,
    pub push_burst: u32,
    /// Largest request body (one layer) nginx accepts, nginx size syntax (`2g`, `512m`).
    pub max_body_size: String,
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
            pki: Pki::default(),
            clients: vec!["ci".into()],
            registry: Registry::default(),
            proxy: Proxy::default(),
            output_dir: PathBuf::from("/var/lib/regimage/out"),
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
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            image: DEFAULT_REGISTRY_IMAGE.into(),
            storage_dir: PathBuf::from("/var/lib/registry"),
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
            pull_rate: 10,
            pull_burst: 20,
            push_rate: 5,
            push_burst: 10,
            max_body_size: "2g".into(),
        }
    }
}

/// A registry image reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository with registry host, e.g. `docker.io/library/registry`.
    pub name: String,
    /// Optional tag kept for the reader; the digest is what is pulled.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl ImageRef {
    /// The digest's hex part.
    pub fn digest_hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    /// `name@digest`, what podman and skopeo are given.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.name, self.digest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(f, "{}:{}@{}", self.name, tag, self.digest),
            None => write!(f, "{}@{}", self.name, self.digest),
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
        if let Some(hostname) = &self.hostname {
            check_dns_name(hostname).map_err(|m| error("hostname", m))?;
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
        check_absolute_dir(&self.output_dir).map_err(|m| error("output-dir", m))?;
        Ok(())
    }

    /// The pinned image reference, parsed. Valid after [`Config::validate`].
    pub fn image_ref(&self) -> anyhow::Result<ImageRef> {
        parse_image_ref(&self.registry.image).map_err(|m| anyhow::anyhow!("registry.image: {m}"))
    }

    /// The config as YAML, as installed on the machine.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml_ng::to_string(self)?)
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

fn port_is_ssh(port: u16) -> bool {
    port == 22
}

fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("the {what} is empty; expected some text"));
    }
    if value.len() > 64 {
        return Err(format!(
            "{value:?} is {} bytes long; an X.509 name attribute holds at most 64",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("{value:?} contains a control character"));
    }
    Ok(())
}

/// RFC 1123 host name, with an optional single leading `*.` wildcard label.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let expected = "expected a DNS name of letters, digits and hyphens in dot-separated labels of 1-63 characters, e.g. registry.example.com";
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a valid host name; {expected}"));
    }
    let body = body.strip_suffix('.').unwrap_or(body);
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?} is not a valid host name; {expected}"));
        }
    }
    if body
        .split('.')
        .next_back()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} looks like an IP address but does not parse as one; {expected}"
        ));
    }
    Ok(())
}

fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok && name != "root" {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable user name; expected 1-32 lowercase letters, digits, '_' or '-', starting with a letter, and not root"
        ))
    }
}

fn check_client_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable client name; expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a file)"
        ))
    }
}

/// `ADDR/PREFIX` with no host bits set, as ufw takes it.
pub fn check_cidr(cidr: &str) -> Result<(), String> {
    let expected = "expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8";
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} has no /PREFIX; {expected}"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {cidr:?} is not an IP address; {expected}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{cidr:?} has a bad prefix length; expected 0 to {max}"))?;
    let bits: u128 = match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = max - prefix;
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if bits & host_mask != 0 {
        let network = bits & !host_mask;
        let network: IpAddr = match addr {
            IpAddr::V4(_) => IpAddr::V4((network as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(network.into()),
        };
        return Err(format!(
            "{cidr:?} has host bits set; expected the network address, e.g. {network}/{prefix}"
        ));
    }
    Ok(())
}

/// `NAME[:TAG]@sha256:<64 lowercase hex>`, NAME in the Distribution reference grammar.
pub fn parse_image_ref(reference: &str) -> Result<ImageRef, String> {
    let expected = "expected an image pinned by digest, NAME@sha256:<64 hex digits>, e.g. docker.io/library/registry@sha256:8be26f81...";
    let (name_tag, digest) = reference
        .split_once('@')
        .ok_or_else(|| format!("{reference:?} has no digest; {expected}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} is not sha256; {expected}"))?;
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(format!(
            "digest {digest:?} is malformed: the sha256 part must be 64 lowercase hex digits; {expected}"
        ));
    }
    // A tag follows the last ':' unless that ':' belongs to a host:port (then a '/' follows it).
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !ok {
            return Err(format!(
                "tag {tag:?} in {reference:?} is malformed; {expected}"
            ));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts.first().copied().unwrap_or_default();
    // The first component is a registry host when it has a '.' or ':' or is localhost.
    if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
        let host = first.split(':').next().unwrap_or_default();
        let port_ok = first
            .split_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
        if check_dns_name(host).is_err() && host.parse::<IpAddr>().is_err() || !port_ok {
            return Err(format!(
                "registry host {first:?} in {reference:?} is malformed; {expected}"
            ));
        }
        parts.remove(0);
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            })
    };
    if parts.is_empty() || !parts.iter().all(|c| component_ok(c)) {
        return Err(format!(
            "repository {name:?} in {reference:?} is malformed: components are lowercase letters, digits and . _ -; {expected}"
        ));
    }
    Ok(ImageRef {
        name: name.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.to_string(),
    })
}

/// `HOST[:PORT][/PATH]`, the form registries.conf takes for a mirror location.
fn check_mirror(mirror: &str) -> Result<(), String> {
    let expected = "expected HOST[:PORT][/PATH] without a scheme, e.g. mirror.example.com:5000/library/registry";
    if mirror.contains("://") {
        return Err(format!("{mirror:?} has a scheme; {expected}"));
    }
    let (host_port, path) = mirror.split_once('/').unwrap_or((mirror, ""));
    // An IPv6 address is bracketed, so the port is what follows the last ':' after any ']'.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (host_port, None),
    };
    let host_ok = check_dns_name(host).is_ok()
        || host.parse::<IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let path_ok = path.split('/').all(|c| {
        !c.is_empty()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            })
    }) || path.is_empty();
    if host_ok && port_ok && path_ok {
        Ok(())
    } else {
        Err(format!("{mirror:?} is not a registry location; {expected}"))
    }
}

fn check_absolute_dir(path: &Path) -> Result<(), String> {
    let text = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(format!("{text:?} is relative; expected an absolute path"));
    }
    if path == Path::new("/") || text.contains("/../") || text.ends_with("/..") {
        return Err(format!(
            "{text:?} is not a usable directory; expected an absolute path below /, without '..'"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '%' || c == '\\' || c == '"')
    {
        return Err(format!(
            "{text:?} contains white space or a character systemd and nginx treat specially; expected a plain path"
        ));
    }
    Ok(())
}

/// systemd size: a number with an optional K, M, G or T suffix (base 1024), or `infinity`.
fn check_systemd_size(value: &str) -> Result<(), String> {
    let digits = value.trim_end_matches(['K', 'M', 'G', 'T']);
    let suffixes = value.len() - digits.len();
    if value == "infinity"
        || (suffixes <= 1
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && digits != "0")
    {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a size; expected a number with an optional K, M, G or T suffix, e.g. 1G or 512M"
        ))
    }
}

/// systemd CPUQuota=: a positive percentage.
fn check_cpu_quota(value: &str) -> Result<(), String> {
    match value.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
        Some(n) if n > 0 => Ok(()),
        _ => Err(format!(
            "{value:?} is not a CPU quota; expected a percentage of one CPU, e.g. 100% or 250%"
        )),
    }
}

/// nginx size: a number with an optional k, m or g suffix (either case).
fn check_nginx_size(value: &str) -> Result<(), String> {
    let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    if value.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not an nginx size; expected a number with an optional k, m or g suffix, e.g. 2g or 512m (0 means no limit)"
        ))
    }
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

    #[test]
    fn default_image_is_pinned() {
        let r = parse_image_ref(DEFAULT_REGISTRY_IMAGE).unwrap();
        assert_eq!(r.name, "docker.io/library/registry");
        assert_eq!(r.tag, None);
        assert!(r.digest.starts_with("sha256:8be26f81"));
    }

    #[test]
    fn image_refs() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let r = parse_image_ref(&format!("localhost:5000/reg/registry:2.8@{d}")).unwrap();
        assert_eq!(r.name, "localhost:5000/reg/registry");
        assert_eq!(r.tag.as_deref(), Some("2.8"));
        assert_eq!(r.pinned(), format!("localhost:5000/reg/registry@{d}"));
        for bad in [
            "registry:2".to_string(),
            format!("registry@sha512:{}", "a".repeat(128)),
            format!("registry@sha256:{}", "A".repeat(64)),
            format!("registry@sha256:{}", "a".repeat(63)),
            format!("Registry@{d}"),
            format!("@{d}"),
            format!("docker.io//registry@{d}"),
        ] {
            assert!(parse_image_ref(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cidrs() {
        for good in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.1.7/32",
            "fd00::/8",
            "::/0",
        ] {
            check_cidr(good).unwrap();
        }
        let e = check_cidr("10.0.0.1/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "fd00::/129", "x/1"] {
            assert!(check_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dns_names() {
        for good in [
            "registry",
            "reg-1.example.com",
            "*.example.com",
            "example.com.",
        ] {
            check_dns_name(good).unwrap();
        }
        for bad in [
            "",
            "-a.com",
            "a_b.com",
            "a..b",
            "10.0.0.300",
            &"a".repeat(64),
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn mirrors() {
        for good in [
            "10.0.2.2:5000",
            "mirror.example.com/library/registry",
            "[fd00::1]:5000/x",
        ] {
            check_mirror(good).unwrap();
        }
        for bad in [
            "http://m:5000",
            "m:0",
            "m:port",
            "m/Upper",
            "bad_host",
            "m//x",
        ] {
            assert!(check_mirror(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes_and_quotas() {
        check_systemd_size("1G").unwrap();
        check_systemd_size("infinity").unwrap();
        assert!(check_systemd_size("1GB").is_err());
        assert!(check_systemd_size("G").is_err());
        check_cpu_quota("150%").unwrap();
        assert!(check_cpu_quota("150").is_err());
        check_nginx_size("0").unwrap();
        check_nginx_size("512m").unwrap();
        assert!(check_nginx_size("2gb").is_err());
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
        assert_eq!(err("clients: [ci, ca]\n").key, "clients[1]");
        for alg in ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096"] {
            let c = Config::parse(&format!("pki:\n  key-algorithm: {alg}\n"), "t").unwrap();
            assert_eq!(c.pki.key_algorithm.as_str(), alg);
        }
        let e = err("registry:\n  image: registry:2\n");
        assert!(e.to_string().starts_with("t.yaml: registry.image: "), "{e}");
    }
}
