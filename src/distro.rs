//! Every difference between the target distributions, in one table.
//!
//! Where a fact comes from is said next to it:
//! - "measured": seen on a machine of this project (DESIGN.md, "Field facts": a Debian 13
//!   guest under QEMU/TCG, built with mmdebstrap, ran rootless Podman with this set).
//! - "looked up": published package data (packages.ubuntu.com, noble / noble-updates, amd64;
//!   packages.debian.org) or upstream docs, not yet run here. The Ubuntu 24.04 row is all
//!   looked up until the VM test boots a noble cloud image.

use std::fmt;

/// A target distribution: `--distro ubuntu-24.04|debian-13`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Distro {
    /// Ubuntu 24.04 LTS (noble) cloud image.
    #[default]
    #[value(name = "ubuntu-24.04")]
    Ubuntu2404,
    /// Debian 13 (trixie) cloud image.
    #[value(name = "debian-13")]
    Debian13,
}

/// How rootless Podman gives a container its network by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootlessNetwork {
    /// slirp4netns (Podman 4.x default).
    Slirp4netns,
    /// pasta from the `passt` package (Podman 5.x default; Podman 5 fails without it:
    /// "could not find pasta").
    Pasta,
}

impl RootlessNetwork {
    /// The name Podman uses (`--network=` / containers.conf `default_rootless_network_cmd`).
    pub fn as_str(self) -> &'static str {
        match self {
            RootlessNetwork::Slirp4netns => "slirp4netns",
            RootlessNetwork::Pasta => "pasta",
        }
    }
}

/// A distribution's official cloud image, for `regimage build qcow2 --base <id>`.
#[derive(Debug)]
pub struct CloudImage {
    /// Directory URL (ending in '/') that holds the image and its checksum file.
    pub base_url: &'static str,
    /// The image's file name in that directory.
    pub file: &'static str,
    /// The checksum file beside it, in `sha256sum` format.
    pub sha256sums: &'static str,
}

/// One row of the table.
#[derive(Debug)]
pub struct DistroInfo {
    pub distro: Distro,
    /// The `--distro` value, e.g. `ubuntu-24.04`.
    pub id: &'static str,
    pub pretty_name: &'static str,
    /// APT suite of the release.
    pub codename: &'static str,
    /// Packages to install on the distribution's stock cloud image (cloud-config `packages`).
    pub packages: &'static [&'static str],
    /// Packages a bare root filesystem (mmdebstrap) needs on top of `packages` to boot as a
    /// cloud VM; stock cloud images already have them.
    pub bootstrap_packages: &'static [&'static str],
    /// Podman version the release ships (upstream version, without the Debian revision).
    pub podman_version: &'static str,
    pub rootless_network: RootlessNetwork,
    /// The distribution's own nginx unit, started by the package and holding port 80; the
    /// appliance runs its proxy as registry-proxy.service and disables this one.
    pub distro_nginx_unit: &'static str,
    /// Login shell for system users that must not log in.
    pub nologin_shell: &'static str,
    /// True when the kernel sets `kernel.apparmor_restrict_unprivileged_userns=1`.
    pub apparmor_restricts_userns: bool,
    /// What that restriction means for rootless Podman, for docs and diagnostics.
    pub userns_note: Option<&'static str>,
    /// The official cloud image the bake can download, when regimage knows one.
    pub cloud_image: Option<CloudImage>,
    /// `ID` in the distribution's `/etc/os-release`.
    pub os_release_id: &'static str,
    /// The login cloud-init creates on the distribution's cloud images (`system_info:
    /// default_user` in their `/etc/cloud/cloud.cfg`), with passwordless sudo; root cannot
    /// log in over ssh. The bundle README copies bundles off with it.
    pub cloud_user: &'static str,
}

