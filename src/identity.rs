//! The host's identity: its names and addresses, and the server certificate's subject
//! alternative names made from them and the site config.
//!
//! Gathering ([`HostFacts::gather`]) only reads the system and never fails: a name that cannot
//! be found is left out. Merging ([`server_sans`]) is pure, so it is tested with made-up facts.

use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use crate::config::{check_dns_name, Config};

/// What this machine says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// The kernel host name (`uname -n`), lowercased; `None` when it is not a usable DNS name.
    pub hostname: Option<String>,
    /// The fully qualified name (`hostname -f`), when one with a domain part is known.
    pub fqdn: Option<String>,
    /// Interface addresses, without loopback, link-local, multicast and unspecified ones.
    pub addresses: Vec<IpAddr>,
}

/// The names the server certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sans {
    /// The name clients use (the certificate's CN and the host in the bundles' certs.d
    /// directories): the configured hostname, else the FQDN, else the host name.
    pub primary_name: String,
    /// DNS names, lowercase, without a trailing dot, deduplicated, primary name first.
    pub dns_names: Vec<String>,
    /// IP addresses (typed as IP SANs, never as DNS names), deduplicated.
    pub ip_addresses: Vec<IpAddr>,
}

impl Sans {
    /// The wanted names and addresses that a certificate carrying `dns_names` and
    /// `ip_addresses` lacks, as text (a certificate may carry more: that is fine).
    pub fn missing_in(&self, dns_names: &[String], ip_addresses: &[IpAddr]) -> Vec<String> {
        self.dns_names
            .iter()
            .filter(|n| !dns_names.contains(n))
            .cloned()
            .chain(
                self.ip_addresses
                    .iter()
                    .filter(|ip| !ip_addresses.contains(ip))
                    .map(IpAddr::to_string),
            )
            .collect()
    }
}

impl HostFacts {
    /// Reads the host name, the FQDN (best effort) and the interface addresses.
    pub fn gather() -> HostFacts {
        let hostname = match nix::unistd::gethostname() {
            Ok(name) => usable_name(&name.to_string_lossy()),
            Err(e) => {
                tracing::warn!("reading the host name: {e}");
                None
            }
        };
        let fqdn = hostname.as_deref().and_then(find_fqdn);
        let addresses = match nix::ifaddrs::getifaddrs() {
            Ok(ifaddrs) => usable_addresses(ifaddrs.filter_map(|ifaddr| {
                let address = ifaddr.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })),
            Err(e) => {
                tracing::warn!("listing the interface addresses: {e}");
                Vec::new()
            }
        };
        let facts = HostFacts {
            hostname,
            fqdn,
            addresses,
        };
        tracing::debug!(?facts, "host facts");
        facts
    }
}

/// The addresses a client could reach, in interface order, each once.
fn usable_addresses(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for ip in ips {
        if is_usable_address(&ip) && !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// Whether a client could reach this machine at `ip` (not loopback, link-local, multicast,
/// or unspecified).
pub fn is_usable_address(ip: &IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        // An IPv4-mapped address is an IPv4 address seen through an IPv6 socket.
        IpAddr::V6(v6) => !v6.is_unicast_link_local() && v6.to_ipv4_mapped().is_none(),
    }
}

/// The FQDN for `hostname`: the name itself when it has a dot, else the canonical name of a
/// line naming it in /etc/hosts, else the resolver's canonical name.
fn find_fqdn(hostname: &str) -> Option<String> {
    if hostname.contains('.') {
        return Some(hostname.to_string());
    }
    let from_hosts = std::fs::read_to_string(Path::new("/etc/hosts"))
        .ok()
        .and_then(|text| fqdn_from_hosts(&text, hostname));
    from_hosts.or_else(|| canonical_name(hostname))
}

/// Finds the first /etc/hosts line that lists `hostname` and returns that line's canonical
/// (first) name when it is a longer dotted name: `127.0.1.1 reg.example.com reg`.
pub fn fqdn_from_hosts(hosts: &str, hostname: &str) -> Option<String> {
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let (Some(_address), Some(canonical)) = (fields.next(), fields.next()) else {
            continue;
        };
        let canonical = canonical.to_ascii_lowercase();
        let names_host = canonical == hostname
            || canonical.split('.').next() == Some(hostname)
            || fields.any(|alias| alias.eq_ignore_ascii_case(hostname));
        if names_host {
            if let Some(fqdn) = usable_name(&canonical).filter(|n| is_fqdn_of(n, hostname)) {
                return Some(fqdn);
            }
        }
    }
    None
}

fn is_fqdn_of(name: &str, hostname: &str) -> bool {
    name.contains('.') && !name.starts_with("localhost") && name.split('.').next() == Some(hostname)
}

