//! What a peer comparison measured, kept as JSON so the table and the plots can be
//! regenerated, and so sizes measured in separate invocations (1 GiB today, 8 GiB
//! tonight) end up in one table.
//!
//! The unit is a [`Group`]: every run of every method of one workload at one size, from
//! one invocation. Methods of a group share each run (run 1 of every method, then run 2
//! ...), so a ratio between two methods is taken within a run, on the same data, under
//! the same load, and survives a noisy machine better than a ratio of medians would.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Every group measured so far, in the order they were first measured.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Store {
    pub groups: Vec<Group>,
}

/// All runs of one workload at one size.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Group {
    /// `sqlite`, `postgres` or `mariadb`.
    pub workload: String,
    /// How the size reads in the table: `1.0 GiB`, `scale 100`.
    pub size: String,
    /// Bytes of the live data when the runs began (the plots' x axis).
    pub data_bytes: u64,
    /// The method every ratio is relative to (shadowcopy on the peers' file system).
    pub reference: String,
    /// Date, machine, versions: Markdown list items, one per line.
    pub environment: String,
    /// What the load was, in one sentence.
    pub load: String,
    /// Things the reader should know about this group (a method that did not finish,
    /// a retried create).
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// One method's result in one run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Sample {
    pub method: String,
    pub run: u32,
    pub outcome: Outcome,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done(Figures),
    /// The method did not produce a restorable copy in this run; `reason` says why
    /// (a timeout, an error).
    Failed {
        reason: String,
    },
}

/// What one method cost in one run. Times in seconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Figures {
    /// From the start of the copy command until it returned a finished copy (for
    /// shadowcopy: `create`, verification included).
    pub copy_s: f64,
    /// The longest single operation of the load while the copy ran (the application's
    /// stall, as its own clock saw it).
    pub stall_s: f64,
    /// The same over a window of load without any copy, just before.
    pub baseline_stall_s: f64,
    /// Operations per second of the load while the copy ran, and without a copy.
    pub ops_during: f64,
    pub ops_baseline: f64,
    /// From the decision to restore (server stopped or files gone) until the database
    /// answers a query with the copy's data.
    pub restore_s: f64,
    /// How much the copy took on disk: the file system's used bytes after the copy
    /// minus before (shared extents cost nothing; compression counts).
    pub copy_bytes: u64,
    /// The steps of the copy and the restore with their times, for the log and the notes.
    #[serde(default)]
    pub detail: String,
}

impl Store {
    /// The store at `path`, or an empty one when the file does not exist yet.
    pub fn load(path: &Path) -> anyhow::Result<Store> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a results file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the store (via a temporary file and a rename, so a crash mid-write leaves
    /// the old results).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Adds `group`, replacing an earlier group of the same workload and size (a new
    /// measurement supersedes the old one instead of mixing with it).
    pub fn put(&mut self, group: Group) {
        match self
            .groups
            .iter_mut()
            .find(|g| g.workload == group.workload && g.size == group.size)
        {
            Some(old) => *old = group,
            None => self.groups.push(group),
        }
    }

    /// Like [`Store::put`] for a measurement still under way: it does not replace an
    /// earlier group of the same size with more runs, so a bench stopped early keeps the
    /// older, fuller measurement. Returns whether `group` went in.
    pub fn put_unfinished(&mut self, group: Group) -> bool {
        let fuller = self.groups.iter().any(|g| {
            g.workload == group.workload && g.size == group.size && g.runs() > group.runs()
        });
        if !fuller {
            self.put(group);
        }
        !fuller
    }
}

impl Group {
    /// How many runs it holds (the highest run number).
    pub fn runs(&self) -> u32 {
        self.samples.iter().map(|s| s.run).max().unwrap_or(0)
    }

    /// The methods in the order they first appear.
    pub fn methods(&self) -> Vec<&str> {
        let mut methods: Vec<&str> = Vec::new();
        for s in &self.samples {
            if !methods.contains(&s.method.as_str()) {
                methods.push(&s.method);
            }
        }
        methods
    }

