//! The peer comparison as Markdown: per workload and size, the machine and versions, one
//! row per method with median (min – max) over the runs, and each peer's ratio to
//! shadowcopy taken within the same run.

use std::time::Duration;

use super::record::{Figures, Group, Outcome, Store};
use crate::stats::{human, human_bytes, number_cell};

/// The workloads in the order the report shows them, with their headings.
pub const WORKLOADS: [(&str, &str); 3] = [
    ("sqlite", "SQLite"),
    ("postgres", "PostgreSQL"),
    ("mariadb", "MariaDB"),
];

/// The heading of `workload` (its name when unknown).
pub fn title(workload: &str) -> &str {
    WORKLOADS
        .iter()
        .find(|(w, _)| *w == workload)
        .map_or(workload, |(_, t)| t)
}

/// The whole generated section: every group of the store, grouped by workload, each
/// workload followed by the link to its plot (`plot_link(workload)`, when there is one).
pub fn markdown(store: &Store, plot_link: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    for (workload, heading) in WORKLOADS {
        let mut groups: Vec<&Group> = store
            .groups
            .iter()
            .filter(|g| g.workload == workload)
            .collect();
        if groups.is_empty() {
            continue;
        }
        groups.sort_by_key(|g| g.data_bytes);
        for g in groups {
            out += &format!("\n#### {heading}, {}\n\n", g.size);
            out += &group_markdown(g);
        }
        if let Some(link) = plot_link(workload) {
            out += &format!("\n![{heading}: restore time versus data size]({link})\n");
        }
    }
    if out.is_empty() {
        out = "\nNo comparison has been run yet.\n".into();
    }
    out
}

/// The environment, the load, the table and the notes of one group.
fn group_markdown(g: &Group) -> String {
    let mut out = g.environment.clone();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out += &format!("- load: {}\n", g.load);
    let baseline: Vec<f64> = g
        .samples
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Done(f) => Some(f.baseline_stall_s),
            Outcome::Failed { .. } => None,
        })
        .collect();
    out += &format!(
        "- longest operation of the load without any copy (baseline): {}\n\n",
        seconds_cell(&baseline)
    );
    out += "| method | runs | copy time | × ours | longest stall | × ours | load during copy | restore to queryable | × ours | space used |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|\n";
    for method in g.methods() {
        out += &row(g, method);
    }
    out += &format!(
        "\nCells: median (min – max) over the runs. × ours: the method's figure divided by \
         {reference}'s in the same run (median of those ratios); above 1 means the method \
         took longer. Load during copy: the load's operations per second while the copy \
         ran, against the baseline window just before.\n",
        reference = g.reference
    );
    for note in &g.notes {
        out += &format!("\n- {note}");
    }
    if !g.notes.is_empty() {
        out.push('\n');
    }
    out
}

/// One table row.
fn row(g: &Group, method: &str) -> String {
    let done: Vec<&Figures> = g.done(method).into_iter().map(|(_, f)| f).collect();
    let tried = g.tried(method);
    let runs = if done.len() == tried {
        tried.to_string()
    } else {
        format!("{} of {tried}", done.len())
    };
    let name = if method == g.reference {
        format!("**{method}**")
    } else {
        method.to_string()
    };
    if done.is_empty() {
        return format!("| {name} | {runs} | did not finish | | | | | | | |\n");
    }
    let figure = |f: fn(&Figures) -> f64| -> Vec<f64> { done.iter().map(|x| f(x)).collect() };
    let ratio = |f: fn(&Figures) -> f64| -> String {
        if method == g.reference {
            "1".into()
        } else {
            number_cell(&g.ratios(method, f), format_ratio)
        }
    };
    let load: Vec<f64> = done
        .iter()
        .filter(|f| f.ops_baseline > 0.0)
        .map(|f| 100.0 * f.ops_during / f.ops_baseline)
        .collect();
    format!(
        "| {name} | {runs} | {copy} | {copy_ratio} | {stall} | {stall_ratio} | {load} | {restore} | {restore_ratio} | {bytes} |\n",
        copy = seconds_cell(&figure(|f| f.copy_s)),
        copy_ratio = ratio(|f| f.copy_s),
        stall = seconds_cell(&figure(|f| f.stall_s)),
        stall_ratio = ratio(|f| f.stall_s),
        load = number_cell(&load, |v| format!("{v:.0} %")),
        restore = seconds_cell(&figure(|f| f.restore_s)),
        restore_ratio = ratio(|f| f.restore_s),
        bytes = number_cell(&figure(|f| f.copy_bytes as f64), |v| human_bytes(v as u64)),
    )
}

/// Median (min – max) of durations given in seconds.
fn seconds_cell(values: &[f64]) -> String {
    number_cell(values, |s| human(Duration::from_secs_f64(s.max(0.0))))
}

/// A ratio at a precision that fits its size: `0.05×`, `3.4×`, `120×`.
pub fn format_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 1.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Sample;
    use super::*;

    fn done(method: &str, run: u32, copy_s: f64, restore_s: f64) -> Sample {
        Sample {
            method: method.into(),
            run,
            outcome: Outcome::Done(Figures {
                copy_s,
                stall_s: 0.02,
                baseline_stall_s: 0.01,
                ops_during: 50.0,
                ops_baseline: 100.0,
                restore_s,
                copy_bytes: 1 << 30,
                detail: String::new(),
            }),
        }
    }

    #[test]
    fn table_has_ratios_within_runs_and_marks_failures() {
        let g = Group {
            workload: "sqlite".into(),
            size: "1.0 GiB".into(),
            data_bytes: 1 << 30,
            reference: "shadowcopy reflink".into(),
            environment: "- date: today".into(),
            load: "4 transfer threads".into(),
            notes: vec!["sqlite3 .backup restarted forever".into()],
            samples: vec![
                done("shadowcopy reflink", 1, 1.0, 0.5),
                done("VACUUM INTO", 1, 10.0, 2.0),
                Sample {
                    method: "sqlite3 .backup".into(),
                    run: 1,
                    outcome: Outcome::Failed {
                        reason: "timeout".into(),
                    },
                },
                done("shadowcopy reflink", 2, 2.0, 0.5),
                done("VACUUM INTO", 2, 10.0, 2.0),
            ],
        };
        let md = group_markdown(&g);
        assert!(
            md.contains("- date: today\n- load: 4 transfer threads\n"),
            "{md}"
        );
        assert!(
            md.contains("| **shadowcopy reflink** | 2 | 1.50 s (1.00 s – 2.00 s) | 1 |"),
            "{md}"
        );
        // Same-run ratios 10 and 5: median 7.5.
        assert!(
            md.contains("| VACUUM INTO | 2 | 10.00 s | 7.5× (5.0× – 10×) |"),
            "{md}"
        );
        assert!(md.contains("| 50 % | 2.00 s | 4.0× | 1.0 GiB |"), "{md}");
        assert!(
            md.contains("| sqlite3 .backup | 0 of 1 | did not finish |"),
            "{md}"
        );
        assert!(md.contains("- sqlite3 .backup restarted forever"), "{md}");

        let store = Store { groups: vec![g] };
        let all = markdown(&store, &|w| Some(format!("img/{w}.png")));
        assert!(all.contains("#### SQLite, 1.0 GiB"), "{all}");
        assert!(all.contains("](img/sqlite.png)"), "{all}");
    }

    #[test]
    fn ratios_read_well() {
        assert_eq!(format_ratio(0.051), "0.05×");
        assert_eq!(format_ratio(3.44), "3.4×");
        assert_eq!(format_ratio(123.4), "123×");
    }
}
