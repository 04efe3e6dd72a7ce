//! `regimage init`: the annotated default site config.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the config; `-` for standard output.
    #[arg(short, long, value_name = "FILE", default_value = "regimage.yaml")]
    pub output: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

impl InitArgs {
    pub fn run(self) -> Result<()> {
        crate::init::run(&self.output, self.force)
    }
}
