//! The agent's Prometheus metrics (`/metrics`): per set, the age of the newest usable
//! copy, copies by state, the freeze window and job durations (histograms), bytes of the
//! newest copy, verification failures and the last result of each kind of job; when
//! each set's logs last reached its archive, and failed pushes of them; the queue's
//! depth. Counts and ages are read from the catalog at each scrape (they are
//! right after a restart); histograms and counters are since the agent started.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use shadowcopy_catalog::{JobRecord, SetTotals};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabel {
    pub set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetStateLabel {
    pub set: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub set: String,
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn freeze_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn duration_histogram() -> Histogram {
    // 10 ms to ~3 h.
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// The metrics and their registry.
pub struct Metrics {
    registry: Registry,
    newest_usable_age: Family<SetLabel, FloatGauge>,
    copies: Family<SetStateLabel, Gauge>,
    newest_copy_bytes: Family<SetLabel, Gauge>,
    freeze_window: Family<SetLabel, Histogram, fn() -> Histogram>,
    job_duration: Family<JobLabel, Histogram, fn() -> Histogram>,
    verification_failures: Family<SetLabel, Counter>,
    last_job_success: Family<JobLabel, Gauge>,
    last_job_time: Family<JobLabel, FloatGauge>,
    queue_depth: Gauge,
    logs_pushed: Family<SetLabel, FloatGauge>,
    log_push_failures: Family<SetLabel, Counter>,
    /// Serialises a scrape's refresh and encoding (two scrapes at once would clear each
    /// other's families).
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shadowcopy");
        let newest_usable_age = Family::<SetLabel, FloatGauge>::default();
        registry.register_with_unit(
            "newest_usable_copy_age",
            "Time since the newest usable copy of the set was taken",
            Unit::Seconds,
            newest_usable_age.clone(),
        );
        let copies = Family::<SetStateLabel, Gauge>::default();
        registry.register(
            "copies",
            "Copies in the catalog by set and state",
            copies.clone(),
        );
        let newest_copy_bytes = Family::<SetLabel, Gauge>::default();
        registry.register_with_unit(
            "newest_copy",
            "Size of the newest usable copy of the set",
            Unit::Bytes,
            newest_copy_bytes.clone(),
        );
        let freeze_window = Family::<SetLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            freeze_histogram,
        );
        registry.register_with_unit(
            "freeze_window",
            "The longest stall the application saw in each copy the agent took",
            Unit::Seconds,
            freeze_window.clone(),
        );
        let job_duration = Family::<JobLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register_with_unit(
            "job_duration",
            "How long the agent's jobs took, by kind (create, verify, restore, delete, prune)",
            Unit::Seconds,
            job_duration.clone(),
        );
        let verification_failures = Family::<SetLabel, Counter>::default();
        registry.register(
            "verification_failures",
            "Verifications that found a copy damaged",
            verification_failures.clone(),
        );
        let last_job_success = Family::<JobLabel, Gauge>::default();
        registry.register(
            "last_job_success",
            "1 if the newest finished job of this kind for the set succeeded, else 0",
            last_job_success.clone(),
        );
        let last_job_time = Family::<JobLabel, FloatGauge>::default();
        registry.register_with_unit(
            "last_job_finished",
            "When the newest finished job of this kind for the set ended (Unix time)",
            Unit::Seconds,
            last_job_time.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs waiting for their turn",
            queue_depth.clone(),
        );
        let logs_pushed = Family::<SetLabel, FloatGauge>::default();
        registry.register_with_unit(
            "logs_pushed",
            "When the set's logs last reached its archive off the host (Unix time)",
            Unit::Seconds,
            logs_pushed.clone(),
        );
        let log_push_failures = Family::<SetLabel, Counter>::default();
        registry.register(
            "log_push_failures",
            "Pushes of the set's logs to its archive that failed",
            log_push_failures.clone(),
        );
        Metrics {
            registry,
            logs_pushed,
            log_push_failures,
            newest_usable_age,
            copies,
            newest_copy_bytes,
            freeze_window,
            job_duration,
            verification_failures,
            last_job_success,
            last_job_time,
            queue_depth,
            scrape: Mutex::new(()),
        }
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    /// A finished job (at start: the newest of each kind and set in the catalog).
    pub fn job_finished(&self, job: &JobRecord) {
        let label = JobLabel {
            set: job.set.clone(),
            kind: job.kind.clone(),
        };
        self.last_job_success
            .get_or_create(&label)
            .set(i64::from(job.state == "done"));
        if let Some(finished) = job.finished_ms {
            self.last_job_time
                .get_or_create(&label)
                .set(finished as f64 / 1000.0);
        }
    }

    /// A job this agent ran: its duration, and for a create its freeze window.
    pub fn job_ran(&self, kind: &str, set: &str, took: Duration, freeze_window: Option<Duration>) {
        self.job_duration
            .get_or_create(&JobLabel {
                set: set.to_string(),
                kind: kind.to_string(),
            })
            .observe(took.as_secs_f64());
        if let Some(window) = freeze_window {
            self.freeze_window
                .get_or_create(&SetLabel {
                    set: set.to_string(),
                })
                .observe(window.as_secs_f64());
        }
    }

    /// The set's logs reached its archive at `at_ms`.
    pub fn logs_pushed(&self, set: &str, at_ms: i64) {
        self.logs_pushed
            .get_or_create(&SetLabel {
                set: set.to_string(),
            })
            .set(at_ms as f64 / 1000.0);
    }

    pub fn log_push_failed(&self, set: &str) {
        self.log_push_failures
            .get_or_create(&SetLabel {
                set: set.to_string(),
            })
            .inc();
    }

    pub fn verification_failed(&self, set: &str) {
        self.verification_failures
            .get_or_create(&SetLabel {
                set: set.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the catalog's copies (`copies`, oldest first) counted
    /// as of now (`now_ms`).
    pub fn encode(&self, totals: &BTreeMap<String, SetTotals>, now_ms: i64) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.copies.clear();
        self.newest_usable_age.clear();
        self.newest_copy_bytes.clear();
        for (set, totals) in totals {
            for (state, count) in &totals.by_state {
                self.copies
                    .get_or_create(&SetStateLabel {
                        set: set.clone(),
                        state: state.as_str().to_string(),
                    })
                    .set(*count);
            }
            if let Some(newest) = &totals.newest_usable {
                let label = SetLabel { set: set.clone() };
                self.newest_usable_age
                    .get_or_create(&label)
                    .set((now_ms - newest.created_ms).max(0) as f64 / 1000.0);
                self.newest_copy_bytes
                    .get_or_create(&label)
                    .set(newest.bytes);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
