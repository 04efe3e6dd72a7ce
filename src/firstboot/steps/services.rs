//! Steps 8 and 9: the registry, the proxy, the renew timer and (s3 storage) the cluster sync
//! timer enabled and started (the proxy's IPv6 listeners out first on a kernel without
//! IPv6), then checked over TLS.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{
    Ctx, CLUSTER_SYNC_TIMER_UNIT, PROXY_UNIT, REGISTRY_UNIT, RENEW_TIMER_UNIT, STATUS_INTERVAL,
};
use crate::bundle;
use crate::firstboot::system::{Manager, Probe};
use crate::pki::PkiPaths;

/// Step 8: the registry (the service user's manager), the proxy and the renew timer (the
/// system manager) enabled for later boots and started now. The timer's first runs are
/// skipped until first boot's marker exists (the renew unit's condition). The cluster sync
/// timer only with shared (s3) storage: a lone node has no one to sync with.
pub fn services(ctx: &mut Ctx<'_>) -> Result<()> {
    super::listeners::ipv6_listeners(ctx)?;
    let Some(user) = ctx.service_user("the registry and the proxy are started")? else {
        return Ok(());
    };
    let user_manager_up = ctx
        .path(format!("/run/user/{}/systemd/private", user.uid))
        .exists();
    let mut units = vec![
        (Manager::User(user.uid), REGISTRY_UNIT),
        (Manager::System, PROXY_UNIT),
        (Manager::System, RENEW_TIMER_UNIT),
    ];
    if crate::lifecycle::cluster::enabled(ctx.config) {
        units.push((Manager::System, CLUSTER_SYNC_TIMER_UNIT));
    }
    for (manager, unit) in units {
        if ctx.opts.dry_run && manager != Manager::System && !user_manager_up {
            ctx.change(format!("enable and start {unit} in {manager}"), |_| Ok(()))?;
            continue;
        }
        let status = ctx.sys.unit_status(manager, unit)?;
        if status.load_state == "not-found" {
            bail!(
                "{unit} is not installed in {manager}; `regimage render` (or the image build) \
                 puts it in place"
            );
        }
        if ctx.sys.unit_file_state(manager, unit)? != "enabled" {
            ctx.change(format!("enable {unit} in {manager}"), move |sys| {
                sys.enable_unit(manager, unit)
            })?;
        }
        if !status.is_up() {
            let reload = status.need_daemon_reload;
            ctx.change(format!("start {unit} in {manager}"), move |sys| {
                // Unit files written after the manager loaded them (cloud-init).
                if reload {
                    sys.daemon_reload(manager)?;
                }
                sys.start_unit(manager, unit)
            })?;
        }
    }
    Ok(())
}

/// Step 9: the registry answers on loopback and the proxy on the pull port, over TLS checked
/// with the new server CA; bounded by --health-timeout.
pub fn health(ctx: &mut Ctx<'_>) -> Result<()> {
    let host = ctx.sans()?.primary_name.clone();
    let ports = ctx.config.ports.clone();
    let registry_url = format!("http://127.0.0.1:{}/v2/", ports.registry);
    let pull_url = format!("https://{}:{}/v2/", bundle::url_host(&host), ports.pull);
    // curl's --resolve makes the certificate's name reach this machine; an address is used as is.
    let resolve = host
        .parse::<std::net::IpAddr>()
        .is_err()
        .then(|| format!("{host}:{}:127.0.0.1", ports.pull));
    let timeout = ctx.opts.health_timeout;
    if ctx.opts.dry_run {
        ctx.note(format!(
            "a run waits up to {} s for GET {registry_url} and {pull_url} to answer 200",
            timeout.as_secs()
        ));
        return Ok(());
    }
    let user = ctx.service.clone().context("the users step has not run")?;
    let ca = PkiPaths::new(ctx.root).ca_cert;
    let sys = ctx.sys;
    let registry_probe = Probe {
        url: registry_url.clone(),
        cacert: None,
        resolve: None,
    };
    let pull_probe = Probe {
        url: pull_url.clone(),
        cacert: Some(ca.clone()),
        resolve,
    };
    let registry_hint = format!(
        "look at it with `systemctl --user -M {}@ status {REGISTRY_UNIT}` and `journalctl -b _UID={}`",
        user.name, user.uid
    );
    let proxy_hint = format!(
        "look at it with `systemctl status {PROXY_UNIT}` and `journalctl -b -u {PROXY_UNIT}`"
    );
    let start = sys.elapsed();
    let left = || timeout.saturating_sub(sys.elapsed().saturating_sub(start));
    // The unit's state, asked of systemd about once a second (a process, under TCG up to
    // a second of the one CPU the services start on): when it was asked and what it said.
    let asked: RefCell<Option<(Duration, String)>> = RefCell::new(None);
    let probe = |probe: &Probe,
                 unit_manager: Manager,
                 unit: &str,
                 hint: &str,
                 what: &str|
     -> Result<Option<String>> {
        // The answer first: a ready service costs one request, no systemctl.
        let answer = match sys.http_status(probe) {
            Ok(200) => return Ok(None),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => format!("{e:#}"),
        };
        let now = sys.elapsed();
        let mut asked = asked.borrow_mut();
        let state = match &*asked {
            Some((at, state)) if now.saturating_sub(*at) < STATUS_INTERVAL => state.clone(),
            _ => {
                let status = sys.unit_status(unit_manager, unit)?;
                if status.active_state == "failed" {
                    bail!("{what} is not up: {unit} failed; {hint}");
                }
                // A start job that never runs is held by an ordering dependency; one on
                // regimage-firstboot.service would hold it until this run gives up.
                let state = if status.job_pending && !status.is_up() {
                    format!(
                        "{unit} is {} with its start job still queued (is it ordered after \
                         regimage-firstboot.service?)",
                        status.active_state
                    )
                } else {
                    format!("{unit} is {}", status.active_state)
                };
                *asked = Some((now, state.clone()));
                state
            }
        };
        Ok(Some(format!("{answer}; {state}")))
    };
    ctx.wait(
        left(),
        || probe(&registry_probe, Manager::User(user.uid), REGISTRY_UNIT, &registry_hint, "the registry"),
        |why| {
            format!(
                "the registry is not up: GET {registry_url} did not answer 200 within {} s (last: {why}); {registry_hint}",
                timeout.as_secs()
            )
        },
    )?;
    asked.replace(None);
    ctx.wait(
        left(),
        || probe(&pull_probe, Manager::System, PROXY_UNIT, &proxy_hint, "the TLS proxy"),
        |why| {
            format!(
                "the TLS proxy is not up: GET {pull_url} (TLS checked with the new server CA {}) did \
                 not answer 200 within {} s (last: {why}); {proxy_hint}",
                ca.display(),
                timeout.as_secs()
            )
        },
    )?;
    ctx.note(format!("{registry_url} and {pull_url} answer 200"));
    Ok(())
}
