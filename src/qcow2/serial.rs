//! The bake guest's serial console, as QEMU writes it to a file: followed while the VM runs
//! (the guest's current `regimage-bake:` step, its success or failure line, whether the
//! kernel started) and shown in part when a bake fails.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cloudinit::{BAKE_DONE_STEP, BAKE_FAILED_STEP, BAKE_PROGRESS_PREFIX};

/// The first line a Linux kernel prints; its presence means the VM got past the firmware.
const KERNEL_BANNER: &str = "Linux version ";
/// What a Linux kernel prints when it panics; the guest then hangs (cloud images set no
/// `panic=` reboot), so the bake stops at once instead of waiting for its timeout.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// What the console has shown so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The latest `regimage-bake:` step.
    pub step: Option<String>,
    /// The guest printed the done step: the image is reset and it powers off.
    pub done: bool,
    /// The guest's failure line, when it printed one.
    pub failure: Option<String>,
    /// The kernel printed its banner.
    pub kernel_started: bool,
    /// The kernel's panic line, when it panicked.
    pub kernel_panic: Option<String>,
    /// apt's package count ("N newly installed") and how far dpkg is.
    pub packages: PackageProgress,
}

/// How far cloud-init's package install is, from apt's and dpkg's own console lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackageProgress {
    pub total: Option<u32>,
    pub unpacked: u32,
    pub set_up: u32,
}

impl PackageProgress {
    /// Takes in one clean console line; returns the step to show when it was apt's or
    /// dpkg's, e.g. "packages: 12/40 set up (podman)".
    fn observe(&mut self, line: &str) -> Option<String> {
        // cloud-init prefixes its output: "[ 12.3] cloud-init[428]: Setting up ...".
        let text = line.split_once("]: ").map_or(line, |(_, t)| t).trim();
        if let Some(head) = text.split_once(" newly installed").map(|(h, _)| h) {
            let n = head.rsplit(' ').next().and_then(|n| n.parse().ok());
            if n.is_some() {
                self.total = n;
                return Some(format!("packages: downloading {}", self.count(0)));
            }
        }
        let (verb, count) = if let Some(rest) = text.strip_prefix("Unpacking ") {
            self.unpacked += 1;
            (("unpacked", rest), self.unpacked)
        } else if let Some(rest) = text.strip_prefix("Setting up ") {
            self.set_up += 1;
            (("set up", rest), self.set_up)
        } else if let Some(rest) = text.strip_prefix("Processing triggers for ") {
            (("processing triggers", rest), 0)
        } else {
            return None;
        };
        let (what, rest) = verb;
        let package = rest.split([' ', ':']).next().unwrap_or("");
        Some(if count == 0 {
            format!("packages: {what} ({package})")
        } else {
            format!("packages: {} {what} ({package})", self.count(count))
        })
    }

    fn count(&self, n: u32) -> String {
        match self.total {
            Some(total) => format!("{n}/{total}"),
            None => n.to_string(),
        }
    }
}

impl Observed {
    /// Takes in one console line.
    pub fn observe(&mut self, line: &str) {
        let line = clean_line(line);
        if line.contains(KERNEL_BANNER) {
            self.kernel_started = true;
        }
        if line.contains(KERNEL_PANIC) && self.kernel_panic.is_none() {
            self.kernel_panic = Some(line.trim().to_string());
        }
        let Some(pos) = line.find(BAKE_PROGRESS_PREFIX) else {
            // Between the bake's own steps, the longest wait is the package install.
            if let Some(step) = self.packages.observe(&line) {
                self.step = Some(step);
            }
            return;
        };
        let step = line[pos + BAKE_PROGRESS_PREFIX.len()..].trim().to_string();
        if step.is_empty() {
            return;
        }
        if step == BAKE_DONE_STEP {
            self.done = true;
        } else if step.starts_with(BAKE_FAILED_STEP) && self.failure.is_none() {
            self.failure = Some(step.clone());
        }
        self.step = Some(step);
    }
}

/// Follows a growing log file from where it was last read.
#[derive(Debug)]
pub struct SerialWatch {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pub observed: Observed,
}

impl SerialWatch {
    pub fn new(path: &Path) -> SerialWatch {
        SerialWatch {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            observed: Observed::default(),
        }
    }

    /// Reads what was added since the last call (nothing when the file does not exist yet).
    pub fn poll(&mut self) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {}", self.path.display()))?
            .len();
        if len < self.offset {
            // Truncated (a new VM started on the same log): start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))
            .with_context(|| format!("seeking in {}", self.path.display()))?;
        let mut added = Vec::new();
        file.read_to_end(&mut added)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.offset += added.len() as u64;
        self.partial.extend_from_slice(&added);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.observed.observe(&String::from_utf8_lossy(&line));
        }
        // A very long unterminated line is still looked at, so a step is not missed.
        if self.partial.len() > 64 * 1024 {
            let line = std::mem::take(&mut self.partial);
            self.observed.observe(&String::from_utf8_lossy(&line));
        }
        Ok(())
    }

    /// Reads the rest, including a last line without a newline.
    pub fn finish(&mut self) -> Result<()> {
        self.poll()?;
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.observed.observe(&String::from_utf8_lossy(&line));
        }
        Ok(())
    }
}

