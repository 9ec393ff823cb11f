//! The coordinator against scripted fakes (`crate::fakes`): the order of calls of a
//! whole shadow set, an abort at every phase (everyone asked to freeze thawed in reverse
//! order, prepared writers aborted, the partial copy deleted and recorded discarded, the
//! copy recorded failed with the reason), the freeze deadline, the freeze-window rule
//! (no journal call while a writer is frozen, checked by the fake journal in every
//! test) and panics inside the window.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::undo::CANCELLED_COMMIT_GRACE;
use super::{error_chain, CreatedCopy};
use crate::error::Error;
use crate::fakes::{CommitMode, FakeProvider, Set};
use crate::model::{CopyState, Phase};

/// The assertions of these tests.
impl Set {
    fn count(&self, call: &str) -> usize {
        self.log.calls().iter().filter(|c| *c == call).count()
    }

    fn location(&self) -> PathBuf {
        self.dir.path().join("copies/copy-1")
    }

    /// Nothing was journaled while a writer was asked to freeze and not yet thawed.
    fn assert_window_rule(&self) {
        assert_eq!(
            self.log.violations(),
            Vec::<String>::new(),
            "{:#?}",
            self.log.calls()
        );
    }

    /// Every writer asked to freeze was thawed, in reverse order, right after the window.
    fn assert_thawed(&self) {
        let calls = self.log.calls();
        let Some(first) = calls.iter().position(|c| c.ends_with(".freeze")) else {
            return;
        };
        let asked: Vec<&str> = calls
            .iter()
            .filter_map(|c| c.strip_suffix(".freeze"))
            .collect();
        let thaws: Vec<&str> = calls[first..]
            .iter()
            .filter_map(|c| c.strip_suffix(".thaw"))
            .take(asked.len())
            .collect();
        let reversed: Vec<&str> = asked.iter().rev().copied().collect();
        assert_eq!(thaws, reversed, "the window's thaws: {calls:#?}");
    }

    /// Exactly the writers whose prepare was called were aborted, each after a thaw that
    /// came after the window.
    fn assert_prepared_aborted(&self) {
        let calls = self.log.calls();
        for i in 0..self.files.len() {
            let w = format!("w{i}");
            let prepared = calls.contains(&format!("{w}.prepare"));
            let aborts = self.count(&format!("{w}.abort"));
            assert_eq!(
                aborts,
                usize::from(prepared),
                "{w} prepared: {prepared}: {calls:#?}"
            );
            if prepared {
                let abort = self.log.position(&format!("{w}.abort")).unwrap();
                let thaw = self
                    .log
                    .last_position(&format!("{w}.thaw"))
                    .expect("a prepared writer is thawed before its abort");
                assert!(thaw < abort, "{w}: thaw before abort: {calls:#?}");
            }
        }
    }
}

/// What became of the partial copy's location.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// Never recorded: nothing to delete.
    None,
    /// Deleted, then recorded discarded.
    Discarded,
    /// Still recorded, for the next run's recovery.
    Left,
}

/// The set failed with an error `expected` accepts and was undone: see the `Set`
/// assertions; the copy is recorded failed with the error's chain as the reason (and
/// the abort phase around the undo steps); the location is as `location` says. Returns
/// the recorded reason.
fn assert_aborted(
    set: &Set,
    result: Result<CreatedCopy, Error>,
    expected: impl Fn(&Error) -> bool,
    location: Location,
) -> String {
    let err = result.expect_err("the set must fail");
    assert!(expected(&err), "unexpected error: {err:?}");
    set.assert_window_rule();
    set.assert_thawed();
    set.assert_prepared_aborted();
    let calls = set.log.calls();
    let copy = set.journal.copy(1);
    assert_eq!(copy.state, CopyState::Failed, "{calls:#?}");
    let reason = copy.error.clone().expect("a reason is recorded");
    assert!(
        reason.starts_with(&error_chain(&err)),
        "{reason:?} starts with the error's chain"
    );
    let journal = set.log.matching("journal.");
    let abort = set
        .log
        .position("journal.enter_phase abort")
        .expect("the abort is recorded");
    assert_eq!(
        journal[journal.len() - 2..],
        [
            "journal.finish_phase abort failed",
            "journal.finish_copy failed"
        ],
        "{calls:#?}"
    );
    let recorded = calls.contains(&"journal.set_location".to_string());
    match location {
        Location::None => {
            assert_eq!(set.count("provider.delete"), 0, "{calls:#?}");
            assert_eq!(copy.location, None);
            assert!(
                !recorded || set.journal.copies()[0].1.location.is_none(),
                "{calls:#?}"
            );
        }
        Location::Discarded => {
            let delete = set.log.position("provider.delete").expect("deleted");
            let discarded = set.log.position("journal.discarded").expect("discarded");
            assert!(abort < delete && delete < discarded, "{calls:#?}");
            assert_eq!(copy.location, None);
            assert!(!set.location().exists(), "the partial copy is gone");
        }
        Location::Left => {
            assert_eq!(set.count("journal.discarded"), 0, "{calls:#?}");
            assert!(copy.location.is_some(), "the location stays recorded");
        }
    }
    reason
}

