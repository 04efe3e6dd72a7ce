//! `regimage cluster ...`: several nodes serving one registry from shared S3 storage.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::appliance::ApplianceArgs;
use crate::bundle;
use crate::cluster::join::{JoinFile, DEFAULT_FILE_NAME};
use crate::fsutil;

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
}

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
                let login = bundle::cloud_login(&app.root);
                let wanted = "/etc/regimage/cluster-join.json";
                println!(
                    "wrote {} (0600: both CA keys and the HTTP secret; treat it like the CA keys \
                     and delete copies once the node has joined)\n\
                     copy it off:  {}\n\
                     on the new node (its site config sets cluster.join-file: {wanted}):\n  \
                     sudo install -m 0600 -o root -g root cluster-join.json {wanted}",
                    shown.display(),
                    bundle::copy_off_command(login, host, &shown, "cluster-join")
                        .replace("cluster-join.tar.gz", "cluster-join.json"),
                );
            }
        }
        Ok(())
    }
}
