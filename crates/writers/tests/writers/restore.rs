//! Restore: in place (keeping a `pre-restore` copy that can itself be restored), into a
//! new directory, refused while the database is open, and a failed restore that leaves
//! the live data exactly as it was.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use shadowcopy_core::{
    CopyId, CopyState, CreatedCopy, Error, NoEvents, Origin, RestoreOutcome, RestoreRequest,
    Restorer,
};
use shadowcopy_testing::{bank, wait};

use crate::support::{file_hash, read_bank, with_suffix, Env};

/// Runs the transfer load until it has committed `commits` more transfers.
fn run_transfers(env: &Env, commits: usize) {
    let t = bank::start_transfers(&env.db, 2, Duration::from_millis(1));
    wait::until(
        Duration::from_secs(30),
        || t.committed() >= commits,
        || {
            format!(
                "the load committed {} of {commits} transfers",
                t.committed()
            )
        },
    );
    let stats = t.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
}

fn take_copy(env: &Env) -> CreatedCopy {
    let (r, _) = env.create(env.request(
        vec![env.writer()],
        env.provider("copy"),
        Duration::from_secs(10),
    ));
    r.unwrap()
}

fn restore(env: &Env, id: CopyId, to: Option<&Path>, force: bool) -> Result<RestoreOutcome, Error> {
    let s = env.catalog.summary(id).unwrap();
    Restorer::new(&env.catalog, Arc::new(NoEvents)).restore(RestoreRequest {
        copy_id: id,
        set_name: s.set.clone(),
        spec_json: s.spec_json.clone(),
        location: s.location.clone().unwrap(),
        files: env.catalog.manifest(id).unwrap(),
        components: env.catalog.components(id).unwrap(),
        writers: vec![env.writer()],
        provider: env.provider(&s.provider),
        to: to.map(Path::to_path_buf),
        force,
        keep_current: true,
        mode: Default::default(),
    })
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".shadowcopy-"))
        .collect()
}

#[test]
fn in_place_restore_brings_back_the_copy_and_keeps_a_pre_restore_copy() {
    for wal in [true, false] {
        let env = Env::new(wal, None);
        run_transfers(&env, 50);
        let copy = take_copy(&env);
        let at_copy = read_bank(&env.db).ids;
        run_transfers(&env, 50);
        let later = read_bank(&env.db).ids;
        assert!(later.len() > at_copy.len());

        let outcome = restore(&env, copy.id, None, false).unwrap();
        let now = read_bank(&env.db);
        assert_eq!(
            now.ids, at_copy,
            "wal={wal}: the restored database is the copy"
        );
        assert!(now.summary.balanced() && now.summary.integrity == "ok");
        assert!(
            !with_suffix(&env.db, "-wal").exists()
                || std::fs::metadata(with_suffix(&env.db, "-wal"))
                    .unwrap()
                    .len()
                    == 0
        );
        assert!(
            leftovers(&env.root).is_empty(),
            "{:?}",
            leftovers(&env.root)
        );

        let pre = outcome.pre_restore.expect("the replaced state is kept");
        let s = env.catalog.summary(pre).unwrap();
        assert_eq!((s.origin, s.state), (Origin::PreRestore, CopyState::Usable));
        restore(&env, pre, None, false).unwrap();
        assert_eq!(
            read_bank(&env.db).ids,
            later,
            "wal={wal}: restoring the pre-restore copy undoes the restore"
        );
    }
}

#[test]
fn restore_to_a_new_directory_leaves_the_live_database_alone() {
    let env = Env::new(true, None);
    run_transfers(&env, 50);
    let copy = take_copy(&env);
    let at_copy = read_bank(&env.db).ids;
    run_transfers(&env, 50);
    let live_before = file_hash(&env.db);
    let to = env.root.join("elsewhere");
    let outcome = restore(&env, copy.id, Some(&to), false).unwrap();
    assert_eq!(outcome.pre_restore, None);
    assert_eq!(outcome.targets, vec![to.join("bank.db")]);
    let restored = read_bank(&to.join("bank.db"));
    assert_eq!(restored.ids, at_copy);
    assert!(restored.summary.balanced());
    assert_eq!(file_hash(&env.db), live_before);
    // A second restore to the same place refuses to overwrite.
    let err = restore(&env, copy.id, Some(&to), false).unwrap_err();
    assert!(
        matches!(err, Error::Usage { .. }) && err.to_string().contains("already exists"),
        "{err}"
    );
}

