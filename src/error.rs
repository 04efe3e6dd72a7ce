//! The errors that pick the exit status: 0 success, 1 failure, 2 bad input.
//!
//! A leaf module: domain code returns these errors, and only the command line
//! (the `cli` module) turns an error into an exit status, with [`exit_code_for`].

use crate::config::ConfigError;

/// Bad input that is not a config file: exit status 2, like a config error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// 2 for bad input (config or arguments), 1 for everything else.
pub fn exit_code_for(e: &anyhow::Error) -> i32 {
    if e.is::<ConfigError>() || e.is::<UsageError>() {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_two_anything_else_one() {
        let usage = anyhow::Error::new(UsageError("bad flag".into()));
        assert_eq!(exit_code_for(&usage), 2);
        // Context on top does not hide what the error is.
        assert_eq!(exit_code_for(&usage.context("checking the flags")), 2);
        let config =
            crate::config::Config::load(Some(std::path::Path::new("/nonexistent/regimage.yaml")))
                .unwrap_err();
        assert_eq!(exit_code_for(&anyhow::Error::new(config)), 2);
        assert_eq!(exit_code_for(&anyhow::anyhow!("disk full")), 1);
    }
}
