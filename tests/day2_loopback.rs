//! Day 2 on loopback (issue 11), with the real parts of tests/proxy_loopback.rs: the
//! Distribution registry behind the real nginx running the rendered config, the site made by
//! `regimage render` and `firstboot --no-system` (tests/common/loopback.rs). `regimage renew`,
//! `client add|revoke|list` and `status` run on that site's files (`--root`, `-c`), and reload
//! that nginx as the unit's `ExecReload=` does (`--reload-command`, `Loopback::reload_command`).
//! curl, skopeo and openssl are the clients.
//!
//! Needs root (nginx binds, files owned by root), nginx, docker-registry, skopeo, curl,
//! openssl, ~1.5 GB of disk: `make test` runs it (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::blob::Blob;
use common::client::{assert_registry_error, Client};
use common::loopback::{self, file_cert_sha256, served_cert_sha256, Loopback};
use common::vm::progress;
use common::{output, print_run, run_ok, s};

const MIB: u64 = 1024 * 1024;
/// The size of each blob in flight during the reload (the figure).
const TRANSFER_LEN: u64 = 512 * MIB;
/// curl's --limit-rate for those transfers: 512 MiB at 20 MiB/s lasts ~26 s, so both are
/// still going when renew reloads nginx a few seconds in.
const TRANSFER_RATE: &str = "20M";
/// How long a reload may take to show on new connections after the command returned.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// `renew --force` re-issues the server certificate and every client's and reloads nginx
/// gracefully while a 512 MiB download (pull port) and a 512 MiB upload (push port) are in
/// flight: both complete with the right digest, the nginx master stays, its old workers
/// finish the transfers, new connections get the new certificate.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn renew_force_reloads_while_blobs_are_in_flight() {
    let setup = start();
    let client = &setup.client;

    // The blob to download, pushed at full speed beforehand.
    let t = Instant::now();
    let down = client.push_blob("day2/down", &mut Blob::seeded(TRANSFER_LEN, 1), &[]);
    progress(&format!(
        "pushed the 512 MiB blob to download in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let cert_file = setup.root.join("etc/registry/certs/registry.crt");
    let old_cert = served_cert_sha256(client.pull);
    assert_eq!(
        old_cert,
        file_cert_sha256(&cert_file),
        "the pull port does not serve registry.crt before renew"
    );
    let master = setup.nginx_master_pid();
    let old_workers = setup.nginx_workers();
    assert!(!old_workers.is_empty(), "nginx has no workers");
    let old_bundle = std::fs::read(setup.bundle("ci")).expect("reading ci's bundle");

    let limit = ["--limit-rate", TRANSFER_RATE];
    let started = Instant::now();
    let (renewed, download, upload) = std::thread::scope(|scope| {
        let download = scope.spawn(|| {
            let got = client.pull_blob_digest("day2/down", &down, &limit);
            (got, started.elapsed())
        });
        let upload = scope.spawn(|| {
            let location = client.start_upload("day2/up");
            let (patch, digest) =
                client.patch_streamed(&location, &mut Blob::seeded(TRANSFER_LEN, 2), &limit);
            (patch, digest, started.elapsed())
        });
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            !download.is_finished() && !upload.is_finished(),
            "a transfer ended within 5 s (it failed, or --limit-rate {TRANSFER_RATE} did not slow it)"
        );

        let t = Instant::now();
        let out = output(&mut setup.regimage_reloading(&["renew", "--force"]));
        let renew_secs = t.elapsed().as_secs_f64();
        let renewed = started.elapsed();
        let stdout = print_run("renew --force", &out);
        assert!(out.status.success(), "renew --force failed: {}", out.status);
        progress(&format!("renew --force took {renew_secs:.2} s"));
        let reload = reload_line(&stdout);
        println!("FIGURE renew --force: {reload}");

        // New connections get the new certificate, the one registry.crt holds.
        let new_cert = file_cert_sha256(&cert_file);
        assert_ne!(
            new_cert, old_cert,
            "renew --force kept the server certificate"
        );
        // registry.pem (what nginx loads: the key, then the certificate) holds the same one.
        assert_eq!(
            file_cert_sha256(&setup.root.join("etc/registry/certs/private/registry.pem")),
            new_cert,
            "registry.pem and registry.crt hold different certificates"
        );
        at_once("the pull port serves the new certificate", || {
            served_cert_sha256(client.pull) == new_cert
        });
        assert_eq!(served_cert_sha256(client.push), new_cert, "the push port");

        // A graceful reload: the same master, new workers, old ones still busy with the
        // transfers (nginx names them "worker process is shutting down").
        assert_eq!(setup.nginx_master_pid(), master, "the nginx master changed");
        let workers = setup.nginx_workers();
        assert!(
            workers.keys().any(|pid| !old_workers.contains_key(pid)),
            "no new nginx worker after the reload: {workers:?}"
        );
        assert!(
            workers.iter().any(
                |(pid, title)| old_workers.contains_key(pid) && title.contains("shutting down")
            ),
            "no old worker is finishing the transfers: before {old_workers:?}, now {workers:?}"
        );
        (
            renewed,
            download.join().expect("the download"),
            upload.join().expect("the upload"),
        )
    });

    // Both transfers outlived renew (they were in flight during the reload) and are whole.
    let ((code, got), down_done) = download;
    let (patch, up_digest, up_done) = upload;
    println!(
        "FIGURE transfers: renew returned at {:.1} s, download done at {:.1} s, upload at {:.1} s",
        renewed.as_secs_f64(),
        down_done.as_secs_f64(),
        up_done.as_secs_f64()
    );
    assert!(
        down_done > renewed && up_done > renewed,
        "a transfer ended before renew returned: not in flight during the reload"
    );
    assert_eq!(code, 200, "the download's status");
    assert_eq!(got, down, "the downloaded bytes have another digest");
    client.finish_upload(&patch, &up_digest);
    client.assert_blob("day2/up", &up_digest, TRANSFER_LEN);
    assert_eq!(setup.nginx_master_pid(), master, "the nginx master changed");

    // ci's bundle was rewritten with its new certificate, which the push port takes.
    let new_bundle = std::fs::read(setup.bundle("ci")).expect("reading ci's bundle");
    assert_ne!(new_bundle, old_bundle, "renew --force kept ci's bundle");
    let renewed_ci = setup.install_client("ci");
    assert_ne!(
        std::fs::read(&renewed_ci.cert).expect("reading the new cert"),
        std::fs::read(&client.cert).expect("reading the old cert"),
        "ci's new bundle holds its old certificate"
    );
    assert_push_accepted(&renewed_ci);
    // The new blobs go now, even with REGIMAGE_KEEP_TEST_DIRS.
    std::fs::remove_dir_all(setup.work.join("registry-data/docker/registry/v2/blobs"))
        .expect("removing the registry's blobs");
}

