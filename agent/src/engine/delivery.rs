//! The delivery figures of an app over a window, computed from its history: deployment frequency, change failure
//! rate and time to restore, with the counts they come from. One pure function, [`figures`], defines them; the
//! daemon's `/metrics` and `switchback report` both use it, so they always agree.
//!
//! Definitions (the window is `[now - window, now]`; a deploy is in it when it started in it):
//! - a *deploy* is a `deploy` event that reached production: it ended `ok`, `rolled-back` or `rollback-failed`.
//!   A deploy that ended `failed` changed nothing (refused archive, bad version, ...), and one that ended `busy`
//!   or `interrupted` did not finish: they are counted apart (`not_deployed`) and in no figure;
//! - a *change failure* is a deploy that ended `rolled-back` or `rollback-failed`;
//! - *deployment frequency* is the successful (`ok`) deploys per day of the window;
//! - *change failure rate* is change failures / deploys (none when there were no deploys);
//! - *time to restore* of a change failure runs from the start of its deploy to the end of the first event that
//!   left the app healthy on a good release: the deploy itself when it rolled back (the last good release was
//!   restarted and checked), else the next `deploy`, `rollback` or `pin` that ended `ok` (or a later deploy that
//!   rolled back to a good release). A failure not restored yet is counted in `unrestored`, not in the times.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::statedir::history::{Action, Event, Outcome};

/// What the figures need of one history event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub start: SystemTime,
    pub end: SystemTime,
    pub op: Action,
    pub outcome: Outcome,
}

impl Change {
    /// The change an event records, if it matters to the figures (deploys, rollbacks and pins) and its time
    /// parses.
    pub fn of(e: &Event) -> Option<Change> {
        if !matches!(e.op, Action::Deploy | Action::Rollback | Action::Pin) {
            return None;
        }
        let start = humantime::parse_rfc3339_weak(&e.time).ok()?;
        Some(Change { start, end: start + Duration::from_millis(e.duration_ms), op: e.op, outcome: e.outcome })
    }

    fn is_deploy(&self) -> bool {
        self.op == Action::Deploy && matches!(self.outcome, Outcome::Ok | Outcome::RolledBack | Outcome::RollbackFailed)
    }

    fn is_failure(&self) -> bool {
        self.op == Action::Deploy && matches!(self.outcome, Outcome::RolledBack | Outcome::RollbackFailed)
    }

    /// Whether the app was healthy on a good release when this ended.
    fn restores(&self) -> bool {
        match self.op {
            Action::Deploy => matches!(self.outcome, Outcome::Ok | Outcome::RolledBack),
            Action::Rollback | Action::Pin => self.outcome == Outcome::Ok,
            _ => false,
        }
    }
}

/// An app's delivery figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// The window's length in seconds, and its bounds (RFC 3339).
    pub window_seconds: u64,
    pub from: String,
    pub until: String,
    /// Deploys that reached production, of which `successful` ended `ok` and `failed` are change failures.
    pub deploys: u64,
    pub successful: u64,
    pub failed: u64,
    /// Deploy events that changed nothing or did not finish (`failed`, `busy`, `interrupted`).
    pub not_deployed: u64,
    /// Successful deploys per day.
    pub deployment_frequency_per_day: f64,
    /// `failed / deploys`, or none without deploys.
    pub change_failure_rate: Option<f64>,
    /// Change failures restored, and not restored yet.
    pub restored: u64,
    pub unrestored: u64,
    /// Over the restored failures, in seconds; none without one.
    pub time_to_restore_median_seconds: Option<f64>,
    pub time_to_restore_mean_seconds: Option<f64>,
}

