//! The appliance's packages installed as an exact list, on both paths (user-data and the
//! bake), set up in bootcmd before cloud-init's `packages` runs (`guest/lean-install.sh`)
//! and undone early in runcmd (`guest/lean-install-done.sh`):
//! - apt installs no Recommends: they added buildah, criu, gnupg's agents and a C
//!   preprocessor, 73 packages where 36 do (Debian 13);
//! - `apt-get update` fetches no translated descriptions (`Acquire::Languages "none"`):
//!   the lists were 16.9 MB, fetched and parsed in about 3 min of the bake under TCG;
//! - the initramfs is not rebuilt for them: fuse3's hook triggers a rebuild that took
//!   100-350 s of the bake under TCG and changes nothing the boot needs. update-initramfs
//!   reads `update-initramfs.conf`; a copy saying `update_initramfs=no` is bind-mounted over
//!   it from /run, so the file on disk never changes and a crash or reboot undoes it.
//!
//! The guest scripts are kept short: the user-data must fit EC2's 16 KiB with
//! `--binary-url`.

use crate::yaml_out::Value;

/// bootcmd, once per instance: the apt setting and the initramfs bind mount.
pub(super) const LEAN_INSTALL_SH: &str = include_str!("guest/lean-install.sh");
/// Early in runcmd: removes both again.
pub(super) const LEAN_INSTALL_DONE_SH: &str = include_str!("guest/lean-install-done.sh");
/// apt's setting for the install; removed by runcmd, and a baked image is refused with it.
pub(super) const LEAN_APT_CONF: &str = "/etc/apt/apt.conf.d/90regimage-install";
/// The initramfs setting's copy that is bind-mounted (a tmpfs: gone after any reboot).
const LEAN_RUN_DIR: &str = "/run/regimage-install";

/// The bootcmd item. bootcmd runs at every boot; `cloud-init-per instance` runs it on the
/// instance's first boot only, which is when `packages` installs.
pub(super) fn bootcmd() -> Value {
    Value::strs([
        "cloud-init-per",
        "instance",
        "regimage-lean-install",
        "sh",
        "-c",
        &super::without_comments(LEAN_INSTALL_SH),
        "regimage-lean-install",
        LEAN_APT_CONF,
        LEAN_RUN_DIR,
    ])
}

/// The runcmd item that undoes [`bootcmd`]; runcmd runs after `packages`.
pub(super) fn runcmd() -> Value {
    Value::strs([
        "sh",
        "-c",
        &super::without_comments(LEAN_INSTALL_DONE_SH),
        "regimage-lean-install-done",
        LEAN_APT_CONF,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs a guest script under `sh` with its arguments.
    fn run(script: &str, name: &str, args: &[&str]) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(name)
            .args(args)
            .output()
            .unwrap()
    }

    #[test]
    fn apt_setting_is_written_and_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("90regimage-install");
        let run_dir = dir.path().join("run");
        let conf_s = conf.to_str().unwrap();
        // Without the initramfs part: it would mount over the host's own file.
        let apt_only = LEAN_INSTALL_SH.replace(
            "c=/etc/initramfs-tools/update-initramfs.conf",
            "c=/nonexistent/update-initramfs.conf",
        );
        assert_ne!(apt_only, LEAN_INSTALL_SH);
        let out = run(&apt_only, "t", &[conf_s, run_dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(&conf).unwrap();
        assert_eq!(
            text,
            "APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\n"
        );
        assert!(!dir.path().join("90regimage-install.tmp").exists());
        let out = run(LEAN_INSTALL_DONE_SH, "t", &[conf_s]);
        assert!(out.status.success(), "{out:?}");
        assert!(!conf.exists());
        // Undoing twice (runcmd rerun by hand) is fine.
        let out = run(LEAN_INSTALL_DONE_SH, "t", &[conf_s]);
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn scripts_reach_the_guest_without_comments() {
        let item = format!("{:?}", bootcmd());
        assert!(!item.contains("# regimage"), "{item}");
        assert!(item.contains("update_initramfs=no"), "{item}");
        let stripped = super::super::without_comments(LEAN_INSTALL_SH);
        assert!(stripped.starts_with("set -eu\n"), "{stripped}");
        let out = Command::new("sh")
            .args(["-n", "-c", &stripped])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn initramfs_copy_turns_updates_off() {
        // The sed of lean-install.sh on the distributions' file (Debian 13 and Ubuntu 24.04
        // ship `update_initramfs=yes`).
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("update-initramfs.conf");
        std::fs::write(
            &etc,
            "#\n# comment\nupdate_initramfs=yes\nbackup_initramfs=no\n",
        )
        .unwrap();
        let script = LEAN_INSTALL_SH
            .replace(
                "c=/etc/initramfs-tools/update-initramfs.conf",
                &format!("c={}", etc.display()),
            )
            // No mount here: the copy is what is checked.
            .replace("  mount --bind", "  : mount --bind");
        assert!(script.contains(": mount --bind"));
        let run_dir = dir.path().join("run");
        let out = run(
            &script,
            "t",
            &[
                dir.path().join("apt.conf").to_str().unwrap(),
                run_dir.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let copy = std::fs::read_to_string(run_dir.join("update-initramfs.conf")).unwrap();
        assert_eq!(
            copy,
            "#\n# comment\nbackup_initramfs=no\nupdate_initramfs=no\n"
        );
        // The file on disk is untouched.
        assert!(std::fs::read_to_string(&etc)
            .unwrap()
            .contains("update_initramfs=yes"));
    }
}
