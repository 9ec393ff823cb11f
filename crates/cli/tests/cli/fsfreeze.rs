//! `create --path DIR --fsfreeze`: crash-consistent copies of plain files, and the
//! never-left-frozen guarantee: whatever happens to the coordinator (SIGKILL, SIGSTOP),
//! writes to the frozen file system resume within the freeze deadline plus one second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};
use shadowcopy_testing::wait;

use crate::support::{kill9, stderr, Cli};

const RECORD: usize = 64;

/// One record: 8-byte sequence number, 48 bytes of payload derived from it, 8-byte
/// checksum of both. A torn record fails its checksum.
fn record(seq: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in r[8..56].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    let sum = blake3::hash(&r[..56]);
    r[56..].copy_from_slice(&sum.as_bytes()[..8]);
    r
}

/// Checks a log file: a run of valid records 1..=n with nothing torn after it; returns n.
fn valid_prefix(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        data.len() % RECORD,
        0,
        "{}: a torn record at the end",
        path.display()
    );
    for (i, chunk) in data.chunks(RECORD).enumerate() {
        assert_eq!(
            chunk,
            record(i as u64 + 1),
            "{}: record {} is damaged",
            path.display(),
            i + 1
        );
    }
    (data.len() / RECORD) as u64
}

/// Appends records to `path`, fsyncing each; `acked` is the last sequence number whose
/// write and fsync returned.
struct Appender {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Appender {
    fn start(path: PathBuf) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                f.write_all(&record(seq)).unwrap();
                f.sync_data().unwrap();
                a.store(seq, Ordering::SeqCst);
            }
        });
        Appender {
            stop,
            acked,
            thread: Some(thread),
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn xfs(test: &str) -> Option<LoopFs> {
    loopfs_or_skip(test, FsKind::Xfs, 1 << 30)
}

#[test]
fn fsfreeze_copy_holds_every_acknowledged_record_and_no_torn_one() {
    let Some(fs) = xfs("fsfreeze_copy_holds_every_acknowledged_record_and_no_torn_one") else {
        return;
    };
    let cli = Cli::new();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let log = data.join("records.log");
    let appender = Appender::start(log.clone());
    wait::until(
        Duration::from_secs(30),
        || appender.acked.load(Ordering::SeqCst) >= 10,
        || {
            format!(
                "the appender acknowledged only {} records",
                appender.acked.load(Ordering::SeqCst)
            )
        },
    );
    for _ in 0..3 {
        let before = appender.acked.load(Ordering::SeqCst);
        let v = cli.json(&[
            "create",
            "--path",
            data.to_str().unwrap(),
            "--fsfreeze",
            "--provider",
            "copy",
            "--json",
        ]);
        assert_eq!(v["verification"]["ok"], true, "{v}");
        let in_copy = Path::new(v["location"].as_str().unwrap())
            .join("files")
            .join(log.strip_prefix("/").unwrap());
        let n = valid_prefix(&in_copy);
        assert!(
            n >= before,
            "the copy holds {n} records, {before} were acknowledged before create began"
        );
    }
    let acked = appender.acked.load(Ordering::SeqCst);
    drop(appender);
    assert!(valid_prefix(&log) >= acked);
    let show = cli.json(&["show", "1", "--json"]);
    let writers: Vec<&str> = show["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["writer"].as_str().unwrap())
        .collect();
    assert_eq!(writers, ["path"]);
}

/// Writes to the file system until one succeeds; returns when.
fn wait_writable(dir: &Path, limit: Duration) -> Instant {
    let started = Instant::now();
    let probe = dir.join("probe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Blocks while the file system is frozen (no fsync: that would time the disk).
        let ok = std::fs::write(&probe, b"x");
        let _ = tx.send((ok.is_ok(), Instant::now()));
    });
    match rx.recv_timeout(limit) {
        Ok((true, at)) => at,
        Ok((false, _)) => panic!("the write failed"),
        Err(_) => panic!(
            "{} still frozen {:?} after we started waiting",
            dir.display(),
            started.elapsed()
        ),
    }
}

/// A coordinator process that is continued and killed if the test ends early, so a
/// failed assertion never leaves it stopped with a file system frozen.
struct Coordinator(Option<std::process::Child>);

impl Coordinator {
    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.0.as_ref().unwrap().id() as i32).unwrap()
    }
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A create whose commit copies 256 MiB from the frozen file system.
fn slow_fsfreeze_create(cli: &Cli, data: &Path, deadline: &str) -> std::process::Child {
    std::fs::write(data.join("big"), vec![7u8; 256 << 20]).unwrap();
    cli.spawn(&[
        "create",
        "--path",
        data.to_str().unwrap(),
        "--fsfreeze",
        "--provider",
        "copy",
        "--freeze-deadline",
        deadline,
    ])
}