/// `client add` issues a bundle that pushes; `client revoke` makes the push port refuse it
/// (400 with a JSON body) from the moment it returns, removes the bundle, and leaves the other
/// clients alone; a second revoke, and an add of the revoked name, are refused (exit 2)
/// unless re-issued on purpose.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn client_add_then_revoke_refuses_only_that_client() {
    let setup = start();
    let master = setup.nginx_master_pid();

    let t = Instant::now();
    let out = run_ok(&mut setup.regimage(&["client", "add", "ci2"]));
    println!("FIGURE client add: {:.2} s", t.elapsed().as_secs_f64());
    let stdout = print_run("client add ci2", &out);
    let bundle = setup.bundle("ci2");
    assert!(bundle.is_file(), "no {}", bundle.display());
    assert!(
        stdout.contains(&s(&bundle)) || stdout.contains("ci2.tar.gz"),
        "client add does not print the bundle path:\n{stdout}"
    );
    let ci2 = setup.install_client("ci2");
    ci2.push_and_pull("day2/ci2", "pushed by ci2\n");
    // client list --json: ci2 as its certificate says, ci from the config.
    let list = client_list(&setup);
    let entry = client_entry(&list, "ci2");
    assert_eq!(entry["state"], "active", "{list}");
    assert_eq!(entry["origin"], "added", "{list}");
    assert!(entry["revoked_at"].is_null(), "{list}");
    let (serial, end) = cert_serial_and_end(&ci2.cert);
    assert_eq!(
        entry["serial"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('0')
            .to_lowercase(),
        serial,
        "{list}"
    );
    assert_eq!(
        unix(entry["not_after"].as_str().unwrap_or("")),
        end,
        "{list}"
    );
    assert_eq!(client_entry(&list, "ci")["origin"], "config", "{list}");

    let t = Instant::now();
    let out = run_ok(&mut setup.regimage_reloading(&["client", "revoke", "ci2"]));
    println!("FIGURE client revoke: {:.2} s", t.elapsed().as_secs_f64());
    let said = print_run("client revoke ci2", &out);
    println!("FIGURE client revoke: {}", reload_line(&said));
    // "Refused from then on": the first request after revoke returned.
    at_once("the push port refuses ci2", || {
        ci2.curl_tls(&[], &ci2.push_url("/v2/")).code == 400
    });
    let reply = ci2.curl_tls(&[], &ci2.push_url("/v2/"));
    assert_registry_error(&reply.body, "DENIED");
    let out = output(ci2.skopeo(&ci2.home).args([
        "copy",
        "--quiet",
        &format!("oci:{}:v1", s(&ci2.src_image("day2/ci2"))),
        &format!("docker://{}/day2/ci2:v2", ci2.names.registry(ci2.push)),
    ]));
    assert!(!out.status.success(), "ci2 still pushes after revoke");
    assert!(!bundle.exists(), "revoke left {}", bundle.display());
    let list = client_list(&setup);
    let entry = client_entry(&list, "ci2");
    assert_eq!(entry["state"], "revoked", "{list}");
    assert!(entry["revoked_at"].is_string(), "{list}");
    assert_eq!(client_entry(&list, "ci")["state"], "active", "{list}");
    assert_eq!(setup.nginx_master_pid(), master, "the nginx master changed");

    // The other client still pushes.
    setup
        .client
        .push_and_pull("day2/ci", "pushed by ci after the revoke\n");

    // Refusals: exit 2, nothing changed.
    let crl = crl_path(&setup.root);
    let crl_before = std::fs::read(&crl).expect("reading the CRL");
    for (args, why) in [
        (&["client", "revoke", "ci2"][..], "a second revoke"),
        (&["client", "revoke", "nobody"][..], "an unknown name"),
        (&["client", "add", "ci2"][..], "adding a revoked name"),
        (&["client", "add", "Not A Name!"][..], "an invalid name"),
        (&["client", "add", "ci"][..], "an active client"),
    ] {
        let out = output(&mut setup.regimage_reloading(args));
        print_run(why, &out);
        assert_eq!(out.status.code(), Some(2), "{why}: {args:?}");
        assert!(!out.stderr.is_empty(), "{why}: no message");
    }
    assert_eq!(std::fs::read(&crl).expect("reading the CRL"), crl_before);
    assert!(!bundle.exists(), "a refused add wrote {}", bundle.display());

    // Re-issued on purpose: a new certificate, which the push port takes.
    run_ok(&mut setup.regimage(&["client", "add", "ci2", "--reissue-revoked"]));
    assert!(bundle.is_file(), "--reissue-revoked wrote no bundle");
    let again = setup.install_client("ci2");
    assert_push_accepted(&again);
    assert_eq!(client_state(&setup, "ci2"), "active");
}

