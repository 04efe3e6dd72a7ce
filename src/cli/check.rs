//! `regimage check`: validates a site config.

use anyhow::Result;
use clap::Args;

use super::ConfigArg;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

impl CheckArgs {
    /// The report is a message, not data: it goes to stderr.
    pub fn run(self) -> Result<()> {
        let config = self.config.load()?;
        eprint!("{}", config.check_report(self.config.config.as_deref())?);
        Ok(())
    }
}
