//! Binary log truncation after a verified copy: `PURGE BINARY LOGS TO` the oldest binlog
//! that this copy or a kept copy of the set needs for a roll-forward (the file its
//! position names). A kept copy without a position file (a pre-restore copy) cannot be
//! rolled forward and needs none; a kept copy whose position file cannot be read stops
//! the truncation: nothing is purged on a guess. The server itself refuses to purge a
//! binlog a connected replica still reads.

use mysql::prelude::Queryable;
use shadowcopy_core::error::human_bytes;
use shadowcopy_core::model::{CopyId, CopyView};
use shadowcopy_core::writer::{KeptCopy, LogsOffHost};

use crate::position::{binlog_number, BinlogPosition, POSITION_FILE};
use crate::server::{self, MariaDbOptions, ServerLayout};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("no binary log was purged: the set's other copies could not be listed ({0})")]
    KeptUnknown(String),
    #[error("no binary log was purged: cannot tell where {} starts: {reason}", which(*.id))]
    StartUnknown { id: Option<CopyId>, reason: String },
    #[error(
        "no binary log was purged: the set's archive holds none of its binary logs yet \
         (`shadowcopy archive push-logs --set SET` sends them; the agent does after each push)"
    )]
    NotOffHost,
    #[error("purging binary logs failed: {0}")]
    Server(String),
}

fn which(id: Option<CopyId>) -> String {
    match id {
        Some(id) => format!("copy {id}"),
        None => "the new copy".into(),
    }
}

/// What holds back a purge: a copy's start (`None`: the new copy's), or the end of what
/// the set's archive holds.
enum Holder {
    Copy(Option<CopyId>),
    Archive,
}

/// The binlog a copy's roll-forward starts in: `Ok(None)` when it has no position file.
pub fn copy_start(
    layout: &ServerLayout,
    copy: &CopyView,
) -> Result<Option<BinlogPosition>, String> {
    let Some(path) = copy.path_of(&layout.datadir.join(POSITION_FILE)) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = BinlogPosition::parse(&text).map_err(|e| e.to_string())?;
    Ok(p.binlog_file.is_some().then_some(p))
}

/// Purges what neither `this` copy nor any `kept` copy needs, and, when the set has an
/// archive off the host, only what that archive holds; returns a line for the user.
pub fn purge_unneeded(
    options: &MariaDbOptions,
    layout: &ServerLayout,
    this: &CopyView,
    kept: &[KeptCopy],
    off_host: &LogsOffHost,
) -> Result<Option<String>, RetentionError> {
    let start_of = |id: Option<CopyId>, view: &CopyView| {
        copy_start(layout, view).map_err(|reason| RetentionError::StartUnknown { id, reason })
    };
    let mut oldest: Option<(Holder, String, u64)> = None;
    let candidates =
        std::iter::once((None, this)).chain(kept.iter().map(|k| (Some(k.id), &k.view)));
    for (id, view) in candidates {
        let Some(p) = start_of(id, view)? else {
            continue;
        };
        let file = p.binlog_file.unwrap_or_default();
        let n =
            binlog_number(&file)
                .map(|(_, n)| n)
                .ok_or_else(|| RetentionError::StartUnknown {
                    id,
                    reason: format!("{file:?} is not a binary log name"),
                })?;
        if oldest.as_ref().is_none_or(|(_, _, m)| n < *m) {
            oldest = Some((Holder::Copy(id), file, n));
        }
    }
    let Some((mut holder, mut file, oldest_n)) = oldest else {
        return Ok(None);
    };
    match off_host {
        LogsOffHost::NoArchive => {}
        LogsOffHost::Through(None) => return Err(RetentionError::NotOffHost),
        LogsOffHost::Through(Some(newest)) => match binlog_number(newest) {
            Some((_, n)) if n < oldest_n => (holder, file) = (Holder::Archive, newest.clone()),
            Some(_) => {}
            None => return Err(RetentionError::NotOffHost),
        },
    }
    let mut conn =
        server::connect_with(options).map_err(|e| RetentionError::Server(e.to_string()))?;
    let before = logs(&mut conn)?;
    if !before.iter().any(|(name, _)| *name == file) {
        return Ok(Some(format!(
            "binary logs: nothing purged; {file}, where the oldest kept copy starts, is no longer on the server"
        )));
    }
    conn.query_drop(format!(
        "PURGE BINARY LOGS TO '{}'",
        file.replace('\'', "''")
    ))
    .map_err(|e| RetentionError::Server(e.to_string()))?;
    let after = logs(&mut conn)?;
    let purged: Vec<&(String, u64)> = before.iter().filter(|l| !after.contains(l)).collect();
    let holder = match holder {
        Holder::Copy(Some(id)) => format!("the start of copy {id}, the oldest kept"),
        Holder::Copy(None) => "the start of this copy; no kept copy needs older logs".into(),
        Holder::Archive => {
            "the newest binary log in the set's archive; what follows is only on this host".into()
        }
    };
    Ok(Some(match purged.len() {
        0 => format!("binary logs: nothing to purge before {file} ({holder})"),
        n => format!(
            "binary logs: purged {n} file{} ({}) before {file} ({holder})",
            if n == 1 { "" } else { "s" },
            human_bytes(purged.iter().map(|(_, s)| *s).sum())
        ),
    }))
}

fn logs(conn: &mut mysql::Conn) -> Result<Vec<(String, u64)>, RetentionError> {
    let rows: Vec<mysql::Row> = conn
        .query("SHOW BINARY LOGS")
        .map_err(|e| RetentionError::Server(e.to_string()))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let name: String = r.get(0)?;
            let size: u64 = r.get(1).unwrap_or(0);
            Some((name, size))
        })
        .collect())
}
