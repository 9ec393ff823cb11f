//! `shadowcopy-bench`: what shadowcopy costs, measured on loop-device file systems with
//! the real release binary. The workloads:
//!
//! - `sqlite` (the default, also when no workload is named): freeze window, application
//!   stall, create and restore time of a busy SQLite database (see [`sqlite`]);
//! - `sizes`: create, commit, post-snapshot and restore time of plain directories of
//!   1, 4 and 16 GiB with the `copy`, `reflink` and `btrfs` providers (see [`sizes`]);
//! - `postgres`: create, freeze window, verify and restore time (point-in-time and
//!   roll-forward) of a pgbench database under load, and pgbench's TPS with a copy every
//!   10 s against none (see [`postgres`]);
//! - `mariadb`: freeze window as shadowcopy and as a ledger load's commits see it, create
//!   phases, and roll-forward and point-in-time restore time of a busy MariaDB server
//!   (see [`mariadb`]);
//! - `peers sqlite|postgres|mariadb|report`: shadowcopy against the tools users would
//!   pick instead (sqlite3 `.backup` and `VACUUM INTO`, pgbackrest and pg_basebackup,
//!   mariabackup), same data, same load, same run; a table and plots (see [`peers`]);
//! - `agent`: the agent daemon's idle memory and CPU, its API's latency over 10,000
//!   copies, and a copy a minute of a busy SQLite bank with retention, against the same
//!   load without the agent (see [`agent`]);
//! - `server`: the backup server's job dispatch latency and CPU with 50 agents polling,
//!   a 10,000-copy catalog sync from a real agent, and what being managed costs that
//!   agent (see [`server`]);
//! - `archive`: the archive on a local S3 server, first and incremental push, restore,
//!   bytes stored and peak memory, against pgBackRest (`repo1-type=s3`) on a pgbench
//!   database and restic on a SQLite bank, in the same run (see [`archive`]);
//! - `verify`: a copy's verification building on the last verified copy against a full
//!   one, after 1 % of an 8 GiB SQLite database changed (see [`verify`]).
//!
//! All need root (loop devices, dropping caches) and exit with code 2 without it.

mod agent;
mod archive;
mod common;
mod expose;
mod mariadb;
mod peers;
mod postgres;
mod server;
mod sizes;
mod sqlite;
mod stats;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shadowcopy_testing::loopfs::has_tool;

#[derive(Parser, Debug)]
#[command(
    name = "shadowcopy-bench",
    about = "Benchmarks of shadowcopy on loop-device file systems (root only); without a workload, `sqlite`",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    workload: Option<Workload>,
    #[command(flatten)]
    sqlite: sqlite::SqliteArgs,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Freeze window, application stall, create and restore time on a busy SQLite database
    Sqlite(sqlite::SqliteArgs),
    /// Create, commit, post-snapshot and restore time versus data size (plain files)
    Sizes(sizes::SizesArgs),
    /// Create, freeze window, verify and restore time, and TPS under copies, on a pgbench database
    Postgres(postgres::PostgresArgs),
    /// Freeze window (shadowcopy's and the load's longest commit stall), create and restore time of a busy MariaDB server
    Mariadb(mariadb::MariadbArgs),
    /// shadowcopy against sqlite3 .backup/VACUUM INTO, pgbackrest/pg_basebackup and mariabackup, in the same runs
    Peers(peers::PeersArgs),
    /// The agent: idle memory and CPU, API latency over 10,000 copies, a copy a minute under load
    Agent(agent::AgentArgs),
    /// The backup server: dispatch latency and CPU with 50 polling agents, a 10,000-copy catalog sync, a managed agent's cost
    Server(server::ServerArgs),
    /// The archive on S3: push, incremental push, restore, bytes and memory, against pgBackRest and restic
    Archive(archive::ArchiveArgs),
    /// Single-item recovery beside a busy cluster: pgbench's TPS while copies are exposed, extracted from and brought forward
    Expose(expose::ExposeArgs),
    /// Verification building on the last verified copy against a full one, after a little of a large SQLite database changed
    Verify(verify::VerifyArgs),
}

/// Every workload measures on loop file systems; regenerating the peers' report does not.
fn workload_needs_root(workload: &Workload) -> bool {
    !matches!(workload, Workload::Peers(args) if args.only_reports())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workload = cli.workload.unwrap_or(Workload::Sqlite(cli.sqlite));
    if workload_needs_root(&workload) && !rustix::process::geteuid().is_root() {
        eprintln!(
            "shadowcopy-bench needs root: it mounts loop file systems and drops the page cache.\n\
             Run `sudo ./scripts/bench.sh` (or this binary under sudo)."
        );
        return ExitCode::from(2);
    }
    let tools = match &workload {
        Workload::Sqlite(_) => vec!["mkfs.xfs"],
        Workload::Sizes(args) => args.tools(),
        Workload::Postgres(args) => args.tools(),
        Workload::Mariadb(args) => args.tools(),
        Workload::Peers(args) => args.tools(),
        Workload::Agent(args) => args.tools(),
        Workload::Server(args) => args.tools(),
        Workload::Archive(args) => args.tools(),
        Workload::Expose(args) => args.tools(),
        Workload::Verify(args) => args.tools(),
    };
    if let Some(missing) = tools.iter().find(|t| !has_tool(t)) {
        eprintln!(
            "shadowcopy-bench needs {missing}; `scripts/bench.sh` installs what the workloads need \
             (or apt-get install xfsprogs btrfs-progs sqlite3 pgbackrest mariadb-backup restic stunnel4)"
        );
        return ExitCode::from(2);
    }
    let result = match &workload {
        Workload::Sqlite(args) => sqlite::bench(args),
        Workload::Sizes(args) => sizes::bench(args),
        Workload::Postgres(args) => postgres::bench(args),
        Workload::Mariadb(args) => mariadb::bench(args),
        Workload::Peers(args) => peers::bench(args),
        Workload::Agent(args) => agent::bench(args),
        Workload::Server(args) => server::bench(args),
        Workload::Archive(args) => archive::bench(args),
        Workload::Expose(args) => expose::bench(args),
        Workload::Verify(args) => verify::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowcopy-bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
