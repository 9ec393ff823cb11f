//! The restorer against scripted fakes (`crate::fakes`) and real files in a temporary
//! directory: `pre_restore` and `post_restore` always come in pairs. Whatever fails
//! after a writer's `pre_restore` ran (another writer's `pre_restore`, the in-use
//! check, staging, a writer finishing the staged files, the pre-restore copy, the
//! journal), its `post_restore` runs, and no other writer's does; the live data is left
//! as it was.

use std::sync::Arc;

use super::{RestoreOutcome, RestoreRequest, Restorer};
use crate::error::Error;
use crate::fakes::{FakeProvider, FakeWriter, Set};
use crate::model::{Component, ComponentRole, CopyState};
use crate::writer::{RestoreMode, Writer};

/// A set of two writers with a usable copy (copy 1), whose live files then changed.
fn copied() -> (Set, String, Vec<crate::model::FileEntry>) {
    let set = Set::new(2);
    let created = set.create(set.writers(), set.provider()).unwrap();
    for (i, f) in set.files.iter().enumerate() {
        std::fs::write(f, format!("changed w{i}")).unwrap();
    }
    (set, created.location, created.files)
}

fn restore(
    set: &Set,
    location: &str,
    files: &[crate::model::FileEntry],
    writers: Vec<FakeWriter>,
    provider: FakeProvider,
) -> Result<RestoreOutcome, Error> {
    let components = set
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| Component {
            writer: format!("w{i}"),
            name: "data".into(),
            role: ComponentRole::Data,
            path: f.clone(),
            required: true,
            pinned: false,
        })
        .collect();
    Restorer::new(&set.journal, set.events.clone()).restore(RestoreRequest {
        copy_id: 1,
        set_name: "set".into(),
        spec_json: "{}".into(),
        location: location.to_string(),
        files: files.to_vec(),
        components,
        writers: writers
            .into_iter()
            .map(|w| Box::new(w) as Box<dyn Writer>)
            .collect(),
        provider: Arc::new(provider),
        to: None,
        force: false,
        keep_current: true,
        mode: RestoreMode::PointInTime,
    })
}

/// Which writers' `pre_restore` ran; each of them had exactly one `post_restore`, after
/// it, and no other writer had one.
fn paired(set: &Set) -> Vec<String> {
    let calls = set.log.calls();
    let mut pre = Vec::new();
    for i in 0..set.files.len() {
        let w = format!("w{i}");
        let pres = set.log.matching(&format!("{w}.pre_restore")).len();
        let posts = set.log.matching(&format!("{w}.post_restore")).len();
        assert_eq!(pres, posts, "{w}: pre and post restore paired: {calls:#?}");
        assert!(pres <= 1, "{calls:#?}");
        if pres == 1 {
            assert!(
                set.log.position(&format!("{w}.pre_restore"))
                    < set.log.position(&format!("{w}.post_restore")),
                "{calls:#?}"
            );
            pre.push(w);
        }
    }
    pre
}

fn live(set: &Set) -> Vec<String> {
    set.files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[test]
fn a_restore_brings_the_copy_back_between_pre_and_post_restore() {
    let (set, location, files) = copied();
    let before = set.events.bytes().len();
    let outcome = restore(&set, &location, &files, set.writers(), set.provider()).unwrap();
    // Its progress counts every staged byte of the manifest, up to the total.
    let total: u64 = files.iter().map(|f| f.size).sum();
    assert!(total > 0);
    let progress = set.events.bytes().split_off(before);
    assert_eq!(progress.last(), Some(&(total, total)), "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    assert_eq!(paired(&set), ["w0", "w1"]);
    assert_eq!(live(&set), ["the data of w0", "the data of w1"]);
    let pre_restore = outcome.pre_restore.expect("the replaced state is kept");
    assert_eq!(set.journal.copy(pre_restore).state, CopyState::Usable);
    let calls = set.log.calls();
    let at = |c: &str| set.log.position(c).unwrap();
    assert!(
        at("w1.pre_restore") < at("journal.begin_restore"),
        "{calls:#?}"
    );
    assert!(
        at("journal.end_restore") < at("w0.post_restore"),
        "{calls:#?}"
    );
}

#[test]
fn post_restore_runs_for_exactly_the_writers_whose_pre_restore_ran() {
    type Case = (
        &'static str,
        fn(&Set) -> Vec<FakeWriter>,
        fn(&Set) -> FakeProvider,
        Option<&'static str>,
        fn(&Error) -> bool,
        &'static [&'static str],
    );
    let cases: [Case; 8] = [
        (
            "the first pre_restore fails",
            |s| vec![s.writer(0).fail_at("pre_restore"), s.writer(1)],
            Set::provider,
            None,
            |e| matches!(e, Error::Writer { .. }),
            &["w0"],
        ),
        (
            "the second pre_restore fails",
            |s| vec![s.writer(0), s.writer(1).fail_at("pre_restore")],
            Set::provider,
            None,
            |e| matches!(e, Error::Writer { .. }),
            &["w0", "w1"],
        ),
        (
            "the data is in use",
            |s| vec![s.writer(0), s.writer(1).fail_at("check_restore_target")],
            Set::provider,
            None,
            |e| matches!(e, Error::InUse { .. }),
            &["w0", "w1"],
        ),
        (
            "the restore cannot be recorded",
            Set::writers,
            Set::provider,
            Some("journal.begin_restore"),
            |e| matches!(e, Error::Journal { .. }),
            &["w0", "w1"],
        ),
        (
            "a file cannot be staged",
            Set::writers,
            |s| s.provider().fail_at("restore_file"),
            None,
            |e| matches!(e, Error::Restore { .. }),
            &["w0", "w1"],
        ),
        (
            "a writer cannot finish the staged files",
            |s| vec![s.writer(0), s.writer(1).fail_at("finish_restore")],
            Set::provider,
            None,
            |e| matches!(e, Error::Restore { .. }),
            &["w0", "w1"],
        ),
        (
            "the pre-restore copy fails",
            Set::writers,
            |s| s.provider().fail_at("commit"),
            None,
            |e| matches!(e, Error::Restore { .. }),
            &["w0", "w1"],
        ),
        (
            "the pre-restore copy cannot be recorded",
            Set::writers,
            Set::provider,
            Some("journal.finish_copy usable"),
            |e| matches!(e, Error::Restore { .. }),
            &["w0", "w1"],
        ),
    ];
    for (name, writers, provider, journal_fault, expected, pre) in cases {
        let (set, location, files) = copied();
        if let Some(label) = journal_fault {
            set.journal.fail_at(label);
        }
        let err = restore(&set, &location, &files, writers(&set), provider(&set)).expect_err(name);
        assert!(expected(&err), "{name}: {err:?}");
        assert_eq!(paired(&set), pre, "{name}: {:#?}", set.log.calls());
        assert_eq!(
            live(&set),
            ["changed w0", "changed w1"],
            "{name}: the live data is as it was"
        );
    }
}

#[test]
fn a_failed_post_restore_is_reported_after_the_restore() {
    let (set, location, files) = copied();
    let writers = vec![set.writer(0).fail_at("post_restore"), set.writer(1)];
    let err = restore(&set, &location, &files, writers, set.provider()).unwrap_err();
    assert!(matches!(err, Error::AfterRestore { .. }), "{err:?}");
    assert_eq!(
        paired(&set),
        ["w0", "w1"],
        "the other post_restore still runs"
    );
    assert_eq!(live(&set), ["the data of w0", "the data of w1"]);
}