    /// The figures of `method`'s successful runs, as (run, figures).
    pub fn done(&self, method: &str) -> Vec<(u32, &Figures)> {
        self.samples
            .iter()
            .filter(|s| s.method == method)
            .filter_map(|s| match &s.outcome {
                Outcome::Done(f) => Some((s.run, f)),
                Outcome::Failed { .. } => None,
            })
            .collect()
    }

    /// How many runs `method` was tried in.
    pub fn tried(&self, method: &str) -> usize {
        self.samples.iter().filter(|s| s.method == method).count()
    }

    /// `method`'s figure divided by the reference's, per run where both succeeded.
    pub fn ratios(&self, method: &str, figure: fn(&Figures) -> f64) -> Vec<f64> {
        let reference = self.done(&self.reference);
        self.done(method)
            .into_iter()
            .filter_map(|(run, f)| {
                let (_, r) = reference.iter().find(|(rr, _)| *rr == run)?;
                let denominator = figure(r);
                (denominator > 0.0).then(|| figure(f) / denominator)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(copy_s: f64) -> Figures {
        Figures {
            copy_s,
            stall_s: 0.1,
            baseline_stall_s: 0.05,
            ops_during: 90.0,
            ops_baseline: 100.0,
            restore_s: 2.0,
            copy_bytes: 1 << 20,
            detail: String::new(),
        }
    }

    fn group(size: &str) -> Group {
        let sample = |method: &str, run, copy_s| Sample {
            method: method.into(),
            run,
            outcome: Outcome::Done(figures(copy_s)),
        };
        Group {
            workload: "sqlite".into(),
            size: size.into(),
            data_bytes: 1 << 30,
            reference: "ours".into(),
            environment: String::new(),
            load: String::new(),
            notes: vec![],
            samples: vec![
                sample("ours", 1, 2.0),
                sample("peer", 1, 10.0),
                sample("ours", 2, 4.0),
                sample("peer", 2, 12.0),
                Sample {
                    method: "peer".into(),
                    run: 3,
                    outcome: Outcome::Failed {
                        reason: "timed out".into(),
                    },
                },
            ],
        }
    }

    #[test]
    fn ratios_pair_runs_and_skip_failures() {
        let g = group("1 GiB");
        assert_eq!(g.methods(), ["ours", "peer"]);
        assert_eq!(g.ratios("peer", |f| f.copy_s), [5.0, 3.0]);
        assert_eq!(g.tried("peer"), 3);
        assert_eq!(g.done("peer").len(), 2);
    }

    #[test]
    fn unfinished_runs_do_not_replace_a_fuller_measurement() {
        let mut store = Store::default();
        store.put(group("1 GiB"));
        let mut first_run = group("1 GiB");
        first_run.samples.retain(|s| s.run == 1);
        first_run.notes.push("run 1 only".into());
        assert_eq!(first_run.runs(), 1);
        assert!(!store.put_unfinished(first_run.clone()));
        assert_eq!(store.groups[0].runs(), 3);
        assert!(store.groups[0].notes.is_empty());

        let mut elsewhere = first_run.clone();
        elsewhere.size = "8 GiB".into();
        assert!(store.put_unfinished(elsewhere));
        let mut more = group("8 GiB");
        more.notes.push("runs 1-3".into());
        assert!(store.put_unfinished(more));
        assert_eq!(store.groups[1].notes, ["runs 1-3"]);
    }

    #[test]
    fn put_replaces_the_same_size_and_the_store_round_trips() {
        let mut store = Store::default();
        store.put(group("1 GiB"));
        store.put(group("8 GiB"));
        let mut again = group("1 GiB");
        again.notes.push("second".into());
        store.put(again);
        assert_eq!(store.groups.len(), 2);
        assert_eq!(store.groups[0].notes, ["second"]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/peers.json");
        store.save(&path).unwrap();
        let back = Store::load(&path).unwrap();
        assert_eq!(back.groups.len(), 2);
        assert!(matches!(
            back.groups[0].samples[4].outcome,
            Outcome::Failed { .. }
        ));
        assert!(Store::load(&dir.path().join("none.json"))
            .unwrap()
            .groups
            .is_empty());
    }
}
