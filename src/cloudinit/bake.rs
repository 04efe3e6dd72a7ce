//! The bake VM's part of the seed ([`super::Mode::Bake`]): bootcmd queues the finishing
//! unit, runcmd applies the payload from the drive. Their shell is `guest/bake-*.sh`, run
//! with its parameters in the environment.
//!
//! Progress goes to the console as lines starting with [`BAKE_PROGRESS_PREFIX`], which the
//! host shows while it waits (`crate::qcow2::serial`).

use super::{
    DriveExtent, BINARY_PATH, FIRSTBOOT_UNIT, PAYLOAD_DRIVE_SERIAL, REGISTRY_ARCHIVE_PATH,
    STATE_DIR,
};
use crate::distro::Distro;
use crate::yaml_out::Value;

/// Every progress line the bake guest prints on its console starts with this.
pub const BAKE_PROGRESS_PREFIX: &str = "regimage-bake: ";
/// The last progress step of a good bake: the image is reset and the VM powers off. The
/// host accepts the output only after this line and a clean QEMU exit.
pub const BAKE_DONE_STEP: &str = "image ready, powering off";
/// A step starting with this means the bake failed; the guest powers off without resetting.
pub const BAKE_FAILED_STEP: &str = "FAILED";
/// With machine-id `uninitialized` the image's first boot is systemd's "first boot", which
/// enables every unit whose preset says so; without a preset line the default is `enable`,
/// which would enable the distribution's nginx again. A `disable` line keeps it off.
pub const BAKE_PRESET_PATH: &str = "/etc/systemd/system-preset/80-regimage.preset";

/// The finishing script's directory: on /run (a tmpfs), so it never lands in the image.
const BAKE_RUN_DIR: &str = "/run/regimage-bake";
const BAKE_FINISH_SCRIPT: &str = "/run/regimage-bake/finish.sh";
/// Left by the payload script at its end; the finishing script checks it.
const BAKE_PAYLOAD_DONE: &str = "/run/regimage-bake/payload-done";
const BAKE_FINISH_UNIT: &str = "regimage-bake-finish.service";

/// regimage-bake-finish.service: resets the image once cloud-init has finished.
pub(super) const BAKE_FINISH_SH: &str = include_str!("guest/bake-finish.sh");
/// The bake's runcmd: checks the packages, copies the payload, enables first boot.
pub(super) const BAKE_PAYLOAD_SH: &str = include_str!("guest/bake-payload.sh");
/// bootcmd, before the packages: dpkg without fsync and no man-db rebuilds, for the bake only.
pub(super) const BAKE_FAST_DPKG_SH: &str = include_str!("guest/bake-fast-dpkg.sh");
/// The dpkg configuration the bake adds for its own installs; bake-finish.sh removes it.
const BAKE_DPKG_CFG: &str = "/etc/dpkg/dpkg.cfg.d/regimage-bake";
/// man-db rebuilds its index after each package while this file exists (Debian, Ubuntu).
const MAN_DB_AUTO_UPDATE: &str = "/var/lib/man-db/auto-update";
/// Left when bootcmd turned man-db's auto-update off, so bake-finish.sh turns it on again.
const BAKE_MAN_DB_MARKER: &str = "/run/regimage-bake/man-db-auto-update";
/// Writes its first argument to the file named by its second.
const WRITE_FILE_SH: &str = "umask 077; printf '%s' \"$1\" > \"$2\"";

/// A progress line for the console, as a runcmd/bootcmd item.
fn say(step: &str) -> Value {
    Value::strs(["echo", &format!("{BAKE_PROGRESS_PREFIX}{step}")])
}

