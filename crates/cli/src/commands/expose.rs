//! `shadowcopy expose ID`, `exposed`, `unexpose ID|--all`: a copy opened read-only
//! beside production (a paused PostgreSQL hot standby, a read-only MariaDB server, a
//! read-only SQLite file, a read-only bind mount of plain files), at the copy's point or
//! brought forward `--until` a target, to look at or pull one thing back from; closed on
//! request or at its TTL. `extract ID --table T`: exposed, the rows dumped, closed.

use std::os::unix::fs::OpenOptionsExt;

use clap::Args;
use shadowcopy_catalog::ExposureRecord;
use shadowcopy_core::extract::{ExtractFormat, ExtractRequest};
use shadowcopy_engine::{ExposeRequest, HumanDuration};

use crate::output::local_time;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ExposeArgs {
    /// The copy's id
    pub id: i64,
    /// Close it after this long (the next shadowcopy command or the agent closes it)
    #[arg(long, default_value = "2h", value_parser = shadowcopy_engine::parse_duration)]
    pub ttl: HumanDuration,
    /// Open a copy that failed verification
    #[arg(long)]
    pub force: bool,
    /// Bring the copy forward to this point first, with the logs after it (PostgreSQL:
    /// a time, an LSN or xid:N, with the WAL archive and live WAL; MariaDB: a time, a
    /// binlog FILE:POS or a GTID, with the binary logs), as `restore --until`
    #[arg(long, value_name = "TARGET")]
    pub until: Option<String>,
    /// Also listen on this port on 127.0.0.1, where the copy's own accounts and
    /// passwords are asked for (the default is a private socket only)
    #[arg(long)]
    pub port: Option<u16>,
    /// Put the server's socket in this directory (one that not every user can enter)
    /// instead of a private one
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<std::path::PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// The copy's id
    pub id: i64,
    /// The table (`schema.table` for PostgreSQL)
    #[arg(long)]
    pub table: String,
    /// Only the rows where this SQL condition holds
    #[arg(long = "where", value_name = "SQL")]
    pub filter: Option<String>,
    /// `sql`: statements the database's client loads into production (psql, sqlite3);
    /// `csv`: CSV with a header
    #[arg(long, value_enum, default_value = "sql")]
    pub format: Format,
    /// The database holding the table (PostgreSQL: default `postgres`; MariaDB: or
    /// name it in --table DB.TABLE)
    #[arg(long)]
    pub database: Option<String>,
    /// Write into this file (created; refused if it exists) instead of standard output
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Extract the rows as they were at this point after the copy (as `expose --until`)
    #[arg(long, value_name = "TARGET")]
    pub until: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Sql,
    Csv,
}

#[derive(Args, Debug)]
pub struct ExposedArgs {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
pub struct UnexposeArgs {
    /// The exposure's id (`shadowcopy exposed` lists them)
    pub id: Option<i64>,
    /// Close every exposure
    #[arg(long)]
    pub all: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn expose(g: &GlobalArgs, args: ExposeArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let request = ExposeRequest {
        force: args.force,
        until: args.until,
        port: args.port,
        socket_dir: args.socket_dir,
        ..ExposeRequest::new(args.ttl.0)
    };
    let record = engine.expose(args.id, &request)?;
    if out.json {
        out.print_json(&record)?;
    } else if out.human() {
        println!(
            "copy {} exposed as exposure {} (read-only, closed at {}; `shadowcopy unexpose {}` \
             closes it sooner):",
            record.copy_id,
            record.id,
            local_time(record.expires_ms),
            record.id
        );
        for e in &record.exposed {
            println!("  {}", e.connect);
        }
    } else {
        for e in &record.exposed {
            println!("{}", e.connect);
        }
    }
    Ok(())
}

pub fn exposed(g: &GlobalArgs, args: ExposedArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let records = engine.exposed()?;
    if out.json {
        out.print_json(&records)?;
    } else if out.human() {
        if records.is_empty() {
            println!("no copy is exposed");
        }
        for r in &records {
            print_record(r);
        }
    }
    Ok(())
}

fn print_record(r: &ExposureRecord) {
    println!(
        "exposure {}: copy {} of set {} until {}",
        r.id,
        r.copy_id,
        r.set,
        local_time(r.expires_ms)
    );
    for e in &r.exposed {
        println!("  {}", e.connect);
    }
}

pub fn unexpose(g: &GlobalArgs, args: UnexposeArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let closed = engine.unexpose(if args.all { None } else { args.id })?;
    if out.json {
        out.print_json(&closed)?;
    } else if out.human() {
        if closed.is_empty() {
            println!("no copy was exposed");
        }
        for c in &closed {
            println!("closed exposure {} of copy {} ({})", c.id, c.copy_id, c.why);
        }
    }
    Ok(())
}

pub fn extract(g: &GlobalArgs, args: ExtractArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let request = ExtractRequest {
        table: args.table,
        filter: args.filter,
        format: match args.format {
            Format::Sql => ExtractFormat::Sql,
            Format::Csv => ExtractFormat::Csv,
        },
        database: args.database,
    };
    match args.output {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            engine.extract(args.id, &request, args.until.as_deref(), &mut out)?;
            std::io::Write::flush(&mut out)?;
        }
        Some(path) => {
            // Written beside its name and renamed into place once complete: a failed
            // extract leaves no file that looks like a result.
            let file_name = path
                .file_name()
                .ok_or_else(|| anyhow::anyhow!("--output {} names no file", path.display()))?;
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(shadowcopy_engine::UsageError::new(format!(
                    "{} exists; name a new file",
                    path.display()
                ))
                .into());
            }
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let partial = dir.join(format!(".{}.partial", file_name.to_string_lossy()));
            // create_new: never through a link planted at that name.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let written = engine
                .extract(args.id, &request, args.until.as_deref(), &mut out)
                .and_then(|()| Ok(out.into_inner().map_err(|e| e.into_error())?.sync_all()?));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            // No replacing: a file made meanwhile at that name is kept.
            std::fs::hard_link(&partial, &path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            std::fs::remove_file(&partial)?;
        }
    }
    Ok(())
}
