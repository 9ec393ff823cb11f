//! Integration tests of the built-in providers: the shared conformance suite for each
//! kind on the file systems it serves, plus what is specific to a kind (sparse files,
//! shared extents, `check` reasons, `auto`). Loop-device file systems need root; without
//! it those tests skip (and fail under `SHADOWCOPY_TEST_REQUIRE_ROOT=1`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use shadowcopy_core::events::NoEvents;
use shadowcopy_core::model::{Component, ComponentRole};
use shadowcopy_core::provider::{CommitControl, CommitRequest, Provider};
use shadowcopy_providers::{build, choose_auto, ProviderOptions, Registry, RegistryError, KINDS};
use shadowcopy_testing::loopfs::{loopfs_or_skip, require_root, FsKind, LoopFs};
use shadowcopy_testing::provider_suite;

fn opts(copies_dir: Option<&Path>, default: &Path) -> ProviderOptions {
    ProviderOptions {
        copies_dir: copies_dir.map(Path::to_path_buf),
        default_copies_dir: default.to_path_buf(),
        parallelism: 4,
        exec: Vec::new(),
    }
}

fn maker(kind: &'static str) -> impl Fn(&Path) -> Arc<dyn Provider> {
    move |base| build(kind, &opts(Some(base), base)).unwrap()
}

fn component(path: &Path) -> Component {
    Component {
        writer: "test".into(),
        name: path.file_name().unwrap().to_string_lossy().into(),
        role: ComponentRole::Data,
        path: path.to_path_buf(),
        required: true,
        pinned: false,
    }
}

fn request(id: i64, paths: &[&Path]) -> CommitRequest {
    CommitRequest {
        copy_id: id,
        set_name: "t".into(),
        components: paths.iter().map(|p| component(p)).collect(),
        continues: false,
    }
}

fn control() -> CommitControl {
    CommitControl::new(Arc::new(NoEvents))
}

fn hash(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path).unwrap()).unwrap();
    h.finalize()
}

mod suite {
    use super::*;
    use shadowcopy_providers::exec::{ExecProviderOptions, PREFIX};
    use shadowcopy_providers::multi::{MultiVolumeProvider, Volume, MULTI};

    /// The kinds whose suite runs in this module; `exec` stands for every `exec:NAME`.
    const SUITE_RUNS_FOR: &[&str] = &["copy", "reflink", "btrfs", "exec", "multi"];

    #[test]
    fn every_registered_kind_runs_the_suite() {
        let mut registered: Vec<&str> = Registry::builtin().unwrap().kinds();
        // Built outside the registry: exec:NAME kinds and the multi-volume provider.
        registered.push(PREFIX.trim_end_matches(':'));
        registered.push(MULTI);
        let mut tested = SUITE_RUNS_FOR.to_vec();
        registered.sort_unstable();
        tested.sort_unstable();
        assert_eq!(
            registered, tested,
            "every provider kind runs the provider conformance suite here: add a test \
             calling provider_suite::run_all for the new kind, and its name to SUITE_RUNS_FOR"
        );
    }