fn writer_failed(phase: Phase) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Writer { phase: p, .. } if *p == phase)
}

fn provider_failed(phase: Phase) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Provider { phase: p, .. } if *p == phase)
}

fn journal_failed(what: &'static str) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Journal { what: w, .. } if *w == what)
}

fn deadline_exceeded(phase: Phase) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::DeadlineExceeded { phase: p, .. } if *p == phase)
}

#[test]
fn a_set_runs_the_protocol_in_order() {
    let set = Set::new(2);
    let created = set.create(set.writers(), set.provider()).unwrap();
    assert_eq!(
        set.log.calls(),
        [
            "journal.begin_copy",
            "journal.enter_phase identify",
            "w0.identify",
            "w1.identify",
            "journal.finish_phase identify ok",
            "journal.record_components",
            "journal.enter_phase prepare",
            "provider.check",
            "w0.prepare",
            "w1.prepare",
            "provider.location",
            "journal.finish_phase prepare ok",
            "journal.set_location",
            "journal.enter_phase freeze",
            "w0.freeze",
            "w1.freeze",
            "provider.commit",
            "w1.thaw",
            "w0.thaw",
            "journal.record_freeze_window",
            "journal.finish_phase freeze ok",
            "journal.record_phase commit ok",
            "journal.record_phase thaw ok",
            "journal.enter_phase post-snapshot",
            "w0.after_thaw_files",
            "w1.after_thaw_files",
            "provider.persist",
            "provider.expose",
            "w0.post_snapshot",
            "w1.post_snapshot",
            "journal.finish_phase post-snapshot ok",
            "journal.record_files",
            "journal.enter_phase verify",
            "w0.verify",
            "w1.verify",
            "journal.finish_phase verify ok",
            "journal.record_files",
            "journal.record_verification",
            "journal.enter_phase backup-complete",
            "w0.backup_complete",
            "w1.backup_complete",
            "journal.finish_phase backup-complete ok",
            "journal.enter_phase done",
            "journal.finish_copy usable",
        ]
    );
    set.assert_window_rule();
    assert_eq!(
        set.events.events(),
        [
            "copy_started 1 set",
            "phase_started identify",
            "phase_finished identify true",
            "phase_started prepare",
            "phase_finished prepare true",
            "phase_started freeze",
            "phase_finished freeze true",
            "phase_started commit",
            "phase_finished commit true",
            "phase_started thaw",
            "phase_finished thaw true",
            "phase_started post-snapshot",
            "phase_finished post-snapshot true",
            "phase_started verify",
            "phase_finished verify true",
            "phase_started backup-complete",
            "phase_finished backup-complete true",
            "note w0 truncated its logs",
            "note w1 truncated its logs",
        ]
    );
    assert_eq!(set.journal.copy(1).state, CopyState::Usable);
    assert_eq!(created.files.len(), 2);
    assert!(created.files.iter().all(|f| f.blake3.is_some()));
    assert!(created.verification.is_some_and(|v| v.ok));
    assert_eq!(
        created.phases.iter().map(|p| p.0).collect::<Vec<_>>(),
        [
            Phase::Identify,
            Phase::Prepare,
            Phase::Freeze,
            Phase::Commit,
            Phase::Thaw,
            Phase::PostSnapshot,
            Phase::Verify,
            Phase::BackupComplete,
        ]
    );
    assert_eq!(
        created.notes,
        ["w0 truncated its logs", "w1 truncated its logs"]
    );
    assert!(created.warnings.is_empty());
}

