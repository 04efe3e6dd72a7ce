//! Who may run it, and the `--no-system` mode.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

#[test]
fn only_root_runs_the_real_thing() {
    let e = check_privileges(false, false).unwrap_err().to_string();
    assert!(
        e.contains("must run as root") && e.contains("--dry-run"),
        "{e}"
    );
    check_privileges(false, true).unwrap();
    check_privileges(true, false).unwrap();
}

#[test]
fn root_must_be_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let args = |root: PathBuf| Mode::NoSystem { root };
    let missing = dir.path().join("nope");
    let e = run(None, args(missing.clone())).unwrap_err();
    assert!(
        e.is::<UsageError>() && e.to_string().contains("no such directory"),
        "{e}"
    );
    assert!(!missing.exists());
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = run(None, args(file)).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn no_system_writes_pki_and_bundles_under_root() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        hostname: Some("reg.example.test".into()),
        clients: vec!["ci".into(), "laptop".into()],
        ..Config::default()
    };
    let outcome = run_no_system(dir.path(), &config).unwrap();
    assert_eq!(outcome.sans.primary_name, "reg.example.test");
    assert!(dir.path().join("etc/registry/certs/registry.crt").is_file());
    for client in ["ci", "laptop"] {
        assert!(dir
            .path()
            .join(format!("var/lib/regimage/out/{client}.tar.gz"))
            .is_file());
    }
    let text = summary(&outcome);
    assert!(text.contains("registry name: reg.example.test"), "{text}");
    assert!(text.contains("laptop.tar.gz"), "{text}");
    // Nothing outside the two trees.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "var"]);
}
