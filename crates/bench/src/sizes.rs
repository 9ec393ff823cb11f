//! `shadowcopy-bench sizes`: how create, commit, post-snapshot and restore time grow with
//! the size of the data, for the `copy`, `reflink` and `btrfs` providers.
//!
//! For each size (`--sizes`, default 1, 4 and 16 GiB) and each kind of file system the
//! providers need, a fresh loop file system is made and filled once with a directory of
//! incompressible pseudo-random files of 1 GiB each (the last one smaller if needed):
//! XFS for `copy` and `reflink` (the `copy` provider's copies go to `copies/` on the same
//! XFS), btrfs for `btrfs` (the data directory is a subvolume). Then, per provider and run:
//!
//! 1. the page cache is dropped and the real `shadowcopy create --path DATA --provider P
//!    --no-verify --json --freeze-deadline 600s` runs; we record its wall time, freeze
//!    window, commit and post-snapshot phases, and the file system's free space it used;
//! 2. the live data is damaged (the first MiB of the first file zeroed, the last file
//!    removed), the page cache dropped, and `shadowcopy restore ID --discard-current
//!    --force --json` puts the copy back; we record its wall time and `took_us`;
//! 3. the restored files must be exactly the generated ones: same names and sizes, and
//!    the first, last and a few random 1 MiB blocks of every file equal to the generator's
//!    output (each block is regenerated from its own seed) — otherwise the bench fails;
//! 4. `shadowcopy delete ID` removes the copy.
//!
//! No `--fsfreeze`: the CLI refuses clones (reflink, btrfs) on a frozen file system, so
//! this measures the providers alone, not an application's freeze. Nothing asserts on
//! time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};

use crate::common::{self, drop_caches, loadavg, micros, phase, shadowcopy};
use crate::stats::{self, human, human_bytes, Spread};

/// Size of each data file (the last one may be smaller).
const FILE_BYTES: u64 = 1 << 30;
/// Unit of generation and of the restore check; each block has its own seed.
const BLOCK: usize = 1 << 20;
/// Random blocks checked per file after a restore, besides its first and last.
const SAMPLES: usize = 4;
/// Disk space left to others when deciding whether a size fits.
const RESERVE: u64 = 2 << 30;

/// Options of the data-size workload.
#[derive(clap::Args, Debug)]
pub struct SizesArgs {
    /// Data sizes to measure, in order
    #[arg(long, value_delimiter = ',', default_value = "1GiB,4GiB,16GiB", value_parser = stats::parse_size)]
    sizes: Vec<u64>,
    /// Runs per provider and size
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Providers to measure, in order (copy, reflink, btrfs)
    #[arg(long, value_delimiter = ',', default_value = "copy,reflink,btrfs")]
    providers: Vec<String>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:sizes markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl SizesArgs {
    /// The mkfs tools the chosen providers need.
    pub fn tools(&self) -> Vec<&'static str> {
        common::mkfs_tools(&self.providers)
    }

