//! Which datagrams a NAT lets in: a node behind one only hears from peers it sent to
//! recently.

/// NAT state of one node: the peers it sent to recently, and until when each mapping lasts.
#[derive(Clone, Debug, Default)]
pub struct Nat {
    /// (peer, expiry in whole seconds of virtual time).
    holes: Vec<(u32, u32)>,
}

impl Nat {
    /// Records an outgoing datagram to `peer` at `now_s`: the mapping lasts `timeout_s`.
    pub fn opened(&mut self, peer: u32, now_s: u32, timeout_s: u32) {
        let exp = now_s.saturating_add(timeout_s);
        if let Some(h) = self.holes.iter_mut().find(|h| h.0 == peer) {
            h.1 = exp;
            return;
        }
        if self.holes.len() >= 32 {
            self.holes.retain(|h| h.1 >= now_s);
        }
        self.holes.push((peer, exp));
    }

    /// Whether a datagram from `peer` gets through at `now_s`.
    pub fn admits(&self, peer: u32, now_s: u32) -> bool {
        self.holes.iter().any(|h| h.0 == peer && h.1 >= now_s)
    }

    /// Forgets every mapping (the node went away).
    pub fn clear(&mut self) {
        self.holes = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_admits_only_recent_peers() {
        let mut n = Nat::default();
        assert!(!n.admits(5, 0));
        n.opened(5, 10, 60);
        assert!(n.admits(5, 70));
        assert!(!n.admits(5, 71));
        assert!(!n.admits(6, 10));
        for p in 100..200 {
            n.opened(p, 100, 60);
        }
        assert!(n.admits(150, 100));
        assert!(n.holes.len() <= 100);
    }
}
