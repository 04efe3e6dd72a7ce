//! Runs killed anywhere converge on the next run.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;
use crate::pki::PkiPaths;

#[test]
fn kill_after_any_step_then_rerun_ends_like_a_clean_run() {
    let clean = clean_snapshot();
    for n in 0..=STEPS.len() {
        let m = machine(true);
        {
            let o = opts();
            let mut ctx = Ctx::new(&m.fake, m.root(), &m.config, &o);
            let (_, error) = run_steps(&mut ctx, &STEPS[..n]);
            assert!(error.is_none(), "{error:?}");
        }
        // Killed here: no status file and no marker yet.
        assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
        let status = m.run().unwrap();
        assert!(status.ready);
        assert_eq!(snapshot(&m, true), clean, "killed after {n} steps");
        assert!(m.fake.migrations.get() >= 1);
    }
}

#[test]
fn kill_before_any_change_then_rerun_ends_like_a_clean_run() {
    let reference = machine(true);
    reference.run().unwrap();
    let clean = snapshot(&reference, true);
    let changes = reference.mutations();
    assert!(changes.len() > 20, "{changes:#?}");
    for k in 1..=changes.len() {
        let m = machine(true);
        m.fake.crash_at.set(Some(k));
        let e = m.run().unwrap_err();
        assert!(format!("{e:#}").contains("injected crash"), "{e:#}");
        assert!(
            !m.path(render::FIRSTBOOT_DONE_PATH).exists(),
            "marker after a crash at {k}"
        );
        m.fake.crash_at.set(None);
        let status = m.run().unwrap();
        assert!(status.ready);
        assert_eq!(
            snapshot(&m, true),
            clean,
            "killed before change {k} ({})",
            changes[k - 1]
        );
        assert!(
            m.fake.migrations.get() >= 1,
            "podman system migrate forgotten"
        );
        // No duplicate rules or subuid lines after the crash either.
        let subuid = std::fs::read_to_string(m.path("/etc/subuid")).unwrap();
        assert_eq!(subuid.lines().count(), 1, "{subuid}");
    }
}

#[test]
fn kill_between_ca_key_and_certificate_is_recovered() {
    let m = machine(true);
    let paths = PkiPaths::new(m.root());
    std::fs::create_dir_all(&paths.private_dir).unwrap();
    let orphan = pki::generate_key(crate::config::KeyAlgorithm::EcdsaP256)
        .unwrap()
        .serialize_pem();
    std::fs::write(&paths.client_ca_key, &orphan).unwrap();
    let status = m.run().unwrap();
    assert!(status.ready);
    assert!(paths.client_ca_cert.is_file());
    // The key is the CA's: kept, and its certificate issued from it.
    assert_eq!(
        std::fs::read_to_string(&paths.client_ca_key).unwrap(),
        orphan
    );
    let pki_step = status.steps.iter().find(|s| s.name == "pki").unwrap();
    assert!(
        pki_step
            .changes
            .iter()
            .any(|c| c.contains("issued again from the existing key")),
        "{pki_step:#?}"
    );
    // On a finished machine too: the same key signs, so the client certificates stay.
    let client = std::fs::read(paths.client_cert("ci")).unwrap();
    std::fs::remove_file(&paths.client_ca_cert).unwrap();
    let status = m.run().unwrap();
    assert!(status.ready);
    assert!(paths.client_ca_cert.is_file());
    assert_eq!(std::fs::read(paths.client_cert("ci")).unwrap(), client);
    assert_eq!(
        std::fs::read_to_string(&paths.client_ca_key).unwrap(),
        orphan
    );
}

/// ufw already on (its policy as wanted): the rules go to the files in one write, then one
/// `ufw reload`; a kill between the two still ends with the running firewall reloaded.
#[test]
fn enabled_firewall_is_reloaded_once_even_after_a_kill() {
    let enabled = || {
        let m = machine(true);
        m.fake.state.borrow_mut().ufw.enabled = true;
        m
    };
    let reference = enabled();
    reference.run().unwrap();
    let ufw_calls: Vec<String> = reference
        .mutations()
        .into_iter()
        .filter(|c| c.starts_with("ufw"))
        .collect();
    assert_eq!(ufw_calls.len(), 2, "{ufw_calls:#?}");
    assert!(ufw_calls[0].starts_with("ufw_write_rules "));
    assert_eq!(ufw_calls[1], "ufw reload");
    let clean = snapshot(&reference, true);
    assert_eq!(clean.fake.ufw_live, clean.fake.ufw.rules);
    let write = reference
        .mutations()
        .iter()
        .position(|c| c.starts_with("ufw_write_rules"))
        .unwrap();
    // Killed before the write, and before the reload (the files already new).
    for k in [write + 1, write + 2] {
        let m = enabled();
        m.fake.crash_at.set(Some(k));
        m.run().unwrap_err();
        // The marker goes first, so it is there either way.
        assert!(
            m.path(UFW_RELOAD_PENDING_PATH).exists(),
            "no marker after a kill before change {k}"
        );
        m.fake.crash_at.set(None);
        assert!(m.run().unwrap().ready);
        assert_eq!(snapshot(&m, true), clean, "killed before change {k}");
        assert!(!m.path(UFW_RELOAD_PENDING_PATH).exists());
    }
}
