//! The watchdog: a process outside shadowcopy that undoes a freeze when shadowcopy cannot.
//!
//! It is `bash` in its own process group (terminal signals do not reach it), holding the
//! read end of a pipe whose write end only shadowcopy holds:
//! - normal path: the writer thaws, then [`Watchdog::disarm`] writes `done` and waits
//!   for the watchdog to exit without running anything;
//! - shadowcopy dies (SIGKILL included): the pipe closes, the watchdog runs the release
//!   commands at once;
//! - shadowcopy hangs: at the deadline plus [`GRACE`] the watchdog runs them.
//!
//! Disarming waits for the watchdog to exit, so a late one can never release a later
//! freeze. Release commands must be harmless when nothing is frozen.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long after the freeze deadline the watchdog releases on its own. The coordinator
/// thaws at the deadline itself; the watchdog is for when it cannot.
pub const GRACE: Duration = Duration::from_millis(500);

const SCRIPT: &str = r#"if IFS= read -r -t "$1" line && [ "$line" = done ]; then exit 0; fi
shift
while [ "$#" -gt 0 ]; do n=$1; shift; "${@:1:n}" >/dev/null 2>&1; shift "$n"; done
exit 0"#;

pub struct Watchdog {
    child: Child,
    pipe: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog that runs each of `release` (program and arguments) if not
    /// disarmed by `deadline` + [`GRACE`] or if this process dies first.
    pub fn start(deadline: Instant, release: &[Vec<OsString>]) -> std::io::Result<Watchdog> {
        let wait = deadline.saturating_duration_since(Instant::now()) + GRACE;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("shadowcopy-watchdog")
            .arg(format!("{:.3}", wait.as_secs_f64()));
        for r in release {
            command.arg(r.len().to_string()).args(r);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn()?;
        let pipe = child.stdin.take().expect("stdin is piped");
        Ok(Watchdog { child, pipe })
    }

    /// The freeze was released by its owner: the watchdog exits without acting.
    pub fn disarm(mut self) {
        let _ = self.pipe.write_all(b"done\n");
        drop(self.pipe);
        let _ = self.child.wait();
    }
}