/// An expired CRL makes nginx refuse every client; plain `renew` re-signs it and reloads,
/// and pushes work again; `status --json` reports the CRL's nextUpdate.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn renew_re_signs_an_expired_crl() {
    let setup = start();
    let client = &setup.client;
    let crl = crl_path(&setup.root);

    // First boot's CRL; its lifetime tells how far back a CRL must be signed to have expired.
    let (last, next) = crl_dates(&crl);
    let now = unix_now();
    assert!(next > now, "first boot's CRL has expired already");
    let status = assert_status_ready(&setup);
    assert_eq!(status_crl_next_update(&status), next, "{status}");
    assert_eq!(
        status["server_ca_sha256"],
        file_cert_sha256(&client.server_ca),
        "status --json's server CA is not the bundle's: {status}"
    );
    let back_days = (next - last) / 86_400 + 10;
    let then = rfc3339_days_ago(back_days);
    println!(
        "FIGURE the CRL lasts {} days; signing one at {then}",
        (next - last) / 86_400
    );

    // A client added and revoked `back_days` ago: the CRL signed then has expired now.
    run_ok(&mut setup.regimage(&["client", "add", "ci3", "--now", &then]));
    let ci3 = setup.install_client("ci3");
    run_ok(&mut setup.regimage_reloading(&["client", "revoke", "ci3", "--now", &then]));
    let (_, next) = crl_dates(&crl);
    assert!(
        next < unix_now(),
        "the CRL revoke signed at {then} has not expired"
    );

    // nginx refuses every client with an expired CRL (OpenSSL: "CRL has expired").
    at_once("the push port refuses ci with an expired CRL", || {
        client.curl_tls(&[], &client.push_url("/v2/")).code == 400
    });
    let reply = client.curl_tls(&[], &client.push_url("/v2/"));
    assert_registry_error(&reply.body, "DENIED");
    let (code, status) = status_json(&setup);
    assert_eq!(status_crl_next_update(&status), next, "{status}");
    let problems = status["problems"].to_string().to_lowercase();
    assert!(
        problems.contains("crl") || problems.contains("revocation"),
        "status --json does not report the expired CRL as a problem: {status}"
    );
    assert_eq!(code, 1, "status with an expired CRL: {status}");

    // renew on the real clock re-signs it and reloads: ci pushes again, ci3 stays refused.
    let t = Instant::now();
    let out = output(&mut setup.regimage_reloading(&["renew"]));
    let renew_secs = t.elapsed().as_secs_f64();
    let stdout = print_run("renew", &out);
    assert!(out.status.success(), "renew failed: {}", out.status);
    println!("FIGURE renew (CRL re-signed): {renew_secs:.2} s");
    let said = stdout.to_lowercase();
    assert!(
        said.lines()
            .any(|l| l.contains("crl") && !l.contains("kept")),
        "renew does not say it signed the CRL again:\n{stdout}"
    );
    println!("FIGURE renew: {}", reload_line(&stdout));
    let (last, next) = crl_dates(&crl);
    let now = unix_now();
    assert!(
        next > now + 86_400,
        "renew left the CRL's nextUpdate at {next} (now {now})"
    );
    assert!(
        (last - now).abs() < 3_600,
        "the re-signed CRL's lastUpdate is {last} (now {now})"
    );
    at_once("the push port takes ci again", || {
        client.curl_tls(&[], &client.push_url("/v2/")).code == 200
    });
    client.push_and_pull("day2/after-crl", "pushed after the CRL was re-signed\n");
    let reply = ci3.curl_tls(&[], &ci3.push_url("/v2/"));
    assert_eq!(
        reply.code, 400,
        "ci3 is taken after the CRL was re-signed: {}",
        reply.body
    );
    let status = assert_status_ready(&setup);
    assert_eq!(status_crl_next_update(&status), next, "{status}");
    assert!(
        status["last_renew"]["finished_at"].is_string() && status["last_renew"]["error"].is_null(),
        "status --json's last_renew: {status}"
    );
}

