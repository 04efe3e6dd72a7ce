//! `regimage cluster sync` (issue 12) with the real Distribution registry on loopback: two
//! appliance trees (`render` + `firstboot --no-system`, two `--root`s) sharing ONE registry
//! stand for two nodes on shared storage (filesystem storage here; the hidden
//! `--shared-storage` makes sync run without s3). Node A (tests/common/loopback.rs, with its
//! nginx) adds and revokes clients; node B's sync takes them in.
//!
//! Needs root, nginx, docker-registry, skopeo, curl, openssl: `make test` runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::client::assert_registry_error;
use common::loopback::{self, Loopback};
use common::{output, print_run, regimage, run_ok, s, test_dir};

/// A second node: its own tree with the same config (same registry port), and A's CAs, as
/// a node that joined A's cluster has them.
struct NodeB {
    root: PathBuf,
    config: PathBuf,
    /// Touched by B's --reload-command (B runs no nginx).
    reloaded: PathBuf,
    _dir: tempfile::TempDir,
}

impl NodeB {
    fn new(a: &Loopback) -> NodeB {
        let dir = test_dir("regimage-node-b-");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("creating B's root");
        let config = dir.path().join("regimage.yaml");
        std::fs::copy(&a.config, &config).expect("copying A's config");
        run_ok(
            regimage()
                .args(["render", "--root"])
                .arg(&root)
                .arg("-c")
                .arg(&config),
        );
        for rel in [
            "etc/registry/certs/ca/ca.crt",
            "etc/registry/certs/private/ca.key",
            "etc/registry/certs/clients/ca.crt",
            "etc/registry/certs/private/client-ca.key",
        ] {
            let to = root.join(rel);
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("creating dirs");
            std::fs::copy(a.root.join(rel), &to).expect("copying A's CAs");
        }
        run_ok(
            regimage()
                .args(["firstboot", "--no-system", "--root"])
                .arg(&root)
                .arg("-c")
                .arg(&config),
        );
        let done = root.join(regimage::render::FIRSTBOOT_DONE_PATH.trim_start_matches('/'));
        if !done.exists() {
            std::fs::write(&done, "first boot finished (tests/cluster_sync.rs)\n")
                .expect("writing firstboot.done");
        }
        NodeB {
            reloaded: dir.path().join("reloaded"),
            root,
            config,
            _dir: dir,
        }
    }

    fn regimage(&self, args: &[&str]) -> Command {
        let mut cmd = regimage();
        cmd.args(args)
            .arg("--root")
            .arg(&self.root)
            .arg("-c")
            .arg(&self.config);
        cmd
    }

    /// `cluster sync` on B, reloading by touching [`NodeB::reloaded`]; stdout and the time.
    fn sync(&self) -> (String, f64) {
        let _ = std::fs::remove_file(&self.reloaded);
        let mut cmd = self.regimage(&["cluster", "sync", "--shared-storage"]);
        cmd.arg("--reload-command")
            .arg(format!("touch '{}'", s(&self.reloaded)));
        let t = Instant::now();
        let out = run_ok(&mut cmd);
        let took = t.elapsed().as_secs_f64();
        (print_run("B: cluster sync", &out), took)
    }
}

