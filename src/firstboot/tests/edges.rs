//! The first-boot edges of issue 10: no network yet (wait, then stop clearly without
//! issuing anything), packages missing after a failed install (installed, or a clear
//! stop), and a kernel without IPv6 (the proxy's IPv6 listeners commented out); and of
//! issue 11: an image without the renew timer's unit file.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;
use crate::pki::PkiPaths;

fn step<'a>(status: &'a Status, name: &str) -> &'a StepStatus {
    status.steps.iter().find(|s| s.name == name).unwrap()
}

fn status_json(m: &Machine) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(m.path("/var/lib/regimage/out/status.json")).unwrap())
        .unwrap()
}

#[test]
fn network_that_comes_after_a_few_polls_is_waited_for() {
    let m = machine(true);
    m.fake.offline_polls.set(3);
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    // Named by the real name, never by `localhost`.
    assert_eq!(status.primary_name, "reg1.example.test");
    let host = step(&status, "host-identity");
    assert!(
        host.notes[0].contains("an address and a name came after 3 s"),
        "{host:#?}"
    );
    let polls = m
        .fake
        .calls
        .borrow()
        .iter()
        .filter(|c| *c == "host_facts")
        .count();
    assert_eq!(polls, 4);
}

#[test]
fn no_network_stops_before_anything_is_issued_and_says_what_to_do() {
    let m = machine(true);
    m.fake.offline_polls.set(usize::MAX);
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(
        e.starts_with("first boot step host-identity: no certificate issued: after 120 s"),
        "{e}"
    );
    for part in [
        "no network address but loopback and link-local ones",
        "no host name but \"localhost\"",
        "connect it to a network that gives it an address",
        "set hostname in /etc/regimage/regimage.yaml",
        "first boot tries again at the next boot",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    assert!(!e.contains('\n'), "one line on the console: {e}");
    // Waited the whole bound, then nothing: no change, no key, no marker.
    assert!(m.fake.elapsed() >= Duration::from_secs(120));
    assert_eq!(m.mutations(), Vec::<String>::new());
    assert!(!PkiPaths::new(m.root()).ca_key.exists());
    assert!(!m.path("/etc/registry/certs").exists());
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    let json = status_json(&m);
    assert_eq!(json["ready"], false);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no network address"),
        "{json:#}"
    );
    assert_eq!(json["steps"].as_array().unwrap().len(), 1);
    assert_eq!(json["steps"][0]["result"], "failed");

    // The next boot has a network: it finishes.
    m.fake.offline_polls.set(0);
    let status = m.run().unwrap();
    assert!(status.ready);
    assert!(m.path(render::FIRSTBOOT_DONE_PATH).exists());
}

#[test]
fn a_configured_hostname_still_needs_an_address() {
    let mut m = machine(true);
    m.config.hostname = Some("registry.example.com".into());
    m.fake.facts.addresses.clear();
    let e = format!(
        "{:#}",
        m.run_with(&Options {
            network_timeout: Duration::from_secs(5),
            ..opts()
        })
        .unwrap_err()
    );
    assert!(
        e.contains("after 5 s this machine has no network address"),
        "{e}"
    );
    assert!(!e.contains("host name"), "the name is there: {e}");
    assert!(!e.contains("set hostname"), "{e}");
}

#[test]
fn dry_run_without_network_says_it_would_wait_and_does_not() {
    let m = machine(true);
    m.fake.offline_polls.set(usize::MAX);
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.fake.elapsed(), Duration::ZERO);
    let host = step(&status, "host-identity");
    assert!(
        host.notes[0].contains("no network address but loopback and link-local ones")
            && host.notes[0].contains("yet: a run waits up to 120 s for them, then stops"),
        "{host:#?}"
    );
}

const DEBIAN_OS_RELEASE: &str =
    "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_ID=\"13\"\nID=debian\n";

fn debian_machine() -> Machine {
    let m = machine(true);
    std::fs::write(m.path("/etc/os-release"), DEBIAN_OS_RELEASE).unwrap();
    m
}

#[test]
fn missing_packages_are_installed_and_the_distribution_nginx_turned_off() {
    let m = debian_machine();
    m.fake
        .missing
        .borrow_mut()
        .extend(["nginx".to_string(), "podman".to_string()]);
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    assert_eq!(
        step(&status, "packages").changes,
        [
            "install the missing packages podman nginx with apt-get",
            "disable and stop nginx.service (the proxy is registry-proxy.service)"
        ]
    );
    let unit = m.fake.state.borrow().units[&(Manager::System, "nginx.service".to_string())].clone();
    assert!(!unit.enabled && !unit.active, "{unit:?}");
    // Before the certificates; a second run only looks.
    let calls = m.mutations();
    let install = calls
        .iter()
        .position(|c| c.starts_with("install_packages"))
        .unwrap();
    assert_eq!(install, 0, "{calls:#?}");
    let count = calls.len();
    let again = m.run().unwrap();
    assert_eq!(step(&again, "packages").result, StepResult::Unchanged);
    assert_eq!(m.mutations().len(), count);
}

