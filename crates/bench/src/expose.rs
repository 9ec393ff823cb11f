//! `shadowcopy-bench expose`: what single-item recovery costs a busy PostgreSQL cluster
//! (issue 18: production is never stopped, never written, and not slowed past a measured
//! bound). On a pgbench database (`--scale`, default 100) on a loop file system of the
//! provider's kind, with the WAL archive set up as the postgres workload does, one copy
//! is taken (`--provider`, default reflink), then:
//!
//! 1. the data directory is read into the page cache and an unmeasured pgbench runs for
//!    5 s; `pgbench -c 4 -j 2 -T --seconds` with per-second aggregates measures the
//!    cluster alone;
//! 2. the same pgbench again while a loop runs, one step after the other until it ends:
//!    `expose ID` (a paused hot standby at the copy's point), `extract ID --table
//!    pgbench_branches --format csv` through it, `unexpose`, then `expose ID --until
//!    NOW` (archive recovery with the archived and live WAL up to the server's clock when
//!    asked) and `unexpose`. Each step's wall time is kept; a round starts only when one
//!    as long as the last still ends before pgbench does.
//!
//! The report: TPS, the slowest second and the longest transaction of both runs, and
//! each step's median (min – max). Nothing asserts on time; a step that fails fails the
//! bench, and `pgbench_accounts` must hold scale × 100000 rows afterwards (production
//! was not written).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::common::{self, loadavg, shadowcopy};
use crate::postgres::{self as pg, Bench, Ctx, Pgbench, ROWS_PER_SCALE};
use crate::stats::{human, human_bytes, Spread};

/// Options of the expose workload.
#[derive(clap::Args, Debug)]
pub struct ExposeArgs {
    /// pgbench scale (scale 1 is about 15 MiB)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    scale: u32,
    /// The provider of the copy (copy, reflink, btrfs)
    #[arg(long, default_value = "reflink")]
    provider: String,
    /// Seconds of each pgbench measurement (alone, then with exposures)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..))]
    seconds: u64,
    /// Where the loop images, catalogs and server sockets go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:expose markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl ExposeArgs {
    pub fn tools(&self) -> Vec<&'static str> {
        common::mkfs_tools(std::slice::from_ref(&self.provider))
    }
}

/// The steps of one round, in order.
const STEPS: [&str; 5] = [
    "expose (copy's point)",
    "extract (through it)",
    "unexpose",
    "expose --until now",
    "unexpose (--until)",
];

