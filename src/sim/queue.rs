//! The event queue: one priority queue ordered by (virtual time, insertion sequence).
//!
//! The sequence number breaks ties by insertion order, so two events due at the same
//! microsecond always run in the same order: this is what makes runs reproducible byte for
//! byte.
//!
//! # Why a radix heap
//!
//! At a million simulated nodes the queue holds millions of events, and a `BinaryHeap` pays
//! ~log2(n) ≈ 21 cache-missing sift steps per pop on 48-byte entries. The simulator's pops
//! are *monotone* (the clock never runs backwards and `push` clamps a past time to now), so
//! a radix heap applies: an event due at `at` lives in bucket `msb(at ^ last)`, where `last`
//! is the time of the latest minimum extracted. Only when the bucket of exactly-`last`
//! events runs dry is the lowest non-empty bucket emptied and its entries redistributed to
//! strictly lower buckets; each entry therefore moves at most 64 times, and in practice
//! ~log2(typical delay) ≈ 19 times, each move a sequential copy of a 24-byte key.
//!
//! The payloads stay put in a slab (`Vec<Option<E>>` with a free list): buckets hold only
//! `(at, tie, slot)` keys, so redistribution never moves an `E`. Freed slots are reused
//! last-in first-out, so the slot a push fills is usually the one the preceding pop just
//! emptied and is still in cache.
//!
//! Ties at one time are broken by a `tie` key: `push` uses the insertion sequence (FIFO),
//! `push_keyed` lets the caller choose it. Entries due at exactly `last` sit in a small
//! deque sorted by `tie`, sorted once when a redistribution fills it.
//!
//! Why not a crate: `radix-heap` (the obvious one) orders by key alone — no FIFO among
//! equal times, no separate tie key — and stores `(key, value)` pairs in its buckets, so
//! every move would copy the payload. What we need is ~120 lines.

use std::collections::VecDeque;

/// Virtual time in microseconds since the start of the simulation.
pub type SimTime = u64;

/// One scheduled event as the buckets see it: small and `Copy`, so moving it between
/// buckets is cheap. The payload is in the slab at `slot`.
#[derive(Clone, Copy)]
struct Key {
    at: SimTime,
    tie: u64,
    slot: usize,
}

/// Number of radix buckets besides the "due at `last`" deque: one per bit of a `SimTime`.
const BUCKETS: usize = 64;

/// A min-queue of events by time, FIFO among equal times (or by a caller's tie key, see
/// [`EventQueue::push_keyed`]). Monotone: nothing can be scheduled before [`EventQueue::now`].
pub struct EventQueue<E> {
    /// Entries due at exactly `last`, as `(tie, slot)`, sorted by `tie` ascending.
    ready: VecDeque<(u64, usize)>,
    /// `buckets[b]` holds the entries whose `at ^ last` has its highest set bit at `b`.
    buckets: Vec<Vec<Key>>,
    /// Smallest `at` in each bucket (`SimTime::MAX` when empty): the next `last` is the
    /// minimum of the lowest non-empty bucket, known without scanning it.
    mins: [SimTime; BUCKETS],
    /// Bit `b` set when `buckets[b]` is non-empty.
    occupied: u64,
    /// The radix reference point: every queued entry has `at >= last`.
    last: SimTime,
    /// Payloads by slot; `None` for a free slot.
    slab: Vec<Option<E>>,
    /// Free slots of `slab`, reused last-in first-out.
    free: Vec<usize>,
    /// Events currently queued.
    len: usize,
    seq: u64,
    now: SimTime,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            ready: VecDeque::new(),
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            mins: [SimTime::MAX; BUCKETS],
            occupied: 0,
            last: 0,
            slab: Vec::new(),
            free: Vec::new(),
            len: 0,
            seq: 0,
            now: 0,
        }
    }
}

/// The bucket of an entry due at `at` relative to `last` (`at > last`): the highest bit in
/// which they differ.
#[inline]
fn bucket_of(at: SimTime, last: SimTime) -> usize {
    debug_assert!(at > last);
    63 - (at ^ last).leading_zeros() as usize
}

impl<E> EventQueue<E> {
    /// An empty queue at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The virtual clock: the time of the last event popped.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// Schedules `ev` at `at`; a time in the past is clamped to now (the clock never runs
    /// backwards). Among events due at the same time, the one pushed first pops first.
    #[inline]
    pub fn push(&mut self, at: SimTime, ev: E) {
        // The sequence is the tie key: `push_keyed` bumps `seq` first, so this is the
        // value `pushed()` will report after the push, unique and increasing.
        self.push_keyed(at, self.seq + 1, ev);
    }

