//! `regimage cluster ...`: several nodes serving one registry from shared S3 storage.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::appliance::ApplianceArgs;
use crate::bundle;
use crate::cluster::join::{JoinFile, DEFAULT_FILE_NAME};
use crate::fsutil;
use crate::lifecycle::cluster;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write the join file a new node needs (both CAs with their keys and the registry's
    /// HTTP secret; root only, 0600) to copy to it like a bundle.
    Export {
        /// Where to write it [default: OUTPUT_DIR/cluster-join.json].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        appliance: ApplianceArgs,
    },
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

/// Where a joining node's site config usually points `cluster.join-file` (README).
const JOIN_FILE_ON_NODE: &str = "/etc/regimage/cluster-join.json";

impl ClusterArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            ClusterCommand::Export { output, appliance } => {
                let (config, spec) = appliance.load()?;
                let app = spec.appliance(&config)?;
                let join = JoinFile::export(&app.root, &config, app.now)?;
                let shown = output.unwrap_or_else(|| config.output_dir.join(DEFAULT_FILE_NAME));
                join.write(&fsutil::under_root(&app.root, &shown))?;
                let host = config.cluster.name.as_deref().unwrap_or("THIS-NODE");
                let copy = bundle::copy_off_command(
                    bundle::cloud_login(&app.root),
                    host,
                    &shown,
                    "cluster-join",
                )
                .replace("cluster-join.tar.gz", "cluster-join.json");
                println!(
                    "wrote {} (0600: both CA keys and the HTTP secret; treat it like the CA keys \
                     and delete copies once the node has joined)\n\
                     copy it off:  {copy}\n\
                     on the new node (its site config sets cluster.join-file: {JOIN_FILE_ON_NODE}):\n  \
                     sudo install -m 0600 -o root -g root cluster-join.json {JOIN_FILE_ON_NODE}",
                    shown.display(),
                );
            }
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
