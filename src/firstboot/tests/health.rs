//! Services that never come up: the error says which and where to look.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

#[test]
fn registry_that_never_answers_fails_health_with_where_to_look() {
    let m = machine(true);
    m.fake.registry_broken.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(30),
            ..opts()
        })
        .unwrap_err()
    );
    let uid = m.user("registry").uid;
    assert!(e.contains("the registry is not up"), "{e}");
    assert!(e.contains("within 30 s"), "{e}");
    assert!(
        e.contains("systemctl --user -M registry@ status registry.service"),
        "{e}"
    );
    assert!(e.contains(&format!("journalctl -b _UID={uid}")), "{e}");
    assert!(m.fake.elapsed() >= Duration::from_secs(30));
    assert!(m.fake.elapsed() < Duration::from_secs(40), "bounded");
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    // Fixed (say, the operator restarted it): the next run finishes.
    m.fake.registry_broken.set(false);
    assert!(m.run().unwrap().ready);
    assert!(m.path(render::FIRSTBOOT_DONE_PATH).exists());
}

#[test]
fn proxy_that_never_answers_names_the_proxy() {
    let m = machine(true);
    m.fake.proxy_broken.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(5),
            ..opts()
        })
        .unwrap_err()
    );
    assert!(e.contains("the TLS proxy is not up"), "{e}");
    assert!(e.contains("https://reg1.example.test:443/v2/"), "{e}");
    assert!(e.contains("journalctl -b -u registry-proxy.service"), "{e}");
}

#[test]
fn proxy_start_job_held_by_ordering_is_named() {
    let m = machine(true);
    m.fake.proxy_job_held.set(true);
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            health_timeout: Duration::from_secs(3),
            ..opts()
        })
        .unwrap_err()
    );
    assert!(e.contains("start job still queued"), "{e}");
    assert!(e.contains("regimage-firstboot.service"), "{e}");
}