#[test]
fn pinned_components_are_copied_before_the_freeze() {
    let set = Set::new(2);
    let writers = vec![set.writer(0).pinned(), set.writer(1)];
    let created = set.create(writers, set.provider().pinned_early()).unwrap();
    let calls = set.log.calls();
    let at = |c: &str| {
        set.log
            .position(c)
            .unwrap_or_else(|| panic!("{c}: {calls:#?}"))
    };
    assert!(at("journal.set_location") < at("journal.enter_phase precommit"));
    assert!(at("journal.enter_phase precommit") < at("provider.precommit"));
    assert!(at("provider.precommit") < at("journal.finish_phase precommit ok"));
    assert!(at("journal.finish_phase precommit ok") < at("journal.enter_phase freeze"));
    assert!(at("w1.freeze") < at("provider.commit"));
    set.assert_window_rule();
    let mut files: Vec<_> = created.files.iter().map(|f| f.path.clone()).collect();
    files.sort();
    assert_eq!(
        files, set.files,
        "both the precommitted and the frozen file"
    );
}

#[test]
fn abort_at_identify() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0), set.writer(1).fail_at("identify")],
        set.provider(),
    );
    let reason = assert_aborted(&set, r, writer_failed(Phase::Identify), Location::None);
    assert!(reason.contains("injected fault in w1.identify"), "{reason}");
    assert_eq!(set.log.matching("provider."), Vec::<String>::new());
}

#[test]
fn abort_at_prepare_aborts_the_writers_prepared() {
    let set = Set::new(3);
    let writers = vec![
        set.writer(0),
        set.writer(1).fail_at("prepare"),
        set.writer(2),
    ];
    let r = set.create(writers, set.provider());
    assert_aborted(&set, r, writer_failed(Phase::Prepare), Location::None);
    assert_eq!(set.count("w2.prepare"), 0);
    assert_eq!(
        set.count("w0.freeze"),
        0,
        "no freeze after a failed prepare"
    );
}

#[test]
fn abort_when_the_provider_cannot_serve_the_set() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().fail_at("check"));
    assert_aborted(
        &set,
        r,
        |e| matches!(e, Error::Usage { .. }),
        Location::None,
    );
}

#[test]
fn abort_when_the_provider_names_no_location() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().fail_at("location"));
    assert_aborted(&set, r, provider_failed(Phase::Prepare), Location::None);
}

#[test]
fn abort_when_the_location_cannot_be_recorded_deletes_nothing() {
    let set = Set::new(2);
    set.journal.fail_at("journal.set_location");
    let r = set.create(set.writers(), set.provider());
    assert_aborted(&set, r, journal_failed("copy location"), Location::None);
}

#[test]
fn abort_at_precommit() {
    let set = Set::new(2);
    let writers = vec![set.writer(0).pinned(), set.writer(1)];
    let r = set.create(writers, set.provider().pinned_early().fail_at("precommit"));
    assert_aborted(
        &set,
        r,
        provider_failed(Phase::Precommit),
        Location::Discarded,
    );
    assert_eq!(set.count("w0.freeze"), 0);
}

#[test]
fn abort_when_the_freeze_cannot_be_recorded_freezes_nothing() {
    let set = Set::new(2);
    set.journal.fail_at("journal.enter_phase freeze");
    let r = set.create(set.writers(), set.provider());
    assert_aborted(&set, r, journal_failed("phase start"), Location::Discarded);
    assert_eq!(set.count("w0.freeze"), 0);
}

#[test]
fn abort_at_the_freeze_of_the_first_writer() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0).fail_at("freeze"), set.writer(1)],
        set.provider(),
    );
    assert_aborted(&set, r, writer_failed(Phase::Freeze), Location::Discarded);
    assert_eq!(
        set.count("w1.freeze"),
        0,
        "the second writer is never asked"
    );
    assert_eq!(set.count("provider.commit"), 0);
}

#[test]
fn abort_at_the_freeze_of_the_second_writer() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0), set.writer(1).fail_at("freeze")],
        set.provider(),
    );
    assert_aborted(&set, r, writer_failed(Phase::Freeze), Location::Discarded);
    assert_eq!(set.count("provider.commit"), 0);
    let j = set.log.matching("journal.");
    let window = j
        .iter()
        .position(|c| c == "journal.record_freeze_window")
        .unwrap();
    assert_eq!(
        j[window..window + 3],
        [
            "journal.record_freeze_window",
            "journal.finish_phase freeze failed",
            "journal.record_phase thaw ok"
        ]
    );
}

