//! Registry image references pinned by digest (`NAME[:TAG]@sha256:HEX`), as `registry.image`
//! takes them.

use std::fmt;
use std::net::IpAddr;

use super::checks::check_dns_name;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_REGISTRY_IMAGE;

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
}
