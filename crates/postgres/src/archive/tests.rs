//! Tests of the WAL archive: push/get, the record, chains over timelines, expiry.

use std::collections::BTreeMap;

use super::*;
use crate::wal::{SegmentName, WalSegSize};

const MIB: usize = 1024 * 1024;
const S16: WalSegSize = WalSegSize::DEFAULT;

/// Deterministic content: runs of random bytes and of text-like repetition, like WAL.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(b"INSERT INTO t VALUES (42, 'shadowcopy'); ");
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn setup() -> (tempfile::TempDir, WalArchive) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = WalArchive::create(tmp.path().join("archive")).unwrap();
    (tmp, archive)
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

/// Every file in the archive directory with its content.
fn snapshot(archive: &WalArchive) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(archive.dir())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn seg(tli: u32, segno: u64) -> SegmentName {
    SegmentName {
        timeline: tli,
        segno,
    }
}

fn push_seg(tmp: &Path, archive: &WalArchive, tli: u32, segno: u64) {
    let name = seg(tli, segno).file_name(S16);
    let src = write(tmp, &name, &content(4096, segno * 31 + u64::from(tli)));
    assert!(matches!(
        archive.push(&src, &name).unwrap(),
        Pushed::Stored { .. }
    ));
}

fn push_text(tmp: &Path, archive: &WalArchive, name: &str, text: &str) {
    let src = write(tmp, name, text.as_bytes());
    archive.push(&src, name).unwrap();
}

#[test]
fn create_is_idempotent_and_open_checks_the_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    WalArchive::create(&dir).unwrap();
    WalArchive::create(&dir).unwrap();
    WalArchive::open(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let err = WalArchive::open(tmp.path()).unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive { .. }), "{err}");
    assert!(err.to_string().contains(MARKER_FILE), "{err}");
    let err = WalArchive::open(tmp.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    fs::write(dir.join(MARKER_FILE), r#"{"format":7}"#).unwrap();
    assert!(matches!(
        WalArchive::open(&dir),
        Err(ArchiveError::UnsupportedFormat { found: 7, .. })
    ));
}

#[test]
fn push_then_get_roundtrip_16mib() {
    let (tmp, archive) = setup();
    let data = content(16 * MIB, 7);
    let name = "000000010000000000000003";
    let src = write(tmp.path(), "src", &data);
    let pushed = archive.push(&src, name).unwrap();
    let Pushed::Stored {
        bytes_in,
        bytes_stored,
    } = pushed
    else {
        panic!("{pushed:?}")
    };
    assert_eq!(bytes_in, data.len() as u64);
    assert!(bytes_stored < bytes_in, "{bytes_stored} not compressed");
    assert_eq!(
        fs::metadata(archive.stored_path(name)).unwrap().len(),
        bytes_stored
    );

    let pg_wal = tmp.path().join("pg_wal");
    fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    fs::write(&dest, b"stale").unwrap();
    assert_eq!(
        archive.get(name, &dest).unwrap(),
        Got::Restored {
            bytes: data.len() as u64
        }
    );
    assert!(fs::read(&dest).unwrap() == data, "restored content differs");
    // nothing but the destination is left in pg_wal
    assert_eq!(fs::read_dir(&pg_wal).unwrap().count(), 1);
    assert!(archive.verify(name).unwrap());

    let listed = archive.list().unwrap();
    assert_eq!(
        listed,
        vec![ArchivedFile {
            name: name.into(),
            kind: WalFileKind::Segment,
            stored_bytes: bytes_stored
        }]
    );
}

#[test]
fn stored_file_is_plain_zstd() {
    let (tmp, archive) = setup();
    let data = content(100_000, 3);
    let src = write(tmp.path(), "src", &data);
    archive.push(&src, "00000001.history").unwrap();
    let stored = fs::read(archive.stored_path("00000001.history")).unwrap();
    // the standard decoder skips the skippable frame holding the record
    assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), data);
}

#[test]
fn repush_identical_is_idempotent() {
    let (tmp, archive) = setup();
    let name = "000000010000000000000004";
    let src = write(tmp.path(), "src", &content(MIB, 1));
    archive.push(&src, name).unwrap();
    let before = snapshot(&archive);
    assert_eq!(archive.push(&src, name).unwrap(), Pushed::AlreadyArchived);
    assert_eq!(snapshot(&archive), before);
}

