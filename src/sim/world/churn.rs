//! Nodes coming and going: the protocol-bootstrap arrivals, leaving, coming back (with the
//! same id or a new one), and the session-length draws that time them.

use rand::rngs::SmallRng;
use rand::Rng;

use crate::dht::Dht;
use crate::id::Id;
use crate::sim::queue::SimTime;
use crate::sim::scenario::DurationDist;

use super::{secs, Core, Ev, World};

impl World<'_> {
    /// Queues the bootstrap arrivals, evenly over the join duration; returns its end.
    pub(super) fn schedule_arrivals(&mut self) -> SimTime {
        let d = secs(self.sc.join.duration_s);
        for i in 0..self.n {
            let at = d * u64::from(i) / u64::from(self.n);
            self.q.push(at, Ev::Arrive { node: i });
        }
        d
    }

    /// With churn, queues every honest node's first departure after `join_end`: the rest of
    /// a session under way at a random moment of a stationary network.
    pub(super) fn schedule_first_leaves(&mut self, join_end: SimTime) {
        if !self.sc.churn.enabled {
            return;
        }
        for i in 0..self.n {
            if self.is_attacker(i) {
                continue;
            }
            let u: f64 = self.rng.gen();
            let first = residual_s(&self.sc.churn.session, u, &mut self.rng);
            self.q.push(join_end + secs(first), Ev::Leave { node: i });
        }
    }

    /// A node joins through the protocol bootstrap (a self-lookup via random contacts).
    pub(super) fn arrive(&mut self, node: u32) {
        let contacts = self.contacts(self.sc.join.bootstrap_nodes);
        self.set_online(node, true);
        let now = self.now_time();
        if let Some(dht) = self.dht_mut(node) {
            dht.bootstrap(now, &contacts);
        }
        self.drain(node, false);
        if self.sc.join.refresh_after_join_s > 0.0 {
            let at = self.q.now() + secs(self.sc.join.refresh_after_join_s);
            self.q.push(at, Ev::Refresh { node });
        }
    }

    /// A node goes away: its lookups are aborted and its return is queued.
    pub(super) fn leave(&mut self, node: u32) {
        if !self.nodes[node as usize].online {
            return;
        }
        self.set_online(node, false);
        let nd = &mut self.nodes[node as usize];
        nd.epoch += 1;
        nd.timer_at = SimTime::MAX;
        if !self.nats.is_empty() {
            self.nats[node as usize].clear();
        }
        self.abort_lookups_of(node);
        let u: f64 = self.rng.gen();
        let off = self.sc.churn.offline.sample_s(u);
        let at = self.q.now() + secs(off);
        self.q.push(at, Ev::Return { node });
    }

    /// The lookups `node` runs will never report: they are aborted.
    fn abort_lookups_of(&mut self, node: u32) {
        let gone: Vec<(u32, u64)> = self
            .active
            .range((node, 0)..=(node, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(rec) = self.active.remove(&k) {
                self.records[rec as usize].aborted = true;
                self.lookups_open -= 1;
            }
        }
    }

    /// A node comes back, with its old id or (with probability `1 - same_id`) a new one,
    /// and queues its next departure.
    pub(super) fn come_back(&mut self, node: u32) {
        let contacts = self.contacts(self.sc.join.bootstrap_nodes.max(1));
        self.set_online(node, true);
        let now = self.now_time();
        if !self.rng.gen_bool(self.sc.churn.same_id) {
            let id = if self.addrs.is_public() {
                crate::dht::bep42::id_for_ip(self.addrs.addr_of(node).ip(), &mut self.rng)
            } else {
                Id::random(&mut self.rng)
            };
            let seed = self.rng.gen();
            let dht = Dht::new(id, self.cfg.clone(), seed, now);
            if let Some(old) = self.nodes[node as usize].dht() {
                self.counters.refresh_queries += old.stats().refresh_queries;
            }
            self.nodes[node as usize].core = Core::Honest(Box::new(dht));
        }
        if let Some(dht) = self.dht_mut(node) {
            // A returning client first lets its old queries lapse, then re-joins through
            // its saved table and a bootstrap contact.
            dht.handle_timeout(now);
            dht.bootstrap(now, &contacts);
        }
        self.drain(node, false);
        let u: f64 = self.rng.gen();
        let stay = self.sc.churn.session.sample_s(u);
        let at = self.q.now() + secs(stay);
        self.q.push(at, Ev::Leave { node });
    }
}

/// A remaining session length for a node seen online at a random moment of a stationary
/// network: `U × L` with `L` length-biased (long sessions are likelier to be under way).
fn residual_s(d: &DurationDist, u: f64, rng: &mut SmallRng) -> f64 {
    let biased = match *d {
        DurationDist::Weibull { shape, scale_s } => {
            // Length-biased Weibull: (L/λ)^k follows Gamma(1 + 1/k, 1).
            scale_s * gamma(1.0 + 1.0 / shape, rng).powf(1.0 / shape)
        }
        // Length-biased exponential is Gamma(2, mean).
        DurationDist::Exponential { mean_s } => mean_s * gamma(2.0, rng),
        DurationDist::Fixed { s } => s,
    };
    u * biased
}

/// A Gamma(shape, 1) sample (Marsaglia–Tsang), shape ≥ 1.
fn gamma(shape: f64, rng: &mut SmallRng) -> f64 {
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn gamma_and_residual_means() {
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 40_000;
        let m: f64 = (0..n).map(|_| gamma(3.0, &mut rng)).sum::<f64>() / n as f64;
        assert!((m - 3.0).abs() < 0.05, "{m}");
        // Exponential residual life has the same mean as the exponential itself.
        let d = DurationDist::Exponential { mean_s: 10.0 };
        let m: f64 = (0..n)
            .map(|_| {
                let u = rng.gen();
                residual_s(&d, u, &mut rng)
            })
            .sum::<f64>()
            / n as f64;
        assert!((m - 10.0).abs() < 0.3, "{m}");
    }
}
