//! How long datagrams take: per-pair round-trip times, a pure function of the (unordered)
//! pair and the seed, so a million nodes need no latency matrix.

use super::mix64;
use crate::sim::queue::SimTime;
use crate::sim::scenario::NetworkSpec;

/// A uniform value in (0, 1) from a hash.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Per-pair round-trip times: log-normal with the given median and sigma, symmetric and
/// fixed for the whole run.
#[derive(Clone, Debug)]
pub struct Latency {
    ln_median: f64,
    sigma: f64,
    seed: u64,
    floor_us: SimTime,
}

impl Latency {
    /// The model of `spec`, with pair values derived from `seed`.
    pub fn new(spec: &NetworkSpec, seed: u64) -> Latency {
        Latency {
            ln_median: spec.rtt_median_ms.ln(),
            sigma: spec.rtt_sigma,
            seed: mix64(seed ^ 0x6C61_7465_6E63_7900),
            floor_us: ((spec.min_one_way_ms * 1000.0) as SimTime).max(1),
        }
    }

    /// Round-trip time between `a` and `b` in milliseconds.
    pub fn rtt_ms(&self, a: u32, b: u32) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h = mix64(self.seed ^ ((u64::from(lo) << 32) | u64::from(hi)));
        let u1 = unit(h);
        let u2 = unit(mix64(h));
        // Box–Muller: one standard normal from two uniforms.
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (self.ln_median + self.sigma * z).exp().min(10_000.0)
    }

    /// One-way delay from `a` to `b` in microseconds: half the pair's RTT, never below the
    /// floor.
    pub fn one_way_us(&self, a: u32, b: u32) -> SimTime {
        ((self.rtt_ms(a, b) * 500.0) as SimTime).max(self.floor_us)
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
        assert_eq!(
            l.one_way_us(3, 9),
            ((l.rtt_ms(3, 9) * 500.0) as u64).max(l.floor_us())
        );
        let fastest = (0..20_000u32)
            .map(|i| l.one_way_us(i, i + 1_000_000))
            .min()
            .unwrap_or(0);
        assert!(fastest >= 5_000, "{fastest} µs under the 5 ms floor");
    }
}
