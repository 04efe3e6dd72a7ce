//! `regimage cluster sync`: the nodes of a cluster on shared storage (run every 30 s by
//! regimage-cluster-sync.timer).

use anyhow::Result;
use clap::{Args, Subcommand};

use super::appliance::ApplianceArgs;
use crate::lifecycle::cluster;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Take in the other nodes' client changes and publish this node's (every 30 s, by
    /// regimage-cluster-sync.timer).
    Sync {
        #[command(flatten)]
        appliance: ApplianceArgs,
        /// Tests (with --root): act as if the registry's storage were shared (two trees on
        /// one filesystem registry stand for two nodes).
        #[arg(long, hide = true, requires = "root")]
        shared_storage: bool,
    },
}

impl ClusterArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            ClusterCommand::Sync {
                appliance,
                shared_storage,
            } => {
                let (config, spec) = appliance.load()?;
                let app = spec.appliance(&config)?;
                if !app.first_boot_done() {
                    println!("first boot has not finished on this machine: nothing to sync yet");
                    return Ok(());
                }
                print!("{}", cluster::sync(&app, shared_storage)?);
            }
        }
        Ok(())
    }
}
