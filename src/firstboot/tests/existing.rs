//! A machine that already has users, ids, rules or no sshd.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

#[test]
fn existing_subordinate_ids_and_users_are_respected() {
    let m = machine(true);
    for file in ["etc/subuid", "etc/subgid"] {
        std::fs::write(m.root().join(file), "ubuntu:100000:65536\nother:200000:10").unwrap();
    }
    // cloud-init made both users already.
    {
        let mut state = m.fake.state.borrow_mut();
        for (name, id) in [("registry", 990), ("registry-proxy", 991)] {
            state.users.insert(
                name.into(),
                UserInfo {
                    name: name.into(),
                    uid: id,
                    gid: id,
                    home: "/nonexistent".into(),
                    shell: "/usr/sbin/nologin".into(),
                },
            );
            state.groups.insert(name.into(), id);
        }
    }
    m.run().unwrap();
    assert!(!m.mutations().iter().any(|c| c.starts_with("create_")));
    for file in ["etc/subuid", "etc/subgid"] {
        assert_eq!(
            std::fs::read_to_string(m.root().join(file)).unwrap(),
            "ubuntu:100000:65536\nother:200000:10\nregistry:200010:65536\n"
        );
    }
    assert_eq!(
        m.fake.state.borrow().owners[Path::new("var/lib/registry-podman")],
        (990, 990)
    );
    m.run().unwrap();
    let subuid = std::fs::read_to_string(m.root().join("etc/subuid")).unwrap();
    assert_eq!(subuid.matches("registry:").count(), 1, "{subuid}");
}

#[test]
fn wrong_firewall_rules_are_removed_and_none_duplicated() {
    let m = machine(true);
    {
        let mut state = m.fake.state.borrow_mut();
        let ufw = &mut state.ufw;
        for (port, from) in [(4443, None), (5000, None), (2222, None)] {
            ufw.rules.extend(
                UfwCommand::Allow {
                    port,
                    from,
                    comment: "by hand".into(),
                }
                .stored_rules(true),
            );
        }
        ufw.enabled = true;
        ufw.default_input = "ACCEPT".into();
        state.ufw_live = state.ufw.rules.clone();
    }
    m.run().unwrap();
    let ufw_calls: Vec<String> = m
        .mutations()
        .into_iter()
        .filter(|c| c.starts_with("ufw"))
        .collect();
    // One write with both deletions and the missing rules, then one ufw start: the policy
    // change, which reloads the enabled firewall (no second reload, no enable).
    assert_eq!(ufw_calls.len(), 2, "{ufw_calls:#?}");
    assert!(
        ufw_calls[0].starts_with("ufw_write_rules "),
        "{ufw_calls:#?}"
    );
    for want in [
        "delete the rule allow tcp 4443 from anywhere",
        "delete the rule allow tcp 5000 from anywhere",
        "allow TCP port 4443 from 10.0.0.0/8",
    ] {
        assert!(ufw_calls[0].contains(want), "{want}: {ufw_calls:#?}");
    }
    assert!(!ufw_calls[0].contains("port 2222"), "kept: {ufw_calls:#?}");
    assert_eq!(ufw_calls[1], "ufw default deny incoming");
    assert!(!m.path(UFW_RELOAD_PENDING_PATH).exists());
    assert_eq!(
        m.fake.state.borrow().ufw_live,
        m.fake.state.borrow().ufw.rules
    );
    let state = m.fake.state.borrow();
    let mut seen = std::collections::BTreeSet::new();
    for rule in &state.ufw.rules {
        let mut key = rule.clone();
        key.comment = None;
        assert!(seen.insert(key), "duplicate {rule:?}");
    }
    assert!(!state.ufw.rules.iter().any(|r| r.opens_port(5000)));
    assert_eq!(state.ufw.default_input, "DROP");
}

#[test]
fn without_sshd_the_firewall_keeps_port_22_open_and_says_so() {
    let m = machine(true);
    *m.fake.ssh_ports.borrow_mut() = None;
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    assert!(m
        .fake
        .state
        .borrow()
        .ufw
        .rules
        .iter()
        .any(|r| r.opens_port(22)));
    let firewall = status.steps.iter().find(|s| s.name == "firewall").unwrap();
    assert!(
        firewall
            .notes
            .iter()
            .any(|n| n.contains("sshd is not installed")),
        "{firewall:#?}"
    );
}

#[test]
fn a_symlinked_storage_dir_is_refused_and_its_target_left_alone() {
    let m = machine(true);
    let target = m.root().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir_all(m.path("/var/lib")).unwrap();
    std::os::unix::fs::symlink(&target, m.path("/var/lib/registry")).unwrap();
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(e.contains("registry.storage-dir"), "{e}");
    assert!(e.contains("symbolic link"), "{e}");
    let state = m.fake.state.borrow();
    assert!(
        !state
            .owners
            .keys()
            .any(|p| p.ends_with("registry") || p.ends_with("elsewhere")),
        "chowned through the link: {:?}",
        state.owners
    );
    let status = std::fs::read_to_string(m.path("/var/lib/regimage/out/status.json")).unwrap();
    assert!(status.contains("registry.storage-dir"), "{status}");
}

#[test]
fn a_symlinked_output_dir_is_refused() {
    let m = machine(true);
    let target = m.root().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir_all(m.path("/var/lib/regimage")).unwrap();
    std::os::unix::fs::symlink(&target, m.path("/var/lib/regimage/out")).unwrap();
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(e.contains("output-dir"), "{e}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn pull_allowed_cidrs_restrict_the_pull_port() {
    let mut m = machine(true);
    m.config.pull_allowed_cidrs = vec!["10.1.0.0/16".into(), "fd00::/8".into()];
    m.run().unwrap();
    let state = m.fake.state.borrow();
    let pull = m.config.ports.pull;
    let sources: std::collections::BTreeSet<(bool, &str)> = state
        .ufw
        .rules
        .iter()
        .filter(|r| r.opens_port(pull))
        .map(|r| (r.v6, r.src.as_str()))
        .collect();
    assert_eq!(
        sources,
        std::collections::BTreeSet::from([(false, "10.1.0.0/16"), (true, "fd00::/8")])
    );
}