    /// The worked example `examples/exec-provider.py`, its store at `base`: a wrapper
    /// script per store in `scripts` (the example reads its store from the environment),
    /// whose commit answers only after the suite's `SILENT_COMMIT_AT_LEAST`.
    fn exec_maker(scripts: &Path) -> impl Fn(&Path) -> Arc<dyn Provider> + '_ {
        let example =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/exec-provider.py");
        move |base| {
            let n = std::fs::read_dir(scripts).unwrap().count();
            let wrapper = scripts.join(format!("provider-{n}"));
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nSHADOWCOPY_EXAMPLE_STORE='{}' '{}' \"$@\" || exit\n\
                     [ \"$1\" = commit ] && sleep {}\nexit 0\n",
                    base.display(),
                    example.display(),
                    provider_suite::SILENT_COMMIT_AT_LEAST.as_secs_f64()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
            let exec = vec![ExecProviderOptions {
                name: "example".into(),
                command: wrapper,
                timeout_secs: Some(60),
            }];
            let o = ProviderOptions {
                exec,
                ..opts(Some(base), base)
            };
            build("exec:example", &o).unwrap()
        }
    }

    #[test]
    fn exec_example_provider_on_the_temp_dir_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = tempfile::tempdir().unwrap();
        provider_suite::run_all_for_a_command(&exec_maker(scripts.path()), dir.path());
    }

    /// Two volumes, each with its own `copy` provider and copies directory: the suite's
    /// directory component (`tree`) on one, everything else on the other.
    fn multi_maker(base: &Path) -> Arc<dyn Provider> {
        let case = base.parent().unwrap();
        let o = opts(Some(base), base);
        let volume = |root: PathBuf, copies: &str| Volume {
            root,
            provider: build("copy", &opts(Some(&base.join(copies)), base)).unwrap(),
        };
        Arc::new(MultiVolumeProvider::new(
            vec![
                volume(case.join("data/tree"), "tree-volume"),
                volume(case.to_path_buf(), "case-volume"),
            ],
            &o,
        ))
    }

    #[test]
    fn multi_over_two_copy_volumes() {
        let dir = tempfile::tempdir().unwrap();
        provider_suite::run_all(&multi_maker, dir.path());
    }

    #[test]
    fn copy_on_the_temp_dir_file_system() {
        let dir = tempfile::tempdir().unwrap();
        provider_suite::run_all(&maker("copy"), dir.path());
    }

    #[test]
    fn copy_enospc_on_a_small_ext4() {
        let Some(fs) = loopfs_or_skip("copy_enospc_on_a_small_ext4", FsKind::Ext4, 64 << 20) else {
            return;
        };
        let data = tempfile::tempdir().unwrap();
        provider_suite::enospc(&maker("copy"), &fs.mount.join("copies"), data.path());
    }

    #[test]
    fn copy_enospc_on_a_small_xfs() {
        let Some(fs) = loopfs_or_skip("copy_enospc_on_a_small_xfs", FsKind::Xfs, 300 << 20) else {
            return;
        };
        let data = tempfile::tempdir().unwrap();
        provider_suite::enospc(&maker("copy"), &fs.mount.join("copies"), data.path());
    }

    #[test]
    fn reflink_on_xfs() {
        let Some(fs) = loopfs_or_skip("reflink_on_xfs", FsKind::Xfs, 512 << 20) else {
            return;
        };
        provider_suite::run_all(&maker("reflink"), &fs.mount);
    }

    #[test]
    fn reflink_on_btrfs() {
        let Some(fs) = loopfs_or_skip("reflink_on_btrfs", FsKind::Btrfs, 512 << 20) else {
            return;
        };
        provider_suite::run_all(&maker("reflink"), &fs.mount);
    }

    #[test]
    fn btrfs_snapshots_in_a_subvolume() {
        let Some(fs) = loopfs_or_skip("btrfs_snapshots_in_a_subvolume", FsKind::Btrfs, 512 << 20)
        else {
            return;
        };
        let subvolume = fs.mount.join("app");
        btrfs_subvolume_create(&subvolume);
        provider_suite::run_all(&maker("btrfs"), &subvolume);
    }

    #[test]
    fn copy_on_xfs() {
        let Some(fs) = loopfs_or_skip("copy_on_xfs", FsKind::Xfs, 512 << 20) else {
            return;
        };
        provider_suite::run_all(&maker("copy"), &fs.mount);
    }
}

/// `btrfs subvolume create PATH`.
fn btrfs_subvolume_create(path: &Path) {
    let ok = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "btrfs subvolume create {}", path.display());
}

mod btrfs {
    use super::*;

