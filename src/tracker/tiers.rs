//! BEP 12 announce-list tiers: which tracker to ask next. The trackers of each tier are
//! shuffled once; a round asks them in order (first tier first) until one answers, and the
//! one that answered moves to the front of its tier so it is asked first next time.

use rand::seq::SliceRandom;
use rand::Rng;

use super::url::TrackerUrl;

/// Most trackers kept from one torrent or magnet (the rest are ignored): each is asked in
/// turn, so a list of thousands would only delay the working ones.
pub const MAX_TRACKERS: usize = 64;

/// The tiers of one torrent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<Vec<TrackerUrl>>,
}

/// Where a tracker sits: (tier, index in tier).
pub type Position = (usize, usize);

impl Tiers {
    /// Builds the tiers from parsed lists (each inner list one tier, in order), dropping
    /// duplicates and empty tiers, keeping at most [`MAX_TRACKERS`], and shuffling each tier.
    pub fn new(lists: Vec<Vec<TrackerUrl>>, rng: &mut impl Rng) -> Tiers {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        let mut tiers = Vec::new();
        for list in lists {
            let mut tier: Vec<TrackerUrl> = Vec::new();
            for u in list {
                if total >= MAX_TRACKERS {
                    break;
                }
                if seen.insert(u.clone()) {
                    tier.push(u);
                    total += 1;
                }
            }
            if !tier.is_empty() {
                tier.shuffle(rng);
                tiers.push(tier);
            }
        }
        Tiers { tiers }
    }

    /// Tiers from URL strings as a torrent or magnet holds them; URLs we cannot use (other
    /// schemes, malformed) are dropped with one log line each.
    pub fn from_strings(lists: &[Vec<String>], rng: &mut impl Rng) -> Tiers {
        let parsed = lists
            .iter()
            .map(|tier| {
                tier.iter()
                    .filter_map(|s| match TrackerUrl::parse(s) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            tracing::info!("ignoring tracker: {e}");
                            None
                        }
                    })
                    .collect()
            })
            .collect();
        Tiers::new(parsed, rng)
    }

    /// No tracker at all.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Number of trackers.
    pub fn len(&self) -> usize {
        self.tiers.iter().map(Vec::len).sum()
    }

    /// Every tracker in the order a round asks them.
    pub fn order(&self) -> Vec<(Position, TrackerUrl)> {
        self.tiers
            .iter()
            .enumerate()
            .flat_map(|(t, tier)| {
                tier.iter()
                    .enumerate()
                    .map(move |(i, u)| ((t, i), u.clone()))
            })
            .collect()
    }

    /// The tracker that answered moves to the front of its tier (the others keep their order).
    pub fn promote(&mut self, (t, i): Position) {
        if let Some(tier) = self.tiers.get_mut(t) {
            if i < tier.len() {
                let u = tier.remove(i);
                tier.insert(0, u);
            }
        }
    }

    /// The tiers as they stand.
    pub fn tiers(&self) -> &[Vec<TrackerUrl>] {
        &self.tiers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn u(n: u16) -> TrackerUrl {
        TrackerUrl::Udp {
            host: "t.example".into(),
            port: n,
        }
    }

    #[test]
    fn each_tier_is_shuffled_and_tiers_keep_their_order() {
        let lists = vec![(1..=8).map(u).collect::<Vec<_>>(), vec![u(20), u(21)]];
        let mut orders = std::collections::HashSet::new();
        for seed in 0..20 {
            let t = Tiers::new(lists.clone(), &mut SmallRng::seed_from_u64(seed));
            let order: Vec<TrackerUrl> = t.order().into_iter().map(|(_, u)| u).collect();
            assert_eq!(order.len(), 10);
            let mut first: Vec<_> = order[..8].to_vec();
            first.sort();
            assert_eq!(
                first,
                (1..=8).map(u).collect::<Vec<_>>(),
                "tier 1 stays tier 1"
            );
            assert!(order[8..].contains(&u(20)) && order[8..].contains(&u(21)));
            orders.insert(order);
        }
        assert!(orders.len() > 1, "20 seeds gave one order: not shuffled");
    }

    #[test]
    fn the_answering_tracker_moves_to_the_front_of_its_tier() {
        let mut t = Tiers::new(
            vec![vec![u(1), u(2), u(3)], vec![u(4)]],
            &mut SmallRng::seed_from_u64(1),
        );
        let before = t.tiers()[0].clone();
        t.promote((0, 2));
        assert_eq!(
            t.tiers()[0],
            vec![before[2].clone(), before[0].clone(), before[1].clone()]
        );
        assert_eq!(t.tiers()[1], vec![u(4)]);
        // Out of range: nothing moves.
        t.promote((5, 0));
        t.promote((0, 9));
        assert_eq!(t.tiers()[0][0], before[2]);
    }

    #[test]
    fn duplicates_bad_urls_and_empty_tiers_are_dropped_and_the_count_is_capped() {
        let lists = vec![
            vec![
                "udp://a:1".to_string(),
                "wss://x/".into(),
                "udp://a:1".into(),
            ],
            vec!["gopher://old".into()],
            vec!["http://b/announce".into(), "udp://a:1".into()],
        ];
        let t = Tiers::from_strings(&lists, &mut SmallRng::seed_from_u64(1));
        assert_eq!(t.tiers().len(), 2);
        assert_eq!(t.len(), 2);
        let many = vec![(1..=200).map(u).collect::<Vec<_>>()];
        assert_eq!(
            Tiers::new(many, &mut SmallRng::seed_from_u64(1)).len(),
            MAX_TRACKERS
        );
        assert!(Tiers::from_strings(&[], &mut SmallRng::seed_from_u64(1)).is_empty());
    }
}
