//! Running an external command for a writer or provider (a hook, `fsfreeze`, `btrfs`, an
//! exec provider): in its own process group, so that it can be killed whole; with its
//! stdin and output in files, so that it can never block on a pipe; and stopped (the
//! whole group killed) when the caller says so, at a time limit or a cancellation.

use std::io::{Read, Seek, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` did not finish in time and was killed with its process group")]
    Killed { program: String },
}

/// Runs `command` with `stdin` as its input. `started` gets its process group id as soon
/// as it runs (a watchdog can then kill it); `stop` is asked every few milliseconds
/// whether to kill the group.
pub fn run(
    command: &mut Command,
    stdin: &[u8],
    started: &mut dyn FnMut(u32),
    stop: &dyn Fn(Instant) -> bool,
) -> Result<Finished, ProcessError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let spawn_err = |source| ProcessError::Spawn {
        program: program.clone(),
        source,
    };
    let mut input = tempfile::tempfile().map_err(spawn_err)?;
    input
        .write_all(stdin)
        .and_then(|()| input.rewind())
        .map_err(spawn_err)?;
    let mut out = tempfile::tempfile().map_err(spawn_err)?;
    let mut err = tempfile::tempfile().map_err(spawn_err)?;
    command
        .stdin(Stdio::from(input))
        .stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(err.try_clone().map_err(spawn_err)?)
        .env("LC_ALL", "C");
    std::os::unix::process::CommandExt::process_group(command, 0);
    let mut child = command.spawn().map_err(spawn_err)?;
    started(child.id());
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_err)? {
            break status;
        }
        if stop(began) {
            kill_group(child.id());
            let _ = child.wait();
            return Err(ProcessError::Killed { program });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(Finished {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    })
}

/// Runs `command` with a time limit and no input.
pub fn run_within(command: &mut Command, limit: Duration) -> Result<Finished, ProcessError> {
    run(command, b"", &mut |_| {}, &|began| began.elapsed() >= limit)
}

/// SIGKILL to a whole process group.
pub fn kill_group(group: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(group as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn read(file: &mut std::fs::File) -> String {
    let mut bytes = Vec::new();
    let _ = file.rewind().and_then(|()| file.read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a process with this id exists (a signal 0 reaches it, or it exists but is
/// not ours to signal).
pub fn exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}