/// bootcmd of the bake (cloud-init's init stage, before any package is installed): write
/// the finishing script to /run and queue it as a transient unit. It waits for cloud-init
/// to finish, so it also reports a failure that happens before runcmd (a package that
/// does not install) and powers the VM off instead of leaving the host to time out.
/// `cloud-init clean` must not run inside runcmd itself: cloud-init still writes its own
/// state and logs after runcmd, which would race the reset.
pub(super) fn bootcmd() -> Vec<Value> {
    let mut run = vec![
        "systemd-run".to_string(),
        "--no-block".into(),
        format!("--unit={BAKE_FINISH_UNIT}"),
        // The default description is the command line; this one reads better on the
        // console.
        "--description=regimage bake: reset the image for its first boot".into(),
        "--property=StandardOutput=journal+console".into(),
        "--property=StandardError=journal+console".into(),
    ];
    run.extend(
        finish_env()
            .iter()
            .map(|(name, value)| format!("--setenv={name}={value}")),
    );
    // A file, not a `systemd-run sh -c '...'` argument: systemd expands $VARIABLES in a
    // transient unit's command line.
    run.extend(["/bin/sh".into(), BAKE_FINISH_SCRIPT.into()]);
    vec![
        Value::strs(["install", "-d", "-m", "0700", BAKE_RUN_DIR]),
        Value::strs([
            "sh",
            "-c",
            WRITE_FILE_SH,
            "regimage-bake-write",
            BAKE_FINISH_SH,
            BAKE_FINISH_SCRIPT,
        ]),
        Value::strs(run),
        Value::strs([
            "sh",
            "-c",
            BAKE_FAST_DPKG_SH,
            "regimage-bake-fast-dpkg",
            BAKE_DPKG_CFG,
            MAN_DB_AUTO_UPDATE,
            BAKE_MAN_DB_MARKER,
        ]),
        super::lean_install::bootcmd(),
        say("booted; cloud-init installs the packages next (the longest step)"),
    ]
}

/// The environment of [`BAKE_FINISH_SH`].
fn finish_env() -> [(&'static str, String); 8] {
    [
        ("REGIMAGE_BAKE_PREFIX", BAKE_PROGRESS_PREFIX.into()),
        ("REGIMAGE_BAKE_FAILED", BAKE_FAILED_STEP.into()),
        ("REGIMAGE_BAKE_DONE", BAKE_DONE_STEP.into()),
        ("REGIMAGE_PAYLOAD_DONE", BAKE_PAYLOAD_DONE.into()),
        ("REGIMAGE_BAKE_DPKG_CFG", BAKE_DPKG_CFG.into()),
        (
            "REGIMAGE_BAKE_MAN_DB_AUTO_UPDATE",
            MAN_DB_AUTO_UPDATE.into(),
        ),
        ("REGIMAGE_BAKE_MAN_DB_MARKER", BAKE_MAN_DB_MARKER.into()),
        (
            "REGIMAGE_LEAN_APT_CONF",
            super::lean_install::LEAN_APT_CONF.into(),
        ),
    ]
}

/// The environment of [`BAKE_PAYLOAD_SH`].
fn payload_env(
    distro: Distro,
    archive: &DriveExtent,
    binary: &DriveExtent,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REGIMAGE_BAKE_PREFIX", BAKE_PROGRESS_PREFIX.to_string()),
        ("REGIMAGE_BAKE_FAILED", BAKE_FAILED_STEP.into()),
        ("REGIMAGE_FIRSTBOOT_UNIT", FIRSTBOOT_UNIT.into()),
        (
            "REGIMAGE_NGINX_UNIT",
            distro.info().distro_nginx_unit.into(),
        ),
        ("REGIMAGE_PRESET_PATH", BAKE_PRESET_PATH.into()),
        ("REGIMAGE_STATE_DIR", STATE_DIR.into()),
        (
            "REGIMAGE_PAYLOAD_DEVICE",
            format!("/dev/disk/by-id/virtio-{PAYLOAD_DRIVE_SERIAL}"),
        ),
    ];
    for (names, extent, path) in [
        (
            [
                "REGIMAGE_ARCHIVE_OFFSET",
                "REGIMAGE_ARCHIVE_SIZE",
                "REGIMAGE_ARCHIVE_SHA256",
                "REGIMAGE_ARCHIVE_PATH",
            ],
            archive,
            REGISTRY_ARCHIVE_PATH,
        ),
        (
            [
                "REGIMAGE_BINARY_OFFSET",
                "REGIMAGE_BINARY_SIZE",
                "REGIMAGE_BINARY_SHA256",
                "REGIMAGE_BINARY_PATH",
            ],
            binary,
            BINARY_PATH,
        ),
    ] {
        let [offset, size, sha256, dest] = names;
        env.extend([
            (offset, extent.offset.to_string()),
            (size, extent.size.to_string()),
            (sha256, extent.sha256.clone()),
            (dest, path.to_string()),
        ]);
    }
    env.push(("REGIMAGE_PAYLOAD_DONE", BAKE_PAYLOAD_DONE.into()));
    env
}

