//! `shadowcopy writers`: the writer kinds this build knows, and each configured set's
//! writers with their state (like `vssadmin list writers`).

use clap::Args;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct WritersArgs {
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: WritersArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let report = engine.writers()?;
    if out.json {
        return out.print_json(&report);
    }
    println!("writer kinds:");
    for k in &report.kinds {
        println!("  {:<8} {}", k.kind, k.description);
    }
    if report.configured.is_empty() {
        println!(
            "no sets configured (config file: {})",
            engine
                .config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into())
        );
    } else {
        println!("writers of configured sets:");
        for i in &report.configured {
            let users = if i.in_use_by.is_empty() {
                "not open".to_string()
            } else {
                format!(
                    "open by pid {}",
                    i.in_use_by
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            println!(
                "  {:<12} {:<40} {:<7} {users}\n      {}",
                i.set, i.writer, i.state, i.detail
            );
        }
    }
    Ok(())
}