#[test]
fn conflicting_content_is_refused_and_changes_nothing() {
    let (tmp, archive) = setup();
    let name = "000000010000000000000004";
    let a = write(tmp.path(), "a", &content(MIB, 1));
    let b = write(tmp.path(), "b", &content(MIB, 2));
    archive.push(&a, name).unwrap();
    let before = snapshot(&archive);
    let err = archive.push(&b, name).unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains("different content"), "{msg}");
    assert!(msg.contains("own --archive directory"), "{msg}");
    assert_eq!(snapshot(&archive), before, "the archive changed");
    let dest = tmp.path().join("out");
    archive.get(name, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), content(MIB, 1));
}

#[test]
fn get_missing_is_not_found_and_leaves_dest_alone() {
    let (tmp, archive) = setup();
    let dest = tmp.path().join("RECOVERYHISTORY");
    assert_eq!(
        archive.get("00000002.history", &dest).unwrap(),
        Got::NotFound
    );
    assert!(!dest.exists());
    assert!(!archive.verify("000000010000000000000009").unwrap());
}

#[test]
fn invalid_names_are_refused() {
    let (tmp, archive) = setup();
    let src = write(tmp.path(), "src", b"x");
    for bad in ["../000000010000000000000003", "RECOVERYXLOG", "", "a.zst"] {
        assert!(matches!(
            archive.push(&src, bad),
            Err(ArchiveError::InvalidName { .. })
        ));
        assert!(matches!(
            archive.get(bad, &tmp.path().join("d")),
            Err(ArchiveError::InvalidName { .. })
        ));
    }
}

#[test]
fn missing_source_names_it() {
    let (tmp, archive) = setup();
    let err = archive
        .push(&tmp.path().join("pg_wal/nope"), "000000010000000000000003")
        .unwrap_err();
    assert!(matches!(err, ArchiveError::ReadSource { .. }));
    assert!(err.to_string().contains("pg_wal/nope"), "{err}");
    assert!(archive.list().unwrap().is_empty());
}

#[test]
fn corrupt_stored_file_is_detected_on_get() {
    let (tmp, archive) = setup();
    let name = "000000010000000000000005";
    let src = write(tmp.path(), "src", &content(2 * MIB, 5));
    archive.push(&src, name).unwrap();
    let stored = archive.stored_path(name);
    let good = fs::read(&stored).unwrap();
    let dest = tmp.path().join("dest");

    // a flipped byte in the compressed body
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&stored, &bad).unwrap();
    let err = archive.get(name, &dest).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&stored.display().to_string()),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::VerifyFailed);
    assert!(!dest.exists(), "a damaged file reached the destination");
    assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("shadowcopy-")));

    // a truncated file
    fs::write(&stored, &good[..good.len() - 100]).unwrap();
    assert!(matches!(
        archive.get(name, &dest),
        Err(ArchiveError::Corrupt { .. })
    ));
    // a damaged record (the stored length)
    let mut bad = good.clone();
    bad[8 + 8] ^= 1;
    fs::write(&stored, &bad).unwrap();
    assert!(matches!(
        archive.get(name, &dest),
        Err(ArchiveError::Corrupt { .. })
    ));
    // an intact file under another name
    fs::write(&stored, &good).unwrap();
    fs::copy(&stored, archive.stored_path("000000010000000000000006")).unwrap();
    let err = archive.get("000000010000000000000006", &dest).unwrap_err();
    assert!(
        err.to_string().contains("not 000000010000000000000006"),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(archive.verify(name).unwrap());
}

