//! The day-2 engine against a directory standing for `/`, with a moved clock and a proxy that
//! counts its reloads: when renew renews, and runs stopped before any change converge.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use super::index::State;
use super::proxy::Proxy;
use super::*;
use crate::fsutil::crash_points;
use crate::pki::Action;

struct Site {
    dir: tempfile::TempDir,
    config: Config,
    reloads: Arc<Mutex<Vec<Vec<u8>>>>,
    t0: OffsetDateTime,
}

fn sans(extra_ip: Option<&str>) -> Sans {
    let mut ips: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap()];
    ips.extend(extra_ip.map(|ip| ip.parse::<IpAddr>().unwrap()));
    Sans {
        primary_name: "reg.example.test".into(),
        dns_names: vec!["reg.example.test".into()],
        ip_addresses: ips,
    }
}

/// A site as first boot leaves it at `t0`: both CAs, the server pair, clients ci and laptop.
fn site() -> Site {
    let config = Config::parse(
        "hostname: reg.example.test\nclients: [ci, laptop]\n",
        "test",
    )
    .unwrap();
    let site = Site {
        dir: tempfile::tempdir().unwrap(),
        config,
        reloads: Arc::new(Mutex::new(Vec::new())),
        t0: OffsetDateTime::now_utc(),
    };
    apply(&site.at(0), &sans(None), CertifyOptions::default()).unwrap();
    site
}

impl Site {
    /// The appliance `days` after first boot.
    fn at(&self, days: i64) -> Appliance<'_> {
        Appliance {
            root: self.dir.path().to_path_buf(),
            config: &self.config,
            now: self.t0 + Duration::days(days),
            proxy: Proxy::Recording(self.reloads.clone(), self.dir.path().to_path_buf()),
            proxy_gid: None,
            sans: Some(sans(None)),
        }
    }

    fn reloads(&self) -> usize {
        self.reloads.lock().unwrap().len()
    }

    /// Whether the proxy's last reload saw the files on disk now.
    fn proxy_serves_what_is_on_disk(&self) -> bool {
        self.reloads.lock().unwrap().last() == Some(&super::proxy::served_bytes(self.dir.path()))
    }

    fn file(&self, path: &std::path::Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }
}

fn action(applied: &Applied, role: &str, name: Option<&str>) -> Action {
    applied
        .certified
        .pki
        .report
        .certificate(role, name)
        .unwrap()
        .action
}

/// nginx could load what is on disk: the pair belongs together and the CRL is the client
/// CA's, not past its nextUpdate at `now`.
fn assert_loadable(app: &Appliance<'_>) {
    let paths = app.pki_paths();
    pki::check_server_pair(&paths).unwrap();
    let crl = pki::read_crl(&paths.client_crl, &paths.client_ca_cert).unwrap();
    assert!(crl.signed_by_ca);
    assert!(crl.next_update.unwrap() > app.now);
}

#[test]
fn day_300_keeps_everything_and_does_not_reload() {
    let site = site();
    let before = site.reloads();
    let applied = apply(&site.at(300), &sans(None), CertifyOptions::default()).unwrap();
    assert_eq!(action(&applied, "server", None), Action::Kept);
    assert_eq!(action(&applied, "client", Some("ci")), Action::Kept);
    assert_eq!(
        applied.certified.pki.crl.action,
        Action::Replaced,
        "day 300 > 30 days of CRL"
    );
    // Only the CRL, signed again, reaches the proxy.
    assert_eq!(site.reloads(), before + 1);
    let again = apply(&site.at(300), &sans(None), CertifyOptions::default()).unwrap();
    assert!(!again.changed_anything());
    assert_eq!(site.reloads(), before + 1, "nothing changed: no reload");
}

