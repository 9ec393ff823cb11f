//! Retention policies, restic and snapper style (`keep_last`, `keep_hourly` …
//! `keep_yearly`, `keep_within`), and the pure function that applies one to a set's
//! copies and says why each copy is kept or goes. `prune` (in `delete`) and the agent
//! act on its decisions; nothing here reads the catalog or the clock.
//!
//! The rules, for one set:
//! - Copies being made or being deleted are never chosen (the queue and recovery own them).
//! - Copies made by `create` that are usable and did not fail verification are the
//!   candidates. Each `keep_` rule keeps some of them (newest first): `keep_last N` the
//!   N newest; `keep_hourly N` the newest copy of each of the N newest hours that hold
//!   one (daily, weekly by ISO week, monthly and yearly alike, in the time zone given);
//!   `keep_within D` every copy made within D of the newest copy (not of now: a set
//!   whose copies stopped, or a clock that jumped, loses nothing to it). A copy is kept
//!   when any rule keeps it, and every rule that does is named.
//! - The newest verified copy is always kept, whatever the policy says.
//! - A copy that failed verification, and a failed attempt, go once a newer copy that
//!   counts exists (passed verification, resp. usable); until then they show what went
//!   wrong and are kept.
//! - `pre-restore` copies follow their own policy; without one they are all kept.
//! - A policy without any `keep_` rule keeps everything.

use chrono::{DateTime, TimeZone};
use serde::{Deserialize, Serialize};
use shadowcopy_catalog::CopySummary;
use shadowcopy_core::{CopyState, Origin, VerifyState};

use crate::config::HumanDuration;

/// Which copies of a set to keep (`[sets.NAME.retention]`, `[defaults.retention]`).
/// Counts are of copies (`keep_last`) or of time buckets holding one (the others).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<HumanDuration>,
}

impl RetentionPolicy {
    /// Whether any `keep_` rule is given (an empty policy keeps everything).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

impl std::fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, n) in [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ] {
            if let Some(n) = n {
                parts.push(format!("{name} {n}"));
            }
        }
        if let Some(d) = self.keep_within {
            parts.push(format!("keep_within {}", humantime::format_duration(d.0)));
        }
        if parts.is_empty() {
            return f.write_str("keeps everything");
        }
        f.write_str(&parts.join(", "))
    }
}

/// What the policy decided for one copy, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub set: String,
    pub created_ms: i64,
    pub keep: bool,
    /// Every rule that keeps it, or why it goes.
    pub reasons: Vec<String>,
}

/// The time buckets of the bucketed rules, each with its `strftime` key.
const BUCKETS: [(&str, &str); 5] = [
    ("hourly", "%Y-%m-%d %H:00"),
    ("daily", "%Y-%m-%d"),
    ("weekly", "%G-W%V"),
    ("monthly", "%Y-%m"),
    ("yearly", "%Y"),
];

