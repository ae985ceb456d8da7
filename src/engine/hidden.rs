//! How many pieces the other downloaders behind a seed have reserved there and not yet
//! announced: the blind spot of a crowd sharing one seed.
//!
//! A piece another downloader is fetching from the seed is invisible to us until its `have`
//! arrives, about one request-to-verified latency later. By Little's law the number of such
//! pieces is the rate at which seed-only pieces turn into pieces a peer has (their `have`s)
//! times that latency, which is the number of such `have`s we saw within our own latency at
//! the seed. When that many (or more) of the pieces left at the seed are probably reserved
//! by others already, a new piece we start there is likely to be one the seed sends twice;
//! the [`crate::engine::picker::Picker`] then waits instead (the seed's upload goes to the
//! requests of others meanwhile) and picks again once the `have`s have come in.
//!
//! Pure logic: the caller passes the time, so tests drive it with made-up instants.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long announcements are kept before our first piece from a seed is measured: about
/// the upload tick of a capped libtorrent seeder (it sends in half-second bursts) plus one.
/// They are not counted until then (see [`HiddenReservations::estimate`]).
const DEFAULT_LATENCY: Duration = Duration::from_secs(1);
/// Bounds on the measured window, so one odd sample cannot blind or freeze the estimate.
const MIN_LATENCY: Duration = Duration::from_millis(10);
const MAX_LATENCY: Duration = Duration::from_secs(5);

/// The estimator for one torrent; everything in it is bounded by the piece count.
#[derive(Debug)]
pub struct HiddenReservations {
    /// When a peer announced a piece only the seed had and we lack, oldest first; pruned to
    /// the window and never longer than `cap`.
    announced: VecDeque<Instant>,
    /// Pieces we started at a seed and when: the latency samples.
    started: HashMap<u32, Instant>,
    /// Smoothed request-to-verified latency of our pieces from seeds.
    latency: Option<Duration>,
    /// Most entries in `announced` or `started` (the piece count).
    cap: usize,
    /// Pieces already counted in `announced`: each piece counts once in the torrent's life,
    /// so a peer that announces, disconnects and comes back to announce again cannot keep
    /// the estimate up and hold us back from the seed.
    counted: Vec<bool>,
}

impl HiddenReservations {
    /// An estimator for a torrent of `pieces` pieces.
    pub fn new(pieces: u32) -> HiddenReservations {
        HiddenReservations {
            announced: VecDeque::new(),
            started: HashMap::new(),
            latency: None,
            cap: pieces.max(1) as usize,
            counted: vec![false; pieces as usize],
        }
    }

    fn window(&self) -> Duration {
        self.latency.unwrap_or(DEFAULT_LATENCY)
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window();
        while let Some(&t) = self.announced.front() {
            if now.saturating_duration_since(t) > window || self.announced.len() > self.cap {
                self.announced.pop_front();
            } else {
                break;
            }
        }
    }

    /// A peer announced piece `p`, which in our view only the seed had and we still lack.
    pub fn on_announced(&mut self, p: u32, now: Instant) {
        match self.counted.get_mut(p as usize) {
            Some(c) if !*c => *c = true,
            _ => return,
        }
        self.announced.push_back(now);
        self.prune(now);
    }

    /// We reserved piece `p` at a seed.
    pub fn on_started(&mut self, p: u32, now: Instant) {
        if self.started.len() >= self.cap {
            // Pieces dropped without a verdict can only leak here if the caller forgot them;
            // start over rather than grow.
            self.started.clear();
        }
        self.started.insert(p, now);
    }

    /// Piece `p` passed its check: if we had started it at a seed, its latency is a sample of
    /// the window.
    pub fn on_passed(&mut self, p: u32, now: Instant) {
        let Some(t) = self.started.remove(&p) else {
            return;
        };
        let sample = now
            .saturating_duration_since(t)
            .clamp(MIN_LATENCY, MAX_LATENCY);
        self.latency = Some(match self.latency {
            // Smoothing by a quarter: follows a seed whose tick changes within a few pieces.
            Some(l) => (l * 3 + sample) / 4,
            None => sample,
        });
    }

    /// Piece `p` will not complete from where we started it (released, failed, dropped).
    pub fn forget(&mut self, p: u32) {
        self.started.remove(&p);
    }

    /// The estimated number of pieces others hold reserved at the seed and have not yet
    /// announced. Zero until one of our own pieces from a seed has been measured: without our
    /// latency there is no telling which announcements are recent, and waiting then would
    /// keep us from ever measuring it (measured: a 32 MB/s seed's crowd in `demo` slowed to
    /// 8 MB/s with a guessed one-second window).
    pub fn estimate(&mut self, now: Instant) -> u32 {
        self.prune(now);
        if self.latency.is_none() {
            return 0;
        }
        u32::try_from(self.announced.len()).unwrap_or(u32::MAX)
    }

    /// The smoothed latency, if any piece from a seed was measured.
    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, m: u64) -> Instant {
        t0 + Duration::from_millis(m)
    }

    #[test]
    fn counts_announcements_within_our_own_latency() {
        let t0 = Instant::now();
        let mut h = HiddenReservations::new(100);
        // Before our own latency is known, nothing is counted.
        h.on_announced(99, t0);
        assert_eq!(h.estimate(t0), 0);
        h.on_started(7, t0);
        h.on_passed(7, ms(t0, 400));
        assert_eq!(h.latency(), Some(Duration::from_millis(400)));
        for i in 0..10 {
            h.on_announced(i as u32, ms(t0, 1000 + i * 100));
        }
        // At 1,950 ms the window (400 ms) holds the ones at 1,600 .. 1,900.
        assert_eq!(h.estimate(ms(t0, 1950)), 4);
        // Nothing announced for a window: nothing hidden.
        assert_eq!(h.estimate(ms(t0, 2400)), 0);
    }

    #[test]
    fn latency_is_smoothed_and_bounded() {
        let t0 = Instant::now();
        let mut h = HiddenReservations::new(10);
        h.on_started(1, t0);
        h.on_passed(1, ms(t0, 800));
        h.on_started(2, t0);
        h.on_passed(2, ms(t0, 400));
        assert_eq!(h.latency(), Some(Duration::from_millis(700)));
        h.on_started(3, t0);
        h.on_passed(3, ms(t0, 60_000));
        assert_eq!(
            h.latency(),
            Some((Duration::from_millis(700) * 3 + MAX_LATENCY) / 4)
        );
        // A piece we did not start at a seed is no sample; a forgotten one neither.
        h.on_started(4, t0);
        h.forget(4);
        h.on_passed(4, ms(t0, 10));
        h.on_passed(5, ms(t0, 10));
        assert_eq!(
            h.latency(),
            Some((Duration::from_millis(700) * 3 + MAX_LATENCY) / 4)
        );
    }

    /// A piece announced again (its holder left and came back, or a liar cycling its
    /// connection) does not count twice.
    #[test]
    fn a_piece_counts_once() {
        let t0 = Instant::now();
        let mut h = HiddenReservations::new(8);
        h.on_started(0, t0);
        h.on_passed(0, t0 + Duration::from_millis(100));
        for _ in 0..50 {
            h.on_announced(3, t0);
        }
        assert_eq!(h.estimate(t0), 1);
    }

    #[test]
    fn bounded_by_the_piece_count() {
        let t0 = Instant::now();
        let mut h = HiddenReservations::new(8);
        for p in 0..1000 {
            h.on_announced(p, t0);
        }
        assert!(h.estimate(t0) <= 8);
        for p in 0..1000 {
            h.on_started(p, t0);
        }
        assert!(h.started.len() <= 8);
    }
}
