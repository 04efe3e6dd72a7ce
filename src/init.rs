//! `regimage init`: writes the annotated default site config.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::error::UsageError;

/// The annotated defaults; a unit test keeps it equal to `Config::default()`.
pub const ANNOTATED_DEFAULTS: &str = include_str!("../templates/regimage.yaml");

/// Writes the annotated config to `output` (`-` is standard output); refuses to replace an
/// existing file unless `force`.
pub fn run(output: &Path, force: bool) -> Result<()> {
    if output == Path::new("-") {
        std::io::stdout()
            .write_all(ANNOTATED_DEFAULTS.as_bytes())
            .context("writing to standard output")?;
        return Ok(());
    }
    if output.exists() && !force {
        return Err(UsageError(format!(
            "{} exists; pass --force to replace it, or -o to write elsewhere",
            output.display()
        ))
        .into());
    }
    crate::fsutil::write_atomic(output, ANNOTATED_DEFAULTS.as_bytes(), 0o644)?;
    eprintln!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn annotated_defaults_are_the_defaults() {
        let parsed = Config::parse(ANNOTATED_DEFAULTS, "templates/regimage.yaml").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_has_a_comment_line_above_it() {
        let lines: Vec<&str> = ANNOTATED_DEFAULTS.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') || t.starts_with("- ") {
                continue;
            }
            let above = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
            assert!(
                above.is_some_and(|l| l.trim_start().starts_with('#')),
                "key line without a comment: {line}"
            );
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("regimage.yaml");
        std::fs::write(&p, "keep me").unwrap();
        let e = run(&p, false).unwrap_err();
        assert!(e.is::<UsageError>());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep me");
        run(&p, true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), ANNOTATED_DEFAULTS);
    }
}
