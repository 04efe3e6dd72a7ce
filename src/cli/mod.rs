//! Command-line interface: every clap type, one file per command, each args struct with a
//! `run` that turns its flags into the domain's options and calls the domain.
//!
//! Exit status: 0 success, 1 failure, 2 bad input (arguments or config); the mapping is
//! [`crate::error::exit_code_for`]. Nothing outside this module imports from it.

mod appliance;
mod build;
mod check;
mod client;
mod cluster;
mod fetch_image;
mod firstboot;
mod init;
mod render;
mod renew;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::error::exit_code_for;

pub use appliance::ApplianceArgs;
pub use build::{BuildArgs, BuildFormat, Qcow2Args, UserDataArgs};
pub use check::CheckArgs;
pub use client::{ClientArgs, ClientCommand};
pub use cluster::{ClusterArgs, ClusterCommand};
pub use fetch_image::FetchImageArgs;
pub use firstboot::FirstbootArgs;
pub use init::InitArgs;
pub use render::RenderArgs;
pub use renew::RenewArgs;
pub use status::StatusArgs;

/// regimage: build a private container registry appliance from one site config.
///
/// `build` turns the site config into a cloud-init user-data file (or a qcow2 image);
/// `firstboot`, run once on the booted machine by regimage-firstboot.service, makes the
/// certificates, starts the registry and its TLS proxy and leaves client bundles. On the
/// running appliance, `renew` (daily, by regimage-renew.timer), `client` and `status` keep
/// it alive.
#[derive(Debug, Parser)]
#[command(
    name = "regimage",
    version,
    propagate_version = true,
    help_expected = true
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a site config with every key, its default and a comment.
    Init(InitArgs),
    /// Validate a site config.
    Check(CheckArgs),
    /// Write the appliance's files under a directory, with a manifest.
    Render(RenderArgs),
    /// Build a cloud-init user-data file (the default) or a qcow2 image.
    Build(BuildArgs),
    /// Save the pinned registry image as an OCI archive (for build qcow2).
    FetchImage(FetchImageArgs),
    /// Make the machine a ready registry (run by regimage-firstboot.service).
    Firstboot(FirstbootArgs),
    /// Renew certificates and the CRL before they end (daily, by regimage-renew.timer).
    Renew(RenewArgs),
    /// Add, revoke or list the clients allowed to push.
    Client(ClientArgs),
    /// Whether the registry is ready, its certificates, CRL and clients (exit 1: needs you).
    Status(StatusArgs),
    /// Several nodes on shared S3 storage: export the join file for a new node, share
    /// client additions and revocations between nodes.
    Cluster(ClusterArgs),
}

/// The site config option shared by every command.
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct ConfigArg {
    /// Site config (YAML). Without it, the built-in defaults are used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads and validates the config (exit status 2 on any problem).
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref())
    }
}

/// Parses `args`, runs the command and returns the process exit status.
pub fn main_exit_code<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match build::respell_format(args.into_iter().map(Into::into).collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return exit_code_for(&e.into());
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    crate::logging::init(cli.verbose, matches!(cli.command, Command::Firstboot(_)));
    match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code_for(&e)
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init(args) => args.run(),
        Command::Check(args) => args.run(),
        Command::Render(args) => args.run(),
        Command::Build(args) => args.run(),
        Command::FetchImage(args) => args.run(),
        Command::Firstboot(args) => args.run(),
        Command::Renew(args) => args.run(),
        Command::Client(args) => args.run(),
        Command::Status(args) => args.run(),
        Command::Cluster(args) => args.run(),
    }
}

#[cfg(test)]
pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let args = build::respell_format(args.iter().map(OsString::from).collect())
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
    Cli::try_parse_from(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(main_exit_code(["regimage", "--frobnicate"]), 2);
        assert_eq!(main_exit_code(["regimage", "build", "--format", "xml"]), 2);
    }
}
