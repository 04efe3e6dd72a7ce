//! Step 7: ufw, with SSH kept reachable on the ports sshd listens on. The rules go into
//! ufw's files in one atomic write per file and ufw loads them once (enable or reload).

use std::path::Path;

use anyhow::{Context, Result};

use super::{Ctx, STATE_DIR_MODE, UFW_RELOAD_PENDING_PATH};
use crate::cloudinit;
use crate::firstboot::ufw::{self, UfwCommand, Wanted};
use crate::fsutil;

/// Step 7: ufw. SSH stays reachable, the pull port opens (to pull-allowed-cidrs when set),
/// the push port only for push-allowed-cidrs, the registry port never; deny by default;
/// enabled last.
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
    let mut restricted = vec![(
        cfg.ports.push,
        cfg.push_allowed_cidrs.clone(),
        "regimage: pushes (mTLS)".to_string(),
    )];
    // No pull-allowed-cidrs: open to any address, as one "anywhere" rule.
    if cfg.pull_allowed_cidrs.is_empty() {
        open.push((cfg.ports.pull, "regimage: pulls".into()));
    } else {
        restricted.push((
            cfg.ports.pull,
            cfg.pull_allowed_cidrs.clone(),
            "regimage: pulls".into(),
        ));
    }
    let wanted = Wanted {
        open,
        restricted,
        closed: vec![cfg.ports.registry],
    };
    let state = ctx.sys.ufw_state()?;
    let commands = ufw::plan(&state, &wanted);
    let pending = ctx.path(UFW_RELOAD_PENDING_PATH);
    let reload_pending = state.enabled && pending.exists();
    if commands.is_empty() && !reload_pending {
        ctx.note(format!(
            "ufw is enabled with every rule in place (ssh {})",
            ssh_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(());
    }
    let (edits, others): (Vec<UfwCommand>, Vec<UfwCommand>) = commands
        .into_iter()
        .partition(|c| matches!(c, UfwCommand::Allow { .. } | UfwCommand::Delete(_)));
    // Every rule in one write of ufw's files, then one ufw start that loads them: an
    // enabled firewall reloads (the policy change reloads too), a disabled one is enabled.
    let mut load = others;
    if state.enabled && !load.contains(&UfwCommand::DefaultDenyIncoming) {
        load.push(UfwCommand::Reload);
    }
    if !edits.is_empty() {
        let what = edits.iter().map(UfwCommand::describe).collect();
        let state_dir = ctx.path(cloudinit::STATE_DIR);
        let (p, ipv6, enabled) = (pending.clone(), state.ipv6, state.enabled);
        ctx.change_all(what, move |sys| {
            // An enabled firewall enforces the new files only after the reload; the marker
            // makes a run killed in between reload.
            if enabled {
                fsutil::ensure_dir(&state_dir, STATE_DIR_MODE)?;
                fsutil::write_atomic(&p, b"", 0o600)?;
            }
            sys.ufw_write_rules(&edits, ipv6)
        })?;
    }
    for command in load {
        let p = pending.clone();
        ctx.change(command.describe(), move |sys| {
            sys.ufw(&command)?;
            remove_if_present(&p)
        })?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
