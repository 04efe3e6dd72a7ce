//! What ufw keeps on disk: reading the rule tuples of user.rules and user6.rules and the
//! `KEY=value` settings of ufw.conf and /etc/default/ufw, and editing the rules files the
//! way ufw writes them (backend_iptables.py `_write_rules`), so first boot can change every
//! rule in one write and have ufw load them once (issue 9: one `ufw` start per rule cost
//! seconds each under TCG).

use anyhow::{bail, Result};

use super::{is_any_address, UfwCommand, UfwRule};

const RULES_BEGIN: &str = "### RULES ###";
const RULES_END: &str = "### END RULES ###";
const TUPLE: &str = "### tuple ###";

/// Reads the rule tuples of one rules file; lines that are not tuples are skipped, and so are
/// malformed tuples (as ufw does).
pub fn parse_rules(text: &str, v6: bool) -> Vec<UfwRule> {
    text.lines()
        .filter_map(|line| parse_tuple(line, v6))
        .collect()
}

fn parse_tuple(line: &str, v6: bool) -> Option<UfwRule> {
    let rest = line.strip_prefix("### tuple ###")?;
    let (rest, comment) = match rest.split_once(" comment=") {
        Some((rest, hex)) => (rest, Some(hex.trim().to_string())),
        None => (rest, None),
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Old files had 6 or 8 fields and no direction; ufw reads those as "in".
    let (base, apps, dir) = match fields.len() {
        6 => (&fields[..6], None, "in"),
        7 => (&fields[..6], None, fields[6]),
        8 => (&fields[..6], Some(&fields[6..8]), "in"),
        9 => (&fields[..6], Some(&fields[6..8]), fields[8]),
        _ => return None,
    };
    let (route, action) = match base[0].split_once(':') {
        Some(("route", action)) => (true, action),
        Some(_) => return None,
        None => (false, base[0]),
    };
    let (action, log) = match action.split_once('_') {
        Some((action, log)) => (action, Some(log.to_string())),
        None => (action, None),
    };
    let (direction, iface_in, iface_out) = parse_direction(dir)?;
    let app = |s: &str| (s != "-").then(|| s.replace("%20", " "));
    Some(UfwRule {
        action: action.to_string(),
        log,
        route,
        proto: base[1].to_string(),
        dport: base[2].to_string(),
        dst: base[3].to_string(),
        sport: base[4].to_string(),
        src: base[5].to_string(),
        dapp: apps.and_then(|a| app(a[0])),
        sapp: apps.and_then(|a| app(a[1])),
        direction,
        iface_in,
        iface_out,
        v6,
        comment,
    })
}

/// `in`, `out`, `in_eth0`, `out_eth0` or `in_eth0!out_eth1`.
fn parse_direction(field: &str) -> Option<(String, Option<String>, Option<String>)> {
    if let Some((a, b)) = field.split_once('!') {
        let iface_in = a.strip_prefix("in_")?;
        let iface_out = b.strip_prefix("out_")?;
        return Some((
            "in".into(),
            Some(iface_in.to_string()),
            Some(iface_out.to_string()),
        ));
    }
    match field.split_once('_') {
        None if field == "in" || field == "out" => Some((field.to_string(), None, None)),
        Some(("in", iface)) => Some(("in".into(), Some(iface.to_string()), None)),
        Some(("out", iface)) => Some(("out".into(), None, Some(iface.to_string()))),
        _ => None,
    }
}

/// The value of `KEY=value` (quotes removed) in a shell-style config such as ufw.conf.
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .next_back()
}

/// One rule of a rules file: its tuple line (`None` for stray lines before the first tuple)
/// and the iptables lines that follow it.
struct Block {
    rule: Option<UfwRule>,
    lines: Vec<String>,
}

