//! Flood protection: a per-source-IP packet budget with temporary bans (as libtorrent's dos
//! blocker does), a global budget of reply bytes per second (libtorrent's
//! `dht_upload_rate_limit` idea: whatever the sources, we reflect at most so many bytes), and
//! the [`TokenBucket`] all of them, and the node's verification-ping budget, are built on.
//!
//! Memory is bounded whatever arrives: the per-IP table is an LRU of fixed capacity, so a
//! flood from a million spoofed addresses only recycles entries. Nothing is allocated until
//! the first packet is counted.

use std::net::Ipv4Addr;
use std::time::Duration;

use lru::LruCache;

use super::time::Time;

/// Limits applied to incoming traffic and to the replies it provokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Packets per second one IP may send on average; 0 disables per-IP limiting.
    pub per_ip_per_sec: u32,
    /// Burst allowance above the average, in packets.
    pub per_ip_burst: u32,
    /// How long an IP that exceeded its budget is ignored.
    pub ban_for: Duration,
    /// Reply bytes (responses and error replies) we send per second at most, over all
    /// sources, so spoofed queries cannot turn us into an amplifier; 0 disables.
    pub reply_bytes_per_sec: u32,
    /// Reply bytes that may go out at once above the average (the bucket's depth).
    pub reply_burst_bytes: u32,
    /// IPs tracked at once (LRU).
    pub tracked_ips: usize,
}

/// Default global reply budget, bytes/s. libtorrent uses 8000 B/s for a client; a node that
/// may serve as a bootstrap router needs more, and ~100 kB/s (0.8 Mbit/s) still caps what a
/// spoofer can reflect at us to a harmless trickle.
pub const DEFAULT_REPLY_BYTES_PER_SEC: u32 = 100_000;

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            // libtorrent bans above 5/s sustained; we allow more, since one client may run
            // several lookups at once, and ban only sustained floods.
            per_ip_per_sec: 50,
            per_ip_burst: 500,
            ban_for: Duration::from_secs(5 * 60),
            reply_bytes_per_sec: DEFAULT_REPLY_BYTES_PER_SEC,
            reply_burst_bytes: DEFAULT_REPLY_BYTES_PER_SEC,
            tracked_ips: 50_000,
        }
    }
}

impl RateLimits {
    /// No limits at all (benchmarks, simulations).
    pub fn unlimited() -> RateLimits {
        RateLimits {
            per_ip_per_sec: 0,
            per_ip_burst: 0,
            ban_for: Duration::ZERO,
            reply_bytes_per_sec: 0,
            reply_burst_bytes: 0,
            tracked_ips: 0,
        }
    }
}

/// A token bucket over fake time: `rate` units a second flow in, at most `burst` units are
/// saved up, and an action costing `n` units happens only if `n` are there. Over any span of
/// `t` seconds at most `burst + rate * t` units are spent: the one budget shape every limit
/// of the node uses, so there is one implementation to get right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Units per second.
    rate: u64,
    /// Depth, in thousandths of a unit.
    cap_milli: u64,
    /// Saved up, in thousandths of a unit.
    milli: u64,
    refilled: Time,
}

impl TokenBucket {
    /// A full bucket of depth `burst` refilling at `rate` units per second.
    pub fn new(rate: u64, burst: u64, now: Time) -> TokenBucket {
        let cap_milli = burst.saturating_mul(1000);
        TokenBucket {
            rate,
            cap_milli,
            milli: cap_milli,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Time) {
        let elapsed_ms = now.0.saturating_sub(self.refilled.0);
        self.milli = self
            .milli
            .saturating_add(elapsed_ms.saturating_mul(self.rate))
            .min(self.cap_milli);
        // Time running backwards (it never should) must not mint tokens later.
        self.refilled = Time(self.refilled.0.max(now.0));
    }

    /// Takes `units` at `now` if the bucket holds them; false (and nothing taken) otherwise.
    pub fn try_take(&mut self, units: u64, now: Time) -> bool {
        self.refill(now);
        let need = units.saturating_mul(1000);
        if self.milli >= need {
            self.milli -= need;
            true
        } else {
            false
        }
    }

    /// Whole units it holds when full.
    pub fn depth(&self) -> u64 {
        self.cap_milli / 1000
    }

    /// Whole units available at `now`.
    pub fn available(&mut self, now: Time) -> u64 {
        self.refill(now);
        self.milli / 1000
    }

    /// Fills the bucket to its depth (a ban served its time).
    pub fn fill(&mut self, now: Time) {
        self.refilled = now;
        self.milli = self.cap_milli;
    }
}

#[derive(Clone, Copy, Debug)]
struct IpState {
    bucket: TokenBucket,
    banned_until: Time,
}

/// The limiter state.
pub struct RateLimiter<I = Ipv4Addr> {
    /// `None` when every limit is off (benchmarks, the simulator): a million simulated nodes
    /// paid ~100 bytes each for a limiter that never limits.
    on: Option<Box<Active<I>>>,
}

/// A limiter with at least one limit on.
struct Active<I> {
    limits: RateLimits,
    /// Boxed: an idle node (or one with per-IP limits off) pays one pointer for it.
    ips: Option<Box<LruCache<I, IpState>>>,
    replies: Option<TokenBucket>,
    /// Packets dropped because their IP was over budget or banned.
    dropped_ip: u64,
    /// Replies suppressed by the global budget.
    dropped_global: u64,
}

impl<I: Copy + Eq + std::hash::Hash> RateLimiter<I> {
    /// A limiter with `limits`; allocates nothing when they are all off, little otherwise.
    pub fn new(limits: RateLimits) -> RateLimiter<I> {
        let per_ip_on = limits.per_ip_per_sec > 0 && limits.tracked_ips > 0;
        if !per_ip_on && limits.reply_bytes_per_sec == 0 {
            return RateLimiter { on: None };
        }
        let replies = (limits.reply_bytes_per_sec > 0).then(|| {
            TokenBucket::new(
                u64::from(limits.reply_bytes_per_sec),
                u64::from(limits.reply_burst_bytes.max(1)),
                Time(0),
            )
        });
        let active = Active {
            limits,
            ips: None,
            replies,
            dropped_ip: 0,
            dropped_global: 0,
        };
        RateLimiter {
            on: Some(Box::new(active)),
        }
    }

