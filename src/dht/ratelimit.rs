//! Flood protection: a per-source-IP packet budget with temporary bans (as libtorrent's dos
//! blocker does), and a global budget of replies per second.
//!
//! Memory is bounded whatever arrives: the per-IP table is an LRU of fixed capacity, so a
//! flood from a million spoofed addresses only recycles entries. Nothing is allocated until
//! the first packet is counted.

use std::net::Ipv4Addr;
use std::time::Duration;

use lru::LruCache;

use super::time::Time;

/// Limits applied to incoming traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Packets per second one IP may send on average; 0 disables per-IP limiting.
    pub per_ip_per_sec: u32,
    /// Burst allowance above the average, in packets.
    pub per_ip_burst: u32,
    /// How long an IP that exceeded its budget is ignored.
    pub ban_for: Duration,
    /// Replies we send per second at most, over all sources; 0 disables.
    pub replies_per_sec: u32,
    /// IPs tracked at once (LRU).
    pub tracked_ips: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            // libtorrent bans above 5/s sustained; we allow more, since one client may run
            // several lookups at once, and ban only sustained floods.
            per_ip_per_sec: 50,
            per_ip_burst: 500,
            ban_for: Duration::from_secs(5 * 60),
            replies_per_sec: 0,
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
            replies_per_sec: 0,
            tracked_ips: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths of a packet.
    milli_tokens: u64,
    refilled: Time,
    banned_until: Time,
}

/// The limiter state.
pub struct RateLimiter<I = Ipv4Addr> {
    limits: RateLimits,
    ips: Option<LruCache<I, Bucket>>,
    global_window: Time,
    global_count: u32,
    /// Packets dropped because their IP was over budget or banned.
    pub dropped_ip: u64,
    /// Replies suppressed by the global budget.
    pub dropped_global: u64,
}

impl<I: Copy + Eq + std::hash::Hash> RateLimiter<I> {
    /// A limiter with `limits`; allocates nothing yet.
    pub fn new(limits: RateLimits) -> RateLimiter<I> {
        RateLimiter {
            limits,
            ips: None,
            global_window: Time(0),
            global_count: 0,
            dropped_ip: 0,
            dropped_global: 0,
        }
    }

    /// Counts one packet from `ip` at `now`; false if it must be dropped.
    pub fn allow_packet(&mut self, ip: I, now: Time) -> bool {
        let rate = u64::from(self.limits.per_ip_per_sec);
        if rate == 0 || self.limits.tracked_ips == 0 {
            return true;
        }
        let cap = (u64::from(self.limits.per_ip_burst) + rate) * 1000;
        let cap_ips = self.limits.tracked_ips;
        // Unbounded LRU with a manual cap: `LruCache::new` would preallocate the full capacity.
        let ips = self.ips.get_or_insert_with(LruCache::unbounded);
        if ips.len() >= cap_ips && !ips.contains(&ip) {
            ips.pop_lru();
        }
        let b = ips.get_or_insert_mut(ip, || Bucket {
            milli_tokens: cap,
            refilled: now,
            banned_until: Time(0),
        });
        if now < b.banned_until {
            self.dropped_ip += 1;
            return false;
        }
        let elapsed_ms = now.0.saturating_sub(b.refilled.0);
        b.milli_tokens = (b.milli_tokens + elapsed_ms * rate).min(cap);
        b.refilled = now;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            // Out of budget: a sustained flood. Ignore this IP for a while.
            b.banned_until = now + self.limits.ban_for;
            b.milli_tokens = cap;
            self.dropped_ip += 1;
            false
        }
    }

    /// Counts one reply at `now`; false if the global budget for this second is spent.
    pub fn allow_reply(&mut self, now: Time) -> bool {
        if self.limits.replies_per_sec == 0 {
            return true;
        }
        if now.since(self.global_window) >= Duration::from_secs(1) {
            self.global_window = now;
            self.global_count = 0;
        }
        if self.global_count >= self.limits.replies_per_sec {
            self.dropped_global += 1;
            return false;
        }
        self.global_count += 1;
        true
    }

    /// IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.ips.as_ref().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_flood_is_banned_then_forgiven() {
        let limits = RateLimits {
            per_ip_per_sec: 5,
            per_ip_burst: 10,
            ban_for: Duration::from_secs(300),
            replies_per_sec: 0,
            tracked_ips: 100,
        };
        let mut r = RateLimiter::new(limits);
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
        let mut r = RateLimiter::new(RateLimits {
            tracked_ips: 1000,
            ..RateLimits::default()
        });
        for i in 0..100_000u32 {
            r.allow_packet(Ipv4Addr::from(i), Time(u64::from(i)));
        }
        assert_eq!(r.tracked(), 1000);
    }

    #[test]
    fn global_reply_budget() {
        let mut r: RateLimiter = RateLimiter::new(RateLimits {
            replies_per_sec: 3,
            ..RateLimits::unlimited()
        });
        assert!(r.allow_reply(Time(0)));
        assert!(r.allow_reply(Time(1)));
        assert!(r.allow_reply(Time(2)));
        assert!(!r.allow_reply(Time(3)));
        assert!(r.allow_reply(Time(1000)));
    }
}
