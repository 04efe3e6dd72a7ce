//! Checks of single config values (names, CIDRs, paths, sizes): each returns what is wrong and
//! what is expected, and [`super::Config::validate`] adds the key.

use std::net::IpAddr;
use std::path::Path;

pub(super) fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("the {what} is empty; expected some text"));
    }
    if value.len() > 64 {
        return Err(format!(
            "{value:?} is {} bytes long; an X.509 name attribute holds at most 64",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("{value:?} contains a control character"));
    }
    Ok(())
}

/// RFC 1123 host name, with an optional single leading `*.` wildcard label.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let expected = "expected a DNS name of letters, digits and hyphens in dot-separated labels of 1-63 characters, e.g. registry.example.com";
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a valid host name; {expected}"));
    }
    let body = body.strip_suffix('.').unwrap_or(body);
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?} is not a valid host name; {expected}"));
        }
    }
    if body
        .split('.')
        .next_back()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} looks like an IP address but does not parse as one; {expected}"
        ));
    }
    Ok(())
}

pub(super) fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok && name != "root" {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable user name; expected 1-32 lowercase letters, digits, '_' or '-', starting with a letter, and not root"
        ))
    }
}

pub fn check_client_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable client name; expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a file)"
        ))
    }
}

/// `ADDR/PREFIX` with no host bits set, as ufw takes it.
pub fn check_cidr(cidr: &str) -> Result<(), String> {
    let expected = "expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8";
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} has no /PREFIX; {expected}"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {cidr:?} is not an IP address; {expected}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{cidr:?} has a bad prefix length; expected 0 to {max}"))?;
    let bits: u128 = match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = max - prefix;
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if bits & host_mask != 0 {
        let network = bits & !host_mask;
        let network: IpAddr = match addr {
            IpAddr::V4(_) => IpAddr::V4((network as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(network.into()),
        };
        return Err(format!(
            "{cidr:?} has host bits set; expected the network address, e.g. {network}/{prefix}"
        ));
    }
    Ok(())
}

/// `HOST[:PORT][/PATH]`, the form registries.conf takes for a mirror location.
pub(super) fn check_mirror(mirror: &str) -> Result<(), String> {
    let expected = "expected HOST[:PORT][/PATH] without a scheme, e.g. mirror.example.com:5000/library/registry";
    if mirror.contains("://") {
        return Err(format!("{mirror:?} has a scheme; {expected}"));
    }
    let (host_port, path) = mirror.split_once('/').unwrap_or((mirror, ""));
    // An IPv6 address is bracketed, so the port is what follows the last ':' after any ']'.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (host_port, None),
    };
    let host_ok = check_dns_name(host).is_ok()
        || host.parse::<IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let path_ok = path.split('/').all(|c| {
        !c.is_empty()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            })
    }) || path.is_empty();
    if host_ok && port_ok && path_ok {
        Ok(())
    } else {
        Err(format!("{mirror:?} is not a registry location; {expected}"))
    }
}

/// Directories that are the system's or the appliance's own: first boot would chown or
/// chmod them. Directories below them (`/var/lib/x`) are fine.
const RESERVED_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/lost+found",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/usr/src",
    "/var",
    "/var/backups",
    "/var/cache",
    "/var/lib",
    "/var/local",
    "/var/lock",
    "/var/log",
    "/var/mail",
    "/var/opt",
    "/var/run",
    "/var/spool",
    "/var/tmp",
    "/run/user",
    "/etc/registry",
    "/etc/regimage",
    "/etc/containers",
    "/etc/systemd",
    "/var/lib/containers",
    "/var/lib/regimage",
    "/var/lib/registry-podman",
    "/var/log/registry-proxy",
    "/run/registry-proxy",
];

