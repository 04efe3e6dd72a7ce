//! Checks of what the document hands to the guest's shell: the URL the binary is downloaded
//! from and the sha256 digests files are checked against. `regimage build` parses
//! `--binary-url` and `--binary-sha256` with them too.

/// An http(s) URL with a host and nothing a shell or curl could misread (no white space,
/// no control characters, no quotes).
pub fn check_binary_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(format!(
            "{url:?} has no host (or carries credentials); expected e.g. https://example.com/regimage"
        ));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\' | '`'))
    {
        return Err(format!(
            "{url:?} contains white space, a quote or a control character; percent-encode it"
        ));
    }
    if url.len() > 2048 {
        return Err(format!(
            "the URL is {} characters long; at most 2048",
            url.len()
        ));
    }
    Ok(())
}

/// 64 hexadecimal digits (lowercase, as written by `sha256sum`).
pub fn check_sha256(hex: &str) -> Result<(), String> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(format!(
            "{hex:?} is not a sha256 digest; expected 64 lowercase hex digits, as printed by `sha256sum FILE`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_digest_checks() {
        assert!(check_binary_url("https://example.com/r").is_ok());
        assert!(check_binary_url("http://10.0.0.1:8080/r?x=1").is_ok());
        for bad in [
            "ftp://x/r",
            "https://",
            "https:///r",
            "https://u:p@x/r",
            "https://x/a b",
            "https://x/'r",
            "example.com/r",
        ] {
            assert!(check_binary_url(bad).is_err(), "{bad}");
        }
        assert!(check_sha256(&"0".repeat(64)).is_ok());
        assert!(check_sha256(&"0".repeat(63)).is_err());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256(&"g".repeat(64)).is_err());
    }
}
