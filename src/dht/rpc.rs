//! Outstanding queries: transaction ids, who we asked, and when each query widens or times out.
//!
//! Every query waits a constant time, so deadlines come in send order: one FIFO queue of the
//! queries in flight gives the next timeout at its front and the next "widen" delay (of lookup
//! queries) at its first lookup query not yet widened.
//!
//! Transaction ids are 4 bytes of a keyed hash (SipHash-2-4) of a counter, not the counter
//! and not the output of the node's fast RNG: that RNG (xoshiro) can be reconstructed from a
//! few of its outputs, and the refresh targets it draws are on the wire, so ids drawn from it
//! could be predicted. With a secret key an off-path spoofer who cannot see our queries has to
//! guess one of 2^32 values (times the exact address asked) to pass an answer off as genuine,
//! which is also what lets the node exempt genuine answers from its per-IP flood limiter.
//! SipHash is a crate (`siphasher`) rather than std's `DefaultHasher` because std does not
//! promise its algorithm, and the simulator's runs must repeat on every toolchain.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::net::SocketAddrV4;
use std::time::Duration;

use siphasher::sip::SipHasher24;

use crate::id::Id;
use crate::krpc::DhtAddr;

use super::lookup::LookupId;
use super::time::Time;

/// Why a query was sent: decides what its answer or timeout means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A step of a lookup.
    Lookup(LookupId),
    /// A liveness check of a table entry or a newcomer.
    Ping,
    /// A bucket refresh: one find_node for an id in `bucket` (an index into the routing
    /// table), sent to one of its entries or, when it has none, to the known node closest to
    /// that id. The answer keeps the bucket fresh and the nodes it lists may fill it; no
    /// answer makes the bucket due again.
    Refresh { bucket: u8 },
    /// An announce_peer at the end of a lookup.
    Announce(LookupId),
}

/// A query waiting for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding<A = SocketAddrV4> {
    /// Where it went; the answer must come from there.
    pub addr: A,
    /// Who we expect to answer, if known.
    pub id: Option<Id>,
    /// When it was sent.
    pub sent: Time,
    /// Why.
    pub purpose: Purpose,
}

/// Most queries we keep outstanding; more are refused (the caller treats them as failed).
pub const MAX_OUTSTANDING: usize = 4096;

/// Length of our transaction ids.
pub const TID_LEN: usize = 4;

/// A query in flight, in the queue of sent queries.
struct Pending<A> {
    tid: u32,
    q: Outstanding<A>,
    /// A lookup query whose widen delay has been reported (by [`Rpc::due_widen`]).
    widened: bool,
}

/// The table of outstanding queries.
///
/// One queue in send order: every query waits the same time, so send order is deadline
/// order, and the oldest entry is the next to time out. A handful of queries are out at a
/// time (alpha per lookup, a few pings), so a scan of one contiguous buffer beats hash maps
/// here: two maps and two deadline queues were four allocations, each a cache miss for
/// every datagram a simulated node received. The scan is bounded by [`MAX_OUTSTANDING`].
pub struct Rpc<A = SocketAddrV4> {
    /// Outstanding queries, oldest first; no buffer while the node is idle.
    queue: VecDeque<Pending<A>>,
    /// Secret key of the transaction-id hash.
    key: [u8; 16],
    /// Queries registered so far: the hash input.
    counter: u64,
}

impl<A: DhtAddr> Rpc<A> {
    /// An empty table whose transaction ids are keyed by `key` (secret: from the OS for a real
    /// node, from the seed in the simulator and tests).
    pub fn new(key: [u8; 16]) -> Rpc<A> {
        Rpc {
            queue: VecDeque::new(),
            key,
            counter: 0,
        }
    }

