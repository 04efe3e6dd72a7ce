//! Step 6: ufw, with SSH kept reachable on the ports sshd listens on.

use anyhow::Result;

use super::Ctx;
use crate::firstboot::ufw::{self, Wanted};

/// Step 6: ufw. SSH stays reachable, the pull port opens, the push port only for the
/// configured networks, the registry port never; deny by default; enabled last.
pub fn firewall(ctx: &mut Ctx<'_>) -> Result<()> {
    let ssh_ports = match ctx.sys.ssh_ports()? {
        Some(ports) => ports,
        None => {
            let port = ufw::DEFAULT_SSH_PORT;
            ctx.note(format!(
                "sshd is not installed; keeping its default port {port} open"
            ));
            vec![port]
        }
    };
    let cfg = ctx.config;
    let mut open: Vec<(u16, String)> = ssh_ports
        .iter()
        .map(|p| (*p, "regimage: ssh".to_string()))
        .collect();
    open.push((cfg.ports.pull, "regimage: pulls".into()));
    let wanted = Wanted {
        open,
        restricted: Some((
            cfg.ports.push,
            cfg.push_allowed_cidrs.clone(),
            "regimage: pushes (mTLS)".into(),
        )),
        closed: vec![cfg.ports.registry],
    };
    let state = ctx.sys.ufw_state()?;
    let commands = ufw::plan(&state, &wanted);
    if commands.is_empty() {
        ctx.note(format!(
            "ufw is enabled with every rule in place (ssh {})",
            ssh_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for command in commands {
        ctx.change(command.describe(), move |sys| sys.ufw(&command))?;
    }
    Ok(())
}
