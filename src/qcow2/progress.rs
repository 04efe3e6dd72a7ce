//! Progress on stderr while a bake runs: the stage, its elapsed time and the guest's
//! current step. On a terminal one line is redrawn with `\r`, at most once a second; anywhere
//! else (a log, journald) a plain line is written when the step changes and otherwise once a
//! minute, so a log is not flooded (STYLE.md section 8).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// Minimum time between two redraws.
const REDRAW_EVERY: Duration = Duration::from_secs(1);
/// Without a terminal, an unchanged status is repeated this often (a sign of life).
const PLAIN_HEARTBEAT: Duration = Duration::from_secs(60);

/// The progress display of one command.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    stage: String,
    stage_started: Instant,
    last_draw: Option<Instant>,
    /// The detail of the last plain line, to print again only when it changes.
    last_plain: Option<String>,
    /// Width of the line currently on the terminal (0: none).
    drawn: usize,
}

impl Progress {
    /// A display that uses `\r` only when stderr is a terminal.
    pub fn new() -> Progress {
        Progress::with_tty(std::io::stderr().is_terminal())
    }

    /// A display with the terminal decision made by the caller (tests).
    pub fn with_tty(tty: bool) -> Progress {
        Progress {
            tty,
            stage: String::new(),
            stage_started: Instant::now(),
            last_draw: None,
            last_plain: None,
            drawn: 0,
        }
    }

    /// Starts a stage: ends the previous status line and restarts the clock.
    pub fn stage(&mut self, name: &str) {
        self.clear();
        self.stage = name.to_string();
        self.stage_started = Instant::now();
        self.last_draw = None;
        self.last_plain = None;
        eprintln!("{name}...");
    }

    /// How long the current stage has run.
    pub fn elapsed(&self) -> Duration {
        self.stage_started.elapsed()
    }

    /// Shows the status with `detail` (the guest's step), at most once a second.
    pub fn tick(&mut self, detail: Option<&str>) {
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < REDRAW_EVERY)
        {
            return;
        }
        let line = status_line(&self.stage, self.elapsed(), detail);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = line.chars().count();
            let pad = self.drawn.saturating_sub(width);
            let _ = write!(err, "\r{line}{}", " ".repeat(pad));
            let _ = err.flush();
            self.drawn = width;
            self.last_draw = Some(now);
        } else {
            let detail = detail.unwrap_or_default().to_string();
            let changed = self.last_plain.as_deref() != Some(detail.as_str());
            let stale = self
                .last_draw
                .is_none_or(|t| now.duration_since(t) >= PLAIN_HEARTBEAT);
            if changed || stale {
                let _ = writeln!(err, "{line}");
                self.last_plain = Some(detail);
                self.last_draw = Some(now);
            }
        }
    }

    /// Prints a message on its own line (the status line, if any, is ended first).
    pub fn note(&mut self, message: &str) {
        self.clear();
        eprintln!("{message}");
    }

    /// Ends the status line on a terminal, so the next output starts on a new line.
    pub fn clear(&mut self) {
        if self.tty && self.drawn > 0 {
            eprintln!();
            self.drawn = 0;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `  boot+bake 3 min 02 s: installing packages` (the detail only when there is one).
pub fn status_line(stage: &str, elapsed: Duration, detail: Option<&str>) -> String {
    let mut line = format!("  {stage} {}", format_duration(elapsed));
    if let Some(detail) = detail.filter(|d| !d.is_empty()) {
        line.push_str(": ");
        line.push_str(detail);
    }
    line
}

/// `4.2 s` under a minute, `3 min 02 s` under an hour, `1 h 05 min` above.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60)
    }
}

/// `612.3 MiB` style sizes for the summary.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(format_duration(Duration::from_millis(4200)), "4.2 s");
        assert_eq!(format_duration(Duration::from_secs(182)), "3 min 02 s");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1 h 05 min");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line("boot+bake", Duration::from_secs(75), Some("copying")),
            "  boot+bake 1 min 15 s: copying"
        );
        assert_eq!(
            status_line("convert", Duration::from_secs(2), None),
            "  convert 2.0 s"
        );
        assert_eq!(
            status_line("convert", Duration::from_secs(2), Some("")),
            "  convert 2.0 s"
        );
    }

    #[test]
    fn plain_output_is_rate_limited() {
        let mut p = Progress::with_tty(false);
        p.stage("boot+bake");
        p.tick(Some("one"));
        let first = p.last_draw;
        assert!(first.is_some());
        // Within the same second nothing is redrawn, even with a new detail.
        p.tick(Some("two"));
        assert_eq!(p.last_draw, first);
        assert_eq!(p.last_plain.as_deref(), Some("one"));
    }
}
