//! `shadowcopy mariadb …`: the MariaDB side of the tool. `log-analysis` tells what binary
//! logs a copy's restores would find after it, where their chain has holes, and what
//! point-in-time and roll-forward restores would reach.

use clap::{Args, Subcommand};
use shadowcopy_core::error::human_bytes;
use shadowcopy_mariadb::log_analysis::{ChainEnd, LiveLog, LogAnalysis, PlainRestore};

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct MariadbArgs {
    #[command(subcommand)]
    pub command: MariadbCommand,
}

#[derive(Subcommand, Debug)]
pub enum MariadbCommand {
    /// For one copy: the binary logs after its position (in the copy, the live binlog
    /// directory and index, the set's archive), their GTIDs, holes and purged files, and
    /// what point-in-time and roll-forward restores would reach
    LogAnalysis {
        /// The copy's id
        id: i64,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

impl MariadbArgs {
    /// Whether the command prints JSON (`log-analysis --json`).
    pub fn json(&self) -> bool {
        matches!(self.command, MariadbCommand::LogAnalysis { json: true, .. })
    }
}

pub fn run(g: &GlobalArgs, args: MariadbArgs) -> anyhow::Result<()> {
    match args.command {
        MariadbCommand::LogAnalysis { id, json } => {
            let analysis = g.engine()?.mariadb_log_analysis(id)?;
            if json {
                return g.output(json).print_json(&analysis);
            }
            print_analysis(id, &analysis);
            Ok(())
        }
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn print_analysis(id: i64, a: &LogAnalysis) {
    let c = &a.copy;
    println!("copy {id} of the server in {}", a.datadir.display());
    println!(
        "  the copy stands at {}:{}{}, captured {}",
        c.file,
        c.position,
        c.gtid
            .as_deref()
            .map(|g| format!(", GTID {g}"))
            .unwrap_or_default(),
        c.captured_at
    );
    match (a.in_copy.first(), a.in_copy.last()) {
        (Some(first), Some(last)) => {
            let bytes: u64 = a.in_copy.iter().filter_map(|l| l.size).sum();
            let names = if first.name == last.name {
                first.name.clone()
            } else {
                format!("{} .. {}", first.name, last.name)
            };
            println!(
                "  binlogs in the copy     {names} ({}, {})",
                plural(a.in_copy.len(), "file"),
                human_bytes(bytes)
            );
        }
        _ => println!("  binlogs in the copy     none from {} on", c.file),
    }
    match &a.archive {
        None => println!(
            "  binlogs in the archive  no archive for this set (`archive = URL` in its config)"
        ),
        Some(ar) => match (&ar.through, &ar.error) {
            (Some(t), _) => println!(
                "  binlogs in the archive  through {t} in {} (the catalog's record of the last push-logs; the archive itself was not listed)",
                ar.url
            ),
            (None, Some(e)) => println!(
                "  binlogs in the archive  unknown for {}: {e}",
                ar.url
            ),
            (None, None) => println!(
                "  binlogs in the archive  none pushed to {} yet (`shadowcopy archive push-logs`)",
                ar.url
            ),
        },
    }
    let live = &a.live;
    if let Some(e) = &live.dir_error {
        println!("  live binlog directory   unreadable: {e}");
    }
    if let Some(e) = &live.index_error {
        println!("  live binlog index       unreadable: {e}");
    }
    match (live.files.first(), live.files.last()) {
        (Some(first), Some(last)) => {
            let bytes: u64 = live.files.iter().map(|l| l.size).sum();
            let names = if first.name == last.name {
                first.name.clone()
            } else {
                format!("{} .. {}", first.name, last.name)
            };
            println!(
                "  binlogs live            {names} ({}, {}) in {}",
                plural(live.files.len(), "file"),
                human_bytes(bytes),
                live.dir.display()
            );
            for f in &live.files {
                println!("    {}", file_line(f));
            }
        }
        _ => println!(
            "  binlogs live            none from {} on in {}",
            c.file,
            live.dir.display()
        ),
    }
    for h in &a.holes {
        let names = if h.first == h.last {
            h.first.clone()
        } else {
            format!("{} .. {}", h.first, h.last)
        };
        println!(
            "  HOLE    {names} ({}) {} on this host{}{}",
            plural(h.files as usize, "file"),
            if h.files == 1 {
                "is missing"
            } else {
                "are missing"
            },
            match h.named_in_index {
                0 => String::new(),
                n if n == h.files && n == 1 => "; the index still names it".into(),
                n if n == h.files => "; the index still names them".into(),
                n => format!("; the index still names {n} of them"),
            },
            if h.maybe_in_archive {
                "; the archive's record reaches past it (`shadowcopy archive get-logs` may bring it back)"
            } else {
                ""
            }
        );
    }
    if !a.purged.is_empty() {
        println!(
            "  PURGED  {}: named in the index {}, but gone",
            a.purged.join(", "),
            live.index.display()
        );
    }
    if !a.unlisted.is_empty() {
        println!(
            "  UNLISTED {}: on disk but not in the index (a roll-forward does not read them)",
            a.unlisted.join(", ")
        );
    }
    println!("a restore would reach:");
    let pit = &a.point_in_time;
    println!(
        "  point-in-time  the copy's position: {}:{}{} ({})",
        pit.file,
        pit.position,
        pit.gtid
            .as_deref()
            .map(|g| format!(", GTID {g}"))
            .unwrap_or_default(),
        pit.time
    );
    let rf = &a.roll_forward;
    match (&rf.last_file, rf.end_position) {
        (Some(file), Some(end)) => {
            let newest = match &rf.last_transaction {
                Some(t) => format!(
                    ": newest transaction {}{}{}",
                    t.gtid
                        .as_deref()
                        .map(|g| format!("GTID {g}"))
                        .unwrap_or_else(|| "(no GTID)".into()),
                    t.end_position
                        .map(|p| format!(" ending at {}:{p}", t.file))
                        .unwrap_or_default(),
                    t.time
                        .as_deref()
                        .map(|t| format!(" ({t})"))
                        .unwrap_or_default()
                ),
                None => ": no transaction after the copy".into(),
            };
            println!(
                "  roll-forward   {file}:{end} ({} from the copy's position, {}){newest}",
                plural(rf.files, "binary log"),
                plural(rf.transactions as usize, "transaction")
            );
        }
        _ => println!("  roll-forward   nothing: no binary log after the copy can be replayed"),
    }
    match &rf.ends {
        ChainEnd::EndOfLog { next } => println!(
            "                 the chain has no holes; replay stops where the binary log ends ({next} is not there yet)"
        ),
        ChainEnd::Missing { file } => println!(
            "                 replay stops before {file}, which is missing; {} after it cannot be replayed",
            plural(rf.unreachable_files, "binary log")
        ),
        ChainEnd::NotInIndex { file } => println!(
            "                 replay stops before {file}, which the index does not name; {} after it cannot be replayed",
            plural(rf.unreachable_files, "binary log")
        ),
        ChainEnd::NoIndex { why } => println!("                 {why}: nothing can be replayed"),
    }
    let until = rf
        .until
        .as_deref()
        .map(|u| format!("; `--until {u}` replays up to here"))
        .unwrap_or_default();
    match rf.without_until {
        PlainRestore::Reaches => {}
        PlainRestore::Refused => println!(
            "                 restore --mode roll-forward refuses to replay past the break (or without a readable index){until}"
        ),
    }
}

/// `mariadb-bin.000004  1.2 KiB  from 4  3 transactions  0-1-5 .. 0-1-7  2026-… .. 2026-…`
fn file_line(f: &LiveLog) -> String {
    let e = &f.events;
    let mut out = format!("{}  {}", f.name, human_bytes(f.size));
    if f.from > 4 {
        out.push_str(&format!(" (read from {})", f.from));
    }
    if !f.in_index {
        out.push_str("  not in the index");
    }
    out.push_str(&format!(
        "  {}",
        plural(e.transactions as usize, "transaction")
    ));
    match (&e.first_gtid, &e.last_gtid) {
        (Some(a), Some(b)) if a == b => out.push_str(&format!("  GTID {a}")),
        (Some(a), Some(b)) => out.push_str(&format!("  GTIDs {a} .. {b}")),
        _ => {}
    }
    match (&e.first_time, &e.last_time) {
        (Some(a), Some(b)) if a == b => out.push_str(&format!("  {a}")),
        (Some(a), Some(b)) => out.push_str(&format!("  {a} .. {b}")),
        _ => {}
    }
    out.push_str(if e.closed { "  closed" } else { "  open" });
    if let Some(err) = &f.read_error {
        out.push_str(&format!("  (unreadable: {err})"));
    }
    out
}
