//! Bandwidth limits for `--upload-limit` / `--download-limit` (bytes/s).
//!
//! [`TokenBucket`] is the sans-IO core: time is passed in, so its long-run rate and burst
//! are unit-testable with fake time. [`RateLimiter`] is the thin shared async wrapper the
//! peer tasks call before sending or after reading a block.
//!
//! The bucket may go into debt: [`TokenBucket::take`] always deducts what the caller
//! spends and answers how long the caller must wait until the debt is repaid. That keeps a
//! single large message (a 16 KiB block at a 1 KiB/s limit) possible, and makes concurrent
//! callers queue up behind each other: each one's wait includes the debt of those before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Smallest burst: four 16 KiB blocks, so a block never has to wait on an idle link and a
/// peer task can keep a small pipeline moving even at very low limits.
pub const MIN_BURST: u64 = 64 * 1024;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The burst used for `rate` bytes/s: a quarter second of traffic, at least [`MIN_BURST`].
///
/// A quarter second absorbs the jitter of TCP and of our own timers (the driver ticks every
/// 500 ms, peer tasks write whole blocks) without letting a long idle period turn into a
/// multi-second spike well above the limit the user asked for.
pub fn default_burst(rate: u64) -> u64 {
    (rate / 4).max(MIN_BURST)
}

/// A token bucket refilled at `rate` bytes/s up to `burst` bytes; rate `None` (or 0) means
/// unlimited. Sans-IO: every call takes the current time.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Bytes/s; 0 = unlimited.
    rate: u64,
    /// Most tokens the bucket holds.
    burst: u64,
    /// Available bytes; negative = debt the callers still have to wait for.
    tokens: i128,
    /// Refill remainder in units of byte·ns/s (below one byte), so integer refills do not
    /// lose a fraction of a byte per call and the long-run rate is exact.
    frac: u128,
    /// Time of the last refill; `None` until first use.
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes/s with [`default_burst`].
    pub fn new(rate: Option<u64>) -> TokenBucket {
        let rate = rate.unwrap_or(0);
        TokenBucket::with_burst(Some(rate), default_burst(rate))
    }

    /// A full bucket with an explicit `burst` (at least 1 byte), for callers that know
    /// their message sizes better than the default.
    pub fn with_burst(rate: Option<u64>, burst: u64) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.unwrap_or(0),
            burst,
            tokens: i128::from(burst),
            frac: 0,
            last: None,
        }
    }

    /// The limit in bytes/s, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        (self.rate > 0).then_some(self.rate)
    }

    /// The most bytes that pass without waiting after an idle period.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Bytes that may be spent at `now` without waiting (negative while in debt).
    pub fn available(&mut self, now: Instant) -> i128 {
        self.refill(now);
        self.tokens
    }

    /// Spends `n` bytes at `now` and returns how long the caller must wait before actually
    /// sending/reading them: zero while within budget, otherwise the time until the bucket
    /// is out of debt again. Unlimited buckets always answer zero.
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= i128::from(n);
        self.wait()
    }

    /// Changes the limit at `now`: tokens earned so far are credited at the old rate, then
    /// the new rate (and its default burst) applies. Going unlimited clears any debt.
    pub fn set_rate(&mut self, now: Instant, rate: Option<u64>) {
        self.refill(now);
        let rate = rate.unwrap_or(0);
        self.rate = rate;
        self.burst = default_burst(rate);
        if rate == 0 {
            self.tokens = i128::from(self.burst);
            self.frac = 0;
        } else {
            self.tokens = self.tokens.min(i128::from(self.burst));
        }
    }

    /// Time until the current debt is repaid (zero when there is none).
    fn wait(&self) -> Duration {
        if self.tokens >= 0 || self.rate == 0 {
            return Duration::ZERO;
        }
        let debt = self.tokens.unsigned_abs();
        // Round up so that after the wait the bucket is really out of debt, and subtract
        // what the remainder already earned.
        let units = (debt * NANOS_PER_SEC).saturating_sub(self.frac);
        let rate = u128::from(self.rate);
        let nanos = units.div_ceil(rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Credits the tokens earned since the last call, up to `burst`.
    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        // A caller's clock going backwards (or calls out of order) credits nothing.
        if now <= last {
            return;
        }
        self.last = Some(now);
        if self.rate == 0 {
            return;
        }
        let elapsed = now.duration_since(last).as_nanos();
        let units = elapsed
            .saturating_mul(u128::from(self.rate))
            .saturating_add(self.frac);
        let earned = units / NANOS_PER_SEC;
        self.frac = units % NANOS_PER_SEC;
        let burst = i128::from(self.burst);
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        self.tokens = self.tokens.saturating_add(earned);
        if self.tokens >= burst {
            self.tokens = burst;
            self.frac = 0;
        }
    }
}

