//! Which pages of a copied SQLite database changed since a base copy: those in the
//! database file's changed byte ranges, every page its WAL holds (the WAL is new in
//! every copy), and page 1 (its header changes with every write).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A WAL's header, then per frame a header of this size before its page.
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// The pages (1-based) of a database of `page_size` bytes per page whose bytes lie in
/// `ranges` of its file, plus those the WAL at `wal` holds frames for.
pub fn changed_pages(
    ranges: &[Range<u64>],
    page_size: u32,
    wal: Option<&Path>,
) -> io::Result<BTreeSet<u32>> {
    let size = u64::from(page_size.max(512));
    let mut pages = BTreeSet::from([1]);
    for r in ranges.iter().filter(|r| r.start < r.end) {
        let first = r.start / size + 1;
        let last = (r.end - 1) / size + 1;
        pages.extend((first..=last).filter_map(|p| u32::try_from(p).ok()));
    }
    if let Some(wal) = wal {
        pages.extend(wal_pages(wal)?);
    }
    Ok(pages)
}

/// The page numbers of every frame in the WAL at `path`, valid or not (checking a page
/// too many costs little; missing one would skip a change).
fn wal_pages(path: &Path) -> io::Result<BTreeSet<u32>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut pages = BTreeSet::new();
    if len < WAL_HEADER {
        return Ok(pages);
    }
    let mut header = [0u8; WAL_HEADER as usize];
    file.read_exact_at(&mut header, 0)?;
    let page_size = u64::from(u32::from_be_bytes([
        header[8], header[9], header[10], header[11],
    ]));
    if !(512..=65536).contains(&page_size) {
        return Ok(pages);
    }
    let mut frame = [0u8; FRAME_HEADER as usize];
    let mut at = WAL_HEADER;
    while at + FRAME_HEADER + page_size <= len {
        file.read_exact_at(&mut frame, at)?;
        let page = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if page > 0 {
            pages.insert(page);
        }
        at += FRAME_HEADER + page_size;
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn ranges_become_the_pages_they_touch_and_page_one_is_always_in() {
        let pages = changed_pages(&[4096..4097, 10_000..12_289], 4096, None).unwrap();
        assert_eq!(pages.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(changed_pages(&[], 4096, None).unwrap().len(), 1);
    }

    #[test]
    fn every_page_the_wal_holds_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);",
        )
        .unwrap();
        for _ in 0..50 {
            conn.execute("INSERT INTO t VALUES (zeroblob(1000))", [])
                .unwrap();
        }
        let pages = wal_pages(&dir.path().join("db-wal")).unwrap();
        let count: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            pages.len() as u32,
            count,
            "every page was written through the WAL"
        );
        assert!(pages.iter().all(|p| (1..=count).contains(p)));
        // Through `changed_pages` too, with no changed range in the file.
        let wal = dir.path().join("db-wal");
        assert_eq!(changed_pages(&[], 4096, Some(&wal)).unwrap(), pages);
    }
}
