//! `regimage firstboot`: turns a booted machine into a ready registry.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::ConfigArg;

#[derive(Debug, Args)]
pub struct FirstbootArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory that stands for `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Only write certificates and client bundles under --root; change nothing else.
    #[arg(long)]
    pub no_system: bool,
}

pub fn run(args: FirstbootArgs) -> Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("firstboot: not implemented yet")
}