/// A [`TokenBucket`] shared by every peer task of a direction (all uploads, or all
/// downloads), so the limit applies to the sum. Cloning is an `Arc` clone; when unlimited,
/// [`RateLimiter::acquire`] is one atomic load.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Mirror of the bucket's rate (0 = unlimited), read without locking.
    rate: AtomicU64,
    bucket: Mutex<TokenBucket>,
}

impl RateLimiter {
    /// A limiter for `rate` bytes/s; `None` or 0 = unlimited.
    pub fn new(rate: Option<u64>) -> RateLimiter {
        let bucket = TokenBucket::new(rate);
        RateLimiter {
            inner: Arc::new(Shared {
                rate: AtomicU64::new(bucket.rate().unwrap_or(0)),
                bucket: Mutex::new(bucket),
            }),
        }
    }

    /// A limiter that never waits (the default when no `--*-limit` is given).
    pub fn unlimited() -> RateLimiter {
        RateLimiter::new(None)
    }

    /// Changes the limit for every clone; callers already sleeping finish their current
    /// wait, later calls use the new rate.
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut b = self.bucket();
        b.set_rate(now(), rate);
        self.inner
            .rate
            .store(b.rate().unwrap_or(0), Ordering::Relaxed);
    }

    /// The current limit in bytes/s, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        let r = self.inner.rate.load(Ordering::Relaxed);
        (r > 0).then_some(r)
    }

    /// Accounts for `n` bytes and sleeps until the limit allows them. Call it before
    /// writing (uploads) or after reading (downloads) each message.
    pub async fn acquire(&self, n: u64) {
        if self.inner.rate.load(Ordering::Relaxed) == 0 {
            return;
        }
        let wait = self.bucket().take(now(), n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn bucket(&self) -> MutexGuard<'_, TokenBucket> {
        // The bucket holds no invariant a panicking holder could break halfway.
        self.inner
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::unlimited()
    }
}

