//! The `fsfreeze` writer: freezes the file systems that hold a set's data (FIFREEZE, via
//! util-linux `fsfreeze`), for applications without a writer of their own. The copy is
//! crash-consistent: what the application wrote before the freeze is on disk, as after
//! a power cut, never a half-written block. Application writers freeze first, this one
//! last (it is the last writer of a set), and it thaws first.
//!
//! A frozen file system has no owner: if this process died, it would stay frozen. So
//! every freeze first starts a [`Watchdog`] whose release commands are
//! `fsfreeze -u MOUNT`: it thaws at once if this process dies, and at the deadline plus
//! [`crate::watchdog::GRACE`] if it hangs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shadowcopy_core::model::{Component, CopyView, VerifyReport};
use shadowcopy_core::{process, BoxError, Writer};

use crate::kind::{KindInfo, KindRole, Normalize, WriterKind};
use crate::watchdog::Watchdog;
use crate::SetContext;

/// `[[sets.NAME.writers]] kind = "fsfreeze"`: the file systems holding these paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsfreezeOptions {
    #[serde(with = "shadowcopy_core::pathjson::vec")]
    pub paths: Vec<PathBuf>,
}

impl WriterKind for FsfreezeOptions {
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String> {
        self.paths = self
            .paths
            .iter()
            .map(|p| normalize(p, "fsfreeze path"))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn data_paths(&self) -> Vec<PathBuf> {
        self.paths.clone()
    }

    fn build(&self, _context: &SetContext) -> Box<dyn Writer> {
        Box::new(FsfreezeWriter::new(self.clone()))
    }
}

impl KindInfo for FsfreezeOptions {
    const DESCRIPTION: &'static str = "the file systems of a set (FIFREEZE): crash-consistent copies for applications without a writer";
    const ROLE: KindRole = KindRole::FileSystems;
    const ZERO_CONFIG_FLAG: Option<&'static str> = Some("--fsfreeze");
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
    #[error("`{command}` could not run to its end")]
    Process {
        command: String,
        #[source]
        source: process::ProcessError,
    },
    #[error("the freeze deadline passed before the file systems could be frozen")]
    Deadline,
}

pub struct FsfreezeWriter {
    options: FsfreezeOptions,
    mounts: Vec<PathBuf>,
    frozen: Vec<PathBuf>,
    watchdog: Option<Watchdog>,
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
        let release: Vec<Vec<std::ffi::OsString>> = self
            .mounts
            .iter()
            .map(|m| vec!["fsfreeze".into(), "-u".into(), m.clone().into_os_string()])
            .collect();
        let watchdog =
            Watchdog::start(deadline, &release, &[]).map_err(|source| FsfreezeError::Spawn {
                command: "bash (the watchdog)".into(),
                source,
            })?;
        self.watchdog = Some(watchdog);
        Ok(())
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

/// How long `findmnt` and `fsfreeze -u` may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

fn run(program: &str, args: &[&str], path: &Path) -> Result<String, FsfreezeError> {
    run_guarded(program, args, path, &mut |_| {}, COMMAND_LIMIT)
}

/// Runs `program args path`; `started` gets its process group, and it is killed at
/// `limit`.
fn run_guarded(
    program: &str,
    args: &[&str],
    path: &Path,
    started: &mut dyn FnMut(u32),
    limit: Duration,
) -> Result<String, FsfreezeError> {
    let command = format!("{program} {} {}", args.join(" "), path.display());
    let out = process::run(
        Command::new(program).args(args).arg(path),
        b"",
        started,
        &|began| began.elapsed() >= limit,
    )
    .map_err(|source| FsfreezeError::Process {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(FsfreezeError::Command {
            command,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
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
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FsfreezeError::Deadline.into());
            }
            let watchdog = self.watchdog.as_mut().expect("started above");
            // While `fsfreeze -f` runs, the watchdog would kill it before thawing.
            run_guarded(
                "fsfreeze",
                &["-f"],
                &m,
                &mut |group| watchdog.guard(group),
                left,
            )?;
            watchdog.unguard();
            self.frozen.push(m);
        }
        Ok(())
    }

    /// Thaws in reverse order; a file system already thawed (by the watchdog) is fine.
    /// A mount whose thaw failed stays listed, and the watchdog releases everything at
    /// once instead of being disarmed.
    fn thaw(&mut self) -> Result<(), BoxError> {
        let mut failed = Vec::new();
        let mut first = None;
        while let Some(m) = self.frozen.pop() {
            if let Err(e) = run("fsfreeze", &["-u"], &m) {
                let not_frozen = matches!(&e, FsfreezeError::Command { stderr, .. } if stderr.contains("Invalid argument"));
                if !not_frozen {
                    first.get_or_insert(e);
                    failed.push(m);
                }
            }
        }
        self.frozen = failed;
        if let Some(w) = self.watchdog.take() {
            if first.is_some() {
                w.release_now();
            } else {
                w.disarm();
            }
        }
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