    /// The chosen providers that run on file systems of `kind`.
    fn providers_on(&self, kind: FsKind) -> Vec<&str> {
        common::providers_on(&self.providers, kind)
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Run {
    create_wall: Duration,
    freeze_window: Duration,
    commit: Duration,
    post_snapshot: Duration,
    restore_wall: Duration,
    restore_took: Duration,
    /// Free space of the file system before create minus after it.
    used: u64,
}

/// One row of the table: a provider at a size, with its runs.
struct Row {
    provider: String,
    size: u64,
    runs: Vec<Run>,
}

/// Runs the data-size workload (as root).
pub fn bench(args: &SizesArgs) -> anyhow::Result<()> {
    if let Some(p) = args.providers.iter().find(|p| common::fs_for(p).is_none()) {
        return Err(anyhow!(
            "unknown provider `{p}` for the sizes workload (copy, reflink, btrfs)"
        ));
    }
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &size in &args.sizes {
        for kind in [FsKind::Xfs, FsKind::Btrfs] {
            let providers = args.providers_on(kind);
            if providers.is_empty() {
                continue;
            }
            // Live data, a full copy, and a restore staged beside the live files.
            let factor = if providers.contains(&"copy") { 3 } else { 2 };
            let image = size * factor + size / 8 + (1 << 30);
            let free = host_free()?;
            if free < image + RESERVE {
                let note = format!(
                    "{} on {} skipped: its image may grow to {} and {} is free in {} \
                     (keeping {} for others)",
                    human_bytes(size),
                    kind.name(),
                    human_bytes(image),
                    human_bytes(free),
                    std::env::temp_dir().display(),
                    human_bytes(RESERVE)
                );
                eprintln!("{note}");
                notes.push(note);
                continue;
            }
            let fs = LoopFs::new(kind, image).map_err(|e| anyhow!(e))?;
            let data = fs.path().join("data");
            make_data_dir(kind, &data)?;
            eprintln!(
                "{}: generating {} in {} ...",
                kind.name(),
                human_bytes(size),
                data.display()
            );
            let t = Instant::now();
            generate(&data, size)?;
            eprintln!("  done in {}", human(t.elapsed()));
            let catalog = tempfile::Builder::new()
                .prefix("shadowcopy-bench-catalog-")
                .tempdir()?;
            let ctx = Ctx {
                bin: &bin,
                catalog: catalog.path(),
                fs: &fs,
                data: &data,
                size,
            };
            for provider in providers {
                let mut runs = Vec::new();
                for i in 1..=args.runs {
                    eprintln!(
                        "{provider} at {}: run {i}/{} ...",
                        human_bytes(size),
                        args.runs
                    );
                    let run = ctx
                        .run_once(provider)
                        .with_context(|| format!("{provider} at {} run {i}", human_bytes(size)))?;
                    runs.push(run);
                }
                rows.push(Row {
                    provider: provider.to_string(),
                    size,
                    runs,
                });
            }
        }
    }

    let table = table(&rows);
    println!("{table}");
    for note in &notes {
        println!("\n{note}");
    }
    if let Some(path) = &args.markdown {
        let mut section = format!(
            "{}\n{table}\n\nCells: median (min – max) over the runs.",
            environment(args, &load_before, &loadavg())
        );
        for note in &notes {
            section += &format!("\n\n{note}");
        }
        common::write_section(path, "sizes", &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// Everything one run needs.
struct Ctx<'a> {
    bin: &'a Path,
    catalog: &'a Path,
    fs: &'a LoopFs,
    data: &'a Path,
    size: u64,
}

impl Ctx<'_> {
    fn create_args(&self, provider: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--path".into(),
            self.data.to_string_lossy().into(),
            "--provider".into(),
            provider.into(),
            "--freeze-deadline".into(),
            "600s".into(),
            "--no-verify".into(),
            "--json".into(),
        ];
        if provider == "copy" {
            args.push("--copies-dir".into());
            args.push(self.fs.path().join("copies").to_string_lossy().into());
        }
        args
    }

    fn run_once(&self, provider: &str) -> anyhow::Result<Run> {
        drop_caches()?;
        let free_before = self.fs.free_bytes();
        let t = Instant::now();
        let out = shadowcopy(
            self.bin,
            self.catalog,
            "create",
            &self.create_args(provider),
        )?;
        let create_wall = t.elapsed();
        let created: Value = serde_json::from_slice(&out.stdout).context("create --json output")?;
        ensure!(Command::new("sync").status()?.success(), "sync failed");
        let used = free_before.saturating_sub(self.fs.free_bytes());
        let id = created["id"].as_i64().context("create --json has no id")?;

        damage(self.data, self.size)?;
        drop_caches()?;
        let t = Instant::now();
        let out = shadowcopy(
            self.bin,
            self.catalog,
            "restore",
            &[
                id.to_string(),
                "--json".into(),
                "--discard-current".into(),
                "--force".into(),
            ],
        )?;
        let restore_wall = t.elapsed();
        let restored: Value =
            serde_json::from_slice(&out.stdout).context("restore --json output")?;
        check_data(self.data, self.size)?;
        shadowcopy(self.bin, self.catalog, "delete", &[id.to_string()])?;

        let run = Run {
            create_wall,
            freeze_window: micros(&created["freeze_window_us"])?,
            commit: phase(&created, "commit")?,
            post_snapshot: phase(&created, "post-snapshot")?,
            restore_wall,
            restore_took: micros(&restored["took_us"])?,
            used,
        };
        eprintln!(
            "  create {} (commit {}, post-snapshot {}), used {}, restore {} ({})",
            human(run.create_wall),
            human(run.commit),
            human(run.post_snapshot),
            human_bytes(run.used),
            human(run.restore_wall),
            common::restore_steps(&restored),
        );
        Ok(run)
    }
}

/// Bytes free for others in the directory the loop images go to.
fn host_free() -> anyhow::Result<u64> {
    let s = rustix::fs::statvfs(std::env::temp_dir()).context("statvfs of the temp dir")?;
    Ok(s.f_bavail * s.f_frsize)
}

/// Makes the data directory: a plain directory on XFS, a subvolume on btrfs (the
/// `btrfs` provider snapshots the subvolume that holds the data).
fn make_data_dir(kind: FsKind, data: &Path) -> anyhow::Result<()> {
    if kind == FsKind::Btrfs {
        let out = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(data)
            .output()
            .context("cannot run btrfs")?;
        ensure!(
            out.status.success(),
            "btrfs subvolume create {} failed: {}",
            data.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    } else {
        std::fs::create_dir(data).with_context(|| format!("creating {}", data.display()))
    }
}

/// The data files of `size` bytes: `(name, length)`, 1 GiB each, the last one smaller.
fn files(size: u64) -> Vec<(String, u64)> {
    (0..size.div_ceil(FILE_BYTES))
        .map(|i| {
            let len = (size - i * FILE_BYTES).min(FILE_BYTES);
            (format!("part-{i:03}.bin"), len)
        })
        .collect()
}

/// The pseudo-random content of block `index` of the data set (counted over all files).
fn block(index: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK];
    StdRng::seed_from_u64(0x5348_4144_4f57 ^ index).fill_bytes(&mut buf);
    buf
}

fn block_index(file: usize, offset: u64) -> u64 {
    (file as u64 * FILE_BYTES + offset) / BLOCK as u64
}

/// Writes the data files into `dir` and makes them durable.
fn generate(dir: &Path, size: u64) -> anyhow::Result<()> {
    for (i, (name, len)) in files(size).into_iter().enumerate() {
        let path = dir.join(name);
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(BLOCK as u64) as usize;
            f.write_all(&block(block_index(i, offset))[..n])
                .with_context(|| format!("writing {}", path.display()))?;
            offset += n as u64;
        }
        f.sync_all()?;
    }
    Ok(())
}

/// Damages the live data so that only a real restore passes [`check_data`]: zeroes the
/// first MiB of the first file and removes the last file.
fn damage(dir: &Path, size: u64) -> anyhow::Result<()> {
    let files = files(size);
    let first = dir.join(&files[0].0);
    let n = files[0].1.min(BLOCK as u64) as usize;
    OpenOptions::new()
        .write(true)
        .open(&first)?
        .write_all_at(&vec![0u8; n], 0)
        .with_context(|| format!("damaging {}", first.display()))?;
    let last = dir.join(&files[files.len() - 1].0);
    std::fs::remove_file(&last).with_context(|| format!("removing {}", last.display()))
}

/// Fails unless `dir` holds exactly the generated files with their sizes, and the first,
/// last and [`SAMPLES`] random blocks of each equal the generator's output.
fn check_data(dir: &Path, size: u64) -> anyhow::Result<()> {
    let expected = files(size);
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.retain(|n| n != ".shadowcopy");
    names.sort();
    let want: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(
        names == want,
        "RESTORE IS WRONG: {} holds {names:?}, expected {want:?}",
        dir.display()
    );
    let mut rng = rand::rng();
    for (i, (name, len)) in expected.iter().enumerate() {
        let path = dir.join(name);
        let mut f = File::open(&path)?;
        let actual = f.metadata()?.len();
        ensure!(
            actual == *len,
            "RESTORE IS WRONG: {} has {actual} bytes, expected {len}",
            path.display()
        );
        let blocks = len.div_ceil(BLOCK as u64);
        let mut picks = vec![0, blocks - 1];
        picks.extend((0..SAMPLES).map(|_| rng.random_range(0..blocks)));
        for b in picks {
            let offset = b * BLOCK as u64;
            let n = (len - offset).min(BLOCK as u64) as usize;
            let mut got = vec![0u8; n];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut got)?;
            ensure!(
                got == block(block_index(i, offset))[..n],
                "RESTORE IS WRONG: {} differs from the original in the MiB at offset {offset}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Median, min and max of a byte count, like [`Spread::cell`].
fn bytes_cell(values: &[u64]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.last()) {
        (Some(min), Some(max)) if min != max => format!(
            "{} ({} – {})",
            human_bytes(v[v.len() / 2]),
            human_bytes(*min),
            human_bytes(*max)
        ),
        (Some(min), _) => human_bytes(*min),
        _ => "–".into(),
    }
}

/// One column of the table: a label and how to read the figure from a run.
type Figure = (&'static str, fn(&Run) -> Duration);

const FIGURES: [Figure; 6] = [
    ("create, wall", |r| r.create_wall),
    ("freeze window", |r| r.freeze_window),
    ("commit phase", |r| r.commit),
    ("post-snapshot (persist)", |r| r.post_snapshot),
    ("restore, wall", |r| r.restore_wall),
    ("restore, took_us", |r| r.restore_took),
];

/// The results as a Markdown table, one row per provider and size.
fn table(rows: &[Row]) -> String {
    let mut t = String::from("| provider | data |");
    for (label, _) in FIGURES {
        t += &format!(" {label} |");
    }
    t += " space used by the copy |\n|---|---|";
    t += &"---|".repeat(FIGURES.len() + 1);
    for row in rows {
        t += &format!("\n| {} | {} |", row.provider, human_bytes(row.size));
        for (_, get) in FIGURES {
            let values: Vec<Duration> = row.runs.iter().map(get).collect();
            let cell = Spread::of(&values).map_or("–".into(), |s| s.cell());
            t += &format!(" {cell} |");
        }
        let used: Vec<u64> = row.runs.iter().map(|r| r.used).collect();
        t += &format!(" {} |", bytes_cell(&used));
    }
    t
}

/// Date, machine, version and workload, as a Markdown list.
fn environment(args: &SizesArgs, load_before: &str, load_after: &str) -> String {
    format!(
        "{common}\
         - data: a directory of files of 1 GiB each of pseudo-random bytes (ChaCha12, rand's StdRng), \
           made once per size and file system; `copy` and `reflink` on one XFS (`copy` puts its copies \
           in `copies/` on that XFS), `btrfs` on a btrfs whose data directory is a subvolume\n\
         - create: `shadowcopy create --path DATA --provider P --freeze-deadline 600s --no-verify --json`, \
           no writer and no `--fsfreeze`; restore: `restore ID --discard-current --force --json`\n\
         - runs: {runs} per provider and size; page cache dropped before each create and each restore \
           (`sync; echo 3 > /proc/sys/vm/drop_caches`)\n",
        common = common::environment(
            "XFS and btrfs file systems, each",
            load_before,
            load_after
        ),
        runs = args.runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_gib_with_a_smaller_last_one() {
        assert_eq!(files(FILE_BYTES).len(), 1);
        let f = files(2 * FILE_BYTES + 5);
        assert_eq!(f.len(), 3);
        assert_eq!(f[2], ("part-002.bin".to_string(), 5));
    }

    #[test]
    fn check_passes_only_on_the_generated_data() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * BLOCK as u64 + 100;
        generate(dir.path(), size).unwrap();
        check_data(dir.path(), size).unwrap();
        damage(dir.path(), size).unwrap();
        assert!(check_data(dir.path(), size).is_err(), "file removed");
        generate(dir.path(), size).unwrap();
        let f = dir.path().join("part-000.bin");
        // The first and last block of every file are always checked.
        OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .write_all_at(b"x", size - 1)
            .unwrap();
        assert!(check_data(dir.path(), size).is_err(), "last byte changed");
    }
}
