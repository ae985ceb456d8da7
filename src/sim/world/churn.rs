//! Nodes coming and going: the protocol-bootstrap arrivals, leaving, coming back (with the
//! same id or a new one), and the session-length draws that time them.

use rand::Rng;

use crate::dht::Dht;
use crate::sim::queue::SimTime;
use crate::sim::scenario::DurationDist;

use super::shard::{Note, Shard};
use super::{node_id, pick_contacts, secs, Core, NodeEv, Shared, World};

impl World<'_> {
    /// Queues the bootstrap arrivals, evenly over the join duration; returns its end.
    pub(super) fn schedule_arrivals(&mut self) -> SimTime {
        let d = secs(self.sh.sc.join.duration_s);
        for i in 0..self.sh.n {
            if self.starts_offline(i) {
                // Comes back later (`schedule_first_leaves`), as a node that was away.
                continue;
            }
            let at = d * u64::from(i) / u64::from(self.sh.n);
            self.schedule(at, i, NodeEv::Arrive);
        }
        d
    }

    /// With churn, queues every honest node's first departure after `join_end`: the rest of
    /// a session under way at a random moment of a stationary network; a node that starts
    /// offline gets the rest of an offline period instead, then comes back.
    pub(super) fn schedule_first_leaves(&mut self, join_end: SimTime) {
        if !self.sh.sc.churn.enabled {
            return;
        }
        for i in 0..self.sh.n {
            if self.is_attacker(i) {
                continue;
            }
            let off = self.starts_offline(i);
            let (dist, ev) = if off {
                (self.sh.sc.churn.offline, NodeEv::Return)
            } else {
                (self.sh.sc.churn.session, NodeEv::Leave)
            };
            let u: f64 = self.rng.gen();
            let first = residual_s(&dist, u, &mut self.rng);
            self.schedule(join_end + secs(first), i, ev);
        }
    }
}

impl Shard {
    /// A node joins through the protocol bootstrap (a self-lookup via random contacts).
    pub(super) fn arrive(&mut self, sh: &Shared, node: u32) {
        if self.node(node).lie().is_some() {
            self.set_online(node, true);
            self.attacker_probe(sh, node);
            return;
        }
        let nd = self.node_mut(node);
        let contacts = pick_contacts(
            &sh.online,
            &sh.addrs,
            sh.sc.join.bootstrap_nodes,
            &mut nd.rng,
        );
        self.set_online(node, true);
        let now = self.now_time();
        if let Some(dht) = self.node_mut(node).dht_mut() {
            dht.bootstrap(now, &contacts);
        }
        self.drain(sh, node, false);
        if sh.sc.join.refresh_after_join_s > 0.0 {
            let at = self.now + secs(sh.sc.join.refresh_after_join_s);
            self.push_own(at, node, NodeEv::Refresh);
        }
    }

    /// A node goes away: its lookups are aborted and its return is queued.
    pub(super) fn leave(&mut self, sh: &Shared, node: u32) {
        if !self.node(node).online {
            return;
        }
        self.set_online(node, false);
        let nd = self.node_mut(node);
        nd.epoch += 1;
        nd.timer_at = SimTime::MAX;
        if let Some(nat) = nd.nat.as_mut() {
            nat.clear();
        }
        // Its lookups will never report: they are aborted.
        let gone = std::mem::take(&mut nd.running);
        let u: f64 = nd.rng.gen();
        for r in gone {
            self.notes.push(Note::Aborted { rec: r.rec });
        }
        let off = sh.sc.churn.offline.sample_s(u);
        let at = self.now + secs(off);
        self.push_own(at, node, NodeEv::Return);
    }

    /// A node comes back, with its old id or (with probability `1 - same_id`) a new one,
    /// and queues its next departure.
    pub(super) fn come_back(&mut self, sh: &Shared, node: u32) {
        let now = self.now_time();
        let nd = self.node_mut(node);
        let contacts = pick_contacts(
            &sh.online,
            &sh.addrs,
            sh.sc.join.bootstrap_nodes.max(1),
            &mut nd.rng,
        );
        let restarts = if !nd.rng.gen_bool(sh.sc.churn.same_id) {
            let id = node_id(&sh.sc, sh.addrs, node, &mut nd.rng);
            let seed = nd.rng.gen();
            let dht = Dht::new(id, sh.cfg.clone(), seed, now);
            if let Some(old) = nd.dht() {
                self.counters.refresh_queries += old.stats().refresh_queries;
            }
            self.node_mut(node).core = Core::Honest(Box::new(dht));
            true
        } else if sh.sc.churn.restart_from_saved {
            self.restart_from_saved(sh, node, now)
        } else {
            false
        };
        self.set_online(node, true);
        if let Some(dht) = self.node_mut(node).dht_mut() {
            if !restarts {
                // The old core carries on: its queries of the last session lapse first.
                dht.handle_timeout(now);
            }
            // Re-joins through its saved contacts (or table) and a bootstrap contact.
            dht.bootstrap(now, &contacts);
        }
        self.drain(sh, node, false);
        let u: f64 = self.node_mut(node).rng.gen();
        let stay = sh.sc.churn.session.sample_s(u);
        let at = self.now + secs(stay);
        self.push_own(at, node, NodeEv::Leave);
    }
}

