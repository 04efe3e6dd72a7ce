//! `--dry-run`: says what a run would change, and changes nothing.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

#[test]
fn dry_run_on_a_fresh_machine_changes_nothing_and_says_what_it_would_do() {
    let m = machine(true);
    let before = snapshot(&m, false);
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.mutations(), Vec::<String>::new());
    assert_eq!(snapshot(&m, false), before);
    assert!(!status.ready);
    for step in &status.steps {
        assert_eq!(step.result, StepResult::Planned, "{step:#?}");
    }
    let report = dry_run_report(&status);
    for want in [
        "would make /etc/registry/certs/ca/ca.crt",
        "would create the system user registry (",
        "would create the system user registry-proxy (",
        "would allow TCP port 2222 from anywhere",
        "would allow TCP port 4443 from 10.0.0.0/8",
        "would enable the firewall",
        "holds the pinned image",
        "would write /var/lib/regimage/out/ci.tar.gz",
        "a run waits up to 180 s",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    assert!(!report.contains("cannot tell"), "{report}");
}

#[test]
fn dry_run_on_a_ready_machine_finds_nothing_to_do() {
    let m = machine(true);
    m.run().unwrap();
    let before = snapshot(&m, false);
    let count = m.mutations().len();
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.mutations().len(), count);
    assert_eq!(snapshot(&m, false), before);
    for step in &status.steps {
        assert!(step.changes.is_empty() && step.error.is_none(), "{step:#?}");
    }
}

#[test]
fn dry_run_reports_a_wrong_archive() {
    let mut m = machine(true);
    m.config.registry.image = format!("docker.io/library/registry@sha256:{}", "cd".repeat(32));
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    let report = dry_run_report(&status);
    assert!(
        report.contains("cannot tell") && report.contains("pins sha256:cdcd"),
        "{report}"
    );
    // It goes on with the later steps.
    assert_eq!(status.steps.len(), STEPS.len());
    assert_eq!(m.mutations(), Vec::<String>::new());
}
