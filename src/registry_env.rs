//! /etc/registry/registry.env: the registry's secret environment (a systemd EnvironmentFile,
//! 0640 root:<service user>), made on the machine and never rendered: REGISTRY_HTTP_SECRET
//! (shared by every node of a cluster, so an upload started on one node can finish on
//! another) and, with S3 storage and a credentials file, the S3 key pair.

use anyhow::{anyhow, Result};

use crate::cluster::S3Keys;
use crate::render::S3_KEY_VARIABLES;

pub const HTTP_SECRET: &str = "REGISTRY_HTTP_SECRET";

/// The value of `name` in registry.env's text, when set and not empty.
pub fn value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    })
}

/// The file's text for this secret and these keys (fixed order, so an unchanged file is
/// never rewritten).
pub fn contents(http_secret: &str, s3: Option<&S3Keys>) -> String {
    let mut text =
        format!("# Made by regimage at first boot; keep it.\n{HTTP_SECRET}={http_secret}\n");
    if let Some(keys) = s3 {
        let [id_var, secret_var] = S3_KEY_VARIABLES;
        text.push_str(&format!(
            "# From the S3 credentials file (registry.storage.s3.credentials-file).\n\
             {id_var}={}\n{secret_var}={}\n",
            keys.access_key_id, keys.secret_access_key
        ));
    }
    text
}

/// A new HTTP secret: 32 random bytes as hex.
pub fn new_http_secret() -> Result<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| anyhow!("getting random bytes: {e}"))?;
    Ok(hex::encode(buf))
}

/// Whether `secret` has the form regimage makes (a join file's must).
pub fn is_http_secret(secret: &str) -> bool {
    secret.len() >= 32 && secret.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_round_trip() {
        let keys = S3Keys {
            access_key_id: "GK1".into(),
            secret_access_key: "s3cr3t".into(),
        };
        let text = contents("ab12", Some(&keys));
        assert_eq!(value(&text, HTTP_SECRET), Some("ab12"));
        assert_eq!(value(&text, "REGISTRY_STORAGE_S3_ACCESSKEY"), Some("GK1"));
        assert_eq!(
            value(&text, "REGISTRY_STORAGE_S3_SECRETKEY"),
            Some("s3cr3t")
        );
        assert_eq!(
            value(&contents("ab12", None), "REGISTRY_STORAGE_S3_ACCESSKEY"),
            None
        );
        assert!(is_http_secret(&new_http_secret().unwrap()));
        assert!(!is_http_secret("short"));
    }
}