/// Before first boot finished (no firstboot.done), `renew` says so, exits 0 and changes
/// nothing (the contract: the timer may fire before first boot is done).
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn renew_before_first_boot_finished_changes_nothing() {
    let setup = start();
    let marker = setup.first_boot_marker();
    std::fs::remove_file(&marker).expect("removing firstboot.done");
    let certs = setup.root.join("etc/registry/certs");
    let before = tree_bytes(&certs);
    let out = output(&mut setup.regimage_reloading(&["renew", "--force"]));
    let said = print_run("renew --force before first boot finished", &out);
    assert!(
        out.status.success(),
        "renew before first boot: {}",
        out.status
    );
    let said = format!("{said}{}", String::from_utf8_lossy(&out.stderr)).to_lowercase();
    assert!(
        said.contains("first boot") || said.contains("firstboot"),
        "renew does not say first boot has not finished: {said}"
    );
    assert!(
        tree_bytes(&certs) == before,
        "renew changed the certificates before first boot finished"
    );
}

/// Revoked serials the big-CRL test adds (the figure).
const MANY_REVOKED: usize = 1000;

/// A CRL of 1,000 revoked serials, signed by `renew` from the client index, loads in the
/// real nginx: `nginx -t` and the reload stay quick (the figures), a client outside the list
/// still pushes and one in it is refused.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn a_crl_of_1000_serials_loads_and_refuses_only_those() {
    let setup = start();
    let client = &setup.client;
    let crl = crl_path(&setup.root);
    let nginx_t = || {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                run_ok(
                    Command::new("sh")
                        .arg("-c")
                        .arg(setup.config_test_command()),
                );
                t.elapsed()
            })
            .min()
            .expect("three runs")
    };
    let load_before = nginx_t();
    let size_before = std::fs::metadata(&crl).expect("the CRL").len();

    // One real client revoked (its certificate must stay refused), then 1,000 revoked
    // clients recorded in the index, as 1,000 `client revoke` runs would leave it.
    run_ok(&mut setup.regimage(&["client", "add", "gone"]));
    let gone = setup.install_client("gone");
    run_ok(&mut setup.regimage_reloading(&["client", "revoke", "gone"]));
    let index_path = setup.root.join("var/lib/regimage/clients.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("reading clients.json"))
            .expect("clients.json is JSON");
    let revoked_at = rfc3339_days_ago(1);
    let clients = index["clients"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("clients.json has no clients list"));
    for i in 0..MANY_REVOKED {
        clients.push(serde_json::json!({
            "name": format!("old-{i}"),
            "origin": "added",
            "state": "revoked",
            "revoked_at": revoked_at,
            "certificates": [{
                "serial": format!("{:032x}", (1u128 << 120) + i as u128),
                "not_after": "2099-01-01T00:00:00Z",
                "revoked_at": revoked_at,
            }],
        }));
    }
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("encoding"),
    )
    .expect("writing clients.json");

    let out = run_ok(&mut setup.regimage_reloading(&["renew"]));
    let said = print_run("renew with 1,000 more revoked serials", &out);
    let reload = reload_line(&said);
    let listed = revoked_in_crl(&crl);
    assert_eq!(listed, MANY_REVOKED + 1, "serials in the CRL");
    let load_after = nginx_t();
    let size_after = std::fs::metadata(&crl).expect("the CRL").len();
    println!(
        "FIGURE CRL of {listed} revoked serials: {size_after} bytes (first boot's: {size_before}); \
         nginx -t {:.0} ms with it, {:.0} ms with first boot's; renew's {reload}",
        ms(load_after),
        ms(load_before)
    );
    assert_push_accepted(client);
    client.push_and_pull("day2/big-crl", "pushed past a CRL of 1,001 serials\n");
    let reply = gone.curl_tls(&[], &gone.push_url("/v2/"));
    assert_eq!(reply.code, 400, "a revoked client is taken: {}", reply.body);
    assert_registry_error(&reply.body, "DENIED");
    assert_status_ready(&setup);
}