/// The resolver's canonical name for `hostname` (getaddrinfo with AI_CANONNAME, what
/// `hostname -f` does), when it is a dotted name for this host.
fn canonical_name(hostname: &str) -> Option<String> {
    let hints = dns_lookup::AddrInfoHints {
        flags: nix::libc::AI_CANONNAME,
        ..dns_lookup::AddrInfoHints::default()
    };
    // glibc puts the canonical name on the first entry only.
    let first = dns_lookup::getaddrinfo(Some(hostname), None, Some(hints))
        .ok()?
        .next()?
        .ok()?;
    first
        .canonname
        .and_then(|n| usable_name(&n))
        .filter(|n| is_fqdn_of(n, hostname))
}

/// `name` lowercased and without a trailing dot, when it is a valid DNS name.
fn usable_name(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty() && check_dns_name(&name).is_ok()).then_some(name)
}

/// What keeps clients from reaching this machine by a name in its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// No address but loopback and link-local ones.
    pub address: bool,
    /// No configured `hostname` and no host name but this placeholder (`localhost`).
    pub name: Option<String>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .name
            .as_ref()
            .map(|n| format!("no host name but {n:?} and no hostname in the site config"));
        let parts: Vec<String> = self
            .address
            .then(|| "no network address but loopback and link-local ones".to_string())
            .into_iter()
            .chain(name)
            .collect();
        f.write_str(&parts.join(", and "))
    }
}

/// What keeps clients from reaching this machine, or `None` when nothing does: it needs
/// an address other than loopback and link-local, and a name (the configured `hostname`,
/// else a host name other than `localhost`). With no network at first boot the
/// certificate would otherwise name only `localhost` (issue 10).
pub fn missing_for_clients(config: &Config, facts: &HostFacts) -> Option<Missing> {
    let named = config.hostname.is_some()
        || config.cluster.name.is_some()
        || facts
            .fqdn
            .iter()
            .chain(facts.hostname.iter())
            .any(|n| !is_placeholder_name(n));
    let missing = Missing {
        address: facts.addresses.is_empty(),
        name: (!named).then(|| facts.hostname.clone().unwrap_or_default()),
    };
    (missing.address || missing.name.is_some()).then_some(missing)
}

/// A name every machine has before it is given its own.
fn is_placeholder_name(name: &str) -> bool {
    name.is_empty() || name == "localhost" || name.starts_with("localhost.")
}

