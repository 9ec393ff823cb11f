//! Which processes hold a file open, found by reading `/proc/*/fd` (what `fuser` does).
//! A directory is held by a process that has a file below it open or works in it (its
//! current directory): a PostgreSQL server holds its data directory that way.

use std::path::{Path, PathBuf};

/// A process that holds one of the files open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
}

/// Every other process holding any of `paths` open (for a directory: a file below it, or
/// as its current directory). Processes whose `fd` directory cannot be read (other
/// users', when not root) are skipped.
pub fn holders(paths: &[PathBuf]) -> Vec<Holder> {
    let me = std::process::id();
    let wanted: Vec<(PathBuf, bool)> = paths
        .iter()
        .map(|p| {
            let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let dir = p.is_dir();
            (p, dir)
        })
        .collect();
    let holds = |target: &Path| {
        wanted
            .iter()
            .find(|(w, dir)| w == target || (*dir && target.starts_with(w)))
            .map(|(w, _)| w.clone())
    };
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
        let cwd = std::fs::read_link(entry.path().join("cwd")).ok();
        let held = cwd.as_deref().and_then(holds).or_else(|| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .find_map(|target| holds(&target))
        });
        if let Some(path) = held {
            found.push(Holder {
                pid,
                command: command_of(pid),
                path,
            });
        }
    }
    found
}

fn command_of(pid: u32) -> String {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_held_by_a_process_working_in_it_or_holding_a_file_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut in_it = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&sub)
            .spawn()
            .unwrap();
        let mut holding = std::process::Command::new("bash")
            .args(["-c", "exec 3<\"$1\"; exec sleep 30", "-"])
            .arg(&file)
            .spawn()
            .unwrap();
        let wanted = [dir.path().to_path_buf()];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pids = loop {
            let pids: Vec<u32> = holders(&wanted).iter().map(|h| h.pid).collect();
            if (pids.contains(&in_it.id()) && pids.contains(&holding.id()))
                || std::time::Instant::now() > deadline
            {
                break pids;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let other = holders(&[std::fs::canonicalize(dir.path()).unwrap().join("elsewhere")]);
        for c in [&mut in_it, &mut holding] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(pids.contains(&in_it.id()), "{pids:?}");
        assert!(pids.contains(&holding.id()), "{pids:?}");
        assert!(other.is_empty(), "{other:?}");
    }
}
