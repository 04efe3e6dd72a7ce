//! ufw, pure: reading the rule tuples ufw keeps in /etc/ufw/user.rules and user6.rules,
//! planning the commands that bring the firewall to what the appliance needs, and making
//! the rule edits in those files (first boot writes them once and has ufw load them once).
//!
//! ufw itself skips a rule it already has, but only when every field (the comment too)
//! is the same, and it prints instead of failing; so first boot reads the rules first and
//! asks ufw only for what is missing: a second run sends ufw nothing. The tuple format is
//! ufw's own (`### tuple ### ACTION PROTO DPORT DST SPORT SRC [DAPP SAPP] DIRECTION
//! [comment=HEX]`, backend_iptables.py `_read_rules`); the fixtures in testdata/ were
//! written by ufw 0.36.2 itself.
//!
//! Reading and editing ufw's files is in `rules_file`; the rule model and the plan are here.

mod rules_file;

use std::collections::BTreeSet;

pub use rules_file::{conf_value, edit_rules, parse_rules};

/// One rule as ufw stores it (one line of user.rules or user6.rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UfwRule {
    /// `allow`, `deny`, `reject` or `limit`.
    pub action: String,
    /// `log` or `log-all` when the rule logs.
    pub log: Option<String>,
    /// A `route` (forwarding) rule; it does not open the machine's own ports.
    pub route: bool,
    /// `tcp`, `udp`, `any`, ...
    pub proto: String,
    /// Destination ports: `22`, `80,443`, `60000:60010` or `any`.
    pub dport: String,
    pub dst: String,
    pub sport: String,
    pub src: String,
    /// Application profile names (`WWW Full`), when the rule was made from one.
    pub dapp: Option<String>,
    pub sapp: Option<String>,
    /// `in` or `out`.
    pub direction: String,
    pub iface_in: Option<String>,
    pub iface_out: Option<String>,
    /// From user6.rules.
    pub v6: bool,
    /// The comment, hex-encoded as ufw writes it.
    pub comment: Option<String>,
}

/// What ufw has now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UfwState {
    /// `ENABLED=yes` in /etc/ufw/ufw.conf.
    pub enabled: bool,
    /// `DEFAULT_INPUT_POLICY` in /etc/default/ufw (`DROP`, `REJECT` or `ACCEPT`).
    pub default_input: String,
    /// `IPV6=yes` in /etc/default/ufw: ufw then writes every rule for both families.
    pub ipv6: bool,
    pub rules: Vec<UfwRule>,
}

/// The firewall the appliance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// TCP ports open to everyone, each with a comment (SSH, pulls).
    pub open: Vec<(u16, String)>,
    /// TCP ports open only to these networks (pushes; pulls with pull-allowed-cidrs);
    /// every other rule opening such a port goes.
    pub restricted: Vec<(u16, Vec<String>, String)>,
    /// TCP ports that must not be opened (the registry on loopback).
    pub closed: Vec<u16>,
}

/// One ufw invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UfwCommand {
    /// `ufw allow in proto tcp from SRC|any to any port PORT comment C`.
    Allow {
        port: u16,
        from: Option<String>,
        comment: String,
    },
    /// `ufw delete ...` of an existing rule that opens what must stay closed.
    Delete(Box<UfwRule>),
    /// `ufw default deny incoming`.
    DefaultDenyIncoming,
    /// `ufw --force enable` (no prompt: nothing reads stdin in a oneshot).
    Enable,
    /// `ufw reload`: an enabled firewall loads its rules files again.
    Reload,
}

fn is_any_address(addr: &str) -> bool {
    addr == "0.0.0.0/0" || addr == "::/0" || addr == "any"
}

/// Whether a `dport` field (`22`, `80,443`, `1000:2000`, `any`) names `port` explicitly.
fn names_port(dport: &str, port: u16) -> bool {
    dport.split(',').any(|part| match part.split_once(':') {
        Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
            _ => false,
        },
        None => part.parse::<u16>() == Ok(port),
    })
}

impl UfwRule {
    /// Whether this rule lets TCP traffic in to `port` (an explicit port, not `any`).
    pub fn opens_port(&self, port: u16) -> bool {
        matches!(self.action.as_str(), "allow" | "limit")
            && !self.route
            && self.direction == "in"
            && (self.proto == "tcp" || self.proto == "any")
            && names_port(&self.dport, port)
    }

