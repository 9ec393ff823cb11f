//! `shadowcopy-bench peers WORKLOAD`: shadowcopy against the tools users would pick
//! instead, on the same data, under the same load, in the same run (issue 6).
//!
//! - `sqlite`: a busy SQLite bank; shadowcopy (`copy`, `reflink`, `btrfs`) against the
//!   `sqlite3` shell's `.backup`, the online backup API in one step, and `VACUUM INTO`
//!   (see [`sqlite`]);
//! - `postgres`: a pgbench database under pgbench load; shadowcopy against `pgbackrest`
//!   (full backup and restore, default and `process-max=2`) and `pg_basebackup` with a
//!   copy restore (see [`postgres`]);
//! - `mariadb`: a MariaDB server under a ledger load; shadowcopy against `mariabackup`
//!   `--backup`, `--prepare`, `--copy-back` (see [`mariadb`]);
//! - `report`: regenerates the table and the plots from the results file.
//!
//! Within each run every method is measured once, one after the other, so each peer's
//! ratio to shadowcopy is taken between neighbours in time. Per method and run we record
//! the [`record::Figures`]: copy time, the load's longest operation during the copy and
//! in a window without one, the load's throughput in both, the time from "restore" to a
//! database answering a query with the copy's data (which is checked), and the space the
//! copy takes. Every measured size is added to a JSON results file (a new measurement of
//! the same workload and size replaces the old one), and the Markdown section
//! `bench:peers` and one PNG per workload (restore time versus size) are regenerated
//! from all of it.

mod command;
mod fragment;
mod mariadb;
mod plot;
mod postgres;
pub mod record;
mod report;
mod sqlite;

use std::path::{Path, PathBuf};

use anyhow::Context;
use shadowcopy_testing::loopfs::FsKind;

pub use command::{timed, timed_watching, used_bytes, version};
pub(crate) use postgres::{empty_dir, Pgbackrest, Repository, S3Repository};
use record::{Group, Store};

/// Options of `shadowcopy-bench peers`.
#[derive(clap::Args, Debug)]
pub struct PeersArgs {
    #[command(subcommand)]
    workload: PeerWorkload,
}

#[derive(clap::Subcommand, Debug)]
enum PeerWorkload {
    /// A busy SQLite bank: shadowcopy against sqlite3 .backup, the backup API and VACUUM INTO
    Sqlite(sqlite::SqliteArgs),
    /// pgbench under load: shadowcopy against pgbackrest and pg_basebackup
    Postgres(postgres::PostgresArgs),
    /// MariaDB under a ledger load: shadowcopy against mariabackup
    Mariadb(mariadb::MariadbArgs),
    /// Regenerate the Markdown table and the plots from the results file, measuring nothing
    Report(Output),
}

/// What every measuring workload takes.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Runs per size (each run measures every method once)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Where the loop images, catalogs and server sockets go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    pub shadowcopy: Option<PathBuf>,
    #[command(flatten)]
    pub output: Output,
}

/// Where results go.
#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// The JSON results file each measured size is added to (replacing an earlier
    /// measurement of the same workload and size)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "docs/bench-data/peers.json"
    )]
    pub results: PathBuf,
    /// Markdown file whose bench:peers section is regenerated from the results file
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Directory the PNG plots (restore time versus size, one per workload) go to
    #[arg(long, value_name = "DIR", default_value = "docs/img")]
    pub plots: PathBuf,
}

impl PeersArgs {
    /// `peers report`: nothing is measured.
    pub fn only_reports(&self) -> bool {
        matches!(self.workload, PeerWorkload::Report(_))
    }

    /// The programs the chosen workload needs (checked before anything is set up).
    pub fn tools(&self) -> Vec<&'static str> {
        match &self.workload {
            PeerWorkload::Sqlite(a) => a.tools(),
            PeerWorkload::Postgres(a) => a.tools(),
            PeerWorkload::Mariadb(a) => a.tools(),
            PeerWorkload::Report(_) => vec![],
        }
    }
}

/// Runs the chosen workload, or regenerates the report.
pub fn bench(args: &PeersArgs) -> anyhow::Result<()> {
    match &args.workload {
        PeerWorkload::Sqlite(a) => sqlite::bench(a),
        PeerWorkload::Postgres(a) => postgres::bench(a),
        PeerWorkload::Mariadb(a) => mariadb::bench(a),
        PeerWorkload::Report(output) => output.regenerate(&Store::load(&output.results)?),
    }
}

impl Output {
    /// Adds a measured group to the results file and regenerates the Markdown section
    /// and the plots; called after each size, so a later failure keeps what was measured.
    pub fn add(&self, group: Group) -> anyhow::Result<()> {
        let mut store = Store::load(&self.results)?;
        store.put(group);
        store.save(&self.results)?;
        eprintln!("added the results to {}", self.results.display());
        self.regenerate(&store)
    }

    /// Adds the finished runs of a measurement still under way (see
    /// [`Store::put_unfinished`]), so a stopped bench keeps them.
    pub fn add_unfinished(&self, group: Group) -> anyhow::Result<()> {
        let mut store = Store::load(&self.results)?;
        let (size, runs) = (group.size.clone(), group.runs());
        if !store.put_unfinished(group) {
            eprintln!(
                "{} holds a fuller measurement of {size} than these {runs} runs; it stays until \
                 this one finishes",
                self.results.display()
            );
            return Ok(());
        }
        store.save(&self.results)?;
        eprintln!("added the runs so far to {}", self.results.display());
        self.regenerate(&store)
    }

    /// Writes the plots and, with `--markdown`, the bench:peers section.
    fn regenerate(&self, store: &Store) -> anyhow::Result<()> {
        let plots = plot::draw_all(store, &self.plots)?;
        for p in &plots {
            eprintln!("wrote {}", p.display());
        }
        if let Some(md) = &self.markdown {
            let link = |workload: &str| -> Option<String> {
                let file = self.plots.join(plot::file_name(workload));
                plots
                    .contains(&file)
                    .then(|| relative_to(&file, md.parent().unwrap_or(Path::new(""))))
            };
            let section = report::markdown(store, &link);
            crate::common::write_section(md, "peers", &section)
                .with_context(|| format!("writing the comparison into {}", md.display()))?;
            eprintln!("wrote the comparison into {}", md.display());
        }
        Ok(())
    }
}

/// The file systems `methods` run on, XFS first (it gets the data, which is then copied
/// to the others).
pub fn file_systems<M>(methods: &[M], fs: impl Fn(&M) -> FsKind) -> Vec<FsKind> {
    [FsKind::Xfs, FsKind::Btrfs]
        .into_iter()
        .filter(|k| methods.iter().any(|m| fs(m) == *k))
        .collect()
}

/// `file` as a link from a document in `dir`: relative when `file` is under `dir`.
fn relative_to(file: &Path, dir: &Path) -> String {
    file.strip_prefix(dir)
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_links_are_relative_to_the_document() {
        assert_eq!(
            relative_to(
                Path::new("docs/img/peers-sqlite-restore.png"),
                Path::new("docs")
            ),
            "img/peers-sqlite-restore.png"
        );
        assert_eq!(
            relative_to(Path::new("/tmp/p.png"), Path::new("docs")),
            "/tmp/p.png"
        );
    }
}
