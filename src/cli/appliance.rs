//! The flags every day-2 command shares (renew, client, status): the site config, and the
//! hidden test seams (a directory standing for `/`, a proxy reload command, a clock).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;
use crate::error::UsageError;
use crate::fsutil;
use crate::lifecycle::proxy::Proxy;
use crate::lifecycle::{self, Appliance};
use crate::render;

#[derive(Debug, Args, Clone)]
pub struct ApplianceArgs {
    /// Site config (YAML) [default: /etc/regimage/regimage.yaml, the one first boot used].
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Tests: the directory standing for `/`; systemd is not touched.
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
    /// Tests (with --root): the shell command that reloads the proxy.
    #[arg(long, value_name = "CMD", hide = true, requires = "root")]
    pub reload_command: Option<String>,
    /// Tests (with --root): the clock, RFC 3339.
    #[arg(long, value_name = "TIME", hide = true, requires = "root")]
    pub now: Option<String>,
}

impl ApplianceArgs {
    /// Loads the config and builds the appliance these flags name. On the machine (no
    /// --root) only root may: the keys and the client index are root's alone.
    pub fn load(&self) -> Result<(Config, ApplianceSpec)> {
        let root = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        if self.root.is_none() && !nix::unistd::geteuid().is_root() {
            return Err(UsageError(
                "the appliance's keys and client index are readable by root only, and this command reads or changes them: run it as root (sudo regimage ...)".into(),
            )
            .into());
        }
        let config_path = match &self.config {
            Some(path) => path.clone(),
            None => {
                let installed =
                    fsutil::under_root(&root, std::path::Path::new(render::INSTALLED_CONFIG_PATH));
                if !installed.exists() {
                    return Err(UsageError(format!(
                        "no site config at {}: this is not a regimage appliance, or pass -c FILE",
                        installed.display()
                    ))
                    .into());
                }
                installed
            }
        };
        let config = Config::load(Some(&config_path))?;
        let now = match &self.now {
            Some(text) => OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
                UsageError(format!(
                    "--now {text:?}: {e}; expected RFC 3339, e.g. 2027-01-31T12:00:00Z"
                ))
            })?,
            None => OffsetDateTime::now_utc(),
        };
        let proxy = match (&self.root, &self.reload_command) {
            (None, _) => Proxy::Systemd,
            (Some(root), Some(command)) => Proxy::Command {
                command: command.clone(),
                pid_file: fsutil::under_root(
                    root,
                    &std::path::Path::new(render::PROXY_RUN_DIR).join("nginx.pid"),
                ),
            },
            (Some(_), None) => Proxy::None,
        };
        Ok((
            config,
            ApplianceSpec {
                root,
                now,
                proxy,
                system: self.root.is_none(),
            },
        ))
    }
}

/// Everything of an [`Appliance`] but the config (which it borrows).
pub struct ApplianceSpec {
    root: PathBuf,
    now: OffsetDateTime,
    proxy: Proxy,
    system: bool,
}

impl ApplianceSpec {
    pub fn appliance<'a>(&self, config: &'a Config) -> Result<Appliance<'a>> {
        let proxy_gid = if self.system {
            lifecycle::proxy_gid(config)?
        } else {
            None
        };
        Ok(Appliance {
            root: self.root.clone(),
            config,
            now: self.now,
            proxy: self.proxy.clone(),
            proxy_gid,
            sans: None,
        })
    }
}