#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn a_revoke_and_an_add_on_one_node_reach_the_other() {
    let a = loopback::start("");
    a.mark_first_boot_done();
    let b = NodeB::new(&a);

    // The public ports never serve the nodes' state, with or without a client certificate.
    run_ok(&mut a.regimage(&["cluster", "sync", "--shared-storage"]));
    let tags = a.client.pull_url("/v2/regimage-cluster/state/tags/list");
    let reply = a.client.curl(&[], &tags);
    assert_eq!(reply.code, 404, "{}", reply.body);
    assert_registry_error(&reply.body, "UNSUPPORTED");
    let reply = a.client.curl_tls(
        &[],
        &a.client.push_url("/v2/regimage-cluster/state/tags/list"),
    );
    assert_eq!(reply.code, 404, "{}", reply.body);
    assert_registry_error(&reply.body, "UNSUPPORTED");
    let reply = a.client.curl_tls(
        &["-X", "POST"],
        &a.client
            .push_url("/v2/regimage-cluster/state/blobs/uploads/"),
    );
    assert_eq!(reply.code, 404, "a client may not forge a node's state");
    // While the registry itself has the tag A published.
    let direct = format!(
        "http://127.0.0.1:{}/v2/regimage-cluster/state/tags/list",
        a.registry_port
    );
    let listed = run_ok(Command::new("curl").args(["-sf", &direct]));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("node-"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    // A adds `web` and revokes `ci` (a config client B issued its own certificate to).
    run_ok(&mut a.regimage(&["client", "add", "web"]));
    let a_ci_serial = index_serials(&a.root, "ci");
    run_ok(&mut a.regimage_reloading(&["client", "revoke", "ci"]));
    // With filesystem storage client add/revoke do not publish; A's timer run does.
    print_run(
        "A: cluster sync",
        &run_ok(&mut a.regimage(&["cluster", "sync", "--shared-storage"])),
    );
    let b_ci_serial = index_serials(&b.root, "ci");
    assert_eq!(b_ci_serial.len(), 1, "B issued ci its own certificate");
    assert_ne!(a_ci_serial, b_ci_serial);

    let (said, took) = b.sync();
    println!("FIGURE cluster sync with changes (B): {took:.2} s");
    assert!(said.contains("client ci: revoked"), "{said}");
    assert!(said.contains("client web: added on another node"), "{said}");
    assert!(said.contains("1 other node(s) seen"), "{said}");
    assert!(b.reloaded.exists(), "B's proxy was not reloaded:\n{said}");

    // ci: revoked in B's index, A's and B's certificates in B's CRL, B's bundle gone.
    let list = client_list(&b);
    let ci = entry(&list, "ci");
    assert_eq!(ci["state"], "revoked", "{list}");
    let crl = crl_serials(&b.root);
    for serial in a_ci_serial.iter().chain(&b_ci_serial) {
        assert!(crl.contains(serial), "B's CRL lacks {serial}: {crl:?}");
    }
    assert!(!b.root.join("var/lib/regimage/out/ci.tar.gz").exists());
    assert!(!b.root.join("etc/registry/certs/clients/ci.crt").exists());
    // web: known to B, from the cluster, no certificate or bundle of B's.
    let web = entry(&list, "web");
    assert_eq!(web["state"], "active", "{list}");
    assert_eq!(web["origin"], "cluster", "{list}");
    assert!(!b.root.join("var/lib/regimage/out/web.tar.gz").exists());
    assert!(!b.root.join("etc/registry/certs/clients/web.crt").exists());
    assert!(!b
        .root
        .join("etc/registry/certs/private/client-web.key")
        .exists());
    // B does not issue web a bundle of its own by accident.
    let out = output(&mut b.regimage(&["client", "add", "web"]));
    print_run("B: client add web", &out);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("added on another node"));
    assert!(!b.root.join("var/lib/regimage/out/web.tar.gz").exists());
    // B's state: node-id 0600 in a 0700 directory.
    let id = b.root.join("var/lib/regimage/cluster/node-id");
    assert_eq!(mode(&id), 0o600);
    assert_eq!(mode(id.parent().expect("a parent")), 0o700);

    // Nothing new: no change, no reload, nothing pushed.
    let (said, took) = b.sync();
    println!("FIGURE cluster sync with nothing to do (B): {took:.2} s");
    assert!(said.contains("0 change(s)"), "{said}");
    assert!(said.contains("already published"), "{said}");
    assert!(!b.reloaded.exists(), "B reloaded for nothing:\n{said}");

    // A takes in B's state: B's certificate of ci is revoked on A too.
    let said = print_run(
        "A: cluster sync",
        &run_ok(&mut a.regimage_reloading(&["cluster", "sync", "--shared-storage"])),
    );
    assert!(said.contains("1 other node(s) seen"), "{said}");
    let crl = crl_serials(&a.root);
    for serial in &b_ci_serial {
        assert!(crl.contains(serial), "A's CRL lacks B's {serial}: {crl:?}");
    }
    // A's `web` stays A's own.
    let list = client_list_at(&a.regimage(&["client", "list", "--json"]));
    assert_eq!(entry(&list, "web")["origin"], "added", "{list}");
}

/// Filesystem storage without the test seam: no cluster, exit 0.
#[test]
#[ignore = "needs root, nginx, docker-registry, skopeo, curl: run by `make test`"]
fn sync_without_shared_storage_says_there_is_no_cluster() {
    let a = loopback::start("");
    a.mark_first_boot_done();
    let out = run_ok(&mut a.regimage(&["cluster", "sync"]));
    let said = print_run("A: cluster sync", &out);
    assert!(said.contains("no cluster"), "{said}");
    assert!(!a.root.join("var/lib/regimage/cluster/node-id").exists());
}

/// The serials the client index under `root` holds for `name`.
fn index_serials(root: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("var/lib/regimage/clients.json"))
        .expect("reading clients.json");
    let index: serde_json::Value = serde_json::from_str(&text).expect("clients.json is JSON");
    index["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter(|c| c["name"] == name)
        .flat_map(|c| c["certificates"].as_array().cloned().unwrap_or_default())
        .map(|c| norm(c["serial"].as_str().unwrap_or("")))
        .collect()
}

/// The serials clients/crl.pem under `root` lists (see [`norm`]).
fn crl_serials(root: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(root.join("etc/registry/certs/clients/crl.pem")),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(norm)
        .collect()
}

/// A serial as lowercase hex without leading zeros (openssl and the index differ there).
fn norm(serial: &str) -> String {
    serial
        .trim()
        .to_lowercase()
        .trim_start_matches('0')
        .to_string()
}

fn client_list(b: &NodeB) -> serde_json::Value {
    client_list_at(&b.regimage(&["client", "list", "--json"]))
}

fn client_list_at(cmd: &Command) -> serde_json::Value {
    let mut cmd = copy(cmd);
    let out = output(&mut cmd);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("client list --json is JSON")
}

fn copy(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    c
}

fn entry<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}
