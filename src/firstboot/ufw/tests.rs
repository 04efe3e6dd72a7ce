//! The rule parser against files ufw itself wrote, the plan against every starting state,
//! and the sshd -T port reader.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

/// Written by ufw 0.36.2 (`ufw --rootdir --datadir` on a copy, never enabled) from:
/// allow 22/tcp; allow 443/tcp; allow from 10.0.0.0/8 to any port 4443 proto tcp;
/// allow from fd00::/8 ...4443...; allow in on eth0 to any port 8080 proto tcp;
/// deny 5000; allow 60000:60010/udp; allow from 192.168.0.0/16 to any port 80,443
/// proto tcp comment 'web lan'; allow log 2222/tcp; route allow in on eth0 out on eth1
/// to any port 53; allow WWW; allow from 10.0.0.0/8 to any app 'WWW Full';
/// allow proto tcp from 10.0.0.0/8 port 1234 to 192.0.2.1 port 9999; limit 2200/tcp;
/// allow 53.
const USER_RULES: &str = include_str!("testdata/user.rules");
const USER6_RULES: &str = include_str!("testdata/user6.rules");

fn rules() -> Vec<UfwRule> {
    let mut all = parse_rules(USER_RULES, false);
    all.extend(parse_rules(USER6_RULES, true));
    all
}

fn find<'a>(rules: &'a [UfwRule], dport: &str, src: &str, v6: bool) -> &'a UfwRule {
    rules
        .iter()
        .find(|r| r.dport == dport && r.src == src && r.v6 == v6)
        .unwrap_or_else(|| panic!("no rule {dport} from {src} v6={v6}"))
}

#[test]
fn real_ufw_files_parse() {
    let v4 = parse_rules(USER_RULES, false);
    let v6 = parse_rules(USER6_RULES, true);
    assert_eq!(v4.len(), 14, "{v4:#?}");
    assert_eq!(v6.len(), 11, "{v6:#?}");
    let all = rules();
    let ssh = find(&all, "22", "0.0.0.0/0", false);
    assert!(ssh.opens_port(22) && ssh.satisfies(22, None));
    let push = find(&all, "4443", "10.0.0.0/8", false);
    assert!(push.satisfies(4443, Some("10.0.0.0/8")));
    assert!(!push.satisfies(4443, None));
    assert!(find(&all, "4443", "fd00::/8", true).satisfies(4443, Some("fd00::/8")));
    let web = find(&all, "80,443", "192.168.0.0/16", false);
    assert_eq!(web.comment.as_deref(), Some("776562206c616e"));
    assert!(web.opens_port(443) && !web.opens_port(80 + 1));
    let iface = find(&all, "8080", "0.0.0.0/0", false);
    assert_eq!(iface.iface_in.as_deref(), Some("eth0"));
    assert!(iface.opens_port(8080) && !iface.satisfies(8080, None));
    let deny = find(&all, "5000", "0.0.0.0/0", false);
    assert_eq!((deny.action.as_str(), deny.proto.as_str()), ("deny", "any"));
    assert!(!deny.opens_port(5000));
    let range = find(&all, "60000:60010", "0.0.0.0/0", false);
    assert!(!range.opens_port(60005), "udp only");
    let logged = find(&all, "2222", "0.0.0.0/0", false);
    assert_eq!(logged.log.as_deref(), Some("log"));
    let route = find(&all, "53", "0.0.0.0/0", false);
    assert!(route.route && !route.opens_port(53));
    assert_eq!(
        (route.iface_in.as_deref(), route.iface_out.as_deref()),
        (Some("eth0"), Some("eth1"))
    );
    let app = all
        .iter()
        .find(|r| r.dapp.as_deref() == Some("WWW Full"))
        .unwrap();
    assert_eq!(app.dport, "80,443");
    let limit = find(&all, "2200", "0.0.0.0/0", false);
    assert_eq!(limit.action, "limit");
    assert!(limit.opens_port(2200));
    let sport = find(&all, "9999", "10.0.0.0/8", false);
    assert_eq!(
        (sport.sport.as_str(), sport.dst.as_str()),
        ("1234", "192.0.2.1")
    );
    assert!(!sport.satisfies(9999, Some("10.0.0.0/8")));
    // ufw's own non-tuple lines (the iptables commands) are not rules.
    assert!(parse_rules("-A ufw-user-input -p tcp --dport 22 -j ACCEPT\n", false).is_empty());
    assert!(parse_rules("### tuple ### allow tcp 22\n", false).is_empty());
}