    /// Schedules `ev` at `at` (clamped to now, like [`EventQueue::push`]), ordered among
    /// events due at the same time by `tie` ascending instead of by insertion. This is for
    /// an engine that merges work from several producers and needs an order that does not
    /// depend on which producer pushed first (e.g. `tie` = (sender, per-sender counter)).
    ///
    /// A plain `push` is `push_keyed(at, n)` with `n` the count of pushes so far including
    /// this one, so mixing the two orders by that number. Two entries with the same time
    /// *and* the same tie pop in an unspecified but deterministic order.
    #[inline]
    pub fn push_keyed(&mut self, at: SimTime, tie: u64, ev: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.len += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() - 1
            }
        };
        if at == self.last {
            // Due at the current minimum: into the sorted deque. A `push` always lands at
            // the back (its tie is the largest yet); only `push_keyed` may need to insert.
            if self.ready.back().is_none_or(|&(t, _)| t <= tie) {
                self.ready.push_back((tie, slot));
            } else {
                let i = self.ready.partition_point(|&(t, _)| t <= tie);
                self.ready.insert(i, (tie, slot));
            }
        } else {
            self.insert(Key { at, tie, slot });
        }
    }

    /// Files a key due after `last` into its radix bucket.
    #[inline]
    fn insert(&mut self, k: Key) {
        let b = bucket_of(k.at, self.last);
        self.buckets[b].push(k);
        self.mins[b] = self.mins[b].min(k.at);
        self.occupied |= 1 << b;
    }

    /// Moves the clock forward to `t` without an event (a set-up phase that took virtual
    /// time). Nothing queued may be due before `t`.
    pub fn advance_to(&mut self, t: SimTime) {
        debug_assert!(self.peek_time().is_none_or(|p| p >= t));
        self.now = self.now.max(t);
    }

    /// Time of the next event, if any.
    pub fn peek_time(&self) -> Option<SimTime> {
        if !self.ready.is_empty() {
            return Some(self.last);
        }
        if self.occupied == 0 {
            return None;
        }
        Some(self.mins[self.occupied.trailing_zeros() as usize])
    }

    /// Refills `ready` when it is empty: empties the lowest non-empty bucket, whose minimum
    /// becomes `last`, into `ready` (those due at the new `last`) and lower buckets (the
    /// rest). Returns false when the queue is empty.
    fn refill(&mut self) -> bool {
        if self.occupied == 0 {
            return false;
        }
        let b = self.occupied.trailing_zeros() as usize;
        let min = self.mins[b];
        self.last = min;
        self.mins[b] = SimTime::MAX;
        self.occupied &= !(1 << b);
        // Take the bucket out so the others can be pushed to; give its allocation back after.
        let mut keys = std::mem::take(&mut self.buckets[b]);
        for k in keys.drain(..) {
            if k.at == min {
                self.ready.push_back((k.tie, k.slot));
            } else {
                // Strictly lower than `b`: `k.at` and `min` agree on every bit above `b`
                // and on bit `b` too (both were filed under it).
                self.insert(k);
            }
        }
        self.buckets[b] = keys;
        if self.ready.len() > 1 {
            // With `push` alone this finds the slice already sorted: a bucket is only filled
            // from a higher one while empty, in that one's order, and pushes append the
            // largest sequence yet, so every bucket stays in FIFO order. `push_keyed` ties
            // can arrive in any order and need it. Ties from `push` are unique, so an
            // unstable sort is exact.
            self.ready
                .make_contiguous()
                .sort_unstable_by_key(|&(t, _)| t);
        }
        true
    }

    /// The `k`-th next event among those due at the current time (0: the next to pop), when
    /// it is already known without a refill: what the event loop prefetches for.
    #[inline]
    pub fn peek_ready(&self, k: usize) -> Option<&E> {
        let &(_, slot) = self.ready.get(k)?;
        self.slab.get(slot)?.as_ref()
    }

    /// Removes the next event and advances the clock to it.
    #[inline]
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        if self.ready.is_empty() && !self.refill() {
            return None;
        }
        let (_, slot) = self.ready.pop_front()?;
        let ev = self.slab[slot]
            .take()
            .expect("a queued slot holds its event");
        self.free.push(slot);
        self.len -= 1;
        self.now = self.last;
        Some((self.last, ev))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events pushed so far (a measure of work done).
    pub fn pushed(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_in_time_order_fifo_on_ties() {
        let mut q = EventQueue::new();
        q.push(30, "c");
        q.push(10, "a1");
        q.push(20, "b");
        q.push(10, "a2");
        q.push(10, "a3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![(10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]
        );
        assert_eq!(q.now(), 30);
    }

    #[test]
    fn clock_never_runs_backwards() {
        let mut q = EventQueue::new();
        q.push(100, 1);
        assert_eq!(q.pop(), Some((100, 1)));
        q.push(50, 2);
        assert_eq!(q.peek_time(), Some(100));
        assert_eq!(q.pop(), Some((100, 2)));
        assert!(q.is_empty());
    }

    /// The queue this one replaced, kept as the reference model and the benchmark baseline.
    struct OldQueue<E> {
        heap: BinaryHeap<Reverse<(SimTime, u64, OrdIgnored<E>)>>,
        seq: u64,
        now: SimTime,
    }

    /// A payload that takes no part in the ordering.
    struct OrdIgnored<E>(E);
    impl<E> PartialEq for OrdIgnored<E> {
        fn eq(&self, _: &Self) -> bool {
            true
        }
    }
    impl<E> Eq for OrdIgnored<E> {}
    impl<E> PartialOrd for OrdIgnored<E> {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl<E> Ord for OrdIgnored<E> {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal
        }
    }

    impl<E> OldQueue<E> {
        fn new() -> Self {
            OldQueue {
                heap: BinaryHeap::new(),
                seq: 0,
                now: 0,
            }
        }
        /// `tie` = None: insertion order, like `push`.
        fn push(&mut self, at: SimTime, tie: Option<u64>, ev: E) {
            let at = at.max(self.now);
            self.seq += 1;
            let tie = tie.unwrap_or(self.seq);
            self.heap.push(Reverse((at, tie, OrdIgnored(ev))));
        }
        fn advance_to(&mut self, t: SimTime) {
            self.now = self.now.max(t);
        }
        fn peek_time(&self) -> Option<SimTime> {
            self.heap.peek().map(|e| e.0 .0)
        }
        fn pop(&mut self) -> Option<(SimTime, E)> {
            let Reverse((at, _, ev)) = self.heap.pop()?;
            self.now = at;
            Some((at, ev.0))
        }
        fn len(&self) -> usize {
            self.heap.len()
        }
    }

    /// A time for the next push: equal to now, in the past, near, far, or huge.
    fn pick_time(rng: &mut SmallRng, now: SimTime, recent: &[SimTime]) -> SimTime {
        match rng.gen_range(0..10) {
            0 => now,
            1 => now.saturating_sub(rng.gen_range(0..1000)),
            2 if !recent.is_empty() => recent[rng.gen_range(0..recent.len())],
            3 => now.saturating_add(rng.gen_range(0..4)),
            4 => now.saturating_add(rng.gen_range(0..1 << 40)),
            5 => rng.gen_range(now..=SimTime::MAX),
            6 => SimTime::MAX,
            _ => now.saturating_add(rng.gen_range(0..500_000)),
        }
    }

    /// Random interleavings of push / push_keyed / pop / advance_to against the BinaryHeap
    /// model. `keyed`: use `push_keyed` with distinct random ties instead of `push`.
    fn differential(seed: u64, ops: usize, keyed: bool) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut q = EventQueue::new();
        let mut m = OldQueue::new();
        let mut recent: Vec<SimTime> = Vec::new();
        let mut id = 0u64;
        for _ in 0..ops {
            match rng.gen_range(0..100) {
                0..=54 => {
                    let at = pick_time(&mut rng, q.now(), &recent);
                    id += 1;
                    if keyed {
                        // Distinct by construction, random in order.
                        let tie = (rng.gen::<u64>() << 24) | id;
                        q.push_keyed(at, tie, id);
                        m.push(at, Some(tie), id);
                    } else {
                        q.push(at, id);
                        m.push(at, None, id);
                    }
                    if recent.len() < 64 {
                        recent.push(at.max(q.now()));
                    } else {
                        let i = rng.gen_range(0..64);
                        recent[i] = at.max(q.now());
                    }
                }
                55..=97 => assert_eq!(q.pop(), m.pop()),
                _ => {
                    // Anywhere up to the next event (or far ahead when empty).
                    let hi = m.peek_time().unwrap_or(q.now().saturating_add(1 << 30));
                    let t = rng.gen_range(q.now().min(hi)..=hi);
                    q.advance_to(t);
                    m.advance_to(t);
                }
            }
            assert_eq!(q.now(), m.now);
            assert_eq!(q.len(), m.len());
            assert_eq!(q.is_empty(), m.len() == 0);
            assert_eq!(q.peek_time(), m.peek_time());
            assert_eq!(q.pushed(), m.seq);
        }
        while let Some(e) = m.pop() {
            assert_eq!(q.pop(), Some(e));
        }
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn matches_binary_heap_reference() {
        for seed in 0..8 {
            differential(seed, 40_000, false);
        }
    }

    #[test]
    fn push_keyed_matches_reference() {
        for seed in 100..104 {
            differential(seed, 40_000, true);
        }
    }

    #[test]
    fn push_keyed_orders_ties_by_key() {
        let mut q = EventQueue::new();
        q.push_keyed(10, 7, "t7");
        q.push_keyed(10, 3, "t3");
        q.push_keyed(5, 100, "early");
        q.push_keyed(10, 5, "t5");
        assert_eq!(q.pop(), Some((5, "early")));
        assert_eq!(q.pop(), Some((10, "t3")));
        // Pushed at the current time with a smaller tie than what is left: next.
        q.push_keyed(10, 4, "t4");
        q.push_keyed(3, 9, "past: clamped to 10");
        assert_eq!(q.pop(), Some((10, "t4")));
        assert_eq!(q.pop(), Some((10, "t5")));
        assert_eq!(q.pop(), Some((10, "t7")));
        assert_eq!(q.pop(), Some((10, "past: clamped to 10")));
        assert_eq!(q.pop(), None);
        assert_eq!(q.pushed(), 6);
    }

    /// Payload shaped like the simulator's `Ev` (32 bytes, a `Vec` niche).
    #[allow(dead_code)]
    enum BenchEv {
        Packet { from: u32, to: u32, data: Vec<u8> },
        Timer { node: u32 },
    }

    /// Delay of a simulator-like follow-up event, µs: log-uniform-ish 5–400 ms, 1% timers
    /// 15 minutes out.
    fn bench_delay(rng: &mut SmallRng) -> SimTime {
        if rng.gen_range(0..100) == 0 {
            return 15 * 60 * 1_000_000;
        }
        let u = (rng.gen::<f64>() + rng.gen::<f64>()) / 2.0;
        (5_000.0 * (u * (80f64).ln()).exp()) as SimTime
    }

    fn bench_ev(i: u32) -> BenchEv {
        if i.is_multiple_of(4) {
            BenchEv::Timer { node: i }
        } else {
            BenchEv::Packet {
                from: i,
                to: i ^ 1,
                data: Vec::new(),
            }
        }
    }

    const RESIDENT: usize = 2_000_000;
    const BENCH_POPS: u64 = 10_000_000;

    /// What the benchmark needs of a queue, so both run the same load.
    trait BenchQueue {
        fn bpush(&mut self, at: SimTime, ev: BenchEv);
        fn bpop(&mut self) -> Option<(SimTime, BenchEv)>;
        fn blen(&self) -> usize;
    }
    impl BenchQueue for OldQueue<BenchEv> {
        fn bpush(&mut self, at: SimTime, ev: BenchEv) {
            self.push(at, None, ev)
        }
        fn bpop(&mut self) -> Option<(SimTime, BenchEv)> {
            self.pop()
        }
        fn blen(&self) -> usize {
            self.len()
        }
    }
    impl BenchQueue for EventQueue<BenchEv> {
        fn bpush(&mut self, at: SimTime, ev: BenchEv) {
            self.push(at, ev)
        }
        fn bpop(&mut self) -> Option<(SimTime, BenchEv)> {
            self.pop()
        }
        fn blen(&self) -> usize {
            self.len()
        }
    }

    /// Fills `q` with `RESIDENT` events, then pops `BENCH_POPS`, each followed by one push
    /// and, a quarter of the time (or when below `RESIDENT`), a second one; returns ns per
    /// popped event.
    fn bench_load(q: &mut impl BenchQueue) -> f64 {
        let mut rng = SmallRng::seed_from_u64(7);
        for i in 0..RESIDENT as u32 {
            q.bpush(rng.gen_range(0..400_000), bench_ev(i));
        }
        let t0 = std::time::Instant::now();
        let mut sum = 0u64;
        let mut pops = 0u64;
        let mut i = 0u32;
        while pops < BENCH_POPS {
            let (at, ev) = q.bpop().expect("never empty");
            pops += 1;
            if let BenchEv::Timer { node } = ev {
                sum = sum.wrapping_add(u64::from(node));
            }
            sum = sum.wrapping_add(at);
            i = i.wrapping_add(1);
            q.bpush(at + bench_delay(&mut rng), bench_ev(i));
            if q.blen() < RESIDENT || rng.gen_range(0..4) == 0 {
                q.bpush(at + bench_delay(&mut rng), bench_ev(i));
            }
            if q.blen() > RESIDENT + 1000 {
                let _ = q.bpop();
                pops += 1;
            }
        }
        let ns = t0.elapsed().as_nanos() as f64 / pops as f64;
        std::hint::black_box(sum);
        ns
    }

    /// ns per event (one pop plus ~1 push) at `RESIDENT` events queued, old vs new. Run
    /// with `cargo test --release --lib sim::queue -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_simulator_like_load() {
        let old = bench_load(&mut OldQueue::new());
        println!("BinaryHeap (old): {old:.0} ns/event");
        let new = bench_load(&mut EventQueue::new());
        println!("radix heap (new): {new:.0} ns/event");
    }
}
