//! Time as the core sees it: milliseconds since an epoch the driver picks.
//!
//! The core never reads a clock. The tokio driver maps `std::time::Instant` onto this; the
//! simulator advances it by hand. Eight bytes keep per-node state small at a million nodes.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in milliseconds since the driver's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// Milliseconds elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The time in milliseconds, for logs and metrics.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_millis() as u64))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d.as_millis() as u64))
    }
}
