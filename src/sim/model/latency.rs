//! How long datagrams take: per-pair round-trip times, a pure function of the (unordered)
//! pair and the seed, so a million nodes need no latency matrix, plus each end's access
//! link (a pure function of the host and the seed) and a per-datagram jitter the sender
//! draws.

use super::mix64;
use crate::sim::queue::SimTime;
use crate::sim::scenario::NetworkSpec;

/// A uniform value in (0, 1) from a hash.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A log-normal value with median `exp(ln_median)` from a hash (Box–Muller on two uniforms).
fn lognormal(h: u64, ln_median: f64, sigma: f64) -> f64 {
    let u1 = unit(h);
    let u2 = unit(mix64(h));
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (ln_median + sigma * z).exp()
}

/// Per-pair round-trip times (log-normal with the given median and sigma, symmetric and
/// fixed for the whole run), per-host access delays (log-normal, fixed), and the jitter
/// bound.
#[derive(Clone, Debug)]
pub struct Latency {
    ln_median: f64,
    sigma: f64,
    seed: u64,
    floor_us: SimTime,
    /// `None`: no access delay.
    access_ln_median: Option<f64>,
    access_sigma: f64,
    jitter_us: SimTime,
}

impl Latency {
    /// The model of `spec`, with pair values derived from `seed`.
    pub fn new(spec: &NetworkSpec, seed: u64) -> Latency {
        Latency {
            ln_median: spec.rtt_median_ms.ln(),
            sigma: spec.rtt_sigma,
            seed: mix64(seed ^ 0x6C61_7465_6E63_7900),
            floor_us: ((spec.min_one_way_ms * 1000.0) as SimTime).max(1),
            access_ln_median: (spec.access_median_ms > 0.0).then(|| spec.access_median_ms.ln()),
            access_sigma: spec.access_sigma,
            jitter_us: (spec.jitter_ms * 1000.0) as SimTime,
        }
    }

    /// One-way delay of host `i`'s access link in milliseconds (0 when turned off).
    pub fn access_ms(&self, i: u32) -> f64 {
        let Some(ln_median) = self.access_ln_median else {
            return 0.0;
        };
        let h = mix64(self.seed ^ 0x6163_6365_7373_0000 ^ (u64::from(i) << 16));
        lognormal(h, ln_median, self.access_sigma).min(1_000.0)
    }

    /// The bound of the per-datagram jitter in microseconds (the sender draws in
    /// `[0, bound)`; 0: none).
    pub fn jitter_us(&self) -> SimTime {
        self.jitter_us
    }

    /// What one datagram from `a` to `b` takes with `jitter_us` of jitter drawn for it:
    /// [`Latency::one_way_us`] plus the jitter, never below the floor.
    pub fn delay_us(&self, a: u32, b: u32, jitter_us: SimTime) -> SimTime {
        (self.one_way_us(a, b) + jitter_us).max(self.floor_us)
    }

    /// Round-trip time between `a` and `b` in milliseconds.
    pub fn rtt_ms(&self, a: u32, b: u32) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h = mix64(self.seed ^ ((u64::from(lo) << 32) | u64::from(hi)));
        lognormal(h, self.ln_median, self.sigma).min(10_000.0)
    }

    /// One-way delay from `a` to `b` in microseconds without jitter: half the pair's RTT
    /// plus both access links, never below the floor (also what a latency-aware perfect
    /// table ranks candidates by).
    pub fn one_way_us(&self, a: u32, b: u32) -> SimTime {
        let ms = self.rtt_ms(a, b) * 0.5 + self.access_ms(a) + self.access_ms(b);
        ((ms * 1000.0) as SimTime).max(self.floor_us)
    }

    /// The shortest one-way delay of any pair: how far apart in virtual time two nodes may
    /// run before a datagram of one could be due at the other.
    pub fn floor_us(&self) -> SimTime {
        self.floor_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_symmetric_deterministic_and_lognormal() {
        let spec = NetworkSpec::default();
        let l = Latency::new(&spec, 7);
        assert_eq!(l.rtt_ms(3, 9), l.rtt_ms(9, 3));
        assert_eq!(l.rtt_ms(3, 9), Latency::new(&spec, 7).rtt_ms(3, 9));
        assert_ne!(l.rtt_ms(3, 9), Latency::new(&spec, 8).rtt_ms(3, 9));
        let mut v: Vec<f64> = (0..20_000u32).map(|i| l.rtt_ms(i, i + 1_000_000)).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let p99 = v[v.len() * 99 / 100];
        assert!((median - 100.0).abs() < 3.0, "median {median}");
        // exp(0.6 × 2.326) ≈ 4.04.
        let want = 100.0 * (0.6f64 * 2.326).exp();
        assert!((p99 - want).abs() / want < 0.08, "p99 {p99} want {want}");
        let one_way = (l.rtt_ms(3, 9) * 0.5 + l.access_ms(3) + l.access_ms(9)) * 1000.0;
        assert_eq!(l.one_way_us(3, 9), (one_way as u64).max(l.floor_us()));
        assert_eq!(l.one_way_us(3, 9), l.one_way_us(9, 3));
        let fastest = (0..20_000u32)
            .map(|i| l.one_way_us(i, i + 1_000_000))
            .min()
            .unwrap_or(0);
        assert!(fastest >= 5_000, "{fastest} µs under the 5 ms floor");
    }

    #[test]
    fn access_delays_have_the_configured_median_and_the_floor_holds() {
        let spec = NetworkSpec {
            access_median_ms: 8.0,
            rtt_median_ms: 1.0,
            rtt_sigma: 2.0,
            min_one_way_ms: 1.0,
            ..NetworkSpec::default()
        };
        let l = Latency::new(&spec, 3);
        let mut v: Vec<f64> = (0..20_000u32).map(|i| l.access_ms(i)).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        assert!((median - 8.0).abs() < 0.3, "access median {median}");
        assert_eq!(l.access_ms(5), Latency::new(&spec, 3).access_ms(5));
        assert_eq!(l.jitter_us(), 2_000);
        // Tiny pair RTTs and no access delay: the floor still bounds every delay.
        let off = Latency::new(
            &NetworkSpec {
                access_median_ms: 0.0,
                ..spec
            },
            3,
        );
        assert_eq!(off.access_ms(5), 0.0);
        let fastest = (0..20_000u32)
            .map(|i| off.delay_us(i, i + 1, 0))
            .min()
            .unwrap_or(0);
        assert!(fastest >= 1_000, "{fastest} µs under the 1 ms floor");
        assert_eq!(l.delay_us(1, 2, 1_500), l.one_way_us(1, 2) + 1_500);
    }
}
