//! `shadowcopy writers`: the writer kinds this build knows, and each configured set's
//! writers with their state (like `vssadmin list writers`).

use clap::Args;
use serde::Serialize;

use crate::session::Session;
use crate::spec::{Overrides, SetSpec};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct WritersArgs {
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Kind {
    kind: &'static str,
    description: &'static str,
}

#[derive(Serialize)]
struct Instance {
    set: String,
    writer: String,
    state: &'static str,
    detail: String,
    in_use_by: Vec<u32>,
    /// What discovery found (database writers: the server's layout, flavour, version,
    /// engines in use), as recorded with copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    discovered: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WritersOutput {
    kinds: Vec<Kind>,
    configured: Vec<Instance>,
}

pub fn run(g: &GlobalArgs, args: WritersArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    let kinds = shadowcopy_writers::KINDS
        .iter()
        .map(|(kind, description)| Kind { kind, description })
        .collect();
    let mut configured = Vec::new();
    for name in session.config.sets.keys() {
        let spec = SetSpec::from_config(&session.config, name, &Overrides::default())?;
        let discovered: Vec<Option<serde_json::Value>> = spec
            .writers
            .iter()
            .map(|w| match w {
                shadowcopy_writers::WriterSpec::Postgres(p) => {
                    p.layout.as_ref().and_then(|l| serde_json::to_value(l).ok())
                }
                shadowcopy_writers::WriterSpec::Mariadb(m) => {
                    m.layout.as_ref().and_then(|l| serde_json::to_value(l).ok())
                }
                _ => None,
            })
            .collect();
        for (i, mut w) in spec.build_writers().into_iter().enumerate() {
            let (state, detail, paths) = match w.identify() {
                Ok(components) => (
                    "stable",
                    components
                        .iter()
                        .map(|c| format!("{} {}", c.name, c.path.display()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    components.into_iter().map(|c| c.path).collect(),
                ),
                Err(e) => ("failed", e.to_string(), Vec::new()),
            };
            let in_use_by = shadowcopy_writers::proc_scan::holders(&paths)
                .into_iter()
                .map(|h| h.pid)
                .collect();
            configured.push(Instance {
                set: name.clone(),
                writer: w.name(),
                state,
                detail,
                in_use_by,
                discovered: discovered.get(i).cloned().flatten(),
            });
        }
    }
    let out = WritersOutput { kinds, configured };
    if session.out.json {
        return session.out.print_json(&out);
    }
    println!("writer kinds:");
    for k in &out.kinds {
        println!("  {:<8} {}", k.kind, k.description);
    }
    if out.configured.is_empty() {
        println!(
            "no sets configured (config file: {})",
            session
                .config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into())
        );
    } else {
        println!("writers of configured sets:");
        for i in &out.configured {
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