/// `text` (user.rules, or user6.rules with `v6`) with the `Allow` and `Delete` edits made,
/// as ufw would leave it: an allowed rule is appended (an identical one only gets the new
/// comment), a deleted one goes with its iptables lines; other commands are ignored.
/// `ipv6` is ufw's IPV6 setting (an "anywhere" rule is then kept in both files). A file
/// ufw wrote comes back byte for byte when nothing changes; the file the package installs
/// (no `### END RULES ###` yet) gets the marker.
pub fn edit_rules(text: &str, v6: bool, ipv6: bool, edits: &[UfwCommand]) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(begin) = lines.iter().position(|l| l.trim_end() == RULES_BEGIN) else {
        bail!("no `{RULES_BEGIN}` line: not a rules file ufw wrote");
    };
    let end = lines.iter().position(|l| l.trim_end() == RULES_END);
    let (section, tail) = match end {
        Some(end) if end > begin => (&lines[begin + 1..end], &lines[end + 1..]),
        Some(_) => bail!("`{RULES_END}` comes before `{RULES_BEGIN}`"),
        // The packaged file: the rate-limit lines follow the marker directly.
        None if lines.iter().any(|l| l.starts_with(TUPLE)) => {
            bail!("rule tuples but no `{RULES_END}` line")
        }
        None => (&lines[..0], &lines[begin + 1..]),
    };
    let mut blocks: Vec<Block> = Vec::new();
    for line in section.iter().filter(|l| !l.trim().is_empty()) {
        match parse_tuple(line, v6) {
            Some(rule) => blocks.push(Block {
                rule: Some(rule),
                lines: vec![line.to_string()],
            }),
            None => match blocks.last_mut() {
                Some(block) => block.lines.push(line.to_string()),
                None => blocks.push(Block {
                    rule: None,
                    lines: vec![line.to_string()],
                }),
            },
        }
    }
    for edit in edits {
        match edit {
            UfwCommand::Allow { .. } => {
                for rule in edit.stored_rules(ipv6).into_iter().filter(|r| r.v6 == v6) {
                    let same = |r: &UfwRule| UfwRule {
                        comment: None,
                        ..r.clone()
                    };
                    match blocks
                        .iter_mut()
                        .find(|b| b.rule.as_ref().is_some_and(|r| same(r) == same(&rule)))
                    {
                        Some(block) => block.lines[0] = tuple_line(&rule),
                        None => blocks.push(Block {
                            lines: allow_lines(&rule),
                            rule: Some(rule),
                        }),
                    }
                }
            }
            UfwCommand::Delete(gone) => {
                let args = gone.delete_args();
                blocks.retain(|b| b.rule.as_ref().is_none_or(|r| r.delete_args() != args));
            }
            UfwCommand::DefaultDenyIncoming | UfwCommand::Enable | UfwCommand::Reload => {}
        }
    }
    let mut out: Vec<String> = lines[..=begin].iter().map(|l| l.to_string()).collect();
    for block in blocks {
        out.push(String::new());
        out.extend(block.lines);
    }
    out.push(String::new());
    out.push(RULES_END.into());
    out.extend(tail.iter().map(|l| l.to_string()));
    let mut text_out = out.join("\n");
    if text.ends_with('\n') {
        text_out.push('\n');
    }
    Ok(text_out)
}

/// The tuple line ufw writes for a rule without application profiles.
fn tuple_line(rule: &UfwRule) -> String {
    let mut action = if rule.route {
        format!("route:{}", rule.action)
    } else {
        rule.action.clone()
    };
    if let Some(log) = &rule.log {
        action = format!("{action}_{log}");
    }
    let ifaces = match (&rule.iface_in, &rule.iface_out) {
        (None, None) => rule.direction.clone(),
        (Some(i), Some(o)) => format!("in_{i}!out_{o}"),
        (Some(iface), None) | (None, Some(iface)) => format!("{}_{iface}", rule.direction),
    };
    let mut line = format!(
        "{TUPLE} {action} {} {} {} {} {} {ifaces}",
        rule.proto, rule.dport, rule.dst, rule.sport, rule.src
    );
    if let Some(comment) = &rule.comment {
        line.push_str(&format!(" comment={comment}"));
    }
    line
}

/// The tuple and iptables lines ufw writes for the plain inbound TCP allow of one port that
/// [`UfwCommand::stored_rules`] makes (`-A ufw-user-input -p tcp --dport P [-s SRC] -j
/// ACCEPT`, as in testdata/regimage-user.rules).
fn allow_lines(rule: &UfwRule) -> Vec<String> {
    let chain = if rule.v6 { "ufw6" } else { "ufw" };
    let mut iptables = format!("-A {chain}-user-input -p tcp --dport {}", rule.dport);
    if !is_any_address(&rule.src) {
        iptables.push_str(&format!(" -s {}", rule.src));
    }
    iptables.push_str(" -j ACCEPT");
    vec![tuple_line(rule), iptables]
}