/// The table. Keep every distribution difference here, not in `if` statements elsewhere.
static TABLE: [DistroInfo; 2] = [
    DistroInfo {
        distro: Distro::Ubuntu2404,
        id: "ubuntu-24.04",
        pretty_name: "Ubuntu 24.04 LTS",
        codename: "noble",
        // Looked up, packages.ubuntu.com (noble, noble-updates, amd64):
        //   podman 4.9.3+ds1-1ubuntu0.2 [universe], nginx 1.24.0-2ubuntu7.x [main],
        //   uidmap 1:4.13+dfsg1-4ubuntu3.x, slirp4netns 1.2.1-1build2 [universe],
        //   fuse-overlayfs 1.13-1 [universe]. Ubuntu cloud images enable universe.
        // No passt: Podman 4.9 uses slirp4netns (passt 0.0~git20240220 exists in universe
        // but is not needed). systemd-resolved is part of the stock cloud image.
        // Installed without Recommends (cloudinit/lean_install.rs), so podman's Recommends
        // that rootless networking needs are listed (DESIGN.md: netavark, slirp4netns,
        // uidmap, catatonit); `gpg` satisfies libgpgme's `gnupg | gpg` without gnupg's
        // agents. Not booted here (no Ubuntu image in the tests).
        packages: &[
            "podman",
            "netavark",
            "catatonit",
            "gpg",
            "nginx",
            "uidmap",
            "slirp4netns",
            "fuse-overlayfs",
            "ufw",
            "curl",
            "ca-certificates",
            "dbus-user-session",
            "libpam-systemd",
        ],
        // Looked up (Ubuntu's kernel flavour for VMs is linux-image-virtual); not measured.
        bootstrap_packages: &[
            "linux-image-virtual",
            "systemd-sysv",
            "systemd-resolved",
            "dbus",
            "cloud-init",
            "openssh-server",
        ],
        // Looked up: 4.9.3 (DESIGN.md, packages.ubuntu.com).
        podman_version: "4.9.3",
        rootless_network: RootlessNetwork::Slirp4netns,
        distro_nginx_unit: "nginx.service",
        nologin_shell: "/usr/sbin/nologin",
        apparmor_restricts_userns: true,
        // Looked up: Ubuntu 23.10+ kernels restrict unprivileged user namespaces to
        // programs whose AppArmor profile grants `userns`; 24.04 enables it by default. The
        // apparmor package ships /etc/apparmor.d/podman (unconfined, with `userns,`) and
        // profiles for crun, runc and slirp4netns, so rootless Podman at /usr/bin/podman
        // works with the sysctl left at 1. Not measured here yet.
        userns_note: Some(
            "Ubuntu 24.04 sets kernel.apparmor_restrict_unprivileged_userns=1: only programs \
             whose AppArmor profile grants `userns` may create user namespaces. Ubuntu's \
             apparmor package ships such profiles for /usr/bin/podman, crun, runc and \
             slirp4netns, so rootless Podman from the archive works without changing the \
             sysctl; a Podman (or helper) installed elsewhere needs its own profile. Do not \
             set the sysctl to 0.",
        ),
        // Looked up: the published noble image (qcow2 despite the .img name) and its
        // SHA256SUMS ("<hex> *<file>"). Not fetched here (no route to it from this machine).
        cloud_image: Some(CloudImage {
            base_url: "https://cloud-images.ubuntu.com/noble/current/",
            file: "noble-server-cloudimg-amd64.img",
            sha256sums: "SHA256SUMS",
        }),
        // Looked up: Ubuntu's cloud.cfg, default_user name "ubuntu".
        os_release_id: "ubuntu",
        cloud_user: "ubuntu",
    },
    DistroInfo {
        distro: Distro::Debian13,
        id: "debian-13",
        pretty_name: "Debian 13",
        codename: "trixie",
        // Measured (DESIGN.md): this set booted and ran rootless Podman 5 in a TCG guest.
        // Without passt Podman 5 fails ("could not find pasta"); without dbus-user-session
        // and libpam-systemd, user@UID.service failed. `nginx` is the real package on
        // trixie (nginx-light is gone); slirp4netns is kept from the measured set.
        // Installed without Recommends (cloudinit/lean_install.rs): podman's Recommends
        // that matter (passt, slirp4netns, uidmap, dbus-user-session, ca-certificates) are
        // listed; `gpg` satisfies libgpgme's `gnupg | gpg` without gnupg's agents and
        // dirmngr. Dropped with the Recommends: buildah, criu, catatonit, aardvark-dns,
        // nftables, cpp, containers-storage (trixie's Packages, 2026-12).
        packages: &[
            "podman",
            "passt",
            "gpg",
            "nginx",
            "uidmap",
            "slirp4netns",
            "fuse-overlayfs",
            "ufw",
            "curl",
            "ca-certificates",
            "dbus-user-session",
            "libpam-systemd",
        ],
        // Measured (DESIGN.md): the mmdebstrap set that booted. systemd-resolved is only
        // for a bare rootfs: installing it on a running cloud image swaps resolv.conf.
        bootstrap_packages: &[
            "linux-image-cloud-amd64",
            "systemd-sysv",
            "systemd-resolved",
            "dbus",
            "cloud-init",
            "openssh-server",
        ],
        // Measured major.minor (DESIGN.md: Debian 13 has 5.4).
        podman_version: "5.4",
        rootless_network: RootlessNetwork::Pasta,
        distro_nginx_unit: "nginx.service",
        nologin_shell: "/usr/sbin/nologin",
        // Debian's kernel has no such sysctl; kernel.unprivileged_userns_clone defaults to 1.
        apparmor_restricts_userns: false,
        userns_note: None,
        // Debian publishes cloud images with SHA512SUMS only; not wired up yet. Bake a Debian
        // base given as a file (the VM tests use image/build-debian-base.sh's).
        cloud_image: None,
        // Looked up: Debian's cloud images (debian-cloud-images), default_user name "debian".
        os_release_id: "debian",
        cloud_user: "debian",
    },
];

