//! `regimage build`: the site config to a cloud-init user-data file (or a qcow2 image).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::ConfigArg;

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "user-data")]
    pub format: Format,
    /// Output file.
    #[arg(short, long, value_name = "FILE", default_value = "user-data")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A #cloud-config for a stock Ubuntu 24.04 (or Debian 13) cloud image.
    UserData,
}

pub fn run(args: BuildArgs) -> Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("build: not implemented yet")
}
