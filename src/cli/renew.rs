//! `regimage renew`: certificates and the CRL renewed before they end (run daily by
//! regimage-renew.timer).

use anyhow::Result;
use clap::Args;

use super::appliance::ApplianceArgs;
use crate::lifecycle::renew::{self, RenewOptions};

#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    /// Print what a run would renew, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Issue the server certificate, every client certificate and the CRL again now.
    #[arg(long, conflicts_with = "dry_run")]
    pub force: bool,
}

impl RenewArgs {
    pub fn run(self) -> Result<()> {
        let (config, spec) = self.appliance.load()?;
        let app = spec.appliance(&config)?;
        if !app.first_boot_done() {
            println!("first boot has not finished on this machine: nothing to renew yet");
            return Ok(());
        }
        let sans = renew::current_sans(&app)?;
        let text = renew::run(
            &app,
            sans,
            RenewOptions {
                dry_run: self.dry_run,
                force: self.force,
            },
        )?;
        print!("{text}");
        Ok(())
    }
}
