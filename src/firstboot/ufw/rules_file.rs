//! Reading what ufw keeps on disk: the rule tuples of user.rules and user6.rules, and the
//! `KEY=value` settings of ufw.conf and /etc/default/ufw.

use super::UfwRule;

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
