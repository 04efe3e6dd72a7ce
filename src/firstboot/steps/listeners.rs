//! Before the proxy starts: nginx.conf has one `listen [::]:PORT` line per server, and
//! nginx refuses to start when the kernel gives out no IPv6 socket (booted with
//! `ipv6.disable=1`, issue 10). On such a kernel first boot comments those lines out; on
//! any other it leaves the file alone.
//!
//! The kernel is asked through [`System::has_ipv6`](crate::firstboot::system::System):
//! socket(AF_INET6) failing with EAFNOSUPPORT is exactly what stops nginx, whereas
//! `/proc/net/if_inet6` is only a sign of it (and per network namespace).

use anyhow::Result;

use super::{mode_of, read_optional, Ctx};
use crate::fsutil;
use crate::render::NGINX_CONF_PATH;

/// How an IPv6 listener starts, after indentation (the template writes `[::]` for them).
const IPV6_LISTEN: &str = "listen [::]:";
/// Put before each listener taken out, so the file says why and the change is undone by hand.
const MARK: &str = "# regimage firstboot: this kernel has no IPv6: ";

/// Comments out the proxy's IPv6 listeners when the kernel has no IPv6.
pub(super) fn ipv6_listeners(ctx: &mut Ctx<'_>) -> Result<()> {
    let path = ctx.path(NGINX_CONF_PATH);
    let Some(text) = read_optional(&path)? else {
        // Not rendered (a test root); the proxy's start reports it.
        return Ok(());
    };
    let Some((new, removed)) = without_ipv6_listeners(&text) else {
        return Ok(());
    };
    if ctx.sys.has_ipv6()? {
        return Ok(());
    }
    let mode = mode_of(&path)?;
    ctx.change(
        format!(
            "comment out the {removed} IPv6 listener(s) in {NGINX_CONF_PATH}: this kernel has \
             no IPv6 (booted with ipv6.disable=1?) and nginx would not start with them"
        ),
        move |_| fsutil::write_atomic(&path, new.as_bytes(), mode),
    )
}

/// `conf` with every `listen [::]:...` line commented out, and how many there were;
/// `None` when there is none (so a second run changes nothing).
pub fn without_ipv6_listeners(conf: &str) -> Option<(String, usize)> {
    let mut removed = 0;
    let mut out = String::with_capacity(conf.len() + 64);
    for line in conf.split_inclusive('\n') {
        let body = line.trim_start();
        if body.starts_with(IPV6_LISTEN) {
            removed += 1;
            out.push_str(&line[..line.len() - body.len()]);
            out.push_str(MARK);
            out.push_str(body);
        } else {
            out.push_str(line);
        }
    }
    (removed > 0).then_some((out, removed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    #[test]
    fn ipv6_listeners_are_commented_out_once() {
        let conf = "http {\n    server {\n        listen 443 ssl;\n        # IPv6 too\n        \
                    listen [::]:443 ssl;\n    }\n    server {\n\tlisten 4443 ssl;\n\tlisten [::]:4443 ssl ipv6only=on;\n    }\n}";
        let (new, removed) = without_ipv6_listeners(conf).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(
            new,
            "http {\n    server {\n        listen 443 ssl;\n        # IPv6 too\n        \
             # regimage firstboot: this kernel has no IPv6: listen [::]:443 ssl;\n    }\n    \
             server {\n\tlisten 4443 ssl;\n\t# regimage firstboot: this kernel has no IPv6: \
             listen [::]:4443 ssl ipv6only=on;\n    }\n}"
        );
        // The IPv4 listeners stay; a second pass finds nothing.
        assert_eq!(new.matches("listen 4").count(), 2);
        assert_eq!(without_ipv6_listeners(&new), None);
        assert_eq!(without_ipv6_listeners("listen 443 ssl;\n"), None);
    }

    #[test]
    fn rendered_config_loses_every_ipv6_listener_and_keeps_the_ipv4_ones() {
        let files = crate::render::appliance_files(&crate::config::Config::default()).unwrap();
        let conf = files
            .iter()
            .find(|f| f.path == std::path::Path::new(NGINX_CONF_PATH))
            .unwrap();
        let conf = String::from_utf8(conf.contents.clone()).unwrap();
        let listening = |text: &str, prefix: &str| {
            text.lines()
                .filter(|l| l.trim_start().starts_with(prefix))
                .count()
        };
        let v4 = listening(&conf, "listen ") - listening(&conf, IPV6_LISTEN);
        let (new, removed) = without_ipv6_listeners(&conf).unwrap();
        assert!(removed >= 2, "pull and push servers: {removed}");
        assert_eq!(listening(&new, IPV6_LISTEN), 0);
        assert_eq!(listening(&new, "listen "), v4);
    }
}
