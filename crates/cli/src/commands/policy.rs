//! `shadowcopy --server URL policy`: the schedules and retention the backup server
//! holds for a host's sets (`list`, `set`, `remove`); the host's agent takes them on
//! its next sync, keeps them, and runs by them also while the server is unreachable.

use clap::{Args, Subcommand};
use shadowcopy_agent::link::protocol::{path_segment as encode, HostPolicy, SetPolicy};
use shadowcopy_engine::{HumanDuration, RetentionPolicy};

use crate::commands::remote::{self, block, CALL_TIMEOUT};
use crate::output::local_time;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// The policies, of every host or of one
    List {
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Set a host's policy for one set of its agent's config (replacing the set's
    /// schedule, verify_schedule and retention there; what is not given is none)
    Set {
        #[arg(long, value_name = "HOST")]
        host: String,
        set: String,
        /// When to copy: a cron expression (five fields, or six with seconds first)
        #[arg(long, value_name = "CRON")]
        schedule: Option<String>,
        /// When to verify the newest copy again
        #[arg(long, value_name = "CRON")]
        verify_schedule: Option<String>,
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_hourly: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u32>,
        #[arg(long, value_name = "N")]
        keep_yearly: Option<u32>,
        #[arg(long, value_name = "DURATION", value_parser = shadowcopy_engine::parse_duration)]
        keep_within: Option<HumanDuration>,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a host's policy for a set (its agent's config decides again)
    Remove {
        #[arg(long, value_name = "HOST")]
        host: String,
        set: String,
    },
}

impl PolicyArgs {
    pub fn json(&self) -> bool {
        matches!(
            self.command,
            PolicyCommand::List { json: true, .. } | PolicyCommand::Set { json: true, .. }
        )
    }
}

pub fn run(g: &GlobalArgs, args: PolicyArgs) -> anyhow::Result<()> {
    let json = args.json();
    let out = g.output(json);
    let client = remote::required(g, "policy")?;
    match args.command {
        PolicyCommand::List { host, .. } => {
            let mut path = "/v1/policies".to_string();
            if let Some(h) = &host {
                path.push_str(&format!("?host={}", encode(h)));
            }
            let policies: Vec<HostPolicy> =
                block(client.json("GET", &path, None::<&()>, CALL_TIMEOUT))?;
            if out.json {
                return out.print_json(&policies);
            }
            if policies.is_empty() {
                if !out.quiet {
                    println!("no policies: each agent runs by its own config");
                }
                return Ok(());
            }
            println!(
                "{:<16} {:<16} {:<18} {:<18} {:<24} UPDATED",
                "HOST", "SET", "SCHEDULE", "VERIFY", "RETENTION"
            );
            for p in policies {
                println!(
                    "{:<16} {:<16} {:<18} {:<18} {:<24} {} by {}",
                    p.host,
                    p.policy.set,
                    p.policy.schedule.as_deref().unwrap_or("-"),
                    p.policy.verify_schedule.as_deref().unwrap_or("-"),
                    p.policy
                        .retention
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into()),
                    local_time(p.updated_ms),
                    p.updated_by
                );
            }
            Ok(())
        }
        PolicyCommand::Set {
            host,
            set,
            schedule,
            verify_schedule,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            ..
        } => {
            let retention = RetentionPolicy {
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
                keep_within,
            };
            let policy = SetPolicy {
                set,
                schedule,
                verify_schedule,
                retention: (!retention.is_empty()).then_some(retention),
            };
            let recorded: HostPolicy = block(client.json(
                "PUT",
                &format!("/v1/hosts/{}/policies", encode(&host)),
                Some(&policy),
                CALL_TIMEOUT,
            ))?;
            if out.json {
                return out.print_json(&recorded);
            }
            if out.human() {
                println!(
                    "policy for `{}` on {host} set; its agent takes it on its next sync",
                    recorded.policy.set
                );
            }
            Ok(())
        }
        PolicyCommand::Remove { host, set } => {
            let _: serde_json::Value = block(client.json(
                "DELETE",
                &format!("/v1/hosts/{}/policies/{}", encode(&host), encode(&set)),
                None::<&()>,
                CALL_TIMEOUT,
            ))?;
            if out.human() {
                println!("policy for `{set}` on {host} removed: its agent's config decides again");
            }
            Ok(())
        }
    }
}