#[test]
fn allow_is_stored_the_way_ufw_stores_it() {
    // What the fake ufw keeps must be what real ufw wrote for the same command.
    let all = rules();
    let cmd = UfwCommand::Allow {
        port: 22,
        from: None,
        comment: "x".into(),
    };
    let stored = cmd.stored_rules(true);
    let strip = |r: &UfwRule| UfwRule {
        comment: None,
        ..r.clone()
    };
    assert_eq!(strip(&stored[0]), *find(&all, "22", "0.0.0.0/0", false));
    assert_eq!(strip(&stored[1]), *find(&all, "22", "::/0", true));
    let push = UfwCommand::Allow {
        port: 4443,
        from: Some("10.0.0.0/8".into()),
        comment: "x".into(),
    };
    assert_eq!(
        push.stored_rules(true)
            .iter()
            .map(strip)
            .collect::<Vec<_>>(),
        [find(&all, "4443", "10.0.0.0/8", false).clone()]
    );
    assert_eq!(
        push.args().join(" "),
        "allow in proto tcp from 10.0.0.0/8 to any port 4443 comment x"
    );
}

fn wanted() -> Wanted {
    Wanted {
        open: vec![
            (22, "regimage: ssh".into()),
            (443, "regimage: pulls".into()),
        ],
        restricted: vec![(
            4443,
            vec!["10.0.0.0/8".into(), "fd00::/8".into()],
            "regimage: pushes".into(),
        )],
        closed: vec![5000],
    }
}

fn apply(state: &mut UfwState, commands: &[UfwCommand]) {
    for c in commands {
        match c {
            UfwCommand::Allow { .. } => state.rules.extend(c.stored_rules(state.ipv6)),
            UfwCommand::Delete(rule) => {
                let args = rule.delete_args();
                state.rules.retain(|r| r.delete_args() != args);
            }
            UfwCommand::DefaultDenyIncoming => state.default_input = "DROP".into(),
            UfwCommand::Enable => state.enabled = true,
            UfwCommand::Reload => {}
        }
    }
}

#[test]
fn fresh_firewall_gets_everything_ssh_first_and_enable_last() {
    let state = UfwState {
        enabled: false,
        default_input: "DROP".into(),
        ipv6: true,
        rules: Vec::new(),
    };
    let commands = plan(&state, &wanted());
    let text: Vec<String> = commands.iter().map(|c| c.args().join(" ")).collect();
    assert_eq!(
        text,
        [
            "allow in proto tcp from any to any port 22 comment regimage: ssh",
            "allow in proto tcp from any to any port 443 comment regimage: pulls",
            "allow in proto tcp from 10.0.0.0/8 to any port 4443 comment regimage: pushes",
            "allow in proto tcp from fd00::/8 to any port 4443 comment regimage: pushes",
            "--force enable",
        ]
    );
}

#[test]
fn second_plan_is_empty_and_nothing_is_duplicated() {
    let mut state = UfwState {
        enabled: false,
        default_input: "ACCEPT".into(),
        ipv6: true,
        rules: Vec::new(),
    };
    let first = plan(&state, &wanted());
    assert!(first.contains(&UfwCommand::DefaultDenyIncoming));
    apply(&mut state, &first);
    assert_eq!(plan(&state, &wanted()), []);
    let unique: BTreeSet<_> = state.rules.iter().collect();
    assert_eq!(unique.len(), state.rules.len(), "{:#?}", state.rules);
    // 22 and 443 in both families, 4443 once per network.
    assert_eq!(state.rules.len(), 6);
}

