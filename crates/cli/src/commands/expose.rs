//! `shadowcopy expose ID`, `exposed`, `unexpose ID|--all`: a copy opened read-only
//! beside production (a paused PostgreSQL hot standby on a private socket, a read-only
//! SQLite file) to look at or pull one thing back from; closed on request or at its TTL.

use clap::Args;
use shadowcopy_catalog::ExposureRecord;
use shadowcopy_engine::HumanDuration;

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
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
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
    let record = engine.expose(args.id, args.ttl.0, args.force)?;
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