/// Tokio's clock, so a paused test runtime drives the limiter too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// Sends `block`-sized messages as fast as the bucket allows for `secs` of fake time and
    /// returns the achieved bytes/s (excluding the initial burst).
    fn run(bucket: &mut TokenBucket, t0: Instant, block: u64, secs: u64) -> f64 {
        let end = t0 + Duration::from_secs(secs);
        let mut t = t0;
        let mut sent = 0u64;
        while t < end {
            let wait = bucket.take(t, block);
            t += wait;
            sent += block;
        }
        (sent - bucket.burst()) as f64 / secs as f64
    }

    #[test]
    fn long_run_average_matches_rate() {
        let t0 = Instant::now();
        for (rate, block) in [(100 * KIB, 16 * KIB), (1_000_000, 1000), (3_333, 16 * KIB)] {
            let mut b = TokenBucket::new(Some(rate));
            let got = run(&mut b, t0, block, 120);
            let err = (got - rate as f64).abs() / rate as f64;
            assert!(err < 0.03, "rate {rate} block {block}: got {got:.0} B/s");
        }
    }

    #[test]
    fn odd_rates_do_not_drift_with_many_small_refills() {
        // 7 bytes/s refilled every millisecond: a refill that rounds down each time would
        // never earn anything.
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(Some(7), 1000);
        assert!(b.take(t0, 1000).is_zero());
        let mut t = t0;
        for _ in 0..10_000 {
            t += Duration::from_millis(1);
            b.available(t);
        }
        assert_eq!(b.available(t), 70);
    }

    #[test]
    fn burst_passes_then_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB));
        assert_eq!(b.burst(), MIN_BURST);
        // Four 16 KiB blocks fit the burst.
        for _ in 0..4 {
            assert_eq!(b.take(t0, 16 * KIB), Duration::ZERO);
        }
        // The fifth goes into debt by 16 KiB: 160 ms at 100 KiB/s.
        assert_eq!(b.take(t0, 16 * KIB), Duration::from_millis(160));
        // After the wait the next block waits its own 160 ms, not more.
        let t1 = t0 + Duration::from_millis(160);
        assert_eq!(b.take(t1, 16 * KIB), Duration::from_millis(160));
        // A long idle period refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(b.available(t2), i128::from(MIN_BURST));
    }

    #[test]
    fn big_rates_burst_a_quarter_second() {
        assert_eq!(default_burst(10_000_000), 2_500_000);
        assert_eq!(default_burst(1), MIN_BURST);
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        for mut b in [TokenBucket::new(None), TokenBucket::new(Some(0))] {
            assert_eq!(b.rate(), None);
            for _ in 0..1000 {
                assert!(b.take(t0, u64::MAX).is_zero());
            }
        }
    }

    #[test]
    fn rate_change_takes_effect() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB));
        let slow = run(&mut b, t0, 16 * KIB, 60);
        let t1 = t0 + Duration::from_secs(61);
        b.set_rate(t1, Some(1000 * KIB));
        assert_eq!(b.rate(), Some(1000 * KIB));
        let fast = run(&mut b, t1, 16 * KIB, 60);
        assert!((slow / (100 * KIB) as f64 - 1.0).abs() < 0.03, "{slow}");
        assert!((fast / (1000 * KIB) as f64 - 1.0).abs() < 0.03, "{fast}");
        // Lowering the rate keeps the debt and repays it at the new rate.
        let mut b = TokenBucket::new(Some(1000 * KIB));
        b.take(t0, b.burst() + 256 * KIB);
        b.set_rate(t0, Some(128 * KIB));
        assert_eq!(b.take(t0, 0), Duration::from_secs(2));
        // Going unlimited forgives the debt at once.
        b.set_rate(t0, None);
        assert!(b.take(t0, 0).is_zero());
    }

    #[test]
    fn clock_going_backwards_credits_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Some(KIB));
        b.take(t0, MIN_BURST);
        assert_eq!(b.available(t0 - Duration::from_secs(5)), 0);
        assert_eq!(b.available(t0), 0);
    }

    #[test]
    fn limiter_clones_share_one_bucket() {
        let a = RateLimiter::new(Some(50 * KIB));
        let b = a.clone();
        b.set_rate(Some(10 * KIB));
        assert_eq!(a.rate(), Some(10 * KIB));
        a.set_rate(None);
        assert_eq!(b.rate(), None);
        assert_eq!(RateLimiter::default().rate(), None);
    }

    #[tokio::test]
    async fn acquire_sleeps_for_the_debt() {
        // Tokio's paused clock needs the `test-util` feature, which this crate does not
        // enable, so this runs on the real clock with a short wait.
        let lim = RateLimiter::new(Some(256 * KIB));
        let start = tokio::time::Instant::now();
        lim.acquire(MIN_BURST).await;
        assert!(start.elapsed() < Duration::from_millis(50));
        // 64 KiB of debt at 256 KiB/s = 250 ms.
        lim.acquire(64 * KIB).await;
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(245), "{e:?}");
        assert!(e < Duration::from_millis(700), "{e:?}");
        let u = RateLimiter::unlimited();
        let start = tokio::time::Instant::now();
        for _ in 0..10_000 {
            u.acquire(u64::MAX).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