    #[test]
    fn explains_what_it_cannot_snapshot_and_auto_prefers_it() {
        let plain = tempfile::tempdir().unwrap();
        let p = build("btrfs", &opts(None, plain.path())).unwrap();
        let why = p.check(&[plain.path().to_path_buf()]).unwrap_err().reason;
        assert!(
            why.contains("not btrfs") && why.contains("--provider"),
            "{why}"
        );

        let Some(fs) = loopfs_or_skip(
            "explains_what_it_cannot_snapshot_and_auto_prefers_it",
            FsKind::Btrfs,
            512 << 20,
        ) else {
            return;
        };
        std::fs::create_dir(fs.mount.join("loose")).unwrap();
        std::fs::write(fs.mount.join("loose/app.db"), b"x").unwrap();
        let why = p
            .check(&[fs.mount.join("loose/app.db")])
            .unwrap_err()
            .reason;
        assert!(
            why.contains("top-level subvolume") && why.contains("btrfs subvolume create"),
            "{why}"
        );
        let chosen =
            choose_auto(&opts(None, plain.path()), &[fs.mount.join("loose/app.db")]).unwrap();
        assert_eq!(
            chosen.kind(),
            "reflink",
            "outside a subvolume auto falls back to reflink"
        );

        btrfs_subvolume_create(&fs.mount.join("a"));
        btrfs_subvolume_create(&fs.mount.join("b"));
        std::fs::write(fs.mount.join("a/one"), b"1").unwrap();
        std::fs::write(fs.mount.join("b/two"), b"2").unwrap();
        let why = p
            .check(&[fs.mount.join("a/one"), fs.mount.join("b/two")])
            .unwrap_err()
            .reason;
        assert!(why.contains("spans the subvolumes"), "{why}");
        let chosen = choose_auto(&opts(None, plain.path()), &[fs.mount.join("a/one")]).unwrap();
        assert_eq!(chosen.kind(), "btrfs");
    }

    #[test]
    fn snapshot_is_read_only_and_survives_the_loss_of_the_live_data() {
        let Some(fs) = loopfs_or_skip(
            "snapshot_is_read_only_and_survives_the_loss_of_the_live_data",
            FsKind::Btrfs,
            512 << 20,
        ) else {
            return;
        };
        let sub = fs.mount.join("app");
        btrfs_subvolume_create(&sub);
        let db = sub.join("app.db");
        std::fs::write(&db, vec![3u8; 64 << 20]).unwrap();
        let p = build("btrfs", &opts(None, fs.mount.as_path())).unwrap();
        let req = request(1, &[&db]);
        let loc = p.location(&req).unwrap();
        assert!(
            loc.starts_with(fs.mount.join(".shadowcopy-snapshots/app").to_str().unwrap()),
            "snapshots go beside the subvolume: {loc}"
        );
        let files = p.commit(&req, &loc, &control()).unwrap();
        p.persist(&loc).unwrap();
        let view = p.expose(&loc, &files).unwrap();
        let in_copy = view.path_of(&db).unwrap().to_path_buf();
        assert!(
            std::fs::write(&in_copy, b"no").is_err(),
            "the snapshot is read-only"
        );
        std::fs::remove_file(&db).unwrap();
        let staged = sub.join("app.db.staged");
        p.restore_file(&loc, &db, &staged).unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), vec![3u8; 64 << 20]);
        p.delete(&loc).unwrap();
        assert!(!Path::new(&loc).exists());
        p.delete(&loc).unwrap();
    }
}

mod registry {
    use super::*;

