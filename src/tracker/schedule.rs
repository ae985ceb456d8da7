//! When to announce next, with time passed in: the tracker's `interval` after an answer (its
//! `min interval` as the floor of any earlier re-announce, e.g. while short of peers), and a
//! doubling back-off after a round in which no tracker answered. Bounded both ways, so a
//! tracker cannot make us announce every second or never again.

use std::time::{Duration, Instant};

/// The bounds and defaults of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Interval when the tracker gives none.
    pub default_interval: Duration,
    /// Shortest interval we accept from a tracker (a smaller one is raised to this).
    pub min_interval_floor: Duration,
    /// Longest interval we accept (a larger one is lowered to this).
    pub max_interval: Duration,
    /// Wait after the first round that failed; doubled after each further failure.
    pub retry_first: Duration,
    /// Longest wait between failed rounds.
    pub retry_max: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            default_interval: Duration::from_secs(30 * 60),
            min_interval_floor: Duration::from_secs(60),
            max_interval: Duration::from_secs(4 * 3600),
            retry_first: Duration::from_secs(15),
            retry_max: Duration::from_secs(30 * 60),
        }
    }
}

/// The announce schedule of one torrent's trackers.
#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    /// When the next regular announce is due.
    next: Instant,
    /// Earliest time an early re-announce may go out.
    earliest: Instant,
    failures: u32,
}

impl Schedule {
    /// A schedule whose first announce is due at `now`.
    pub fn new(cfg: ScheduleConfig, now: Instant) -> Schedule {
        Schedule {
            cfg,
            next: now,
            earliest: now,
            failures: 0,
        }
    }

    /// A tracker answered at `now` with these intervals.
    pub fn on_answer(&mut self, now: Instant, interval: Option<Duration>, min: Option<Duration>) {
        self.failures = 0;
        let interval = interval
            .unwrap_or(self.cfg.default_interval)
            .clamp(self.cfg.min_interval_floor, self.cfg.max_interval);
        let min = min
            .unwrap_or(interval / 2)
            .clamp(self.cfg.min_interval_floor, interval);
        self.next = now + interval;
        self.earliest = now + min;
    }

    /// No tracker answered in the round that ended at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        let wait = self
            .cfg
            .retry_first
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.cfg.retry_max);
        self.failures = self.failures.saturating_add(1);
        self.next = now + wait;
        self.earliest = self.next;
    }

    /// When the next announce should go out: the regular time, or earlier (never before the
    /// tracker's `min interval`) when we want more peers.
    pub fn due_at(&self, want_peers: bool) -> Instant {
        if want_peers && self.failures == 0 {
            self.earliest.min(self.next)
        } else {
            self.next
        }
    }

    /// Rounds in a row in which no tracker answered.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_trackers_interval_is_honoured_within_bounds() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default(), t0);
        assert_eq!(s.due_at(false), t0, "the first announce is due at once");
        s.on_answer(t0, Some(S(1800)), Some(S(900)));
        assert_eq!(s.due_at(false), t0 + S(1800));
        assert_eq!(
            s.due_at(true),
            t0 + S(900),
            "short of peers: at min interval"
        );
        // A tracker asking for an announce every second gets one a minute at most.
        s.on_answer(t0, Some(S(1)), Some(S(0)));
        assert_eq!(s.due_at(false), t0 + S(60));
        assert_eq!(s.due_at(true), t0 + S(60));
        // One asking for a week gets four hours.
        s.on_answer(t0, Some(S(7 * 86400)), None);
        assert_eq!(s.due_at(false), t0 + S(4 * 3600));
        assert_eq!(
            s.due_at(true),
            t0 + S(2 * 3600),
            "no min interval: half the interval"
        );
        // No interval at all: the default; min interval above interval is capped by it.
        s.on_answer(t0, None, Some(S(99_999)));
        assert_eq!(s.due_at(true), t0 + S(1800));
    }

    #[test]
    fn failed_rounds_back_off_doubling_up_to_the_cap_and_an_answer_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default(), t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            s.on_failure(now);
            let next = s.due_at(true);
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(
            waits,
            vec![15, 30, 60, 120, 240, 480, 960, 1800, 1800, 1800]
        );
        assert_eq!(s.failures(), 10);
        s.on_answer(now, Some(S(600)), Some(S(300)));
        assert_eq!(s.failures(), 0);
        assert_eq!(s.due_at(false), now + S(600));
        s.on_failure(now);
        assert_eq!(s.due_at(false), now + S(15));
    }
}
