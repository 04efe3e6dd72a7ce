//! What each step costs in processes (issue 9: under TCG a process start costs 50-300 ms,
//! a ufw or other python start seconds): counted from the fake's calls on a fresh machine
//! and on a rerun.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

/// The program a fake call stands for on the real system (real.rs); `None`: no process
/// (a file, a syscall, the passwd database).
fn program(call: &str) -> Option<&'static str> {
    let name = call.split(' ').next().unwrap_or_default();
    Some(match name {
        "unit_status" | "unit_file_state" | "start_unit" | "enable_unit" | "daemon_reload" => {
            "systemctl"
        }
        "enable_linger" => "loginctl",
        "ssh_ports" => "sshd",
        "http_status" => "curl",
        "create_user" => "useradd",
        "create_group" => "groupadd",
        "ufw" => "ufw",
        n if n.starts_with("podman_") => "podman",
        _ => return None,
    })
}

/// Processes per step (and per program) of one run of every step.
fn processes(m: &Machine) -> Vec<(&'static str, BTreeMap<&'static str, usize>)> {
    let o = opts();
    let mut ctx = Ctx::new(&m.fake, m.root(), &m.config, &o);
    STEPS
        .iter()
        .map(|step| {
            let before = m.fake.calls.borrow().len();
            let (_, error) = run_steps(&mut ctx, std::slice::from_ref(step));
            assert!(error.is_none(), "{error:?}");
            let mut count = BTreeMap::new();
            for call in &m.fake.calls.borrow()[before..] {
                if let Some(p) = program(call) {
                    *count.entry(p).or_default() += 1;
                }
            }
            (step.0, count)
        })
        .collect()
}

fn of<'a>(
    counts: &'a [(&str, BTreeMap<&'static str, usize>)],
    step: &str,
) -> &'a BTreeMap<&'static str, usize> {
    &counts.iter().find(|(s, _)| *s == step).unwrap().1
}

#[test]
fn steps_start_few_processes() {
    let m = machine(true);
    let fresh = processes(&m);
    let rerun = processes(&m);
    for (label, counts) in [("fresh", &fresh), ("rerun", &rerun)] {
        for (step, count) in counts {
            eprintln!("{label} {step}: {count:?}");
        }
    }
    let n = |counts: &[(&str, BTreeMap<&'static str, usize>)], step: &str, p: &str| {
        of(counts, step).get(p).copied().unwrap_or(0)
    };
    // Firewall: one ufw start on a fresh machine (enable), none on a ready one.
    assert_eq!(n(&fresh, "firewall", "ufw"), 1);
    assert_eq!(n(&rerun, "firewall", "ufw"), 0);
    // The image: list, load, tag; then only the list.
    assert_eq!(n(&fresh, "registry-image", "podman"), 3);
    assert_eq!(n(&rerun, "registry-image", "podman"), 1);
    // Services: per unit (registry, proxy, renew timer) one show and one is-enabled, then
    // enable and start.
    assert_eq!(n(&fresh, "services", "systemctl"), 12);
    assert_eq!(n(&rerun, "services", "systemctl"), 6);
    // Health: one request per endpoint when they answer; no systemctl.
    assert_eq!(of(&fresh, "health"), &BTreeMap::from([("curl", 2)]));
    assert_eq!(of(&rerun, "health"), &BTreeMap::from([("curl", 2)]));
    // The user manager: started, checked once, podman migrated; a rerun only looks.
    assert_eq!(n(&fresh, "user-manager", "systemctl"), 3);
    assert_eq!(n(&rerun, "user-manager", "systemctl"), 1);
}
