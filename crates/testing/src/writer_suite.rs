//! The writer conformance suite: the rules of `core/src/writer.rs` as tests. A writer
//! kind passes by implementing [`Application`] for a live instance of its application
//! and calling [`run_all`]; every kind in the registry does (see the writers crate's
//! `conformance` tests, which fail when a registered kind has no suite run).
//!
//! Rules checked, each in the coordinator's order (identify, prepare, freeze, thaw):
//! - identify reports required components that exist, by absolute path, named for the
//!   writer (at least one, for a kind with data of its own);
//! - thaw succeeds when nothing is frozen and is idempotent;
//! - a freeze holds the application's writes until the thaw (or, for a kind whose
//!   freeze does not pause the application, lets them through);
//! - the freeze dies with its owner: dropping a frozen writer releases it;
//! - abort after the thaw (and after a prepare that never froze) leaves the application
//!   writable and nothing held: a new writer goes through a whole freeze at once;
//! - a freeze that cannot complete gives up with an error at its deadline, and the
//!   thaw and abort that follow leave the application writable;
//! - verify passes a copy taken while frozen and, for a kind that checks copies, fails a
//!   damaged one.

use std::any::Any;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shadowcopy_core::model::CopyView;
use shadowcopy_core::Writer;

/// A live application instance under test.
pub trait Application: Sync {
    /// A fresh writer for this instance.
    fn writer(&self) -> Box<dyn Writer>;
    /// One small committed write; blocks while the application is frozen.
    fn write(&self) -> Result<(), String>;
    /// Damages a file in `copy` (a copy of the components) so that the writer's check
    /// must fail. Not called for a kind whose [`Application::checks_copies`] is false.
    fn damage(&self, copy: &CopyView);
    /// Whether the freeze pauses the application's writes (false for a backup mode that
    /// lets them run, as PostgreSQL's).
    fn holds_writes(&self) -> bool {
        true
    }
    /// Whether the writer reports the application's files as components and checks a
    /// copy of them (false for hooks and file-system freezes, whose data is the set's).
    fn checks_copies(&self) -> bool {
        true
    }
    /// Makes a freeze started after a prepare unable to complete until the returned
    /// value is dropped (another connection holding the lock, a hook that does not
    /// return). Called after `identify` and `prepare`. `None` only for a kind whose
    /// freeze no test can make wait without also making it unkillable; the deadline rule
    /// then says so and checks nothing.
    fn block_freeze(&self) -> Option<Box<dyn Any>>;
}

/// How long a write must stay blocked to count as held by the freeze.
const HELD: Duration = Duration::from_millis(300);

/// How long a write may take when nothing should hold it.
const WRITABLE: Duration = Duration::from_secs(10);

/// The deadline of the deadline rule's freeze, and how far past it the freeze may
/// return (the time to stop what it waits for).
const DEADLINE: Duration = Duration::from_secs(2);
const DEADLINE_SLACK: Duration = Duration::from_millis(700);

