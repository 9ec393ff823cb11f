//! The incremental check of a PostgreSQL copy, between full verifications: only the
//! relation blocks that changed since the base copy are read, in the started sandbox,
//! through PostgreSQL's buffer manager, which checks each page's header and (with data
//! checksums) its checksum as it reads it. Table blocks are read by amcheck's
//! `verify_heapam` over exactly those block ranges, which also checks every tuple on
//! them; index, free-space-map and visibility-map blocks by `pg_prewarm` (read into
//! shared buffers). `pg_amcheck` over everything (btree order, indexes against their
//! tables) and `pg_checksums` over every page wait for the next full verification.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use postgres::{Client, NoTls};
use shadowcopy_core::model::{Changes, CopyView};
use shadowcopy_core::BoxError;

use crate::cluster::ClusterLayout;

/// The tablespace of shared catalogs (`global/`).
const GLOBAL_TABLESPACE: u32 = 1664;

/// The changed bytes of one relation file (a segment of one fork).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangedSegment {
    /// `reltablespace` as `pg_filenode_relation` takes it: 0 for a database's default.
    pub tablespace: u32,
    /// The database (0 for shared catalogs).
    pub database: u32,
    pub filenode: u32,
    /// `main`, `fsm`, `vm` or `init`.
    pub fork: &'static str,
    /// Which 1 GiB (by default) segment of the fork: `.1` is 1.
    pub segment: u64,
    /// The changed byte ranges within the segment file.
    pub ranges: Vec<Range<u64>>,
}

/// The relation files of the copy that changed since the base copy, with their changed
/// ranges (a file the base did not have changed entirely). Other files (the WAL, the
/// commit log, configuration) are left to the hashes.
pub(crate) fn changed_segments(
    layout: &ClusterLayout,
    copy: &CopyView,
    changes: &Changes,
) -> Vec<ChangedSegment> {
    let mut out = Vec::new();
    for (original, copied) in &copy.files {
        let Some((tablespace, database, name)) = relation_file(layout, original) else {
            continue;
        };
        let Some((filenode, fork, segment)) = parse_relation_file_name(name) else {
            continue;
        };
        let ranges = match changes.of(original) {
            Some(ranges) => ranges.to_vec(),
            None => match std::fs::symlink_metadata(copied) {
                Ok(m) => std::iter::once(0..m.len()).collect(),
                Err(_) => continue,
            },
        };
        if ranges.iter().all(|r| r.is_empty()) {
            continue;
        }
        out.push(ChangedSegment {
            tablespace,
            database,
            filenode,
            fork,
            segment,
            ranges,
        });
    }
    out
}

/// Where a file of the cluster is: (tablespace for `pg_filenode_relation`, database,
/// file name) for a relation file, `None` for anything else.
fn relation_file<'p>(layout: &ClusterLayout, path: &'p Path) -> Option<(u32, u32, &'p str)> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent()?;
    if let Ok(rel) = dir.strip_prefix(&layout.data_dir) {
        if rel == Path::new("global") {
            return Some((GLOBAL_TABLESPACE, 0, name));
        }
        let mut parts = rel.iter();
        if parts.next()? == "base" {
            let database = parts.next()?.to_str()?.parse().ok()?;
            return parts.next().is_none().then_some((0, database, name));
        }
        return None;
    }
    for ts in &layout.tablespaces {
        if let Ok(rel) = dir.strip_prefix(&ts.location) {
            // PG_<version>_<catversion>/<database>/
            let mut parts = rel.iter();
            parts.next()?;
            let database = parts.next()?.to_str()?.parse().ok()?;
            return parts.next().is_none().then_some((ts.oid, database, name));
        }
    }
    None
}

/// `16384`, `16384_fsm`, `16384.2`, `16384_vm.1` → (filenode, fork, segment).
fn parse_relation_file_name(name: &str) -> Option<(u32, &'static str, u64)> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse().ok()?),
        None => (name, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, "fsm")) => (node, "fsm"),
        Some((node, "vm")) => (node, "vm"),
        Some((node, "init")) => (node, "init"),
        Some(_) => return None,
        None => (stem, "main"),
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((node.parse().ok()?, fork, segment))
}

/// What the block check found.
#[derive(Debug, Default)]
pub(crate) struct BlockCheck {
    pub blocks: u64,
    pub relations: u64,
    /// Changed files whose relation the sandbox no longer has (dropped since, say).
    pub unknown: u64,
    pub problems: Vec<String>,
}