#[test]
fn day_370_renews_the_server_and_every_client_and_reloads() {
    let site = site();
    let app = site.at(370);
    let before_pair = site.file(&app.pki_paths().server_pem);
    let before = site.reloads();
    let applied = apply(&app, &sans(None), CertifyOptions::default()).unwrap();
    assert_eq!(action(&applied, "server", None), Action::Replaced);
    assert_eq!(action(&applied, "client", Some("ci")), Action::Replaced);
    assert_eq!(action(&applied, "client", Some("laptop")), Action::Replaced);
    assert_eq!(action(&applied, "server-ca", None), Action::Kept);
    assert_ne!(site.file(&app.pki_paths().server_pem), before_pair);
    assert!(applied.bundles.iter().all(|b| b.action == Action::Replaced));
    assert_eq!(site.reloads(), before + 1);
    assert_loadable(&app);
    // The new certificates end a leaf validity after day 370.
    let ends = applied
        .certified
        .pki
        .report
        .certificate("server", None)
        .unwrap();
    let end = index::parse_time(&ends.not_after).unwrap();
    assert!(end - app.now > Duration::days(390), "{}", ends.not_after);
}

#[test]
fn a_new_address_renews_the_server_only() {
    let site = site();
    let applied = apply(
        &site.at(1),
        &sans(Some("198.51.100.7")),
        CertifyOptions::default(),
    )
    .unwrap();
    assert_eq!(action(&applied, "server", None), Action::Replaced);
    assert_eq!(action(&applied, "client", Some("ci")), Action::Kept);
    // An address that went away does not shrink the certificate.
    let fewer = Sans {
        ip_addresses: vec![],
        ..sans(None)
    };
    let applied = apply(&site.at(2), &fewer, CertifyOptions::default()).unwrap();
    assert_eq!(action(&applied, "server", None), Action::Kept);
}

#[test]
fn the_crl_is_signed_again_when_its_next_update_is_near() {
    let site = site();
    let at = |days| apply(&site.at(days), &sans(None), CertifyOptions::default()).unwrap();
    assert_eq!(at(29).certified.pki.crl.action, Action::Kept);
    let resigned = at(31);
    assert_eq!(resigned.certified.pki.crl.action, Action::Replaced);
    assert!(resigned
        .certified
        .pki
        .crl
        .reason
        .unwrap()
        .contains("nextUpdate"));
    // Past its nextUpdate (a machine off for months): signed again too.
    assert_eq!(at(200).certified.pki.crl.action, Action::Replaced);
}

#[test]
fn revoke_lists_every_unexpired_certificate_of_the_client() {
    let site = site();
    let app = site.at(370);
    // A renewal replaces ci's certificate; the old one has not ended yet.
    apply(&app, &sans(None), CertifyOptions::default()).unwrap();
    let before = site.reloads();
    clients::revoke(&app, "ci").unwrap();
    assert_eq!(
        site.reloads(),
        before + 1,
        "revoke reloads before returning"
    );
    let paths = app.pki_paths();
    let crl = pki::read_crl(&paths.client_crl, &paths.client_ca_cert).unwrap();
    assert_eq!(crl.serials.len(), 2, "the replaced certificate too");
    assert!(!paths.client_cert("ci").exists());
    assert!(!paths.client_key("ci").exists());
    assert!(!bundle_path(&app, "ci").exists());
    // The config still lists ci: it stays revoked.
    let applied = apply(&app, &sans(None), CertifyOptions::default()).unwrap();
    assert_eq!(applied.certified.skipped_revoked, vec!["ci".to_string()]);
    assert!(!paths.client_cert("ci").exists());
}

#[test]
fn a_client_dropped_from_the_config_is_revoked_by_renew() {
    let mut site = site();
    clients::add(&site.at(0), "extra", false).unwrap();
    site.config.clients = vec!["ci".into()];
    let app = site.at(1);
    let applied = apply(
        &app,
        &sans(None),
        CertifyOptions {
            force: false,
            revoke_dropped: true,
        },
    )
    .unwrap();
    assert_eq!(applied.certified.dropped, vec!["laptop".to_string()]);
    let index = app.load_index().unwrap();
    assert_eq!(index.get("laptop").unwrap().state, State::Revoked);
    // Added by hand: the config does not own it.
    assert_eq!(index.get("extra").unwrap().state, State::Active);
}

