//! `shadowcopy pg …`: the PostgreSQL side of the tool. `archive-push` and `archive-get`
//! are what the server's `archive_command` and `restore_command` call; `setup` prints
//! (or applies) the settings that make a cluster archive its WAL there.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shadowcopy_postgres::archive::{Got, Pushed, WalArchive};
use shadowcopy_postgres::cluster;

use crate::errors::UsageError;
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
}

pub fn run(_g: &GlobalArgs, args: PgArgs) -> anyhow::Result<()> {
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
    }
}

fn setup(url: &str, archive: &std::path::Path, apply: bool) -> anyhow::Result<()> {
    let archive = std::path::absolute(archive).context("resolving the archive directory")?;
    let mut client = cluster::connect(url)?;
    let layout = cluster::discover(&mut client, url)?;
    let exe = std::env::current_exe().context("finding the shadowcopy program")?;
    let command = format!(
        "{} pg archive-push --archive {} %p",
        exe.display(),
        archive.display()
    );
    let settings = [
        ("archive_mode", "on".to_string()),
        ("archive_command", command),
    ];
    if !apply {
        println!(
            "# postgresql.conf settings for {} (or run with --apply):",
            layout.data_dir.display()
        );
        for (k, v) in &settings {
            println!("{k} = '{}'", v.replace('\'', "''"));
        }
        println!("# then restart the server if archive_mode changed, and create the archive with --apply");
        return Ok(());
    }
    WalArchive::create(&archive)?;
    if rustix::process::geteuid().is_root() {
        for entry in walkdir::WalkDir::new(&archive) {
            let entry = entry?;
            std::os::unix::fs::chown(entry.path(), Some(layout.owner_uid), Some(layout.owner_gid))
                .with_context(|| {
                    format!("giving {} to the cluster's owner", entry.path().display())
                })?;
        }
    }
    for (k, v) in &settings {
        client
            .simple_query(&format!(
                "ALTER SYSTEM SET {k} = '{}'",
                v.replace('\'', "''")
            ))
            .with_context(|| format!("ALTER SYSTEM SET {k}"))?;
    }
    client.simple_query("SELECT pg_reload_conf()")?;
    let mode: String = client.query_one("SHOW archive_mode", &[])?.get(0);
    println!("archive {} created; archive_command set", archive.display());
    if mode != "on" {
        println!("archive_mode is set to on but takes effect at the next server restart");
    }
    Ok(())
}
