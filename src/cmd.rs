//! Running external commands (ufw, podman, systemctl, curl, useradd, qemu-img, skopeo...)
//! in one way: stdin is /dev/null, stdout is captured, stderr goes to a temporary file
//! whose last 1024 bytes end up in the error, next to the full command line and its exit
//! status (bootc's `CommandRunExt` shape). The command line is logged at debug level; a
//! [`Task`] also logs a human description at info (bootc's `Task`). A oneshot under
//! systemd must never wait on a terminal, and an error has to say which command failed and
//! why without a second look.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};

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
    Err(failure(cmd, out.status, &out.stderr_tail))
}

/// The error of a command that exited non-zero: its command line, status and stderr's tail.
fn failure(cmd: &Command, status: ExitStatus, stderr_tail: &str) -> anyhow::Error {
    if stderr_tail.is_empty() {
        anyhow::anyhow!("{cmd:?} failed with {status}")
    } else {
        anyhow::anyhow!("{cmd:?} failed with {status}: {stderr_tail}")
    }
}

/// A command with a description for people (bootc's `Task`): "Converting the image" at
/// info level, then the command line at debug, then [`CommandRunExt`]'s handling.
#[derive(Debug)]
pub struct Task {
    description: String,
    cmd: Command,
}

impl Task {
    pub fn new(description: impl Into<String>, program: impl AsRef<OsStr>) -> Task {
        Task {
            description: description.into(),
            cmd: Command::new(program),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Task {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Task
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// The command as it will run (for tests and messages).
    pub fn command(&self) -> &Command {
        &self.cmd
    }

    fn announce(&self) {
        tracing::info!("{}", self.description);
    }

    /// See [`CommandRunExt::run`].
    pub fn run(mut self) -> Result<()> {
        self.announce();
        self.cmd.run()
    }

    /// See [`CommandRunExt::run_get_stdout`].
    pub fn run_get_stdout(mut self) -> Result<Vec<u8>> {
        self.announce();
        self.cmd.run_get_stdout()
    }

    /// Starts the command for a caller that watches it (and may stop it) while it runs:
    /// stdin and stdout are /dev/null, stderr goes to a temporary file as for `run`.
    pub fn start(mut self) -> Result<Running> {
        self.announce();
        tracing::debug!("running {:?}", self.cmd);
        let stderr = tempfile::tempfile().context("creating a temporary file for stderr")?;
        let stderr_for_child = stderr
            .try_clone()
            .context("duplicating the stderr file descriptor")?;
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_for_child))
            .spawn()
            .with_context(|| format!("starting {:?}", self.cmd))?;
        Ok(Running {
            cmd: self.cmd,
            child: Some(child),
            stderr,
        })
    }

    /// Logs like the other ways of running and hands back the command, stdin /dev/null,
    /// for a child whose output the caller routes itself (the bake VM: its console is a
    /// file the bake reads while QEMU runs).
    pub fn into_command(mut self) -> Command {
        self.announce();
        tracing::debug!("starting {:?}", self.cmd);
        self.cmd.stdin(Stdio::null());
        self.cmd
    }
}

/// A command started by [`Task::start`]; killed and reaped if dropped while it runs.
#[derive(Debug)]
pub struct Running {
    cmd: Command,
    child: Option<Child>,
    stderr: File,
}

impl Running {
    /// `Ok(false)` while it runs, `Ok(true)` once it exited 0, else the error of
    /// [`CommandRunExt::run`] (command line, status, stderr's tail).
    pub fn try_finish(&mut self) -> Result<bool> {
        let Some(child) = self.child.as_mut() else {
            anyhow::bail!("{:?} was stopped", self.cmd)
        };
        let Some(status) = child
            .try_wait()
            .with_context(|| format!("checking on {:?}", self.cmd))?
        else {
            return Ok(false);
        };
        self.child = None;
        if status.success() {
            return Ok(true);
        }
        let tail = read_tail(&mut self.stderr).context("reading the command's stderr")?;
        Err(failure(&self.cmd, status, &tail))
    }

    /// Kills the command and reaps it (a no-op once it has ended).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::debug!("killing {:?}: {e}", self.cmd);
            }
            if let Err(e) = child.wait() {
                tracing::warn!("reaping {:?}: {e}", self.cmd);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
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
    use std::path::Path;

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

    #[test]
    fn tasks_run_like_commands() {
        let out = Task::new("Saying hello", "sh")
            .args(["-c", "echo hello"])
            .run_get_stdout()
            .unwrap();
        assert_eq!(out, b"hello\n");
        let e = Task::new("Failing", "sh")
            .args(["-c", "echo why 1>&2; exit 5"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("failed with exit status: 5: why"), "{e}");
    }

    /// Everything logged while `f` runs, at debug level and up.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn tasks_log_the_description_at_info_and_the_command_line_at_debug() {
        let log = logged(|| {
            Task::new("Converting the image", "sh")
                .args(["-c", "true"])
                .run()
                .unwrap()
        });
        let info = log.lines().find(|l| l.contains("INFO")).unwrap_or("");
        assert!(info.ends_with("Converting the image"), "{log}");
        let debug = log.lines().find(|l| l.contains("DEBUG")).unwrap_or("");
        assert!(debug.contains(r#"running "sh" "-c" "true""#), "{log}");
    }

    #[test]
    fn started_tasks_report_success_failure_and_stop_when_dropped() {
        let mut ok = Task::new("Waiting", "sh")
            .args(["-c", "sleep 0.2"])
            .start()
            .unwrap();
        let mut fail = Task::new("Failing", "sh")
            .args(["-c", "echo broken 1>&2; exit 2"])
            .start()
            .unwrap();
        let wait = |r: &mut Running| loop {
            match r.try_finish() {
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(20)),
                other => return other,
            }
        };
        assert!(wait(&mut ok).unwrap());
        let e = wait(&mut fail).unwrap_err().to_string();
        assert!(e.ends_with("failed with exit status: 2: broken"), "{e}");
        // A dropped task's process is killed and reaped: its pid is gone.
        let slow = Task::new("Sleeping", "sleep").arg("30").start().unwrap();
        let pid = slow.child.as_ref().unwrap().id();
        drop(slow);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let mut stopped = Task::new("Sleeping", "sleep").arg("30").start().unwrap();
        stopped.kill();
        assert!(stopped.try_finish().is_err());
    }

    #[test]
    fn commands_handed_out_read_nothing_from_stdin() {
        let mut cmd = Task::new("Reading stdin", "cat").into_command();
        let out = cmd.stdout(Stdio::piped()).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"");
    }
}
