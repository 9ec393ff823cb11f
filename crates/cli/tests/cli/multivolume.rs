//! A set spanning two file systems (XFS and btrfs): one point in time for both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};
use shadowcopy_testing::wait;

use crate::support::{stderr, Cli};

const RECORD: usize = 32;

/// Record `seq`: the sequence number, filler, and a checksum of both.
fn record(seq: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r[8..24].fill(seq as u8);
    let sum = blake3::hash(&r[..24]);
    r[24..].copy_from_slice(&sum.as_bytes()[..8]);
    r
}

/// Record `seq` goes to log `seq % 2`; each is fsynced before the next is written, so at
/// any instant the records on disk are exactly 1..=N of the global sequence.
struct Alternating {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Alternating {
    fn start(logs: [PathBuf; 2]) -> Alternating {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut files = logs.map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap()
            });
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let f = &mut files[(seq % 2) as usize];
                f.write_all(&record(seq)).unwrap();
                f.sync_data().unwrap();
                a.store(seq, Ordering::SeqCst);
            }
        });
        Alternating {
            stop,
            acked,
            thread: Some(thread),
        }
    }
}

impl Drop for Alternating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sequence numbers in one copied log, checking every record.
fn seqs(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    assert_eq!(data.len() % RECORD, 0, "{}: torn record", path.display());
    data.chunks(RECORD)
        .map(|c| {
            let seq = u64::from_le_bytes(c[..8].try_into().unwrap());
            assert_eq!(c, record(seq), "{}: damaged record {seq}", path.display());
            seq
        })
        .collect()
}

struct Volumes {
    _xfs: LoopFs,
    _btrfs: LoopFs,
    a: PathBuf,
    b: PathBuf,
}

fn volumes(test: &str) -> Option<Volumes> {
    let xfs = loopfs_or_skip(test, FsKind::Xfs, 1 << 30)?;
    let btrfs = loopfs_or_skip(test, FsKind::Btrfs, 512 << 20)?;
    let a = xfs.path().join("data");
    std::fs::create_dir(&a).unwrap();
    let b = btrfs.path().join("app");
    let ok = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&b)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    Some(Volumes {
        _xfs: xfs,
        _btrfs: btrfs,
        a,
        b,
    })
}

#[test]
fn fsfreeze_gives_one_cut_across_xfs_and_btrfs() {
    let Some(v) = volumes("fsfreeze_gives_one_cut_across_xfs_and_btrfs") else {
        return;
    };
    let cli = Cli::new();
    // The first volume's commit takes a while: without one freeze for both, the second
    // volume would be copied records later than the first.
    std::fs::write(v.a.join("bulk"), vec![5u8; 128 << 20]).unwrap();
    let logs = [v.a.join("log"), v.b.join("log")];
    let writer = Alternating::start(logs.clone());
    wait::until(
        Duration::from_secs(30),
        || writer.acked.load(Ordering::SeqCst) >= 10,
        || {
            format!(
                "the writer acknowledged only {} records",
                writer.acked.load(Ordering::SeqCst)
            )
        },
    );
    for round in 0..3 {
        let before = writer.acked.load(Ordering::SeqCst);
        let out = cli.run(&[
            "create",
            "--path",
            v.a.to_str().unwrap(),
            "--path",
            v.b.to_str().unwrap(),
            "--fsfreeze",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(created["provider"], "multi");
        let id = created["id"].as_i64().unwrap();
        // Read the copy back through the product: restore it elsewhere.
        let to = cli.path(&format!("restored-{round}"));
        cli.ok(&["restore", &id.to_string(), "--to", to.to_str().unwrap()]);
        let mut all: Vec<u64> = Vec::new();
        for log in &logs {
            let name = log
                .strip_prefix(log.parent().unwrap().parent().unwrap())
                .unwrap();
            let found: Vec<PathBuf> = walk(&to)
                .into_iter()
                .filter(|p| p.ends_with(name))
                .collect();
            assert_eq!(found.len(), 1, "{found:?}");
            all.extend(seqs(&found[0]));
        }
        all.sort_unstable();
        let n = all.len() as u64;
        assert_eq!(
            all,
            (1..=n).collect::<Vec<_>>(),
            "copy {id}: not one cut across the volumes"
        );
        assert!(
            n >= before,
            "copy {id} holds {n} records; {before} were acknowledged before it began"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn auto_picks_a_provider_per_volume() {
    let Some(v) = volumes("auto_picks_a_provider_per_volume") else {
        return;
    };
    let cli = Cli::new();
    std::fs::write(v.a.join("one"), b"1").unwrap();
    std::fs::write(v.b.join("two"), b"2").unwrap();
    let created = cli.json(&[
        "create",
        "--path",
        v.a.to_str().unwrap(),
        "--path",
        v.b.to_str().unwrap(),
        "--json",
    ]);
    let location: serde_json::Value =
        serde_json::from_str(created["location"].as_str().unwrap()).unwrap();
    let kinds: Vec<&str> = location["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["provider"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reflink", "btrfs"]);
    assert!(cli.ok(&["verify", "1"]).contains("passed"));
    cli.ok(&["delete", "1"]);
    // btrfs snapshots live beside the subvolume they copy.
    assert!(!v
        .b
        .with_file_name(".shadowcopy-snapshots")
        .join("app")
        .read_dir()
        .unwrap()
        .any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("copy-")));
}