#[test]
fn kill_9_while_frozen_thaws_at_once_and_the_next_run_recovers() {
    let Some(fs) = xfs("kill_9_while_frozen_thaws_at_once_and_the_next_run_recovers") else {
        return;
    };
    let cli = Cli::new();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let deadline = Duration::from_secs(20);
    let mut child = slow_fsfreeze_create(&cli, &data, "20s");
    cli.wait_for_phase("freeze", Duration::from_secs(60));
    let frozen_at = Instant::now();
    assert!(
        wait_frozen(&data, Duration::from_secs(10)),
        "the file system froze"
    );
    kill9(&mut child);
    let killed_at = Instant::now();
    let writable_at = wait_writable(&data, deadline + Duration::from_secs(1));
    assert!(writable_at - frozen_at < deadline + Duration::from_secs(1));
    // At the deadline would be 20.5 s after the freeze; on death it is at once (5 s
    // leaves room for a loaded machine).
    assert!(
        writable_at - killed_at < Duration::from_secs(5),
        "the watchdog thaws when the coordinator dies, not at the deadline: {:?}",
        writable_at - killed_at
    );
    let out = cli.run(&[
        "create",
        "--path",
        data.to_str().unwrap(),
        "--fsfreeze",
        "--provider",
        "copy",
        "--freeze-deadline",
        "60s",
        "--no-verify",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("recovered copy 1"),
        "{}",
        stderr(&out)
    );
    let list = cli.json(&["list", "--json"]);
    assert_eq!(
        (list[0]["state"].as_str(), list[1]["state"].as_str()),
        (Some("failed"), Some("usable"))
    );
}

/// Whether a write to `dir` is held (the file system is frozen) for `for_` at least.
fn write_is_held(dir: &Path, for_: Duration) -> bool {
    let probe = dir.join("held-probe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(&probe, b"x").is_ok());
    });
    rx.recv_timeout(for_).is_err()
}

/// Waits until `dir`'s file system is really frozen (the phase is recorded before the
/// freeze, and spawning the watchdog and `fsfreeze` takes a moment under load).
fn wait_frozen(dir: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if write_is_held(dir, Duration::from_millis(50)) {
            return true;
        }
    }
    false
}

#[test]
fn a_stopped_coordinator_is_thawed_at_the_deadline_and_its_copy_discarded() {
    let Some(fs) = xfs("a_stopped_coordinator_is_thawed_at_the_deadline_and_its_copy_discarded")
    else {
        return;
    };
    let cli = Cli::new();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let deadline = Duration::from_secs(2);
    // Stop the coordinator inside its freeze window; under load it may have thawed by
    // the time the stop lands, and then that attempt proves nothing: try again.
    for attempt in 0..5 {
        let child = Coordinator(Some(slow_fsfreeze_create(&cli, &data, "2s")));
        cli.wait_for_phase("freeze", Duration::from_secs(60));
        let frozen_at = Instant::now();
        let frozen = wait_frozen(&data, Duration::from_secs(2));
        let pid = child.pid();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        if !frozen || !write_is_held(&data, Duration::from_millis(200)) {
            rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
            let _ = child.wait();
            eprintln!("attempt {attempt}: the stop landed after the thaw; again");
            continue;
        }
        let writable_at = wait_writable(&data, deadline + Duration::from_secs(2));
        assert!(
            writable_at - frozen_at < deadline + Duration::from_secs(1),
            "thawed {:?} after the freeze",
            writable_at - frozen_at
        );
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
        let out = child.wait();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("freeze deadline"), "{}", stderr(&out));
        let list = cli.json(&["list", "--json"]);
        let last = list.as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last["state"], "failed",
            "a copy taken past the deadline is never usable"
        );
        return;
    }
    panic!("could not stop the coordinator inside its freeze window in 5 attempts");
}

#[test]
fn fsfreeze_refuses_what_would_deadlock() {
    let cli = Cli::new();
    std::fs::create_dir(cli.path("data")).unwrap();
    // /tmp is on the root file system here: freezing it would freeze shadowcopy itself.
    let out = cli.run(&["create", "--path", "data", "--fsfreeze"]);
    if out.status.code() == Some(2) && stderr(&out).contains("root file system") {
        assert!(!cli.catalog.exists());
    }
    let Some(fs) = xfs("fsfreeze_refuses_what_would_deadlock") else {
        return;
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = cli.run(&[
        "create",
        "--path",
        data.to_str().unwrap(),
        "--fsfreeze",
        "--provider",
        "reflink",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("reflink clones onto the frozen file system"),
        "{}",
        stderr(&out)
    );
    let out = cli.run(&[
        "--catalog",
        fs.path().join("cat").to_str().unwrap(),
        "create",
        "--path",
        data.to_str().unwrap(),
        "--fsfreeze",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a file system this set freezes"),
        "{}",
        stderr(&out)
    );
}