#[test]
fn abort_at_commit() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().fail_at("commit"));
    assert_aborted(&set, r, provider_failed(Phase::Commit), Location::Discarded);
    let j = set.log.matching("journal.");
    let window = j
        .iter()
        .position(|c| c == "journal.record_freeze_window")
        .unwrap();
    assert_eq!(
        j[window..window + 4],
        [
            "journal.record_freeze_window",
            "journal.finish_phase freeze ok",
            "journal.record_phase commit failed",
            "journal.record_phase thaw ok"
        ]
    );
}

#[test]
fn abort_at_thaw_thaws_everyone_and_tries_again() {
    let set = Set::new(3);
    let writers = vec![set.writer(0), set.writer(1).fail_at("thaw"), set.writer(2)];
    let r = set.create(writers, set.provider());
    let reason = assert_aborted(&set, r, writer_failed(Phase::Thaw), Location::Discarded);
    assert!(
        reason.contains("during abort: thaw of w1 failed"),
        "the thaw is tried again: {reason}"
    );
    assert_eq!(set.count("provider.persist"), 0);
}

/// A set is run again only when every failure was a busy moment: a hard thaw failure
/// beside a busy one (in either order), or after a busy freeze, is what is reported.
#[test]
fn a_hard_thaw_failure_is_reported_over_a_busy_one() {
    let transient = |e: &Error| crate::error::Transient::in_chain(e);
    for (busy, hard) in [(0, 1), (1, 0)] {
        let set = Set::new(2);
        let mut writers = set.writers();
        writers[busy] = set.writer(busy).busy_at("thaw");
        writers[hard] = set.writer(hard).fail_at("thaw");
        let e = set.create(writers, set.provider()).unwrap_err();
        assert!(
            !transient(&e),
            "busy w{busy}, hard w{hard}: {}",
            error_chain(&e)
        );
        set.assert_thawed();
    }
    // Only busy: reported as such (the engine runs the set again).
    let set = Set::new(2);
    let writers = vec![set.writer(0), set.writer(1).busy_at("thaw")];
    let e = set.create(writers, set.provider()).unwrap_err();
    assert!(transient(&e), "{}", error_chain(&e));
    // Busy in freeze, and a thaw that fails for real: the thaw's failure.
    let set = Set::new(2);
    let writers = vec![
        set.writer(0).fail_at("thaw"),
        set.writer(1).busy_at("freeze"),
    ];
    let e = set.create(writers, set.provider()).unwrap_err();
    assert!(!transient(&e), "{}", error_chain(&e));
}

#[test]
fn abort_when_the_window_cannot_be_recorded() {
    let set = Set::new(2);
    set.journal.fail_at("journal.record_phase commit ok");
    let r = set.create(set.writers(), set.provider());
    assert_aborted(
        &set,
        r,
        journal_failed("phases of the freeze window"),
        Location::Discarded,
    );
    assert_eq!(
        set.count("journal.record_phase thaw ok"),
        1,
        "every record tried"
    );
}

#[test]
fn abort_at_after_thaw_files() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0), set.writer(1).fail_at("after_thaw_files")],
        set.provider(),
    );
    assert_aborted(
        &set,
        r,
        writer_failed(Phase::PostSnapshot),
        Location::Discarded,
    );
}

#[test]
fn abort_at_add_files() {
    let set = Set::new(2);
    let late = set.dir.path().join("label");
    std::fs::write(&late, "late").unwrap();
    let writers = vec![
        set.writer(0)
            .with_late_file(&set.dir.path().join("data/label"), &late),
        set.writer(1),
    ];
    let r = set.create(writers, set.provider().fail_at("add_files"));
    assert_aborted(
        &set,
        r,
        provider_failed(Phase::PostSnapshot),
        Location::Discarded,
    );
}

#[test]
fn late_files_are_added_to_the_copy() {
    let set = Set::new(1);
    let late = set.dir.path().join("label");
    std::fs::write(&late, "late").unwrap();
    let original = set.dir.path().join("data/label");
    let writers = vec![set.writer(0).with_late_file(&original, &late)];
    let created = set.create(writers, set.provider()).unwrap();
    assert!(created.files.iter().any(|f| f.path == original));
    let calls = set.log.calls();
    let at = |c: &str| set.log.position(c).unwrap();
    assert!(at("w0.thaw") < at("provider.add_files"), "{calls:#?}");
    assert!(
        at("provider.add_files") < at("provider.persist"),
        "{calls:#?}"
    );
}

