//! `regimage render`: the appliance's files under a directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::ConfigArg;

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory that stands for `/` on the machine; created if missing.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
}

impl RenderArgs {
    pub fn run(self) -> Result<()> {
        let config = self.config.load()?;
        let count = crate::render::render_to(&config, &self.root)?;
        eprintln!(
            "wrote {count} files and the manifest under {}",
            self.root.display()
        );
        Ok(())
    }
}
