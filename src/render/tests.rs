//! The rendered file set: what each file must say for any config.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

fn text(files: &[FileEntry], path: &str) -> String {
    let file = files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("{path} not rendered"));
    String::from_utf8(file.contents.clone()).unwrap()
}

/// The text without comment lines, so assertions look at directives only.
fn directives(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn custom() -> Config {
    Config::parse(
        "service-user: ci-reg\nproxy-user: web-proxy\nports: {pull: 8443, push: 9443, registry: 5123}\n\
         registry: {storage-dir: /srv/images, memory-max: 2G, cpu-quota: 150%, \
         image: 'quay.io/acme/registry@sha256:1111111111111111111111111111111111111111111111111111111111111111'}\n\
         proxy: {pull-rate: 7, pull-burst: 13, push-rate: 3, push-burst: 4, max-body-size: 512m}\n",
        "custom",
    )
    .unwrap()
}

#[test]
fn mirror_drop_in_only_when_configured() {
    let files = appliance_files(&Config::default()).unwrap();
    assert!(!files.iter().any(|f| f.path == Path::new(MIRROR_CONF_PATH)));
    let mut config = Config::default();
    config.registry.mirror = Some("10.0.2.2:5000".into());
    config.registry.mirror_insecure = true;
    let files = appliance_files(&config).unwrap();
    let conf = files
        .iter()
        .find(|f| f.path == Path::new(MIRROR_CONF_PATH))
        .expect("mirror drop-in");
    let text = String::from_utf8(conf.contents.clone()).unwrap();
    assert!(
        text.contains("prefix = \"docker.io/library/registry\""),
        "{text}"
    );
    assert!(
        text.contains("location = \"10.0.2.2:5000/library/registry\"\ninsecure = true"),
        "{text}"
    );
    config.registry.mirror = Some("m.example.com/mirrors/registry".into());
    config.registry.mirror_insecure = false;
    let text = String::from_utf8(
        mirror_conf(
            "docker.io/library/registry",
            "m.example.com/mirrors/registry",
            false,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        text.contains("location = \"m.example.com/mirrors/registry\"\ninsecure = false"),
        "{text}"
    );
}

#[test]
fn file_set_is_complete_sorted_and_root_owned() {
    let files = appliance_files(&Config::default()).unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.to_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    for want in [
        INSTALLED_CONFIG_PATH,
        NGINX_CONF_PATH,
        REGISTRY_UNIT_PATH,
        PROXY_UNIT_PATH,
        FIRSTBOOT_UNIT_PATH,
        RENEW_SERVICE_PATH,
        RENEW_TIMER_PATH,
        POLICY_PATH,
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    // The cluster sync units only for a node of a cluster (s3 storage).
    assert_eq!(files.len(), 8);
    for f in &files {
        assert_eq!(
            (f.mode, f.owner.as_str(), f.group.as_str()),
            (0o644, "root", "root")
        );
    }
}

#[test]
fn installed_config_reads_back_as_the_same_config() {
    let config = custom();
    let files = appliance_files(&config).unwrap();
    let back = Config::parse(&text(&files, INSTALLED_CONFIG_PATH), "installed").unwrap();
    assert_eq!(back, config);
}

#[test]
fn nginx_follows_the_config() {
    let files = appliance_files(&custom()).unwrap();
    let conf = directives(&text(&files, NGINX_CONF_PATH));
    for want in [
        "listen 8443 ssl;",
        "listen [::]:8443 ssl;",
        "listen 9443 ssl;",
        "server 127.0.0.1:5123;",
        "rate=7r/s",
        "rate=3r/s",
        "zone=regimage_pull burst=13 nodelay;",
        "zone=regimage_push burst=4 nodelay;",
        // Blob transfers are not counted (issue 10): an empty key.
        "~^/v2/.+/blobs/(uploads/)?[^/]+$ '';",
        "default $binary_remote_addr;",
        "limit_req_zone $regimage_limit_key zone=regimage_pull:10m rate=7r/s;",
        // Logs to the journal, bounded by journald (issue 10).
        "error_log stderr warn;",
        "access_log syslog:server=unix:/run/systemd/journal/dev-log,tag=registry_proxy,nohostname regimage;",
        "client_max_body_size 512m;",
        "proxy_set_header Host $http_host;",
        "push to port 9443",
        // Streaming (issue 9): uploads never spooled, downloads never to a temp file.
        "proxy_request_buffering off;",
        "proxy_max_temp_file_size 0;",
    ] {
        assert!(conf.contains(want), "{want:?} missing:\n{conf}");
    }
    assert!(!conf.contains("$host;"), "{conf}");
    assert!(!conf.contains("http2"), "{conf}");
    assert!(!conf.contains("{{") && !conf.contains("{%"), "{conf}");
    // mTLS only on the push server: exactly one verify line.
    assert_eq!(conf.matches("ssl_verify_client on;").count(), 1);
    assert_eq!(conf.matches("if ($regimage_write_method)").count(), 1);
    let push_server = &conf[conf.find("listen 9443 ssl;").unwrap()..];
    assert!(push_server.contains("ssl_verify_client on;"));
    assert!(!push_server.contains("$regimage_write_method)"));
}

#[test]
fn nginx_loads_one_key_and_cert_file_and_the_crl_on_the_push_port_only() {
    for config in [Config::default(), custom()] {
        let files = appliance_files(&config).unwrap();
        let conf = directives(&text(&files, NGINX_CONF_PATH));
        // Both directives name the one file renew replaces by a rename (issue 11).
        assert_eq!(
            conf.matches(&format!("ssl_certificate {SERVER_PEM_PATH};"))
                .count(),
            1,
            "{conf}"
        );
        assert_eq!(
            conf.matches(&format!("ssl_certificate_key {SERVER_PEM_PATH};"))
                .count(),
            1,
            "{conf}"
        );
        assert!(!conf.contains("registry.key"), "{conf}");
        assert!(!conf.contains(SERVER_CERT_PATH), "{conf}");
        let (pull, push) = servers(&conf);
        let crl = format!("ssl_crl {CLIENT_CRL_PATH};");
        assert!(!pull.contains("ssl_crl"), "{pull}");
        assert_eq!(push.matches(&crl).count(), 1, "{push}");
        // Next to the CA it belongs to.
        let ca = push.find("ssl_client_certificate ").unwrap();
        assert!(push[ca..].find(&crl).unwrap() < 200, "{push}");
    }
}

#[test]
fn renew_units_run_renew_daily_after_first_boot() {
    for config in [Config::default(), custom()] {
        let files = appliance_files(&config).unwrap();
        let service = unit_directives(&text(&files, RENEW_SERVICE_PATH));
        for want in [
            "Type=oneshot".to_string(),
            format!(
                "ExecStart={} renew -c {INSTALLED_CONFIG_PATH}",
                crate::cloudinit::BINARY_PATH
            ),
            "After=network-online.target".into(),
            format!("ConditionPathExists={FIRSTBOOT_DONE_PATH}"),
            "NoNewPrivileges=yes".into(),
            "PrivateTmp=yes".into(),
            "ProtectHome=yes".into(),
            "StandardOutput=journal".into(),
        ] {
            assert!(service.contains(&want), "{want} missing: {service:#?}");
        }
        // It writes /etc/registry/certs and /var/lib/regimage and runs `systemctl reload`.
        for never in [
            "ProtectSystem",
            "ReadOnlyPaths",
            "PrivateDevices",
            "User=",
            "[Install]",
        ] {
            assert!(
                !service.iter().any(|l| l.starts_with(never)),
                "{never}: {service:#?}"
            );
        }
        let timer = unit_directives(&text(&files, RENEW_TIMER_PATH));
        for want in [
            "OnCalendar=daily",
            "RandomizedDelaySec=1h",
            "Persistent=true",
            "[Install]",
            "WantedBy=timers.target",
        ] {
            assert!(timer.contains(&want.to_string()), "{want}: {timer:#?}");
        }
        // The timer starts the service of its own name.
        assert!(!timer.iter().any(|l| l.starts_with("Unit=")), "{timer:#?}");
        let stem = |p: &str| Path::new(p).file_stem().unwrap().to_owned();
        assert_eq!(stem(RENEW_SERVICE_PATH), stem(RENEW_TIMER_PATH));
    }
}

#[test]
fn renew_keeps_home_visible_when_the_bundles_live_there() {
    for (dir, protected) in [
        ("/var/lib/regimage/out", true),
        ("/srv/homework", true),
        ("/home/admin/bundles", false),
        ("/root/bundles", false),
    ] {
        let config = Config {
            output_dir: dir.into(),
            ..Config::default()
        };
        let files = appliance_files(&config).unwrap();
        let service = unit_directives(&text(&files, RENEW_SERVICE_PATH));
        assert_eq!(
            service.contains(&"ProtectHome=yes".to_string()),
            protected,
            "{dir}: {service:#?}"
        );
    }
}

/// The text of the pull server (the first `server {`) and of the push server.
fn servers(conf: &str) -> (String, String) {
    let first = conf.find("    server {").unwrap();
    let second = first + 1 + conf[first + 1..].find("    server {").unwrap();
    (conf[first..second].to_string(), conf[second..].to_string())
}

#[test]
fn body_caps_catalog_and_pull_networks_by_default() {
    let files = appliance_files(&Config::default()).unwrap();
    let conf = directives(&text(&files, NGINX_CONF_PATH));
    let (pull, push) = servers(&conf);
    // Push: no cap (proxy.max-body-size 0); pull: GET and HEAD send no body.
    assert!(push.contains("client_max_body_size 0;"), "{push}");
    assert!(pull.contains("client_max_body_size 1m;"), "{pull}");
    assert!(!conf[..conf.find("    server {").unwrap()].contains("client_max_body_size"));
    // The catalog is refused on the pull port with a JSON body, served on the push port.
    assert!(pull.contains("location = /v2/_catalog {"), "{pull}");
    assert!(!push.contains("_catalog"), "{push}");
    let refusal = pull
        .lines()
        .find(|l| l.contains("\"message\":\"the repository list"))
        .unwrap();
    assert!(refusal
        .trim()
        .starts_with("return 403 '{\"errors\":[{\"code\":\"DENIED\""));
    assert!(refusal.contains("port 4443"), "{refusal}");
    // Any address may pull.
    assert!(!conf.contains("geo ") && !conf.contains("regimage_pull_refused"));
}

#[test]
fn public_catalog_and_pull_networks_follow_the_config() {
    let config = Config::parse(
        "pull-allowed-cidrs: [10.0.0.0/8, 'fd00::/8']\nproxy: {public-catalog: true, max-body-size: 8g}\n",
        "t",
    )
    .unwrap();
    let files = appliance_files(&config).unwrap();
    let conf = directives(&text(&files, NGINX_CONF_PATH));
    let (pull, push) = servers(&conf);
    assert!(!conf.contains("_catalog"), "{conf}");
    assert!(push.contains("client_max_body_size 8g;"), "{push}");
    for want in [
        "geo $regimage_pull_refused {",
        "default 1;",
        "127.0.0.0/8 0;",
        "::1 0;",
        "10.0.0.0/8 0;",
        "fd00::/8 0;",
    ] {
        assert!(conf.contains(want), "{want:?} missing:\n{conf}");
    }
    assert!(pull.contains("if ($regimage_pull_refused) {"), "{pull}");
    assert!(!push.contains("regimage_pull_refused"), "{push}");
    // nginx strings are single-quoted: no message may hold one.
    for line in conf.lines().filter(|l| l.contains("return 403 '")) {
        assert_eq!(line.matches('\'').count(), 2, "{line}");
    }
}

#[test]
fn registry_unit_follows_the_config() {
    let files = appliance_files(&custom()).unwrap();
    let unit = directives(&text(&files, REGISTRY_UNIT_PATH));
    for want in [
        "ConditionUser=ci-reg\n",
        "--publish 127.0.0.1:5123:5000 \\\n",
        "--volume /srv/images:/var/lib/registry:Z \\\n",
        "MemoryMax=2G\n",
        "CPUQuota=150%\n",
        "--env REGISTRY_STORAGE_DELETE_ENABLED=false \\\n",
        "--env REGISTRY_HTTP_SECRET \\\n",
        "    localhost/regimage/registry:pinned\n",
        "--root=/var/lib/registry-podman/root --runroot=%t/podman-run",
    ] {
        assert!(unit.contains(want), "{want:?} missing:\n{unit}");
    }
    assert!(!unit.contains("REGISTRY_HTTP_HOST"));
    assert!(!unit.contains("network-online"));
    // Every continued line is followed by another argument, the last one ends it.
    let exec: Vec<&str> = unit
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart="))
        .take_while(|l| !l.starts_with("ExecStop="))
        .collect();
    assert!(
        exec.last().unwrap().trim() == REGISTRY_IMAGE_TAG,
        "{exec:?}"
    );
    assert!(
        exec[..exec.len() - 1].iter().all(|l| l.ends_with(" \\")),
        "{exec:?}"
    );
}

/// A unit's `Key=value` directives, continuation lines joined and blanks folded, so the
/// checks below hold whatever the template's layout.
fn unit_directives(text: &str) -> Vec<String> {
    directives(text)
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// The arguments of the registry unit's `podman run`.
fn podman_run_args(unit: &str) -> Vec<String> {
    let exec = unit_directives(unit)
        .into_iter()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    exec.split(' ').map(str::to_string).collect()
}

#[test]
fn registry_is_reachable_on_loopback_only_and_never_in_debug() {
    for config in [Config::default(), custom()] {
        let files = appliance_files(&config).unwrap();
        let port = config.ports.registry.to_string();
        let args = podman_run_args(&text(&files, REGISTRY_UNIT_PATH));
        let published: Vec<_> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--publish" || *a == "-p" || a.starts_with("--publish="))
            .map(|(i, _)| args[i + 1].as_str())
            .collect();
        assert_eq!(published, [format!("127.0.0.1:{port}:5000")], "{args:?}");
        // Every mention of the registry port, in every file but the config, is loopback
        // (checked where the port differs from the container's own :5000).
        let distinct = config.ports.registry != REGISTRY_CONTAINER_PORT;
        for f in files
            .iter()
            .filter(|f| f.path != Path::new(INSTALLED_CONFIG_PATH))
        {
            let text = String::from_utf8_lossy(&f.contents);
            let needle = format!(":{port}");
            let mentions = text.match_indices(&needle).filter(|_| distinct);
            for (at, _) in mentions {
                assert!(
                    text[..at].ends_with("127.0.0.1"),
                    "{}: port {port} not on 127.0.0.1 at {}",
                    f.path.display(),
                    &text[at.saturating_sub(40)..at + port.len() + 1]
                );
            }
            for banned in [
                "REGISTRY_HTTP_HOST",
                "REGISTRY_HTTP_DEBUG",
                ":5001",
                "DELETE_ENABLED=true",
            ] {
                assert!(!text.contains(banned), "{}: {banned}", f.path.display());
            }
        }
        assert!(args.contains(&"--pull=never".to_string()), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some(REGISTRY_IMAGE_TAG));
    }
}

#[test]
fn unit_ordering_has_no_cycle_with_cloud_init_and_no_deadlock_with_first_boot() {
    for config in [Config::default(), custom()] {
        let files = appliance_files(&config).unwrap();
        let units: Vec<(&str, Vec<String>)> =
            [REGISTRY_UNIT_PATH, PROXY_UNIT_PATH, FIRSTBOOT_UNIT_PATH]
                .into_iter()
                .map(|p| (p, unit_directives(&text(&files, p))))
                .collect();
        let deps = ["After=", "Before=", "Wants=", "Requires=", "BindsTo="];
        for (path, lines) in &units {
            for line in lines
                .iter()
                .filter(|l| deps.iter().any(|d| l.starts_with(d)))
            {
                // cloud-final is After=multi-user.target: ordering after it is a cycle unless
                // the unit is itself After=multi-user.target (first boot, issue 10).
                if line.contains("cloud-") {
                    assert!(
                        *path == FIRSTBOOT_UNIT_PATH
                            && line.starts_with("After=")
                            && line.contains(" multi-user.target "),
                        "{path}: {line}"
                    );
                }
                // First boot waits for the proxy to answer: ordering the two deadlocks.
                if *path != REGISTRY_UNIT_PATH {
                    assert!(
                        !line.contains("regimage-firstboot") && !line.contains("registry-proxy"),
                        "{path}: {line}"
                    );
                }
            }
        }
        let [(_, registry), (_, proxy), (_, firstboot)] = &units[..] else {
            unreachable!()
        };
        assert!(!registry.iter().any(|l| l.contains("network-online")));
        assert!(registry.contains(&format!("ConditionUser={}", config.service_user)));
        assert!(proxy.contains(&format!("User={}", config.proxy_user)));
        assert!(proxy.contains(&format!("Group={}", config.proxy_user)));
        // Instead of ordering, the proxy cannot start before its certificate exists.
        assert!(proxy.contains(&"ConditionPathExists=/etc/registry/certs/registry.crt".to_string()));
        assert!(firstboot.contains(&format!("ConditionPathExists=!{FIRSTBOOT_DONE_PATH}")));
        assert!(firstboot.contains(&format!(
            "ExecStart={} firstboot -c {INSTALLED_CONFIG_PATH}",
            crate::cloudinit::BINARY_PATH
        )));
    }
}

#[test]
fn policy_allows_only_the_image_repository_and_archives() {
    let files = appliance_files(&custom()).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text(&files, POLICY_PATH)).unwrap();
    assert_eq!(policy["default"][0]["type"], "reject");
    let docker = policy["transports"]["docker"].as_object().unwrap();
    assert_eq!(docker.keys().collect::<Vec<_>>(), ["quay.io/acme/registry"]);
    for t in ["oci-archive", "docker-archive"] {
        assert_eq!(
            policy["transports"][t][""][0]["type"], "insecureAcceptAnything",
            "{t}"
        );
    }
    assert_eq!(policy["transports"].as_object().unwrap().len(), 3);
}

#[test]
fn manifest_refuses_bad_sets() {
    let f = |p: &str| root_file(p, b"x".to_vec());
    assert!(manifest_file(&[f("/etc/a"), f("/etc/a")]).is_err());
    assert!(manifest_file(&[f("etc/a")]).is_err());
    assert!(manifest_file(&[f("/etc/../a")]).is_err());
    assert!(manifest_file(&[f(MANIFEST_PATH)]).is_err());
    let m = manifest_file(&[f("/b"), f("/a")]).unwrap();
    let doc: Manifest = serde_json::from_slice(&m.contents).unwrap();
    assert_eq!(doc.files[0].path, "/a");
    assert_eq!(doc.files[0].mode, "0644");
    assert_eq!(
        doc.files[0].sha256,
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    );
}

#[test]
fn write_tree_refuses_a_file_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, "x").unwrap();
    let e = write_tree(&file, &[]).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e:#}");
}

#[test]
fn proxy_logs_go_to_the_journal() {
    let files = appliance_files(&Config::default()).unwrap();
    let unit = directives(&text(&files, PROXY_UNIT_PATH));
    // Nothing under /var/log grows (issue 10): errors on stderr, requests to the journal.
    assert!(!unit.contains("LogsDirectory"), "{unit}");
    assert!(!unit.contains("/var/log"), "{unit}");
    assert_eq!(unit.matches(" -e stderr").count(), 3, "{unit}");
    let conf = directives(&text(&files, NGINX_CONF_PATH));
    assert!(!conf.contains("/var/log"), "{conf}");
    assert_eq!(conf.matches("access_log ").count(), 1, "{conf}");
}

#[test]
fn cluster_sync_units_run_sync_every_30_seconds_after_first_boot() {
    let files = cluster_sync_units(&templates().unwrap(), &Config::default()).unwrap();
    let service = unit_directives(&text(&files, CLUSTER_SYNC_SERVICE_PATH));
    for want in [
        "Type=oneshot".to_string(),
        format!(
            "ExecStart={} cluster sync -c {INSTALLED_CONFIG_PATH}",
            crate::cloudinit::BINARY_PATH
        ),
        format!("ConditionPathExists={FIRSTBOOT_DONE_PATH}"),
        "NoNewPrivileges=yes".into(),
        "PrivateTmp=yes".into(),
        "ProtectHome=yes".into(),
    ] {
        assert!(service.contains(&want), "{want} missing: {service:#?}");
    }
    assert!(!service.iter().any(|l| l.starts_with("[Install]")));
    let timer = unit_directives(&text(&files, CLUSTER_SYNC_TIMER_PATH));
    for want in [
        "OnBootSec=1min",
        "OnUnitActiveSec=30s",
        "AccuracySec=1s",
        "WantedBy=timers.target",
    ] {
        assert!(timer.contains(&want.to_string()), "{want}: {timer:#?}");
    }
    let stem = |p: &str| Path::new(p).file_stem().unwrap().to_owned();
    assert_eq!(
        stem(CLUSTER_SYNC_SERVICE_PATH),
        stem(CLUSTER_SYNC_TIMER_PATH)
    );
}

#[test]
fn both_public_ports_refuse_the_cluster_state() {
    let files = appliance_files(&Config::default()).unwrap();
    let conf = text(&files, NGINX_CONF_PATH);
    let (pull, push) = servers(&conf);
    for server in [pull, push] {
        let at = server
            .find("location ^~ /v2/regimage-cluster/ {")
            .unwrap_or_else(|| panic!("no cluster refusal: {server}"));
        let block = &server[at..at + server[at..].find('}').unwrap()];
        assert!(block.contains("return 404;"), "{block}");
        assert!(!block.contains("proxy_pass"), "{block}");
    }
    assert!(crate::lifecycle::cluster::registry::REPOSITORY.starts_with("regimage-cluster/"));
}