#[test]
fn abort_at_persist() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().fail_at("persist"));
    assert_aborted(
        &set,
        r,
        provider_failed(Phase::PostSnapshot),
        Location::Discarded,
    );
}

#[test]
fn abort_at_expose() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().fail_at("expose"));
    assert_aborted(
        &set,
        r,
        provider_failed(Phase::PostSnapshot),
        Location::Discarded,
    );
}

#[test]
fn abort_at_post_snapshot() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0).fail_at("post_snapshot"), set.writer(1)],
        set.provider(),
    );
    assert_aborted(
        &set,
        r,
        writer_failed(Phase::PostSnapshot),
        Location::Discarded,
    );
}

#[test]
fn abort_when_the_manifest_cannot_be_recorded() {
    let set = Set::new(2);
    set.journal.fail_at("journal.record_files");
    let r = set.create(set.writers(), set.provider());
    assert_aborted(
        &set,
        r,
        journal_failed("file manifest"),
        Location::Discarded,
    );
}

#[test]
fn abort_when_the_end_cannot_be_recorded() {
    let set = Set::new(2);
    set.journal.fail_at("journal.finish_copy usable");
    let r = set.create(set.writers(), set.provider());
    assert_aborted(
        &set,
        r,
        journal_failed("end of the copy"),
        Location::Discarded,
    );
}

#[test]
fn a_delete_that_fails_is_in_the_reason_and_leaves_the_location() {
    let set = Set::new(2);
    let provider = set.provider().fail_at("persist").fail_at("delete");
    let r = set.create(set.writers(), provider);
    let reason = assert_aborted(
        &set,
        r,
        provider_failed(Phase::PostSnapshot),
        Location::Left,
    );
    assert!(
        reason.contains("during abort: discarding the partial copy at"),
        "{reason}"
    );
    assert!(set
        .events
        .events()
        .iter()
        .any(|e| e.starts_with("warning discarding the partial copy")));
}

#[test]
fn a_failed_verify_keeps_the_copy_usable_and_undoes_nothing() {
    let set = Set::new(2);
    let r = set.create(
        vec![set.writer(0), set.writer(1).fail_at("verify")],
        set.provider(),
    );
    let err = r.expect_err("the verify failed");
    assert!(matches!(err, Error::VerifyFailed { id: 1, .. }), "{err:?}");
    set.assert_window_rule();
    let copy = set.journal.copy(1);
    assert_eq!((copy.state, copy.error), (CopyState::Usable, None));
    assert!(copy.location.is_some());
    assert!(set.location().exists(), "the copy is kept for inspection");
    let calls = set.log.calls();
    for absent in [
        "journal.enter_phase abort",
        "provider.delete",
        "w0.abort",
        "w1.abort",
        "w0.backup_complete",
        "journal.enter_phase done",
    ] {
        assert!(!calls.contains(&absent.to_string()), "{absent}: {calls:#?}");
    }
    assert_eq!(
        set.log.matching("journal.")[set.log.matching("journal.").len() - 3..],
        [
            "journal.record_files",
            "journal.record_verification",
            "journal.finish_copy usable"
        ]
    );
}

#[test]
fn a_failed_backup_complete_is_a_warning() {
    let set = Set::new(2);
    let created = set
        .create(
            vec![set.writer(0).fail_at("backup_complete"), set.writer(1)],
            set.provider(),
        )
        .expect("the copy is usable");
    assert_eq!(created.notes, ["w1 truncated its logs"]);
    assert_eq!(created.warnings.len(), 1, "{:?}", created.warnings);
    assert!(created.warnings[0].contains("injected fault in w0.backup_complete"));
    assert_eq!(set.journal.copy(1).state, CopyState::Usable);
    assert_eq!(set.count("journal.finish_phase backup-complete failed"), 1);
    assert_eq!(set.count("journal.enter_phase abort"), 0);
    assert_eq!(set.count("w0.abort"), 0);
    assert!(set
        .events
        .events()
        .contains(&format!("warning {}", created.warnings[0])));
}

#[test]
fn a_freeze_past_the_deadline_fails_and_asks_no_further_writer() {
    let set = Set::new(2);
    let deadline = Duration::from_millis(100);
    let writers = vec![
        set.writer(0).sleep_in_freeze(Duration::from_millis(300)),
        set.writer(1),
    ];
    let r = set.create_within(writers, set.provider(), deadline);
    assert_aborted(
        &set,
        r,
        deadline_exceeded(Phase::Freeze),
        Location::Discarded,
    );
    assert_eq!(set.count("w1.freeze"), 0);
    assert_eq!(set.count("provider.commit"), 0);
}