struct Holder(Child);
impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another process holding the database open, as a running application would.
fn hold_open(db: &Path) -> Holder {
    let child = Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 60")
        .arg(db)
        .spawn()
        .unwrap();
    let fd3 = format!("/proc/{}/fd/3", child.id());
    wait::until(
        Duration::from_secs(10),
        || std::fs::read_link(&fd3).is_ok_and(|t| t == db),
        || format!("{fd3} is not {}: the holder did not open it", db.display()),
    );
    Holder(child)
}

#[test]
fn restore_is_refused_while_the_database_is_open_unless_forced() {
    let env = Env::new(true, None);
    let copy = take_copy(&env);
    run_transfers(&env, 50);
    let holder = hold_open(&env.db);
    let before = file_hash(&env.db);
    let err = restore(&env, copy.id, None, false).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}", holder.0.id())), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    assert_eq!(file_hash(&env.db), before, "nothing was touched");
    assert_eq!(
        env.catalog.list(None).unwrap().len(),
        1,
        "no pre-restore copy was made"
    );
    restore(&env, copy.id, None, true).expect("--force restores anyway");
    drop(holder);
}

#[test]
fn failed_restore_leaves_the_live_data_exactly_as_it_was() {
    let env = Env::new(true, None);
    let copy = take_copy(&env);
    run_transfers(&env, 50);
    let before = file_hash(&env.db);
    // The copy's data vanished (a disk was lost): staging fails.
    let location = env.catalog.summary(copy.id).unwrap().location.unwrap();
    std::fs::remove_dir_all(Path::new(&location).join("files")).unwrap();
    let err = restore(&env, copy.id, None, false).unwrap_err();
    assert!(matches!(err, Error::Restore { .. }), "{err:?}");
    assert!(
        err.to_string().contains("live data was left as it was"),
        "{err}"
    );
    assert_eq!(file_hash(&env.db), before);
    assert!(
        leftovers(&env.root).is_empty(),
        "{:?}",
        leftovers(&env.root)
    );
    assert!(read_bank(&env.db).summary.balanced());
}

/// A rollback-journal application crashed mid-transaction: its database file holds
/// uncommitted pages and a hot `-journal` holds what undoes them. Restoring over it keeps
/// both in the pre-restore copy, so undoing the restore gives back the committed state.
#[test]
fn pre_restore_copy_keeps_a_hot_journal_and_undo_rolls_it_back() {
    let env = Env::new(false, None);
    bank::pad_to(&env.db, 4 << 20).unwrap();
    let copy = take_copy(&env);
    run_transfers(&env, 50);
    let committed = read_bank(&env.db).ids;
    // A process that dies inside a transaction whose pages already spilled to the file.
    let crash = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, os\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA cache_size=1')\n\
             c.execute('BEGIN')\n\
             c.execute('UPDATE filler SET data = randomblob(length(data))')\n\
             c.execute('UPDATE accounts SET balance = balance + 1000')\n\
             os._exit(0)\n",
        )
        .arg(&env.db)
        .status()
        .expect("python3 runs");
    assert!(crash.success());
    let journal = with_suffix(&env.db, "-journal");
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "a hot journal was left"
    );

    let outcome = restore(&env, copy.id, None, false).unwrap();
    assert!(
        !journal.exists(),
        "the stale journal is not replayed onto the restored data"
    );
    assert!(read_bank(&env.db).summary.balanced());
    let pre = outcome.pre_restore.expect("pre-restore copy");
    let kept: Vec<String> = env
        .catalog
        .manifest(pre)
        .unwrap()
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(kept.contains(&"bank.db-journal".to_string()), "{kept:?}");

    restore(&env, pre, None, false).unwrap();
    let back = read_bank(&env.db);
    assert_eq!(back.summary.integrity, "ok");
    assert!(
        back.summary.balanced(),
        "the crashed transaction was rolled back: {:?}",
        back.summary
    );
    assert_eq!(back.ids, committed);
    assert!(!journal.exists());
}