impl Distro {
    /// The distribution whose `--distro` id is `id`, if any.
    pub fn from_id(id: &str) -> Option<Distro> {
        Distro::all().find(|d| d.id() == id)
    }

    /// Every supported distribution, in table order.
    pub fn all() -> impl Iterator<Item = Distro> {
        TABLE.iter().map(|row| row.distro)
    }

    /// This distribution's row.
    pub fn info(self) -> &'static DistroInfo {
        match self {
            Distro::Ubuntu2404 => &TABLE[0],
            Distro::Debian13 => &TABLE[1],
        }
    }

    /// The `--distro` value, e.g. `ubuntu-24.04`.
    pub fn id(self) -> &'static str {
        self.info().id
    }

    /// The distribution family's row for an `/etc/os-release` text (its `ID`), whatever the
    /// release: every Debian names its cloud user `debian`.
    pub fn from_os_release(os_release: &str) -> Option<&'static DistroInfo> {
        let id = os_release
            .lines()
            .find_map(|line| line.trim().strip_prefix("ID="))?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        TABLE.iter().find(|row| row.os_release_id == id)
    }
}

impl fmt::Display for Distro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn rows_match_their_keys() {
        for d in Distro::all() {
            assert_eq!(d.info().distro, d);
            // The clap name is the table id, so `--distro` and messages agree.
            let name = d.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(name, d.id());
        }
        assert_eq!(Distro::default(), Distro::Ubuntu2404);
        assert_eq!(Distro::from_id("debian-13"), Some(Distro::Debian13));
        assert_eq!(Distro::from_id("debian-12"), None);
    }

    #[test]
    fn cloud_user_from_os_release() {
        let user = |text: &str| Distro::from_os_release(text).map(|row| row.cloud_user);
        assert_eq!(
            user("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n"),
            Some("debian")
        );
        assert_eq!(
            user("NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n"),
            Some("ubuntu")
        );
        assert_eq!(user("ID=\"fedora\"\n"), None);
        assert_eq!(user(""), None);
    }

    #[test]
    fn cloud_images_are_https_directories() {
        let ubuntu = Distro::Ubuntu2404.info().cloud_image.as_ref().unwrap();
        assert!(ubuntu.base_url.starts_with("https://") && ubuntu.base_url.ends_with('/'));
        assert!(ubuntu.file.contains("noble") && ubuntu.file.contains("amd64"));
        assert_eq!(ubuntu.sha256sums, "SHA256SUMS");
    }

    #[test]
    fn packages_cover_rootless_podman() {
        for d in Distro::all() {
            let p = d.info().packages;
            for needed in [
                "podman",
                "nginx",
                "uidmap",
                "dbus-user-session",
                "libpam-systemd",
                "curl",
            ] {
                assert!(p.contains(&needed), "{d}: {needed} missing");
            }
            // The default rootless network helper must be installed.
            let helper = match d.info().rootless_network {
                RootlessNetwork::Pasta => "passt",
                RootlessNetwork::Slirp4netns => "slirp4netns",
            };
            assert!(p.contains(&helper), "{d}: {helper} missing");
            // No duplicates, and no resolver swap on a running cloud image.
            let mut sorted = p.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), p.len(), "{d}: duplicate package");
            assert!(!p.contains(&"systemd-resolved"));
        }
    }

    #[test]
    fn podman_versions_and_networks() {
        assert!(Distro::Ubuntu2404.info().podman_version.starts_with("4.9"));
        assert_eq!(
            Distro::Ubuntu2404.info().rootless_network.as_str(),
            "slirp4netns"
        );
        assert!(Distro::Debian13.info().podman_version.starts_with('5'));
        assert_eq!(Distro::Debian13.info().rootless_network.as_str(), "pasta");
        assert!(Distro::Ubuntu2404.info().apparmor_restricts_userns);
        assert!(Distro::Ubuntu2404
            .info()
            .userns_note
            .is_some_and(|n| n.contains("kernel.apparmor_restrict_unprivileged_userns")));
        assert!(Distro::Debian13.info().userns_note.is_none());
    }
}
