//! `regimage firstboot`: the flags of the first boot, turned into a [`Mode`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::ConfigArg;
use crate::error::UsageError;
use crate::firstboot::{Mode, Options, DEFAULT_HEALTH_TIMEOUT_SECS, DEFAULT_NETWORK_TIMEOUT_SECS};

#[derive(Debug, Args)]
pub struct FirstbootArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory that stands for `/` (only with --no-system).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Only write certificates and client bundles under --root; change nothing else.
    #[arg(long)]
    pub no_system: bool,
    /// Print what a run would change on this machine, and change nothing.
    #[arg(long, conflicts_with = "no_system")]
    pub dry_run: bool,
    /// How long to wait for the registry and the proxy to answer.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_HEALTH_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub health_timeout: u64,
    /// How long to wait for a network address and a host name clients can use before
    /// giving up without issuing a certificate (0: look once).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_NETWORK_TIMEOUT_SECS)]
    pub network_timeout: u64,
}

impl FirstbootArgs {
    pub fn run(self) -> Result<()> {
        let config = self.config.config.clone();
        crate::firstboot::run(config.as_deref(), self.mode()?)
    }

    /// `--root` other than `/` only makes sense with `--no-system`.
    fn mode(self) -> Result<Mode, UsageError> {
        if self.no_system {
            return Ok(Mode::NoSystem { root: self.root });
        }
        if self.root != Path::new("/") {
            return Err(UsageError(format!(
                "--root {} works only with --no-system: the full first boot changes this \
                 machine (users, firewall, services), not a directory; pass --no-system to \
                 write only the certificates and client bundles under --root",
                self.root.display()
            )));
        }
        Ok(Mode::System(Options {
            dry_run: self.dry_run,
            health_timeout: Duration::from_secs(self.health_timeout),
            network_timeout: Duration::from_secs(self.network_timeout),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn firstboot(args: &[&str]) -> Result<FirstbootArgs, clap::Error> {
        let mut all = vec!["regimage", "firstboot"];
        all.extend_from_slice(args);
        parse(&all).map(|cli| match cli.command {
            Command::Firstboot(args) => args,
            other => panic!("not firstboot: {other:?}"),
        })
    }

    #[test]
    fn flags_to_modes() {
        let mode = firstboot(&[
            "--dry-run",
            "--health-timeout",
            "30",
            "--network-timeout",
            "0",
        ])
        .unwrap()
        .mode()
        .unwrap();
        assert_eq!(
            mode,
            Mode::System(Options {
                dry_run: true,
                health_timeout: Duration::from_secs(30),
                network_timeout: Duration::ZERO,
            })
        );
        let mode = firstboot(&[]).unwrap().mode().unwrap();
        assert_eq!(
            mode,
            Mode::System(Options {
                dry_run: false,
                health_timeout: Duration::from_secs(DEFAULT_HEALTH_TIMEOUT_SECS),
                network_timeout: Duration::from_secs(DEFAULT_NETWORK_TIMEOUT_SECS),
            })
        );
        let mode = firstboot(&["--no-system", "--root", "/tmp/x"])
            .unwrap()
            .mode()
            .unwrap();
        assert_eq!(
            mode,
            Mode::NoSystem {
                root: PathBuf::from("/tmp/x")
            }
        );
        assert!(firstboot(&["--dry-run", "--no-system"]).is_err());
        assert!(firstboot(&["--health-timeout", "0"]).is_err());
    }

    #[test]
    fn full_first_boot_with_a_root_directory_is_refused_with_a_hint() {
        let e = firstboot(&["--root", "/tmp/x"])
            .unwrap()
            .mode()
            .unwrap_err();
        assert!(e.to_string().contains("--no-system"), "{e}");
    }
}