#[test]
fn existing_rules_count_and_wrong_ones_are_deleted() {
    let mut state = UfwState {
        enabled: true,
        default_input: "DROP".into(),
        ipv6: true,
        rules: rules(),
    };
    // The fixture also has `allow 4443/tcp` from anywhere (deleted by the guide's
    // recipe) added back here, and the registry port opened.
    let open_push = UfwCommand::Allow {
        port: 4443,
        from: None,
        comment: "x".into(),
    };
    state.rules.extend(open_push.stored_rules(true));
    let open_registry = UfwCommand::Allow {
        port: 5000,
        from: Some("192.168.0.0/16".into()),
        comment: "x".into(),
    };
    state.rules.extend(open_registry.stored_rules(true));
    let commands = plan(&state, &wanted());
    let text: Vec<String> = commands.iter().map(UfwCommand::describe).collect();
    assert_eq!(
        text,
        [
            "delete the rule allow tcp 4443 from anywhere",
            "delete the rule allow tcp 5000 from 192.168.0.0/16",
        ],
        "{commands:#?}"
    );
    apply(&mut state, &commands);
    assert_eq!(plan(&state, &wanted()), []);
    assert!(!state.rules.iter().any(|r| r.opens_port(5000)));
    assert!(state
        .rules
        .iter()
        .filter(|r| r.opens_port(4443))
        .all(|r| r.src == "10.0.0.0/8" || r.src == "fd00::/8"));
}

#[test]
fn restricted_pull_port_gets_one_rule_per_network_and_loses_anywhere() {
    // A first boot before pull-allowed-cidrs opened 443 to anywhere; now 443 is restricted.
    let mut state = UfwState {
        enabled: true,
        default_input: "DROP".into(),
        ipv6: true,
        rules: Vec::new(),
    };
    let first = plan(&state, &wanted());
    apply(&mut state, &first);
    let mut w = wanted();
    w.open.retain(|(port, _)| *port != 443);
    w.restricted.push((
        443,
        vec!["192.168.0.0/16".into(), "fd00::/8".into()],
        "regimage: pulls".into(),
    ));
    let commands = plan(&state, &w);
    let text: Vec<String> = commands.iter().map(UfwCommand::describe).collect();
    assert_eq!(
        text,
        [
            "allow TCP port 443 from 192.168.0.0/16",
            "allow TCP port 443 from fd00::/8",
            "delete the rule allow tcp 443 from anywhere",
        ],
        "{commands:#?}"
    );
    apply(&mut state, &commands);
    assert_eq!(plan(&state, &w), []);
    let pulls: BTreeSet<&str> = state
        .rules
        .iter()
        .filter(|r| r.opens_port(443))
        .map(|r| r.src.as_str())
        .collect();
    assert_eq!(pulls, BTreeSet::from(["192.168.0.0/16", "fd00::/8"]));
}

#[test]
fn ipv6_off_needs_only_the_v4_rule() {
    let mut state = UfwState {
        enabled: true,
        default_input: "REJECT".into(),
        ipv6: false,
        rules: Vec::new(),
    };
    let w = Wanted {
        open: vec![(22, "ssh".into())],
        restricted: vec![],
        closed: vec![],
    };
    let first = plan(&state, &w);
    assert_eq!(first.len(), 1);
    apply(&mut state, &first);
    assert_eq!(state.rules.len(), 1);
    assert_eq!(plan(&state, &w), []);
    // With IPv6 on, the missing v6 half is asked for.
    state.ipv6 = true;
    assert_eq!(plan(&state, &w).len(), 1);
}

#[test]
fn rules_real_ufw_wrote_for_the_plan_satisfy_it() {
    // ufw 0.36.2 ran exactly the commands of the fresh plan below (regimage's comments
    // included) on an empty copy and wrote these files.
    let mut rules = parse_rules(include_str!("testdata/regimage-user.rules"), false);
    rules.extend(parse_rules(
        include_str!("testdata/regimage-user6.rules"),
        true,
    ));
    // wanted(), with the push rule's comment as that run had it.
    let mut w = wanted();
    if let Some((_, _, comment)) = w.restricted.first_mut() {
        *comment = "regimage: pushes (mTLS)".into();
    }
    let fresh = UfwState {
        enabled: true,
        default_input: "DROP".into(),
        ipv6: true,
        rules: Vec::new(),
    };
    let commands = plan(&fresh, &w);
    assert_eq!(commands.len(), 4);
    // The fake stores what real ufw stored, comments and all.
    let mut stored: Vec<UfwRule> = commands.iter().flat_map(|c| c.stored_rules(true)).collect();
    stored.sort();
    let mut real = rules.clone();
    real.sort();
    assert_eq!(stored, real);
    let state = UfwState { rules, ..fresh };
    assert_eq!(plan(&state, &w), []);
}