pub fn run_all(app: &dyn Application) {
    identify_reports_existing_required_components(app);
    thaw_is_idempotent_and_harmless_unfrozen(app);
    freeze_holds_writes_until_thaw(app);
    dropping_a_frozen_writer_releases_the_freeze(app);
    abort_leaves_the_application_writable_and_nothing_held(app);
    freeze_gives_up_at_the_deadline(app);
    verify_passes_a_frozen_copy_and_fails_a_damaged_one(app);
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A writer taken through identify and prepare, as the coordinator does before a freeze.
fn prepared(app: &dyn Application) -> Box<dyn Writer> {
    let mut w = app.writer();
    w.identify()
        .unwrap_or_else(|e| panic!("{}: identify: {e}", w.name()));
    w.prepare()
        .unwrap_or_else(|e| panic!("{}: prepare: {e}", w.name()));
    w
}

fn frozen(app: &dyn Application) -> Box<dyn Writer> {
    let mut w = prepared(app);
    w.freeze(deadline())
        .unwrap_or_else(|e| panic!("{}: freeze: {e}", w.name()));
    w
}

/// The application takes a write within [`WRITABLE`].
fn assert_writable(app: &dyn Application, who: &str, when: &str) {
    std::thread::scope(|scope| {
        let done = write_in_background(scope, app);
        match done.recv_timeout(WRITABLE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{who}: a write {when} failed: {e}"),
            Err(_) => panic!("{who}: a write {when} is still held after {WRITABLE:?}"),
        }
    });
}

/// Nothing of an earlier writer is held: a new one goes through a whole freeze.
fn assert_nothing_held(app: &dyn Application, who: &str, when: &str) {
    let mut w = prepared(app);
    w.freeze(Instant::now() + WRITABLE)
        .unwrap_or_else(|e| panic!("{who}: a new freeze {when} failed: {e}"));
    w.thaw()
        .unwrap_or_else(|e| panic!("{who}: a new thaw {when} failed: {e}"));
    w.abort()
        .unwrap_or_else(|e| panic!("{who}: a new abort {when} failed: {e}"));
    assert_writable(app, who, when);
}

pub fn identify_reports_existing_required_components(app: &dyn Application) {
    let mut w = app.writer();
    let components = w.identify().expect("identify");
    if app.checks_copies() {
        assert!(
            components.iter().any(|c| c.required),
            "{}: at least one required component",
            w.name()
        );
    }
    for c in &components {
        assert!(
            c.path.is_absolute(),
            "{}: component paths are absolute",
            w.name()
        );
        assert_eq!(c.writer, w.name());
    }
    for c in components.iter().filter(|c| c.required) {
        assert!(
            c.path.exists(),
            "{}: required component {} exists",
            w.name(),
            c.path.display()
        );
    }
    assert_writable(app, &w.name(), "after identify");
}

pub fn thaw_is_idempotent_and_harmless_unfrozen(app: &dyn Application) {
    let mut w = app.writer();
    w.thaw().expect("thaw without identify or freeze succeeds");
    let mut w = prepared(app);
    w.thaw()
        .expect("thaw after prepare, without freeze, succeeds");
    w.abort().expect("abort");
    let mut w = frozen(app);
    w.thaw().expect("thaw");
    w.thaw().expect("a second thaw succeeds");
    w.abort().expect("abort");
    assert_writable(app, &w.name(), "after thaw");
}

/// Runs `app.write()` on a thread; the receiver gets its result.
fn write_in_background<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    app: &'s dyn Application,
) -> mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    scope.spawn(move || {
        let _ = tx.send(app.write());
    });
    rx
}

pub fn freeze_holds_writes_until_thaw(app: &dyn Application) {
    let mut w = frozen(app);
    let name = w.name();
    if !app.holds_writes() {
        assert_writable(app, &name, "while frozen (this kind does not pause writes)");
        w.thaw().expect("thaw");
        w.abort().expect("abort");
        return;
    }
    std::thread::scope(|scope| {
        let done = write_in_background(scope, app);
        assert!(
            done.recv_timeout(HELD).is_err(),
            "{name}: a write went through while frozen"
        );
        w.thaw().expect("thaw");
        done.recv_timeout(WRITABLE)
            .expect("the held write completes after thaw")
            .expect("the held write succeeds");
    });
    w.abort().expect("abort");
}

pub fn dropping_a_frozen_writer_releases_the_freeze(app: &dyn Application) {
    let w = frozen(app);
    let name = w.name();
    std::thread::scope(|scope| {
        let done = write_in_background(scope, app);
        if app.holds_writes() {
            assert!(done.recv_timeout(HELD).is_err(), "held while frozen");
        }
        // What the kernel does when the process dies: everything the writer owns is gone.
        drop(w);
        done.recv_timeout(WRITABLE)
            .expect("the freeze dies with its owner")
            .expect("the held write succeeds");
    });
    assert_nothing_held(app, &name, "after a frozen writer was dropped");
}

/// The set failed after the freeze (a provider error, a failed verify): the coordinator
/// thaws, then aborts. And a set whose freeze never happened (another writer's prepare
/// failed) is thawed and aborted from prepare.
pub fn abort_leaves_the_application_writable_and_nothing_held(app: &dyn Application) {
    let mut w = frozen(app);
    let name = w.name();
    w.thaw().expect("thaw");
    w.abort()
        .unwrap_or_else(|e| panic!("{name}: abort after the thaw: {e}"));
    assert_writable(app, &name, "after thaw and abort");
    drop(w);
    assert_nothing_held(app, &name, "after thaw and abort");

    let mut w = prepared(app);
    w.thaw().expect("thaw after prepare");
    w.abort()
        .unwrap_or_else(|e| panic!("{name}: abort after prepare: {e}"));
    assert_writable(app, &name, "after prepare and abort");
    drop(w);
    assert_nothing_held(app, &name, "after prepare and abort");
}

