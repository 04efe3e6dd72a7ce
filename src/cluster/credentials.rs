//! The S3 credentials file (AWS shared-credentials format) the operator puts on the machine:
//! read at first boot into the registry's secret environment, never into user-data or images.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// An access key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

// Never print the secret (first boot logs what it changes).
impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Keys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What the README tells the operator to write.
pub const EXPECTED_FORM: &str = "expected the AWS shared-credentials form: a [default] line, then \
     aws_access_key_id = ID and aws_secret_access_key = SECRET lines";

impl S3Keys {
    /// Reads the file at `path` (`shown`: its path on the machine, for messages).
    pub fn read(path: &Path, shown: &Path) -> Result<S3Keys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the S3 credentials file {}", shown.display()))?;
        S3Keys::parse(&text).with_context(|| format!("{}", shown.display()))
    }

    /// The `[default]` profile (or the only one, or keys outside any section).
    pub fn parse(text: &str) -> Result<S3Keys> {
        let mut section: Option<String> = None;
        let mut found: Vec<(Option<String>, String, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim().to_string());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("line {}: not KEY = VALUE; {EXPECTED_FORM}", n + 1);
            };
            found.push((
                section.clone(),
                key.trim().to_ascii_lowercase(),
                value.trim().to_string(),
            ));
        }
        let sections: std::collections::BTreeSet<_> =
            found.iter().map(|(s, _, _)| s.clone()).collect();
        let wanted = if sections.contains(&Some("default".to_string())) {
            Some("default".to_string())
        } else if sections.len() == 1 {
            sections.into_iter().next().flatten()
        } else {
            bail!("no [default] section among several profiles; {EXPECTED_FORM}");
        };
        let get = |key: &str| {
            found
                .iter()
                .find(|(s, k, v)| *s == wanted && k == key && !v.is_empty())
                .map(|(_, _, v)| v.clone())
        };
        let (Some(access_key_id), Some(secret_access_key)) =
            (get("aws_access_key_id"), get("aws_secret_access_key"))
        else {
            bail!(
                "aws_access_key_id or aws_secret_access_key is missing or empty; {EXPECTED_FORM}"
            );
        };
        for (name, value) in [
            ("aws_access_key_id", &access_key_id),
            ("aws_secret_access_key", &secret_access_key),
        ] {
            // registry.env is a systemd EnvironmentFile: one plain line per variable.
            if value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'' || c == '\\')
            {
                bail!("{name} contains a space, a quote or a backslash; {EXPECTED_FORM}");
            }
        }
        Ok(S3Keys {
            access_key_id,
            secret_access_key,
        })
    }
}

/// The S3 keys for the registry: `None` with filesystem storage or the instance's role;
/// otherwise the credentials file, once it is there (waiting up to
/// `registry.storage.s3.credentials-wait-seconds`).
pub fn wait_and_read(
    clock: &dyn super::wait::Clock,
    root: &Path,
    config: &crate::config::Config,
) -> Result<Option<S3Keys>> {
    let Some(s3) = config.s3() else {
        return Ok(None);
    };
    let Some(shown) = &s3.credentials_file else {
        return Ok(None);
    };
    let path = crate::fsutil::under_root(root, shown);
    super::wait::for_file(
        clock,
        &path,
        shown,
        "the S3 credentials for the registry's bucket",
        &format!(
            "copy it here out of band (scp, then `sudo install -m 0600 FILE {}`); {EXPECTED_FORM}",
            shown.display()
        ),
        std::time::Duration::from_secs(u64::from(s3.credentials_wait_seconds)),
    )?;
    S3Keys::read(&path, shown).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_profile_and_refuses_what_is_not_a_key_pair() {
        let keys = S3Keys::parse(
            "# garage\n[other]\naws_access_key_id = X\naws_secret_access_key = Y\n\n[default]\naws_access_key_id = GK123\naws_secret_access_key=abc\n",
        )
        .unwrap();
        assert_eq!(keys.access_key_id, "GK123");
        assert_eq!(keys.secret_access_key, "abc");
        assert!(!format!("{keys:?}").contains("abc"));
        let only = S3Keys::parse("aws_access_key_id=A\naws_secret_access_key=B\n").unwrap();
        assert_eq!(only.access_key_id, "A");
        for bad in [
            "",
            "[default]\naws_access_key_id = A\n",
            "[a]\naws_access_key_id=A\naws_secret_access_key=B\n[b]\naws_access_key_id=A\naws_secret_access_key=B\n",
            "[default]\njust text\n",
            "[default]\naws_access_key_id = A B\naws_secret_access_key = C\n",
        ] {
            let e = S3Keys::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected the AWS shared-credentials form"), "{bad:?}: {e}");
        }
    }
}
