//! `shadowcopy show ID`: everything the catalog knows of one copy.

use clap::Args;
use shadowcopy_core::CopyState;

use crate::output::{bytes, local_time, micros};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The copy's id (from `shadowcopy list`)
    pub id: i64,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: ShowArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let d = engine.show(args.id)?;
    if out.json {
        return out.print_json(&d);
    }
    let s = &d.summary;
    println!("copy {} of set `{}`", s.id, s.set);
    println!(
        "  state       {}{}",
        s.state,
        if s.state == CopyState::InProgress {
            format!(" (phase {}, pid {})", s.phase, s.pid)
        } else {
            String::new()
        }
    );
    println!("  origin      {}", s.origin);
    println!("  provider    {}", s.provider);
    println!("  location    {}", s.location.as_deref().unwrap_or("-"));
    println!("  created     {}", local_time(s.created_ms));
    println!(
        "  freeze      {} (deadline {}ms)",
        micros(s.freeze_window_us),
        s.freeze_deadline_ms
    );
    println!("  verified    {}", s.verify_state);
    if let Some(e) = &s.error {
        println!("  error       {e}");
    }
    println!("phases:");
    for p in &d.phases {
        println!(
            "  {:<16} {:>10}  {}",
            p.phase,
            micros(p.took_us),
            p.error
                .as_deref()
                .map(|e| format!("FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    println!("components:");
    for c in &d.components {
        println!(
            "  {:<4} {:<5} {}{}  ({})",
            c.name,
            c.role,
            c.path.display(),
            if c.required { "" } else { " [optional]" },
            c.writer
        );
    }
    println!("files ({}, {}):", d.manifest.len(), bytes(s.bytes));
    for f in &d.manifest {
        println!(
            "  {:>10}  {:o}  {}  {}",
            bytes(f.size as i64),
            f.mode,
            f.blake3
                .as_deref()
                .map(|h| &h[..16])
                .unwrap_or("(not hashed yet)"),
            f.path.display()
        );
    }
    if !d.verifications.is_empty() {
        println!("verifications:");
        for v in &d.verifications {
            println!(
                "  {}  {}  {}  {}",
                local_time(v.at_ms),
                if v.ok { "passed" } else { "FAILED" },
                micros(Some(v.took_us)),
                match v.base {
                    Some(base) => format!("changes since copy {base}"),
                    None => "full".to_string(),
                }
            );
            for line in v.detail.lines() {
                println!("      {line}");
            }
        }
    }
    Ok(())
}