    /// A plain inbound rule: any destination address, any source port, no interface.
    fn is_plain(&self) -> bool {
        !self.route
            && self.direction == "in"
            && self.iface_in.is_none()
            && self.iface_out.is_none()
            && is_any_address(&self.dst)
            && self.sport == "any"
            && self.sapp.is_none()
    }

    /// Whether this rule already does what `ufw allow ... port PORT from FROM` would add.
    fn satisfies(&self, port: u16, from: Option<&str>) -> bool {
        let src_ok = match from {
            None => is_any_address(&self.src),
            Some(cidr) => self.src.eq_ignore_ascii_case(cidr),
        };
        self.opens_port(port) && self.is_plain() && src_ok
    }

    /// ufw's words for this rule, as `ufw delete` takes them.
    pub fn delete_args(&self) -> Vec<String> {
        // ufw's grammar: [route] delete ACTION [in|out [on IFACE]] [log|log-all] [proto P]
        // from SRC [port P|app A] to DST [port P|app A].
        let mut args = if self.route {
            vec!["route".to_string(), "delete".into()]
        } else {
            vec!["delete".to_string()]
        };
        args.push(self.action.clone());
        match (&self.iface_in, &self.iface_out) {
            (Some(i), Some(o)) => {
                args.extend(["in".into(), "on".into(), i.clone()]);
                args.extend(["out".into(), "on".into(), o.clone()]);
            }
            (Some(iface), None) | (None, Some(iface)) => {
                args.extend([self.direction.clone(), "on".into(), iface.clone()]);
            }
            (None, None) => args.push(self.direction.clone()),
        }
        if let Some(log) = &self.log {
            args.push(log.clone());
        }
        if self.dapp.is_none() && self.sapp.is_none() && self.proto != "any" {
            args.extend(["proto".into(), self.proto.clone()]);
        }
        let addr = |a: &str| {
            if is_any_address(a) {
                "any".to_string()
            } else {
                a.to_string()
            }
        };
        args.extend(["from".into(), addr(&self.src)]);
        match &self.sapp {
            Some(app) => args.extend(["app".into(), app.clone()]),
            None if self.sport != "any" => args.extend(["port".into(), self.sport.clone()]),
            None => {}
        }
        args.extend(["to".into(), addr(&self.dst)]);
        match &self.dapp {
            Some(app) => args.extend(["app".into(), app.clone()]),
            None if self.dport != "any" => args.extend(["port".into(), self.dport.clone()]),
            None => {}
        }
        args
    }

    /// A short human form: `allow tcp 4443 from 10.0.0.0/8 (v6)`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{}{} {} {} from {}",
            if self.route { "route " } else { "" },
            self.action,
            self.proto,
            self.dport,
            if is_any_address(&self.src) {
                "anywhere"
            } else {
                &self.src
            }
        );
        if let Some(iface) = &self.iface_in {
            text.push_str(&format!(" on {iface}"));
        }
        if self.v6 {
            text.push_str(" (v6)");
        }
        text
    }
}

impl UfwCommand {
    /// The arguments after `ufw`.
    pub fn args(&self) -> Vec<String> {
        match self {
            UfwCommand::Allow {
                port,
                from,
                comment,
            } => vec![
                "allow".into(),
                "in".into(),
                "proto".into(),
                "tcp".into(),
                "from".into(),
                from.clone().unwrap_or_else(|| "any".into()),
                "to".into(),
                "any".into(),
                "port".into(),
                port.to_string(),
                "comment".into(),
                comment.clone(),
            ],
            UfwCommand::Delete(rule) => rule.delete_args(),
            UfwCommand::DefaultDenyIncoming => {
                vec!["default".into(), "deny".into(), "incoming".into()]
            }
            UfwCommand::Enable => vec!["--force".into(), "enable".into()],
            UfwCommand::Reload => vec!["reload".into()],
        }
    }

    /// What the command does, for logs, the status file and --dry-run.
    pub fn describe(&self) -> String {
        match self {
            UfwCommand::Allow { port, from, .. } => format!(
                "allow TCP port {port} from {}",
                from.as_deref().unwrap_or("anywhere")
            ),
            UfwCommand::Delete(rule) => format!("delete the rule {}", rule.describe()),
            UfwCommand::DefaultDenyIncoming => "deny incoming traffic by default".into(),
            UfwCommand::Enable => "enable the firewall".into(),
            UfwCommand::Reload => "reload the firewall".into(),
        }
    }

