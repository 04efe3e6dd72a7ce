//! `regimage fetch-image`: the pinned registry image as an OCI archive.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::ConfigArg;
use crate::fetch_image::Options;

#[derive(Debug, Args)]
#[command(
    after_help = "Environment: REGIMAGE_SKOPEO is the skopeo to run instead of the one on PATH."
)]
pub struct FetchImageArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where to write the OCI archive of registry.image.
    #[arg(short, long, value_name = "ARCHIVE")]
    pub output: PathBuf,
}

impl FetchImageArgs {
    pub fn run(self) -> Result<()> {
        crate::fetch_image::run(&Options {
            config: self.config.config,
            output: self.output,
        })
    }
}
