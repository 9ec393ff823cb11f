//! `shadowcopy providers [PATH...]`: each provider, whether it can serve the paths, and if
//! not, why; and which one `auto` would pick.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::errors::UsageError;
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
struct VolumeChoice {
    volume: PathBuf,
    paths: Vec<PathBuf>,
    auto: Option<&'static str>,
}

#[derive(Serialize)]
struct ProvidersOutput {
    paths: Vec<PathBuf>,
    providers: Vec<Row>,
    auto: Option<&'static str>,
    /// When the paths span file systems: what `auto` picks for each (a multi-volume set).
    volumes: Vec<VolumeChoice>,
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
        exec: session.config.exec_providers(),
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
    let mut volumes: Vec<VolumeChoice> = Vec::new();
    for p in &paths {
        let volume = shadowcopy_writers::fsfreeze::mount_point(p)
            .map_err(|e| UsageError::new(e.to_string()))?;
        match volumes.iter_mut().find(|v| v.volume == volume) {
            Some(v) => v.paths.push(p.clone()),
            None => volumes.push(VolumeChoice {
                volume,
                paths: vec![p.clone()],
                auto: None,
            }),
        }
    }
    if volumes.len() > 1 {
        for v in &mut volumes {
            v.auto = shadowcopy_providers::choose_auto(&opts, &v.paths)
                .ok()
                .map(|p| p.kind());
        }
    } else {
        volumes.clear();
    }
    let out = ProvidersOutput {
        paths,
        providers: rows,
        auto,
        volumes,
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
    if out.volumes.is_empty() {
        println!(
            "auto picks: {}",
            out.auto
                .unwrap_or("nothing (no provider can serve these paths)")
        );
    } else {
        println!(
            "the paths span {} file systems: one multi-volume copy, auto picks per volume:",
            out.volumes.len()
        );
        for v in &out.volumes {
            println!(
                "  {:<30} {}",
                v.volume.display(),
                v.auto.unwrap_or("nothing can serve it")
            );
        }
    }
    Ok(())
}
