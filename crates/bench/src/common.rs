//! What both workloads share: finding and running the `shadowcopy` binary, reading its
//! `--json` output, dropping the page cache, describing the machine, and writing a
//! result section between its markers in a Markdown file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::FsKind;
use std::time::Duration;

/// The `shadowcopy` binary: `explicit`, else the one beside this binary.
pub fn shadowcopy_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("shadowcopy"),
    };
    ensure!(
        bin.is_file(),
        "{} not found; run `cargo build --release -p shadowcopy` first or pass --shadowcopy",
        bin.display()
    );
    Ok(bin)
}

/// Runs `shadowcopy SUB REST... --catalog CATALOG`; a failure is an error with its stderr.
pub fn shadowcopy(
    bin: &Path,
    catalog: &Path,
    sub: &str,
    rest: &[String],
) -> anyhow::Result<Output> {
    let out = Command::new(bin)
        .arg(sub)
        .args(rest)
        .arg("--catalog")
        .arg(catalog)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "`shadowcopy {sub} {}` failed ({}): {}",
        rest.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A JSON number of microseconds.
pub fn micros(v: &Value) -> anyhow::Result<Duration> {
    v.as_u64()
        .map(Duration::from_micros)
        .ok_or_else(|| anyhow!("expected microseconds, got {v}"))
}

/// The time of phase `name` in the output of `create --json`.
pub fn phase(created: &Value, name: &str) -> anyhow::Result<Duration> {
    let phases = created["phases"].as_array().context("no phases")?;
    let p = phases
        .iter()
        .find(|p| p["phase"] == name)
        .with_context(|| format!("no {name} phase in the create output"))?;
    micros(&p["took_us"])
}

/// The steps of `restore --json` with their times, for the log.
pub fn restore_steps(restored: &Value) -> String {
    restored["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|st| {
                    let took = Duration::from_micros(st["took_us"].as_u64().unwrap_or(0));
                    format!(
                        "{} {}",
                        st["phase"].as_str().unwrap_or("?"),
                        crate::stats::human(took)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Makes `dir` (when given) the temp dir: loop images, catalogs and the servers' sockets
/// all go through tempfile, which follows TMPDIR. Call it before anything else runs.
pub fn use_dir(dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::env::set_var("TMPDIR", std::fs::canonicalize(dir)?);
    }
    Ok(())
}

/// Writes dirty pages out and empties the page cache, so every run starts cold.
pub fn drop_caches() -> anyhow::Result<()> {
    ensure!(Command::new("sync").status()?.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop the page cache")
}

/// The first line of a command's output, or `?` when it cannot run.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Date, machine, disk, load and version as Markdown list items; `file_systems` says
/// what sits on the loop devices (e.g. "an XFS file system").
pub fn environment(file_systems: &str, load_before: &str, load_after: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem_gib = sh("free", &["-g"])
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let tmp = std::env::temp_dir();
    let host_disk = sh(
        "findmnt",
        &["-no", "SOURCE,FSTYPE", "-T", &tmp.to_string_lossy()],
    );
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut rev = sh("git", &["-C", workspace, "rev-parse", "--short", "HEAD"]);
    if !sh(
        "git",
        &[
            "-C",
            workspace,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty()
    {
        rev += " (with uncommitted changes)";
    }
    format!(
        "- date: {date}\n\
         - machine: {nproc} CPUs ({cpu}), {mem_gib} GiB RAM (`free -g`), kernel {kernel}\n\
         - disk: {file_systems} on a loop device whose image file is in {tmp} on the host's disk ({host_disk})\n\
         - load average (1/5/15 min) before / after the bench: {load_before} / {load_after}\n\
         - shadowcopy: git {rev}, release build\n",
        date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        nproc = sh("nproc", &[]),
        kernel = sh("uname", &["-r"]),
        tmp = tmp.display(),
    )
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`
/// in `path` (appending the marked section when the file or the markers are missing).
pub fn write_section(path: &Path, name: &str, section: &str) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name}:start -->"),
        format!("<!-- bench:{name}:end -->"),
    );
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let block = format!("{start}\n{section}\n{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{block}{}", &old[..a], &old[b + end.len()..])
        }
        (None, None) => format!("{old}\n{block}\n"),
        _ => bail!(
            "{} has the bench:{name} markers out of order or only one of them",
            path.display()
        ),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// The loop file system a provider is measured on (`copy` and `reflink` on XFS, `btrfs`
/// on btrfs); `None` for a provider no workload measures.
pub fn fs_for(provider: &str) -> Option<FsKind> {
    match provider {
        "copy" | "reflink" => Some(FsKind::Xfs),
        "btrfs" => Some(FsKind::Btrfs),
        _ => None,
    }
}

/// The chosen providers that run on file systems of `kind`, in the order given.
pub fn providers_on(providers: &[String], kind: FsKind) -> Vec<&str> {
    providers
        .iter()
        .map(String::as_str)
        .filter(|p| fs_for(p) == Some(kind))
        .collect()
}

/// The mkfs tools the chosen providers need.
pub fn mkfs_tools(providers: &[String]) -> Vec<&'static str> {
    [(FsKind::Xfs, "mkfs.xfs"), (FsKind::Btrfs, "mkfs.btrfs")]
        .into_iter()
        .filter(|(kind, _)| !providers_on(providers, *kind).is_empty())
        .map(|(_, tool)| tool)
        .collect()
}
