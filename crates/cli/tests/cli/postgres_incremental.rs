//! Incremental verification of PostgreSQL copies: between full verifications the
//! sandbox reads only the relation blocks that changed since the base copy (checksums
//! checked as they are read, tables' tuples by verify_heapam), and still finds a
//! damaged page among them.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};
use shadowcopy_testing::postgres::{PgCluster, PgOptions};

use crate::postgres::archiving_cluster_with;
use crate::support::{describe, Cli};
const BLOCK: usize = 8192;

/// The server stops before its file system is unmounted (fields drop in order).
struct OnXfs {
    cluster: PgCluster,
    archive: PathBuf,
    _fs: LoopFs,
}

fn cluster_on_xfs(test: &str, cli: &Cli) -> Option<OnXfs> {
    let fs = loopfs_or_skip(test, FsKind::Xfs, 1 << 30)?;
    let options = PgOptions::new().data_dir(fs.path().join("pgdata"));
    let (cluster, archive) = archiving_cluster_with(test, cli, options)?;
    Some(OnXfs {
        cluster,
        archive,
        _fs: fs,
    })
}

fn create(cli: &Cli, pg: &OnXfs, extra: &[&str]) -> Value {
    let url = pg.cluster.url();
    let mut args = vec![
        "create",
        "--postgres",
        &url,
        "--pg-archive",
        pg.archive.to_str().unwrap(),
        "--provider",
        "reflink",
        "--json",
    ];
    args.extend_from_slice(extra);
    cli.json(&args)
}

/// The copy of `original` in copy `id` (the reflink provider's layout).
fn in_copy(cli: &Cli, id: i64, original: &Path) -> PathBuf {
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    Path::new(show["location"].as_str().unwrap())
        .join("files")
        .join(original.strip_prefix("/").unwrap())
}

#[test]
fn a_postgres_copy_is_verified_by_the_blocks_that_changed_and_a_damaged_one_is_found() {
    let test = "a_postgres_copy_is_verified_by_the_blocks_that_changed_and_a_damaged_one_is_found";
    let cli = Cli::new();
    let Some(pg) = cluster_on_xfs(test, &cli) else {
        return;
    };
    pg.cluster.psql(
        "CREATE TABLE t AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 200000) g;
         CREATE INDEX t_id ON t (id);",
    );
    // Hint bits set now, not by the first reader after the copy (which would rewrite
    // every page of the table).
    pg.cluster.psql("VACUUM FREEZE t");
    pg.cluster.psql("CHECKPOINT");
    let first = create(&cli, &pg, &[]);
    assert_eq!(first["verification"]["ok"], true, "{first}");
    assert!(first["verification"].get("base").is_none(), "{first}");
    let first_id = first["id"].as_i64().unwrap();

    // Changed rows in about one block of 16 (and their index entries).
    pg.cluster
        .psql("UPDATE t SET pad = repeat('y', 100) WHERE id % 1000 = 0; CHECKPOINT;");
    let second = create(&cli, &pg, &[]);
    let v = &second["verification"];
    assert_eq!(v["ok"], true, "{second}");
    assert_eq!(v["base"], first_id, "{second}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("changed blocks of"), "{second}");
    assert!(detail.contains("each page's checksum checked"), "{second}");
    assert!(
        !detail.contains("pg_amcheck (heap"),
        "no full pg_amcheck: {second}"
    );
    // About 200 of the table's 3,600 blocks, plus the catalogs' few.
    let blocks: u64 = detail
        .split(" changed blocks of")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of changed blocks: {second}"));
    assert!((100..1000).contains(&blocks), "{blocks} blocks: {second}");
    let (read, bytes) = (
        v["bytes_read"].as_u64().unwrap(),
        v["bytes"].as_u64().unwrap(),
    );
    assert!(read < bytes, "read {read} of {bytes}: {second}");
    let second_id = second["id"].as_i64().unwrap();

    // A third copy, not verified yet, with a byte of a changed table block damaged.
    pg.cluster
        .psql("UPDATE t SET pad = repeat('z', 100) WHERE id % 997 = 0; CHECKPOINT;");
    let third = create(&cli, &pg, &["--no-verify"]);
    let third_id = third["id"].as_i64().unwrap();
    let relative = pg.cluster.psql("SELECT pg_relation_filepath('t')");
    let table = pg.cluster.data_dir().join(relative.trim());
    let old = std::fs::read(in_copy(&cli, second_id, &table)).unwrap();
    let copied = in_copy(&cli, third_id, &table);
    let new = std::fs::read(&copied).unwrap();
    let block = (0..new.len() / BLOCK)
        .find(|&b| old[b * BLOCK..(b + 1) * BLOCK] != new[b * BLOCK..(b + 1) * BLOCK])
        .expect("a changed block");
    let at = (block * BLOCK + BLOCK - 100) as u64;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copied)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
    drop(file);

    let out = cli.run(&["verify", &third_id.to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let show = cli.json(&["show", &third_id.to_string(), "--json"]);
    let last = show["verifications"].as_array().unwrap().last().unwrap();
    assert_eq!(last["base"], second_id, "{last}");
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("invalid page in block {block}")),
        "{last}"
    );
    // A full verification finds it too (pg_checksums over every page).
    let out = cli.run(&["verify", &third_id.to_string(), "--full", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
}