pub fn freeze_gives_up_at_the_deadline(app: &dyn Application) {
    let mut w = prepared(app);
    let name = w.name();
    let Some(blocker) = app.block_freeze() else {
        eprintln!("{name}: the deadline rule is not checked (no way to block its freeze)");
        w.thaw().expect("thaw");
        w.abort().expect("abort");
        return;
    };
    let started = Instant::now();
    let result = w.freeze(started + DEADLINE);
    let took = started.elapsed();
    assert!(
        result.is_err(),
        "{name}: a freeze that cannot complete must fail, yet it succeeded after {took:?}"
    );
    assert!(
        took <= DEADLINE + DEADLINE_SLACK,
        "{name}: the freeze waited {took:?}, past its deadline of {DEADLINE:?}"
    );
    w.thaw()
        .unwrap_or_else(|e| panic!("{name}: thaw after a failed freeze: {e}"));
    w.abort()
        .unwrap_or_else(|e| panic!("{name}: abort after a failed freeze: {e}"));
    drop(blocker);
    assert_writable(app, &name, "after a freeze gave up");
    drop(w);
    assert_nothing_held(app, &name, "after a freeze gave up");
}

pub fn verify_passes_a_frozen_copy_and_fails_a_damaged_one(app: &dyn Application) {
    let mut w = app.writer();
    let components = w.identify().expect("identify");
    let scratch = tempfile::tempdir().unwrap();
    w.prepare().expect("prepare");
    w.freeze(deadline()).expect("freeze");
    let mut view = CopyView::default();
    for (i, c) in components.iter().enumerate() {
        // Each copy keeps the original's file name, so suffix rules (`-wal`) still hold.
        let dest = scratch
            .path()
            .join(i.to_string())
            .join(c.path.file_name().unwrap());
        copy_into(&c.path, &dest, &mut view);
    }
    w.thaw().expect("thaw");
    let extra = w.after_thaw_files().expect("after_thaw_files");
    for (i, (in_copy, from)) in extra.iter().enumerate() {
        let dest = scratch
            .path()
            .join(format!("extra-{i}"))
            .join(in_copy.file_name().unwrap());
        view.files.retain(|(o, _)| o != in_copy);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from, &dest).unwrap();
        view.files.push((in_copy.clone(), dest));
    }
    let report = w.verify(&view).expect("verify runs");
    assert!(
        report.ok,
        "{}: a copy taken while frozen verifies: {}",
        w.name(),
        report.detail
    );

    if !app.checks_copies() {
        w.abort().expect("abort");
        return;
    }
    app.damage(&view);
    let report = w.verify(&view).expect("verify runs on a damaged copy");
    assert!(
        !report.ok,
        "{}: a damaged copy must fail verification",
        w.name()
    );
}

/// Copies the file or directory `from` to `to` as a provider would, listing every
/// regular file in `view`; files that vanish meanwhile (a server's temporary files) are
/// left out.
fn copy_into(from: &Path, to: &Path, view: &mut CopyView) {
    let Ok(meta) = std::fs::symlink_metadata(from) else {
        return;
    };
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if meta.is_dir() {
        std::fs::create_dir(to).unwrap();
        std::fs::set_permissions(to, meta.permissions()).unwrap();
        let Ok(entries) = std::fs::read_dir(from) else {
            return;
        };
        for e in entries.flatten() {
            copy_into(&e.path(), &to.join(e.file_name()), view);
        }
    } else if meta.is_file() {
        match std::fs::copy(from, to) {
            Ok(_) => view.files.push((from.to_path_buf(), to.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot copy {}: {e}", from.display()),
        }
    } else if meta.file_type().is_symlink() {
        if let Ok(target) = std::fs::read_link(from) {
            let _ = std::os::unix::fs::symlink(target, to);
        }
    }
}