#[test]
fn packages_that_cannot_be_installed_stop_first_boot_saying_which() {
    let m = debian_machine();
    m.fake.missing.borrow_mut().insert("nginx".into());
    m.fake.apt_broken.set(true);
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(
        e.starts_with(
            "first boot step packages: Debian 13 needs nginx, which is not installed, and \
             apt-get could not install it; check the network and the apt sources: first boot \
             tries again at the next boot"
        ),
        "{e}"
    );
    assert!(e.contains("Temporary failure resolving"), "{e}");
    assert!(!PkiPaths::new(m.root()).ca_key.exists());
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    assert_eq!(status_json(&m)["ready"], false);
    // The next boot's mirror works.
    m.fake.apt_broken.set(false);
    assert!(m.run().unwrap().ready);
}

#[test]
fn dry_run_says_which_packages_it_would_install() {
    let m = debian_machine();
    m.fake.missing.borrow_mut().insert("ufw".into());
    let status = m
        .run_with(&Options {
            dry_run: true,
            ..opts()
        })
        .unwrap();
    assert_eq!(m.mutations(), Vec::<String>::new());
    assert_eq!(
        step(&status, "packages").changes,
        ["install the missing packages ufw with apt-get"]
    );
}

fn with_nginx_conf(m: &Machine) -> String {
    let files = render::appliance_files(&m.config).unwrap();
    let conf = files
        .iter()
        .find(|f| f.path == Path::new(render::NGINX_CONF_PATH))
        .unwrap();
    std::fs::create_dir_all(m.path("/etc/registry")).unwrap();
    std::fs::write(m.path(render::NGINX_CONF_PATH), &conf.contents).unwrap();
    String::from_utf8(conf.contents.clone()).unwrap()
}

#[test]
fn without_ipv6_the_proxy_loses_its_ipv6_listeners_once() {
    let m = machine(true);
    let rendered = with_nginx_conf(&m);
    m.fake.ipv6.set(false);
    let status = m.run().unwrap();
    assert!(status.ready);
    let conf = std::fs::read_to_string(m.path(render::NGINX_CONF_PATH)).unwrap();
    assert_eq!(
        Some(conf.clone()),
        steps::without_ipv6_listeners(&rendered).map(|(c, _)| c)
    );
    assert_eq!(mode(&m.path(render::NGINX_CONF_PATH)), 0o644);
    let services = step(&status, "services");
    assert!(
        services.changes[0]
            .starts_with("comment out the 2 IPv6 listener(s) in /etc/registry/nginx.conf"),
        "{services:#?}"
    );
    // Before the proxy starts.
    let calls = m.fake.calls.borrow().clone();
    let asked = calls.iter().position(|c| c == "has_ipv6").unwrap();
    let started = calls
        .iter()
        .position(|c| c == "start_unit System registry-proxy.service")
        .unwrap();
    assert!(asked < started);
    let again = m.run().unwrap();
    assert_eq!(step(&again, "services").result, StepResult::Unchanged);
    assert_eq!(
        std::fs::read_to_string(m.path(render::NGINX_CONF_PATH)).unwrap(),
        conf
    );
}

#[test]
fn with_ipv6_the_proxy_config_is_left_alone() {
    let m = machine(true);
    let rendered = with_nginx_conf(&m);
    let status = m.run().unwrap();
    assert!(status.ready);
    assert_eq!(
        std::fs::read_to_string(m.path(render::NGINX_CONF_PATH)).unwrap(),
        rendered
    );
    assert!(step(&status, "services")
        .changes
        .iter()
        .all(|c| !c.contains("IPv6")));
}

#[test]
fn missing_renew_timer_stops_first_boot_clearly_and_a_rerun_finishes() {
    let m = machine(true);
    m.fake
        .uninstalled
        .borrow_mut()
        .insert(steps::RENEW_TIMER_UNIT.to_string());
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(e.contains("first boot step services"), "{e}");
    assert!(
        e.contains("regimage-renew.timer is not installed in the system manager"),
        "{e}"
    );
    assert!(e.contains("`regimage render`"), "{e}");
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    assert_eq!(status_json(&m)["ready"], false);
    // The registry and the proxy before it are up; the timer is neither enabled nor started.
    let calls = m.mutations();
    assert!(calls.contains(&"start_unit System registry-proxy.service".to_string()));
    assert!(
        !calls.iter().any(|c| c.contains("regimage-renew")),
        "{calls:#?}"
    );
    // Once the file is there, the next boot's run finishes.
    m.fake.uninstalled.borrow_mut().clear();
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    let state = m.fake.state.borrow();
    let timer = &state.units[&(Manager::System, steps::RENEW_TIMER_UNIT.to_string())];
    assert!(timer.enabled && timer.active, "{timer:?}");
}
