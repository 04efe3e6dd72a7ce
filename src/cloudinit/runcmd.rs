//! The runcmd of cloud user-data ([`super::Mode::FirstBoot`]): disable the distribution's
//! nginx, install the binary when it is downloaded, enable and start first boot.

use super::{BinaryPayload, BINARY_PATH, DOWNLOAD_PATH, FIRSTBOOT_UNIT};
use crate::distro::Distro;
use crate::yaml_out::Value;

/// Downloads the binary, checks its sha256 and installs it (`--binary-url`).
pub(super) const INSTALL_BINARY_SH: &str = include_str!("guest/install-binary.sh");

/// The runcmd list. cloud-init writes it as one `#!/bin/sh` script with no `-e`, so the
/// first line adds it: a failed step (above all a binary that fails its checksum) must
/// stop the script before the first-boot service is enabled.
pub(super) fn runcmd(binary: &BinaryPayload, distro: Distro) -> Vec<Value> {
    let info = distro.info();
    let mut cmds = vec![
        Value::str("set -eu"),
        // The packages are in: apt and update-initramfs behave as usual again.
        super::lean_install::runcmd(),
        // The distribution's nginx starts on install and holds port 80; ours is
        // registry-proxy.service with its own config.
        Value::strs(["systemctl", "disable", "--now", info.distro_nginx_unit]),
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
    cmds.push(Value::strs(["systemctl", "daemon-reload"]));
    // Enabled so an interrupted first boot resumes on the next boot.
    cmds.push(Value::strs(["systemctl", "enable", FIRSTBOOT_UNIT]));
    // --no-block: runcmd runs inside cloud-final.service. The unit is WantedBy=
    // multi-user.target and therefore NOT After=cloud-final.service (cloud-final is after
    // multi-user.target: that pair is an ordering cycle); on this first boot its file did
    // not exist when multi-user.target was queued, so runcmd starts it. Blocking would hold
    // cloud-final (and `cloud-init status --wait`) for all of first boot, and deadlock if
    // the unit ever gained After=cloud-final.service. Queued, it runs beside the rest of
    // cloud-final, after the packages and deferred files it needs are in place.
    cmds.push(Value::strs([
        "systemctl",
        "start",
        "--no-block",
        FIRSTBOOT_UNIT,
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
        // Installed (or stopped) before first boot is enabled.
        assert!(pos(&install).unwrap() < enable);
        assert_eq!(cmds[0], Value::str("set -eu"));
        // Nothing is downloaded when the binary is embedded.
        let embedded = runcmd(&BinaryPayload::Embedded(vec![1]), Distro::Debian13);
        assert_eq!(embedded.len(), cmds.len() - 1);
        assert!(!embedded
            .iter()
            .any(|c| matches!(c, Value::Seq(a) if a.contains(&Value::str(crate::cloudinit::without_comments(INSTALL_BINARY_SH))))));
    }
}
