//! The `fsfreeze` writer: freezes the file systems that hold a set's data (FIFREEZE, via
//! util-linux `fsfreeze`), for applications without a writer of their own. The copy is
//! crash-consistent: what the application wrote before the freeze is on disk, as after
//! a power cut, never a half-written block. Application writers freeze first, this one
//! last (it is the last writer of a set), and it thaws first.
//!
//! A frozen file system has no owner: if this process died, it would stay frozen. So
//! every freeze starts a watchdog, a separate `bash` process in its own process group
//! (terminal signals do not reach it), that holds the other end of a pipe:
//! - the normal path: thaw unfreezes the file systems, then writes `done`, and the
//!   watchdog exits without touching them;
//! - the coordinator dies (SIGKILL included): the pipe closes, the watchdog thaws at once;
//! - the coordinator hangs: at the deadline plus [`WATCHDOG_GRACE`] the watchdog thaws.
//!
//! Thaw waits for the watchdog to exit, so a late watchdog can never thaw a later set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shadowcopy_core::model::{Component, CopyView, VerifyReport};
use shadowcopy_core::{BoxError, Writer};

/// How long after the freeze deadline the watchdog thaws on its own. The coordinator's
/// own abort thaws at the deadline; the watchdog is for when it cannot.
pub const WATCHDOG_GRACE: Duration = Duration::from_millis(500);

/// `[[sets.NAME.writers]] kind = "fsfreeze"`: the file systems holding these paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsfreezeOptions {
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FsfreezeError {
    #[error("cannot find the mount point of {}; does it exist?", .path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is on the root file system; freezing it would freeze shadowcopy itself (its catalog, /tmp, the shell). Put the data on its own file system, or leave out --fsfreeze", .path.display())]
    RootFs { path: PathBuf },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`; is util-linux installed?")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the freeze deadline passed before the file systems could be frozen")]
    Deadline,
}

pub struct FsfreezeWriter {
    options: FsfreezeOptions,
    mounts: Vec<PathBuf>,
    frozen: Vec<PathBuf>,
    watchdog: Option<(Child, ChildStdin)>,
}

impl FsfreezeWriter {
    pub fn new(options: FsfreezeOptions) -> Self {
        FsfreezeWriter {
            options,
            mounts: Vec::new(),
            frozen: Vec::new(),
            watchdog: None,
        }
    }

    /// The distinct mount points of the paths, in a stable order.
    fn resolve_mounts(&self) -> Result<Vec<PathBuf>, FsfreezeError> {
        let mut mounts: Vec<PathBuf> = Vec::new();
        for p in &self.options.paths {
            let m = mount_point(p)?;
            if m == Path::new("/") {
                return Err(FsfreezeError::RootFs { path: p.clone() });
            }
            if !mounts.contains(&m) {
                mounts.push(m);
            }
        }
        mounts.sort();
        Ok(mounts)
    }

    fn start_watchdog(&mut self, deadline: Instant) -> Result<(), FsfreezeError> {
        let wait = deadline.saturating_duration_since(Instant::now()) + WATCHDOG_GRACE;
        let script = r#"if IFS= read -r -t "$1" line && [ "$line" = done ]; then exit 0; fi
shift; for m in "$@"; do fsfreeze -u "$m" 2>/dev/null; done; exit 0"#;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(script)
            .arg("shadowcopy-watchdog")
            .arg(format!("{:.3}", wait.as_secs_f64()))
            .args(&self.mounts)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|source| FsfreezeError::Spawn {
            command: "bash".into(),
            source,
        })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        self.watchdog = Some((child, stdin));
        Ok(())
    }

    /// Tells the watchdog the file systems are thawed and waits until it is gone.
    fn stop_watchdog(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The mount point holding `path` (`findmnt -T`).
pub fn mount_point(path: &Path) -> Result<PathBuf, FsfreezeError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| FsfreezeError::Mount {
        path: path.to_path_buf(),
        source,
    })?;
    let out = run("findmnt", &["-n", "-o", "TARGET", "-T"], &canonical)?;
    Ok(PathBuf::from(out.trim()))
}

fn run(program: &str, args: &[&str], path: &Path) -> Result<String, FsfreezeError> {
    let command = format!("{program} {} {}", args.join(" "), path.display());
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FsfreezeError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(FsfreezeError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Writer for FsfreezeWriter {
    fn kind(&self) -> &'static str {
        "fsfreeze"
    }

    fn name(&self) -> String {
        let paths: Vec<String> = self
            .options
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("fsfreeze:{}", paths.join(","))
    }

    /// The file systems are found here; the data is the set's own components.
    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        self.mounts = self.resolve_mounts()?;
        Ok(Vec::new())
    }

    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        if self.mounts.is_empty() {
            self.mounts = self.resolve_mounts()?;
        }
        // The watchdog comes first: from the first FIFREEZE on, something outside this
        // process must be able to undo it.
        self.start_watchdog(deadline)?;
        for m in self.mounts.clone() {
            if Instant::now() >= deadline {
                return Err(FsfreezeError::Deadline.into());
            }
            self.frozen.push(m.clone());
            run("fsfreeze", &["-f"], &m)?;
        }
        Ok(())
    }

    /// Thaws in reverse order; a file system already thawed (by the watchdog) is fine.
    fn thaw(&mut self) -> Result<(), BoxError> {
        let mut first = None;
        while let Some(m) = self.frozen.pop() {
            if let Err(e) = run("fsfreeze", &["-u"], &m) {
                let not_frozen = matches!(&e, FsfreezeError::Command { stderr, .. } if stderr.contains("Invalid argument"));
                if !not_frozen {
                    first.get_or_insert(e);
                }
            }
        }
        self.stop_watchdog();
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// A crash-consistent copy has no application check; the coordinator's hashes cover
    /// the files.
    fn verify(&self, _copy: &CopyView) -> Result<VerifyReport, BoxError> {
        Ok(VerifyReport {
            ok: true,
            detail: format!(
                "crash-consistent copy of {} (no application check)",
                self.mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

impl Drop for FsfreezeWriter {
    /// Dropping a frozen writer thaws (the watchdog would, later).
    fn drop(&mut self) {
        let _ = self.thaw();
    }
}
