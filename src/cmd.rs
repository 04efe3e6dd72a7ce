//! Running external commands (ufw, podman, systemctl, curl, useradd) in one way: stdin is
//! /dev/null, stdout is captured, stderr goes to a temporary file whose last 1024 bytes end
//! up in the error, next to the full command line and its exit status (bootc's
//! `CommandRunExt` shape). A oneshot under systemd must never wait on a terminal, and an
//! error has to say which command failed and why without a second look.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// How much of the end of stderr an error carries.
const STDERR_TAIL: u64 = 1024;

/// What a finished command left behind, for callers that judge the exit status themselves.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The last 1024 bytes of stderr, lossily decoded, trimmed.
    pub stderr_tail: String,
}

impl CmdOutput {
    /// stdout as text (lossy), trimmed.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

/// Extension methods for [`std::process::Command`].
pub trait CommandRunExt {
    /// Runs the command; fails unless it exits 0. stdout is logged at debug level.
    fn run(&mut self) -> Result<()>;
    /// Runs the command and returns its stdout; fails unless it exits 0.
    fn run_get_stdout(&mut self) -> Result<Vec<u8>>;
    /// Like [`CommandRunExt::run_get_stdout`], with `stdin` as the command's standard input.
    fn run_with_stdin(&mut self, stdin: File) -> Result<Vec<u8>>;
    /// Runs the command and parses its stdout as JSON into `T`.
    fn run_and_parse_json<T: DeserializeOwned>(&mut self) -> Result<T>;
    /// Runs the command whatever its exit status; fails only when it cannot be started.
    fn run_unchecked(&mut self) -> Result<CmdOutput>;
}

impl CommandRunExt for Command {
    fn run(&mut self) -> Result<()> {
        let stdout = self.run_get_stdout()?;
        if !stdout.is_empty() {
            tracing::debug!(
                "{:?} printed: {}",
                self,
                String::from_utf8_lossy(&stdout).trim()
            );
        }
        Ok(())
    }

    fn run_get_stdout(&mut self) -> Result<Vec<u8>> {
        checked(self, Stdio::null())
    }

    fn run_with_stdin(&mut self, stdin: File) -> Result<Vec<u8>> {
        checked(self, Stdio::from(stdin))
    }

    fn run_and_parse_json<T: DeserializeOwned>(&mut self) -> Result<T> {
        let stdout = self.run_get_stdout()?;
        serde_json::from_slice(&stdout)
            .with_context(|| format!("parsing the JSON output of {self:?}"))
    }

    fn run_unchecked(&mut self) -> Result<CmdOutput> {
        spawn(self, Stdio::null())
    }
}

fn checked(cmd: &mut Command, stdin: Stdio) -> Result<Vec<u8>> {
    let out = spawn(cmd, stdin)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if out.stderr_tail.is_empty() {
        anyhow::bail!("{cmd:?} failed with {}", out.status)
    }
    anyhow::bail!("{cmd:?} failed with {}: {}", out.status, out.stderr_tail)
}

fn spawn(cmd: &mut Command, stdin: Stdio) -> Result<CmdOutput> {
    tracing::debug!("running {cmd:?}");
    // A file, not a pipe: stderr can be large (podman's progress) and only its end matters.
    let mut stderr = tempfile::tempfile().context("creating a temporary file for stderr")?;
    let stderr_for_child = stderr
        .try_clone()
        .context("duplicating the stderr file descriptor")?;
    let output = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_for_child))
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr_tail = read_tail(&mut stderr).context("reading the command's stderr")?;
    Ok(CmdOutput {
        status: output.status,
        stdout: output.stdout,
        stderr_tail,
    })
}

fn read_tail(file: &mut File) -> std::io::Result<String> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;
    use std::io::Write;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn success_returns_stdout() {
        let out = sh("echo hello; echo noise 1>&2").run_get_stdout().unwrap();
        assert_eq!(out, b"hello\n");
        sh("true").run().unwrap();
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        let e = sh("echo out-$((1+1)); echo 'it broke' 1>&2; exit 3")
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("\"sh\" \"-c\""), "{e}");
        assert!(e.contains("failed with exit status: 3: it broke"), "{e}");
        assert!(!e.contains("out-2"), "stdout leaked into the error: {e}");
        let e = sh("exit 4").run().unwrap_err().to_string();
        assert!(e.ends_with("failed with exit status: 4"), "{e}");
    }

    #[test]
    fn only_the_end_of_a_long_stderr_is_kept() {
        let e = sh("i=0; while [ $i -lt 500 ]; do echo line$i 1>&2; i=$((i+1)); done; echo LAST 1>&2; exit 1")
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("LAST"), "{e}");
        assert!(!e.contains("line0\n"), "{e}");
        let tail = e.split(": ").skip(2).collect::<Vec<_>>().join(": ");
        assert!(tail.len() <= 1024, "{} bytes", tail.len());
    }

    #[test]
    fn stdin_is_empty_unless_given() {
        // `cat` would hang on an inherited terminal; with /dev/null it ends at once.
        assert_eq!(sh("cat").run_get_stdout().unwrap(), b"");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"from a file").unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(sh("cat").run_with_stdin(file).unwrap(), b"from a file");
    }

    #[test]
    fn json_output_is_parsed_and_bad_json_is_an_error() {
        #[derive(Debug, serde::Deserialize)]
        struct Item {
            #[serde(rename = "Id")]
            id: String,
        }
        let items: Vec<Item> = sh(r#"echo '[{"Id": "abc"}]'"#)
            .run_and_parse_json()
            .unwrap();
        assert_eq!(items[0].id, "abc");
        let e = sh("echo not-json")
            .run_and_parse_json::<Vec<Item>>()
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("parsing the JSON output of"),
            "{e:#}"
        );
    }

    #[test]
    fn unchecked_reports_status_without_failing() {
        let out = sh("echo out; echo err 1>&2; exit 7")
            .run_unchecked()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(out.stdout_text(), "out");
        assert_eq!(out.stderr_tail, "err");
        let e = Command::new("/nonexistent/tool")
            .run_unchecked()
            .unwrap_err();
        assert!(format!("{e:#}").contains("starting"), "{e:#}");
    }
}