/// Applies `policy` (and `pre_restore` to pre-restore copies) to one set's `copies`;
/// `tz` places copies in hours and days. One decision per copy, in the order given.
pub fn decide<Tz: TimeZone>(
    copies: &[CopySummary],
    policy: &RetentionPolicy,
    pre_restore: Option<&RetentionPolicy>,
    tz: &Tz,
) -> Vec<Decision>
where
    Tz::Offset: std::fmt::Display,
{
    let mut decisions: Vec<Decision> = copies
        .iter()
        .map(|c| Decision {
            id: c.id,
            set: c.set.clone(),
            created_ms: c.created_ms,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    // Newest first, as every rule reads them: by id, which the catalog gives in the order
    // copies are made, whatever the clock did (a copy taken after the clock was set back
    // is still the newest, and is not deleted as if it were old).
    let mut order: Vec<usize> = (0..copies.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(copies[i].id));
    let keep = |d: &mut Decision, why: String| {
        d.keep = true;
        d.reasons.push(why);
    };

    for &i in &order {
        let c = &copies[i];
        match c.state {
            CopyState::InProgress => keep(&mut decisions[i], "being made".into()),
            CopyState::Deleting => keep(
                &mut decisions[i],
                "being deleted (the next delete finishes it)".into(),
            ),
            _ => {}
        }
    }
    let open = |c: &CopySummary| matches!(c.state, CopyState::InProgress | CopyState::Deleting);
    let of_origin = |origin: Origin| -> Vec<usize> {
        order
            .iter()
            .copied()
            .filter(|&i| copies[i].origin == origin && !open(&copies[i]))
            .collect()
    };

    let created = of_origin(Origin::Create);
    let counts =
        |c: &CopySummary| c.state == CopyState::Usable && c.verify_state != VerifyState::Failed;
    let candidates: Vec<usize> = created
        .iter()
        .copied()
        .filter(|&i| counts(&copies[i]))
        .collect();
    apply(policy, &candidates, copies, &mut decisions, "", tz);
    if let Some(&newest) = candidates
        .iter()
        .find(|&&i| copies[i].verify_state == VerifyState::Passed)
    {
        keep(
            &mut decisions[newest],
            "the newest verified copy (never deleted by a policy)".into(),
        );
    }
    for (rank, &i) in created.iter().enumerate() {
        let c = &copies[i];
        let newer = &created[..rank];
        if c.state == CopyState::Usable && c.verify_state == VerifyState::Failed {
            if newer
                .iter()
                .any(|&n| copies[n].verify_state == VerifyState::Passed && counts(&copies[n]))
            {
                decisions[i]
                    .reasons
                    .push("failed verification, and a newer copy passed".into());
            } else {
                keep(
                    &mut decisions[i],
                    "failed verification; kept until a newer copy passes".into(),
                );
            }
        } else if c.state == CopyState::Failed {
            if newer.iter().any(|&n| counts(&copies[n])) {
                decisions[i]
                    .reasons
                    .push("a failed attempt, and a newer copy is usable".into());
            } else {
                keep(
                    &mut decisions[i],
                    "a failed attempt; kept (to show why) until a newer copy is usable".into(),
                );
            }
        }
    }

    let pre = of_origin(Origin::PreRestore);
    match pre_restore {
        Some(p) => {
            let usable: Vec<usize> = pre
                .iter()
                .copied()
                .filter(|&i| copies[i].state == CopyState::Usable)
                .collect();
            apply(p, &usable, copies, &mut decisions, "pre-restore ", tz);
            for &i in &pre {
                if copies[i].state == CopyState::Failed {
                    decisions[i]
                        .reasons
                        .push("a failed pre-restore copy (it holds nothing)".into());
                }
            }
        }
        None => {
            for &i in &pre {
                keep(
                    &mut decisions[i],
                    "pre-restore copies are kept (no pre_restore_retention)".into(),
                );
            }
        }
    }

    for d in decisions
        .iter_mut()
        .filter(|d| !d.keep && d.reasons.is_empty())
    {
        d.reasons.push("no rule of the policy keeps it".into());
    }
    decisions
}

/// Marks what `policy`'s rules keep among `candidates` (indices into `copies`, newest
/// first); `label` prefixes each reason.
fn apply<Tz: TimeZone>(
    policy: &RetentionPolicy,
    candidates: &[usize],
    copies: &[CopySummary],
    decisions: &mut [Decision],
    label: &str,
    tz: &Tz,
) where
    Tz::Offset: std::fmt::Display,
{
    if policy.is_empty() {
        for &i in candidates {
            decisions[i].keep = true;
            decisions[i].reasons.push(format!(
                "the {label}policy keeps everything (no keep_ rule)"
            ));
        }
        return;
    }
    let mut keep = |i: usize, why: String| {
        decisions[i].keep = true;
        decisions[i].reasons.push(format!("{label}{why}"));
    };
    if let Some(n) = policy.keep_last {
        for (rank, &i) in candidates.iter().take(n as usize).enumerate() {
            keep(i, format!("last {}", rank + 1));
        }
    }
    let counts = [
        policy.keep_hourly,
        policy.keep_daily,
        policy.keep_weekly,
        policy.keep_monthly,
        policy.keep_yearly,
    ];
    for ((name, format), count) in BUCKETS.iter().zip(counts) {
        let Some(mut left) = count else { continue };
        let mut last: Option<String> = None;
        for &i in candidates {
            if left == 0 {
                break;
            }
            let bucket = local(copies[i].created_ms, tz).format(format).to_string();
            if last.as_ref() != Some(&bucket) {
                keep(i, format!("{name} {bucket}"));
                last = Some(bucket);
                left -= 1;
            }
        }
    }
    if let (Some(within), Some(&newest)) = (policy.keep_within, candidates.first()) {
        let since = copies[newest]
            .created_ms
            .saturating_sub(i64::try_from(within.0.as_millis()).unwrap_or(i64::MAX));
        for &i in candidates {
            if copies[i].created_ms >= since {
                keep(
                    i,
                    format!(
                        "within {} of the newest copy",
                        humantime::format_duration(within.0)
                    ),
                );
            }
        }
    }
}

fn local<Tz: TimeZone>(ms: i64, tz: &Tz) -> DateTime<Tz> {
    tz.timestamp_millis_opt(ms)
        .earliest()
        .unwrap_or_else(|| tz.timestamp_millis_opt(0).unwrap())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    /// 2026-12-04 00:00:00 UTC, a Friday.
    const T0: i64 = 1_796_342_400_000;

    fn copy(id: i64, created_ms: i64) -> CopySummary {
        CopySummary {
            id,
            set: "bank".into(),
            origin: Origin::Create,
            provider: "copy".into(),
            location: Some(format!("/copies/copy-{id}")),
            state: CopyState::Usable,
            phase: "done".into(),
            error: None,
            pid: 1,
            created_ms,
            finished_ms: Some(created_ms + 1000),
            freeze_deadline_ms: 10_000,
            freeze_window_us: Some(1000),
            verify_state: VerifyState::Passed,
            files: 1,
            bytes: 1,
            spec_json: String::new(),
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<i64> {
        decisions.iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    fn reasons(decisions: &[Decision], id: i64) -> Vec<String> {
        decisions
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .reasons
            .clone()
    }

    #[test]
    fn keep_last_keeps_the_newest_and_says_so() {
        let copies: Vec<_> = (1..=5).map(|i| copy(i, T0 + i * HOUR)).collect();
        let policy = RetentionPolicy {
            keep_last: Some(2),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        assert_eq!(kept(&d), vec![4, 5]);
        assert_eq!(
            reasons(&d, 5),
            vec![
                "last 1".to_string(),
                "the newest verified copy (never deleted by a policy)".into()
            ]
        );
        assert_eq!(reasons(&d, 4), vec!["last 2".to_string()]);
        assert_eq!(
            reasons(&d, 1),
            vec!["no rule of the policy keeps it".to_string()]
        );
    }

    #[test]
    fn a_clock_set_back_or_forward_deletes_no_copy_the_policy_keeps() {
        // Copy 3 was taken after the clock was set back two days; copy 4 after it jumped
        // a year ahead.
        let copies = vec![
            copy(1, T0),
            copy(2, T0 + HOUR),
            copy(3, T0 - 2 * DAY),
            copy(4, T0 + 365 * DAY),
        ];
        let last = RetentionPolicy {
            keep_last: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&copies, &last, None, &Utc)), vec![3, 4]);
        let within = RetentionPolicy {
            keep_within: Some(HumanDuration(Duration::from_secs(86_400))),
            keep_last: Some(2),
            ..Default::default()
        };
        // Nothing the newest copy's time puts within a day is dropped for the jump
        // forward; the copies made before it are kept by keep_last as they should be.
        assert_eq!(kept(&decide(&copies, &within, None, &Utc)), vec![3, 4]);
        let daily = RetentionPolicy {
            keep_daily: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&decide(&copies, &daily, None, &Utc)), vec![2, 3, 4]);
    }

    #[test]
    fn buckets_keep_the_newest_copy_of_each_of_the_newest_periods() {
        // Four copies a day for ten days, every six hours.
        let copies: Vec<_> = (0..40).map(|i| copy(i + 1, T0 + i * 6 * HOUR)).collect();
        let policy = RetentionPolicy {
            keep_daily: Some(3),
            keep_weekly: Some(2),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        // Daily: the last copy (18:00) of 2026-12-13, -12, -11. Weekly: the newest of the
        // ISO week 2026-W50 (copy 40, already daily) and of 2026-W49 (Sunday 12-06 18:00).
        assert_eq!(kept(&d), vec![12, 32, 36, 40]);
        assert_eq!(
            reasons(&d, 40)[..2],
            ["daily 2026-12-13".to_string(), "weekly 2026-W50".into()]
        );
        assert_eq!(reasons(&d, 12), vec!["weekly 2026-W49".to_string()]);
        assert_eq!(reasons(&d, 36), vec!["daily 2026-12-12".to_string()]);
    }

    #[test]
    fn keep_within_counts_from_the_newest_copy_not_from_now() {
        let copies: Vec<_> = (0..10).map(|i| copy(i + 1, T0 + i * DAY)).collect();
        let policy = RetentionPolicy {
            keep_within: Some(HumanDuration(Duration::from_secs(2 * 86_400))),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        // No clock is read: however long ago the last copy was, the two days before it stay.
        assert_eq!(kept(&d), vec![8, 9, 10]);
        assert_eq!(
            reasons(&d, 8),
            vec!["within 2days of the newest copy".to_string()]
        );
    }

    #[test]
    fn the_newest_verified_copy_is_never_deleted() {
        let mut copies: Vec<_> = (1..=4).map(|i| copy(i, T0 + i * HOUR)).collect();
        copies[2].verify_state = VerifyState::NotVerified;
        copies[3].verify_state = VerifyState::NotVerified;
        let policy = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        assert_eq!(kept(&d), vec![2, 4]);
        assert_eq!(
            reasons(&d, 2),
            vec!["the newest verified copy (never deleted by a policy)".to_string()]
        );
    }

    #[test]
    fn damaged_and_failed_copies_go_once_a_newer_one_counts() {
        let mut copies: Vec<_> = (1..=5).map(|i| copy(i, T0 + i * HOUR)).collect();
        copies[0].verify_state = VerifyState::Failed; // older than a passed copy: goes
        copies[1].state = CopyState::Failed; // older than a usable copy: goes
        copies[3].verify_state = VerifyState::Failed; // no newer copy passed: kept
        copies[4].state = CopyState::Failed; // the newest attempt failed: kept
        let policy = RetentionPolicy {
            keep_last: Some(5),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        assert_eq!(kept(&d), vec![3, 4, 5]);
        assert_eq!(
            reasons(&d, 1),
            vec!["failed verification, and a newer copy passed".to_string()]
        );
        assert_eq!(
            reasons(&d, 4),
            vec!["failed verification; kept until a newer copy passes".to_string()]
        );
        assert_eq!(
            reasons(&d, 2),
            vec!["a failed attempt, and a newer copy is usable".to_string()]
        );
        assert_eq!(
            reasons(&d, 5),
            vec!["a failed attempt; kept (to show why) until a newer copy is usable".to_string()]
        );
    }

    #[test]
    fn copies_in_flight_and_pre_restore_copies_follow_their_own_rules() {
        let mut copies: Vec<_> = (1..=6).map(|i| copy(i, T0 + i * HOUR)).collect();
        copies[0].state = CopyState::Deleting;
        copies[5].state = CopyState::InProgress;
        for c in &mut copies[1..4] {
            c.origin = Origin::PreRestore;
        }
        let policy = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        let d = decide(&copies, &policy, None, &Utc);
        assert_eq!(kept(&d), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(reasons(&d, 6), vec!["being made".to_string()]);
        let pre = RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        };
        let d = decide(&copies, &policy, Some(&pre), &Utc);
        assert_eq!(kept(&d), vec![1, 4, 5, 6]);
        assert_eq!(reasons(&d, 4), vec!["pre-restore last 1".to_string()]);
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let copies: Vec<_> = (1..=3).map(|i| copy(i, T0 + i * HOUR)).collect();
        let d = decide(&copies, &RetentionPolicy::default(), None, &Utc);
        assert_eq!(kept(&d), vec![1, 2, 3]);
    }

    #[test]
    fn unknown_keys_and_negative_counts_are_refused() {
        assert!(toml::from_str::<RetentionPolicy>("keep_dayly = 3").is_err());
        assert!(toml::from_str::<RetentionPolicy>("keep_daily = -1").is_err());
        let p: RetentionPolicy = toml::from_str("keep_daily = 7\nkeep_within = \"2d\"").unwrap();
        assert_eq!(p.to_string(), "keep_daily 7, keep_within 2days");
    }
}