    /// Packets dropped so far because their IP was over budget or banned.
    pub fn dropped_ip(&self) -> u64 {
        self.on.as_ref().map_or(0, |a| a.dropped_ip)
    }

    /// Replies suppressed so far by the global budget.
    pub fn dropped_global(&self) -> u64 {
        self.on.as_ref().map_or(0, |a| a.dropped_global)
    }

    /// Counts one packet from `ip` at `now`; false if it must be dropped.
    pub fn allow_packet(&mut self, ip: I, now: Time) -> bool {
        let Some(a) = self.on.as_deref_mut() else {
            return true;
        };
        let rate = u64::from(a.limits.per_ip_per_sec);
        if rate == 0 || a.limits.tracked_ips == 0 {
            return true;
        }
        let depth = u64::from(a.limits.per_ip_burst) + rate;
        let cap_ips = a.limits.tracked_ips;
        // Unbounded LRU with a manual cap: `LruCache::new` would preallocate the full capacity.
        let ips = a.ips.get_or_insert_with(|| Box::new(LruCache::unbounded()));
        if ips.len() >= cap_ips && !ips.contains(&ip) {
            ips.pop_lru();
        }
        let s = ips.get_or_insert_mut(ip, || IpState {
            bucket: TokenBucket::new(rate, depth, now),
            banned_until: Time(0),
        });
        if now < s.banned_until {
            a.dropped_ip += 1;
            return false;
        }
        if s.bucket.try_take(1, now) {
            true
        } else {
            // Out of budget: a sustained flood. Ignore this IP for a while.
            s.banned_until = now + a.limits.ban_for;
            s.bucket.fill(s.banned_until);
            a.dropped_ip += 1;
            false
        }
    }

    /// Whether a reply could go out at `now` at all: lets the node skip building an answer
    /// the budget would drop anyway.
    pub fn reply_budget_left(&mut self, now: Time) -> bool {
        match self.on.as_deref_mut().and_then(|a| a.replies.as_mut()) {
            None => true,
            Some(b) => b.available(now) > 0,
        }
    }

    /// Counts a reply of `bytes` at `now`; false (it must not be sent) if the global budget
    /// does not hold that many bytes.
    pub fn allow_reply(&mut self, now: Time, bytes: usize) -> bool {
        let Some(a) = self.on.as_deref_mut() else {
            return true;
        };
        let Some(b) = a.replies.as_mut() else {
            return true;
        };
        if b.try_take(bytes as u64, now) {
            true
        } else {
            a.dropped_global += 1;
            false
        }
    }

    /// Forgets the IPs whose state says nothing a fresh entry would not: a full bucket and
    /// no ban in force. Without this every IP that ever sent a packet stays tracked until
    /// `tracked_ips` (50,000 by default) are, ~100 bytes each; most nodes of a simulated
    /// network hear from hundreds of IPs. Walks from the least recently seen and stops at
    /// the first IP still worth keeping, so a call costs what it frees (plus one).
    pub fn forget_idle(&mut self, now: Time) {
        let Some(a) = self.on.as_deref_mut() else {
            return;
        };
        let Some(ips) = a.ips.as_mut() else {
            return;
        };
        while let Some((_, s)) = ips.peek_lru() {
            let mut bucket = s.bucket;
            if now < s.banned_until || bucket.available(now) < bucket.depth() {
                break;
            }
            ips.pop_lru();
        }
        if ips.is_empty() {
            a.ips = None;
        }
    }