    #[test]
    fn unknown_kind_lists_the_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let err = build("lvm", &opts(None, dir.path()))
            .err()
            .expect("unknown kind");
        let msg = err.to_string();
        for k in KINDS {
            assert!(msg.contains(k), "{msg}");
        }
    }

    #[test]
    fn duplicate_name_is_rejected() {
        let mut r = Registry::builtin().unwrap();
        let err = r
            .register("reflink", |o| build("copy", o).unwrap())
            .expect_err("duplicate");
        assert!(
            matches!(err, RegistryError::Duplicate { name: "reflink" }),
            "{err}"
        );
        assert!(err.to_string().contains("reflink"));
    }

    #[test]
    fn every_kind_builds() {
        let dir = tempfile::tempdir().unwrap();
        for k in KINDS {
            assert_eq!(build(k, &opts(None, dir.path())).unwrap().kind(), *k);
        }
        assert_eq!(
            shadowcopy_providers::all(&opts(None, dir.path())).len(),
            KINDS.len()
        );
    }

    #[test]
    fn auto_picks_copy_on_ext4_and_explains_reflink() {
        let data = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let db = data.path().join("app.db");
        std::fs::write(&db, b"x").unwrap();
        let magic = rustix::fs::statfs(data.path()).unwrap().f_type as u64;
        if magic == 0x5846_5342 || magic == 0x9123_683E {
            eprintln!("the temp dir is on XFS/btrfs; the ext4 case is covered by auto_on_loop_file_systems");
            return;
        }
        let p = choose_auto(&opts(None, copies.path()), &[db]).unwrap();
        assert_eq!(p.kind(), "copy");
    }

    #[test]
    fn auto_on_loop_file_systems() {
        let Some(xfs) = loopfs_or_skip("auto_on_loop_file_systems", FsKind::Xfs, 300 << 20) else {
            return;
        };
        let Some(ext4) = loopfs_or_skip("auto_on_loop_file_systems", FsKind::Ext4, 64 << 20) else {
            return;
        };
        let copies = tempfile::tempdir().unwrap();
        let on_xfs = xfs.mount.join("data/app.db");
        std::fs::create_dir_all(on_xfs.parent().unwrap()).unwrap();
        std::fs::write(&on_xfs, b"x").unwrap();
        let on_ext4 = ext4.mount.join("data/app.db");
        std::fs::create_dir_all(on_ext4.parent().unwrap()).unwrap();
        std::fs::write(&on_ext4, b"x").unwrap();
        assert_eq!(
            choose_auto(&opts(None, copies.path()), std::slice::from_ref(&on_xfs))
                .unwrap()
                .kind(),
            "reflink"
        );
        assert_eq!(
            choose_auto(&opts(None, copies.path()), std::slice::from_ref(&on_ext4))
                .unwrap()
                .kind(),
            "copy"
        );
        // Nothing fits: every reason is listed.
        let inside = opts(Some(&xfs.mount.join("data/copies")), copies.path());
        let err = choose_auto(&inside, &[xfs.mount.join("data"), on_ext4])
            .err()
            .expect("nothing fits");
        let msg = err.to_string();
        assert!(msg.contains("copy:") && msg.contains("reflink:"), "{msg}");
        // The probe leaves nothing behind.
        let names: Vec<_> = std::fs::read_dir(xfs.mount.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.db")]);
    }
}

mod reflink {
    use super::*;

