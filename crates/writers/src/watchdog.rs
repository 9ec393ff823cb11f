//! The watchdog: a process outside shadowcopy that undoes a freeze when shadowcopy cannot.
//!
//! It is `bash` in its own process group, ignoring HUP, INT and TERM (a terminal's ^C or
//! a service manager's stop), holding the read end of a pipe whose write end only
//! shadowcopy holds:
//! - normal path: the writer thaws, then [`Watchdog::disarm`] writes `done` and waits
//!   for the watchdog to exit without running anything;
//! - shadowcopy dies (SIGKILL included): the pipe closes, the watchdog releases at once;
//! - shadowcopy hangs: at the deadline plus [`GRACE`] the watchdog releases;
//! - a thaw failed: [`Watchdog::release_now`] closes the pipe and waits for the release.
//!
//! A freeze command still running when the watchdog acts (a hook stuck in `freeze`, an
//! `fsfreeze -f` waiting for writers) would complete after the release and stay frozen:
//! the writer names its process group with [`Watchdog::guard`], and the watchdog kills
//! that group and waits (at most 5 s) until none of it is alive before releasing; a
//! zombie, left unreaped by a hung shadowcopy, does not count as alive. Disarming waits for the watchdog
//! to exit, so a late one can never release a later freeze. Release commands must be
//! harmless when nothing is frozen. A SIGKILL to every process of a cgroup (systemd's
//! `KillMode=control-group` after a stop timeout) reaches the watchdog too: run
//! shadowcopy with `KillMode=mixed` or `process`.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long after the freeze deadline the watchdog releases on its own. The coordinator
/// thaws at the deadline itself; the watchdog is for when it cannot.
pub const GRACE: Duration = Duration::from_millis(500);

const SCRIPT: &str = r#"trap '' HUP INT TERM
end=$(( ${EPOCHREALTIME/./} + $1 * 1000 ))
shift
pg=
while :; do
  left=$(( end - ${EPOCHREALTIME/./} ))
  [ "$left" -gt 0 ] || break
  printf -v t '%d.%06d' $(( left / 1000000 )) $(( left % 1000000 ))
  IFS= read -r -t "$t" line || break
  case "$line" in
    done) exit 0 ;;
    "pid "*) pg=${line#pid } ;;
    nopid) pg= ;;
  esac
done
live() { ps -e -o pgid=,stat= | awk -v g="$pg" '$1 == g && $2 !~ /^Z/ { n++ } END { exit n == 0 }'; }
if [ -n "$pg" ]; then
  kill -KILL -- "-$pg" 2>/dev/null
  for _ in $(seq 100); do live || break; sleep 0.05; done
fi
while [ "$#" -gt 0 ]; do n=$1; shift; "${@:1:n}" >/dev/null 2>&1; shift "$n"; done
exit 0"#;

pub struct Watchdog {
    child: Child,
    pipe: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog that runs each of `release` (program and arguments, with `env`
    /// added to its environment) unless disarmed by `deadline` + [`GRACE`], and at once
    /// if this process dies first.
    pub fn start(
        deadline: Instant,
        release: &[Vec<OsString>],
        env: &[(String, String)],
    ) -> std::io::Result<Watchdog> {
        let wait = deadline.saturating_duration_since(Instant::now()) + GRACE;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("shadowcopy-watchdog")
            .arg(wait.as_millis().to_string());
        for r in release {
            command.arg(r.len().to_string()).args(r);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn()?;
        let pipe = child.stdin.take().expect("stdin is piped");
        Ok(Watchdog { child, pipe })
    }

    /// A freeze command runs in this process group: kill it before releasing.
    pub fn guard(&mut self, group: u32) {
        let _ = writeln!(self.pipe, "pid {group}");
    }

    /// The freeze command finished.
    pub fn unguard(&mut self) {
        let _ = writeln!(self.pipe, "nopid");
    }

    /// The freeze was released by its owner: the watchdog exits without acting.
    pub fn disarm(mut self) {
        let _ = self.pipe.write_all(b"done\n");
        drop(self.pipe);
        let _ = self.child.wait();
    }

    /// Releasing failed: let the watchdog release now, and wait until it has.
    pub fn release_now(self) {
        drop(self.pipe);
        let mut child = self.child;
        let _ = child.wait();
    }
}