/// The figures of `changes` (in history order) over the `window` that ends at `now`.
pub fn figures(changes: &[Change], now: SystemTime, window: Duration) -> Figures {
    let from = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let in_window = |c: &Change| c.start >= from && c.start <= now;
    let (mut deploys, mut successful, mut failed, mut not_deployed) = (0, 0, 0, 0);
    let mut restores: Vec<f64> = Vec::new();
    let mut unrestored = 0;
    for (i, c) in changes.iter().enumerate() {
        if c.op != Action::Deploy || !in_window(c) {
            continue;
        }
        if !c.is_deploy() {
            not_deployed += 1;
            continue;
        }
        deploys += 1;
        if !c.is_failure() {
            successful += 1;
            continue;
        }
        failed += 1;
        let restored_at = if c.outcome == Outcome::RolledBack {
            Some(c.end)
        } else {
            changes[i + 1..].iter().find(|later| later.restores() && later.end <= now).map(|later| later.end)
        };
        match restored_at {
            Some(t) => restores.push(t.duration_since(c.start).unwrap_or_default().as_secs_f64()),
            None => unrestored += 1,
        }
    }
    let days = window.as_secs_f64() / 86_400.0;
    restores.sort_by(f64::total_cmp);
    let median = match restores.len() {
        0 => None,
        n if n % 2 == 1 => Some(restores[n / 2]),
        n => Some((restores[n / 2 - 1] + restores[n / 2]) / 2.0),
    };
    let mean = (!restores.is_empty()).then(|| restores.iter().sum::<f64>() / restores.len() as f64);
    Figures {
        window_seconds: window.as_secs(),
        from: humantime::format_rfc3339_seconds(from).to_string(),
        until: humantime::format_rfc3339_seconds(now).to_string(),
        deploys,
        successful,
        failed,
        not_deployed,
        deployment_frequency_per_day: if days > 0.0 { successful as f64 / days } else { 0.0 },
        change_failure_rate: (deploys > 0).then(|| failed as f64 / deploys as f64),
        restored: restores.len() as u64,
        unrestored,
        time_to_restore_median_seconds: median,
        time_to_restore_mean_seconds: mean,
    }
}