#[test]
fn delete_args_read_like_ufw_commands() {
    let all = rules();
    let args = |r: &UfwRule| r.delete_args().join(" ");
    assert_eq!(
        args(find(&all, "22", "0.0.0.0/0", false)),
        "delete allow in proto tcp from any to any port 22"
    );
    assert_eq!(
        args(find(&all, "8080", "0.0.0.0/0", false)),
        "delete allow in on eth0 proto tcp from any to any port 8080"
    );
    assert_eq!(
        args(find(&all, "2222", "0.0.0.0/0", false)),
        "delete allow in log proto tcp from any to any port 2222"
    );
    assert_eq!(
        args(find(&all, "9999", "10.0.0.0/8", false)),
        "delete allow in proto tcp from 10.0.0.0/8 port 1234 to 192.0.2.1 port 9999"
    );
    let app = all
        .iter()
        .find(|r| r.dapp.as_deref() == Some("WWW Full"))
        .unwrap();
    assert_eq!(
        args(app),
        "delete allow in from 10.0.0.0/8 to any app WWW Full"
    );
    // Each of these removed exactly its rules when run with ufw 0.36.2 on the fixture.
    assert_eq!(
        args(find(&all, "53", "0.0.0.0/0", false)),
        "route delete allow in on eth0 out on eth1 from any to any port 53"
    );
}

#[test]
fn conf_values() {
    let conf = "# comment\nENABLED=no\nLOGLEVEL=low\n";
    assert_eq!(conf_value(conf, "ENABLED").as_deref(), Some("no"));
    let default = "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\n#DEFAULT_INPUT_POLICY=\"ACCEPT\"\n";
    assert_eq!(
        conf_value(default, "DEFAULT_INPUT_POLICY").as_deref(),
        Some("DROP")
    );
    assert_eq!(conf_value(default, "MISSING"), None);
}

#[test]
fn ssh_ports_from_sshd_t() {
    // Debian 12's sshd -T, Port 2222 in a drop-in (trimmed to the lines that matter).
    let moved = "port 2222\naddressfamily any\nlistenaddress [::]:2222\n\
                 listenaddress 0.0.0.0:2222\nusepam yes\n";
    assert_eq!(sshd_t_ports(moved), [2222]);
    // ListenAddress with its own port wins over Port: sshd binds only those.
    let listen = "port 22\nlistenaddress 192.0.2.1:2200\nlistenaddress [2001:db8::1]:2201\n";
    assert_eq!(sshd_t_ports(listen), [2200, 2201]);
    assert_eq!(sshd_t_ports("port 22\nport 2022\n"), [22, 2022]);
    assert_eq!(
        sshd_t_ports("port 22\nlistenaddress 0.0.0.0:2022 rdomain vrf1\n"),
        [2022]
    );
    assert_eq!(sshd_t_ports(""), [22]);
}

/// The package's user.rules before ufw first rewrites it (ufw 0.36 conf/user.rules).
const PACKAGED_USER_RULES: &str = "*filter
:ufw-user-input - [0:0]
:ufw-user-output - [0:0]
:ufw-user-forward - [0:0]
:ufw-user-limit - [0:0]
:ufw-user-limit-accept - [0:0]
### RULES ###
-A ufw-user-limit -m limit --limit 3/minute -j LOG --log-prefix \"[UFW LIMIT BLOCK] \"
-A ufw-user-limit -j REJECT
-A ufw-user-limit-accept -j ACCEPT
COMMIT
";

/// The commands first boot plans for the fixtures' regimage files (ssh on 22).
fn regimage_allows() -> Vec<UfwCommand> {
    let allow = |port: u16, from: Option<&str>, comment: &str| UfwCommand::Allow {
        port,
        from: from.map(str::to_string),
        comment: comment.into(),
    };
    vec![
        allow(22, None, "regimage: ssh"),
        allow(443, None, "regimage: pulls"),
        allow(4443, Some("10.0.0.0/8"), "regimage: pushes (mTLS)"),
        allow(4443, Some("fd00::/8"), "regimage: pushes (mTLS)"),
    ]
}

