//! The provider conformance suite: every rule of the `Provider` contract as a test that
//! every provider must pass. A new provider is one call:
//!
//! ```ignore
//! provider_suite::run_all(&|base| Arc::new(MyProvider::new(base)), data_dir);
//! ```
//!
//! `make(base)` builds the provider with its copies directory at `base` (the suite puts
//! one inside `data_dir` per case, beside — never inside — the case's data). `data_dir`
//! must be on a file system the provider serves. Providers that write the data (not the
//! copy-on-write kinds) also call [`enospc`] with a copies directory on a small file
//! system (see [`crate::loopfs`]).
//!
//! Rules checked: `check` passes; the manifest lists exactly the regular files with
//! their size, mode and mtime; exposed files are byte-identical (a sparse file too) and
//! keep mode and mtime; the copy is point-in-time (later writes to the original do not
//! show); `restore_file` gives identical bytes and mode; `delete` is idempotent; a
//! missing optional component is skipped and a missing required one is an error naming
//! it; a commit cancelled before or during its work fails; a location is never
//! overwritten; a full file system makes the commit fail without a panic; `tree` lists the
//! directory components' directories (modes, owners, empty ones) and symlinks as links
//! (for a provider that keeps regular files only, [`run_all_regular_files_only`]: its
//! `tree` is empty).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rand::{Rng, SeedableRng};
use shadowcopy_core::events::{EventSink, NoEvents};
use shadowcopy_core::model::{Component, ComponentRole, CopyId, FileEntry, TreeKind};
use shadowcopy_core::provider::{CommitControl, CommitRequest, Provider};

/// Builds the provider under test with its copies directory at the given path.
pub type Make<'a> = &'a dyn Fn(&Path) -> Arc<dyn Provider>;

/// Every case except [`enospc`], each in its own subdirectory of `data_dir`.
pub fn run_all(make: Make, data_dir: &Path) {
    run_all_but_tree(make, data_dir, true);
    tree_of_directories_and_links(make, &case_dir(data_dir, "tree"));
}

/// [`run_all`] for a provider whose work is one external command per step (an exec
/// provider), so it keeps regular files only (the command's protocol has no `tree`) and
/// reports no progress: every rule, with [`keeps_regular_files_only`] for the tree's and
/// [`cancel_during_a_silent_commit`] for the cancel during a commit, but
/// [`files_removed_during_commit`] (it removes files at a progress report). Its commit must
/// take at least [`SILENT_COMMIT_AT_LEAST`] (a test's command sleeps before answering).
pub fn run_all_for_a_command(make: Make, data_dir: &Path) {
    run_all_but_tree(make, data_dir, false);
    cancel_during_a_silent_commit(make, &case_dir(data_dir, "cancel-during"));
    keeps_regular_files_only(make, &case_dir(data_dir, "tree"));
}

fn run_all_but_tree(make: Make, data_dir: &Path, reports_progress: bool) {
    commit_expose_restore(make, &case_dir(data_dir, "commit"));
    delete_is_idempotent(make, &case_dir(data_dir, "delete"));
    missing_components(make, &case_dir(data_dir, "missing"));
    cancel_before_commit(make, &case_dir(data_dir, "cancel-before"));
    location_never_overwritten(make, &case_dir(data_dir, "no-overwrite"));
    two_stage_commit(make, &case_dir(data_dir, "two-stage"));
    // Both need a progress report to act in the middle of a commit.
    if reports_progress {
        cancel_during_commit(make, &case_dir(data_dir, "cancel-during"));
        files_removed_during_commit(make, &case_dir(data_dir, "removed-during"));
    }
}

