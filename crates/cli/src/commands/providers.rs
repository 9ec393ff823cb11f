//! `shadowcopy providers [PATH...]`: each provider, whether it can serve the paths, and if
//! not, why; and which one `auto` would pick.

use std::path::PathBuf;

use clap::Args;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ProvidersArgs {
    /// Paths to check [default: the configured sets' data, else the current directory]
    pub paths: Vec<PathBuf>,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: ProvidersArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let output = g.output(args.json);
    let out = engine.providers(&args.paths)?;
    if output.json {
        return output.print_json(&out);
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
