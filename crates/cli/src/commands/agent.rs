//! `shadowcopy agent`: run the config file's sets on their schedules until stopped
//! (foreground; `dist/shadowcopy-agent.service` runs it under systemd), with its API on
//! a unix socket; `shadowcopy agent status`: what the running agent is doing (through
//! that API); `shadowcopy agent openapi`: the API's OpenAPI document; `shadowcopy jobs`:
//! what the agent ran and how each job ended.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use shadowcopy_agent::state::Status;

use crate::output::local_time;
use crate::GlobalArgs;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The API's unix socket (default: [agent] socket in the config, else
    /// /run/shadowcopy/agent.sock for the system catalog, else agent.sock in the catalog)
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// The group whose members may use the API (the socket is mode 0660)
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Enrol with the backup server (--server URL) with this one-time token from
    /// `shadowcopy server enroll HOST`, then run linked to it
    #[arg(
        long,
        env = "SHADOWCOPY_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub enroll_token: Option<String>,
    /// The host name to enrol as [default: this machine's name]
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// What the running agent is doing: the running job, the queue, the next slots
    Status {
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the API's OpenAPI document (JSON)
    Openapi,
}

impl AgentArgs {
    /// Runs the daemon (not a subcommand that asks it something).
    pub fn is_daemon(&self) -> bool {
        self.command.is_none()
    }

    pub fn json(&self) -> bool {
        matches!(self.command, Some(AgentCommand::Status { json: true }))
    }
}

pub fn run(g: &GlobalArgs, args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        None => shadowcopy_agent::run(&shadowcopy_agent::AgentOptions {
            engine: g.engine_options(),
            socket: args.socket,
            socket_group: args.socket_group,
            server: g.server.clone(),
            enroll_token: args.enroll_token,
            host_name: args.host_name,
        }),
        Some(AgentCommand::Openapi) => {
            print!("{}", shadowcopy_agent::api::openapi_json());
            Ok(())
        }
        Some(AgentCommand::Status { json }) => status(g, args.socket, json),
    }
}

fn status(g: &GlobalArgs, socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let out = g.output(json);
    let socket = match socket {
        Some(given) => given,
        None => shadowcopy_agent::socket::socket_path(&g.engine()?, None),
    };
    let answer = shadowcopy_agent::client::request(
        &socket,
        "GET",
        "/v1/status",
        None,
        Duration::from_secs(10),
    )?;
    let body = answer.json()?;
    if answer.status != 200 {
        anyhow::bail!("the agent answered {}: {body}", answer.status);
    }
    if out.json {
        return out.print_json(&body);
    }
    let status: Status = serde_json::from_value(body)?;
    println!(
        "agent pid {} (version {}), up since {}{}",
        status.pid,
        status.version,
        local_time(status.started_ms),
        if status.stopping { ", stopping" } else { "" }
    );
    println!("catalog {}", status.catalog);
    match &status.running {
        Some(j) => println!(
            "running: job {} {} of {} (since {})",
            j.id,
            j.kind,
            j.set,
            local_time(j.started_ms.unwrap_or(j.created_ms))
        ),
        None => println!("running: nothing"),
    }
    for j in &status.queued {
        println!(
            "queued:  job {} {} of {} ({})",
            j.id, j.kind, j.set, j.trigger
        );
    }
    if !status.schedules.is_empty() {
        println!("{:<20} {:<7} {:<20} NEXT", "SET", "KIND", "SCHEDULE");
        for s in &status.schedules {
            println!(
                "{:<20} {:<7} {:<20} {}",
                s.set,
                s.kind,
                s.schedule,
                s.next_ms.map(local_time).unwrap_or_else(|| "never".into())
            );
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// How many of the newest jobs to show
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// The backup server's jobs for this host (with --server)
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The backup server's jobs for every host (with --server)
    #[arg(long, conflicts_with = "host")]
    pub all_hosts: bool,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn jobs(g: &GlobalArgs, args: JobsArgs) -> anyhow::Result<()> {
    let out = g.output(args.json);
    if args.all_hosts {
        let server = super::remote::required(g, "jobs --all-hosts")?;
        return super::remote::jobs(&server, None, args.limit, out);
    }
    if let Some((server, host)) = super::remote::target(g, &args.host, "jobs")? {
        return super::remote::jobs(&server, Some(&host), args.limit, out);
    }
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
