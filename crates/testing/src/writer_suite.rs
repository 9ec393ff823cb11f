//! The writer conformance suite: the rules of `core/src/writer.rs` as tests. A writer
//! kind passes by implementing [`Application`] for a live instance of its application
//! and calling [`run_all`].

use std::path::{Path, PathBuf};
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
    /// Damages a copied file of a component so that the writer's check must fail.
    fn damage(&self, copied: &Path);
}

/// How long a write must stay blocked to count as held by the freeze.
const HELD: Duration = Duration::from_millis(300);

pub fn run_all(app: &dyn Application) {
    identify_reports_existing_required_components(app);
    thaw_is_idempotent_and_harmless_unfrozen(app);
    freeze_holds_writes_until_thaw(app);
    dropping_a_frozen_writer_releases_the_freeze(app);
    verify_passes_a_frozen_copy_and_fails_a_damaged_one(app);
}

pub fn identify_reports_existing_required_components(app: &dyn Application) {
    let mut w = app.writer();
    let components = w.identify().expect("identify");
    assert!(
        components.iter().any(|c| c.required),
        "{}: at least one required component",
        w.name()
    );
    for c in components.iter().filter(|c| c.required) {
        assert!(
            c.path.is_absolute(),
            "{}: component paths are absolute",
            w.name()
        );
        assert!(
            c.path.exists(),
            "{}: required component {} exists",
            w.name(),
            c.path.display()
        );
        assert_eq!(c.writer, w.name());
    }
}

pub fn thaw_is_idempotent_and_harmless_unfrozen(app: &dyn Application) {
    let mut w = app.writer();
    w.thaw().expect("thaw without freeze succeeds");
    w.freeze(Instant::now() + Duration::from_secs(10))
        .expect("freeze");
    w.thaw().expect("thaw");
    w.thaw().expect("a second thaw succeeds");
    app.write().expect("writable after thaw");
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
    let mut w = app.writer();
    w.freeze(Instant::now() + Duration::from_secs(10))
        .expect("freeze");
    std::thread::scope(|scope| {
        let done = write_in_background(scope, app);
        assert!(
            done.recv_timeout(HELD).is_err(),
            "{}: a write went through while frozen",
            w.name()
        );
        w.thaw().expect("thaw");
        done.recv_timeout(Duration::from_secs(10))
            .expect("the held write completes after thaw")
            .expect("the held write succeeds");
    });
}

pub fn dropping_a_frozen_writer_releases_the_freeze(app: &dyn Application) {
    let mut w = app.writer();
    w.freeze(Instant::now() + Duration::from_secs(10))
        .expect("freeze");
    std::thread::scope(|scope| {
        let done = write_in_background(scope, app);
        assert!(done.recv_timeout(HELD).is_err(), "held while frozen");
        // What the kernel does when the process dies: everything the writer owns is gone.
        drop(w);
        done.recv_timeout(Duration::from_secs(10))
            .expect("the freeze dies with its owner")
            .expect("the held write succeeds");
    });
}

pub fn verify_passes_a_frozen_copy_and_fails_a_damaged_one(app: &dyn Application) {
    let mut w = app.writer();
    let components = w.identify().expect("identify");
    let scratch = tempfile::tempdir().unwrap();
    w.prepare().expect("prepare");
    w.freeze(Instant::now() + Duration::from_secs(10))
        .expect("freeze");
    let mut view = CopyView::default();
    for (i, c) in components.iter().enumerate() {
        if !c.path.exists() {
            continue;
        }
        // Each copy keeps the original's file name, so suffix rules (`-wal`) still hold.
        let dest: PathBuf = scratch
            .path()
            .join(i.to_string())
            .join(c.path.file_name().unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&c.path, &dest).unwrap();
        view.files.push((c.path.clone(), dest));
    }
    w.thaw().expect("thaw");
    let report = w.verify(&view).expect("verify runs");
    assert!(
        report.ok,
        "{}: a copy taken while frozen verifies: {}",
        w.name(),
        report.detail
    );

    let (_, first) = view.files.first().cloned().expect("something was copied");
    app.damage(&first);
    let report = w.verify(&view).expect("verify runs on a damaged copy");
    assert!(
        !report.ok,
        "{}: a damaged copy must fail verification",
        w.name()
    );
}
