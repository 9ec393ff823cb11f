//! `shadowcopy list [SET]`: the copies in the catalog, oldest first (with `--server URL
//! --host H`: the copies host H's agent last reported to the backup server).

use clap::Args;

use crate::output::{bytes, local_time, micros};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this set's copies
    pub set: Option<String>,
    /// With --server: this host's copies
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let out = g.output(args.json);
    let copies = match super::remote::target(g, &args.host, "list")? {
        Some((server, host)) => super::remote::copies(&server, &host, args.set.as_deref())?,
        None => g.engine()?.list(args.set.as_deref())?,
    };
    if out.json {
        return out.print_json(&copies);
    }
    if copies.is_empty() {
        if !out.quiet {
            println!(
                "no copies{}",
                args.set
                    .map(|s| format!(" of set `{s}`"))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    }
    println!(
        "{:>5}  {:<20} {:<19}  {:<11} {:<8} {:<12} {:<12} {:>10} {:>10}",
        "ID", "SET", "CREATED", "ORIGIN", "PROVIDER", "STATE", "VERIFIED", "FREEZE", "SIZE"
    );
    for c in copies {
        println!(
            "{:>5}  {:<20} {:<19}  {:<11} {:<8} {:<12} {:<12} {:>10} {:>10}",
            c.id,
            c.set,
            local_time(c.created_ms),
            c.origin.as_str(),
            c.provider,
            c.state.as_str(),
            c.verify_state.as_str(),
            micros(c.freeze_window_us),
            bytes(c.bytes)
        );
    }
    Ok(())
}
