//! The commands that go through a backup server (`--server URL`, the token from
//! SHADOWCOPY_SERVER_TOKEN or --server-token-file): `hosts`, `list --host`, `create
//! --host`, `restore --host`, `jobs`. They print what the local commands print; a job
//! is queued on the server and, unless `--no-wait`, followed to its end.

use std::time::{Duration, Instant};

use clap::Args;
use shadowcopy_agent::job::JobRequest;
use shadowcopy_agent::link::https::{ServerClient, Unreachable};
use shadowcopy_agent::link::identity::operator_client;
use shadowcopy_agent::link::protocol::{path_segment as encode, HostInfo, ServerJob, SubmitJob};
use shadowcopy_catalog::CopySummary;
use shadowcopy_engine::error::WaitExceeded;
use shadowcopy_engine::{UsageError, WaitOptions};

use crate::output::{local_time, Output};
use crate::GlobalArgs;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The server client the global options name, if any.
pub fn client(g: &GlobalArgs) -> anyhow::Result<Option<ServerClient>> {
    let Some(url) = &g.server else {
        return Ok(None);
    };
    let token = match (&g.server_token_file, std::env::var("SHADOWCOPY_SERVER_TOKEN")) {
        (Some(file), _) => std::fs::read_to_string(file).map_err(|e| {
            UsageError::new(format!("cannot read the API token from {}: {e}", file.display()))
        })?,
        (None, Ok(token)) => token,
        (None, Err(_)) => {
            return Err(UsageError::new(
                "--server needs an API token: set SHADOWCOPY_SERVER_TOKEN or give --server-token-file FILE (an admin makes one with `shadowcopy server token create NAME`)",
            )
            .into())
        }
    };
    Ok(Some(operator_client(url, &token)?))
}

/// The server client, for a command that only works through one.
pub fn required(g: &GlobalArgs, command: &str) -> anyhow::Result<ServerClient> {
    client(g)?.ok_or_else(|| {
        UsageError::new(format!(
            "`{command}` asks a backup server: give --server URL (or SHADOWCOPY_SERVER)"
        ))
        .into()
    })
}

/// The server and host a command goes to: `--host` sends it through the server (which
/// it then needs); without `--host` the command is local, whatever `--server` says (an
/// agent's SHADOWCOPY_SERVER does not turn local commands remote).
pub fn target(
    g: &GlobalArgs,
    host: &Option<String>,
    command: &str,
) -> anyhow::Result<Option<(ServerClient, String)>> {
    let Some(host) = host else {
        return Ok(None);
    };
    let client = client(g)?.ok_or_else(|| {
        UsageError::new(format!(
            "`{command} --host` goes through a backup server: give --server URL too (or SHADOWCOPY_SERVER)"
        ))
    })?;
    Ok(Some((client, host.clone())))
}

pub fn block<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

#[derive(Args, Debug)]
pub struct HostsArgs {
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

/// `shadowcopy --server URL hosts`.
pub fn hosts(g: &GlobalArgs, args: HostsArgs) -> anyhow::Result<()> {
    let client = required(g, "hosts")?;
    let out = g.output(args.json);
    let hosts: Vec<HostInfo> = block(client.json("GET", "/v1/hosts", None::<&()>, CALL_TIMEOUT))?;
    if out.json {
        return out.print_json(&hosts);
    }
    if hosts.is_empty() {
        if !out.quiet {
            println!("no hosts; enrol one with `shadowcopy server enroll HOST` on the server");
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:<19}  {:>6} {:>6}  {:<19}  {:>4}",
        "HOST", "STATE", "LAST SEEN", "COPIES", "USABLE", "NEWEST USABLE", "JOBS"
    );
    for h in hosts {
        println!(
            "{:<24} {:<9} {:<19}  {:>6} {:>6}  {:<19}  {:>4}",
            h.name,
            h.state,
            h.last_seen_ms
                .map(local_time)
                .unwrap_or_else(|| "never".into()),
            h.copies,
            h.usable_copies,
            h.newest_copy_ms
                .map(local_time)
                .unwrap_or_else(|| "-".into()),
            h.open_jobs
        );
    }
    Ok(())
}

/// A host's copies as the server has them.
pub fn copies(
    client: &ServerClient,
    host: &str,
    set: Option<&str>,
) -> anyhow::Result<Vec<CopySummary>> {
    let mut path = format!("/v1/hosts/{}/copies", encode(host));
    if let Some(set) = set {
        path.push_str(&format!("?set={}", encode(set)));
    }
    block(client.json("GET", &path, None::<&()>, CALL_TIMEOUT))
}

/// Queues `request` for `host` and, unless told not to wait, follows it to its end
/// (printing its states); an ended job that failed is an error.
pub fn run_job(
    client: &ServerClient,
    host: &str,
    request: JobRequest,
    wait: &WaitOptions,
    out: Output,
) -> anyhow::Result<ServerJob> {
    let job: ServerJob = block(client.json(
        "POST",
        &format!("/v1/hosts/{}/jobs", encode(host)),
        Some(&SubmitJob { request }),
        CALL_TIMEOUT,
    ))?;
    if out.human() {
        println!("job {} queued on the server for host {host}", job.id);
    }
    if wait.no_wait {
        return Ok(job);
    }
    let deadline = Instant::now() + wait.wait.0;
    let mut seen = job.state.clone();
    loop {
        let asked: anyhow::Result<ServerJob> = block(client.json(
            "GET",
            &format!("/v1/jobs/{}", job.id),
            None::<&()>,
            CALL_TIMEOUT,
        ));
        let now = match asked {
            Ok(now) => now,
            // The job goes on without us: a server briefly away is asked again.
            Err(e) if e.downcast_ref::<Unreachable>().is_some() && Instant::now() < deadline => {
                if out.human() {
                    eprintln!("  (the server is not answering: {e:#}; asking again)");
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        if now.state != seen {
            if out.human() && !matches!(now.state.as_str(), "done" | "failed") {
                println!("  job {}: {}", now.id, now.state);
            }
            seen = now.state.clone();
        }
        match now.state.as_str() {
            "done" => return Ok(now),
            "failed" | "cancelled" => anyhow::bail!(
                "job {} on host {host} {}: {}",
                now.id,
                now.state,
                now.result.as_deref().unwrap_or("no reason given")
            ),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(WaitExceeded(format!(
                "job {} on host {host} is still {} after {} (--wait); it goes on: follow it with `shadowcopy --server URL jobs --host {host}`",
                now.id,
                now.state,
                humantime::format_duration(wait.wait.0)
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `shadowcopy --server URL jobs [--host H]`.
pub fn jobs(
    client: &ServerClient,
    host: Option<&str>,
    limit: usize,
    out: Output,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/jobs?limit={limit}");
    if let Some(host) = host {
        path.push_str(&format!("&host={}", encode(host)));
    }
    let jobs: Vec<ServerJob> = block(client.json("GET", &path, None::<&()>, CALL_TIMEOUT))?;
    if out.json {
        return out.print_json(&jobs);
    }
    if jobs.is_empty() {
        if !out.quiet {
            println!("no jobs on the server");
        }
        return Ok(());
    }
    println!(
        "{:>5}  {:<16} {:<7} {:<16} {:<19}  {:<9} RESULT",
        "ID", "HOST", "KIND", "SET", "QUEUED", "STATE"
    );
    for j in jobs {
        println!(
            "{:>5}  {:<16} {:<7} {:<16} {:<19}  {:<9} {}",
            j.id,
            j.host,
            j.kind,
            j.set,
            local_time(j.created_ms),
            j.state,
            j.result.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
