//! Outstanding queries: transaction ids, who we asked, and when each query widens or times out.
//!
//! Every query waits a constant time, so deadlines come in send order: two FIFO queues (one for
//! the short "widen" delay of lookup queries, one for the full timeout) give the next deadline
//! in O(1). Entries for queries already answered are skipped lazily.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::Duration;

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

/// The table of outstanding queries.
pub struct Rpc<A = SocketAddrV4> {
    next_tid: u16,
    pending: HashMap<u16, Outstanding<A>>,
    widen_queue: VecDeque<(Time, u16)>,
    timeout_queue: VecDeque<(Time, u16)>,
}

impl<A: DhtAddr> Default for Rpc<A> {
    fn default() -> Self {
        Rpc::new(0)
    }
}

impl<A: DhtAddr> Rpc<A> {
    /// An empty table whose transaction ids start at `first_tid` (pick it at random).
    pub fn new(first_tid: u16) -> Rpc<A> {
        Rpc {
            next_tid: first_tid,
            pending: HashMap::new(),
            widen_queue: VecDeque::new(),
            timeout_queue: VecDeque::new(),
        }
    }

    /// Registers a query and returns its transaction id, or `None` when too many are pending.
    pub fn register(&mut self, q: Outstanding<A>) -> Option<[u8; 2]> {
        if self.pending.len() >= MAX_OUTSTANDING {
            return None;
        }
        let mut tid = self.next_tid;
        while self.pending.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        self.pending.insert(tid, q);
        if matches!(q.purpose, Purpose::Lookup(_)) {
            self.widen_queue.push_back((q.sent, tid));
        }
        self.timeout_queue.push_back((q.sent, tid));
        Some(tid.to_be_bytes())
    }

    /// Takes the query an answer from `from` with transaction id `tid` belongs to.
    /// Answers from another address than the one asked are not ours (spoofing or confusion).
    pub fn take(&mut self, tid: &[u8], from: &A) -> Option<Outstanding<A>> {
        let t = u16::from_be_bytes(<[u8; 2]>::try_from(tid).ok()?);
        match self.pending.get(&t) {
            Some(q) if q.addr == *from => self.pending.remove(&t),
            _ => None,
        }
    }

    /// Lookup queries that passed the widen delay at `now` and are still unanswered.
    pub fn due_widen(&mut self, now: Time, widen: Duration) -> Vec<Outstanding<A>> {
        let mut out = Vec::new();
        while let Some(&(sent, tid)) = self.widen_queue.front() {
            if sent + widen > now {
                break;
            }
            self.widen_queue.pop_front();
            if let Some(q) = self.pending.get(&tid) {
                if q.sent == sent {
                    out.push(*q);
                }
            }
        }
        out
    }

    /// Queries that timed out at `now`; they are removed.
    pub fn due_timeouts(&mut self, now: Time, timeout: Duration) -> Vec<Outstanding<A>> {
        let mut out = Vec::new();
        while let Some(&(sent, tid)) = self.timeout_queue.front() {
            if sent + timeout > now {
                break;
            }
            self.timeout_queue.pop_front();
            if self.pending.get(&tid).is_some_and(|q| q.sent == sent) {
                if let Some(q) = self.pending.remove(&tid) {
                    out.push(q);
                }
            }
        }
        out
    }

    /// The next widen or timeout deadline.
    pub fn next_deadline(&mut self, widen: Duration, timeout: Duration) -> Option<Time> {
        // Drop stale heads so the deadline we report is real.
        while let Some(&(sent, tid)) = self.widen_queue.front() {
            if self.pending.get(&tid).is_some_and(|q| q.sent == sent) {
                break;
            }
            self.widen_queue.pop_front();
        }
        while let Some(&(sent, tid)) = self.timeout_queue.front() {
            if self.pending.get(&tid).is_some_and(|q| q.sent == sent) {
                break;
            }
            self.timeout_queue.pop_front();
        }
        let w = self.widen_queue.front().map(|(s, _)| *s + widen);
        let t = self.timeout_queue.front().map(|(s, _)| *s + timeout);
        match (w, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases memory grown by a burst once nothing is outstanding.
    pub fn shrink_if_idle(&mut self) {
        if self.pending.is_empty() {
            self.pending.shrink_to_fit();
            self.widen_queue.shrink_to(8);
            self.timeout_queue.shrink_to(8);
        }
    }

    /// Number of outstanding queries.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
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
        let mut r = Rpc::new(7);
        let tid = r.register(q(1, 0, Purpose::Ping)).unwrap();
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
    fn widen_then_timeout_in_send_order() {
        let mut r = Rpc::new(0);
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
}