/// A client the site config no longer lists is revoked by the next `renew` (refused at once,
/// its bundle gone); listing it again does not issue it again.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn renew_revokes_a_client_the_config_dropped() {
    let setup = start_with("clients: [ci, ci4]\n");
    let ci4 = setup.install_client("ci4");
    assert_push_accepted(&ci4);
    let config = std::fs::read_to_string(&setup.config).expect("reading the config");
    let set_clients = |list: &str| {
        let text = config.replace("clients: [ci, ci4]", &format!("clients: [{list}]"));
        std::fs::write(&setup.config, text).expect("writing the config");
    };

    set_clients("ci");
    let out = run_ok(&mut setup.regimage_reloading(&["renew"]));
    let said = print_run("renew without ci4 in the config", &out);
    println!("FIGURE renew: {}", reload_line(&said));
    assert!(
        said.lines()
            .any(|l| l.contains("ci4") && l.contains("revoked")),
        "renew does not say it revoked ci4:\n{said}"
    );
    at_once("the push port refuses ci4", || {
        ci4.curl_tls(&[], &ci4.push_url("/v2/")).code == 400
    });
    let reply = ci4.curl_tls(&[], &ci4.push_url("/v2/"));
    assert_registry_error(&reply.body, "DENIED");
    assert!(!setup.bundle("ci4").exists(), "ci4's bundle is still there");
    assert_eq!(client_state(&setup, "ci4"), "revoked");
    assert_push_accepted(&setup.client);

    // Listed again: not issued again by accident (client add --reissue-revoked does it).
    // Nothing nginx serves changes, so nginx is not reloaded (the same workers).
    set_clients("ci, ci4");
    let workers = setup.nginx_workers();
    let out = run_ok(&mut setup.regimage_reloading(&["renew"]));
    assert_eq!(
        setup.nginx_workers(),
        workers,
        "renew reloaded nginx although nothing it serves changed"
    );
    let said = print_run("renew with ci4 listed again", &out);
    assert!(
        said.contains("--reissue-revoked"),
        "renew does not say how to issue ci4 again:\n{said}"
    );
    assert_eq!(client_state(&setup, "ci4"), "revoked");
    assert!(
        !setup.bundle("ci4").exists(),
        "renew wrote ci4's bundle again"
    );
    let reply = ci4.curl_tls(&[], &ci4.push_url("/v2/"));
    assert_eq!(reply.code, 400, "ci4 is taken again: {}", reply.body);
}

