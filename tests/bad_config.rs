//! Every bad config is refused by every command with exit status 2, one message naming the
//! key, the bad value and the expected form, and nothing written.

mod common;

use common::{output, regimage, s, test_dir};

/// (config text, key the message must name, a fragment of the expected-form hint)
const BAD: &[(&str, &str, &str)] = &[
    ("ports:\n  push: 443\n", "ports.push", "already used by ports.pull"),
    ("ports:\n  pull: 0\n", "ports.pull", "expected 1 to 65535"),
    ("ports:\n  pull: 70000\n", "ports.pull", "u16"),
    ("ports:\n  registry: 22\n", "ports.registry", "SSH"),
    ("ports:\n  pull: https\n", "ports.pull", "invalid type"),
    ("push-allowed-cidrs: [10.0.0.0/33]\n", "push-allowed-cidrs[0]", "prefix length"),
    ("push-allowed-cidrs: [10.1.2.3/8]\n", "push-allowed-cidrs[0]", "10.0.0.0/8"),
    ("push-allowed-cidrs: [not-a-net]\n", "push-allowed-cidrs[0]", "ADDRESS/PREFIX"),
    ("push-allowed-cidrs: 10.0.0.0/8\n", "push-allowed-cidrs", "a sequence"),
    ("registry:\n  image: docker.io/library/registry:2\n", "registry.image", "pinned by digest"),
    ("registry:\n  image: registry@sha256:abc\n", "registry.image", "64 lowercase hex"),
    ("registry:\n  image: Registry@sha256:8be26f81ffea54106bae012c6f349df70f4d5e7e2ec01b143c46e2c03b9e551d\n", "registry.image", "lowercase"),
    ("hostname: bad_host\n", "hostname", "DNS name"),
    ("hostname: -lead.example.com\n", "hostname", "DNS name"),
    ("extra-names: [ok.example.com, 'no spaces']\n", "extra-names[1]", "IPv4 or IPv6"),
    ("prots:\n  pull: 443\n", "prots", "unknown field"),
    ("registry:\n  imag: x\n", "registry.imag", "unknown field"),
    ("pki:\n  key-algorithm: dsa\n", "pki.key-algorithm", "ecdsa-p256"),
    ("pki:\n  leaf-validity-days: 5000\n", "pki.leaf-validity-days", "expected 1 to"),
    ("pki:\n  renew-before-days: 0\n", "pki.renew-before-days", "expected 1 to"),
    ("pki:\n  leaf-validity-days: 30\n", "pki.renew-before-days", "one less than"),
    ("pki:\n  ca-validity-days: -1\n", "pki.ca-validity-days", "invalid value"),
    ("clients: []\n", "clients", "at least one"),
    ("clients: [ci, ci]\n", "clients[1]", "unique"),
    ("clients: [ca]\n", "clients[0]", "reserved"),
    ("hostname: '*.example.com'\n", "hostname", "wildcard"),
    ("clients: ['../evil']\n", "clients[0]", "client name"),
    ("service-user: root\n", "service-user", "not root"),
    ("proxy-user: registry\n", "proxy-user", "different users"),
    ("registry:\n  memory-max: lots\n", "registry.memory-max", "512M"),
    ("registry:\n  cpu-quota: '2'\n", "registry.cpu-quota", "percentage"),
    ("registry:\n  storage-dir: relative/dir\n", "registry.storage-dir", "absolute path"),
    ("proxy:\n  max-body-size: 2gb\n", "proxy.max-body-size", "nginx size"),
    ("registry:\n  mirror: http://m:5000\n", "registry.mirror", "without a scheme"),
    ("registry:\n  mirror-insecure: true\n", "registry.mirror-insecure", "without registry.mirror"),
    ("proxy:\n  pull-rate: 0\n", "proxy.pull-rate", "1 or more"),
    ("output-dir: /\n", "output-dir", "below /"),
    ("output-dir: /etc\n", "output-dir", "system directory"),
    ("output-dir: /home/\n", "output-dir", "system directory"),
    ("registry:\n  storage-dir: /var\n", "registry.storage-dir", "system directory"),
    ("registry:\n  storage-dir: /usr/local\n", "registry.storage-dir", "system directory"),
    ("registry:\n  storage-dir: /srv/reg:ro\n", "registry.storage-dir", "--volume"),
    ("registry:\n  storage-dir: /srv/$USER\n", "registry.storage-dir", "'$'"),
    ("registry:\n  storage-dir: /srv/100%\n", "registry.storage-dir", "'%'"),
    ("registry:\n  storage-dir: \"/srv/it's\"\n", "registry.storage-dir", "systemd unit line"),
    ("registry:\n  storage-dir: /srv/my images\n", "registry.storage-dir", "' '"),
    ("output-dir: /srv/a,b\n", "output-dir", "','"),
    ("output-dir: /var/lib/registry/out\n", "output-dir", "overlaps registry.storage-dir"),
    ("pull-allowed-cidrs: [10.0.0.1/8]\n", "pull-allowed-cidrs[0]", "10.0.0.0/8"),
    ("proxy:\n  public-catalog: maybe\n", "proxy.public-catalog", "boolean"),
    ("proxy:\n  max-body-size: -1\n", "proxy.max-body-size", "nginx size"),
    ("organization: ''\n", "organization", "empty"),
    ("- just\n- a list\n", "(document)", "mapping"),
    ("ports: [443\n", "(document)", "not valid YAML"),
];

