//! The runcmd of cloud user-data ([`super::Mode::FirstBoot`]): enable and queue first boot,
//! install the binary when it is downloaded, disable the distribution's nginx.

use super::{BinaryPayload, BINARY_PATH, DOWNLOAD_PATH, FIRSTBOOT_UNIT};
use crate::distro::Distro;
use crate::yaml_out::Value;

/// Downloads the binary, checks its sha256 and installs it (`--binary-url`).
pub(super) const INSTALL_BINARY_SH: &str = include_str!("guest/install-binary.sh");

/// The runcmd list. cloud-init writes it as one `#!/bin/sh` script with no `-e`, so the
/// first line adds it: a failed step (a binary that fails its checksum) stops the script.
/// First boot is enabled and queued before anything that can fail: it runs once
/// cloud-final has ended whatever happened here, and again at every boot until it
/// finishes, and it installs packages a failed `packages` module left out itself (its
/// packages step). A failed step here is on the console (cloud-final's output), never a
/// silent dead end (issue 10).
pub(super) fn runcmd(binary: &BinaryPayload, distro: Distro) -> Vec<Value> {
    let info = distro.info();
    let mut cmds = vec![
        Value::str("set -eu"),
        // The unit file came with write_files (deferred, before runcmd).
        Value::strs(["systemctl", "daemon-reload"]),
        Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT]),
        // --no-block: runcmd runs inside cloud-final.service and the unit is After= it, so
        // the job waits for cloud-final to end; blocking here would deadlock. On this first
        // boot the unit's file did not exist when multi-user.target was queued, so runcmd
        // starts it; on later boots multi-user.target does.
        Value::strs(["systemctl", "start", "--no-block", FIRSTBOOT_UNIT]),
        // The packages are in: apt and update-initramfs behave as usual again.
        super::lean_install::runcmd(),
    ];
    if let BinaryPayload::Url { url, sha256 } = binary {
        // The script is an argument of `sh -c`, its parameters the arguments after it:
        // cloud-init quotes each, so nothing is spliced into shell text.
        cmds.push(Value::strs([
            "sh",
            "-c",
            &super::without_comments(INSTALL_BINARY_SH),
            "regimage-install-binary",
            url.as_str(),
            sha256.as_str(),
            DOWNLOAD_PATH,
            BINARY_PATH,
            FIRSTBOOT_UNIT,
        ]));
    }
    // The distribution's nginx starts on install and holds port 80; ours is
    // registry-proxy.service with its own config. (First boot turns it off too, should
    // this fail because nginx did not install.)
    cmds.push(Value::strs([
        "systemctl",
        "disable",
        "--now",
        info.distro_nginx_unit,
    ]));
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_payload_runs_the_embedded_script_with_its_parameters() {
        let sha = "ab".repeat(32);
        let bin = BinaryPayload::Url {
            url: "https://example.com/regimage".into(),
            sha256: sha.clone(),
        };
        let cmds = runcmd(&bin, Distro::Debian13);
        let install = Value::strs([
            "sh",
            "-c",
            &crate::cloudinit::without_comments(INSTALL_BINARY_SH),
            "regimage-install-binary",
            "https://example.com/regimage",
            &sha,
            DOWNLOAD_PATH,
            BINARY_PATH,
            FIRSTBOOT_UNIT,
        ]);
        let pos = |v: &Value| cmds.iter().position(|c| c == v);
        let enable = pos(&Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT])).unwrap();
        let start = pos(&Value::strs([
            "systemctl",
            "start",
            "--no-block",
            FIRSTBOOT_UNIT,
        ]))
        .unwrap();
        assert_eq!(cmds[0], Value::str("set -eu"));
        // Enabled and queued before anything that can fail, the download included; the
        // distribution's nginx (absent when its package failed) last.
        assert_eq!((enable, start), (2, 3));
        assert_eq!(pos(&install), Some(5));
        assert_eq!(
            cmds.last(),
            Some(&Value::strs([
                "systemctl",
                "disable",
                "--now",
                "nginx.service"
            ]))
        );
        // Nothing is downloaded when the binary is embedded.
        let embedded = runcmd(&BinaryPayload::Embedded(vec![1]), Distro::Debian13);
        assert_eq!(embedded.len(), cmds.len() - 1);
        assert!(!embedded
            .iter()
            .any(|c| matches!(c, Value::Seq(a) if a.contains(&Value::str(crate::cloudinit::without_comments(INSTALL_BINARY_SH))))));
    }
}