    #[test]
    fn check_explains_ext4_and_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"x").unwrap();
        let p = build("reflink", &opts(None, dir.path())).unwrap();
        let magic = rustix::fs::statfs(dir.path()).unwrap().f_type as u64;
        if magic == 0xEF53 {
            let why = p
                .check(std::slice::from_ref(&db))
                .expect_err("ext4 cannot reflink")
                .reason;
            assert!(
                why.contains(&db.display().to_string()) && why.contains("ext4"),
                "{why}"
            );
            assert!(
                why.contains("--provider copy") && why.contains("XFS"),
                "{why}"
            );
        }
        let shm = Path::new("/dev/shm");
        if shm.is_dir()
            && rustix::fs::statfs(shm)
                .map(|s| s.f_type as u64 == 0x0102_1994)
                .unwrap_or(false)
        {
            let d = tempfile::tempdir_in(shm).unwrap();
            let f = d.path().join("app.db");
            std::fs::write(&f, b"x").unwrap();
            let why = p.check(&[f]).expect_err("tmpfs cannot reflink").reason;
            assert!(
                why.contains("tmpfs") && why.contains("--provider copy"),
                "{why}"
            );
        }
    }

    #[test]
    fn check_names_both_file_systems() {
        let Some(xfs) = loopfs_or_skip("check_names_both_file_systems", FsKind::Xfs, 300 << 20)
        else {
            return;
        };
        let other = tempfile::tempdir().unwrap();
        let a = xfs.mount.join("a.db");
        std::fs::write(&a, b"x").unwrap();
        let b = other.path().join("b.db");
        std::fs::write(&b, b"x").unwrap();
        let p = build("reflink", &opts(None, other.path())).unwrap();
        let why = p
            .check(&[a.clone(), b.clone()])
            .expect_err("two file systems")
            .reason;
        assert!(
            why.contains(&a.display().to_string()) && why.contains(&b.display().to_string()),
            "{why}"
        );
        // The copies directory on another file system.
        let p = build(
            "reflink",
            &opts(Some(&other.path().join("copies")), other.path()),
        )
        .unwrap();
        let why = p
            .check(std::slice::from_ref(&a))
            .expect_err("copies elsewhere")
            .reason;
        assert!(why.contains("copies directory"), "{why}");
        // Without copies_dir the copies go beside the data, and check passes.
        let p = build("reflink", &opts(None, other.path())).unwrap();
        p.check(&[a]).unwrap();
    }

    #[test]
    fn xfs_without_reflink_is_explained() {
        let Some(fs) = loopfs_or_skip("xfs_without_reflink_is_explained", FsKind::Xfs, 300 << 20)
        else {
            return;
        };
        // Re-make it without reflink: unmount, mkfs -m reflink=0, mount.
        let image = fs.mount.parent().unwrap().join("fs.img");
        let run = |args: &[&str]| {
            let st = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap();
            assert!(st.success(), "{args:?}");
        };
        let m = fs.mount.to_str().unwrap();
        let i = image.to_str().unwrap();
        run(&["umount", m]);
        run(&["mkfs.xfs", "-q", "-f", "-m", "reflink=0", i]);
        run(&["mount", "-o", "loop", i, m]);
        let db = fs.mount.join("app.db");
        std::fs::write(&db, b"x").unwrap();
        let p = build("reflink", &opts(None, &fs.mount)).unwrap();
        let why = p.check(&[db]).expect_err("no reflink").reason;
        assert!(
            why.contains("reflink=0") && why.contains("--provider copy"),
            "{why}"
        );
    }

    #[test]
    fn default_copies_dir_and_mount_root_component() {
        let Some(fs) = loopfs_or_skip(
            "default_copies_dir_and_mount_root_component",
            FsKind::Xfs,
            300 << 20,
        ) else {
            return;
        };
        std::fs::create_dir_all(fs.mount.join("data")).unwrap();
        std::fs::write(fs.mount.join("data/app.db"), b"hello").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let p = build("reflink", &opts(None, elsewhere.path())).unwrap();
        // A file component: copies beside its directory.
        let req = request(1, &[&fs.mount.join("data/app.db")]);
        let loc = p.location(&req).unwrap();
        assert_eq!(
            Path::new(&loc).parent(),
            Some(fs.mount.join("data/.shadowcopy/copies").as_path())
        );
        assert!(
            loc.rsplit('/').next().unwrap().starts_with("copy-1-"),
            "{loc}"
        );
        p.commit(&req, &loc, &control()).unwrap();
        // The whole file system as one component: copies inside it, left out of the copy.
        let req = request(2, &[&fs.mount]);
        p.check(&req.paths()).unwrap();
        let loc = p.location(&req).unwrap();
        assert_eq!(
            Path::new(&loc).parent(),
            Some(fs.mount.join(".shadowcopy/copies").as_path())
        );
        let files = p.commit(&req, &loc, &control()).unwrap();
        let listed: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(listed, vec![fs.mount.join("data/app.db")]);
    }

    /// Many files are cloned on several threads and made durable with one sync of their
    /// file system: each comes out whole, with its mode, and each is told once.
    #[test]
    fn many_files_restore_together_as_each_alone() {
        let Some(fs) = loopfs_or_skip(
            "many_files_restore_together_as_each_alone",
            FsKind::Xfs,
            300 << 20,
        ) else {
            return;
        };
        let data = fs.mount.join("data");
        std::fs::create_dir(&data).unwrap();
        let originals: Vec<PathBuf> = (0..64)
            .map(|i| {
                let f = data.join(format!("f{i}"));
                std::fs::write(&f, vec![i as u8; 4096 * (i + 1)]).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600 + i as u32 % 8))
                    .unwrap();
                f
            })
            .collect();
        let p = build("reflink", &opts(Some(&fs.mount.join("copies")), &fs.mount)).unwrap();
        let req = request(1, &[&data]);
        let loc = p.location(&req).unwrap();
        p.commit(&req, &loc, &control()).unwrap();
        let staged = fs.mount.join("staged");
        std::fs::create_dir(&staged).unwrap();
        let files: Vec<(PathBuf, PathBuf)> = originals
            .iter()
            .enumerate()
            .map(|(i, o)| (o.clone(), staged.join(format!("s{i}"))))
            .collect();
        let told = std::sync::atomic::AtomicUsize::new(0);
        p.restore_files(&loc, &files, &|_| {
            told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap_or_else(|(i, e)| panic!("file {i}: {e}"));
        assert_eq!(told.into_inner(), files.len());
        for (original, dest) in &files {
            assert_eq!(hash(dest), hash(original), "{}", dest.display());
            assert_eq!(
                std::fs::metadata(dest).unwrap().mode() & 0o7777,
                std::fs::metadata(original).unwrap().mode() & 0o7777
            );
        }
    }

    #[test]
    fn restore_across_file_systems_falls_back_to_copy() {
        let Some(fs) = loopfs_or_skip(
            "restore_across_file_systems_falls_back_to_copy",
            FsKind::Xfs,
            300 << 20,
        ) else {
            return;
        };
        let db = fs.mount.join("app.db");
        std::fs::write(&db, vec![7u8; 3 << 20]).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o604)).unwrap();
        let p = build("reflink", &opts(Some(&fs.mount.join("copies")), &fs.mount)).unwrap();
        let req = request(1, &[&db]);
        let loc = p.location(&req).unwrap();
        p.commit(&req, &loc, &control()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let dest = other.path().join("app.db");
        p.restore_file(&loc, &db, &dest).unwrap();
        assert_eq!(hash(&dest), hash(&db));
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o604);
    }
}

