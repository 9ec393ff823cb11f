//! How fragmented a database's files are, as `filefrag` counts their extents: the
//! figure that an XFS clone's time follows (it remaps extent by extent), and that grows
//! when a file that shares its blocks with a copy is written (copy-on-write gives every
//! written range blocks of its own).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

use crate::stats::human_bytes;

/// Extents of the regular files below a directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragmentation {
    pub files: usize,
    pub bytes: u64,
    pub extents: u64,
    /// The file with the most extents per GiB (of those of at least 64 MiB), and that
    /// figure.
    pub worst: Option<(PathBuf, f64)>,
}

impl Fragmentation {
    /// Extents per GiB over all files.
    pub fn per_gib(&self) -> f64 {
        if self.bytes == 0 {
            return 0.0;
        }
        self.extents as f64 / (self.bytes as f64 / (1u64 << 30) as f64)
    }

    /// One line for the reader: `123,456 extents in 14.6 GiB (8,450 per GiB; the most
    /// fragmented file 9,100 per GiB)`.
    pub fn describe(&self) -> String {
        let worst = self
            .worst
            .as_ref()
            .map(|(_, w)| format!("; the most fragmented file {w:.0} per GiB"))
            .unwrap_or_default();
        format!(
            "{} extents in {} files, {} ({:.0} per GiB{worst})",
            self.extents,
            self.files,
            human_bytes(self.bytes),
            self.per_gib()
        )
    }
}

/// Files of at least this size count for [`Fragmentation::worst`].
const WORST_MIN_BYTES: u64 = 64 << 20;
/// Files per `filefrag` call.
const BATCH: usize = 200;

/// Counts the extents of every regular file below `dir` with `filefrag`.
pub fn measure(dir: &Path) -> anyhow::Result<Fragmentation> {
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        if entry.file_type().is_file() {
            let len = entry.metadata()?.len();
            files.push((entry.into_path(), len));
        }
    }
    let mut out = Fragmentation::default();
    for batch in files.chunks(BATCH) {
        let run = Command::new("filefrag")
            .args(batch.iter().map(|(p, _)| p))
            .output()
            .context("cannot run filefrag (e2fsprogs)")?;
        ensure!(
            run.status.success(),
            "filefrag failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let text = String::from_utf8_lossy(&run.stdout);
        for ((path, len), line) in batch.iter().zip(text.lines()) {
            let extents = extents_of(line)
                .with_context(|| format!("filefrag said {line:?} about {}", path.display()))?;
            out.files += 1;
            out.bytes += len;
            out.extents += extents;
            if *len >= WORST_MIN_BYTES {
                let per_gib = extents as f64 / (*len as f64 / (1u64 << 30) as f64);
                if out.worst.as_ref().is_none_or(|(_, w)| per_gib > *w) {
                    out.worst = Some((path.clone(), per_gib));
                }
            }
        }
    }
    Ok(out)
}

/// The count in a `filefrag` line: `PATH: 12 extents found` (`1 extent found`).
fn extents_of(line: &str) -> Option<u64> {
    let (_, tail) = line.rsplit_once(": ")?;
    tail.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filefrag_lines_give_their_counts() {
        assert_eq!(extents_of("/a/b: 12 extents found"), Some(12));
        assert_eq!(extents_of("/a: b/16384: 1 extent found"), Some(1));
        assert_eq!(extents_of("/a/b: 0 extents found"), Some(0));
        assert_eq!(extents_of("filefrag: something else"), None);
    }

    #[test]
    fn files_written_in_one_go_have_few_extents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("b"), b"small").unwrap();
        let f = measure(dir.path()).unwrap();
        assert_eq!(f.files, 2);
        assert_eq!(f.bytes, (1 << 20) + 5);
        assert!(f.extents >= 1 && f.extents <= 8, "{f:?}");
        assert!(f.worst.is_none(), "no file of 64 MiB");
    }
}
