//! Running a peer's tool the way the comparison needs it: timed, with its output kept
//! for the error, killed when it runs past a limit; and the space a copy takes.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `cmd` to completion and returns how long it took. A non-zero exit is an error
/// with the end of its stderr; past `limit` the command (and its process group) is
/// killed and the error says so.
pub fn timed(cmd: &mut Command, limit: Duration) -> anyhow::Result<Duration> {
    timed_watching(cmd, limit, |_| {}).map(|(took, _)| took)
}

/// [`timed`], calling `watch` with the command's pid (also its process group's id) about
/// every 20 ms while it runs; returns its stdout too.
pub fn timed_watching(
    cmd: &mut Command,
    limit: Duration,
    mut watch: impl FnMut(u32),
) -> anyhow::Result<(Duration, Vec<u8>)> {
    use std::io::Seek;
    let shown = format!("{cmd:?}");
    let mut stderr_file = tempfile::tempfile()?;
    let mut stdout_file = tempfile::tempfile()?;
    let started = Instant::now();
    let mut child = {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(stdout_file.try_clone()?)
            .stderr(stderr_file.try_clone()?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {shown}"))?
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let group = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.wait();
            bail!(
                "did not finish within {} (killed)",
                humantime::format_duration(limit)
            );
        }
        watch(child.id());
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    if !status.success() {
        let mut err = String::new();
        stderr_file.seek(std::io::SeekFrom::Start(0))?;
        stderr_file.read_to_string(&mut err)?;
        let lines: Vec<&str> = err.trim().lines().collect();
        bail!(
            "{shown} failed ({status}): {}",
            lines[lines.len().saturating_sub(8)..].join("\n")
        );
    }
    let mut out = Vec::new();
    stdout_file.seek(std::io::SeekFrom::Start(0))?;
    stdout_file.read_to_end(&mut out)?;
    Ok((took, out))
}

/// The bytes in use on the file system holding `path`, after its dirty data is
/// written (so a copy just made is counted).
pub fn used_bytes(path: &Path) -> anyhow::Result<u64> {
    let dir = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::syncfs(&dir).with_context(|| format!("syncfs {}", path.display()))?;
    let st = rustix::fs::fstatvfs(&dir).with_context(|| format!("statvfs {}", path.display()))?;
    Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
}

/// The first line a program prints for `args` (its version), or `?`.
pub fn version(program: &str, args: &[&str]) -> String {
    let line = crate::common::sh(program, args);
    line.lines().next().unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_reports_failures_and_kills_at_the_limit() {
        let ok = timed(Command::new("true").arg("x"), Duration::from_secs(10)).unwrap();
        assert!(ok < Duration::from_secs(10));

        let err = timed(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("broken") && err.contains("exit status: 3"),
            "{err}"
        );

        let t = Instant::now();
        let err = timed(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not finish within 300ms"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn used_bytes_of_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(used_bytes(dir.path()).unwrap() > 0);
    }
}
