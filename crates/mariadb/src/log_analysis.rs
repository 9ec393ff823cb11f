//! `shadowcopy mariadb log-analysis ID`: for one copy, the binary log chain after its
//! position — which binlog files exist after it (in the copy, in the live binlog
//! directory and index, and how far the set's archive off the host holds them by the
//! catalog's record), their sizes, first and last GTIDs and event times (read with
//! `mariadb-binlog`), where the chain has holes (numbered files missing between the
//! copy's file and the newest), which files the index names but are gone (purged), and
//! what each restore mode would reach: point-in-time the copy's own position and GTID,
//! roll-forward the last transaction of the chain up to its first break.
//!
//! It reads files only (the server may be down, as it is before a restore) and writes
//! nothing. Every live binary log from the copy's on is read once by `mariadb-binlog`
//! (rows not decoded), as a replay would read it without applying it.
//!
//! A roll-forward (`replay.rs`) reads the live index from the copy's file on and refuses
//! when a file it lists is missing; the chain here stops at the first number that is not
//! on disk or not in the index, and when a listed file after it is missing the report
//! names the `--until FILE:POS` that replays up to the break.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use shadowcopy_core::model::CopyView;

use crate::position::{
    binlog_number, is_gtid, read_index, BinlogPosition, CopyPositionError, POSITION_FILE,
};
use crate::server::{BinlogLayout, ServerLayout};

/// Where the events of a binary log begin (after its 4-byte magic number).
const FIRST_EVENT: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the server's binary log was off (log_bin) when the set was made: a copy of it has no binlog chain after it to analyse; only a point-in-time restore is possible")]
    NoBinlog,
    #[error("the copy holds no binlog position ({POSITION_FILE}): it is a pre-restore copy, or was made by a shadowcopy that did not write one; it cannot be rolled forward and has no binlog chain to analyse")]
    NoPosition,
    #[error("the copy's binlog position file {} is unreadable: {why}", .path.display())]
    BadPosition { path: PathBuf, why: String },
    #[error("the copy's binlog position file says the binary log was off when it was made: it has no binlog chain to analyse; only a point-in-time restore is possible")]
    BinlogOffAtCopy,
    #[error("the copy's binlog position names {0:?}, which is not a binary log of this server (base name {1})")]
    ForeignStart(String, String),
}

/// Where the copy stands in the binary log (its position file).
#[derive(Clone, Debug, Serialize)]
pub struct CopyPosition {
    pub file: String,
    pub position: u64,
    /// `gtid_binlog_pos` at the freeze.
    pub gtid: Option<String>,
    pub captured_at: String,
    pub server_id: u32,
}

/// One of the copy's own binary logs (from its position's file on).
#[derive(Clone, Debug, Serialize)]
pub struct CopyLog {
    pub name: String,
    pub size: Option<u64>,
}

/// What `mariadb-binlog` read in one binary log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Events {
    /// GTID events (one per transaction or DDL statement).
    pub transactions: u64,
    pub first_gtid: Option<String>,
    pub last_gtid: Option<String>,
    /// The first transaction's time and the last event's of the last transaction (UTC).
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Where the last transaction's last event ends.
    pub last_transaction_end: Option<u64>,
    /// Where the last event read ends.
    pub end_position: Option<u64>,
    /// It ends with a Rotate or Stop event: the server closed it. A file the server still
    /// writes (or that it never closed, having crashed) is not.
    pub closed: bool,
}

/// A binary log on this host, from the copy's file on.
#[derive(Clone, Debug, Serialize)]
pub struct LiveLog {
    pub name: String,
    pub number: u64,
    pub size: u64,
    /// The binlog index names it (a roll-forward reads only what the index names).
    pub in_index: bool,
    /// Where reading started: the copy's position in its own file, else the first event.
    pub from: u64,
    #[serde(flatten)]
    pub events: Events,
    /// Why `mariadb-binlog` could not read it (or not all of it).
    pub read_error: Option<String>,
}

/// The live binary logs: the directory and index the set recorded.
#[derive(Clone, Debug, Serialize)]
pub struct LiveLogs {
    #[serde(serialize_with = "shadowcopy_core::pathjson::serialize")]
    pub dir: PathBuf,
    #[serde(serialize_with = "shadowcopy_core::pathjson::serialize")]
    pub index: PathBuf,
    /// Why the directory could not be listed.
    pub dir_error: Option<String>,
    /// Why the index could not be read (then nothing can be rolled forward).
    pub index_error: Option<String>,
    /// From the copy's file on, oldest first.
    pub files: Vec<LiveLog>,
}

/// The set's archive off the host, as far as the catalog knows it. The archive itself is
/// not listed (its object names need the archive's passphrase); what its last
/// `archive push-logs` recorded is.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveRecord {
    pub url: String,
    /// The newest binary log the archive holds, by the catalog's record.
    pub through: Option<String>,
    /// Why the record could not be read.
    pub error: Option<String>,
}