    /// IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.on
            .as_ref()
            .and_then(|a| a.ips.as_ref())
            .map_or(0, |m| m.len())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_ips_are_forgotten_and_banned_ones_kept() {
        let limits = RateLimits {
            per_ip_per_sec: 5,
            per_ip_burst: 10,
            ban_for: Duration::from_secs(300),
            reply_bytes_per_sec: 0,
            reply_burst_bytes: 0,
            tracked_ips: 100,
        };
        let mut l: RateLimiter<u32> = RateLimiter::new(limits);
        // IP 1 floods into a ban; IP 2 sends one packet.
        for _ in 0..40 {
            l.allow_packet(1, Time(0));
        }
        assert!(l.allow_packet(2, Time(0)));
        assert_eq!(l.tracked(), 2);
        // A moment later IP 2's bucket is not full yet: kept.
        l.forget_idle(Time(10));
        assert_eq!(l.tracked(), 2);
        // IP 2 has refilled, but the walk starts at the least recently seen, IP 1, which is
        // banned: it stops there, and both stay.
        l.forget_idle(Time(1_000));
        assert_eq!(l.tracked(), 2, "the walk stops at the banned IP");
        assert!(!l.allow_packet(1, Time(1_000)), "still banned");
        // Once the ban is over and the bucket refilled, both are forgotten.
        l.forget_idle(Time(400_000));
        assert_eq!(l.tracked(), 0);
        assert!(l.allow_packet(1, Time(400_000)), "forgiven, as a fresh IP");
    }

    #[test]
    fn sustained_flood_is_banned_then_forgiven() {
        let limits = RateLimits {
            per_ip_per_sec: 5,
            per_ip_burst: 10,
            ban_for: Duration::from_secs(300),
            reply_bytes_per_sec: 0,
            reply_burst_bytes: 0,
            tracked_ips: 100,
        };
        let mut r: RateLimiter = RateLimiter::new(limits);
        let ip = Ipv4Addr::new(1, 2, 3, 4);
        // Burst of 15 passes, the 16th within the same millisecond trips the ban.
        for i in 0..15 {
            assert!(r.allow_packet(ip, Time(0)), "packet {i}");
        }
        assert!(!r.allow_packet(ip, Time(0)));
        assert!(!r.allow_packet(ip, Time(10_000)), "still banned");
        // Other IPs are unaffected.
        assert!(r.allow_packet(Ipv4Addr::new(1, 2, 3, 5), Time(10_000)));
        // After the ban, a polite rate is fine.
        let mut t = 300_001;
        for _ in 0..100 {
            assert!(r.allow_packet(ip, Time(t)));
            t += 250;
        }
    }

    #[test]
    fn memory_is_bounded_under_spoofed_sources() {
        let mut r: RateLimiter = RateLimiter::new(RateLimits {
            tracked_ips: 1000,
            ..RateLimits::default()
        });
        for i in 0..100_000u32 {
            r.allow_packet(Ipv4Addr::from(i), Time(u64::from(i)));
        }
        assert_eq!(r.tracked(), 1000);
    }

    #[test]
    fn global_reply_budget_counts_bytes() {
        let mut r: RateLimiter = RateLimiter::new(RateLimits {
            reply_bytes_per_sec: 1000,
            reply_burst_bytes: 500,
            ..RateLimits::unlimited()
        });
        // The burst: 500 bytes at once, not one more.
        assert!(r.allow_reply(Time(0), 300));
        assert!(r.allow_reply(Time(0), 200));
        assert!(!r.allow_reply(Time(0), 1));
        assert!(!r.reply_budget_left(Time(0)));
        // 100 ms refill 100 bytes: a 150-byte reply waits, a 100-byte one goes.
        assert!(!r.allow_reply(Time(100), 150));
        assert!(r.allow_reply(Time(100), 100));
        assert_eq!(r.dropped_global(), 2);
        // Never more than the depth is saved up, however long it is idle.
        assert!(!r.allow_reply(Time(60_000), 501));
        assert!(r.allow_reply(Time(60_000), 500));
    }

    #[test]
    fn token_bucket_never_exceeds_burst_plus_rate_times_time() {
        let (rate, burst) = (2_000u64, 700u64);
        let mut b = TokenBucket::new(rate, burst, Time(0));
        let mut spent = 0u64;
        let mut offered = 0u64;
        // Ask for odd sizes every 3 ms for 10 s: far more than the budget.
        for step in 0..3_334u64 {
            let now = Time(step * 3);
            let n = 37 + step % 211;
            offered += n;
            if b.try_take(n, now) {
                spent += n;
            }
            let bound = burst + rate * now.0 / 1000;
            assert!(spent <= bound, "spent {spent} > {bound} at {now:?}");
        }
        assert!(offered > 2 * spent, "the budget must have bitten");
        // And it is used: at least the rate minus one largest request per refill.
        assert!(spent >= rate * 9, "spent only {spent}");
    }
}