/// Reads and checks the changed blocks of `segments` in the sandbox listening on
/// `socket` (a directory) and `port`, connecting as `user`.
pub(crate) fn check(
    segments: &[ChangedSegment],
    socket: &Path,
    port: u16,
    user: &str,
) -> Result<BlockCheck, BoxError> {
    let connect = |database: &str| {
        postgres::Config::new()
            .host_path(socket)
            .port(port)
            .user(user)
            .dbname(database)
            .application_name("shadowcopy verify")
            .connect(NoTls)
            .map_err(|e| format!("cannot connect to the sandbox's database {database:?}: {e}"))
    };
    let mut first = connect("postgres")?;
    let block_size: u64 = setting(&mut first, "block_size")?;
    // In blocks (its unit is the block size).
    let segment_blocks: u64 = setting(&mut first, "segment_size")?;
    let names: BTreeMap<u32, String> = first
        .query(
            "SELECT oid, datname FROM pg_database WHERE datallowconn",
            &[],
        )?
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
        .collect();
    let mut by_database: BTreeMap<u32, Vec<&ChangedSegment>> = BTreeMap::new();
    for s in segments {
        by_database.entry(s.database).or_default().push(s);
    }
    let mut found = BlockCheck::default();
    for (database, segments) in by_database {
        // Shared catalogs are read from any database.
        let name = match database {
            0 => "postgres".to_string(),
            oid => match names.get(&oid) {
                Some(name) => name.clone(),
                None => {
                    found.unknown += segments.len() as u64;
                    continue;
                }
            },
        };
        let mut client = connect(&name)?;
        client.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS amcheck; CREATE EXTENSION IF NOT EXISTS pg_prewarm;",
        )?;
        for s in segments {
            let first_block = s.segment * segment_blocks;
            let blocks: Vec<(i64, i64)> = s
                .ranges
                .iter()
                .filter(|r| !r.is_empty())
                .map(|r| {
                    (
                        (first_block + r.start / block_size) as i64,
                        (first_block + (r.end - 1) / block_size) as i64,
                    )
                })
                .collect();
            check_segment(&mut client, &name, s, &blocks, &mut found)?;
        }
    }
    Ok(found)
}

/// One server setting as a number, in its own unit (`pg_settings.setting`).
fn setting(client: &mut Client, name: &str) -> Result<u64, BoxError> {
    let row = client.query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])?;
    let text: String = row.get(0);
    text.parse()
        .map_err(|_| format!("the sandbox's {name} is {text:?}, not a number").into())
}

/// Reads `blocks` (inclusive ranges) of one relation file through the buffer manager,
/// with `verify_heapam` for a table's main fork. What PostgreSQL reports as damaged data
/// (SQLSTATE class XX: a page that fails its checksum or header check) is a finding;
/// any other error means the check could not run.
fn check_segment(
    client: &mut Client,
    database: &str,
    s: &ChangedSegment,
    blocks: &[(i64, i64)],
    found: &mut BlockCheck,
) -> Result<(), BoxError> {
    let relation = client.query_opt(
        "SELECT c.oid::regclass::text, c.relkind::text,
                pg_relation_size(c.oid, $3) / current_setting('block_size')::int8
         FROM pg_class c WHERE c.oid = pg_filenode_relation($1, $2)",
        &[&s.tablespace, &s.filenode, &s.fork],
    );
    let (name, kind, size): (String, String, i64) = match relation {
        Ok(Some(row)) => (row.get(0), row.get(1), row.get(2)),
        Ok(None) => {
            found.unknown += 1;
            return Ok(());
        }
        Err(e) => {
            return Err(format!(
                "database {database}, file node {} ({} fork): cannot find its relation: {e}",
                s.filenode, s.fork
            )
            .into())
        }
    };
    // Blocks past the relation's end as the sandbox has it (recovery truncated it).
    let (starts, ends): (Vec<i64>, Vec<i64>) = blocks
        .iter()
        .filter(|(a, _)| *a < size)
        .map(|&(a, b)| (a, b.min(size - 1)))
        .unzip();
    if starts.is_empty() {
        return Ok(());
    }
    found.relations += 1;
    found.blocks += starts
        .iter()
        .zip(&ends)
        .map(|(a, b)| (b - a + 1) as u64)
        .sum::<u64>();
    let heap = s.fork == "main" && matches!(kind.as_str(), "r" | "m" | "t");
    let checked = if heap {
        client
            .query(
                "SELECT v.blkno, v.offnum, v.attnum, v.msg
                 FROM unnest($2::int8[], $3::int8[]) AS b(s, e),
                      LATERAL verify_heapam($1::text::regclass, false, false, 'none', b.s, b.e) v",
                &[&name, &starts, &ends],
            )
            .map(|rows| {
                for r in rows {
                    let (block, offset, attribute, msg): (i64, Option<i32>, Option<i32>, String) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    found.problems.push(format!(
                        "database {database}, table {name}, block {block}, tuple {}, column {}: {msg}",
                        offset.map_or("-".into(), |o| o.to_string()),
                        attribute.map_or("-".into(), |a| a.to_string())
                    ));
                }
            })
    } else {
        client
            .query(
                "SELECT sum(pg_prewarm($1::text::regclass, 'buffer', $4, b.s, b.e))
                 FROM unnest($2::int8[], $3::int8[]) AS b(s, e)",
                &[&name, &starts, &ends, &s.fork],
            )
            .map(drop)
    };
    match checked {
        Ok(()) => Ok(()),
        Err(e) => match e.as_db_error() {
            Some(d) if d.code().code().starts_with("XX") => {
                found.problems.push(format!(
                    "database {database}, {name} ({} fork): {}",
                    s.fork,
                    d.message()
                ));
                Ok(())
            }
            _ => Err(format!("database {database}, {name} ({} fork): {e}", s.fork).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names_give_their_node_fork_and_segment() {
        assert_eq!(parse_relation_file_name("16384"), Some((16384, "main", 0)));
        assert_eq!(
            parse_relation_file_name("16384.3"),
            Some((16384, "main", 3))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm"),
            Some((16384, "fsm", 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_vm.1"),
            Some((16384, "vm", 1))
        );
        assert_eq!(parse_relation_file_name("pg_filenode.map"), None);
        assert_eq!(parse_relation_file_name("PG_VERSION"), None);
        assert_eq!(parse_relation_file_name("16384_xyz"), None);
        assert_eq!(parse_relation_file_name("t3_16384"), None);
    }
}