/// Numbered files `first..=last` are not on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hole {
    pub first: String,
    pub last: String,
    pub files: u64,
    /// How many of them the index still names (purged by hand, or lost).
    pub named_in_index: u64,
    /// The archive's record reaches past them (`archive get-logs` may bring them back).
    pub maybe_in_archive: bool,
}

/// What a point-in-time restore reaches: the copy itself.
#[derive(Clone, Debug, Serialize)]
pub struct PointInTimeReach {
    pub file: String,
    pub position: u64,
    pub gtid: Option<String>,
    pub time: String,
}

/// The newest transaction a roll-forward replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transaction {
    pub gtid: Option<String>,
    pub file: String,
    /// Where its last event ends.
    pub end_position: Option<u64>,
    pub time: Option<String>,
}

/// Why the chain a roll-forward replays ends where it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ChainEnd {
    /// The newest binary log was read: replay goes as far as the server has written.
    EndOfLog { next: String },
    /// This numbered file is not on this host.
    Missing { file: String },
    /// This file is on disk but the index does not name it: replay would not read it.
    NotInIndex { file: String },
    /// The index could not be read: replay reads nothing.
    NoIndex { why: String },
}

/// What `restore --mode roll-forward` without `--until` does with this chain: it reads
/// every file the index names from the copy's on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlainRestore {
    /// It replays exactly this chain.
    Reaches,
    /// It refuses: a file the index names is missing, the index skips the file where
    /// the chain breaks and names later ones (replaying those without it would apply
    /// transactions whose predecessors are lost), or the index cannot be read.
    Refused,
}