/// The loopback site with first boot marked done (the day-2 commands wait for it).
fn start() -> Loopback {
    start_with("")
}

/// [`start`] with `extra_config` appended to the site config.
fn start_with(extra_config: &str) -> Loopback {
    let setup = loopback::start(extra_config);
    if !setup.mark_first_boot_done() {
        progress("firstboot --no-system wrote no firstboot.done: the test wrote it");
    }
    setup
}

/// The line of a command's output saying the proxy was reloaded (not "not reloaded").
fn reload_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| {
            let l = l.to_lowercase();
            l.contains("reloaded") && !l.contains("not reloaded") && !l.contains("not running")
        })
        .unwrap_or_else(|| panic!("no line says the proxy was reloaded:\n{stdout}"))
        .to_string()
}

/// The push port answers `client`'s certificate (GET /v2/, 200).
fn assert_push_accepted(client: &Client) {
    let reply = client.curl_tls(&[], &client.push_url("/v2/"));
    assert_eq!(
        reply.code, 200,
        "the push port refused {}'s certificate: {}",
        client.name, reply.body
    );
}

/// `what` holds on the first look after the command returned (the day-2 commands wait for
/// nginx's new workers before returning); when not, how long it took, or that it never came
/// within [`RELOAD_WAIT`], is the failure.
fn at_once(what: &str, mut ok: impl FnMut() -> bool) {
    if ok() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < RELOAD_WAIT {
        std::thread::sleep(Duration::from_millis(50));
        if ok() {
            panic!(
                "not yet when the command returned: {what} {:.0} ms later",
                ms(start.elapsed())
            );
        }
    }
    panic!("{what}: not within {RELOAD_WAIT:?} after the command returned");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Every file under `dir` and its bytes.
fn tree_bytes(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("listing a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("reading a file");
                files.insert(path, bytes);
            }
        }
    }
    files
}