/// A directory first boot creates and gives away: absolute, no `..`, not a system
/// directory, and only characters a systemd unit line and podman's `--volume SRC:DST:Z`
/// take literally.
pub(super) fn check_absolute_dir(path: &Path) -> Result<(), String> {
    let text = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(format!("{text:?} is relative; expected an absolute path"));
    }
    if path == Path::new("/") || text.contains("/../") || text.ends_with("/..") {
        return Err(format!(
            "{text:?} is not a usable directory; expected an absolute path below /, without '..'"
        ));
    }
    if let Some(c) = text.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ':' | '$' | '%' | '\'' | '"' | '\\' | ',' | '\u{fffd}')
    }) {
        return Err(format!(
            "{text:?} contains {c:?}, which a systemd unit line or podman's --volume would not take literally; expected a plain path, e.g. /srv/registry"
        ));
    }
    if let Some(dir) = RESERVED_DIRS.iter().find(|d| path == Path::new(d)) {
        return Err(format!(
            "{dir} is a system directory; first boot would change its owner or mode; expected a directory of its own, e.g. {dir}/regimage"
        ));
    }
    Ok(())
}

/// systemd size: a number with an optional K, M, G or T suffix (base 1024), or `infinity`.
pub(super) fn check_systemd_size(value: &str) -> Result<(), String> {
    let digits = value.trim_end_matches(['K', 'M', 'G', 'T']);
    let suffixes = value.len() - digits.len();
    if value == "infinity"
        || (suffixes <= 1
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && digits != "0")
    {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a size; expected a number with an optional K, M, G or T suffix, e.g. 1G or 512M"
        ))
    }
}

/// systemd CPUQuota=: a positive percentage.
pub(super) fn check_cpu_quota(value: &str) -> Result<(), String> {
    match value.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
        Some(n) if n > 0 => Ok(()),
        _ => Err(format!(
            "{value:?} is not a CPU quota; expected a percentage of one CPU, e.g. 100% or 250%"
        )),
    }
}

/// nginx size: a number with an optional k, m or g suffix (either case).
pub(super) fn check_nginx_size(value: &str) -> Result<(), String> {
    let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    if value.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not an nginx size; expected a number with an optional k, m or g suffix, e.g. 2g or 512m (0 means no limit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        for good in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.1.7/32",
            "fd00::/8",
            "::/0",
        ] {
            check_cidr(good).unwrap();
        }
        let e = check_cidr("10.0.0.1/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "fd00::/129", "x/1"] {
            assert!(check_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dns_names() {
        for good in [
            "registry",
            "reg-1.example.com",
            "*.example.com",
            "example.com.",
        ] {
            check_dns_name(good).unwrap();
        }
        for bad in [
            "",
            "-a.com",
            "a_b.com",
            "a..b",
            "10.0.0.300",
            &"a".repeat(64),
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn mirrors() {
        for good in [
            "10.0.2.2:5000",
            "mirror.example.com/library/registry",
            "[fd00::1]:5000/x",
        ] {
            check_mirror(good).unwrap();
        }
        for bad in [
            "http://m:5000",
            "m:0",
            "m:port",
            "m/Upper",
            "bad_host",
            "m//x",
        ] {
            assert!(check_mirror(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes_and_quotas() {
        check_systemd_size("1G").unwrap();
        check_systemd_size("infinity").unwrap();
        assert!(check_systemd_size("1GB").is_err());
        assert!(check_systemd_size("G").is_err());
        check_cpu_quota("150%").unwrap();
        assert!(check_cpu_quota("150").is_err());
        check_nginx_size("0").unwrap();
        check_nginx_size("512m").unwrap();
        assert!(check_nginx_size("2gb").is_err());
    }

    #[test]
    fn dirs() {
        for good in [
            "/var/lib/registry",
            "/srv/images",
            "/var/lib/x/",
            "/home/ci/reg",
        ] {
            check_absolute_dir(Path::new(good)).unwrap();
        }
        for (bad, hint) in [
            ("relative", "relative"),
            ("/", "below /"),
            ("/a/../etc", "'..'"),
            ("/etc", "system directory"),
            ("/var/lib/", "system directory"),
            ("/home", "system directory"),
            ("/usr/local", "system directory"),
            ("/var/lib/regimage", "system directory"),
            ("/srv/a:b", "':'"),
            ("/srv/$HOME", "'$'"),
            ("/srv/100%", "'%'"),
            ("/srv/it's", "'\\''"),
            ("/srv/a b", "' '"),
            ("/srv/a,b", "','"),
            ("/srv/a\\b", "'\\\\'"),
            ("/srv/a\tb", "'\\t'"),
        ] {
            let e = check_absolute_dir(Path::new(bad)).unwrap_err();
            assert!(e.contains(hint), "{bad}: {e}");
        }
    }
}
