//! Pruning in two phases: a dropped copy's packs are condemned first (still readable),
//! deleted by a later prune past the grace period unless a copy has come to use them
//! (then indexed again); packs of a push that died go once past the grace period; one
//! pruner at a time, and a dead pruner's lease runs out.

use std::path::Path;
use std::time::Duration;

use shadowcopy_archive::{init, Cut, PushSource, Repository, SourceFile};

const PASS: &[u8] = b"prune";

fn file(dir: &Path, name: &str, seed: u8, size: usize) -> SourceFile {
    let mut bytes = vec![0u8; size];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    SourceFile {
        path: format!("/srv/{name}").into(),
        read_from: path,
        mode: 0o100600,
        uid: 0,
        gid: 0,
        size: size as u64,
        mtime_ns: 0,
        blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
        cut: Cut::Fixed,
    }
}

fn copy(id: i64, files: Vec<SourceFile>) -> PushSource {
    PushSource {
        host: "db1".into(),
        set: "s".into(),
        origin: "create".into(),
        copy_id: id,
        created_ms: id * 1000,
        provider: "copy".into(),
        spec: serde_json::json!({}),
        components: serde_json::json!([]),
        tree: Vec::new(),
        files,
    }
}

fn packs(root: &Path) -> usize {
    let dir = root.join("packs");
    if !dir.exists() {
        return 0;
    }
    std::fs::read_dir(dir)
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

#[test]
fn dropped_copies_free_their_packs_in_two_phases_and_racing_pushes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let url = format!("file://{}", root.display());
    init(&url, PASS, "t").unwrap();
    let repo = Repository::open(&url, PASS).unwrap();
    let a = file(dir.path(), "a", 1, 3 << 20);
    let b = file(dir.path(), "b", 2, 3 << 20);
    let first = repo.push(&copy(1, vec![a.clone()]), &|_, _| {}).unwrap();
    repo.push(&copy(2, vec![b]), &|_, _| {}).unwrap();
    assert_eq!(packs(&root), 2);

    // Copy 1 dropped: its pack is condemned, not deleted; copy 2 is whole.
    let pruned = repo
        .prune(
            std::slice::from_ref(&first.manifest),
            Duration::ZERO,
            false,
            "test",
        )
        .unwrap();
    assert_eq!(pruned.manifests_deleted, vec![first.manifest.clone()]);
    assert_eq!(pruned.packs_condemned, 1, "{pruned:?}");
    assert_eq!(pruned.packs_deleted, 0);
    assert_eq!(packs(&root), 2);
    assert_eq!(repo.list().unwrap().len(), 1);
    assert!(repo.verify(1.0).unwrap().ok);

    // A push that comes after the condemnation uploads its blocks anew, and a prune
    // past the grace period sees a copy using the condemned pack: indexed again.
    let third = repo.push(&copy(3, vec![a.clone()]), &|_, _| {}).unwrap();
    assert_eq!(
        third.blocks_new, 3,
        "a condemned block is not counted on: {third:?}"
    );
    let second_prune = repo.prune(&[], Duration::ZERO, false, "test").unwrap();
    assert_eq!(second_prune.packs_reindexed, 1, "{second_prune:?}");
    assert_eq!(second_prune.packs_deleted, 0);
    let out = dir.path().join("out");
    repo.restore_to(&third.manifest, &out, &|_, _| {}).unwrap();
    assert_eq!(
        std::fs::read(out.join("srv/a")).unwrap(),
        std::fs::read(dir.path().join("a")).unwrap()
    );

    // Copy 3 dropped: condemned, then deleted by the prune after.
    repo.prune(
        std::slice::from_ref(&third.manifest),
        Duration::ZERO,
        false,
        "test",
    )
    .unwrap();
    let last = repo.prune(&[], Duration::ZERO, false, "test").unwrap();
    assert!(last.packs_deleted >= 1, "{last:?}");
    assert!(last.bytes_freed >= 3 << 20, "{last:?}");
    assert_eq!(packs(&root), 1, "only copy 2's pack is left");
    let verified = repo.verify(1.0).unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.copies, 1);
}

#[test]
fn a_dead_push_s_packs_go_after_the_grace_period_and_one_pruner_runs_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let url = format!("file://{}", root.display());
    init(&url, PASS, "t").unwrap();
    let repo = Repository::open(&url, PASS).unwrap();
    repo.push(
        &copy(1, vec![file(dir.path(), "a", 1, 1 << 20)]),
        &|_, _| {},
    )
    .unwrap();
    // A pack no index lists: what a push killed before its index leaves.
    let orphan = root.join("packs/ab/ab000000000000000000000000000000");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, vec![7u8; 4096]).unwrap();

    let young = repo
        .prune(&[], Duration::from_secs(3600), false, "test")
        .unwrap();
    assert_eq!(young.orphans_deleted, 0, "a push may still be writing it");
    assert!(orphan.exists());
    let dry = repo.prune(&[], Duration::ZERO, true, "test").unwrap();
    assert_eq!(dry.orphans_deleted, 1);
    assert!(orphan.exists(), "a dry run deletes nothing");
    let old = repo.prune(&[], Duration::ZERO, false, "test").unwrap();
    assert_eq!(old.orphans_deleted, 1);
    assert!(!orphan.exists());
    assert!(repo.verify(1.0).unwrap().ok);

    // A live lease keeps a second pruner out; a lease that ran out is taken over.
    let lease = root.join("locks/prune");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::write(
        &lease,
        format!(
            r#"{{"host":"other","pid":1,"since_ms":{now},"until_ms":{}}}"#,
            now + 60_000
        ),
    )
    .unwrap();
    let e = repo
        .prune(&[], Duration::ZERO, false, "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("another prune is running (host other"), "{e}");
    std::fs::write(
        &lease,
        format!(
            r#"{{"host":"other","pid":1,"since_ms":0,"until_ms":{}}}"#,
            now - 1
        ),
    )
    .unwrap();
    repo.prune(&[], Duration::ZERO, false, "test").unwrap();
    assert!(!lease.exists(), "the lease is given back");
}
