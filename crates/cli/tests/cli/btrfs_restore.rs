//! In-place restore of a btrfs copy: a set that holds a whole subvolume gets the
//! subvolume swapped (files created after the copy disappear, the replaced subvolume is
//! kept as a pre-restore snapshot); a set that holds part of one is restored file by file.

use std::path::{Path, PathBuf};

use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};

use crate::support::Cli;

struct Subvolume {
    _fs: LoopFs,
    path: PathBuf,
}

fn subvolume(test: &str) -> Option<Subvolume> {
    let fs = loopfs_or_skip(test, FsKind::Btrfs, 512 << 20)?;
    let path = fs.path().join("data");
    btrfs(&["subvolume", "create"], &path);
    std::fs::create_dir(path.join("dir")).unwrap();
    std::fs::write(path.join("a"), vec![b'a'; 1 << 20]).unwrap();
    std::fs::write(path.join("b"), b"bee").unwrap();
    std::fs::write(path.join("dir").join("c"), b"sea").unwrap();
    Some(Subvolume { _fs: fs, path })
}

fn btrfs(args: &[&str], path: &Path) -> String {
    let out = std::process::Command::new("btrfs")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subvolume id of the subvolume at `path`: a swap changes it, a file-by-file
/// restore does not.
fn subvolume_id(path: &Path) -> u64 {
    btrfs(&["inspect-internal", "rootid"], path)
        .trim()
        .parse()
        .unwrap()
}

/// Every file under `root` (relative path → content), leaving out nothing.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Changes, removes and adds files, so the state differs from the copy's every way.
fn change(data: &Path) {
    std::fs::write(data.join("a"), b"changed").unwrap();
    std::fs::remove_file(data.join("b")).unwrap();
    std::fs::write(data.join("new"), b"created after the copy").unwrap();
    std::fs::write(data.join("dir").join("d"), b"also new").unwrap();
}

fn create(cli: &Cli, path: &Path) -> i64 {
    let created = cli.json(&[
        "create",
        "--path",
        path.to_str().unwrap(),
        "--provider",
        "btrfs",
        "--json",
    ]);
    created["id"].as_i64().unwrap()
}

#[test]
fn whole_subvolume_restore_swaps_the_subvolume_and_keeps_the_replaced_one() {
    let Some(v) = subvolume("whole_subvolume_restore_swaps_the_subvolume") else {
        return;
    };
    let cli = Cli::new();
    let at_copy = tree(&v.path);
    let id = create(&cli, &v.path);
    let shown = cli.json(&["show", &id.to_string(), "--json"]);
    let location = shown["location"].as_str().unwrap().to_string();
    assert!(
        !Path::new(&location).starts_with(&v.path),
        "the snapshot lives outside the subvolume it copies: {location}"
    );

    change(&v.path);
    let changed = tree(&v.path);
    let live_id = subvolume_id(&v.path);
    let restored = cli.json(&["restore", &id.to_string(), "--json"]);
    assert_eq!(tree(&v.path), at_copy, "the subvolume is exactly the copy");
    assert_ne!(
        subvolume_id(&v.path),
        live_id,
        "the live subvolume was swapped, not rewritten file by file"
    );
    let steps = restored["steps"].to_string();
    assert!(steps.contains("swap"), "{steps}");
    let leftovers: Vec<_> = std::fs::read_dir(v.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("shadowcopy-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The replaced state is a pre-restore copy; restoring it undoes the restore.
    let pre = restored["pre_restore"]
        .as_i64()
        .expect("a pre-restore copy");
    cli.ok(&["restore", &pre.to_string(), "--discard-current"]);
    assert_eq!(
        tree(&v.path),
        changed,
        "the pre-restore copy undoes the restore"
    );

    // Both copies stay usable and are deleted with their snapshots.
    let listed = cli.json(&["list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    cli.ok(&["delete", &id.to_string(), &pre.to_string()]);
    assert!(!Path::new(&location).exists());
}

#[test]
fn a_restore_interrupted_mid_swap_is_finished_by_the_next_one() {
    let Some(v) = subvolume("a_restore_interrupted_mid_swap_is_finished_by_the_next_one") else {
        return;
    };
    let cli = Cli::new();
    let at_copy = tree(&v.path);
    let id = create(&cli, &v.path);
    change(&v.path);
    // What a restore killed between cloning the copy and deleting the replaced
    // subvolume leaves beside the live one.
    let leftover = v.path.with_file_name(".data.shadowcopy-restore");
    btrfs(&["subvolume", "create"], &leftover);
    std::fs::write(leftover.join("stale"), b"from the interrupted restore").unwrap();

    cli.ok(&["restore", &id.to_string(), "--discard-current"]);
    assert_eq!(tree(&v.path), at_copy);
    assert!(!leftover.exists(), "the leftover subvolume is removed");
}

#[test]
fn part_of_a_subvolume_is_restored_file_by_file() {
    let Some(v) = subvolume("part_of_a_subvolume_is_restored_file_by_file") else {
        return;
    };
    let cli = Cli::new();
    let dir = v.path.join("dir");
    let id = create(&cli, &dir);
    std::fs::write(dir.join("c"), b"changed").unwrap();
    std::fs::write(v.path.join("a"), b"outside the set").unwrap();
    let live_id = subvolume_id(&v.path);

    let out = cli.ok(&["restore", &id.to_string()]);
    assert!(
        out.contains("restoring file by file: the set holds part of the subvolume"),
        "{out}"
    );
    assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"sea");
    assert_eq!(
        std::fs::read(v.path.join("a")).unwrap(),
        b"outside the set",
        "files outside the set are not rolled back"
    );
    assert_eq!(subvolume_id(&v.path), live_id, "no swap");
}

#[test]
fn copies_stored_inside_the_subvolume_are_restored_file_by_file() {
    let Some(v) = subvolume("copies_stored_inside_the_subvolume_are_restored_file_by_file") else {
        return;
    };
    let cli = Cli::new();
    let inside = v.path.join(".shadowcopy").join("snapshots");
    let created = cli.json(&[
        "create",
        "--path",
        v.path.to_str().unwrap(),
        "--provider",
        "btrfs",
        "--copies-dir",
        inside.to_str().unwrap(),
        "--json",
    ]);
    let id = created["id"].as_i64().unwrap();
    std::fs::write(v.path.join("a"), b"changed").unwrap();
    let out = cli.ok(&["restore", &id.to_string(), "--discard-current"]);
    assert!(out.contains("set copies_dir outside it"), "{out}");
    assert_eq!(
        std::fs::read(v.path.join("a")).unwrap(),
        vec![b'a'; 1 << 20]
    );
}