#[test]
fn the_last_freeze_past_the_deadline_fails_too() {
    let set = Set::new(1);
    let writers = vec![set.writer(0).sleep_in_freeze(Duration::from_millis(300))];
    let r = set.create_within(writers, set.provider(), Duration::from_millis(100));
    assert_aborted(
        &set,
        r,
        deadline_exceeded(Phase::Freeze),
        Location::Discarded,
    );
    assert_eq!(set.count("provider.commit"), 0);
}

#[test]
fn a_commit_past_the_deadline_is_cancelled_and_its_copy_deleted() {
    let set = Set::new(2);
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    let r = set.create_within(
        set.writers(),
        set.provider().commit_mode(CommitMode::HangUntilCancelled),
        deadline,
    );
    let took = started.elapsed();
    assert_aborted(
        &set,
        r,
        deadline_exceeded(Phase::Commit),
        Location::Discarded,
    );
    let calls = set.log.calls();
    let cancelled = set
        .log
        .position("provider.commit cancelled")
        .expect("the commit saw the cancellation");
    assert!(
        cancelled < set.log.position("provider.delete").unwrap(),
        "deleted after the commit stopped: {calls:#?}"
    );
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
}

#[test]
fn a_commit_that_ignores_cancellation_leaves_its_location_for_recovery() {
    let set = Set::new(2);
    let deadline = Duration::from_millis(100);
    let started = Instant::now();
    let r = set.create_within(
        set.writers(),
        set.provider()
            .commit_mode(CommitMode::IgnoreCancel(CANCELLED_COMMIT_GRACE * 4)),
        deadline,
    );
    let took = started.elapsed();
    let reason = assert_aborted(&set, r, deadline_exceeded(Phase::Commit), Location::Left);
    assert_eq!(
        set.count("provider.delete"),
        0,
        "not deleted under a running commit"
    );
    assert!(
        reason.contains("the provider did not stop after cancellation"),
        "{reason}"
    );
    assert!(
        took >= deadline + CANCELLED_COMMIT_GRACE,
        "waited for the commit: {took:?}"
    );
    assert!(took < CANCELLED_COMMIT_GRACE * 4, "gave up: {took:?}");
}

#[test]
fn a_panic_in_a_freeze_thaws_everyone_asked() {
    let set = Set::new(3);
    let writers = vec![
        set.writer(0),
        set.writer(1).panic_at("freeze"),
        set.writer(2),
    ];
    let r = catch_unwind(AssertUnwindSafe(|| set.create(writers, set.provider())));
    assert!(r.is_err(), "the panic goes on");
    set.assert_window_rule();
    set.assert_thawed();
    assert_eq!(set.log.matching("w1.thaw").len(), 1);
    assert_eq!(set.count("w2.freeze"), 0);
    assert_eq!(
        set.journal.copy(1).state,
        CopyState::InProgress,
        "left for the next run's recovery"
    );
}

#[test]
fn a_panic_in_the_commit_thaws_everyone_and_aborts() {
    let set = Set::new(2);
    let r = set.create(set.writers(), set.provider().commit_mode(CommitMode::Panic));
    let reason = assert_aborted(&set, r, provider_failed(Phase::Commit), Location::Discarded);
    assert!(reason.contains("the commit thread panicked"), "{reason}");
}

#[test]
fn nothing_is_journaled_between_the_first_freeze_and_the_last_thaw() {
    for provider in [Set::provider as fn(&Set) -> FakeProvider, |s: &Set| {
        s.provider().fail_at("commit")
    }] {
        let set = Set::new(3);
        let _ = set.create(set.writers(), provider(&set));
        let calls = set.log.calls();
        let first = set.log.position("w0.freeze").unwrap();
        let last = set.log.position("w0.thaw").unwrap();
        assert!(first < last);
        assert!(
            calls[first..last]
                .iter()
                .all(|c| !c.starts_with("journal.")),
            "{calls:#?}"
        );
        assert_eq!(
            calls[last + 1],
            "journal.record_freeze_window",
            "the window is recorded right after the thaw"
        );
        set.assert_window_rule();
    }
}
