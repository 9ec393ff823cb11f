//! `shadowcopy pg …`: the PostgreSQL side of the tool. `archive-push` and `archive-get`
//! are what the server's `archive_command` and `restore_command` call; `setup` prints
//! (or applies) the settings that make a cluster archive its WAL there; `log-analysis`
//! tells what WAL a copy's restores would find.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shadowcopy_engine::UsageError;
use shadowcopy_postgres::archive::{Got, Pushed, WalArchive};
use shadowcopy_postgres::log_analysis::{Found, LogAnalysis};

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct PgArgs {
    #[command(subcommand)]
    pub command: PgCommand,
}

#[derive(Subcommand, Debug)]
pub enum PgCommand {
    /// Store one WAL file in the archive (archive_command = '… archive-push --archive DIR %p')
    ArchivePush {
        /// The archive directory
        #[arg(long, value_name = "DIR")]
        archive: PathBuf,
        /// The WAL file (%p); it is stored under its file name
        path: PathBuf,
    },
    /// Fetch one WAL file from the archive (restore_command = '… archive-get --archive DIR %f %p'); exit 1 when the archive does not hold it
    ArchiveGet {
        #[arg(long, value_name = "DIR")]
        archive: PathBuf,
        /// The file name (%f)
        name: String,
        /// Where to write it (%p)
        dest: PathBuf,
    },
    /// Print the settings that make a cluster archive its WAL into DIR; --apply sets them
    Setup {
        /// libpq URL of a superuser connection
        url: String,
        #[arg(long, value_name = "DIR")]
        archive: PathBuf,
        /// Create the archive and set archive_mode and archive_command with ALTER SYSTEM
        #[arg(long)]
        apply: bool,
    },
    /// For one copy: the WAL after it (in the copy, the archive, the live pg_wal), where
    /// the chain has holes, and what point-in-time and roll-forward restores would reach
    LogAnalysis {
        /// The copy's id
        id: i64,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

impl PgArgs {
    /// Whether the command prints JSON (`log-analysis --json`).
    pub fn json(&self) -> bool {
        matches!(self.command, PgCommand::LogAnalysis { json: true, .. })
    }
}

pub fn run(g: &GlobalArgs, args: PgArgs) -> anyhow::Result<()> {
    match args.command {
        PgCommand::ArchivePush { archive, path } => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| UsageError::new(format!("{} names no file", path.display())))?;
            let store = WalArchive::open(&archive)?;
            match store.push(&path, &name)? {
                Pushed::Stored { .. } | Pushed::AlreadyArchived => Ok(()),
            }
        }
        PgCommand::ArchiveGet {
            archive,
            name,
            dest,
        } => {
            let store = WalArchive::open(&archive)?;
            match store.get(&name, &dest)? {
                Got::Restored { .. } => Ok(()),
                // PostgreSQL asks for files that do not exist (the next segment, a
                // history file); "not here" is exit 1 without a message.
                Got::NotFound => std::process::exit(1),
            }
        }
        PgCommand::Setup {
            url,
            archive,
            apply,
        } => setup(&url, &archive, apply),
        PgCommand::LogAnalysis { id, json } => log_analysis(g, id, json),
    }
}

fn log_analysis(g: &GlobalArgs, id: i64, json: bool) -> anyhow::Result<()> {
    let analysis = g.engine()?.pg_log_analysis(id)?;
    if json {
        return g.output(json).print_json(&analysis);
    }
    print_analysis(id, &analysis);
    Ok(())
}

fn print_analysis(id: i64, a: &LogAnalysis) {
    let range = |f: &Found| match (&f.first, &f.last) {
        (Some(first), Some(last)) if first == last => format!("{first} (1 segment)"),
        (Some(first), Some(last)) => format!("{first} .. {last} ({} segments)", f.count),
        _ => "none".to_string(),
    };
    println!("copy {id} of the cluster in {}", a.data_dir.display());
    println!(
        "  replay starts at {} (from its {}){}",
        a.start_segment,
        a.start_from,
        a.backup
            .start_time
            .as_deref()
            .map(|t| format!("; backup started {t}"))
            .unwrap_or_default()
    );
    println!("  WAL in the copy      {}", range(&a.in_copy));
    match &a.archive {
        Some(f) => println!("  WAL in the archive   {} in {}", range(f), f.dir.display()),
        None => {
            println!("  WAL in the archive   no archive for this set (create with --pg-archive)")
        }
    }
    match &a.live {
        Some(f) => println!("  WAL in live pg_wal   {} in {}", range(f), f.dir.display()),
        None => println!("  WAL in live pg_wal   none: the WAL directory is gone"),
    }
    println!("a restore would reach:");
    let pit = &a.point_in_time;
    match (&pit.stop_lsn, &pit.stop_time) {
        (Some(lsn), Some(time)) => {
            println!("  point-in-time  the end of the backup: {lsn} ({time})")
        }
        _ => println!(
            "  point-in-time  the end of the copy's WAL{}",
            pit.last_segment
                .as_deref()
                .map(|s| format!(" (segment {s})"))
                .unwrap_or_default()
        ),
    }
    let rf = &a.roll_forward;
    match &rf.last_segment {
        Some(last) => println!(
            "  roll-forward   the end of segment {last} on timeline {}{}",
            rf.timeline,
            rf.newest_commit
                .as_ref()
                .map(|c| format!(": newest commit xid {} at {} ({})", c.xid, c.lsn, c.time))
                .unwrap_or_default()
        ),
        None => println!(
            "  roll-forward   nothing beyond the copy: {} is missing",
            rf.first_missing
        ),
    }
    if rf.holes.is_empty() {
        println!("                 the chain has no holes; replay stops where the WAL ends ({} is not there yet)", rf.first_missing);
    } else {
        for h in &rf.holes {
            println!(
                "  HOLE           {} .. {} ({} segments) are missing everywhere",
                h.first, h.last, h.segments
            );
        }
        println!(
            "                 {} segment(s) after the first hole cannot be replayed; use --until to stop before it, or find the missing WAL",
            rf.unreachable_segments
        );
    }
}

fn setup(url: &str, archive: &std::path::Path, apply: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the shadowcopy program")?;
    let setup = shadowcopy_engine::postgres::archive_setup(url, archive, &exe, apply)?;
    if !setup.applied {
        println!(
            "# postgresql.conf settings for {} (or run with --apply):",
            setup.data_dir.display()
        );
        for (k, v) in &setup.settings {
            println!("{k} = '{}'", v.replace('\'', "''"));
        }
        println!("# then restart the server if archive_mode changed, and create the archive with --apply");
        return Ok(());
    }
    println!(
        "archive {} created; archive_command set",
        setup.archive.display()
    );
    if setup.restart_needed {
        println!("archive_mode is set to on but takes effect at the next server restart");
    }
    Ok(())
}