impl Shard {
    /// Replaces honest node `node`'s core with a new one of the same id that knows only
    /// what the old one would have saved to disk; returns whether it did (liars have no
    /// core to restart).
    fn restart_from_saved(&mut self, sh: &Shared, node: u32, now: crate::dht::Time) -> bool {
        let nd = self.node_mut(node);
        let Some(old) = nd.dht() else {
            return false;
        };
        let id = old.id();
        let saved = old.saved_nodes(now);
        let refreshes = old.stats().refresh_queries;
        let seed = nd.rng.gen();
        let mut dht = Dht::new(id, sh.cfg.clone(), seed, now);
        dht.add_saved_nodes(&saved);
        nd.core = Core::Honest(Box::new(dht));
        self.counters.refresh_queries += refreshes;
        true
    }
}

/// A remaining session length for a node seen online at a random moment of a stationary
/// network: `U × L` with `L` length-biased (long sessions are likelier to be under way).
fn residual_s(d: &DurationDist, u: f64, rng: &mut impl Rng) -> f64 {
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
fn gamma(shape: f64, rng: &mut impl Rng) -> f64 {
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
    use crate::id::Id;
    use crate::sim::progress::ProgressUpdate;
    use crate::sim::scenario::Scenario;

    /// A small churn network's online count per success bin, with or without the
    /// stationary start.
    fn online_per_bin(join: &str, stationary: bool) -> (Vec<u32>, f64) {
        let toml = format!(
            "name = \"t\"\nnodes = 2000\n[join]\nmode = \"{join}\"\nsettle_s = 10.0\n\
             [churn]\nenabled = true\nstationary_start = {stationary}\n\
             session = {{ dist = \"weibull\", shape = 0.5, scale_s = 300.0 }}\n\
             offline = {{ dist = \"exponential\", mean_s = 1800.0 }}\n\
             [workload]\ninfohashes = 20\nlookups = 200\nlookup_window_s = 300.0\n"
        );
        let sc = Scenario::from_toml_str(&toml).expect("scenario parses");
        let expect = 2000.0 * sc.churn.online_share();
        let mut p = |_: ProgressUpdate| {};
        let out = World::new(&sc, 1, &mut p).run();
        (out.bins.iter().map(|b| b.online).collect(), expect)
    }

    #[test]
    fn stationary_start_keeps_the_online_count_near_its_share() {
        for join in ["perfect", "bootstrap"] {
            let (bins, expect) = online_per_bin(join, true);
            // Mean session 600 s, mean offline 1800 s: a quarter online.
            assert!((expect - 500.0).abs() < 1e-6, "{expect}");
            assert!(bins.len() >= 5, "{bins:?}");
            for b in &bins {
                let r = f64::from(*b) / expect;
                assert!(
                    (0.85..=1.15).contains(&r),
                    "{join}: {b} online, want ~{expect}"
                );
            }
        }
        // Without it, the network starts full and is still draining.
        let (bins, expect) = online_per_bin("perfect", false);
        assert!(f64::from(bins[0]) > 1.5 * expect, "{bins:?}");
    }

    /// Node 0 of a small perfect network runs a lookup, leaves and comes back at once;
    /// returns its core's running lookups and table size right after, and the table size
    /// a few seconds later.
    fn return_of_node_0(restart: bool) -> (usize, usize, usize) {
        let toml = format!(
            "name = \"t\"\nnodes = 400\n[network]\nloss = 0.0\n[join]\nmode = \"perfect\"\n\
             [churn]\nenabled = true\nsame_id = 1.0\nstationary_start = false\n\
             restart_from_saved = {restart}\n"
        );
        let sc = Scenario::from_toml_str(&toml).expect("scenario parses");
        let mut p = |_: ProgressUpdate| {};
        let mut w = World::new(&sc, 1, &mut p);
        w.build_perfect();
        w.cut_into_shards();
        w.start_perfect();
        let sh = &w.sh;
        let shard = &mut w.shards[0];
        let t = shard.now_time();
        let before = shard.node(0).dht().map(|d| d.id());
        if let Some(d) = shard.node_mut(0).dht_mut() {
            d.get_peers(t, Id([7; 20]), None);
        }
        shard.drain(sh, 0, false);
        shard.leave(sh, 0);
        shard.come_back(sh, 0);
        let d = shard.node(0).dht().expect("honest");
        assert_eq!(Some(d.id()), before, "same id");
        let (running, table) = (d.active_lookups(), d.routing_table().iter().count());
        let end = shard.now + 5 * crate::sim::world::US_PER_S;
        shard.run_until(sh, end);
        let later = shard
            .node(0)
            .dht()
            .map_or(0, |d| d.routing_table().iter().count());
        (running, table, later)
    }

    #[test]
    fn a_returning_node_restarts_from_its_saved_contacts() {
        let (running, table, later) = return_of_node_0(true);
        // Only the new core's bootstrap runs: the old lookup went with the old core, and
        // the table starts empty, to be rebuilt from the saved contacts that answer.
        assert_eq!(running, 1);
        assert_eq!(table, 0);
        assert!(later >= 10, "{later} entries after the restart");
        // The old core carried on instead: its lookup and its table are still there.
        let (running, table, _) = return_of_node_0(false);
        assert_eq!(running, 2);
        assert!(table >= 20, "{table}");
    }

    #[test]
    fn gamma_and_residual_means() {
        let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(9);
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