    /// The next transaction id: 32 bits of SipHash-2-4(key, counter).
    fn next_tid(&mut self) -> u32 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write_u64(self.counter);
        self.counter = self.counter.wrapping_add(1);
        h.finish() as u32
    }

    /// Registers a query under a fresh unpredictable transaction id, or returns `None` when
    /// too many are pending.
    pub fn register(&mut self, q: Outstanding<A>) -> Option<[u8; TID_LEN]> {
        if self.len() >= MAX_OUTSTANDING {
            return None;
        }
        let mut tid = self.next_tid();
        while self.position(tid).is_some() {
            tid = self.next_tid();
        }
        self.queue.push_back(Pending {
            tid,
            q,
            widened: false,
        });
        Some(tid.to_be_bytes())
    }

    /// Where the pending query with transaction id `tid` is in the queue.
    fn position(&self, tid: u32) -> Option<usize> {
        self.queue.iter().position(|p| p.tid == tid)
    }

    /// The pending query an answer from `from` with transaction id `tid` belongs to.
    fn position_of(&self, tid: &[u8], from: &A) -> Option<usize> {
        let t = u32::from_be_bytes(<[u8; TID_LEN]>::try_from(tid).ok()?);
        self.queue
            .iter()
            .position(|p| p.tid == t && p.q.addr == *from)
    }

    /// Takes the query an answer from `from` with transaction id `tid` belongs to.
    /// Answers from another address than the one asked are not ours (spoofing or confusion).
    pub fn take(&mut self, tid: &[u8], from: &A) -> Option<Outstanding<A>> {
        let i = self.position_of(tid, from)?;
        let q = self.queue.remove(i).map(|p| p.q);
        self.shrink_if_idle();
        q
    }

    /// Whether some query of ours to exactly `from` is pending: only then can a datagram from
    /// it be an answer we are waiting for. Answers from such addresses are decoded before the
    /// per-IP flood limiter sees them (they may be ours); everything else meets the limiter
    /// first, so a flood is dropped before we spend a decode on it.
    pub fn awaits(&self, from: &A) -> bool {
        self.queue.iter().any(|p| p.q.addr == *from)
    }

    /// Whether an answer from `from` with `tid` would match one of our queries (without
    /// taking it): such answers are ours, and no flood limiter may drop them.
    pub fn matches(&self, tid: &[u8], from: &A) -> bool {
        self.position_of(tid, from).is_some()
    }

    /// Lookup queries that passed the widen delay at `now` and are still unanswered; each is
    /// reported once.
    pub fn due_widen(&mut self, now: Time, widen: Duration) -> Vec<Outstanding<A>> {
        let mut out = Vec::new();
        for p in self.queue.iter_mut() {
            if p.widened || !matches!(p.q.purpose, Purpose::Lookup(_)) {
                continue;
            }
            if p.q.sent + widen > now {
                break;
            }
            p.widened = true;
            out.push(p.q);
        }
        out
    }

    /// Queries that timed out at `now`; they are removed.
    pub fn due_timeouts(&mut self, now: Time, timeout: Duration) -> Vec<Outstanding<A>> {
        let mut out = Vec::new();
        while self
            .queue
            .front()
            .is_some_and(|p| p.q.sent + timeout <= now)
        {
            if let Some(p) = self.queue.pop_front() {
                out.push(p.q);
            }
        }
        self.shrink_if_idle();
        out
    }

    /// The next widen or timeout deadline.
    pub fn next_deadline(&mut self, widen: Duration, timeout: Duration) -> Option<Time> {
        let t = self.queue.front().map(|p| p.q.sent + timeout);
        let w = self
            .queue
            .iter()
            .find(|p| !p.widened && matches!(p.q.purpose, Purpose::Lookup(_)))
            .map(|p| p.q.sent + widen);
        match (w, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases the buffer a burst grew, once nothing is outstanding: called whenever the
    /// last query is answered or times out, so the nodes of a simulated million that are
    /// between bursts hold none (one allocation per burst, against a datagram's worth of
    /// work per query).
    pub fn shrink_if_idle(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// Number of outstanding queries.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn q(port: u16, sent: u64, purpose: Purpose) -> Outstanding {
        Outstanding {
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            id: None,
            sent: Time(sent),
            purpose,
        }
    }

    #[test]
    fn answers_must_come_from_the_queried_address() {
        let mut r = Rpc::new([7; 16]);
        let tid = r.register(q(1, 0, Purpose::Ping)).unwrap();
        assert!(r.matches(&tid, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)));
        assert!(!r.matches(&tid, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2)));
        assert!(r
            .take(&tid, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2))
            .is_none());
        assert!(r
            .take(b"xyz", &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1))
            .is_none());
        assert!(r
            .take(&tid, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1))
            .is_some());
        assert!(r.is_empty());
    }

    #[test]
    fn the_queue_gives_its_buffer_back_when_the_last_query_ends() {
        let mut r = Rpc::new([7; 16]);
        let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let a = r.register(q(1, 0, Purpose::Ping)).unwrap();
        let b = r.register(q(1, 0, Purpose::Ping)).unwrap();
        assert!(r.take(&a, &from).is_some());
        assert!(r.queue.capacity() > 0, "one query is still out");
        assert!(r.take(&b, &from).is_some());
        assert_eq!(r.queue.capacity(), 0, "answered: nothing held");
        r.register(q(2, 0, Purpose::Ping)).unwrap();
        assert_eq!(r.due_timeouts(Time(5000), Duration::from_secs(2)).len(), 1);
        assert_eq!(r.queue.capacity(), 0, "timed out: nothing held");
    }

    #[test]
    fn widen_then_timeout_in_send_order() {
        let mut r = Rpc::new([0; 16]);
        let w = Duration::from_millis(500);
        let t = Duration::from_millis(2000);
        let a = r.register(q(1, 0, Purpose::Lookup(LookupId(1)))).unwrap();
        r.register(q(2, 100, Purpose::Ping)).unwrap();
        assert_eq!(r.next_deadline(w, t), Some(Time(500)));
        assert_eq!(r.due_widen(Time(500), w).len(), 1);
        assert_eq!(r.next_deadline(w, t), Some(Time(2000)));
        // Answer the first: its timeout entry becomes stale and is skipped.
        r.take(&a, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1))
            .unwrap();
        assert_eq!(r.next_deadline(w, t), Some(Time(2100)));
        let timed_out = r.due_timeouts(Time(2100), t);
        assert_eq!(timed_out.len(), 1);
        assert_eq!(timed_out[0].addr.port(), 2);
        assert_eq!(r.next_deadline(w, t), None);
    }

    #[test]
    fn each_lookup_query_widens_once_and_pings_never_do() {
        let mut r = Rpc::new([5; 16]);
        let w = Duration::from_millis(500);
        let t = Duration::from_millis(2000);
        r.register(q(1, 0, Purpose::Ping)).unwrap();
        r.register(q(2, 100, Purpose::Lookup(LookupId(1)))).unwrap();
        r.register(q(3, 200, Purpose::Lookup(LookupId(1)))).unwrap();
        // The ping ahead of them neither widens nor hides the lookups' deadline.
        assert_eq!(r.next_deadline(w, t), Some(Time(600)));
        let first = r.due_widen(Time(650), w);
        assert_eq!(first.iter().map(|o| o.addr.port()).collect::<Vec<_>>(), [2]);
        assert_eq!(r.next_deadline(w, t), Some(Time(700)));
        assert!(r.due_widen(Time(650), w).is_empty(), "reported once");
        let second = r.due_widen(Time(5000), w);
        assert_eq!(
            second.iter().map(|o| o.addr.port()).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(
            r.next_deadline(w, t),
            Some(Time(2000)),
            "only timeouts left"
        );
        assert_eq!(r.due_timeouts(Time(2200), t).len(), 3);
        assert!(r.is_empty());
    }

    #[test]
    fn transaction_ids_depend_on_the_key_and_do_not_count_up() {
        let mut a = Rpc::new([1; 16]);
        let mut b = Rpc::new([2; 16]);
        let ids_a: Vec<u32> = (0..64)
            .map(|i| u32::from_be_bytes(a.register(q(i, 0, Purpose::Ping)).unwrap()))
            .collect();
        let ids_b: Vec<u32> = (0..64)
            .map(|i| u32::from_be_bytes(b.register(q(i, 0, Purpose::Ping)).unwrap()))
            .collect();
        assert_ne!(ids_a, ids_b, "another key gives other ids");
        // Not a counter: consecutive ids are not one apart, nor ordered.
        let steps_of_one = ids_a.windows(2).filter(|w| w[1] == w[0].wrapping_add(1));
        assert_eq!(steps_of_one.count(), 0);
        assert!(ids_a.windows(2).any(|w| w[1] < w[0]));
        // The same key repeats (the simulator's runs must).
        let mut c = Rpc::new([1; 16]);
        let first = u32::from_be_bytes(c.register(q(0, 0, Purpose::Ping)).unwrap());
        assert_eq!(first, ids_a[0]);
    }

    #[test]
    fn awaited_addresses_follow_register_take_and_timeout() {
        let mut r = Rpc::new([3; 16]);
        let one = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let two = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2);
        assert!(!r.awaits(&one));
        let a = r.register(q(1, 0, Purpose::Ping)).unwrap();
        let b = r.register(q(1, 10, Purpose::Ping)).unwrap();
        r.register(q(2, 20, Purpose::Ping)).unwrap();
        assert!(r.awaits(&one) && r.awaits(&two));
        // A wrong-address answer takes nothing.
        assert!(r.take(&a, &two).is_none());
        r.take(&a, &one).unwrap();
        assert!(r.awaits(&one), "a second query to it is still pending");
        r.take(&b, &one).unwrap();
        assert!(!r.awaits(&one));
        assert_eq!(r.due_timeouts(Time(5000), Duration::from_secs(1)).len(), 1);
        assert!(!r.awaits(&two), "a timed-out query is no longer awaited");
    }
}
