//! A restore elsewhere (`restore ID --to DIR`), for a second server beside the live one:
//! the copy's binlog index names the binary logs by absolute path, the originals', so
//! it is rewritten to name the restored ones; and the restore says how to start that
//! server (`mariadbd` as the data's owner, its own socket, port and server id, its
//! directories below DIR).

use std::path::{Path, PathBuf};

use shadowcopy_core::writer::shell_quote;
use shadowcopy_core::BoxError;

use crate::server::ServerLayout;

/// Where a restore below DIR put the server's directories: the tree keeps its shape
/// below DIR from the directories' common ancestor on (as the restore lays it out).
pub struct Moved {
    root: PathBuf,
    to: PathBuf,
}

impl Moved {
    /// From where the data directory was restored; `None` when that does not fit.
    pub fn new(layout: &ServerLayout, restored_datadir: &Path) -> Option<Moved> {
        let paths = layout.paths();
        let mut root = paths.first()?.clone();
        for p in &paths {
            while !p.starts_with(&root) {
                if !root.pop() {
                    return None;
                }
            }
        }
        let rel = layout.datadir.strip_prefix(&root).ok()?;
        let mut to = restored_datadir.to_path_buf();
        for _ in rel.components() {
            to.pop();
        }
        (to.join(rel) == restored_datadir).then_some(Moved { root, to })
    }

    /// Where `original` went.
    pub fn path(&self, original: &Path) -> PathBuf {
        match original.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => self.to.clone(),
            Ok(rel) => self.to.join(rel),
            Err(_) => original.to_path_buf(),
        }
    }
}

/// Rewrites the staged binlog index (`staged`: target → staged file) so that each
/// absolute entry below the server's directories names its restored file. Returns
/// whether there was an index to rewrite.
pub fn relocate_index(
    layout: &ServerLayout,
    moved: &Moved,
    staged: &[(PathBuf, PathBuf)],
) -> Result<bool, BoxError> {
    let Some(binlog) = &layout.binlog else {
        return Ok(false);
    };
    let index = moved.path(&binlog.index);
    let Some((_, file)) = staged.iter().find(|(t, _)| *t == index) else {
        return Ok(false);
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "cannot read the copy's binlog index {}: {e}",
            file.display()
        )
    })?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let p = Path::new(line);
        if p.is_absolute() {
            out.push_str(&moved.path(p).to_string_lossy());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    // A staged file, in the restore's private staging area: written in place, its
    // owner and mode kept.
    std::fs::write(file, out)
        .map_err(|e| format!("cannot write the binlog index {}: {e}", file.display()))?;
    Ok(true)
}

/// How to start the server restored into `datadir` beside the live one.
pub fn start_note(layout: &ServerLayout, datadir: &Path, moved: Option<&Moved>) -> String {
    let place = |p: &Path| moved.map_or_else(|| p.to_path_buf(), |m| m.path(p));
    let mariadbd = crate::bin::program("mariadbd")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mariadbd".into());
    let user = shadowcopy_core::dbfiles::user_name(layout.owner_uid)
        .unwrap_or_else(|| layout.owner_uid.to_string());
    let port = shadowcopy_core::dbfiles::free_port(3307..4307);
    let mut args = vec![
        "--no-defaults".to_string(),
        format!("--datadir={}", datadir.display()),
        format!("--socket={}", datadir.join("restored.sock").display()),
        format!("--pid-file={}", datadir.join("restored.pid").display()),
        format!("--log-error={}", datadir.join("restored.err").display()),
        format!("--port={port}"),
        // Another identity than the live server's: no replication clash.
        format!("--server-id={}", layout.server_id.wrapping_add(1000).max(1)),
        "--skip-slave-start".into(),
        format!("--lower-case-table-names={}", layout.lower_case_table_names),
    ];
    if layout.innodb_page_size > 0 {
        args.push(format!("--innodb-page-size={}", layout.innodb_page_size));
    }
    if !layout.innodb_data_file_path.is_empty() {
        args.push(format!(
            "--innodb-data-file-path={}",
            layout.innodb_data_file_path
        ));
    }
    for (flag, dir) in [
        ("--innodb-log-group-home-dir", &layout.innodb_log_dir),
        ("--innodb-undo-directory", &layout.undo_dir),
        ("--innodb-data-home-dir", &layout.innodb_data_home_dir),
    ] {
        if !dir.starts_with(&layout.datadir) {
            args.push(format!("{flag}={}", place(dir).display()));
        }
    }
    match &layout.binlog {
        Some(b) => {
            args.push(format!(
                "--log-bin={}",
                place(&b.dir).join(&b.basename).display()
            ));
            args.push(format!("--log-bin-index={}", place(&b.index).display()));
        }
        None => args.push("--skip-log-bin".into()),
    }
    format!(
        "start it beside the live server (port {port}, socket {}): runuser -u {} -- {} {}",
        datadir.join("restored.sock").display(),
        shell_quote(&user),
        shell_quote(&mariadbd),
        args.iter().map(shell_quote).collect::<Vec<_>>().join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_move_below_dir_from_their_common_ancestor() {
        let m = Moved {
            root: PathBuf::from("/srv/db"),
            to: PathBuf::from("/tmp/side"),
        };
        assert_eq!(
            m.path(Path::new("/srv/db/binlog/mariadb-bin.000003")),
            Path::new("/tmp/side/binlog/mariadb-bin.000003")
        );
        assert_eq!(m.path(Path::new("/srv/db")), Path::new("/tmp/side"));
        assert_eq!(m.path(Path::new("/elsewhere/x")), Path::new("/elsewhere/x"));
    }
}