/// The figures of `events` (a whole history) over `window` up to now.
pub fn of_history(events: &[Event], window: Duration) -> Figures {
    let changes: Vec<Change> = events.iter().filter_map(Change::of).collect();
    figures(&changes, SystemTime::now(), window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// A history line as the CLI and the daemon write it.
    fn event(secs: u64, op: Action, outcome: Outcome, duration_ms: u64) -> Event {
        let mut e = Event::new("web", op);
        e.time = humantime::format_rfc3339_seconds(at(secs)).to_string();
        e.outcome = outcome;
        e.duration_ms = duration_ms;
        e
    }

    fn changes(events: &[Event]) -> Vec<Change> {
        events.iter().filter_map(Change::of).collect()
    }

    const WINDOW: Duration = Duration::from_secs(30 * DAY);

    #[test]
    fn an_empty_history_has_no_rates_and_no_restore_time() {
        let f = figures(&[], at(0), WINDOW);
        assert_eq!((f.deploys, f.successful, f.failed, f.restored, f.unrestored), (0, 0, 0, 0, 0));
        assert_eq!(f.deployment_frequency_per_day, 0.0);
        assert_eq!(f.change_failure_rate, None);
        assert_eq!((f.time_to_restore_median_seconds, f.time_to_restore_mean_seconds), (None, None));
        assert_eq!(f.window_seconds, 30 * DAY);
        assert_eq!(f.until, "2023-11-14T22:13:20Z");
    }

    #[test]
    fn deploys_per_day_and_failure_rate_count_only_what_reached_production_in_the_window() {
        let h = [
            // Before the window: not counted.
            event(0, Action::Deploy, Outcome::Ok, 1000),
            event(31 * DAY, Action::Deploy, Outcome::Ok, 1000),
            event(32 * DAY, Action::Deploy, Outcome::Ok, 1000),
            event(33 * DAY, Action::Deploy, Outcome::RolledBack, 8000),
            // Nothing changed, or nothing finished: apart.
            event(34 * DAY, Action::Deploy, Outcome::Failed, 10),
            event(34 * DAY, Action::Deploy, Outcome::Busy, 10),
            event(34 * DAY, Action::Deploy, Outcome::Interrupted, 10),
            // Not deploys.
            event(35 * DAY, Action::Rollback, Outcome::Ok, 3000),
            event(35 * DAY, Action::Prune, Outcome::Ok, 3),
        ];
        let f = figures(&changes(&h), at(35 * DAY + 60), WINDOW);
        assert_eq!((f.deploys, f.successful, f.failed, f.not_deployed), (3, 2, 1, 3));
        assert!((f.deployment_frequency_per_day - 2.0 / 30.0).abs() < 1e-12);
        assert_eq!(f.change_failure_rate, Some(1.0 / 3.0));
        // The rolled-back deploy restored itself: its own duration.
        assert_eq!((f.restored, f.unrestored), (1, 0));
        assert_eq!(f.time_to_restore_median_seconds, Some(8.0));
        assert_eq!(f.time_to_restore_mean_seconds, Some(8.0));
    }

    #[test]
    fn only_failures_give_a_rate_of_one_and_no_frequency() {
        let h = [
            event(DAY, Action::Deploy, Outcome::RolledBack, 4000),
            event(2 * DAY, Action::Deploy, Outcome::RolledBack, 6000),
            event(3 * DAY, Action::Deploy, Outcome::RollbackFailed, 9000),
        ];
        let f = figures(&changes(&h), at(4 * DAY), WINDOW);
        assert_eq!((f.deploys, f.successful, f.failed), (3, 0, 3));
        assert_eq!(f.deployment_frequency_per_day, 0.0);
        assert_eq!(f.change_failure_rate, Some(1.0));
        // The failed rollback is not restored: nothing after it brought the app back.
        assert_eq!((f.restored, f.unrestored), (2, 1));
        assert_eq!(f.time_to_restore_median_seconds, Some(5.0));
        assert_eq!(f.time_to_restore_mean_seconds, Some(5.0));
    }

    #[test]
    fn a_failed_rollback_is_restored_by_the_next_good_rollback_deploy_or_pin() {
        let h = [
            // Starts at 100 s; a person's rollback ends at 700 s + 5 s.
            event(100, Action::Deploy, Outcome::RollbackFailed, 30_000),
            event(300, Action::Clear, Outcome::Ok, 10),
            event(500, Action::Rollback, Outcome::Failed, 2000),
            event(700, Action::Rollback, Outcome::Ok, 5000),
            // Starts at 1000 s; a good deploy ends at 2000 s + 20 s.
            event(1000, Action::Deploy, Outcome::RollbackFailed, 30_000),
            event(2000, Action::Deploy, Outcome::Ok, 20_000),
            // Starts at 3000 s; a pin ends at 3100 s + 1 s.
            event(3000, Action::Deploy, Outcome::RollbackFailed, 30_000),
            event(3100, Action::Pin, Outcome::Ok, 1000),
            // Rolled back on its own in 3 s.
            event(4000, Action::Deploy, Outcome::RolledBack, 3000),
        ];
        let f = figures(&changes(&h), at(5000), WINDOW);
        assert_eq!((f.deploys, f.successful, f.failed), (5, 1, 4));
        assert_eq!((f.restored, f.unrestored), (4, 0));
        // 605, 1020, 101, 3: median (101 + 605) / 2, mean 1729 / 4.
        assert_eq!(f.time_to_restore_median_seconds, Some(353.0));
        assert_eq!(f.time_to_restore_mean_seconds, Some(1729.0 / 4.0));
        // Seen before the restore ended, the failure is not restored yet.
        let f = figures(&changes(&h[..4]), at(702), WINDOW);
        assert_eq!((f.restored, f.unrestored), (0, 1));
    }

    #[test]
    fn events_whose_time_does_not_parse_are_left_out() {
        let mut e = event(0, Action::Deploy, Outcome::Ok, 1);
        e.time = "yesterday".into();
        assert_eq!(Change::of(&e), None);
        assert_eq!(of_history(&[e], WINDOW).deploys, 0);
    }
}
