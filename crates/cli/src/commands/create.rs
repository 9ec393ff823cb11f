//! `shadowcopy create SET | --sqlite PATH | …`: one shadow set, start to end.

use std::sync::Arc;

use clap::Args;
use shadowcopy_core::error::{human_bytes, humanize};
use shadowcopy_engine::{CreateOptions, CreateReport, UsageError, WaitOptions};

use crate::commands::remote;
use crate::output::{bytes, micros, Output, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub options: CreateOptions,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// With --server: queue the copy on this host's agent (a set its config names)
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: CreateArgs) -> anyhow::Result<()> {
    let out = g.output(args.json);
    if let Some((server, host)) = remote::target(g, &args.host, "create")? {
        return on_host(&server, &host, &args, out);
    }
    let engine = g.engine()?;
    let report = engine.create(
        &args.options,
        &args.wait,
        Arc::new(PhasePrinter::new(out, "")),
    )?;
    print(out, &report)
}

fn print(out: Output, c: &CreateReport) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(c);
    }
    if out.quiet {
        println!("{}", c.id);
        return Ok(());
    }
    println!(
        "copy {} of `{}` is usable: {} files, {}, provider {}",
        c.id,
        c.set,
        c.files,
        human_bytes(c.bytes),
        c.provider
    );
    println!(
        "  freeze window {} (deadline {}): the longest the application's writes waited",
        humanize(c.freeze_window),
        humanize(c.freeze_deadline())
    );
    match &c.verification {
        Some(v) => println!("  verified: {}", v.detail.replace('\n', "; ")),
        None => println!(
            "  not verified (--no-verify); run `shadowcopy verify {}`",
            c.id
        ),
    }
    Ok(())
}

/// `create --server URL --host H SET`: a copy of a set H's agent config names, queued on
/// the server and followed to its end; then the copy as H's agent reported it.
fn on_host(
    server: &shadowcopy_agent::link::https::ServerClient,
    host: &str,
    args: &CreateArgs,
    out: Output,
) -> anyhow::Result<()> {
    let zero_config = CreateOptions {
        set: args.options.set.clone(),
        ..CreateOptions::default()
    };
    let Some(set) = args.options.set.clone() else {
        return Err(UsageError::new(
            "with --host, name a set of that host's agent config: `create --host H SET`",
        )
        .into());
    };
    if format!("{:?}", args.options) != format!("{zero_config:?}") {
        return Err(UsageError::new(
            "with --host only a set name is taken: the set's writers and provider are in the host agent's config",
        )
        .into());
    }
    let job = remote::run_job(
        server,
        host,
        shadowcopy_agent::job::JobRequest::Create { set: set.clone() },
        &args.wait,
        out,
    )?;
    let copy = match job.copy_id {
        Some(id) => remote::copies(server, host, Some(&set))?
            .into_iter()
            .find(|c| c.id == id),
        None => None,
    };
    if out.json {
        return out.print_json(&serde_json::json!({ "job": job, "copy": copy }));
    }
    if out.quiet {
        if let Some(c) = &copy {
            println!("{}", c.id);
        }
        return Ok(());
    }
    match copy {
        Some(c) => println!(
            "copy {} of `{}` on {host} is {}: {} files, {}, provider {}, freeze window {}, {}",
            c.id,
            c.set,
            c.state.as_str(),
            c.files,
            bytes(c.bytes),
            c.provider,
            micros(c.freeze_window_us),
            c.verify_state.as_str()
        ),
        None => println!(
            "job {} on {host} {}: {}",
            job.id,
            job.state,
            job.result.as_deref().unwrap_or("")
        ),
    }
    Ok(())
}