/// A console line without terminal escapes, carriage returns and other control characters.
pub fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e); other escapes: one more char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// The last `n` non-empty lines of a log file, cleaned for a terminal.
pub fn tail(path: &Path, n: usize) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .split('\n')
        .map(clean_line)
        .filter(|l| !l.trim().is_empty())
        .collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn steps_done_and_failure() {
        let mut o = Observed::default();
        o.observe("[    0.000000] Linux version 6.12.0 (debian-kernel@lists.debian.org)\r");
        assert!(o.kernel_started);
        assert_eq!(o.step, None);
        o.observe("\u{1b}[0;32m  OK  \u{1b}[0m] Started cloud-init.service");
        assert_eq!(o.step, None);
        o.observe(&format!("{BAKE_PROGRESS_PREFIX}copying the archive\r"));
        assert_eq!(o.step.as_deref(), Some("copying the archive"));
        assert!(!o.done);
        // A prefix in the middle of a line (a console timestamp) still counts.
        o.observe(&format!(
            "[  80.1] cloud-init[812]: {BAKE_PROGRESS_PREFIX}{BAKE_DONE_STEP}"
        ));
        assert!(o.done);
        assert!(o.failure.is_none());
        assert!(o.kernel_panic.is_none());

        // A kernel panic is kept, the first one.
        let mut o = Observed::default();
        o.observe("[   96.701820] Kernel panic - not syncing: Fatal exception in interrupt\r");
        o.observe("[   96.717273] ---[ end Kernel panic - not syncing: Fatal exception ]---");
        assert_eq!(
            o.kernel_panic.as_deref(),
            Some("[   96.701820] Kernel panic - not syncing: Fatal exception in interrupt")
        );

        let mut o = Observed::default();
        o.observe(&format!(
            "{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: packages not installed"
        ));
        o.observe(&format!("{BAKE_PROGRESS_PREFIX}{BAKE_FAILED_STEP}: second"));
        assert_eq!(
            o.failure.as_deref(),
            Some("FAILED: packages not installed"),
            "the first failure is the cause"
        );
        assert!(!o.done);
        // The done text inside a longer step is not the done step.
        let mut o = Observed::default();
        o.observe(&format!("{BAKE_PROGRESS_PREFIX}not {BAKE_DONE_STEP}"));
        assert!(!o.done);
    }

    #[test]
    fn package_install_shows_a_count() {
        let mut o = Observed::default();
        o.observe(&format!(
            "{BAKE_PROGRESS_PREFIX}booted; cloud-init installs the packages next"
        ));
        o.observe("[  626.7] cloud-init[428]: 0 upgraded, 40 newly installed, 0 to remove and 0 not upgraded.\r");
        assert_eq!(o.step.as_deref(), Some("packages: downloading 0/40"));
        o.observe("[  700.1] cloud-init[428]: Unpacking nginx-common (1.26.3-3+deb13u11) ...");
        assert_eq!(
            o.step.as_deref(),
            Some("packages: 1/40 unpacked (nginx-common)")
        );
        o.observe("[ 1312.9] cloud-init[428]: Setting up libip4tc2:amd64 (1.8.11-2) ...");
        o.observe("\x1b[0m[ 1313.2] cloud-init[428]: Setting up podman (5.4.2+ds1-2+b2) ...");
        assert_eq!(o.step.as_deref(), Some("packages: 2/40 set up (podman)"));
        o.observe("[ 1950.2] cloud-init[428]: Processing triggers for libc-bin (2.41-12) ...");
        assert_eq!(
            o.step.as_deref(),
            Some("packages: processing triggers (libc-bin)")
        );
        // Other console lines leave the step alone; the bake's next step replaces it.
        o.observe("[ 1951.0] systemd[1]: Started something.service.");
        assert_eq!(
            o.step.as_deref(),
            Some("packages: processing triggers (libc-bin)")
        );
        o.observe(&format!(
            "{BAKE_PROGRESS_PREFIX}checking the installed packages"
        ));
        assert_eq!(o.step.as_deref(), Some("checking the installed packages"));
        assert!(!o.done && o.failure.is_none());
        // Without apt's count line the numbers stand alone.
        let mut o = Observed::default();
        o.observe("cloud-init[428]: Setting up curl (8.14.1-2) ...");
        assert_eq!(o.step.as_deref(), Some("packages: 1 set up (curl)"));
    }

    #[test]
    fn watch_follows_a_growing_file_and_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut w = SerialWatch::new(&path);
        w.poll().unwrap(); // missing file: nothing yet
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "boot\n{BAKE_PROGRESS_PREFIX}one\n{BAKE_PROGRESS_PREFIX}tw"
        )
        .unwrap();
        w.poll().unwrap();
        assert_eq!(w.observed.step.as_deref(), Some("one"));
        writeln!(f, "o").unwrap();
        w.poll().unwrap();
        assert_eq!(w.observed.step.as_deref(), Some("two"));
        // A new VM truncates the log.
        std::fs::write(&path, format!("{BAKE_PROGRESS_PREFIX}three")).unwrap();
        w.finish().unwrap();
        assert_eq!(w.observed.step.as_deref(), Some("three"));
    }

    #[test]
    fn tail_keeps_the_last_clean_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..50).map(|i| format!("line {i}\r\n\n")).collect();
        std::fs::write(&path, format!("{text}\u{1b}[1mbold\u{1b}[0m end")).unwrap();
        let t = tail(&path, 30).unwrap();
        assert_eq!(t.len(), 30);
        assert_eq!(t[0], "line 21");
        assert_eq!(t[29], "bold end");
        assert!(tail(&dir.path().join("missing"), 3).is_err());
        assert_eq!(clean_line("a\tb\u{7}c\r"), "a bc");
    }
}