#[test]
fn every_command_refuses_every_bad_config_and_writes_nothing() {
    let work = test_dir("regimage-badcfg-");
    for (i, (yaml, key, hint)) in BAD.iter().enumerate() {
        let cfg = work.path().join(format!("bad{i}.yaml"));
        std::fs::write(&cfg, yaml).expect("writing config");
        let root = work.path().join(format!("root{i}"));
        let existing_root = work.path().join(format!("existing{i}"));
        std::fs::create_dir(&existing_root).expect("creating root");
        let out_file = work.path().join(format!("user-data{i}"));
        let commands: Vec<Vec<String>> = vec![
            vec!["check".into()],
            vec!["render".into(), "--root".into(), s(&root)],
            vec!["build".into(), "-o".into(), s(&out_file)],
            vec![
                "firstboot".into(),
                "--no-system".into(),
                "--root".into(),
                s(&existing_root),
            ],
        ];
        for args in commands {
            let out = output(regimage().args(&args).arg("-c").arg(&cfg));
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("config {yaml:?}, command {args:?}: stderr {stderr}");
            assert_eq!(out.status.code(), Some(2), "{what}");
            let expected_prefix = format!("error: {}: {key}: ", s(&cfg));
            assert!(
                stderr.starts_with(&expected_prefix),
                "{what}\nexpected prefix {expected_prefix}"
            );
            assert!(stderr.contains(hint), "{what}\nexpected hint {hint:?}");
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "one message only: {what}"
            );
            assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
        }
        assert!(!root.exists(), "render wrote {}", root.display());
        assert!(!out_file.exists(), "build wrote {}", out_file.display());
        assert_eq!(
            std::fs::read_dir(&existing_root)
                .expect("listing root")
                .count(),
            0,
            "firstboot wrote under {}",
            existing_root.display()
        );
    }
}

#[test]
fn missing_config_file_is_bad_input() {
    let out = output(regimage().args(["check", "-c", "/nonexistent/regimage.yaml"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/regimage.yaml: (file): cannot read"),
        "{stderr}"
    );
}

#[test]
fn unknown_argument_is_bad_input() {
    let out = output(regimage().args(["build", "--frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn check_accepts_defaults_and_init_output() {
    let out = output(regimage().arg("check"));
    assert_eq!(out.status.code(), Some(0));
    // A report, not data: on stderr, and stdout stays empty.
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in defaults: valid"));
    assert!(out.stdout.is_empty());
    let dir = test_dir("regimage-init-");
    let cfg = dir.path().join("regimage.yaml");
    let out = output(regimage().args(["init", "-o"]).arg(&cfg));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = output(regimage().args(["check", "-c"]).arg(&cfg));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The day-2 commands on the machine (no --root) read root's keys and index: anyone else gets
/// exit 2 and one line saying to use sudo, before anything is read or written.
#[test]
fn day_two_commands_refuse_a_user_other_than_root() {
    let bin = regimage().get_program().to_owned();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["renew", "--dry-run"],
        &["renew"],
        &["client", "list"],
        &["client", "add", "someone"],
        &["client", "revoke", "ci"],
    ] {
        // As root (CI), drop to nobody; as anyone else, run as that user.
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        let out = output(cmd.args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("sudo regimage"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