/// runcmd of the bake: [`BAKE_PAYLOAD_SH`], given its parameters in the environment and the
/// distribution's packages as arguments (cloud-init quotes each argument).
pub(super) fn runcmd(distro: Distro, archive: &DriveExtent, binary: &DriveExtent) -> Vec<Value> {
    let mut argv = vec!["env".to_string()];
    argv.extend(
        payload_env(distro, archive, binary)
            .into_iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    argv.extend(["sh", "-c", BAKE_PAYLOAD_SH, "regimage-bake-payload"].map(String::from));
    argv.extend(distro.info().packages.iter().map(|p| p.to_string()));
    vec![
        Value::str("set -eu"),
        super::lean_install::runcmd(),
        Value::strs(argv),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudinit::tests::{items, sample_files, sh_syntax_ok, shellify, strings_read_back};
    use crate::cloudinit::{build_user_data, build_user_data_for, BinaryPayload, Mode, UserData};
    use crate::config::Config;

    fn extent(offset: u64, size: u64, sha: &str) -> DriveExtent {
        DriveExtent {
            offset,
            size,
            sha256: sha.repeat(32),
        }
    }

    fn bake(archive: &DriveExtent, binary: &DriveExtent) -> anyhow::Result<UserData> {
        build_user_data_for(
            &Config::default(),
            &sample_files(),
            Distro::Debian13,
            Mode::Bake { archive, binary },
        )
    }

    /// The REGIMAGE_* names a script reads.
    fn names_read(script: &str) -> std::collections::BTreeSet<&str> {
        script
            .match_indices("$REGIMAGE_")
            .chain(script.match_indices("${REGIMAGE_"))
            .map(|(at, m)| {
                let rest = &script[at + m.len() - "REGIMAGE_".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    /// The baked image gets the renew units like every other file (issue 11); first boot
    /// enables and starts the timer.
    #[test]
    fn bake_seed_installs_the_renew_units() {
        let archive = extent(0, 1, "ab");
        let files = crate::build::user_data_files(&Config::default()).unwrap();
        let seed = build_user_data_for(
            &Config::default(),
            &files,
            Distro::Debian13,
            Mode::Bake {
                archive: &archive,
                binary: &archive,
            },
        )
        .unwrap();
        let written = items(&seed.tree, "write_files");
        for path in [
            crate::render::RENEW_SERVICE_PATH,
            crate::render::RENEW_TIMER_PATH,
        ] {
            let item = written
                .iter()
                .find(|f| f.get("path") == Some(&Value::str(path)))
                .unwrap_or_else(|| panic!("{path} is not in the bake seed"));
            let want = &files
                .iter()
                .find(|f| f.path.as_os_str() == path)
                .unwrap()
                .contents;
            let got = match (item.get("encoding"), item.get("content")) {
                (None, Some(Value::Str(text))) => text.as_bytes().to_vec(),
                (Some(_), Some(Value::Str(b64))) => crate::cloudinit::tests::unpack(b64),
                other => panic!("{path}: {other:?}"),
            };
            assert_eq!(&got, want, "{path}");
        }
    }

    #[test]
    fn scripts_get_every_variable_they_read() {
        let archive = extent(0, 1, "ab");
        let payload = payload_env(Distro::Debian13, &archive, &archive);
        let given: std::collections::BTreeSet<_> = payload.iter().map(|(n, _)| *n).collect();
        assert_eq!(names_read(BAKE_PAYLOAD_SH), given);
        let given: std::collections::BTreeSet<_> = finish_env().iter().map(|(n, _)| *n).collect();
        assert_eq!(names_read(BAKE_FINISH_SH), given);
    }

    #[test]
    fn bake_mode_document() {
        let archive = extent(0, 7494100, "ab");
        let binary = extent(7494144, 8_000_001, "cd");
        let seed = bake(&archive, &binary).unwrap();
        let url = BinaryPayload::Url {
            url: "https://example.com/regimage".into(),
            sha256: "cd".repeat(32),
        };
        let first =
            build_user_data(&Config::default(), &sample_files(), &url, Distro::Debian13).unwrap();
        let tree = &seed.tree;
        // The same packages and files as the user-data; the binary is not in the document.
        assert_eq!(tree.get("packages"), first.tree.get("packages"));
        assert_eq!(tree.get("write_files"), first.tree.get("write_files"));
        assert!(seed.text.len() < 64 * 1024, "{}", seed.text.len());
        assert_eq!((seed.binary_raw_bytes, seed.binary_encoded_bytes), (0, 0));
        // No cloud login user is made in the bake; the service users are.
        let users = items(tree, "users");
        assert_eq!(users.len(), 2);
        assert!(!users.contains(&Value::str("default")));

        // runcmd: the payload script with the extents and paths in its environment and the
        // distribution's packages as its arguments.
        let runcmd = items(tree, "runcmd");
        // First the lean install is undone, as on the user-data path.
        assert_eq!(runcmd[1], super::super::lean_install::runcmd());
        let Value::Seq(argv) = &runcmd[2] else {
            panic!("{runcmd:?}")
        };
        let argv: Vec<&str> = argv
            .iter()
            .map(|a| match a {
                Value::Str(s) => s.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        let sh = argv.iter().position(|a| *a == "sh").unwrap();
        assert_eq!(argv[0], "env");
        let env = &argv[1..sh];
        for needed in [
            "REGIMAGE_ARCHIVE_OFFSET=0".to_string(),
            "REGIMAGE_ARCHIVE_SIZE=7494100".into(),
            format!("REGIMAGE_ARCHIVE_SHA256={}", "ab".repeat(32)),
            format!("REGIMAGE_ARCHIVE_PATH={REGISTRY_ARCHIVE_PATH}"),
            "REGIMAGE_BINARY_OFFSET=7494144".into(),
            "REGIMAGE_BINARY_SIZE=8000001".into(),
            format!("REGIMAGE_BINARY_SHA256={}", "cd".repeat(32)),
            format!("REGIMAGE_BINARY_PATH={BINARY_PATH}"),
            format!("REGIMAGE_PAYLOAD_DEVICE=/dev/disk/by-id/virtio-{PAYLOAD_DRIVE_SERIAL}"),
            "REGIMAGE_NGINX_UNIT=nginx.service".into(),
            format!("REGIMAGE_BAKE_PREFIX={BAKE_PROGRESS_PREFIX}"),
        ] {
            assert!(env.contains(&needed.as_str()), "{needed} not in {env:?}");
        }
        assert_eq!(
            argv[sh..sh + 4],
            ["sh", "-c", BAKE_PAYLOAD_SH, "regimage-bake-payload"]
        );
        let packages: Vec<&str> = Distro::Debian13.info().packages.to_vec();
        assert_eq!(argv[sh + 4..], packages[..]);
        sh_syntax_ok(&shellify(runcmd));

        // bootcmd: writes the finishing script and queues it without a $ on the unit's
        // command line (systemd would expand it).
        let bootcmd = items(tree, "bootcmd");
        sh_syntax_ok(&shellify(bootcmd));
        let run = bootcmd
            .iter()
            .find(|v| matches!(v, Value::Seq(a) if a.first() == Some(&Value::str("systemd-run"))))
            .unwrap();
        assert!(!format!("{run:?}").contains('$'));
        assert!(format!("{run:?}").contains("--no-block"));
        assert!(format!("{run:?}").ends_with(&format!("Str(\"{BAKE_FINISH_SCRIPT}\")])")));
        // The host's success line never appears literally in the seed, so only a guest
        // that ran the script can print it.
        let done_line = format!("{BAKE_PROGRESS_PREFIX}{BAKE_DONE_STEP}");
        assert!(!seed.text.contains(&done_line));
        // Both paths install the packages the same lean way; the first-boot document has
        // nothing else of this.
        assert!(bootcmd.contains(&super::super::lean_install::bootcmd()));
        assert_eq!(
            items(&first.tree, "bootcmd"),
            [super::super::lean_install::bootcmd()]
        );
        assert!(!first.text.contains(BAKE_PROGRESS_PREFIX));
        // The text parses back to the same tree.
        let body = seed.text.split_once('\n').unwrap().1;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(body).unwrap();
        assert_eq!(parsed, seed.tree.to_json());
        // A malformed digest is refused.
        assert!(bake(&extent(0, 1, "x"), &binary).is_err());
        assert!(bake(&archive, &extent(512, 1, "x")).is_err());
    }

    #[test]
    fn embedded_scripts_are_what_gets_into_the_seed() {
        let seed = bake(&extent(0, 1, "ab"), &extent(512, 1, "cd")).unwrap();
        let strings = strings_read_back(&seed.text);
        for script in [BAKE_FINISH_SH, BAKE_PAYLOAD_SH, BAKE_FAST_DPKG_SH] {
            assert!(strings.iter().any(|s| s == script));
            // Readable in the seed: a literal block, not one escaped line.
            assert!(crate::yaml_out::literal_block_indicator(script).is_some());
        }
        // The finishing script is written to the path the unit runs.
        let bootcmd = items(&seed.tree, "bootcmd");
        assert_eq!(
            bootcmd[1],
            Value::strs([
                "sh",
                "-c",
                WRITE_FILE_SH,
                "regimage-bake-write",
                BAKE_FINISH_SH,
                BAKE_FINISH_SCRIPT
            ])
        );
    }

    #[test]
    fn bootcmd_writes_the_finishing_script_as_it_is() {
        // bootcmd's item, with the path moved, run the way cloud-init runs it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("finish.sh");
        let path = path.to_str().unwrap();
        let Value::Seq(mut item) = bootcmd()[1].clone() else {
            panic!("not an argv item")
        };
        assert_eq!(item.last(), Some(&Value::str(BAKE_FINISH_SCRIPT)));
        *item.last_mut().unwrap() = Value::str(path);
        let script = dir.path().join("bootcmd");
        std::fs::write(&script, shellify(&[Value::Seq(item)])).unwrap();
        let status = std::process::Command::new("sh")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(path).unwrap(), BAKE_FINISH_SH);
    }

    #[test]
    fn bootcmd_turns_off_fsync_and_man_db_for_the_bake_and_finish_turns_them_on() {
        // bootcmd's item, with its paths moved, run the way cloud-init runs it.
        let item = bootcmd()
            .into_iter()
            .find(|i| format!("{i:?}").contains("regimage-bake-fast-dpkg"))
            .expect("the fast-dpkg item");
        let Value::Seq(mut item) = item else {
            panic!("not an argv item")
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dpkg-cfg");
        let auto = dir.path().join("auto-update");
        let marker = dir.path().join("marker");
        let n = item.len();
        assert_eq!(
            item[n - 3..],
            [
                Value::str(BAKE_DPKG_CFG),
                Value::str(MAN_DB_AUTO_UPDATE),
                Value::str(BAKE_MAN_DB_MARKER)
            ]
        );
        for (at, path) in [(n - 3, &cfg), (n - 2, &auto), (n - 1, &marker)] {
            item[at] = Value::str(path.to_str().unwrap());
        }
        let script = dir.path().join("bootcmd");
        std::fs::write(&script, shellify(&[Value::Seq(item)])).unwrap();
        let run = || {
            let status = std::process::Command::new("sh")
                .arg(&script)
                .status()
                .unwrap();
            assert!(status.success());
        };
        std::fs::write(&auto, "").unwrap();
        run();
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.lines().any(|l| l == "force-unsafe-io"), "{text}");
        assert!(!auto.exists() && marker.exists());
        // Where man-db's updates were already off, finish must not turn them on.
        std::fs::remove_file(&marker).unwrap();
        run();
        assert!(!marker.exists());
        // The finishing script undoes both, and refuses an image that keeps the dpkg file.
        for needed in [
            "rm -f \"$dpkg_cfg\"",
            "if [ -e \"$man_db_marker\" ]; then : > \"$man_db_auto_update\"; fi",
            "test ! -e \"$dpkg_cfg\" || fail",
        ] {
            assert!(BAKE_FINISH_SH.contains(needed), "{needed} missing");
        }
    }

    #[test]
    fn finish_script_resets_and_reports() {
        for needed in [
            "cloud-init status --wait",
            "cloud-init clean --logs --machine-id --seed",
            "rm -f /etc/ssh/ssh_host_*",
            "grep -qx uninitialized /etc/machine-id",
            "systemctl poweroff",
            "systemctl stop systemd-random-seed.service",
            "journalctl --relinquish-var",
            "test -f \"$payload_done\"",
            "say \"$done_step\"",
        ] {
            assert!(BAKE_FINISH_SH.contains(needed), "{needed} missing");
        }
    }

    /// A read-only loop device over a file, detached on drop.
    struct Loop(String);

    impl Loop {
        fn new(file: &std::path::Path) -> Loop {
            let out = std::process::Command::new("losetup")
                .args(["-r", "-f", "--show"])
                .arg(file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// bake-payload.sh run as runcmd runs it, against a loop device holding an archive and
    /// a binary; dpkg-query, systemctl and udevadm faked, every path in a temporary
    /// directory. Returns (success, stdout, systemctl calls).
    fn run_payload(
        dir: &std::path::Path,
        binary_sha: Option<&str>,
        packages: &[&str],
    ) -> (bool, String, String) {
        use sha2::{Digest as _, Sha256};
        use std::os::unix::fs::PermissionsExt as _;
        let archive = vec![0xa5u8; 1000];
        let binary = b"#!/bin/sh\necho regimage 0.1.0\n".to_vec();
        let mut drive = archive.clone();
        drive.resize(1024, 0);
        drive.extend_from_slice(&binary);
        drive.resize(2048, 0);
        let drive_path = dir.join("payload.img");
        std::fs::write(&drive_path, &drive).unwrap();
        let device = Loop::new(&drive_path);

        let shims = dir.join("shims");
        std::fs::create_dir_all(&shims).unwrap();
        let log = dir.join("systemctl.log");
        for (name, body) in [
            ("systemctl", format!("echo \"$*\" >> '{}'", log.display())),
            ("udevadm", String::new()),
            (
                "dpkg-query",
                "for a in \"$@\"; do case \"$a\" in -*) ;; gone-*) echo \"not-installed $a\" ;; \
                 *) echo \"installed $a\" ;; esac; done"
                    .into(),
            ),
        ] {
            let p = shims.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let at = |p: &str| dir.join(p).to_str().unwrap().to_string();
        let extent = |offset: u64, bytes: &[u8]| DriveExtent {
            offset,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        };
        let mut bin_extent = extent(1024, &binary);
        if let Some(sha) = binary_sha {
            bin_extent.sha256 = sha.into();
        }
        let mut env = payload_env(Distro::Debian13, &extent(0, &archive), &bin_extent);
        for (name, value) in &mut env {
            *value = match *name {
                "REGIMAGE_PAYLOAD_DEVICE" => device.0.clone(),
                "REGIMAGE_PRESET_PATH" => at("preset/80-regimage.preset"),
                "REGIMAGE_STATE_DIR" => at("state"),
                "REGIMAGE_ARCHIVE_PATH" => at("state/registry-image.oci.tar"),
                "REGIMAGE_BINARY_PATH" => at("bin/regimage"),
                "REGIMAGE_PAYLOAD_DONE" => at("payload-done"),
                _ => std::mem::take(value),
            };
        }
        let out = std::process::Command::new("sh")
            .args(["-c", BAKE_PAYLOAD_SH, "regimage-bake-payload"])
            .args(packages)
            .env_clear()
            .envs(env)
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", shims.display()),
            )
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    #[test]
    #[ignore = "needs root: losetup, chown"]
    fn payload_script_copies_checks_and_reports() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ok, stdout, calls) = run_payload(d, None, &["podman", "nginx"]);
        assert!(ok, "{stdout}");
        let p = BAKE_PROGRESS_PREFIX;
        assert_eq!(
            stdout,
            format!(
                "{p}checking the installed packages\n\
                 {p}disabling nginx.service (the proxy is registry-proxy.service)\n\
                 {p}copying the registry image archive from its drive\n\
                 {p}copying the regimage binary from its drive\n\
                 {p}enabling {FIRSTBOOT_UNIT} for the first boot\n\
                 regimage 0.1.0\n\
                 {p}payload applied; the image is reset once cloud-init has finished\n"
            )
        );
        assert_eq!(
            calls,
            format!("disable --now nginx.service\ndaemon-reload\nenable {FIRSTBOOT_UNIT}\n")
        );
        assert_eq!(
            std::fs::read_to_string(d.join("preset/80-regimage.preset")).unwrap(),
            format!(
                "# regimage: the proxy is registry-proxy.service; first boot runs \
                 {FIRSTBOOT_UNIT}\ndisable nginx.service\nenable {FIRSTBOOT_UNIT}\n"
            )
        );
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            std::fs::read(d.join("state/registry-image.oci.tar")).unwrap(),
            vec![0xa5; 1000]
        );
        assert_eq!(mode("state/registry-image.oci.tar"), 0o600);
        assert_eq!(mode("state"), 0o700);
        assert_eq!(mode("bin/regimage"), 0o755);
        assert!(d.join("payload-done").exists());
        assert!(!d.join("bin/regimage.part").exists());

        // A binary that does not match its digest is not installed, and says so.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let wrong = "0".repeat(64);
        let (ok, stdout, calls) = run_payload(d, Some(&wrong), &["podman"]);
        assert!(!ok);
        assert!(
            stdout.contains(&format!(
                "{p}{BAKE_FAILED_STEP}: the regimage binary read from /dev/loop"
            )) && stdout.contains(&format!("does not have sha256 {wrong}\n")),
            "{stdout}"
        );
        assert!(
            stdout.ends_with(&format!(
                "{p}{BAKE_FAILED_STEP}: the payload script stopped with exit status 1\n"
            )),
            "{stdout}"
        );
        assert!(!d.join("bin/regimage").exists());
        assert!(!d.join("payload-done").exists());
        assert!(!calls.contains("enable"), "{calls}");

        // A package that did not install stops the script before anything is changed.
        let dir = tempfile::tempdir().unwrap();
        let (ok, stdout, calls) = run_payload(dir.path(), None, &["podman", "gone-ufw"]);
        assert!(!ok);
        assert!(
            stdout.contains(&format!(
                "{p}{BAKE_FAILED_STEP}: packages not installed: not-installed gone-ufw\n"
            )),
            "{stdout}"
        );
        assert_eq!(calls, "");
    }
}
