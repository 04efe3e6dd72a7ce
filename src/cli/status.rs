//! `regimage status`: ready or not and why, certificates, CRL, clients, the last renew.

use anyhow::{bail, Context, Result};
use clap::Args;

use super::appliance::ApplianceArgs;
use crate::lifecycle::status;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    /// Print JSON (the same facts).
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// Exit status 1 when something needs the operator (the problems listed).
    pub fn run(self) -> Result<()> {
        let (config, spec) = self.appliance.load()?;
        let app = spec.appliance(&config)?;
        let status = status::gather(&app)?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).context("encoding the status")?
            );
        } else {
            print!("{}", status::render_text(&status));
        }
        if !status.problems.is_empty() {
            bail!(
                "{} problem(s) need the operator: {}",
                status.problems.len(),
                status.problems.join("; ")
            );
        }
        Ok(())
    }
}
