//! `shadowcopy providers [PATH...]`: each provider, whether it can serve the paths, and if
//! not, why; and which one `auto` would pick.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::session::Session;
use crate::spec::{Overrides, SetSpec};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ProvidersArgs {
    /// Paths to check [default: the configured sets' data, else the current directory]
    pub paths: Vec<PathBuf>,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    provider: &'static str,
    rank: u32,
    can_serve: bool,
    reason: Option<String>,
}

#[derive(Serialize)]
struct ProvidersOutput {
    paths: Vec<PathBuf>,
    providers: Vec<Row>,
    auto: Option<&'static str>,
}

pub fn run(g: &GlobalArgs, args: ProvidersArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    let mut paths: Vec<PathBuf> = args
        .paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    if paths.is_empty() {
        for name in session.config.sets.keys() {
            paths.extend(
                SetSpec::from_config(&session.config, name, &Overrides::default())?.data_paths(),
            );
        }
    }
    if paths.is_empty() {
        paths.push(std::env::current_dir()?);
    }
    let opts = shadowcopy_providers::ProviderOptions {
        copies_dir: None,
        default_copies_dir: session.catalog_dir.join("copies"),
        parallelism: 2,
    };
    let mut rows: Vec<Row> = shadowcopy_providers::all(&opts)
        .iter()
        .map(|p| {
            let check = p.check(&paths);
            Row {
                provider: p.kind(),
                rank: p.rank(),
                can_serve: check.is_ok(),
                reason: check.err().map(|e| e.reason),
            }
        })
        .collect();
    rows.sort_by_key(|r| r.rank);
    let auto = rows.iter().find(|r| r.can_serve).map(|r| r.provider);
    let out = ProvidersOutput {
        paths,
        providers: rows,
        auto,
    };
    if session.out.json {
        return session.out.print_json(&out);
    }
    println!(
        "for {}:",
        out.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for r in &out.providers {
        match &r.reason {
            None => println!("  {:<8} can serve", r.provider),
            Some(why) => println!("  {:<8} cannot serve: {why}", r.provider),
        }
    }
    println!(
        "auto picks: {}",
        out.auto
            .unwrap_or("nothing (no provider can serve these paths)")
    );
    Ok(())
}