/// What a roll-forward restore reaches.
#[derive(Clone, Debug, Serialize)]
pub struct RollForwardReach {
    /// How many binary logs replay reads (the copy's own first).
    pub files: usize,
    pub last_file: Option<String>,
    /// Where reading ends in the last file.
    pub end_position: Option<u64>,
    /// Transactions after the copy's position, up to the break.
    pub transactions: u64,
    pub last_transaction: Option<Transaction>,
    pub ends: ChainEnd,
    /// Binary logs present after the break, which a roll-forward cannot reach.
    pub unreachable_files: usize,
    /// What a restore without `--until` does.
    pub without_until: PlainRestore,
    /// When that is not [`PlainRestore::Reaches`]: the `--until` that replays up to the
    /// break and no further.
    pub until: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogAnalysis {
    #[serde(serialize_with = "shadowcopy_core::pathjson::serialize")]
    pub datadir: PathBuf,
    /// The binary logs' base name (`mariadb-bin`).
    pub basename: String,
    pub copy: CopyPosition,
    /// The copy's binary logs from its position's file on.
    pub in_copy: Vec<CopyLog>,
    /// `None`: the set has no archive off the host.
    pub archive: Option<ArchiveRecord>,
    pub live: LiveLogs,
    /// Numbered files missing between the copy's file and the newest, oldest first.
    pub holes: Vec<Hole>,
    /// Files the index names that are gone (any, also before the copy's).
    pub purged: Vec<String>,
    /// Files on disk after the copy's that the index does not name.
    pub unlisted: Vec<String>,
    pub point_in_time: PointInTimeReach,
    pub roll_forward: RollForwardReach,
}

/// Analyses the binary logs available to restores of `copy` of the server `layout`;
/// `archive`: the set's archive off the host and how far the catalog says it holds them.
pub fn analyze(
    layout: &ServerLayout,
    copy: &CopyView,
    archive: Option<ArchiveRecord>,
) -> Result<LogAnalysis, AnalysisError> {
    let binlog = layout.binlog.as_ref().ok_or(AnalysisError::NoBinlog)?;
    let position = copy_position(layout, copy)?;
    let (start_file, start_pos) = position.start().ok_or(AnalysisError::BinlogOffAtCopy)?;
    let start = match binlog_number(start_file) {
        Some((base, n)) if base == binlog.basename => n,
        _ => {
            return Err(AnalysisError::ForeignStart(
                start_file.to_string(),
                binlog.basename.clone(),
            ))
        }
    };

    let mut in_copy: Vec<(u64, CopyLog)> = copy
        .files
        .iter()
        .filter(|(original, _)| original.parent() == Some(binlog.dir.as_path()))
        .filter_map(|(original, in_copy)| {
            let name = original.file_name()?.to_str()?;
            let (base, n) = binlog_number(name)?;
            (base == binlog.basename && n >= start).then(|| {
                let size = std::fs::metadata(in_copy).ok().map(|m| m.len());
                (
                    n,
                    CopyLog {
                        name: name.to_string(),
                        size,
                    },
                )
            })
        })
        .collect();
    in_copy.sort_by_key(|(n, _)| *n);

    let (known, dir_error, index_error) = known_logs(&layout.datadir, binlog);
    let archived_through = archive
        .as_ref()
        .and_then(|a| a.through.as_deref())
        .and_then(binlog_number)
        .map(|(_, n)| n);
    let chain = chain(
        &binlog.basename,
        start,
        &known,
        index_error.is_none(),
        archived_through,
    );

    let reader = crate::bin::program("mariadb-binlog").map_err(|e| e.to_string());
    let mut files = Vec::new();
    for k in known.values().filter(|k| k.number >= start) {
        let Some(size) = k.size else { continue };
        let from = if k.number == start {
            start_pos
        } else {
            FIRST_EVENT
        };
        let (events, read_error) = match &reader {
            _ if k.link => (
                Events::default(),
                Some("a symbolic link, not read through (a root-run shadowcopy follows no link the server's user could have planted)".into()),
            ),
            Ok(program) => read_events(program, &k.path, from),
            Err(e) => (Events::default(), Some(e.clone())),
        };
        files.push(LiveLog {
            name: k.name.clone(),
            number: k.number,
            size,
            in_index: k.in_index,
            from,
            events,
            read_error,
        });
    }
    let roll_forward = reach(&chain, &files, &known);

    Ok(LogAnalysis {
        datadir: layout.datadir.clone(),
        basename: binlog.basename.clone(),
        point_in_time: PointInTimeReach {
            file: start_file.to_string(),
            position: start_pos,
            gtid: position.gtid.clone(),
            time: position.captured_at.clone(),
        },
        copy: CopyPosition {
            file: start_file.to_string(),
            position: start_pos,
            gtid: position.gtid.clone(),
            captured_at: position.captured_at.clone(),
            server_id: position.server_id,
        },
        in_copy: in_copy.into_iter().map(|(_, c)| c).collect(),
        archive,
        live: LiveLogs {
            dir: binlog.dir.clone(),
            index: binlog.index.clone(),
            dir_error,
            index_error,
            files,
        },
        holes: chain.holes,
        purged: chain.purged,
        unlisted: chain.unlisted,
        roll_forward,
    })
}

/// The copy's position file, read from the copy.
fn copy_position(layout: &ServerLayout, copy: &CopyView) -> Result<BinlogPosition, AnalysisError> {
    crate::position::in_copy(layout, copy).map_err(|e| match e {
        CopyPositionError::Missing => AnalysisError::NoPosition,
        CopyPositionError::Unreadable { path, why } => AnalysisError::BadPosition { path, why },
    })
}

/// One numbered binary log as the index and the directory know it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    number: u64,
    name: String,
    /// Where it is (or was): the index's path, else the directory's.
    path: PathBuf,
    in_index: bool,
    /// `None`: not there (a regular file at its path, or a link to one).
    size: Option<u64>,
    /// A symbolic link: counted, never read through (the server's user owns the
    /// directory and could have planted it for a root-run shadowcopy).
    link: bool,
}

/// A binary log's size, and whether its path is a symbolic link (to a regular file).
fn stat(path: &Path) -> (Option<u64>, bool) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => (Some(m.size()), false),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => (Some(m.size()), true),
            _ => (None, false),
        },
        _ => (None, false),
    }
}

/// The numbered binary logs the index names and the directory holds, by number; why
/// the directory and why the index could not be read.
fn known_logs(
    datadir: &Path,
    binlog: &BinlogLayout,
) -> (BTreeMap<u64, Known>, Option<String>, Option<String>) {
    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    let index_error = match read_index(&binlog.index, datadir) {
        Ok(listed) => {
            for path in listed {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let name = name.to_string();
                let Some((base, number)) = binlog_number(&name) else {
                    continue;
                };
                if base != binlog.basename {
                    continue;
                }
                known.entry(number).or_insert_with(|| {
                    let (size, link) = stat(&path);
                    Known {
                        number,
                        name,
                        path,
                        in_index: true,
                        size,
                        link,
                    }
                });
            }
            None
        }
        Err(e) => Some(format!("{}: {e}", binlog.index.display())),
    };
    let dir_error = match std::fs::read_dir(&binlog.dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some((base, number)) = binlog_number(name) else {
                    continue;
                };
                if base != binlog.basename {
                    continue;
                }
                // A log the index names counts where the index says (a roll-forward
                // reads it there).
                if known.contains_key(&number) {
                    continue;
                }
                let path = entry.path();
                if let (Some(size), link) = stat(&path) {
                    known.insert(
                        number,
                        Known {
                            number,
                            name: name.to_string(),
                            path,
                            in_index: false,
                            size: Some(size),
                            link,
                        },
                    );
                }
            }
            None
        }
        Err(e) => Some(format!("{}: {e}", binlog.dir.display())),
    };
    (known, dir_error, index_error)
}