/// Runs `op` on a fresh site with a crash before each of its filesystem changes in turn;
/// after each crash the files stay loadable, and running `op` again converges on `check`.
fn crash_everywhere(
    op: &dyn Fn(&Appliance<'_>) -> anyhow::Result<String>,
    check: &dyn Fn(&Site, &Appliance<'_>),
) {
    let site = site();
    crash_points::arm(None);
    op(&site.at(370)).unwrap();
    let changes = crash_points::seen();
    assert!(changes > 5, "{changes} changes");
    for k in 1..=changes {
        let site = self::site();
        let app = site.at(370);
        crash_points::arm(Some(k));
        let result = op(&app);
        crash_points::arm(None);
        match result {
            Err(e) => assert!(format!("{e:#}").contains("injected crash"), "{e:#}"),
            // renew's record of its own run is a report, not state: losing it fails nothing.
            Ok(_) => assert!(app.path(RENEW_RECORD_PATH).exists() || k == changes),
        }
        assert_loadable(&site.at(0));
        op(&app).unwrap_or_else(|e| panic!("after a crash before change {k}: {e:#}"));
        assert_loadable(&app);
        check(&site, &app);
        assert!(
            !app.path(RELOAD_PENDING_PATH).exists(),
            "crash before change {k}: reload still owed"
        );
        assert!(
            site.proxy_serves_what_is_on_disk(),
            "crash before change {k}: the proxy was not reloaded after the last change"
        );
    }
}

#[test]
fn renew_force_stopped_anywhere_converges() {
    crash_everywhere(
        &|app| {
            renew::run(
                app,
                Some(sans(None)),
                renew::RenewOptions {
                    dry_run: false,
                    force: true,
                },
            )
        },
        &|_, app| {
            let paths = app.pki_paths();
            // Every client's pair belongs together and its bundle exists.
            for name in ["ci", "laptop"] {
                let pem = std::fs::read_to_string(paths.client_cert(name)).unwrap();
                let (serial, _) = pki::serial_and_end(&pem).unwrap();
                let index = app.load_index().unwrap();
                assert!(index
                    .get(name)
                    .unwrap()
                    .certificates
                    .iter()
                    .any(|c| c.serial == serial));
                assert!(bundle_path(app, name).exists());
            }
        },
    );
}

#[test]
fn revoke_stopped_anywhere_converges() {
    crash_everywhere(&|app| clients::revoke(app, "laptop"), &|_, app| {
        let paths = app.pki_paths();
        let index = app.load_index().unwrap();
        let laptop = index.get("laptop").unwrap();
        assert_eq!(laptop.state, State::Revoked);
        let crl = pki::read_crl(&paths.client_crl, &paths.client_ca_cert).unwrap();
        for cert in &laptop.certificates {
            assert!(
                crl.serials.contains(&cert.serial),
                "{} not in the CRL",
                cert.serial
            );
        }
        assert!(!paths.client_key("laptop").exists());
        assert!(!bundle_path(app, "laptop").exists());
        assert!(bundle_path(app, "ci").exists());
    });
}

#[test]
fn add_stopped_anywhere_converges() {
    crash_everywhere(&|app| clients::add(app, "runner-2", false), &|_, app| {
        let paths = app.pki_paths();
        let pem = std::fs::read_to_string(paths.client_cert("runner-2")).unwrap();
        let (serial, _) = pki::serial_and_end(&pem).unwrap();
        let index = app.load_index().unwrap();
        assert!(index
            .get("runner-2")
            .unwrap()
            .certificates
            .iter()
            .any(|c| c.serial == serial));
        assert!(bundle_path(app, "runner-2").exists());
    });
}

#[test]
fn bad_names_and_repeats_exit_2_and_change_nothing() {
    let site = site();
    let app = site.at(1);

    let index_before = site.file(&app.path(CLIENT_INDEX_PATH));
    let crl_before = site.file(&app.pki_paths().client_crl);
    for e in [
        clients::add(&app, "../evil", false).unwrap_err(),
        clients::add(&app, "ca", false).unwrap_err(),
        clients::add(&app, "ci", false).unwrap_err(),
        clients::revoke(&app, "nobody").unwrap_err(),
    ] {
        assert_eq!(crate::error::exit_code_for(&e), 2, "{e:#}");
    }
    assert_eq!(site.file(&app.path(CLIENT_INDEX_PATH)), index_before);
    assert_eq!(site.file(&app.pki_paths().client_crl), crl_before);
    clients::revoke(&app, "ci").unwrap();
    let e = clients::revoke(&app, "ci").unwrap_err();
    assert_eq!(crate::error::exit_code_for(&e), 2);
    assert!(format!("{e:#}").contains("already revoked"));
    let e = clients::add(&app, "ci", false).unwrap_err();
    assert_eq!(crate::error::exit_code_for(&e), 2);
    assert!(format!("{e:#}").contains("--reissue-revoked"));
    clients::add(&app, "ci", true).unwrap();
    assert!(bundle_path(&app, "ci").exists());
}

#[test]
fn a_crl_with_1000_revoked_serials() {
    let site = site();
    let app = site.at(1);
    let mut index = app.load_index().unwrap();
    for i in 0..1000u32 {
        let name = format!("c{i}");
        index.activate(&name, index::Origin::Added);
        index.record(
            &name,
            &format!("{:032x}", u128::from(i) + (1u128 << 120)),
            "2099-01-01T00:00:00Z",
            app.now,
        );
        index.revoke(&name, app.now);
    }
    app.save_index(&index).unwrap();
    let started = std::time::Instant::now();
    let applied = apply(&app, &sans(None), CertifyOptions::default()).unwrap();
    let took = started.elapsed();
    assert_eq!(applied.certified.pki.crl.revoked, 1000);
    let size = std::fs::metadata(&app.pki_paths().client_crl)
        .unwrap()
        .len();
    println!("CRL with 1000 revoked serials: {size} bytes, signed and written in {took:?}");
    assert!(size < 100 * 1024, "{size}");
    assert_loadable(&app);
}

/// A client added on another node of a cluster is known here but never issued a certificate
/// or a bundle (its key lives there); a revoke merged from another node reaches this node's
/// certificate of the same config client and the CRL; status does not miss the other
/// node's client's certificate.
#[test]
fn clients_of_other_nodes_get_nothing_here_and_their_revokes_reach_the_crl() {
    let site = site();
    let app = site.at(1);
    let local = app.load_index().unwrap();
    let ci_here = local.get("ci").unwrap().certificates[0].serial.clone();
    assert!(local.get("ci").unwrap().certificates[0].issued_at.is_some());
    let mut other = index::Index::default();
    other.activate("ci", index::Origin::Config);
    other.record("ci", "0a", "2099-01-01T00:00:00Z", site.t0);
    other.revoke("ci", app.now);
    other.activate("web", index::Origin::Added);
    other.record("web", "0b", "2099-01-01T00:00:00Z", app.now);
    app.save_index(&cluster::merge::merge(&local, &[other]))
        .unwrap();
    let reloads = site.reloads();
    let applied = apply(&app, &sans(None), CertifyOptions::default()).unwrap();
    assert_eq!(site.reloads(), reloads + 1, "the CRL changed: reload");
    let paths = app.pki_paths();
    assert!(!paths.client_cert("web").exists());
    assert!(!paths.client_key("web").exists());
    assert!(!bundle_path(&app, "web").exists());
    assert!(applied.bundles.iter().all(|b| b.client != "web"));
    assert!(!bundle_path(&app, "ci").exists(), "ci is revoked");
    let crl = crate::pki::read_crl(&paths.client_crl, &paths.client_ca_cert).unwrap();
    assert!(crl.serials.contains(&ci_here), "{:?}", crl.serials);
    assert!(crl.serials.contains(&"0a".to_string()), "{:?}", crl.serials);
    let index = app.load_index().unwrap();
    assert_eq!(index.get("web").unwrap().origin, index::Origin::Cluster);
    assert_eq!(index.get("web").unwrap().state, State::Active);
    let status = status::gather(&app).unwrap();
    assert!(
        !format!("{status:?}").contains("clients/web.crt"),
        "{status:?}"
    );
}
