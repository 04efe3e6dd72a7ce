//! `regimage client add|revoke|list`: the clients of the running appliance.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::appliance::ApplianceArgs;
use crate::lifecycle::{clients, status};

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Issue a certificate to a new client and write NAME.tar.gz to the output directory.
    Add {
        /// The client's name (letters, digits, '.', '_', '-').
        name: String,
        /// Issue a new certificate to a name that was revoked (its old ones stay revoked).
        #[arg(long)]
        reissue_revoked: bool,
        #[command(flatten)]
        appliance: ApplianceArgs,
    },
    /// Revoke a client: the push port refuses its certificates once this returns.
    Revoke {
        /// The client's name (`regimage client list` shows them).
        name: String,
        #[command(flatten)]
        appliance: ApplianceArgs,
    },
    /// Show each client, its certificate's serial and end, and its state.
    List {
        /// JSON: {"clients": [{"name", "state", "origin", "serial", "not_after", "revoked_at"}]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        appliance: ApplianceArgs,
    },
}

impl ClientArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            ClientCommand::Add {
                name,
                reissue_revoked,
                appliance,
            } => {
                let (config, spec) = appliance.load()?;
                print!(
                    "{}",
                    clients::add(&spec.appliance(&config)?, &name, reissue_revoked)?
                );
            }
            ClientCommand::Revoke { name, appliance } => {
                let (config, spec) = appliance.load()?;
                print!("{}", clients::revoke(&spec.appliance(&config)?, &name)?);
            }
            ClientCommand::List { json, appliance } => {
                let (config, spec) = appliance.load()?;
                let list = clients::list(&spec.appliance(&config)?)?;
                if json {
                    let doc = serde_json::json!({ "clients": list });
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&doc).context("encoding the list")?
                    );
                } else {
                    print!("{}", status::render_clients(&list));
                }
            }
        }
        Ok(())
    }
}