/// The chain from the copy's file on, as numbers; no file was read yet.
#[derive(Debug, PartialEq, Eq)]
struct Chain {
    holes: Vec<Hole>,
    purged: Vec<String>,
    unlisted: Vec<String>,
    /// The files a roll-forward reads, in order.
    reachable: Vec<u64>,
    ends: ChainEnd,
    /// Files present after the break.
    unreachable: usize,
    /// What a restore without `--until` does with it.
    without_until: PlainRestore,
}

/// The name of binary log `n` (`basename.000042`), in the width the server uses.
fn log_name(basename: &str, n: u64) -> String {
    format!("{basename}.{n:06}")
}

fn chain(
    basename: &str,
    start: u64,
    known: &BTreeMap<u64, Known>,
    index_read: bool,
    archived_through: Option<u64>,
) -> Chain {
    let name_of = |n: u64| match known.get(&n) {
        Some(k) => k.name.clone(),
        None => log_name(basename, n),
    };
    let present = |n: u64| known.get(&n).is_some_and(|k| k.size.is_some());
    let newest = known
        .keys()
        .next_back()
        .copied()
        .unwrap_or(start)
        .max(start);

    let mut holes: Vec<Hole> = Vec::new();
    for n in start..=newest {
        if present(n) {
            continue;
        }
        let named = u64::from(known.get(&n).is_some_and(|k| k.in_index));
        match holes.last_mut() {
            Some(h) if binlog_number(&h.last).is_some_and(|(_, l)| l + 1 == n) => {
                h.last = name_of(n);
                h.files += 1;
                h.named_in_index += named;
                h.maybe_in_archive = archived_through.is_some_and(|t| t >= n);
            }
            _ => holes.push(Hole {
                first: name_of(n),
                last: name_of(n),
                files: 1,
                named_in_index: named,
                maybe_in_archive: archived_through.is_some_and(|t| t >= n),
            }),
        }
    }
    let purged = known
        .values()
        .filter(|k| k.in_index && k.size.is_none())
        .map(|k| k.name.clone())
        .collect();
    let unlisted = if index_read {
        known
            .values()
            .filter(|k| k.number >= start && !k.in_index && k.size.is_some())
            .map(|k| k.name.clone())
            .collect()
    } else {
        Vec::new()
    };

    let mut reachable = Vec::new();
    let ends = if !index_read {
        ChainEnd::NoIndex {
            why: "the binlog index could not be read".into(),
        }
    } else {
        let mut n = start;
        loop {
            if n > newest {
                break ChainEnd::EndOfLog { next: name_of(n) };
            }
            if !present(n) {
                break ChainEnd::Missing { file: name_of(n) };
            }
            if !known.get(&n).is_some_and(|k| k.in_index) {
                break ChainEnd::NotInIndex { file: name_of(n) };
            }
            reachable.push(n);
            n += 1;
        }
    };
    let break_at = start + reachable.len() as u64;
    let unreachable = known
        .values()
        .filter(|k| k.number > break_at && k.size.is_some())
        .count();
    let listed_after = |gone: bool| {
        known
            .values()
            .any(|k| k.number >= break_at && k.in_index && k.size.is_none() == gone)
    };
    let without_until = if !index_read || listed_after(true) || listed_after(false) {
        PlainRestore::Refused
    } else {
        PlainRestore::Reaches
    };
    Chain {
        holes,
        purged,
        unlisted,
        reachable,
        ends,
        unreachable,
        without_until,
    }
}

/// Where a roll-forward over `chain` ends, from what was read of its files.
fn reach(chain: &Chain, files: &[LiveLog], known: &BTreeMap<u64, Known>) -> RollForwardReach {
    let read: Vec<&LiveLog> = chain
        .reachable
        .iter()
        .filter_map(|n| files.iter().find(|f| f.number == *n))
        .collect();
    let last = read.last();
    let last_file = chain
        .reachable
        .last()
        .and_then(|n| known.get(n))
        .map(|k| k.name.clone());
    let end_position = last.map(|f| f.events.end_position.unwrap_or(f.size));
    let last_transaction = read.iter().rev().find_map(|f| {
        (f.events.transactions > 0).then(|| Transaction {
            gtid: f.events.last_gtid.clone(),
            file: f.name.clone(),
            end_position: f.events.last_transaction_end,
            time: f.events.last_time.clone(),
        })
    });
    let until = match (chain.without_until, &last_file, end_position) {
        (PlainRestore::Reaches, _, _) => None,
        (_, Some(file), Some(pos)) => Some(format!("{file}:{pos}")),
        _ => None,
    };
    RollForwardReach {
        files: chain.reachable.len(),
        last_file,
        end_position,
        transactions: read.iter().map(|f| f.events.transactions).sum(),
        last_transaction,
        ends: chain.ends.clone(),
        unreachable_files: chain.unreachable,
        without_until: chain.without_until,
        until,
    }
}