mod copy {
    use super::*;

    #[test]
    fn sparse_file_keeps_its_holes_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let f = data.join("sparse.img");
        let file = File::create(&f).unwrap();
        let mib = 1u64 << 20;
        file.write_all_at(&vec![1u8; mib as usize], 0).unwrap();
        // Data across the first chunk boundary (32 MiB).
        file.write_all_at(&vec![2u8; 3 * mib as usize / 2], 31 * mib + mib / 2)
            .unwrap();
        file.write_all_at(b"the end", 100 * mib - 7).unwrap();
        drop(file);
        let p = build("copy", &opts(Some(&dir.path().join("copies")), dir.path())).unwrap();
        let req = request(1, &[&f]);
        let loc = p.location(&req).unwrap();
        let files = p.commit(&req, &loc, &control()).unwrap();
        let view = p.expose(&loc, &files).unwrap();
        let c = view.path_of(&f).unwrap();
        let (orig, copy) = (
            std::fs::metadata(&f).unwrap(),
            std::fs::metadata(c).unwrap(),
        );
        assert_eq!(copy.len(), 100 * mib);
        assert_eq!(hash(c), hash(&f));
        eprintln!(
            "sparse: original {} blocks, copy {} blocks",
            orig.blocks(),
            copy.blocks()
        );
        assert!(
            copy.blocks() * 512 < 8 * mib,
            "holes were filled: {} bytes allocated",
            copy.blocks() * 512
        );
        // restore_file keeps the holes too.
        let dest = dir.path().join("restored.img");
        p.restore_file(&loc, &f, &dest).unwrap();
        assert_eq!(hash(&dest), hash(&f));
        assert!(std::fs::metadata(&dest).unwrap().blocks() * 512 < 8 * mib);
        assert!(p.bytes_used(&loc).unwrap() < 8 * mib);
    }

    #[test]
    fn symlinks_and_directories_keep_their_form() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("data/tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("a"), b"a").unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", tree.join("dangling")).unwrap();
        std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o711)).unwrap();
        let p = build("copy", &opts(Some(&dir.path().join("copies")), dir.path())).unwrap();
        let req = request(1, &[&tree]);
        let loc = p.location(&req).unwrap();
        p.commit(&req, &loc, &control()).unwrap();
        let in_copy = Path::new(&loc)
            .join("files")
            .join(tree.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read_link(in_copy.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        assert_eq!(
            std::fs::metadata(in_copy.join("sub")).unwrap().mode() & 0o7777,
            0o711
        );
        assert!(p.bytes_used(&loc).unwrap() > 0);
    }

    #[test]
    fn check_refuses_copies_inside_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = build(
            "copy",
            &opts(Some(&dir.path().join("data/copies")), dir.path()),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let why = p
            .check(&[dir.path().join("data")])
            .expect_err("copies inside the data")
            .reason;
        assert!(why.contains("copy itself"), "{why}");
        p.check(&[dir.path().join("data/missing.db")]).unwrap();
    }
}

