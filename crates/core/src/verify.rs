//! Verification of a copy: the content hashes of its files (recorded the first time,
//! compared on every later check) and each writer's own integrity check of the copy.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::Error;
use crate::events::EventSink;
use crate::model::{CopyView, FileEntry, Phase, VerifyReport};
use crate::writer::Writer;

/// Hashes every file of the copy (in parallel), compares with hashes recorded earlier,
/// fills the missing ones, then runs each writer's check. A damaged copy is a report
/// with `ok == false`; an `Err` means the check itself could not run.
pub fn verify_copy(
    view: &CopyView,
    files: &mut [FileEntry],
    writers: &[Box<dyn Writer>],
    events: &dyn EventSink,
) -> Result<VerifyReport, Error> {
    let mut lines = Vec::new();
    let mut ok = true;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let hashed: Vec<Result<(String, u64), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                let in_copy = view.path_of(&f.path).map(Path::to_path_buf);
                scope.spawn(move || match in_copy {
                    Some(p) => {
                        hash_file(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
                    }
                    None => Err("missing from the copy".to_string()),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("hashing thread panicked".into()))
            })
            .collect()
    });
    let mut done = 0;
    for (file, result) in files.iter_mut().zip(hashed) {
        match result {
            Ok((hash, size)) => {
                done += size;
                if size != file.size {
                    ok = false;
                    lines.push(format!(
                        "{}: size {} differs from the manifest's {}",
                        file.path.display(),
                        size,
                        file.size
                    ));
                }
                match &file.blake3 {
                    Some(recorded) if *recorded != hash => {
                        ok = false;
                        lines.push(format!(
                            "{}: content changed since it was first verified (BLAKE3 {hash}, recorded {recorded})",
                            file.path.display()
                        ));
                    }
                    Some(_) => {}
                    None => file.blake3 = Some(hash),
                }
            }
            Err(e) => {
                ok = false;
                lines.push(format!("{}: {e}", file.path.display()));
            }
        }
    }
    events.bytes(done, total);
    if ok {
        lines.push(format!(
            "{} files hashed (BLAKE3), all match the manifest",
            files.len()
        ));
    }
    for w in writers {
        let report = w.verify(view).map_err(|source| Error::Writer {
            writer: w.name(),
            phase: Phase::Verify,
            source,
        })?;
        ok &= report.ok;
        lines.push(format!("{}: {}", w.name(), report.detail));
    }
    Ok(VerifyReport {
        ok,
        detail: lines.join("\n"),
    })
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let read = f.read(&mut buf)?;
        if read == 0 {
            break;
        }
        n += read as u64;
        hasher.update(&buf[..read]);
    }
    Ok((hasher.finalize().to_hex().to_string(), n))
}
