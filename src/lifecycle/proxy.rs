//! Reloading the TLS proxy after a file it serves changed: `systemctl reload
//! registry-proxy.service` (the unit's ExecReload checks the config, then sends nginx HUP),
//! then a wait until nginx really took the new files. nginx's master PID stays; it starts new
//! workers and tells the old ones to stop accepting and finish their transfers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::Task;

const PROXY_UNIT: &str = "registry-proxy.service";
/// How long nginx may take to start new workers after the signal (TCG machines are slow).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// How the proxy is reached.
#[derive(Debug, Clone)]
pub enum Proxy {
    /// The appliance: registry-proxy.service in the system manager.
    Systemd,
    /// Tests (`--root`): a shell command reloads it; `pid_file` names nginx's master.
    Command { command: String, pid_file: PathBuf },
    /// Tests without a proxy: nothing is reloaded.
    None,
    /// Unit tests: a proxy that notes, at each reload, the bytes of the files it serves.
    #[cfg(test)]
    Recording(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>, PathBuf),
}

/// Unit tests: the files the proxy serves under `root`, as one byte string.
#[cfg(test)]
pub fn served_bytes(root: &std::path::Path) -> Vec<u8> {
    let paths = crate::pki::PkiPaths::new(root);
    [paths.server_pem, paths.client_ca_cert, paths.client_crl]
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// New workers run the new files; how long that took.
    Done { main_pid: u32, took: Duration },
    /// The proxy is not running: it loads the files when it starts.
    NotRunning,
    /// No way to reach a proxy (tests).
    NoProxy,
}

impl Proxy {
    /// nginx's master PID, `None` when the proxy does not run.
    pub fn main_pid(&self) -> Result<Option<u32>> {
        match self {
            Proxy::Systemd => {
                let out = Task::new("asking systemd for the proxy's main PID", "systemctl")
                    .args(["show", "--property=MainPID", "--value", PROXY_UNIT])
                    .run_get_stdout()?;
                let pid: u32 = String::from_utf8_lossy(&out)
                    .trim()
                    .parse()
                    .context("reading the proxy's MainPID")?;
                Ok((pid != 0).then_some(pid))
            }
            Proxy::Command { pid_file, .. } => Ok(std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())),
            Proxy::None => Ok(None),
            #[cfg(test)]
            Proxy::Recording(..) => Ok(Some(1)),
        }
    }

    /// Reloads the proxy and waits until every worker that accepts connections is a new one.
    pub fn reload(&self) -> Result<Reloaded> {
        if matches!(self, Proxy::None) {
            return Ok(Reloaded::NoProxy);
        }
        #[cfg(test)]
        if let Proxy::Recording(log, root) = self {
            if let Ok(mut log) = log.lock() {
                log.push(served_bytes(root));
            }
            return Ok(Reloaded::Done {
                main_pid: 1,
                took: Duration::ZERO,
            });
        }
        let Some(main_pid) = self.main_pid()? else {
            if matches!(self, Proxy::Command { .. }) {
                // A test's proxy whose PID file is elsewhere: reload it, without the wait.
                self.send_reload()?;
            }
            return Ok(Reloaded::NotRunning);
        };
        let old = workers(main_pid);
        let started = Instant::now();
        self.send_reload()?;
        loop {
            if new_files_taken(main_pid, &old) {
                return Ok(Reloaded::Done {
                    main_pid,
                    took: started.elapsed(),
                });
            }
            if started.elapsed() > RELOAD_TIMEOUT {
                bail!(
                    "the TLS proxy (PID {main_pid}) did not start workers with the new files within {} s of the reload; journalctl -u {PROXY_UNIT} says why",
                    RELOAD_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Asks the proxy to reload (returns once the request is sent, not once it took).
    fn send_reload(&self) -> Result<()> {
        match self {
            Proxy::Systemd => Task::new("reloading the TLS proxy", "systemctl")
                .args(["reload", PROXY_UNIT])
                .run()
                .context("reloading the TLS proxy (systemctl reload registry-proxy.service; journalctl -u registry-proxy.service says why)"),
            Proxy::Command { command, .. } => Task::new("reloading the TLS proxy", "sh")
                .arg("-c")
                .arg(command)
                .run()
                .context("reloading the TLS proxy"),
            _ => Ok(()),
        }
    }
}

/// The PIDs of `main`'s children (nginx's workers).
fn workers(main: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent(*pid) == Some(main))
        .collect()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether nginx runs a new worker and every old one has stopped accepting (gone, or its
/// title says "shutting down" while it finishes its transfers).
fn new_files_taken(main: u32, old: &[u32]) -> bool {
    let now = workers(main);
    let has_new = now
        .iter()
        .any(|pid| !old.contains(pid) && !shutting_down(*pid));
    let old_accepting = old
        .iter()
        .any(|pid| now.contains(pid) && !shutting_down(*pid));
    has_new && !old_accepting
}

fn shutting_down(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("shutting down"))
        .unwrap_or(true)
}
