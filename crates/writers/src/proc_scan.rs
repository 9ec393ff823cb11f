//! Which processes hold a file open, found by reading `/proc/*/fd` (what `fuser` does).

use std::path::{Path, PathBuf};

/// A process that holds one of the files open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
}

/// Every other process holding any of `paths` open. Processes whose `fd` directory cannot
/// be read (other users', when not root) are skipped.
pub fn holders(paths: &[PathBuf]) -> Vec<Holder> {
    let me = std::process::id();
    let wanted: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(p) = wanted.iter().find(|w| **w == target) {
                found.push(Holder {
                    pid,
                    command: command_of(pid),
                    path: p.clone(),
                });
                break;
            }
        }
    }
    found
}

fn command_of(pid: u32) -> String {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