#[test]
fn edited_files_read_like_the_ones_ufw_wrote() {
    let v4 = include_str!("testdata/regimage-user.rules");
    let v6 = include_str!("testdata/regimage-user6.rules");
    // Nothing to do: byte for byte; the same rules again: only comments (the same) kept.
    assert_eq!(edit_rules(v4, false, true, &[]).unwrap(), v4);
    assert_eq!(edit_rules(v6, true, true, &regimage_allows()).unwrap(), v6);
    // Every regimage rule deleted, then allowed again: what ufw itself wrote.
    for (text, v6) in [(v4, false), (v6, true)] {
        let deletes: Vec<UfwCommand> = parse_rules(text, v6)
            .into_iter()
            .map(|r| UfwCommand::Delete(Box::new(r)))
            .collect();
        let empty = edit_rules(text, v6, true, &deletes).unwrap();
        assert!(parse_rules(&empty, v6).is_empty(), "{empty}");
        assert!(
            empty.contains("### RULES ###\n\n### END RULES ###\n"),
            "{empty}"
        );
        assert_eq!(
            edit_rules(&empty, v6, true, &regimage_allows()).unwrap(),
            text
        );
    }
}

#[test]
fn packaged_file_gets_the_rules_and_the_end_marker() {
    let text = edit_rules(PACKAGED_USER_RULES, false, true, &regimage_allows()).unwrap();
    assert!(
        text.contains(
            "### RULES ###\n\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=726567696d6167653a20737368\n\
             -A ufw-user-input -p tcp --dport 22 -j ACCEPT\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "-A ufw-user-input -p tcp --dport 4443 -s 10.0.0.0/8 -j ACCEPT\n\n### END RULES ###\n\
             -A ufw-user-limit -m limit"
        ),
        "{text}"
    );
    assert!(text.ends_with("COMMIT\n"));
    // The v6 push network only in user6.rules.
    assert!(!text.contains("fd00::/8"));
    let rules = parse_rules(&text, false);
    assert_eq!(rules.len(), 3, "{rules:#?}");
    let mut state = UfwState {
        enabled: false,
        default_input: "DROP".into(),
        ipv6: true,
        rules: rules.clone(),
    };
    state.rules.extend(parse_rules(
        &edit_rules(
            &PACKAGED_USER_RULES.replace("ufw-", "ufw6-"),
            true,
            true,
            &regimage_allows(),
        )
        .unwrap(),
        true,
    ));
    // The fixture's rules carry first boot's own comment for the push port.
    let mut wanted = wanted();
    wanted.restricted[0].2 = "regimage: pushes (mTLS)".into();
    assert_eq!(plan(&state, &wanted), [UfwCommand::Enable]);
}

#[test]
fn edits_keep_other_rules_and_refuse_unknown_files() {
    // The operator's rules (interfaces, logging, multiport, apps) keep their lines.
    assert_eq!(
        edit_rules(USER_RULES, false, true, &[]).unwrap(),
        USER_RULES
    );
    assert_eq!(
        edit_rules(USER6_RULES, true, true, &[]).unwrap(),
        USER6_RULES
    );
    let deleted = find(&rules(), "5000", "0.0.0.0/0", false).clone();
    let text = edit_rules(
        USER_RULES,
        false,
        true,
        &[UfwCommand::Delete(Box::new(deleted))],
    )
    .unwrap();
    assert!(!text.contains("--dport 5000"), "{text}");
    assert_eq!(
        text.lines().count(),
        USER_RULES.lines().count() - 4,
        "the tuple, its two lines and the blank line before it"
    );
    assert_eq!(parse_rules(&text, false).len(), 13);
    assert!(text.contains("-A ufw-user-input -p tcp --dport 2222 -j ufw-user-logging-input"));
    let e = edit_rules("*filter\nCOMMIT\n", false, true, &[]).unwrap_err();
    assert!(e.to_string().contains("### RULES ###"), "{e}");
}