    /// The rules ufw stores for an `Allow` (both families for "anywhere" when IPv6 is on):
    /// what [`edit_rules`] writes, and what the test fake's ufw keeps.
    pub fn stored_rules(&self, ipv6: bool) -> Vec<UfwRule> {
        let UfwCommand::Allow {
            port,
            from,
            comment,
        } = self
        else {
            return Vec::new();
        };
        let rule = |v6: bool, src: &str| UfwRule {
            action: "allow".into(),
            log: None,
            route: false,
            proto: "tcp".into(),
            dport: port.to_string(),
            dst: if v6 { "::/0" } else { "0.0.0.0/0" }.into(),
            sport: "any".into(),
            src: src.to_string(),
            dapp: None,
            sapp: None,
            direction: "in".into(),
            iface_in: None,
            iface_out: None,
            v6,
            comment: Some(hex::encode(comment)),
        };
        match from {
            None if ipv6 => vec![rule(false, "0.0.0.0/0"), rule(true, "::/0")],
            None => vec![rule(false, "0.0.0.0/0")],
            Some(cidr) if cidr.contains(':') => vec![rule(true, cidr)],
            Some(cidr) => vec![rule(false, cidr)],
        }
    }
}

/// The commands that make `state` into `wanted`, in a safe order: first what opens (SSH
/// before anything else), then what closes, then the default policy, then enabling. Empty
/// when the firewall is already as wanted.
pub fn plan(state: &UfwState, wanted: &Wanted) -> Vec<UfwCommand> {
    let mut commands = Vec::new();
    let has = |port: u16, from: Option<&str>, v6: bool| {
        state
            .rules
            .iter()
            .any(|r| r.v6 == v6 && r.satisfies(port, from))
    };
    for (port, comment) in &wanted.open {
        // "Anywhere" is two rules when IPv6 is on; ufw adds only the missing one.
        if !has(*port, None, false) || (state.ipv6 && !has(*port, None, true)) {
            commands.push(UfwCommand::Allow {
                port: *port,
                from: None,
                comment: comment.clone(),
            });
        }
    }
    for (port, cidrs, comment) in &wanted.restricted {
        for cidr in cidrs {
            if !has(*port, Some(cidr), cidr.contains(':')) {
                commands.push(UfwCommand::Allow {
                    port: *port,
                    from: Some(cidr.clone()),
                    comment: comment.clone(),
                });
            }
        }
    }
    // Rules that open a restricted port to anyone else, or the closed ports at all.
    let mut seen = BTreeSet::new();
    for rule in &state.rules {
        let unwanted_source = wanted.restricted.iter().any(|(port, cidrs, _)| {
            rule.opens_port(*port)
                && !cidrs
                    .iter()
                    .any(|c| rule.v6 == c.contains(':') && rule.satisfies(*port, Some(c)))
        });
        let opens_closed = wanted.closed.iter().any(|p| rule.opens_port(*p));
        // One `ufw delete` removes both families of an "anywhere" rule.
        if (unwanted_source || opens_closed) && seen.insert(rule.delete_args()) {
            commands.push(UfwCommand::Delete(Box::new(rule.clone())));
        }
    }
    let denies = matches!(
        state.default_input.to_ascii_uppercase().as_str(),
        "DROP" | "REJECT"
    );
    if !denies {
        commands.push(UfwCommand::DefaultDenyIncoming);
    }
    if !state.enabled {
        commands.push(UfwCommand::Enable);
    }
    commands
}

/// sshd's port when nothing says otherwise (sshd not installed).
pub const DEFAULT_SSH_PORT: u16 = 22;

/// The TCP ports sshd listens on, from `sshd -T` (the effective configuration, drop-ins
/// included): the `listenaddress` lines, which carry every address with its port, else the
/// `port` lines, else 22.
pub fn sshd_t_ports(effective: &str) -> Vec<u16> {
    let mut listen = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for line in effective.lines() {
        let Some((key, value)) = line.trim().split_once(' ') else {
            continue;
        };
        let value = value.trim();
        match key {
            "port" => ports.extend(value.parse::<u16>().ok()),
            // 0.0.0.0:22 or [::]:22, then maybe " rdomain NAME".
            "listenaddress" => listen.extend(
                value
                    .split_whitespace()
                    .next()
                    .and_then(|addr| addr.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse::<u16>().ok()),
            ),
            _ => {}
        }
    }
    let found = if listen.is_empty() { ports } else { listen };
    if found.is_empty() {
        return vec![DEFAULT_SSH_PORT];
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests;