/// Reads one binary log from `from` with `mariadb-binlog` (rows not decoded; times in
/// UTC). What it printed counts even when it fails part way (a file cut short).
fn read_events(program: &Path, file: &Path, from: u64) -> (Events, Option<String>) {
    let mut cmd = Command::new(program);
    crate::instance::clean_env(&mut cmd);
    cmd.arg("--no-defaults").arg("--base64-output=decode-rows");
    if from > FIRST_EVENT {
        cmd.arg(format!("--start-position={from}"));
    }
    let stderr = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => return (Events::default(), Some(format!("a temporary file: {e}"))),
    };
    let Ok(stderr_for_child) = stderr.try_clone() else {
        return (Events::default(), Some("a temporary file".into()));
    };
    cmd.arg(file)
        .env("TZ", "UTC0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_for_child);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Events::default(),
                Some(format!("running {}: {e}", program.display())),
            )
        }
    };
    let mut parser = EventParser::default();
    if let Some(out) = child.stdout.take() {
        let mut out = BufReader::new(out);
        let mut line = Vec::new();
        // Statements may hold any bytes: only the `#` lines are read as text.
        while matches!(out.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if line.first() == Some(&b'#') {
                parser.line(&String::from_utf8_lossy(&line));
            }
            line.clear();
        }
    }
    let error = match child.wait() {
        Ok(s) if s.success() => None,
        Ok(s) => {
            use std::io::{Read, Seek};
            let mut said = String::new();
            let mut f = stderr;
            let _ = f.rewind().and_then(|_| f.read_to_string(&mut said));
            Some(format!(
                "mariadb-binlog {s}: {}",
                crate::instance::last_lines(&said, 3)
            ))
        }
        Err(e) => Some(format!("waiting for mariadb-binlog: {e}")),
    };
    (parser.events, error)
}

/// An event's header line as `mariadb-binlog` prints it:
/// `#261207 13:16:37 server id 1  end_log_pos 386 CRC32 0xbe5333be \tGTID 0-1-4 trans`
/// (the hour may be padded with a space; no CRC32 without checksums).
#[derive(Debug, PartialEq, Eq)]
struct Header<'a> {
    /// `2026-12-07 13:16:37 UTC` (printed in the zone of `TZ`, which we set to UTC).
    time: String,
    end: u64,
    what: &'a str,
}

fn parse_header(line: &str) -> Option<Header<'_>> {
    let rest = line.strip_prefix('#')?;
    let date = rest.get(..6)?;
    if !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest[6..].strip_prefix(' ')?.trim_start();
    let (clock, rest) = rest.split_once(' ')?;
    let hms: Vec<u32> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    let rest = rest.trim_start().strip_prefix("server id ")?;
    let (_, after) = rest.split_once("end_log_pos ")?;
    let end = after.split_whitespace().next()?.parse().ok()?;
    let what = after.split_once('\t').map(|(_, w)| w.trim()).unwrap_or("");
    let time = format!(
        "20{}-{}-{} {h:02}:{m:02}:{s:02} UTC",
        &date[..2],
        &date[2..4],
        &date[4..6]
    );
    Some(Header { time, end, what })
}

/// Folds `mariadb-binlog`'s `#` lines into [`Events`].
#[derive(Default)]
struct EventParser {
    events: Events,
    in_transaction: bool,
}

