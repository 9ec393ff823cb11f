//! The archive on its local directory backend: a repository made and opened (a wrong
//! passphrase refused before anything is read), copies pushed incrementally (an
//! unchanged file not read, a changed page sending one block), restored byte for byte,
//! a copy pushed twice refused, and damage (a flipped byte, a truncated pack, a file
//! that no longer matches its recorded hash) found and named.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shadowcopy_archive::{init, ArchiveError, Cut, PushSource, Repository, SourceFile};

const PASS: &[u8] = b"correct horse battery staple";

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // Deterministic and incompressible: BLAKE3's output stream.
    let mut bytes = vec![0u8; n];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

fn blake3_of(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

fn source(dir: &Path, copy_id: i64, files: &[(&str, Cut)]) -> PushSource {
    PushSource {
        host: "db1".into(),
        set: "app".into(),
        origin: "create".into(),
        copy_id,
        created_ms: 1_000 * copy_id,
        provider: "copy".into(),
        spec: serde_json::json!({"name": "app"}),
        components: serde_json::json!([]),
        tree: Vec::new(),
        files: files
            .iter()
            .map(|(name, cut)| {
                let path = dir.join(name);
                let meta = std::fs::metadata(&path).unwrap();
                SourceFile {
                    path: PathBuf::from("/srv/app").join(name),
                    read_from: path.clone(),
                    mode: meta.permissions().mode(),
                    uid: 0,
                    gid: 0,
                    size: meta.len(),
                    mtime_ns: 0,
                    blake3: Some(blake3_of(&path)),
                    cut: *cut,
                }
            })
            .collect(),
    }
}

fn repo(dir: &Path) -> (String, Repository) {
    let url = format!("file://{}", dir.join("repo").display());
    init(&url, PASS, "test").unwrap();
    let repo = Repository::open(&url, PASS).unwrap();
    (url, repo)
}

#[test]
fn a_repository_opens_only_with_its_passphrase_and_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    init(&url, PASS, "ops").unwrap();
    assert!(matches!(
        Repository::open(&url, b"wrong"),
        Err(ArchiveError::WrongPassphrase)
    ));
    let again = init(&url, PASS, "ops").unwrap_err().to_string();
    assert!(again.contains("there is already an archive at"), "{again}");
    let none = format!("file://{}", dir.path().join("nothing").display());
    let e = Repository::open(&none, PASS).unwrap_err().to_string();
    assert!(
        e.contains("there is no archive at") && e.contains("archive init"),
        "{e}"
    );
    let e = init("ftp://x/y", PASS, "").unwrap_err().to_string();
    assert!(e.contains("is not an archive URL"), "{e}");
    let e = init("s3:///prefix", PASS, "").unwrap_err().to_string();
    assert!(e.contains("is not an archive URL"), "{e}");
    // Nothing secret in the clear: the key file holds no passphrase, the config no key.
    for entry in walk(&dir.path().join("repo")) {
        let text = std::fs::read(&entry).unwrap();
        assert!(
            !text.windows(PASS.len()).any(|w| w == PASS),
            "{}",
            entry.display()
        );
    }
    let mode = std::fs::metadata(dir.path().join("repo"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "a local repository is private");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn pushes_are_incremental_and_restores_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = random_bytes(6 << 20, 1);
    std::fs::write(data.join("app.db"), &db).unwrap();
    std::fs::write(data.join("app.db-wal"), random_bytes(3 << 20, 2)).unwrap();
    std::fs::write(data.join("notes.txt"), b"small\n").unwrap();
    std::fs::set_permissions(
        data.join("notes.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let files = [
        ("app.db", Cut::Fixed),
        ("app.db-wal", Cut::Cdc),
        ("notes.txt", Cut::Cdc),
    ];
    let first = repo.push(&source(&data, 1, &files), &|_, _| {}).unwrap();
    assert_eq!(first.files, 3);
    assert_eq!(first.files_unchanged, 0);
    assert!(first.bytes_uploaded >= 9 << 20, "{first:?}");

    // One page of the database changes; the WAL and the notes do not.
    let mut changed = db.clone();
    changed[3 << 20] ^= 0xff;
    std::fs::write(data.join("app.db"), &changed).unwrap();
    let second = repo.push(&source(&data, 2, &files), &|_, _| {}).unwrap();
    assert_eq!(second.files_unchanged, 2, "{second:?}");
    assert_eq!(second.blocks_new, 1, "one 1 MiB block changed: {second:?}");
    assert!(
        second.bytes_uploaded < (first.bytes_uploaded * 3) / 100 + (2 << 20),
        "{second:?}"
    );
    assert_eq!(second.bytes_read, 6 << 20, "only the changed file is read");

    let listed = repo.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].copy_id, 1);
    assert_eq!(listed[1].bytes, (9 << 20) + 6);

    for (n, expected_db) in [(0, &db), (1, &changed)] {
        let to = dir.path().join(format!("restored-{n}"));
        let report = repo
            .restore_to(&listed[n].id[..8], &to, &|_, _| {})
            .unwrap();
        assert_eq!(report.files, 3);
        let root = to.join("srv/app");
        assert_eq!(&std::fs::read(root.join("app.db")).unwrap(), expected_db);
        assert_eq!(
            std::fs::read(root.join("app.db-wal")).unwrap(),
            std::fs::read(data.join("app.db-wal")).unwrap()
        );
        assert_eq!(std::fs::read(root.join("notes.txt")).unwrap(), b"small\n");
        let mode = std::fs::metadata(root.join("notes.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
    // Seeded with the live files: only the block that differs is downloaded.
    let seeded = dir.path().join("seeded");
    let data_dir = data.clone();
    let report = repo
        .restore_seeded(
            &listed[0].id,
            &seeded,
            &|original| vec![data_dir.join(original.file_name().unwrap())],
            &|_, _| {},
        )
        .unwrap();
    assert_eq!(std::fs::read(seeded.join("srv/app/app.db")).unwrap(), db);
    assert_eq!(report.bytes_reused, (9 << 20) + 6 - (1 << 20), "{report:?}");
    assert!(report.bytes_downloaded < (1 << 20) + 4096, "{report:?}");

    // Into a directory that holds something: refused, nothing written.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let e = repo
        .restore_to(&listed[0].id, &busy, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not an empty directory"), "{e}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // An empty directory others can write into: someone could plant a link there.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = repo
        .restore_to(&listed[0].id, &shared, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a directory others can write into"), "{e}");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);

    // The same copy twice: the second push is refused.
    let again = repo
        .push(&source(&data, 2, &files), &|_, _| {})
        .unwrap_err();
    assert!(
        matches!(again, ArchiveError::AlreadyArchived { copy: 2, .. }),
        "{again}"
    );

    let report = repo.verify(1.0).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.copies, 2);
    assert!(report.blocks_checked >= 10, "{report:?}");
}

#[test]
fn a_block_at_several_places_is_restored_at_each_place() {
    // The same 1 MiB block three times in one file and once in another, runs of zero
    // blocks, a short last block; a text whose chunks repeat. Each block is stored
    // once and must come back at every place it was.
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let a = random_bytes(1 << 20, 7);
    let zeros = vec![0u8; 1 << 20];
    let mut twins = Vec::new();
    for part in [&a, &zeros, &a, &zeros, &zeros, &a] {
        twins.extend_from_slice(part);
    }
    twins.extend_from_slice(&random_bytes(100_000, 8));
    std::fs::write(data.join("twins.db"), &twins).unwrap();
    let mut other = zeros.clone();
    other.extend_from_slice(&a);
    std::fs::write(data.join("other.db"), &other).unwrap();
    let text = random_bytes(300_000, 9).repeat(4);
    std::fs::write(data.join("repeats.txt"), &text).unwrap();
    let files = [
        ("twins.db", Cut::Fixed),
        ("other.db", Cut::Fixed),
        ("repeats.txt", Cut::Cdc),
    ];
    let pushed = repo.push(&source(&data, 1, &files), &|_, _| {}).unwrap();
    assert!(
        pushed.bytes_uploaded < (3 << 20) + 2 * 300_000,
        "each block stored once: {pushed:?}"
    );
    let to = dir.path().join("restored");
    let report = repo
        .restore_to(&pushed.manifest[..8], &to, &|_, _| {})
        .unwrap();
    assert_eq!(report.files, 3);
    let root = to.join("srv/app");
    assert!(std::fs::read(root.join("twins.db")).unwrap() == twins);
    assert!(std::fs::read(root.join("other.db")).unwrap() == other);
    assert!(std::fs::read(root.join("repeats.txt")).unwrap() == text);
    assert!(repo.verify(1.0).unwrap().ok);
}

#[test]
fn a_file_that_compresses_well_comes_back_through_one_request_opened_in_parts() {
    // 80 distinct 1 MiB blocks that compress to almost nothing: one ranged request,
    // whose blocks open into more than 32 MiB and so are opened on several threads
    // (each on its own slice of the request's bytes).
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut db = Vec::with_capacity(80 << 20);
    for block in 0..80u32 {
        for word in 0..(1u32 << 18) {
            db.extend_from_slice(&(block * 7 + word % 3).to_le_bytes());
        }
    }
    db.extend_from_slice(b"a short last block");
    std::fs::write(data.join("big.db"), &db).unwrap();
    let pushed = repo
        .push(&source(&data, 1, &[("big.db", Cut::Fixed)]), &|_, _| {})
        .unwrap();
    assert!(pushed.bytes_uploaded < 4 << 20, "{pushed:?}");
    let to = dir.path().join("restored");
    let report = repo.restore_to(&pushed.manifest, &to, &|_, _| {}).unwrap();
    assert_eq!(report.requests, 1, "{report:?}");
    assert!(std::fs::read(to.join("srv/app/big.db")).unwrap() == db);
}

#[test]
fn damage_is_found_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (url, repo) = repo(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("app.db"), random_bytes(2 << 20, 3)).unwrap();
    let files = [("app.db", Cut::Fixed)];

    // A file that no longer matches the hash its verification recorded is not pushed.
    let mut stale = source(&data, 1, &files);
    stale.files[0].blake3 = Some("00".repeat(32));
    let e = repo.push(&stale, &|_, _| {}).unwrap_err();
    assert!(matches!(e, ArchiveError::Damaged { .. }), "{e}");
    assert!(
        repo.list().unwrap().is_empty(),
        "no manifest for a refused push"
    );

    repo.push(&source(&data, 1, &files), &|_, _| {}).unwrap();
    let packs: Vec<PathBuf> = walk(&dir.path().join("repo/packs"));
    assert_eq!(packs.len(), 1);
    let pack = &packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(pack, &bytes).unwrap();

    let report = Repository::open(&url, PASS).unwrap().verify(1.0).unwrap();
    assert!(!report.ok);
    let all = report.problems.join("\n");
    assert!(
        all.contains("does not authenticate")
            && all.contains("file /srv/app/app.db")
            && all.contains("copy 1 of app on db1"),
        "{all}"
    );
    let id = repo.list().unwrap()[0].id.clone();
    let e = repo
        .restore_to(&id, &dir.path().join("out"), &|_, _| {})
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Damaged { .. }), "{e}");

    // Truncated: the structural check alone sees it.
    bytes.truncate(bytes.len() / 2);
    std::fs::write(pack, &bytes).unwrap();
    let report = repo.verify(0.0).unwrap();
    assert!(!report.ok);
    assert!(
        report.problems[0].contains("bytes, not"),
        "{:?}",
        report.problems
    );
}

#[test]
fn someone_who_can_write_the_bucket_but_has_no_key_cannot_pass_anything_off() {
    let dir = tempfile::tempdir().unwrap();
    let (url, repo) = repo(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("app.db"), random_bytes(1 << 20, 9)).unwrap();
    let pushed = repo
        .push(&source(&data, 1, &[("app.db", Cut::Fixed)]), &|_, _| {})
        .unwrap();
    let manifests = dir.path().join("repo/manifests");
    // A manifest replayed under another name: it does not authenticate there.
    let forged = "0".repeat(32);
    std::fs::copy(manifests.join(&pushed.manifest), manifests.join(&forged)).unwrap();
    let repo = Repository::open(&url, PASS).unwrap();
    let listed = repo.list().unwrap();
    assert_eq!(listed.len(), 1, "the forged one is not listed");
    assert_eq!(listed[0].id, pushed.manifest);
    let report = repo.verify(0.0).unwrap();
    assert!(!report.ok);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&forged) && p.contains("does not authenticate")),
        "{:?}",
        report.problems
    );
    // Prune frees nothing while a manifest cannot be read: it might be a real one.
    let e = repo
        .prune(&[], std::time::Duration::ZERO, false, "t")
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Damaged { .. }), "{e}");
    // The real copy still restores.
    repo.restore_to(&pushed.manifest, &dir.path().join("out"), &|_, _| {})
        .unwrap();
    // A config replaced by another repository's: no key opens it.
    let other = dir.path().join("other");
    init(&format!("file://{}", other.display()), PASS, "x").unwrap();
    std::fs::copy(other.join("config"), dir.path().join("repo/config")).unwrap();
    assert!(matches!(
        Repository::open(&url, PASS),
        Err(ArchiveError::WrongPassphrase)
    ));
}