#[test]
fn content_not_matching_its_record_is_detected() {
    // intact zstd (its own checksum passes) but not what the record describes
    let (tmp, archive) = setup();
    let (x, y) = ("000000010000000000000007", "000000010000000000000008");
    archive
        .push(&write(tmp.path(), "x", &content(MIB, 7)), x)
        .unwrap();
    archive
        .push(&write(tmp.path(), "y", &content(MIB, 8)), y)
        .unwrap();
    let stored_x = fs::read(archive.stored_path(x)).unwrap();
    let stored_y = fs::read(archive.stored_path(y)).unwrap();
    let header = 8 + RECORD_FIXED + x.len();
    let mut forged = stored_x[..header].to_vec();
    forged.extend_from_slice(&stored_y[header..]);
    fs::write(archive.stored_path(x), forged).unwrap();
    let dest = tmp.path().join("dest");
    let err = archive.get(x, &dest).unwrap_err();
    assert!(err.to_string().contains("BLAKE3"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn repush_repairs_a_damaged_copy_of_the_same_content() {
    let (tmp, archive) = setup();
    let name = "000000010000000000000005";
    let data = content(MIB, 5);
    let src = write(tmp.path(), "src", &data);
    archive.push(&src, name).unwrap();
    let stored = archive.stored_path(name);
    let mut bad = fs::read(&stored).unwrap();
    let last = bad.len() - 10;
    bad[last] ^= 0xFF;
    fs::write(&stored, &bad).unwrap();
    assert!(archive.verify(name).is_err());
    // different content against a damaged file: refused, file untouched
    let other = write(tmp.path(), "other", &content(MIB, 6));
    assert!(matches!(
        archive.push(&other, name),
        Err(ArchiveError::Corrupt { .. })
    ));
    assert_eq!(fs::read(&stored).unwrap(), bad);
    // the same content: replaced
    assert!(matches!(
        archive.push(&src, name).unwrap(),
        Pushed::Stored { .. }
    ));
    assert!(archive.verify(name).unwrap());
}

#[test]
fn temp_leftovers_are_ignored_and_cleaned() {
    let (tmp, archive) = setup();
    let stale = archive.dir().join(format!("{TMP_PREFIX}crashed"));
    let fresh = archive.dir().join(format!("{TMP_PREFIX}running"));
    let locked = archive.dir().join(format!("{TMP_PREFIX}locked"));
    let old = SystemTime::now() - Duration::from_secs(3600);
    for p in [&stale, &fresh, &locked] {
        fs::write(p, b"half a segment").unwrap();
    }
    for p in [&stale, &locked] {
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // a live push holds the lock on its temp file
    let holder = File::open(&locked).unwrap();
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // a foreign file that merely looks like a segment without .zst
    fs::write(archive.dir().join("000000010000000000000001"), b"x").unwrap();

    assert!(archive.list().unwrap().is_empty(), "a leftover was listed");
    assert_eq!(
        archive
            .get("000000010000000000000001", &tmp.path().join("d"))
            .unwrap(),
        Got::NotFound
    );
    push_seg(tmp.path(), &archive, 1, 1);
    assert!(
        !stale.exists(),
        "the crashed push's temp file is still there"
    );
    assert!(fresh.exists(), "a recent temp file was removed");
    assert!(locked.exists(), "a locked temp file was removed");
    drop(holder);
    assert_eq!(archive.clean_leftovers().unwrap(), 1);
    assert!(!locked.exists());
    assert_eq!(archive.list().unwrap().len(), 1);
}

#[test]
fn expire_keeps_history_and_everything_from_the_boundary() {
    let (tmp, archive) = setup();
    for segno in 1..=6 {
        push_seg(tmp.path(), &archive, 1, segno);
    }
    // timeline 2 branched in segment 4; old timeline's segment 4 became .partial
    for segno in 4..=7 {
        push_seg(tmp.path(), &archive, 2, segno);
    }
    let p = tmp.path();
    push_text(p, &archive, "000000010000000000000004.partial", "partial");
    push_text(
        p,
        &archive,
        "00000002.history",
        "1\t0/4000100\tno recovery target specified\n",
    );
    push_text(
        p,
        &archive,
        "000000010000000000000002.00000028.backup",
        "START WAL LOCATION",
    );
    push_text(
        p,
        &archive,
        "000000020000000000000005.00000060.backup",
        "START WAL LOCATION",
    );
    let all = archive.list().unwrap();

    let boundary = seg(2, 5);
    let dry = archive.expire_before(&boundary, S16, true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(archive.list().unwrap(), all, "dry run removed something");

    let expired = archive.expire_before(&boundary, S16, false).unwrap();
    assert_eq!(expired.removed, dry.removed);
    assert_eq!(expired.bytes, dry.bytes);
    assert_eq!(
        expired.removed,
        vec![
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000004.partial",
            "000000020000000000000004",
        ]
    );
    let removed_bytes: u64 = all
        .iter()
        .filter(|f| expired.removed.contains(&f.name))
        .map(|f| f.stored_bytes)
        .sum();
    assert_eq!(expired.bytes, removed_bytes);
    let left: Vec<String> = archive
        .list()
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        left,
        vec![
            "000000010000000000000005",
            "000000010000000000000006",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000005.00000060.backup",
            "000000020000000000000006",
            "000000020000000000000007",
        ]
    );
    // nothing more to do at the same boundary
    assert!(archive
        .expire_before(&boundary, S16, false)
        .unwrap()
        .removed
        .is_empty());
}

#[test]
fn chain_on_one_timeline_finds_run_and_gaps() {
    let (tmp, archive) = setup();
    for segno in [3, 4, 5, 8, 9, 12] {
        push_seg(tmp.path(), &archive, 1, segno);
    }
    push_seg(tmp.path(), &archive, 3, 6); // an unrelated timeline
    let chain = archive.chain_from(&seg(1, 3), S16).unwrap();
    assert_eq!(chain.timeline, 1);
    assert_eq!(chain.contiguous, vec![seg(1, 3), seg(1, 4), seg(1, 5)]);
    assert_eq!(chain.first_missing, seg(1, 6));
    assert_eq!(
        chain.gaps,
        vec![
            Gap {
                first: seg(1, 6),
                last: seg(1, 7)
            },
            Gap {
                first: seg(1, 10),
                last: seg(1, 11)
            }
        ]
    );
    assert_eq!(chain.last_present, Some(seg(1, 12)));

    // starting on a missing segment: nothing replayable
    let chain = archive.chain_from(&seg(1, 2), S16).unwrap();
    assert!(chain.contiguous.is_empty());
    assert_eq!(chain.first_missing, seg(1, 2));
    assert_eq!(
        chain.gaps[0],
        Gap {
            first: seg(1, 2),
            last: seg(1, 2)
        }
    );

    // a complete run ends without gaps
    let chain = archive.chain_from(&seg(1, 12), S16).unwrap();
    assert_eq!(chain.contiguous, vec![seg(1, 12)]);
    assert_eq!(chain.first_missing, seg(1, 13));
    assert!(chain.gaps.is_empty());
}

#[test]
fn chain_follows_timeline_switches() {
    let (tmp, archive) = setup();
    for segno in 1..=5 {
        push_seg(tmp.path(), &archive, 1, segno); // 4 and 5: old primary kept going
    }
    for segno in 4..=6 {
        push_seg(tmp.path(), &archive, 2, segno);
    }
    for segno in [6, 7, 9] {
        push_seg(tmp.path(), &archive, 3, segno);
    }
    let p = tmp.path();
    push_text(
        p,
        &archive,
        "00000002.history",
        "1\t0/4000100\tno recovery target specified\n",
    );
    push_text(
        p,
        &archive,
        "00000003.history",
        "1\t0/4000100\tno recovery target specified\n\n2\t0/6000000\tat restore point\n",
    );
    // a sibling of timeline 2 that branched from timeline 1 before our start
    push_text(
        p,
        &archive,
        "00000004.history",
        "1\t0/1000000\tno recovery target specified\n",
    );
    push_seg(tmp.path(), &archive, 4, 2);

    let chain = archive.chain_from(&seg(1, 2), S16).unwrap();
    assert_eq!(chain.timeline, 3);
    assert_eq!(
        chain.contiguous,
        vec![
            seg(1, 2),
            seg(1, 3),
            seg(2, 4),
            seg(2, 5),
            seg(3, 6),
            seg(3, 7)
        ]
    );
    assert_eq!(chain.first_missing, seg(3, 8));
    assert_eq!(
        chain.gaps,
        vec![Gap {
            first: seg(3, 8),
            last: seg(3, 8)
        }]
    );
    assert_eq!(chain.last_present, Some(seg(3, 9)));

    // after the switch point of timeline 1 the chain cannot follow timeline 2
    let chain = archive.chain_from(&seg(1, 5), S16).unwrap();
    assert_eq!(chain.timeline, 1);
    assert_eq!(chain.contiguous, vec![seg(1, 5)]);

    // a damaged history file is reported, not silently ignored
    let h = archive.stored_path("00000003.history");
    let mut bytes = fs::read(&h).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xFF;
    fs::write(&h, bytes).unwrap();
    assert!(matches!(
        archive.chain_from(&seg(1, 2), S16),
        Err(ArchiveError::Corrupt { .. })
    ));
}

#[test]
fn chain_uses_the_start_timelines_own_history() {
    let (tmp, archive) = setup();
    push_seg(tmp.path(), &archive, 1, 3);
    push_seg(tmp.path(), &archive, 2, 4);
    push_seg(tmp.path(), &archive, 2, 5);
    push_text(
        tmp.path(),
        &archive,
        "00000002.history",
        "1\t0/4000000\tpromoted\n",
    );
    // starting on timeline 2 before it began: its history says timeline 1 owns segment 3
    let chain = archive.chain_from(&seg(2, 3), S16).unwrap();
    assert_eq!(chain.timeline, 2);
    assert_eq!(chain.contiguous, vec![seg(1, 3), seg(2, 4), seg(2, 5)]);
    assert_eq!(chain.first_missing, seg(2, 6));
}