impl EventParser {
    fn line(&mut self, line: &str) {
        let Some(h) = parse_header(line.trim_end()) else {
            return;
        };
        let e = &mut self.events;
        e.end_position = Some(e.end_position.map_or(h.end, |p| p.max(h.end)));
        e.closed = false;
        if let Some(rest) = h.what.strip_prefix("GTID ") {
            let gtid = rest.split_whitespace().next().filter(|g| is_gtid(g));
            e.transactions += 1;
            if e.first_gtid.is_none() {
                e.first_gtid = gtid.map(str::to_string);
            }
            if e.first_time.is_none() {
                e.first_time = Some(h.time.clone());
            }
            e.last_gtid = gtid.map(str::to_string);
            e.last_time = Some(h.time);
            e.last_transaction_end = Some(h.end);
            self.in_transaction = true;
        } else if h.what.starts_with("Rotate to ") || h.what.starts_with("Stop") {
            e.closed = true;
            self.in_transaction = false;
        } else if ["Start:", "Gtid list", "Binlog checkpoint", "Format_desc"]
            .iter()
            .any(|p| h.what.starts_with(p))
        {
            self.in_transaction = false;
        } else if self.in_transaction {
            e.last_time = Some(h.time);
            e.last_transaction_end = Some(h.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mariadb-binlog --base64-output=decode-rows` of a closed log, as 10.11 prints it.
    const CLOSED: &str = "\
/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;
DELIMITER /*!*/;
# at 4
#261207 13:16:37 server id 1  end_log_pos 256 CRC32 0x4806b604 \tStart: binlog v 4, server v 10.11.19-MariaDB-0+deb12u1-log created 261207 13:16:37
# at 256
#261207 13:16:37 server id 1  end_log_pos 299 CRC32 0xb2f38db4 \tGtid list [0-1-3]
# at 299
#261207 13:16:37 server id 1  end_log_pos 344 CRC32 0x3fb3b2f7 \tBinlog checkpoint mariadb-bin.000001
# at 344
#261207 13:16:37 server id 1  end_log_pos 386 CRC32 0xbe5333be \tGTID 0-1-4 trans
/*M!100001 SET @@session.gtid_seq_no=4*//*!*/;
START TRANSACTION
/*!*/;
# at 386
# at 456
#261207 13:16:37 server id 1  end_log_pos 456 CRC32 0x1ecc9a58 \tAnnotate_rows:
#Q> insert into shop.t values (null,'b'),(null,'c')
#261207 13:16:37 server id 1  end_log_pos 502 CRC32 0x4d72306a \tTable_map: `shop`.`t` mapped to number 18
# at 502
#261207 13:16:37 server id 1  end_log_pos 551 CRC32 0x02fa950d \tWrite_rows: table id 18 flags: STMT_END_F
# Number of rows: 2
# at 551
#261207 13:16:37 server id 1  end_log_pos 582 CRC32 0x5cd2d8ae \tXid = 8
COMMIT/*!*/;
# at 627
#261207  9:16:49 server id 1  end_log_pos 669 \tGTID 0-1-5 ddl
# at 669
#261207  9:16:49 server id 1  end_log_pos 782 \tQuery\tthread_id=6\texec_time=0\terror_code=0\txid=17
SET TIMESTAMP=1796649409/*!*/;
create table shop.m (i int) engine=myisam
/*!*/;
# at 846
#261207  9:16:50 server id 1  end_log_pos 895 CRC32 0x5fb5c239 \tRotate to mariadb-bin.000003  pos: 4
DELIMITER ;
# End of log file
";

    fn parse(text: &str) -> Events {
        let mut p = EventParser::default();
        for l in text.lines() {
            if l.starts_with('#') {
                p.line(l);
            }
        }
        p.events
    }

    #[test]
    fn headers_are_read_with_and_without_checksums_and_padded_hours() {
        let h = parse_header(
            "#261207 13:16:37 server id 1  end_log_pos 386 CRC32 0xbe5333be \tGTID 0-1-4 trans",
        )
        .unwrap();
        assert_eq!(
            h,
            Header {
                time: "2026-12-07 13:16:37 UTC".into(),
                end: 386,
                what: "GTID 0-1-4 trans"
            }
        );
        let h = parse_header("#261207  9:05:01 server id 7  end_log_pos 12 \tXid = 3").unwrap();
        assert_eq!(h.time, "2026-12-07 09:05:01 UTC");
        assert_eq!((h.end, h.what), (12, "Xid = 3"));
        for not in [
            "# at 386",
            "#Q> insert into t values (1)",
            "# Number of rows: 2",
            "#2612 13:16:37 server id 1  end_log_pos 1",
            "#261207 13:16 server id 1  end_log_pos 1",
        ] {
            assert_eq!(parse_header(not), None, "{not}");
        }
    }

    #[test]
    fn a_log_gives_its_first_and_last_transaction() {
        let e = parse(CLOSED);
        assert_eq!(e.transactions, 2);
        assert_eq!(e.first_gtid.as_deref(), Some("0-1-4"));
        assert_eq!(e.last_gtid.as_deref(), Some("0-1-5"));
        assert_eq!(e.first_time.as_deref(), Some("2026-12-07 13:16:37 UTC"));
        assert_eq!(e.last_time.as_deref(), Some("2026-12-07 09:16:49 UTC"));
        assert_eq!(e.last_transaction_end, Some(782));
        assert_eq!(e.end_position, Some(895));
        assert!(e.closed);
        // The log being written has no Rotate at its end.
        let open = CLOSED.split("# at 846").next().unwrap();
        let e = parse(open);
        assert!(!e.closed);
        assert_eq!(e.end_position, Some(782));
        // A log with no transaction (rotated right away).
        let empty = parse(
            "#261207 13:16:37 server id 1  end_log_pos 299 \tGtid list [0-1-5]\n\
             #261207 13:16:37 server id 1  end_log_pos 393 \tRotate to mariadb-bin.000004  pos: 4\n",
        );
        assert_eq!(empty.transactions, 0);
        assert_eq!(empty.last_gtid, None);
        assert!(empty.closed);
    }

    fn known(entries: &[(u64, bool, bool)]) -> BTreeMap<u64, Known> {
        entries
            .iter()
            .map(|&(n, in_index, present)| {
                let name = log_name("mariadb-bin", n);
                (
                    n,
                    Known {
                        number: n,
                        path: PathBuf::from("/srv/binlog").join(&name),
                        name,
                        in_index,
                        size: present.then_some(100 + n),
                        link: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_index_and_the_directory_are_read_together() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("binlog");
        std::fs::create_dir(&logs).unwrap();
        let binlog = BinlogLayout {
            dir: logs.clone(),
            basename: "mariadb-bin".into(),
            index: logs.join("mariadb-bin.index"),
            format: "ROW".into(),
        };
        for n in [2, 4, 5] {
            std::fs::write(logs.join(log_name("mariadb-bin", n)), vec![0u8; n as usize]).unwrap();
        }
        std::fs::write(logs.join("other.000003"), "x").unwrap();
        let elsewhere = dir.path().join("kept.000003");
        std::fs::write(&elsewhere, "abc").unwrap();
        std::os::unix::fs::symlink(&elsewhere, logs.join("mariadb-bin.000003")).unwrap();
        // 1 is named but gone; 5 is on disk but not named; 3 is a link.
        std::fs::write(
            &binlog.index,
            format!(
                "{0}/mariadb-bin.000001\n{0}/mariadb-bin.000002\n{0}/mariadb-bin.000003\n{0}/mariadb-bin.000004\n",
                logs.display()
            ),
        )
        .unwrap();
        let (known, dir_error, index_error) = known_logs(dir.path(), &binlog);
        assert_eq!((dir_error, index_error), (None, None));
        let seen: Vec<(u64, bool, Option<u64>, bool)> = known
            .values()
            .map(|k| (k.number, k.in_index, k.size, k.link))
            .collect();
        assert_eq!(
            seen,
            [
                (1, true, None, false),
                (2, true, Some(2), false),
                (3, true, Some(3), true),
                (4, true, Some(4), false),
                (5, false, Some(5), false),
            ]
        );
        let c = chain("mariadb-bin", 2, &known, true, None);
        assert_eq!(c.purged, ["mariadb-bin.000001"]);
        assert_eq!(c.unlisted, ["mariadb-bin.000005"]);
        assert_eq!(c.reachable, [2, 3, 4]);
        // No index: the directory alone, and nothing reachable.
        std::fs::remove_file(&binlog.index).unwrap();
        let (known, _, index_error) = known_logs(dir.path(), &binlog);
        assert!(index_error.unwrap().contains("mariadb-bin.index"));
        assert_eq!(known.len(), 4);
        assert!(known.values().all(|k| !k.in_index));
    }

    #[test]
    fn an_unbroken_chain_ends_at_the_newest_log() {
        // 1 and 2 purged properly (gone from the index too); the copy starts in 3.
        let k = known(&[(3, true, true), (4, true, true), (5, true, true)]);
        let c = chain("mariadb-bin", 3, &k, true, None);
        assert_eq!(c.reachable, [3, 4, 5]);
        assert!(c.holes.is_empty() && c.purged.is_empty() && c.unlisted.is_empty());
        assert_eq!(
            c.ends,
            ChainEnd::EndOfLog {
                next: "mariadb-bin.000006".into()
            }
        );
        assert_eq!(c.unreachable, 0);
        assert_eq!(c.without_until, PlainRestore::Reaches);
        // Logs before the copy's do not matter.
        let k = known(&[(1, true, true), (2, true, true), (3, true, true)]);
        assert_eq!(chain("mariadb-bin", 3, &k, true, None).reachable, [3]);
    }

    #[test]
    fn holes_stop_the_chain_and_are_told_apart_from_unlisted_files() {
        // 5 and 6 removed by hand (the index still names 5), 9 never listed.
        let k = known(&[
            (2, true, false),
            (3, true, true),
            (4, true, true),
            (5, true, false),
            (7, true, true),
            (8, true, true),
            (9, false, true),
        ]);
        let c = chain("mariadb-bin", 3, &k, true, Some(6));
        assert_eq!(c.reachable, [3, 4]);
        assert_eq!(
            c.holes,
            [Hole {
                first: "mariadb-bin.000005".into(),
                last: "mariadb-bin.000006".into(),
                files: 2,
                named_in_index: 1,
                maybe_in_archive: true,
            }]
        );
        assert_eq!(c.purged, ["mariadb-bin.000002", "mariadb-bin.000005"]);
        assert_eq!(c.unlisted, ["mariadb-bin.000009"]);
        assert_eq!(
            c.ends,
            ChainEnd::Missing {
                file: "mariadb-bin.000005".into()
            }
        );
        assert_eq!(c.unreachable, 3, "7, 8 and 9 are there but out of reach");
        assert!(
            c.without_until == PlainRestore::Refused,
            "a roll-forward refuses without --until"
        );

        // Two holes, oldest first; an archive that holds less does not cover them.
        let k = known(&[(3, true, true), (5, true, true), (8, true, true)]);
        let c = chain("mariadb-bin", 3, &k, true, Some(4));
        let holes: Vec<(&str, &str, u64, bool)> = c
            .holes
            .iter()
            .map(|h| {
                (
                    h.first.as_str(),
                    h.last.as_str(),
                    h.files,
                    h.maybe_in_archive,
                )
            })
            .collect();
        assert_eq!(
            holes,
            [
                ("mariadb-bin.000004", "mariadb-bin.000004", 1, true),
                ("mariadb-bin.000006", "mariadb-bin.000007", 2, false)
            ]
        );
        assert_eq!(c.reachable, [3]);
        assert_eq!(
            c.without_until,
            PlainRestore::Refused,
            "the index names no missing file, but names 5 after the hole"
        );
    }

    #[test]
    fn a_gone_start_an_unlisted_file_and_an_unreadable_index_reach_nothing_or_less() {
        // The copy's own log was purged: nothing can be replayed.
        let k = known(&[(4, true, true), (5, true, true)]);
        let c = chain("mariadb-bin", 3, &k, true, None);
        assert!(c.reachable.is_empty());
        assert_eq!(c.holes.len(), 1);
        assert_eq!(c.holes[0].first, "mariadb-bin.000003");
        assert_eq!(c.unreachable, 2);
        // Nothing at all is known: the copy's log is the hole.
        let c = chain("mariadb-bin", 3, &BTreeMap::new(), true, None);
        assert_eq!(
            c.ends,
            ChainEnd::Missing {
                file: "mariadb-bin.000003".into()
            }
        );
        // On disk but not in the index: replay would not read it.
        let k = known(&[(3, true, true), (4, false, true), (5, true, true)]);
        let c = chain("mariadb-bin", 3, &k, true, None);
        assert_eq!(c.reachable, [3]);
        assert_eq!(
            c.ends,
            ChainEnd::NotInIndex {
                file: "mariadb-bin.000004".into()
            }
        );
        assert_eq!(c.unlisted, ["mariadb-bin.000004"]);
        assert_eq!(
            c.without_until,
            PlainRestore::Refused,
            "the index goes on to 5"
        );
        // No index: files are listed, nothing is reachable.
        let k = known(&[(3, false, true), (4, false, true)]);
        let c = chain("mariadb-bin", 3, &k, false, None);
        assert!(c.reachable.is_empty());
        assert!(matches!(c.ends, ChainEnd::NoIndex { .. }));
        assert_eq!(c.without_until, PlainRestore::Refused);
        assert!(c.unlisted.is_empty() && c.holes.is_empty());
    }

    #[test]
    fn the_reach_is_the_last_transaction_before_the_break() {
        let k = known(&[
            (3, true, true),
            (4, true, true),
            (5, true, false),
            (6, true, true),
        ]);
        let c = chain("mariadb-bin", 3, &k, true, None);
        let log = |n: u64, transactions: u64, last: Option<&str>, end: u64| LiveLog {
            name: log_name("mariadb-bin", n),
            number: n,
            size: end,
            in_index: true,
            from: FIRST_EVENT,
            events: Events {
                transactions,
                last_gtid: last.map(str::to_string),
                last_time: last.map(|_| "2026-12-07 13:16:37 UTC".to_string()),
                last_transaction_end: last.map(|_| end - 49),
                end_position: Some(end),
                closed: true,
                ..Events::default()
            },
            read_error: None,
        };
        // The newest transaction is in 3: 4 holds none.
        let files = [
            log(3, 2, Some("0-1-9"), 900),
            log(4, 0, None, 393),
            log(6, 5, Some("0-1-20"), 2000),
        ];
        let r = reach(&c, &files, &k);
        assert_eq!(r.files, 2);
        assert_eq!(r.last_file.as_deref(), Some("mariadb-bin.000004"));
        assert_eq!(r.end_position, Some(393));
        assert_eq!(r.transactions, 2);
        let t = r.last_transaction.unwrap();
        assert_eq!(
            (t.gtid.as_deref(), t.file.as_str(), t.end_position),
            (Some("0-1-9"), "mariadb-bin.000003", Some(851))
        );
        assert_eq!(r.unreachable_files, 1);
        assert_eq!(r.until.as_deref(), Some("mariadb-bin.000004:393"));
    }
}