/// 256 MiB on XFS: the full copy takes time proportional to the data, the reflink copy
/// is a clone whose extents are shared with the original.
#[test]
fn large_file_copy_versus_reflink_on_xfs() {
    let Some(fs) = loopfs_or_skip(
        "large_file_copy_versus_reflink_on_xfs",
        FsKind::Xfs,
        1 << 30,
    ) else {
        return;
    };
    let data = fs.mount.join("data");
    std::fs::create_dir(&data).unwrap();
    let big = data.join("big.db");
    {
        let mut f = File::create(&big).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..256u32 {
            block[..4].copy_from_slice(&i.to_le_bytes());
            block[4096..4100].copy_from_slice(&(i ^ 0x5a5a).to_le_bytes());
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let req = request(1, &[&big]);

    let p = build("copy", &opts(Some(&fs.mount.join("full")), &fs.mount)).unwrap();
    let loc = p.location(&req).unwrap();
    let t = Instant::now();
    let files = p.commit(&req, &loc, &control()).unwrap();
    let copy_took = t.elapsed();
    let full = p
        .expose(&loc, &files)
        .unwrap()
        .path_of(&big)
        .unwrap()
        .to_path_buf();

    let p = build("reflink", &opts(None, &fs.mount)).unwrap();
    p.check(&req.paths()).unwrap();
    let loc = p.location(&req).unwrap();
    let t = Instant::now();
    let files = p.commit(&req, &loc, &control()).unwrap();
    let reflink_took = t.elapsed();
    let clone = p
        .expose(&loc, &files)
        .unwrap()
        .path_of(&big)
        .unwrap()
        .to_path_buf();
    eprintln!("256 MiB on XFS: copy {copy_took:?}, reflink {reflink_took:?}");

    assert_eq!(hash(&full), hash(&big));
    assert_eq!(hash(&clone), hash(&big));
    if shadowcopy_testing::loopfs::has_tool("filefrag") {
        let shared = |p: &Path| {
            let out = std::process::Command::new("filefrag")
                .arg("-v")
                .arg(p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("shared")
        };
        assert!(shared(&clone), "the reflink copy must share its extents");
        assert!(
            !shared(&full),
            "the full copy must not share extents (no copy_file_range)"
        );
    }
}

/// A test that panics still unmounts and removes its loop file system.
#[test]
fn loopfs_is_cleaned_up_after_a_panic() {
    if !require_root("loopfs_is_cleaned_up_after_a_panic") {
        return;
    }
    let mount = std::sync::Mutex::new(PathBuf::new());
    let result = std::panic::catch_unwind(|| {
        let fs = LoopFs::new(FsKind::Ext4, 16 << 20).unwrap();
        *mount.lock().unwrap() = fs.mount.clone();
        std::fs::write(fs.mount.join("x"), b"x").unwrap();
        panic!("a test failing while its file system is mounted");
    });
    assert!(result.is_err());
    let mount = mount.into_inner().unwrap();
    assert!(!mount.as_os_str().is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mount.to_str().unwrap()),
        "{} is still mounted",
        mount.display()
    );
    assert!(
        !mount.parent().unwrap().exists(),
        "the image directory was not removed"
    );
}

mod multi {
    use super::*;
    use shadowcopy_providers::multi::{MultiVolumeProvider, Volume, MULTI};
    use shadowcopy_testing::faults::{FaultyProvider, ProviderFault};

    fn two_volumes(dir: &Path) -> (PathBuf, PathBuf) {
        let (a, b) = (dir.join("vol-a"), dir.join("vol-b"));
        for (v, content) in [(&a, b"alpha".as_slice()), (&b, b"beta".as_slice())] {
            std::fs::create_dir_all(v.join("data")).unwrap();
            std::fs::write(v.join("data/file"), content).unwrap();
        }
        (a, b)
    }

    #[test]
    fn one_copy_across_volumes_read_and_restored_from_its_location_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_volumes(dir.path());
        let o = opts(None, &dir.path().join("copies"));
        let p = MultiVolumeProvider::new(
            vec![
                Volume {
                    root: a.clone(),
                    provider: build("copy", &o).unwrap(),
                },
                Volume {
                    root: b.clone(),
                    provider: build("copy", &o).unwrap(),
                },
            ],
            &o,
        );
        let req = request(1, &[&a.join("data"), &b.join("data")]);
        p.check(&req.paths()).unwrap();
        let loc = p.location(&req).unwrap();
        let files = p.commit(&req, &loc, &control()).unwrap();
        p.persist(&loc).unwrap();
        assert_eq!(files.len(), 2);

        // Later, from the catalog: only the kind and the location.
        let later = build(MULTI, &o).unwrap();
        let view = later.expose(&loc, &files).unwrap();
        assert_eq!(
            std::fs::read(view.path_of(&b.join("data/file")).unwrap()).unwrap(),
            b"beta"
        );
        let staged = dir.path().join("staged");
        later
            .restore_file(&loc, &a.join("data/file"), &staged)
            .unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), b"alpha");
        later.delete(&loc).unwrap();
        later.delete(&loc).unwrap();
        assert!(
            std::fs::read_dir(dir.path().join("copies"))
                .unwrap()
                .next()
                .is_none(),
            "every volume's copy is gone"
        );

        let outside = request(2, &[&dir.path().join("elsewhere")]);
        assert!(p
            .location(&outside)
            .unwrap_err()
            .to_string()
            .contains("on none of the set's volumes"));
    }

    #[test]
    fn a_failure_on_the_second_volume_fails_the_commit_and_delete_discards_both() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_volumes(dir.path());
        let o = opts(None, &dir.path().join("copies"));
        let failing = Arc::new(FaultyProvider {
            inner: build("copy", &o).unwrap(),
            fault: ProviderFault::CommitAfterWriting,
        });
        let p = MultiVolumeProvider::new(
            vec![
                Volume {
                    root: a.clone(),
                    provider: build("copy", &o).unwrap(),
                },
                Volume {
                    root: b.clone(),
                    provider: failing,
                },
            ],
            &o,
        );
        let req = request(1, &[&a.join("data"), &b.join("data")]);
        let loc = p.location(&req).unwrap();
        let err = p.commit(&req, &loc, &control()).unwrap_err();
        assert!(
            err.to_string().contains(&format!("volume {}", b.display())),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("copies"))
                .unwrap()
                .count(),
            2,
            "both volumes had written"
        );
        p.delete(&loc).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("copies"))
                .unwrap()
                .count(),
            0,
            "all or nothing"
        );
    }
}

mod btrfs_nested {
    use super::*;

    #[test]
    fn a_nested_subvolume_fails_the_snapshot_instead_of_going_missing() {
        let Some(fs) = loopfs_or_skip(
            "a_nested_subvolume_fails_the_snapshot_instead_of_going_missing",
            FsKind::Btrfs,
            512 << 20,
        ) else {
            return;
        };
        let app = fs.mount.join("app");
        btrfs_subvolume_create(&app);
        btrfs_subvolume_create(&app.join("inner"));
        std::fs::write(app.join("inner/data"), b"not in a snapshot of app").unwrap();
        let p = build("btrfs", &opts(None, fs.mount.as_path())).unwrap();
        let req = request(1, &[&app]);
        let loc = p.location(&req).unwrap();
        let err = p.commit(&req, &loc, &control()).unwrap_err().to_string();
        assert!(
            err.contains("inner") && err.contains("nested subvolumes out"),
            "{err}"
        );
        p.delete(&loc).unwrap();
    }
}