/// A certificate's serial (lowercase hex, no leading zeros) and notAfter (Unix seconds),
/// as `openssl x509` reads them.
fn cert_serial_and_end(cert: &Path) -> (String, i64) {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-enddate", "-in"])
            .arg(cert),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("openssl x509 printed no {name}: {text}"))
            .to_string()
    };
    let serial = field("serial=").trim_start_matches('0').to_lowercase();
    (serial, unix(&field("notAfter=")))
}

/// How many serials the CRL at `crl` lists (`openssl crl -text`).
fn revoked_in_crl(crl: &Path) -> usize {
    let out = run_ok(
        Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(crl),
    );
    String::from_utf8_lossy(&out.stdout)
        .matches("Serial Number:")
        .count()
}

fn crl_path(root: &Path) -> PathBuf {
    root.join("etc/registry/certs/clients/crl.pem")
}

/// The CRL's lastUpdate and nextUpdate (Unix seconds), as `openssl crl` reads them.
fn crl_dates(crl: &Path) -> (i64, i64) {
    let out = run_ok(
        Command::new("openssl")
            .args(["crl", "-noout", "-lastupdate", "-nextupdate", "-in"])
            .arg(crl),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("openssl crl printed no {name}: {text}"));
        unix(line)
    };
    let dates = (field("lastUpdate="), field("nextUpdate="));
    println!("CRL {}: {}", crl.display(), text.replace('\n', " "));
    dates
}

/// A date as `date -d` reads it (openssl's and RFC 3339), in Unix seconds.
fn unix(date: &str) -> i64 {
    assert!(!date.is_empty(), "no date");
    let out = run_ok(Command::new("date").args(["-u", "-d", date, "+%s"]));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date +%s prints a number")
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `days` days ago, in RFC 3339 (what `--now` takes).
fn rfc3339_days_ago(days: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::days(days))
        .replace_nanosecond(0)
        .expect("a whole second")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting a date")
}

/// `status --json` (with the reload command, so it sees this nginx) and its exit status.
fn status_json(setup: &Loopback) -> (i32, serde_json::Value) {
    let out = output(&mut setup.regimage_reloading(&["status", "--json"]));
    let text = String::from_utf8_lossy(&out.stdout);
    let status = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "status --json ({}) is not JSON ({e}): {text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), status)
}

/// `status --json` says all is well: exit 0, ready, no problems, the proxy running.
fn assert_status_ready(setup: &Loopback) -> serde_json::Value {
    let (code, status) = status_json(setup);
    assert_eq!(code, 0, "status --json: {status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
    assert_eq!(status["proxy"]["active"], true, "{status}");
    assert_eq!(
        status["proxy"]["main_pid"],
        setup.nginx_master_pid(),
        "{status}"
    );
    status
}

/// status's `crl.next_update`, in Unix seconds.
fn status_crl_next_update(status: &serde_json::Value) -> i64 {
    let next = status["crl"]["next_update"]
        .as_str()
        .unwrap_or_else(|| panic!("no crl.next_update: {status}"));
    unix(next)
}

/// `client list --json`.
fn client_list(setup: &Loopback) -> serde_json::Value {
    let out = run_ok(&mut setup.regimage(&["client", "list", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client list --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The entry of `name` in a `client list --json`.
fn client_entry<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("no clients list: {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
}

/// The state `client list --json` gives `name`.
fn client_state(setup: &Loopback, name: &str) -> String {
    let list = client_list(setup);
    client_entry(&list, name)["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no state for {name}: {list}"))
        .to_string()
}
