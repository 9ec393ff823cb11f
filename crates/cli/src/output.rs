//! How results reach the user: JSON for scripts, aligned text for people, phase lines as
//! a shadow set runs and a progress bar for long copies when stdout is a terminal.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shadowcopy_catalog::{QueueHolder, Wait};
use shadowcopy_core::error::{human_bytes, humanize};
use shadowcopy_core::{CopyId, CopyState, EventSink, Phase};
use shadowcopy_engine::Progress;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
}

impl Output {
    /// Human text goes to stdout unless --json or --quiet.
    pub fn human(&self) -> bool {
        !self.json && !self.quiet
    }

    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Prints each phase of a shadow set as it ends, with its duration.
pub struct PhasePrinter {
    out: Output,
    indent: &'static str,
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
}

/// Copies smaller than this finish before a bar is worth drawing.
const BAR_THRESHOLD: u64 = 64 << 20;

impl PhasePrinter {
    pub fn new(out: Output, indent: &'static str) -> Self {
        PhasePrinter {
            out,
            indent,
            bar: Mutex::new(None),
            tty: std::io::stdout().is_terminal(),
        }
    }
}

impl PhasePrinter {
    /// Clears the progress bar, if one is drawn (work that ends without a phase).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }
}

impl EventSink for PhasePrinter {
    fn copy_started(&self, id: CopyId, set: &str) {
        if self.out.human() {
            println!("{}shadow set for `{set}`: copy {id}", self.indent);
        }
    }

    fn phase_started(&self, phase: Phase) {
        if self.out.human() && self.out.verbose > 0 {
            println!("{}  {phase} …", self.indent);
        }
    }

    fn phase_finished(&self, phase: Phase, took: Duration, ok: bool) {
        self.finish();
        if self.out.human() {
            let mark = if ok { "ok" } else { "FAILED" };
            println!(
                "{}  {:<16} {:>10}  {mark}",
                self.indent,
                phase.as_str(),
                humanize(took)
            );
        }
    }

    fn bytes(&self, done: u64, total: u64) {
        if !self.tty || !self.out.human() || total < BAR_THRESHOLD {
            return;
        }
        let mut bar = self.bar.lock().expect("bar lock");
        let bar = bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "    {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            b
        });
        bar.set_position(done);
    }

    fn warning(&self, message: &str) {
        if !self.out.quiet {
            eprintln!("warning: {message}");
        }
    }

    fn note(&self, message: &str) {
        if self.out.human() {
            println!("{}  note: {message}", self.indent);
        }
    }
}

impl Progress for PhasePrinter {
    fn queued_behind(&self, holder: Option<&QueueHolder>, wait: Wait) {
        if self.out.quiet {
            return;
        }
        let limit = match wait {
            Wait::Upto(d) => format!("up to {}", humantime::format_duration(d)),
            Wait::No => "not at all".into(),
        };
        match holder {
            Some(h) => eprintln!(
                "queued behind `{}` for set `{}` (pid {}, running for {}); waiting {limit}",
                h.command,
                h.set,
                h.pid,
                age(h.since_ms)
            ),
            None => eprintln!("queued behind another shadow set in this catalog; waiting {limit}"),
        }
    }

    fn recovered(&self, line: &str) {
        if !self.out.quiet {
            eprintln!("{line}");
        }
    }

    fn deleted(&self, id: i64, set: &str, state: CopyState, dry_run: bool) {
        if self.out.human() {
            println!(
                "{} copy {id} of `{set}` ({state})",
                if dry_run { "would delete" } else { "deleted" },
            );
        }
    }
}

/// A catalog timestamp as local time.
pub fn local_time(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// How long ago a catalog timestamp was, in words.
pub fn age(since_ms: i64) -> String {
    let ms = (chrono::Utc::now().timestamp_millis() - since_ms).max(0) as u64;
    humanize(Duration::from_millis(ms))
}

pub fn micros(us: Option<i64>) -> String {
    us.map(|u| humanize(Duration::from_micros(u.max(0) as u64)))
        .unwrap_or_else(|| "-".into())
}

pub fn bytes(n: i64) -> String {
    human_bytes(n.max(0) as u64)
}
