//! The binary logs as files, for an archive off the host: the ones the server has closed
//! (what a push may send: the log still being written would change after it was sent),
//! and the index written again for logs brought back after the host was lost, so that a
//! roll-forward finds them as the server left them.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mysql::prelude::Queryable;

use crate::files::Owner;
use crate::position::binlog_number;
use crate::server::{self, BinlogLayout, MariaDbOptions};

#[derive(Debug, thiserror::Error)]
pub enum BinlogFilesError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("the server at {0} writes no binary log (log_bin is off): there are no logs to send")]
    NoBinlog(String),
    #[error("asking the server for its binary logs failed: {0}")]
    Query(#[from] mysql::Error),
    #[error("writing the binary log index {}: {source}", .path.display())]
    Index {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The binary logs the server has closed, oldest first.
pub struct ClosedBinlogs {
    pub binlog: BinlogLayout,
    pub files: Vec<PathBuf>,
}

/// Asks the running server which of its binary logs are closed: every one it lists
/// before the one it writes (`SHOW MASTER STATUS`).
pub fn closed_binlogs(options: &MariaDbOptions) -> Result<ClosedBinlogs, BinlogFilesError> {
    let mut conn = server::connect_with(options)?;
    let layout = server::discover(&mut conn)?;
    let binlog = layout
        .binlog
        .ok_or_else(|| BinlogFilesError::NoBinlog(options.url.to_string()))?;
    // Both answer several columns; the file name is the first.
    let first = |row: mysql::Row| row.get::<String, _>(0);
    let listed: Vec<String> = conn
        .query::<mysql::Row, _>("SHOW BINARY LOGS")?
        .into_iter()
        .filter_map(first)
        .collect();
    let active = conn
        .query_first::<mysql::Row, _>("SHOW MASTER STATUS")?
        .and_then(first);
    let active = active.as_deref().and_then(binlog_number).map(|(_, n)| n);
    let files = listed
        .iter()
        .filter(|name| match (binlog_number(name), active) {
            (Some((_, n)), Some(active)) => n < active,
            _ => false,
        })
        .map(|name| binlog.dir.join(name))
        .collect();
    Ok(ClosedBinlogs { binlog, files })
}

/// Writes `binlog`'s index again from the numbered logs in its directory (after they
/// were brought back from an archive), as absolute paths, oldest first, owned as the
/// directory is. An index that exists keeps its entries; missing ones are added.
/// Returns how many logs it lists.
pub fn write_index(binlog: &BinlogLayout) -> Result<usize, BinlogFilesError> {
    let index_err = |source| BinlogFilesError::Index {
        path: binlog.index.clone(),
        source,
    };
    let dir_meta = std::fs::metadata(&binlog.dir).map_err(index_err)?;
    let mut logs: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&binlog.dir).map_err(index_err)? {
        let entry = entry.map_err(index_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((base, n)) = binlog_number(name) {
            if base == binlog.basename && entry.file_type().map_err(index_err)?.is_file() {
                logs.push((n, binlog.dir.join(name)));
            }
        }
    }
    logs.sort();
    // Never through a link the server's user could have put in its place.
    let existing = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&binlog.index)
    {
        Ok(mut file) => {
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(index_err)?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(index_err(e)),
    };
    let listed: Vec<PathBuf> = crate::position::parse_index(&existing, &binlog.dir);
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut count = listed.len();
    for (_, path) in &logs {
        if !listed.contains(path) {
            text.push_str(&format!("{}\n", path.display()));
            count += 1;
        }
    }
    // Written beside it and renamed over it: never a half-written index.
    let tmp = index_tmp(&binlog.index);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(index_err)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(index_err)?;
    // By the handle: the name could be another file by now.
    if let Some((uid, gid)) = Owner::new(dir_meta.uid(), dir_meta.gid()).ids {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(index_err)?;
    }
    std::fs::rename(&tmp, &binlog.index).map_err(index_err)?;
    Ok(count)
}

fn index_tmp(index: &Path) -> PathBuf {
    let mut name = index.file_name().unwrap_or_default().to_os_string();
    name.push(".shadowcopy-tmp");
    index.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path) -> BinlogLayout {
        BinlogLayout {
            dir: dir.to_path_buf(),
            basename: "mariadb-bin".into(),
            index: dir.join("mariadb-bin.index"),
            format: "ROW".into(),
        }
    }

    #[test]
    fn the_index_lists_the_logs_in_order_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let binlog = layout(dir.path());
        for n in [3, 1, 2] {
            std::fs::write(dir.path().join(format!("mariadb-bin.{n:06}")), "x").unwrap();
        }
        std::fs::write(dir.path().join("other.000009"), "x").unwrap();
        std::fs::write(&binlog.index, "./mariadb-bin.000001\n").unwrap();
        assert_eq!(write_index(&binlog).unwrap(), 3);
        let text = std::fs::read_to_string(&binlog.index).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "./mariadb-bin.000001".to_string(),
                dir.path().join("mariadb-bin.000002").display().to_string(),
                dir.path().join("mariadb-bin.000003").display().to_string(),
            ]
        );
    }

    #[test]
    fn an_index_replaced_by_a_link_is_not_read_through_it() {
        // The server's user owns the binlog directory: it could point the index at a
        // file only root may read, for root to copy into a file the user can read.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root's only\n").unwrap();
        let logs = dir.path().join("binlog");
        std::fs::create_dir(&logs).unwrap();
        let binlog = layout(&logs);
        std::fs::write(logs.join("mariadb-bin.000001"), "x").unwrap();
        std::os::unix::fs::symlink(&secret, &binlog.index).unwrap();
        let e = write_index(&binlog).unwrap_err().to_string();
        assert!(e.contains("mariadb-bin.index"), "{e}");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root's only\n");
        assert!(std::fs::symlink_metadata(&binlog.index)
            .unwrap()
            .is_symlink());
        assert!(!logs.join("mariadb-bin.index.shadowcopy-tmp").exists());
    }
}
