//! When a scheduled job falls due: the pure rule the agent's loop asks every second.
//! A slot missed while the agent was down runs once at start (not once per missed
//! slot); a clock that jumps forward runs a job once, one that jumps back waits for the
//! next slot after the new time, never for the old one.

use chrono::{DateTime, TimeZone, Timelike};

/// Why a job runs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Its slot came while the agent ran.
    Schedule,
    /// Its slot passed while the agent was not running (or busy): run once, now.
    MissedSchedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::MissedSchedule => "missed-schedule",
        }
    }
}

/// Whether a job on `cron` is due at `now`, given when it last fell due (`last`: from
/// the catalog's jobs, or earlier in this run; the caller keeps the earlier of it and
/// now, so a clock set back does not wait for the old time) and when the agent started.
/// A job that never ran waits for its first slot after the start.
pub fn due<Tz: TimeZone>(
    cron: &croner::Cron,
    last: Option<&DateTime<Tz>>,
    started: &DateTime<Tz>,
    now: &DateTime<Tz>,
) -> Option<Trigger> {
    // A `last` in the future means the clock went back: count from now instead.
    let from = match last {
        Some(last) if last <= now => last.clone(),
        Some(_) => now.clone(),
        None => started.clone(),
    };
    let next = cron
        .find_next_occurrence(&whole_second(&from), false)
        .ok()?;
    if next > *now {
        return None;
    }
    // A slot more than a second before this check (the agent was down, or busy, or the
    // clock jumped) was missed; one at the time of the check is on schedule.
    if now.clone().signed_duration_since(next).num_seconds() > 1 {
        Some(Trigger::MissedSchedule)
    } else {
        Some(Trigger::Schedule)
    }
}

/// The next slot of `cron` after `now`, for how long the loop may sleep.
pub fn next_slot<Tz: TimeZone>(cron: &croner::Cron, now: &DateTime<Tz>) -> Option<DateTime<Tz>> {
    cron.find_next_occurrence(&whole_second(now), false).ok()
}

/// `t` without its fraction of a second: slots are on whole seconds, and the next one
/// after 10:14:59.3 is 10:15:00, not 10:15:00.3.
fn whole_second<Tz: TimeZone>(t: &DateTime<Tz>) -> DateTime<Tz> {
    t.with_nanosecond(0).unwrap_or_else(|| t.clone())
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    fn cron(s: &str) -> croner::Cron {
        shadowcopy_engine::config::parse_schedule(s).unwrap()
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, h, m, s).unwrap()
    }

    #[test]
    fn a_slot_that_comes_while_running_is_on_schedule_once() {
        let c = cron("*/15 * * * *");
        let started = at(10, 1, 0);
        assert_eq!(due(&c, None, &started, &at(10, 14, 59)), None);
        assert_eq!(
            due(&c, None, &started, &at(10, 15, 0)),
            Some(Trigger::Schedule)
        );
        // Once it fell due at 10:15, nothing until 10:30.
        let last = at(10, 15, 0);
        assert_eq!(due(&c, Some(&last), &started, &at(10, 29, 59)), None);
        assert_eq!(
            due(&c, Some(&last), &started, &at(10, 30, 0)),
            Some(Trigger::Schedule)
        );
    }

    #[test]
    fn slots_missed_while_down_run_once_at_start() {
        let c = cron("*/15 * * * *");
        // Last ran at 08:00, the agent was down until 10:01: eight slots passed.
        let last = at(8, 0, 0);
        let started = at(10, 1, 0);
        assert_eq!(
            due(&c, Some(&last), &started, &started),
            Some(Trigger::MissedSchedule)
        );
        // Having run at 10:01, the next is 10:15, not 08:30.
        let ran = at(10, 1, 0);
        assert_eq!(due(&c, Some(&ran), &started, &at(10, 2, 0)), None);
    }

    #[test]
    fn a_clock_jump_causes_no_burst_and_no_wait_for_the_old_time() {
        let c = cron("* * * * *");
        let started = at(10, 0, 0);
        // Forward by a day: one run, then the next minute.
        let last = at(10, 0, 0);
        let jumped = last + Duration::days(1);
        assert_eq!(
            due(&c, Some(&last), &started, &jumped),
            Some(Trigger::MissedSchedule)
        );
        assert_eq!(due(&c, Some(&jumped), &started, &jumped), None);
        // Back by a day: the loop keeps the earlier time as the last one, and the next
        // minute after the new time is due, not one a day away.
        let back = at(10, 0, 0) - Duration::days(1);
        assert_eq!(due(&c, Some(&last), &started, &back), None);
        let last = last.min(back);
        let a_minute_later = back + Duration::minutes(1);
        assert_eq!(
            due(&c, Some(&last), &started, &a_minute_later),
            Some(Trigger::Schedule)
        );
    }

    #[test]
    fn seconds_are_an_optional_sixth_field() {
        let c = cron("*/5 * * * * *");
        let started = at(10, 0, 1);
        assert_eq!(due(&c, None, &started, &at(10, 0, 4)), None);
        assert_eq!(
            due(&c, None, &started, &at(10, 0, 5)),
            Some(Trigger::Schedule)
        );
        assert_eq!(next_slot(&c, &at(10, 0, 5)), Some(at(10, 0, 10)));
    }

    #[test]
    fn slots_are_on_whole_seconds_whatever_the_fraction_of_now() {
        let c = cron("*/15 * * * *");
        let ms = Duration::milliseconds;
        assert_eq!(
            next_slot(&c, &(at(10, 14, 59) + ms(300))),
            Some(at(10, 15, 0))
        );
        // Having fallen due at 10:15:00.4, the next is 10:30:00.000, not 10:30:00.4.
        let last = at(10, 15, 0) + ms(400);
        let started = at(10, 1, 0) + ms(700);
        assert_eq!(
            due(&c, Some(&last), &started, &at(10, 30, 0)),
            Some(Trigger::Schedule)
        );
        assert_eq!(
            due(&c, None, &started, &at(10, 15, 0)),
            Some(Trigger::Schedule)
        );
    }
}