/// Runs the workload (as root).
pub fn bench(args: &ExposeArgs) -> anyhow::Result<()> {
    let kind = common::fs_for(&args.provider).with_context(|| {
        format!(
            "unknown provider `{}` for the expose workload (copy, reflink, btrfs)",
            args.provider
        )
    })?;
    pg::prepare(args.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let began = Instant::now();
    let mut cluster = pg::archived_cluster(&bin, args.scale, kind, "expose")?;
    let db_bytes = cluster.clusters.db_bytes;
    let ctx = cluster.ctx(&bin, args.scale)?;
    let work = ctx.work;
    eprintln!("taking the copy ({}) ...", args.provider);
    let created = ctx.create(&args.provider)?;
    let id = created["id"].as_i64().context("create --json has no id")?;

    pg::prewarm(ctx.cluster().data_dir())?;
    let mut warmup = Pgbench::spawn(ctx.cluster(), &["-T", "5"], &work.join("warmup"))?;
    warmup.finish_unlogged()?;
    let seconds = args.seconds.to_string();
    let logged = ["-T", seconds.as_str(), "-l", "--aggregate-interval", "1"];
    eprintln!("pgbench alone for {seconds} s ...");
    let alone = Pgbench::spawn(ctx.cluster(), &logged, &work.join("alone"))?.finish()?;
    eprintln!("pgbench for {seconds} s with exposures of copy {id} ...");
    let load = Pgbench::spawn(ctx.cluster(), &logged, &work.join("exposing"))?;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let rounds = (|| -> anyhow::Result<usize> {
        let mut rounds = 0;
        // A round starts only when one as long as the last still ends within the load:
        // every step is measured against a running pgbench.
        let mut last = Duration::ZERO;
        while Instant::now() + last < end && !load.exited() {
            let t = Instant::now();
            for (i, t) in round(&ctx, id)?.into_iter().enumerate() {
                took[i].push(t);
            }
            last = t.elapsed();
            rounds += 1;
        }
        Ok(rounds)
    })();
    let rounds = match rounds {
        Ok(r) => r,
        Err(e) => {
            let _ = load.interrupt();
            let _ = shadowcopy(&bin, ctx.catalog, "unexpose", &["--all".into()]);
            return Err(e);
        }
    };
    let exposing = load.finish()?;
    let accounts = ctx.count("pgbench_accounts")?;
    ensure!(
        accounts == i64::from(args.scale) * ROWS_PER_SCALE,
        "pgbench_accounts holds {accounts} rows after the exposures"
    );
    let whole = began.elapsed();

    let table = report(&alone, &exposing, rounds, &took);
    println!("{table}");
    eprintln!("the whole bench took {}", human(whole));
    if let Some(path) = &args.markdown {
        let section = format!(
            "{}- PostgreSQL: pgbench scale {} ({}), `-c {} -j {}`, {} s per measurement; the copy by `{}`\n\n{table}\n\nThe whole bench took {}.",
            common::environment(
                &format!("a {} file system", kind.name()),
                &load_before,
                &loadavg()
            ),
            args.scale,
            human_bytes(db_bytes),
            pg::CLIENTS,
            pg::THREADS,
            args.seconds,
            args.provider,
            human(whole)
        );
        common::write_section(path, "expose", &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// One round of [`STEPS`]; each step's wall time.
fn round(ctx: &Ctx, id: i64) -> anyhow::Result<Vec<Duration>> {
    let id = id.to_string();
    let run = |args: &[&str]| -> anyhow::Result<(Duration, Vec<u8>)> {
        let t = Instant::now();
        let (sub, rest) = args.split_first().expect("a subcommand");
        let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        let out = shadowcopy(ctx.bin, ctx.catalog, sub, &rest)?;
        Ok((t.elapsed(), out.stdout))
    };
    let mut took = Vec::new();
    let (t, out) = run(&["expose", &id, "--json"])?;
    let record: Value = serde_json::from_slice(&out).context("expose --json")?;
    ensure!(record["exposed"][0]["pid"].is_u64(), "no server: {record}");
    took.push(t);
    let (t, csv) = run(&[
        "extract",
        &id,
        "--table",
        "pgbench_branches",
        "--format",
        "csv",
    ])?;
    let rows = String::from_utf8_lossy(&csv)
        .lines()
        .count()
        .saturating_sub(1);
    ensure!(rows == ctx.scale as usize, "extract gave {rows} branches");
    took.push(t);
    took.push(run(&["unexpose", "--all"])?.0);
    let now = ctx.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )?;
    took.push(run(&["expose", &id, "--until", &now, "--json"])?.0);
    took.push(run(&["unexpose", "--all"])?.0);
    Ok(took)
}

fn report(alone: &Bench, exposing: &Bench, rounds: usize, took: &[Vec<Duration>]) -> String {
    let mut s = String::from(
        "| pgbench | TPS | slowest second (transactions) | longest transaction |\n|---|---|---|---|\n",
    );
    for (name, b) in [("alone", alone), ("during exposures", exposing)] {
        s += &format!(
            "| {name} | {:.0} | {} | {} |\n",
            b.tps,
            b.slowest_second.map_or("–".into(), |n| n.to_string()),
            pg::opt_human(b.longest)
        );
    }
    let kept = if alone.tps > 0.0 {
        exposing.tps / alone.tps * 100.0
    } else {
        0.0
    };
    s += &format!(
        "\npgbench kept {kept:.0} % of its TPS through {rounds} round(s) of exposures.\n\n\
         | step | wall time, median (min – max) |\n|---|---|\n"
    );
    for (name, t) in STEPS.iter().zip(took) {
        s += &format!(
            "| {name} | {} |\n",
            Spread::of(t).map_or("–".into(), |sp| sp.cell())
        );
    }
    s
}