/// For providers that copy pinned components early: a commit in two stages (pinned
/// components first, the rest with `continues`) gives one copy holding both, and a
/// continuing commit into a location that was never started fails.
pub fn two_stage_commit(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    if !p.copies_pinned_early() {
        return;
    }
    let (first, rest) = fx.components.split_at(1);
    let req = request(7, first);
    let loc = p.location(&req).expect("location");
    let mut files = p.commit(&req, &loc, &no_events()).expect("first stage");
    let second = CommitRequest {
        continues: true,
        ..request(7, rest)
    };
    files.extend(p.commit(&second, &loc, &no_events()).expect("second stage"));
    p.persist(&loc).expect("persist");
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let listed: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(listed, fx.files, "{}: both stages make one copy", p.kind());
    let view = p.expose(&loc, &files).expect("expose");
    for f in &files {
        let in_copy = view.path_of(&f.path).expect("exposed");
        assert_eq!(
            std::fs::read(in_copy).unwrap(),
            std::fs::read(&f.path).unwrap(),
            "{}",
            f.path.display()
        );
    }
    let never = request(8, rest);
    let never_loc = p.location(&never).expect("location");
    let continuing = CommitRequest {
        continues: true,
        ..never
    };
    assert!(
        p.commit(&continuing, &never_loc, &no_events()).is_err(),
        "{}: a continuing commit needs its first stage",
        p.kind()
    );
    p.delete(&loc).expect("delete");
}

fn case_dir(data_dir: &Path, name: &str) -> PathBuf {
    let d = data_dir.join(name);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

/// The data of one case: files, a sparse file, a directory component, and the
/// components that name them.
pub struct Fixture {
    pub data: PathBuf,
    pub copies: PathBuf,
    pub components: Vec<Component>,
    /// The regular files the manifest must list, sorted.
    pub files: Vec<PathBuf>,
}

const MTIME: u64 = 1_600_000_000;

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    let mut f =
        File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .unwrap();
    set_old_times(&f);
}

fn set_old_times(f: &File) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(MTIME, 123_456_789);
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn component(name: &str, path: PathBuf, required: bool) -> Component {
    Component {
        writer: "suite".into(),
        name: name.into(),
        role: ComponentRole::Data,
        path,
        required,
        pinned: false,
    }
}

