//! Command-line interface: one args struct per subcommand, each with a `run` entry.
//! Exit status: 0 success, 1 failure, 2 bad input (arguments or config).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Bad input that is not a config file: exit status 2, like a config error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// regimage: build a private container registry appliance from one site config.
///
/// `build` turns the site config into a cloud-init user-data file (or a qcow2 image);
/// `firstboot`, run once on the booted machine by regimage-firstboot.service, makes the
/// certificates, starts the registry and its TLS proxy and leaves client bundles.
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a site config with every key, its default and a comment.
    Init(InitArgs),
    /// Validate a site config.
    Check(ConfigArg),
    /// Write the appliance's files under a directory, with a manifest.
    Render(RenderArgs),
    /// Build a cloud-init user-data file (or a qcow2 image).
    Build(crate::build::BuildArgs),
    /// Save the pinned registry image as an OCI archive (for build --format qcow2).
    FetchImage(crate::fetch_image::FetchImageArgs),
    /// Make the machine a ready registry (run by regimage-firstboot.service).
    Firstboot(crate::firstboot::FirstbootArgs),
}

/// The site config option shared by every command.
#[derive(Debug, Args, Clone, Default)]
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

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the config; `-` for standard output.
    #[arg(short, long, value_name = "FILE", default_value = "regimage.yaml")]
    pub output: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory that stands for `/` on the machine; created if missing.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
}

/// Parses `args`, runs the command and returns the process exit status.
pub fn main_exit_code<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
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

/// 2 for bad input (config or arguments), 1 for everything else.
pub fn exit_code_for(e: &anyhow::Error) -> i32 {
    if e.is::<ConfigError>() || e.is::<UsageError>() {
        2
    } else {
        1
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init(args) => crate::init::run(&args.output, args.force),
        Command::Check(args) => {
            let config = args.load()?;
            let source = args
                .config
                .as_ref()
                .map_or("built-in defaults".to_string(), |p| p.display().to_string());
            println!("{source}: valid");
            let image = config.image_ref()?;
            println!("registry image: {image}");
            Ok(())
        }
        Command::Render(args) => {
            let config = args.config.load()?;
            let files = crate::render::appliance_files(&config)?;
            crate::render::write_tree(&args.root, &files)?;
            println!(
                "wrote {} files and the manifest under {}",
                files.len(),
                args.root.display()
            );
            Ok(())
        }
        Command::Build(args) => crate::build::run(args),
        Command::FetchImage(args) => crate::fetch_image::run(args),
        Command::Firstboot(args) => crate::firstboot::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
