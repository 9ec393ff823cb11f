//! `shadowcopy agent`: run the config file's sets on their schedules until stopped
//! (foreground; `dist/shadowcopy-agent.service` runs it under systemd), and
//! `shadowcopy jobs`: what the agent ran and how each job ended.

use clap::Args;

use crate::output::local_time;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct AgentArgs {}

pub fn run(g: &GlobalArgs, _args: AgentArgs) -> anyhow::Result<()> {
    shadowcopy_agent::run(&g.engine_options())
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// How many of the newest jobs to show
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn jobs(g: &GlobalArgs, args: JobsArgs) -> anyhow::Result<()> {
    let out = g.output(args.json);
    let jobs = g.engine()?.jobs(args.limit)?;
    if out.json {
        return out.print_json(&jobs);
    }
    if jobs.is_empty() {
        if !out.quiet {
            println!("no jobs (the agent records one per scheduled copy, verification and prune)");
        }
        return Ok(());
    }
    println!(
        "{:>5}  {:<7} {:<20} {:<16} {:<19}  {:<11} RESULT",
        "ID", "KIND", "SET", "TRIGGER", "QUEUED", "STATE"
    );
    for j in jobs {
        println!(
            "{:>5}  {:<7} {:<20} {:<16} {:<19}  {:<11} {}",
            j.id,
            j.kind,
            j.set,
            j.trigger,
            local_time(j.created_ms),
            j.state,
            j.result.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