/// Makes the standard data set in `dir/data` (copies go to `dir/copies`).
pub fn fixture(dir: &Path) -> Fixture {
    let data = dir.join("data");
    let copies = dir.join("copies");
    std::fs::create_dir_all(data.join("tree/sub")).unwrap();
    std::fs::create_dir_all(data.join("tree/many")).unwrap();
    write_file(&data.join("app.db"), &random(1, 300 * 1024 + 17), 0o640);
    write_file(&data.join("empty"), b"", 0o600);
    // A sparse file: 64 KiB of data, a 4 MiB hole, 64 KiB of data, a trailing hole.
    {
        let p = data.join("sparse.img");
        let f = File::create(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &random(2, 64 * 1024), 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &random(3, 64 * 1024), 4 << 20).unwrap();
        f.set_len(8 << 20).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap();
        set_old_times(&f);
    }
    write_file(&data.join("tree/a.txt"), b"hello\n", 0o644);
    write_file(&data.join("tree/x.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&data.join("tree/sub/b.bin"), &random(4, 200 * 1024), 0o600);
    for i in 0..12 {
        write_file(
            &data.join(format!("tree/many/f{i:02}")),
            &random(10 + i, 64 * 1024),
            0o644,
        );
    }
    std::os::unix::fs::symlink("a.txt", data.join("tree/link")).unwrap();
    std::fs::create_dir(data.join("tree/emptydir")).unwrap();
    std::fs::set_permissions(
        data.join("tree/emptydir"),
        std::fs::Permissions::from_mode(0o705),
    )
    .unwrap();
    std::fs::set_permissions(
        data.join("tree/sub"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let components = vec![
        component("db", data.join("app.db"), true),
        component("wal", data.join("app.db-wal"), false),
        component("sparse", data.join("sparse.img"), true),
        component("empty", data.join("empty"), true),
        component("tree", data.join("tree"), true),
    ];
    let mut files: Vec<PathBuf> = [
        "app.db",
        "empty",
        "sparse.img",
        "tree/a.txt",
        "tree/x.sh",
        "tree/sub/b.bin",
    ]
    .iter()
    .map(|f| data.join(f))
    .chain((0..12).map(|i| data.join(format!("tree/many/f{i:02}"))))
    .collect();
    files.sort();
    Fixture {
        data,
        copies,
        components,
        files,
    }
}

fn request(id: CopyId, components: &[Component]) -> CommitRequest {
    CommitRequest {
        copy_id: id,
        set_name: "suite".into(),
        components: components.to_vec(),
        continues: false,
    }
}

fn no_events() -> CommitControl {
    CommitControl::new(Arc::new(NoEvents))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn assert_gone(location: &str) {
    let p = Path::new(location);
    if p.is_absolute() {
        assert!(
            p.symlink_metadata().is_err(),
            "{location} still exists after delete"
        );
    }
}

/// Commits the fixture, then checks the manifest, the exposed files, point-in-time
/// semantics and `restore_file`.
pub fn commit_expose_restore(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let paths: Vec<PathBuf> = fx.components.iter().map(|c| c.path.clone()).collect();
    if let Err(why) = p.check(&paths) {
        panic!("{}: check refused the suite's data: {why}", p.kind());
    }
    let req = request(1, &fx.components);
    let loc = p.location(&req).expect("location");
    let mut files = p
        .commit(&req, &loc, &no_events())
        .unwrap_or_else(|e| panic!("{}: commit failed: {}", p.kind(), chain(&*e)));
    p.persist(&loc)
        .unwrap_or_else(|e| panic!("{}: persist failed: {}", p.kind(), chain(&*e)));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let listed: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(
        listed,
        fx.files,
        "{}: the manifest must list exactly the regular files",
        p.kind()
    );
    for f in &files {
        let m = std::fs::metadata(&f.path).unwrap();
        assert_eq!(f.size, m.len(), "size of {}", f.path.display());
        assert_eq!(f.mode, m.mode() & 0o7777, "mode of {}", f.path.display());
        assert_eq!(f.mtime_ns, mtime_ns(&m), "mtime of {}", f.path.display());
        assert_eq!(f.blake3, None, "the provider does not hash");
    }

    // Point in time: later writes to the originals do not show in the copy.
    let before = read(&fx.data.join("app.db"));
    OpenOptions::new()
        .write(true)
        .open(fx.data.join("app.db"))
        .unwrap()
        .write_all(b"CHANGED AFTER THE COPY")
        .unwrap();

    let view = p.expose(&loc, &files).expect("expose");
    for f in &files {
        let c = view
            .path_of(&f.path)
            .unwrap_or_else(|| panic!("{}: expose has no path for {}", p.kind(), f.path.display()));
        let cm = std::fs::metadata(c).unwrap();
        assert_eq!(cm.len(), f.size, "size of the copy of {}", f.path.display());
        assert_eq!(
            cm.mode() & 0o7777,
            f.mode,
            "mode of the copy of {}",
            f.path.display()
        );
        assert_eq!(
            mtime_ns(&cm),
            f.mtime_ns,
            "mtime of the copy of {}",
            f.path.display()
        );
        if f.path.ends_with("app.db") {
            assert!(
                read(c) == before,
                "{}: the copy of app.db changed with the original",
                p.kind()
            );
        } else {
            assert!(
                read(c) == read(&f.path),
                "{}: the copy of {} differs",
                p.kind(),
                f.path.display()
            );
        }
    }

    // restore_file writes identical bytes and keeps the mode.
    let restored = dir.join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    for (i, f) in files.iter().enumerate() {
        let dest = restored.join(format!("r{i}"));
        p.restore_file(&loc, &f.path, &dest).unwrap_or_else(|e| {
            panic!(
                "{}: restore_file {}: {}",
                p.kind(),
                f.path.display(),
                chain(&*e)
            )
        });
        let expected = if f.path.ends_with("app.db") {
            before.clone()
        } else {
            read(&f.path)
        };
        assert!(
            read(&dest) == expected,
            "{}: restored {} differs",
            p.kind(),
            f.path.display()
        );
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(
            m.mode() & 0o7777,
            f.mode,
            "mode of restored {}",
            f.path.display()
        );
        assert_eq!(
            mtime_ns(&m),
            f.mtime_ns,
            "mtime of restored {}",
            f.path.display()
        );
    }
    assert!(
        p.restore_file(&loc, &fx.data.join("not-in-the-copy"), &restored.join("x"))
            .is_err(),
        "{}: restore_file of a file the copy does not hold must fail",
        p.kind()
    );

    // restore_files stages them all as restore_file does, telling each one once.
    let many = dir.join("restored-together");
    std::fs::create_dir_all(&many).unwrap();
    let pairs: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.clone(), many.join(format!("r{i}"))))
        .collect();
    let told = std::sync::Mutex::new(Vec::new());
    p.restore_files(&loc, &pairs, &|i| told.lock().unwrap().push(i))
        .unwrap_or_else(|(i, e)| panic!("{}: restore_files, file {i}: {}", p.kind(), chain(&*e)));
    let mut told = told.into_inner().unwrap();
    told.sort_unstable();
    assert_eq!(told, (0..pairs.len()).collect::<Vec<_>>(), "{}", p.kind());
    for (i, (_, dest)) in pairs.iter().enumerate() {
        assert!(
            read(dest) == read(&restored.join(format!("r{i}"))),
            "{}: restore_files and restore_file differ for {}",
            p.kind(),
            files[i].path.display()
        );
    }
    // A file the copy does not hold fails, and is the one named.
    let mut with_missing = pairs.clone();
    with_missing.insert(
        1.min(with_missing.len()),
        (fx.data.join("not-in-the-copy"), many.join("missing")),
    );
    for (_, dest) in &pairs {
        std::fs::remove_file(dest).unwrap();
    }
    let failed = p.restore_files(&loc, &with_missing, &|_| {});
    assert!(
        matches!(failed, Err((i, _)) if i == 1.min(pairs.len())),
        "{}: restore_files of a file the copy does not hold must fail naming it",
        p.kind()
    );
    p.delete(&loc).expect("delete");
    assert_gone(&loc);
}

/// `tree` lists what a restore recreates besides the files: every directory at or below
/// the directory components (the component itself, empty ones too) with its mode and
/// owner, and every symlink as a link with its target; nothing outside the components.
pub fn tree_of_directories_and_links(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(9, &fx.components);
    let loc = p.location(&req).expect("location");
    p.commit(&req, &loc, &no_events()).expect("commit");
    let roots: Vec<PathBuf> = fx.components.iter().map(|c| c.path.clone()).collect();
    let tree = p
        .tree(&loc, &roots)
        .unwrap_or_else(|e| panic!("{}: tree failed: {}", p.kind(), chain(&*e)));
    let find = |rel: &str| {
        let path = fx.data.join(rel);
        tree.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{}: tree lacks {}: {tree:?}", p.kind(), path.display()))
    };
    for (rel, mode) in [
        ("tree", None),
        ("tree/sub", Some(0o750)),
        ("tree/many", None),
        ("tree/emptydir", Some(0o705)),
    ] {
        let e = find(rel);
        assert_eq!(e.kind, TreeKind::Dir, "{}: {rel}", p.kind());
        let live = std::fs::metadata(fx.data.join(rel)).unwrap();
        assert_eq!(
            e.mode,
            mode.unwrap_or(live.mode() & 0o7777),
            "{}: mode of {rel}",
            p.kind()
        );
        assert_eq!(
            (e.uid, e.gid),
            (live.uid(), live.gid()),
            "{}: owner of {rel}",
            p.kind()
        );
    }
    assert_eq!(
        find("tree/link").kind,
        TreeKind::Symlink {
            target: PathBuf::from("a.txt")
        },
        "{}: a symlink is listed as a link",
        p.kind()
    );
    assert!(
        tree.iter()
            .all(|e| roots.iter().any(|r| e.path.starts_with(r))),
        "{}: tree lists something outside the components: {tree:?}",
        p.kind()
    );
    p.delete(&loc).expect("delete");
}

/// A provider that keeps regular files only says so: its `tree` of a copy with
/// directories and a symlink is empty (a restore then recreates directories as it
/// stages files), never a partial or invented listing.
pub fn keeps_regular_files_only(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(9, &fx.components);
    let loc = p.location(&req).expect("location");
    p.commit(&req, &loc, &no_events()).expect("commit");
    let roots: Vec<PathBuf> = fx.components.iter().map(|c| c.path.clone()).collect();
    let tree = p
        .tree(&loc, &roots)
        .unwrap_or_else(|e| panic!("{}: tree failed: {}", p.kind(), chain(&*e)));
    assert!(
        tree.is_empty(),
        "{}: a provider of regular files only lists no tree: {tree:?}",
        p.kind()
    );
    p.delete(&loc).expect("delete");
}

/// `delete` removes the copy and succeeds again on a missing location.
pub fn delete_is_idempotent(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(2, &fx.components);
    let loc = p.location(&req).unwrap();
    p.commit(&req, &loc, &no_events()).unwrap();
    p.delete(&loc).unwrap();
    assert_gone(&loc);
    p.delete(&loc)
        .unwrap_or_else(|e| panic!("{}: a second delete must succeed: {}", p.kind(), chain(&*e)));
    let never = p.location(&request(3, &fx.components)).unwrap();
    p.delete(&never).unwrap_or_else(|e| {
        panic!(
            "{}: deleting a never-made copy must succeed: {}",
            p.kind(),
            chain(&*e)
        )
    });
}

/// A missing optional component is skipped; a missing required one fails the commit
/// with an error naming it.
pub fn missing_components(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let db = fx.data.join("app.db");
    let optional = vec![
        component("db", db.clone(), true),
        component("wal", fx.data.join("app.db-wal"), false),
    ];
    let req = request(4, &optional);
    let loc = p.location(&req).unwrap();
    let files = p
        .commit(&req, &loc, &no_events())
        .expect("an optional missing component is skipped");
    assert_eq!(
        files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        vec![db.clone()]
    );
    p.delete(&loc).unwrap();

    let gone = fx.data.join("gone.db");
    let required = vec![
        component("db", db, true),
        component("gone", gone.clone(), true),
    ];
    let req = request(5, &required);
    let loc = p.location(&req).unwrap();
    let err = p
        .commit(&req, &loc, &no_events())
        .expect_err("a missing required component must fail");
    let msg = chain(&*err);
    assert!(
        msg.contains(&gone.display().to_string()),
        "{}: the error must name the path: {msg}",
        p.kind()
    );
    p.delete(&loc).unwrap();
    assert_gone(&loc);
}

/// A commit whose control is cancelled before it starts fails.
pub fn cancel_before_commit(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(6, &fx.components);
    let loc = p.location(&req).unwrap();
    let control = no_events();
    control.cancel();
    assert!(
        p.commit(&req, &loc, &control).is_err(),
        "{}: a cancelled commit must fail",
        p.kind()
    );
    p.delete(&loc).unwrap();
    assert_gone(&loc);
}

/// Removes `doomed` at the first progress report, as PostgreSQL's archiver and
/// checkpointer remove files while a copy in backup mode runs.
struct RemoveOnProgress {
    doomed: Vec<PathBuf>,
    removed: AtomicUsize,
}

impl EventSink for RemoveOnProgress {
    fn bytes(&self, _done: u64, _total: u64) {
        if self.removed.load(Ordering::SeqCst) == 0 {
            for f in &self.doomed {
                if std::fs::remove_file(f).is_ok() {
                    self.removed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Files inside a directory component that the application removes while the commit
/// runs are left out of the copy instead of failing it; every file the manifest lists is
/// in the copy with the content it had, and the copy holds nothing the manifest does not
/// list.
pub fn files_removed_during_commit(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let doomed: Vec<PathBuf> = fx
        .files
        .iter()
        .filter(|f| f.starts_with(fx.data.join("tree/many")))
        .cloned()
        .collect();
    let before: Vec<(PathBuf, Vec<u8>)> = fx.files.iter().map(|f| (f.clone(), read(f))).collect();
    let sink = Arc::new(RemoveOnProgress {
        doomed: doomed.clone(),
        removed: AtomicUsize::new(0),
    });
    let req = request(8, &fx.components);
    let loc = p.location(&req).unwrap();
    let files = p
        .commit(&req, &loc, &CommitControl::new(sink.clone()))
        .unwrap_or_else(|e| {
            panic!(
                "{}: files removed during the commit failed it: {}",
                p.kind(),
                chain(e.as_ref())
            )
        });
    assert_eq!(
        sink.removed.load(Ordering::SeqCst),
        doomed.len(),
        "{}: the files were not removed during the commit",
        p.kind()
    );
    p.persist(&loc).unwrap();
    let view = p.expose(&loc, &files).unwrap();
    let listed: Vec<&PathBuf> = files.iter().map(|f| &f.path).collect();
    // Where the copy keeps the tree: beside the copy of tree/a.txt, never removed.
    let anchor = fx.data.join("tree/a.txt");
    let tree_in_copy = view
        .path_of(&anchor)
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{}: tree/a.txt is not in the copy", p.kind()))
        .to_path_buf();
    for (path, content) in &before {
        if listed.contains(&path) {
            let in_copy = view.path_of(path).unwrap();
            assert_eq!(
                &read(in_copy),
                content,
                "{}: {} differs in the copy",
                p.kind(),
                path.display()
            );
        } else {
            assert!(
                doomed.contains(path),
                "{}: {} is missing from the manifest but was never removed",
                p.kind(),
                path.display()
            );
            let in_copy = tree_in_copy.join(path.strip_prefix(fx.data.join("tree")).unwrap());
            assert!(
                !in_copy.exists(),
                "{}: {} is in the copy but not in its manifest",
                p.kind(),
                path.display()
            );
        }
    }
    p.delete(&loc).unwrap();
}

/// Cancels at the first progress report.
struct CancelOnProgress {
    control: OnceLock<CommitControl>,
    reports: AtomicUsize,
}

impl EventSink for CancelOnProgress {
    fn bytes(&self, _done: u64, _total: u64) {
        self.reports.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = self.control.get() {
            c.cancel();
        }
    }
}

/// A commit cancelled at its first progress report (while most files are still to be
/// copied) fails instead of reporting a half copy as done. Providers report progress
/// per unit of work, so this needs at least one report.
pub fn cancel_during_commit(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(7, &fx.components);
    let loc = p.location(&req).unwrap();
    let sink = Arc::new(CancelOnProgress {
        control: OnceLock::new(),
        reports: AtomicUsize::new(0),
    });
    let control = CommitControl::new(sink.clone());
    let _ = sink.control.set(control.clone());
    let result = p.commit(&req, &loc, &control);
    assert!(
        sink.reports.load(Ordering::SeqCst) > 0,
        "{}: commit reported no progress",
        p.kind()
    );
    assert!(
        result.is_err(),
        "{}: a commit cancelled midway must fail",
        p.kind()
    );
    p.delete(&loc).unwrap();
    assert_gone(&loc);
}

/// How long the commit of a provider under [`run_all_for_a_command`] must take at least.
pub const SILENT_COMMIT_AT_LEAST: Duration = Duration::from_millis(600);

/// [`cancel_during_commit`] for a provider that reports no progress: the cancel comes
/// from another thread while the commit runs (it takes [`SILENT_COMMIT_AT_LEAST`]), and
/// the commit fails, ends soon after, and leaves nothing once the location is deleted.
pub fn cancel_during_a_silent_commit(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(7, &fx.components);
    let loc = p.location(&req).unwrap();
    let control = CommitControl::new(Arc::new(NoEvents));
    let began = std::time::Instant::now();
    let result = std::thread::scope(|scope| {
        let canceller = control.clone();
        scope.spawn(move || {
            std::thread::sleep(SILENT_COMMIT_AT_LEAST / 3);
            canceller.cancel();
        });
        p.commit(&req, &loc, &control)
    });
    assert!(
        result.is_err(),
        "{}: a commit cancelled midway must fail",
        p.kind()
    );
    assert!(
        began.elapsed() < SILENT_COMMIT_AT_LEAST,
        "{}: a cancelled commit ends at once, not after {:?}",
        p.kind(),
        began.elapsed()
    );
    p.delete(&loc).unwrap();
    assert_gone(&loc);
}

/// Neither `location` nor `commit` touches an existing copy.
pub fn location_never_overwritten(make: Make, dir: &Path) {
    let fx = fixture(dir);
    let p = make(&fx.copies);
    let req = request(8, &fx.components);
    let loc = p.location(&req).unwrap();
    let files = p.commit(&req, &loc, &no_events()).unwrap();
    let db = fx.data.join("app.db");
    let before = read(&db);
    if let Ok(again) = p.location(&req) {
        // Refusing is fine too; naming the existing copy is not.
        assert_ne!(
            again,
            loc,
            "{}: location must never name an existing copy",
            p.kind()
        );
    }
    write_file(&db, b"new content", 0o640);
    assert!(
        p.commit(&req, &loc, &no_events()).is_err(),
        "{}: commit must refuse an existing location",
        p.kind()
    );
    let view = p.expose(&loc, &files).unwrap();
    assert!(
        read(view.path_of(&db).unwrap()) == before,
        "{}: the existing copy was overwritten",
        p.kind()
    );
    p.delete(&loc).unwrap();
}

/// With the copies directory on a file system with less free space than the data, the
/// commit fails (no panic, no success) and the partial copy can be deleted.
/// `copies_base` must be on a small file system, `data_dir` on one with room for the data.
pub fn enospc(make: Make, copies_base: &Path, data_dir: &Path) {
    let free = rustix::fs::statvfs(copies_base.parent().unwrap_or(copies_base))
        .map(|s| s.f_bavail * s.f_frsize)
        .expect("statvfs of the copies directory");
    let data = data_dir.join("enospc-data");
    std::fs::create_dir_all(&data).unwrap();
    let per_file = (free + (32 << 20)) / 4 + 1;
    let mut components = Vec::new();
    for i in 0..4 {
        let path = data.join(format!("big{i}"));
        let mut f = File::create(&path).unwrap();
        let block = random(100 + i, 1 << 20);
        let mut left = per_file;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        components.push(component(&format!("big{i}"), path, true));
    }
    let p = make(copies_base);
    let req = request(9, &components);
    let loc = p.location(&req).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.commit(&req, &loc, &no_events())
    }));
    match result {
        Err(_) => panic!("{}: commit panicked on a full file system", p.kind()),
        Ok(Ok(_)) => panic!(
            "{}: commit succeeded although the data does not fit",
            p.kind()
        ),
        Ok(Err(e)) => eprintln!(
            "{}: commit on a full file system failed as it must: {}",
            p.kind(),
            chain(&*e)
        ),
    }
    p.delete(&loc).unwrap();
    assert_gone(&loc);
    std::fs::remove_dir_all(&data).unwrap();
}

/// The manifest entry of `path` in `files`.
pub fn entry<'a>(files: &'a [FileEntry], path: &Path) -> Option<&'a FileEntry> {
    files.iter().find(|f| f.path == path)
}
