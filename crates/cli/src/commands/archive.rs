//! `shadowcopy archive`: copies kept off the host (docs/archive-format.md). `init URL`
//! makes a repository, `push ID` sends a copy (incremental, encrypted), `list` shows the
//! archived copies (without the catalog: a new host can list and restore), `restore
//! ARCHIVED --to DIR` brings one back, `verify` checks the repository. The passphrase
//! comes from SHADOWCOPY_ARCHIVE_PASSWORD or --password-file, as restic's does; it is
//! never printed, logged or recorded.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use shadowcopy_core::error::humanize;
use shadowcopy_core::secret::Secret;
use shadowcopy_engine::{UsageError, WaitOptions};

use crate::output::{local_time, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub command: ArchiveCommand,
    /// The repository: s3://BUCKET/PREFIX (endpoint and credentials from AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a directory; default: the
    /// set's `archive`, else [defaults] archive
    #[arg(long, global = true, value_name = "URL", env = "SHADOWCOPY_ARCHIVE")]
    pub archive: Option<String>,
    /// Read the passphrase from this file's first line (else SHADOWCOPY_ARCHIVE_PASSWORD,
    /// else [defaults] archive_password_file)
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Print as JSON
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Make a repository at URL (or --archive), with one passphrase
    Init {
        /// s3://BUCKET/PREFIX or a directory
        url: Option<String>,
    },
    /// Send a copy to the repository (only what it does not hold yet)
    Push {
        /// The copy's id
        id: i64,
        #[command(flatten)]
        wait: WaitOptions,
    },
    /// The archived copies (reads the repository, not the catalog)
    List,
    /// Restore an archived copy: in place (it becomes a verified local copy, restored by
    /// the usual safe swap), or into a directory (its tree below DIR)
    Restore {
        /// The archived copy's id (or a unique prefix), as `archive list` shows it
        archived: String,
        /// A new or empty directory, instead of in place
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// In place: restore even while the data is held open
        #[arg(long, conflicts_with = "to")]
        force: bool,
        /// In place: do not keep the state being replaced as a pre-restore copy
        #[arg(long, conflicts_with = "to")]
        discard_current: bool,
        /// In place: point-in-time, or roll-forward (replay the logs kept since: the WAL
        /// archive, which `archive get-logs` fills after a host was lost)
        #[arg(long, value_name = "MODE", value_enum, default_value_t = shadowcopy_engine::restore::Mode::PointInTime, conflicts_with = "to")]
        mode: shadowcopy_engine::restore::Mode,
        /// With --mode roll-forward: where replay stops (as `restore --until`)
        #[arg(long, value_name = "TARGET", conflicts_with = "to")]
        until: Option<String>,
        #[command(flatten)]
        wait: WaitOptions,
    },
    /// Send what the repository lacks of a set's logs: its WAL archive's files
    /// (PostgreSQL), or the binary logs the server has closed (MariaDB)
    PushLogs {
        /// The set
        #[arg(long)]
        set: String,
        /// The WAL archive directory (default: the set's, from its config or newest copy)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write a set's archived logs back (for a roll-forward restore after the host was
    /// lost): WAL into its WAL archive directory, binary logs where its copies recorded
    /// them, with the server's binlog index
    GetLogs {
        #[arg(long)]
        set: String,
        /// The WAL archive directory (it must exist, owned by the database's user)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Delete the archived copies each set's archive_retention does not keep, and free
    /// what no kept copy uses (in two phases: a later prune deletes what this one frees)
    Prune {
        /// Apply each set's `archive_retention` (a set without one keeps all)
        #[arg(long, required = true)]
        policy: bool,
        /// Space is given back only this long after it was freed: longer than any push
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = shadowcopy_engine::parse_duration)]
        grace: shadowcopy_engine::HumanDuration,
        /// Show the decisions, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// The repository's keys: list, add a passphrase, remove one
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Check the repository: every archived copy's blocks indexed and stored
    Verify {
        /// Also read every pack and check every block
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Also read this share of the packs (e.g. 5%), a different share each run
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        read_data_subset: Option<f64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// The keys (ids, labels; never the keys themselves)
    List,
    /// Add a passphrase (from SHADOWCOPY_ARCHIVE_NEW_PASSWORD or --new-password-file)
    Add {
        /// Read the new passphrase from this file's first line
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        /// A name for it (who holds it)
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Remove a key (not the one in use, not the last)
    Remove {
        /// The key's id (or a unique prefix)
        id: String,
    },
}

/// A passphrase from `file`, else the environment variable `var`.
fn passphrase_from(file: Option<&PathBuf>, var: &str, flag: &str) -> anyhow::Result<Secret> {
    if let Some(file) = file {
        return Secret::read_file(file).map_err(|e| {
            UsageError::new(format!(
                "cannot read a passphrase from {}: {e}",
                file.display()
            ))
            .into()
        });
    }
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Secret::new(p)),
        _ => Err(UsageError::new(format!(
            "a passphrase is needed: set {var} or give {flag} FILE"
        ))
        .into()),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage such as 5%"))?;
    if !(n > 0.0 && n <= 100.0) {
        return Err(format!("{s:?}: give a share above 0% and at most 100%"));
    }
    Ok(n / 100.0)
}

impl ArchiveArgs {
    fn passphrase(&self, engine: &shadowcopy_engine::Engine) -> anyhow::Result<Secret> {
        engine.archive_passphrase(self.password_file.as_deref())
    }
}

pub fn run(g: &GlobalArgs, args: ArchiveArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let passphrase = args.passphrase(&engine)?;
    match &args.command {
        ArchiveCommand::Init { url } => {
            let url = engine.archive_url(url.as_deref().or(args.archive.as_deref()), None)?;
            let made = engine.archive_init(&url, &passphrase)?;
            if out.json {
                return out.print_json(&made);
            }
            if !out.quiet {
                println!(
                    "archive {} made at {} (key {}); keep its passphrase: without it nothing in it can be read",
                    made.id, made.url, made.key
                );
            }
        }
        ArchiveCommand::Push { id, wait } => {
            let set = engine.show(*id).ok().map(|c| c.summary.set);
            let url = engine.archive_url(args.archive.as_deref(), set.as_deref())?;
            let printer = PhasePrinter::new(out, "");
            let report = engine.archive_push(*id, &url, &passphrase, wait, &printer);
            printer.finish();
            let report = report?;
            if out.json {
                return out.print_json(&report);
            }
            if !out.quiet {
                println!(
                    "copy {id} archived as {} in {}: {} files ({} unchanged), {} bytes read, {} new blocks, {} bytes sent in {} packs",
                    report.manifest,
                    humanize(report.took),
                    report.files,
                    report.files_unchanged,
                    report.bytes_read,
                    report.blocks_new,
                    report.bytes_uploaded,
                    report.packs
                );
            }
        }
        ArchiveCommand::List => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            let copies = engine.archive_list(&url, &passphrase)?;
            if out.json {
                return out.print_json(&copies);
            }
            if copies.is_empty() {
                if !out.quiet {
                    println!("no archived copies in {url}");
                }
                return Ok(());
            }
            println!(
                "{:<16}  {:<16} {:<16} {:>6}  {:<19}  {:>6} {:>14}",
                "ARCHIVED", "HOST", "SET", "COPY", "CREATED", "FILES", "BYTES"
            );
            for c in copies {
                println!(
                    "{:<16}  {:<16} {:<16} {:>6}  {:<19}  {:>6} {:>14}",
                    &c.id[..16],
                    c.host,
                    c.set,
                    c.copy_id,
                    local_time(c.created_ms),
                    c.files,
                    c.bytes
                );
            }
        }
        ArchiveCommand::Restore {
            archived,
            to: Some(to),
            ..
        } => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            let printer = PhasePrinter::new(out, "");
            let report = engine.archive_restore_to(&url, &passphrase, archived, to, &printer);
            printer.finish();
            let report = report?;
            if out.json {
                return out.print_json(&report);
            }
            if !out.quiet {
                println!(
                    "archived copy {} restored into {} in {}: {} files, {} bytes ({} downloaded in {} requests, {} from local files)",
                    report.manifest,
                    to.display(),
                    humanize(report.took),
                    report.files,
                    report.bytes,
                    report.bytes_downloaded,
                    report.requests,
                    report.bytes_reused
                );
            }
        }
        ArchiveCommand::Restore {
            archived,
            to: None,
            force,
            discard_current,
            mode,
            until,
            wait,
        } => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            let printer = PhasePrinter::new(out, "");
            let imported = engine.archive_import(&url, &passphrase, archived, wait, &printer);
            printer.finish();
            let imported = imported?;
            let options = shadowcopy_engine::RestoreOptions {
                force: *force,
                discard_current: *discard_current,
                mode: *mode,
                until: until.clone(),
                ..shadowcopy_engine::RestoreOptions::new(imported.copy_id)
            };
            let restored = engine.restore(
                &options,
                wait,
                std::sync::Arc::new(PhasePrinter::new(out, "  ")),
            )?;
            if out.json {
                return out.print_json(&serde_json::json!({
                    "archived": imported.restore.manifest,
                    "copy_id": imported.copy_id,
                    "downloaded": imported.restore,
                    "restore": restored,
                }));
            }
            if !out.quiet {
                println!(
                    "archived copy {} brought back as copy {} ({} bytes downloaded, {} from local files, in {}), verified, and restored in place in {}{}",
                    imported.restore.manifest,
                    imported.copy_id,
                    imported.restore.bytes_downloaded,
                    imported.restore.bytes_reused,
                    humanize(imported.restore.took),
                    humanize(restored.took),
                    restored
                        .pre_restore
                        .map(|p| format!("; the state it replaced is copy {p}"))
                        .unwrap_or_default()
                );
            }
        }
        ArchiveCommand::PushLogs { set, dir } | ArchiveCommand::GetLogs { set, dir } => {
            let url = engine.archive_url(args.archive.as_deref(), Some(set))?;
            let getting = matches!(args.command, ArchiveCommand::GetLogs { .. });
            let report = if getting {
                engine.archive_get_logs(&url, &passphrase, set, dir.as_deref())?
            } else {
                engine.archive_push_logs(&url, &passphrase, set, dir.as_deref())?
            };
            if out.json {
                return out.print_json(&report);
            }
            if !out.quiet {
                println!(
                    "{} {} log files ({} bytes); {} were there already",
                    if getting { "wrote back" } else { "sent" },
                    report.copied,
                    report.bytes,
                    report.present
                );
            }
        }
        ArchiveCommand::Prune {
            policy: _,
            grace,
            dry_run,
        } => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            let report = engine.archive_prune(&url, &passphrase, grace.0, *dry_run)?;
            if out.json {
                return out.print_json(&report);
            }
            if !out.quiet {
                for d in &report.decisions {
                    println!(
                        "{} {:<16} {:<16} copy {:>5}  {:<19}  {}",
                        if d.keep { "keep  " } else { "delete" },
                        &d.id[..16],
                        format!("{}/{}", d.host, d.set),
                        d.copy_id,
                        local_time(d.created_ms),
                        d.reasons.join("; ")
                    );
                }
                let p = &report.prune;
                println!(
                    "{}{} archived copies deleted; packs: {} condemned, {} deleted, {} indexed again, {} left by dead pushes deleted; {} bytes freed",
                    if p.dry_run { "dry run: " } else { "" },
                    p.manifests_deleted.len(),
                    p.packs_condemned,
                    p.packs_deleted,
                    p.packs_reindexed,
                    p.orphans_deleted,
                    p.bytes_freed
                );
            }
        }
        ArchiveCommand::Key { command } => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            match command {
                KeyCommand::List => {
                    let keys = engine.archive_keys(&url, &passphrase)?;
                    if out.json {
                        return out.print_json(&keys);
                    }
                    for k in keys {
                        println!(
                            "{}  {:<19}  {}{}",
                            k.id,
                            local_time(k.created_ms),
                            k.label,
                            if k.current { "  (this passphrase)" } else { "" }
                        );
                    }
                }
                KeyCommand::Add {
                    new_password_file,
                    label,
                } => {
                    let new = passphrase_from(
                        new_password_file.as_ref(),
                        "SHADOWCOPY_ARCHIVE_NEW_PASSWORD",
                        "--new-password-file",
                    )?;
                    let id = engine.archive_add_key(&url, &passphrase, &new, label)?;
                    if out.json {
                        return out.print_json(&serde_json::json!({ "id": id }));
                    }
                    if !out.quiet {
                        println!("key {id} added");
                    }
                }
                KeyCommand::Remove { id } => {
                    let removed = engine.archive_remove_key(&url, &passphrase, id)?;
                    if out.json {
                        return out.print_json(&serde_json::json!({ "id": removed }));
                    }
                    if !out.quiet {
                        println!("key {removed} removed");
                    }
                }
            }
        }
        ArchiveCommand::Verify {
            read_data,
            read_data_subset,
        } => {
            let url = engine.archive_url(args.archive.as_deref(), None)?;
            let share = if *read_data {
                1.0
            } else {
                read_data_subset.unwrap_or(0.0)
            };
            let report = engine.archive_verify(&url, &passphrase, share)?;
            if out.json {
                out.print_json(&report)?;
            } else if !out.quiet {
                println!(
                    "{}: {} archived copies, {} packs ({} read, {} blocks checked)",
                    if report.ok {
                        "archive OK"
                    } else {
                        "archive DAMAGED"
                    },
                    report.copies,
                    report.packs,
                    report.packs_read,
                    report.blocks_checked
                );
                for p in &report.problems {
                    println!("  {p}");
                }
            }
            report.into_result(&url)?;
        }
    }
    Ok(())
}
