//! Step 2: what first boot needs from the distribution is installed, and the
//! distribution's own nginx is off.
//!
//! On the user-data path cloud-init installs the packages once per instance; a transient
//! failure there (a mirror down) used to leave the machine without them for good, with
//! nothing on the console (issue 10). First boot now checks them itself at every run,
//! installs what is missing with apt-get (bounded), or stops saying what is missing; the
//! next boot runs it again.

use anyhow::{Context, Result};

use super::{read_optional, Ctx, PROXY_UNIT};
use crate::distro::Distro;
use crate::firstboot::system::Manager;

/// Where the distribution says what it is (os-release(5): /etc first, then /usr/lib).
const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// Step 2 (see the module docs).
pub fn packages(ctx: &mut Ctx<'_>) -> Result<()> {
    let Some(distro) = installed_distro(ctx)? else {
        ctx.note(format!(
            "packages not checked: {} names no distribution regimage knows",
            OS_RELEASE[0]
        ));
        return Ok(());
    };
    let info = distro.info();
    let missing = ctx.sys.missing_packages(info.packages)?;
    if !missing.is_empty() {
        let list = missing.join(" ");
        let hint = format!(
            "{} needs {list}, which {} not installed, and apt-get could not install {}; \
             check the network and the apt sources: first boot tries again at the next boot \
             (or run `systemctl restart regimage-firstboot.service`)",
            info.pretty_name,
            if missing.len() == 1 { "is" } else { "are" },
            if missing.len() == 1 { "it" } else { "them" },
        );
        ctx.change(
            format!("install the missing packages {list} with apt-get"),
            move |sys| sys.install_packages(&missing).context(hint),
        )?;
    }
    // Its package enables and starts it (on port 80); the proxy is our own unit.
    let unit = info.distro_nginx_unit;
    let status = ctx.sys.unit_status(Manager::System, unit)?;
    if status.load_state != "not-found"
        && (status.is_up() || ctx.sys.unit_file_state(Manager::System, unit)? == "enabled")
    {
        ctx.change(
            format!("disable and stop {unit} (the proxy is {PROXY_UNIT})"),
            move |sys| sys.disable_unit(Manager::System, unit),
        )?;
    }
    Ok(())
}

/// The distribution of the machine under the root, from its os-release file.
fn installed_distro(ctx: &Ctx<'_>) -> Result<Option<Distro>> {
    for path in OS_RELEASE {
        if let Some(text) = read_optional(&ctx.path(path))? {
            return Ok(distro_from_os_release(&text));
        }
    }
    Ok(None)
}

/// `ID=debian` and `VERSION_ID="13"` make `debian-13`, the `--distro` id.
pub fn distro_from_os_release(text: &str) -> Option<Distro> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .next_back()
    };
    Distro::from_id(&format!("{}-{}", value("ID")?, value("VERSION_ID")?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    #[test]
    fn os_release_names_the_distribution() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\n\
                      VERSION_ID=\"13\"\nVERSION=\"13 (trixie)\"\nID=debian\n";
        assert_eq!(distro_from_os_release(debian), Some(Distro::Debian13));
        let ubuntu = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(distro_from_os_release(ubuntu), Some(Distro::Ubuntu2404));
        assert_eq!(distro_from_os_release("ID=debian\nVERSION_ID=12\n"), None);
        assert_eq!(distro_from_os_release("ID=fedora\n"), None);
        assert_eq!(distro_from_os_release(""), None);
    }
}