/// Merges the configured hostname, the extra names and the host's own names and addresses
/// into the server certificate's SANs. Names that parse as IP addresses become IP SANs.
pub fn server_sans(config: &Config, facts: &HostFacts) -> Sans {
    let normalize = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
    let mut dns_names: Vec<String> = Vec::new();
    let mut ip_addresses: Vec<IpAddr> = Vec::new();
    let add_name = |name: &str, dns: &mut Vec<String>, ips: &mut Vec<IpAddr>| {
        if let Ok(ip) = name.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        } else {
            let name = normalize(name);
            if !name.is_empty() && !dns.contains(&name) {
                dns.push(name);
            }
        }
    };
    // A cluster's name comes first: clients use it for every node (issue 12).
    let configured = config
        .cluster
        .name
        .as_deref()
        .or(config.hostname.as_deref())
        .map(normalize);
    for name in configured
        .iter()
        .chain(config.hostname.iter())
        .chain(config.extra_names.iter())
        .chain(facts.fqdn.iter())
        .chain(facts.hostname.iter())
    {
        add_name(name, &mut dns_names, &mut ip_addresses);
    }
    for ip in &facts.addresses {
        add_name(&ip.to_string(), &mut dns_names, &mut ip_addresses);
    }
    let primary_name = configured
        .or_else(|| facts.fqdn.as_deref().map(normalize))
        .or_else(|| facts.hostname.as_deref().map(normalize))
        .or_else(|| ip_addresses.first().map(IpAddr::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    if !dns_names.contains(&primary_name) && primary_name.parse::<IpAddr>().is_err() {
        dns_names.insert(0, primary_name.clone());
    }
    Sans {
        primary_name,
        dns_names,
        ip_addresses,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    fn facts(hostname: Option<&str>, fqdn: Option<&str>, addresses: &[&str]) -> HostFacts {
        HostFacts {
            hostname: hostname.map(str::to_string),
            fqdn: fqdn.map(str::to_string),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn configured_hostname_is_primary_and_everything_merges() {
        let config = Config {
            hostname: Some("Registry.Example.com.".into()),
            extra_names: vec![
                "registry.example.com".into(),
                "alias.example.com".into(),
                "192.0.2.7".into(),
                "2001:db8::7".into(),
            ],
            ..Config::default()
        };
        let sans = server_sans(
            &config,
            &facts(Some("vm1"), Some("vm1.lan"), &["192.0.2.7", "198.51.100.3"]),
        );
        assert_eq!(sans.primary_name, "registry.example.com");
        assert_eq!(
            sans.dns_names,
            [
                "registry.example.com",
                "alias.example.com",
                "vm1.lan",
                "vm1"
            ]
        );
        let ips: Vec<String> = sans.ip_addresses.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.0.2.7", "2001:db8::7", "198.51.100.3"]);
    }

    #[test]
    fn primary_falls_back_to_fqdn_then_hostname_then_address() {
        let config = Config::default();
        let sans = server_sans(&config, &facts(Some("vm1"), Some("vm1.example.org"), &[]));
        assert_eq!(sans.primary_name, "vm1.example.org");
        assert_eq!(sans.dns_names, ["vm1.example.org", "vm1"]);
        let sans = server_sans(&config, &facts(Some("vm1"), None, &["10.0.0.5"]));
        assert_eq!(sans.primary_name, "vm1");
        assert_eq!(sans.ip_addresses, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        let sans = server_sans(&config, &facts(None, None, &["10.0.0.5"]));
        assert_eq!(sans.primary_name, "10.0.0.5");
        assert!(sans.dns_names.is_empty(), "{sans:?}");
        let sans = server_sans(&config, &HostFacts::default());
        assert_eq!(sans.primary_name, "localhost");
        assert_eq!(sans.dns_names, ["localhost"]);
    }

    #[test]
    fn clients_need_an_address_and_a_real_name() {
        let config = Config::default();
        let missing = |c: &Config, f: &HostFacts| missing_for_clients(c, f).map(|m| m.to_string());
        assert_eq!(
            missing(&config, &facts(Some("vm1"), None, &["10.0.0.5"])),
            None
        );
        assert_eq!(
            missing(&config, &facts(Some("vm1"), None, &[])).unwrap(),
            "no network address but loopback and link-local ones"
        );
        assert_eq!(
            missing(&config, &facts(Some("localhost"), None, &["10.0.0.5"])).unwrap(),
            "no host name but \"localhost\" and no hostname in the site config"
        );
        let both = missing_for_clients(&config, &HostFacts::default()).unwrap();
        assert_eq!(
            both,
            Missing {
                address: true,
                name: Some(String::new())
            }
        );
        assert!(
            both.to_string().contains("ones, and no host name but \"\""),
            "{both}"
        );
        // A configured name still needs an address: clients reach the machine through one.
        let named = Config {
            hostname: Some("localhost".into()),
            ..Config::default()
        };
        assert_eq!(missing(&named, &facts(None, None, &["10.0.0.5"])), None);
        assert!(missing(&named, &facts(Some("localhost"), None, &[])).is_some());
        let fqdn = facts(Some("localhost"), Some("reg.lan"), &["fd00::5"]);
        assert_eq!(missing(&config, &fqdn), None);
    }

    #[test]
    fn reachable_address_kinds() {
        for good in ["192.0.2.1", "10.1.2.3", "2001:db8::1", "fd00::2"] {
            assert!(is_usable_address(&good.parse().unwrap()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.3.4",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_usable_address(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn fqdn_from_etc_hosts() {
        let hosts = "127.0.0.1 localhost\n# 10.0.0.1 vm1.wrong.example vm1\n\
                     127.0.1.1\tvm1.example.com vm1  # cloud-init\n::1 localhost ip6-localhost\n";
        assert_eq!(
            fqdn_from_hosts(hosts, "vm1").as_deref(),
            Some("vm1.example.com")
        );
        // The canonical name alone, without the short alias, also counts.
        assert_eq!(
            fqdn_from_hosts("10.0.0.9 vm2.corp.example\n", "vm2").as_deref(),
            Some("vm2.corp.example")
        );
        // A line that names the host without a domain, or another host, gives nothing.
        assert_eq!(
            fqdn_from_hosts("127.0.0.1 localhost\n127.0.0.1 vm\n", "vm"),
            None
        );
        assert_eq!(
            fqdn_from_hosts("10.0.0.1 other.example.com vm1x\n", "vm1"),
            None
        );
        assert_eq!(
            fqdn_from_hosts("127.0.0.1 localhost.localdomain vm\n", "vm"),
            None
        );
    }

    #[test]
    fn interface_addresses_keep_reachable_ones_once_in_order() {
        let ips = [
            "127.0.0.1",
            "192.0.2.10",
            "::1",
            "fe80::5054:ff:fe12:3456",
            "2001:db8::10",
            "192.0.2.10",
            "10.0.0.2",
        ]
        .map(|ip| ip.parse::<IpAddr>().unwrap());
        let kept: Vec<String> = usable_addresses(ips)
            .iter()
            .map(IpAddr::to_string)
            .collect();
        assert_eq!(kept, ["192.0.2.10", "2001:db8::10", "10.0.0.2"]);
    }

    #[test]
    fn resolver_name_must_be_a_dotted_name_of_the_host() {
        // /etc/hosts answers "localhost" as its own canonical name: not an FQDN.
        assert_eq!(canonical_name("localhost"), None);
        assert_eq!(canonical_name("bad\0name"), None);
    }
}
