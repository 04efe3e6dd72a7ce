//! Waiting for a file the operator copies onto the machine out of band (the S3 credentials,
//! a join file): bounded, saying what it waits for and where, and then what to do.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often the wait looks again.
const POLL: Duration = Duration::from_secs(2);
/// How often the wait says again what it waits for (journal and console).
const REMIND: Duration = Duration::from_secs(60);

/// The clock and sleep a wait uses (first boot passes its System, which tests fake).
pub trait Clock {
    fn elapsed(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The real clock, from when it was made.
pub struct RealClock(Instant);

impl Default for RealClock {
    fn default() -> Self {
        RealClock(Instant::now())
    }
}

impl Clock for RealClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// Returns once `path` exists (and is not empty), or an error after `timeout` that names
/// the file, `what` it is and `how` to provide it. `shown` is the path as on the machine.
pub fn for_file(
    clock: &dyn Clock,
    path: &Path,
    shown: &Path,
    what: &str,
    how: &str,
    timeout: Duration,
) -> Result<()> {
    let start = clock.elapsed();
    let mut last_said: Option<Duration> = None;
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
            if last_said.is_some() {
                let waited = clock.elapsed().saturating_sub(start).as_secs();
                tracing::info!("{} arrived after {waited} s", shown.display());
            }
            return Ok(());
        }
        let waited = clock.elapsed().saturating_sub(start);
        if waited >= timeout {
            bail!(
                "{} ({what}) did not arrive within {} s; {how}; first boot tries again at the \
                 next boot (or run `systemctl restart regimage-firstboot.service`)",
                shown.display(),
                timeout.as_secs()
            );
        }
        if last_said.is_none_or(|said| waited.saturating_sub(said) >= REMIND) {
            // Warn level: first boot shows these on the console, where the operator looks.
            tracing::warn!(
                "waiting for {} ({what}): {how}; waiting up to {} s more",
                shown.display(),
                timeout.saturating_sub(waited).as_secs()
            );
            last_said = Some(waited);
        }
        clock.sleep(POLL);
    }
}
