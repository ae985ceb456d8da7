//! The Kademlia routing table of BEP 5: k-buckets over the XOR metric, only the bucket that
//! holds our own id splits, good / questionable / bad node states, and a replacement cache
//! per bucket so a full bucket still remembers who could take a dead node's place.
//!
//! The table never sends anything itself: when a questionable node should be pinged before it
//! is replaced, insertion says so and the node (`dht`) sends the ping.
//!
//! Memory: the simulator holds a million tables of ~140 entries, so an entry is stored
//! compactly ([`Slot`], 34 bytes for IPv4 instead of 48): its times are 30-bit milliseconds
//! after an epoch the table keeps, which moves forward (every value shifted) before a time
//! could overflow, so a node running for months stays exact to the millisecond for every
//! time within the last ~6 days (older times only ever compare as "long ago"). A bucket holds
//! its k entries inline, the buckets are one allocation, the replacement caches of all
//! buckets are one list, and the one-per-IP index keeps two bytes per entry: 5,992 bytes for
//! a perfect table of 142 entries with the rest of the node (`tests/mem.rs`), where a block
//! per bucket made it 7,800.

use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use smallvec::SmallVec;
use thin_vec::ThinVec;

use crate::id::Id;
use crate::krpc::{DhtAddr, NodeInfo};

use super::bep42::{self, Bep42Mode};
use super::time::Time;

/// A node counts as good if it answered us this recently (BEP 5: 15 minutes).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Consecutive failed queries after which a node is bad and may be replaced.
pub const BAD_AFTER_FAILS: u8 = 2;
/// Longest replacement cache kept per bucket.
const REPLACEMENTS: usize = 8;
/// Entries from one /24 allowed per bucket (public addresses only): a cheap Sybil brake.
pub const MAX_PER_SLASH24: usize = 2;
/// How much history a rebase keeps exact: times up to this long before the newest one
/// (2^29 ms, 6.2 days). Older ones become "as old as the epoch", far past every timeout.
const KEEP_EXACT_MS: u64 = 1 << 29;

/// One routing table entry, as the table hands it out (a copy: the table stores entries as
/// [`Slot`]s, with times relative to its epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<A = SocketAddrV4> {
    /// Who the node is.
    pub node: NodeInfo<A>,
    /// Last time it answered one of our queries.
    pub last_response: Time,
    /// Last time it sent us a query (counts toward "good" once it has answered before).
    pub last_query: Time,
    /// Consecutive queries it failed to answer, counted up to 3 (a node is bad from
    /// [`BAD_AFTER_FAILS`] on).
    pub fails: u8,
    /// A liveness ping is outstanding (so we do not ping it twice).
    pub pinging: bool,
    /// It has answered us at least once. A replacement promoted into a dead node's slot has
    /// not: its `last_response` means nothing until it does, so it is never good before.
    pub answered: bool,
}

/// The BEP 5 node states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Answered within 15 minutes (or answered once and queried us within 15 minutes).
    Good,
    /// Neither good nor bad: ping before relying on it.
    Questionable,
    /// Failed several queries in a row.
    Bad,
}

/// The state rule of BEP 5, shared by [`Entry`] and [`Slot`] so both classify alike.
fn classify(
    fails: u8,
    answered: bool,
    since_response: Duration,
    since_query: Duration,
) -> NodeState {
    if fails >= BAD_AFTER_FAILS {
        NodeState::Bad
    } else if answered && (since_response < GOOD_FOR || since_query < GOOD_FOR) {
        NodeState::Good
    } else {
        NodeState::Questionable
    }
}

impl<A: DhtAddr> Entry<A> {
    /// Classifies the entry at `now`.
    pub fn state(&self, now: Time) -> NodeState {
        classify(
            self.fails,
            self.answered,
            now.since(self.last_response),
            now.since(self.last_query),
        )
    }
}

/// Flag bit of a [`Slot`]'s flags: a liveness ping is outstanding.
const PINGING: u8 = 1;
/// Flag bit of a [`Slot`]'s flags: the node has answered us at least once.
const ANSWERED: u8 = 2;
/// Consecutive failures a [`Slot`] counts up to (two bits): every rule compares the count
/// with [`BAD_AFTER_FAILS`], which is below it.
const MAX_FAILS: u8 = 3;
const _: () = assert!(BAD_AFTER_FAILS < MAX_FAILS);
/// Largest epoch-relative time a [`Slot`] stores: 30 bits of milliseconds (12.4 days). The
/// two bits above each time hold the fail count and the flags.
const TIME_MAX: u32 = (1 << 30) - 1;

/// A `u32` kept as two `u16` halves, so that a [`Slot`] needs only its address's 2-byte
/// alignment: 34 bytes for IPv4, where `u32` fields padded it to 36 (a million simulated
/// tables of ~18 buckets of 8 paid ~290 bytes each for that padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word([u16; 2]);

impl Word {
    fn new(v: u32) -> Word {
        let [a, b, c, d] = v.to_le_bytes();
        Word([u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d])])
    }

    fn get(self) -> u32 {
        u32::from(self.0[0]) | (u32::from(self.0[1]) << 16)
    }

    /// The time in the low 30 bits.
    fn time(self) -> u32 {
        self.get() & TIME_MAX
    }

    /// The two bits above the time.
    fn high(self) -> u8 {
        u8::try_from(self.get() >> 30).unwrap_or(0)
    }

    /// `time` (clamped to [`TIME_MAX`]) below `high` (two bits).
    fn pack(time: u32, high: u8) -> Word {
        Word::new(time.min(TIME_MAX) | (u32::from(high & 3) << 30))
    }
}

/// A routing table entry as stored: 34 bytes for IPv4 (an [`Entry`] is 48), because a
/// simulator holds a million tables. Times are milliseconds after the table's epoch, 30 bits
/// each, with the fail count (up to 3) above the last answer's time and the flags above the
/// last query's; read it through [`RoutingTable::iter`] or [`RoutingTable::get`], which give
/// [`Entry`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot<A = SocketAddrV4> {
    node: NodeInfo<A>,
    /// Last answer (epoch-relative) and, above it, consecutive failures.
    resp: Word,
    /// Last query from the node (epoch-relative) and, above it, the flags.
    query: Word,
}

/// Milliseconds from `v` (epoch-relative) to `now_rel`, as `Time::since` counts them.
fn since(now_rel: u64, v: u32) -> Duration {
    Duration::from_millis(now_rel.saturating_sub(u64::from(v)))
}

impl<A: DhtAddr> Slot<A> {
    /// A node that just answered, at epoch-relative `now`.
    fn new(node: NodeInfo<A>, now: u32) -> Slot<A> {
        Slot {
            node,
            resp: Word::pack(now, 0),
            query: Word::pack(0, ANSWERED),
        }
    }

    /// A candidate that has not answered yet (a promoted replacement): questionable until it
    /// does, whatever the clock says (its times are the epoch, a real instant, not "never").
    fn unproven(node: NodeInfo<A>) -> Slot<A> {
        Slot {
            node,
            resp: Word::pack(0, 0),
            query: Word::pack(0, 0),
        }
    }

    /// Who the node is.
    pub fn node(&self) -> &NodeInfo<A> {
        &self.node
    }

    fn last_response(&self) -> u32 {
        self.resp.time()
    }

    fn last_query(&self) -> u32 {
        self.query.time()
    }

    fn fails(&self) -> u8 {
        self.resp.high()
    }

    fn flags(&self) -> u8 {
        self.query.high()
    }

    fn set_last_response(&mut self, t: u32) {
        self.resp = Word::pack(t, self.fails());
    }

    fn set_last_query(&mut self, t: u32) {
        self.query = Word::pack(t, self.flags());
    }

    /// Sets the fail count, kept up to [`MAX_FAILS`].
    fn set_fails(&mut self, n: u8) {
        self.resp = Word::pack(self.last_response(), n.min(MAX_FAILS));
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        let flags = if on {
            self.flags() | flag
        } else {
            self.flags() & !flag
        };
        self.query = Word::pack(self.last_query(), flags);
    }

    fn pinging(&self) -> bool {
        self.flags() & PINGING != 0
    }

    fn answered(&self) -> bool {
        self.flags() & ANSWERED != 0
    }

    fn set_pinging(&mut self, on: bool) {
        self.set_flag(PINGING, on);
    }

    fn set_answered(&mut self, on: bool) {
        self.set_flag(ANSWERED, on);
    }

    /// The node answered at epoch-relative `now`.
    fn answered_at(&mut self, now: u32) {
        self.resp = Word::pack(now, 0);
        self.set_pinging(false);
        self.set_answered(true);
    }

    /// Classifies the entry at epoch-relative `now_rel`.
    fn state(&self, now_rel: u64) -> NodeState {
        classify(
            self.fails(),
            self.answered(),
            since(now_rel, self.last_response()),
            since(now_rel, self.last_query()),
        )
    }

    /// The entry with absolute times, given the table's epoch.
    fn view(&self, epoch: Time) -> Entry<A> {
        Entry {
            node: self.node,
            last_response: at(epoch, self.last_response()),
            last_query: at(epoch, self.last_query()),
            fails: self.fails(),
            pinging: self.pinging(),
            answered: self.answered(),
        }
    }
}

/// The absolute time of epoch-relative `v`.
fn at(epoch: Time, v: u32) -> Time {
    Time(epoch.0.saturating_add(u64::from(v)))
}

/// Entries a bucket holds without an allocation of its own: BEP 5's k.
pub const INLINE_K: usize = 8;

/// A bucket's entries: inline up to [`INLINE_K`].
pub type Entries<A> = SmallVec<[Slot<A>; INLINE_K]>;

/// One k-bucket.
#[derive(Clone, Debug)]
pub struct Bucket<A = SocketAddrV4> {
    /// Live entries, at most `k`, inline for the default `k` of 8: a separate allocation
    /// per bucket cost its 24-byte header and ~16 bytes of malloc overhead, ~720 bytes in
    /// each of a million simulated tables of ~18 buckets.
    pub entries: Entries<A>,
    // The bucket's candidates waiting for a slot live in the table's `Replacements`: a
    // pointer here padded every bucket to 296 bytes, 8 more than its entries and time need.
    /// Last time (epoch-relative) a node in this bucket answered or was added, or a lookup
    /// went through it.
    changed: u32,
}

impl<A> Bucket<A> {
    /// An empty bucket last changed at epoch-relative `changed`.
    fn empty(changed: u32) -> Bucket<A> {
        Bucket {
            entries: SmallVec::new(),
            changed,
        }
    }
}

/// What happened to a node offered to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insert<A = SocketAddrV4> {
    /// It is in the table (new or refreshed).
    Added,
    /// Refused: our own id, a read-only node, or its IP already has another entry.
    Refused,
    /// Bucket full of good nodes; kept as a replacement.
    Replacement,
    /// Bucket full; kept as a replacement, and this questionable node should be pinged first.
    PingFirst(NodeInfo<A>),
}

/// The routing table centred on our id.
#[derive(Clone, Debug)]
pub struct RoutingTable<A: DhtAddr = SocketAddrV4> {
    own: Id,
    /// Bucket size (a `u16`: with the flags below it packs the table into 80 bytes).
    k: u16,
    /// What the entries' and buckets' `u32` times count from (see the module doc).
    epoch: Time,
    /// Bucket `i < len-1` holds nodes sharing exactly `i` leading bits with us; the last bucket
    /// holds every node sharing at least `len-1` bits (it is the one that splits).
    buckets: Vec<Bucket<A>>,
    one_per_ip: bool,
    bep42: Bep42Mode,
    /// Fingerprints of the entries' IP addresses, kept in step with `buckets` so the
    /// one-per-IP check scans the table only when a fingerprint matches. Bounded by the
    /// table itself.
    ips: IpIndex,
    /// Every bucket's replacement cache, in one list.
    replacements: Replacements<A>,
}

impl<A: DhtAddr> RoutingTable<A> {
    /// An empty table for `own` id with `k` entries per bucket.
    pub fn new(own: Id, k: usize, one_per_ip: bool, now: Time) -> RoutingTable<A> {
        RoutingTable::with_epoch(own, k, one_per_ip, now, Time(0))
    }

    fn with_epoch(own: Id, k: usize, one_per_ip: bool, now: Time, epoch: Time) -> RoutingTable<A> {
        let mut t = RoutingTable {
            own,
            k: u16::try_from(k).unwrap_or(u16::MAX),
            epoch,
            buckets: Vec::with_capacity(1),
            one_per_ip,
            bep42: Bep42Mode::Prefer,
            ips: IpIndex::new(),
            replacements: Replacements::new(),
        };
        let changed = t.rel(now);
        t.buckets.push(Bucket::empty(changed));
        t
    }

    /// `t` as milliseconds after the epoch, moving the epoch forward first if `t` would not
    /// fit in a slot's 30 bits (about every 6 days of a long run). Times before the epoch
    /// read as the epoch.
    fn rel(&mut self, t: Time) -> u32 {
        if t.0.saturating_sub(self.epoch.0) > u64::from(TIME_MAX) {
            self.rebase(Time(t.0 - KEEP_EXACT_MS));
        }
        u32::try_from(t.0.saturating_sub(self.epoch.0)).map_or(TIME_MAX, |v| v.min(TIME_MAX))
    }

    /// `now` as milliseconds after the epoch, for comparisons (never moves the epoch).
    fn now_rel(&self, now: Time) -> u64 {
        now.0.saturating_sub(self.epoch.0)
    }

    /// Moves the epoch to `epoch` (later than the current one), shifting every stored time;
    /// times before the new epoch become the epoch.
    fn rebase(&mut self, epoch: Time) {
        let shift = epoch.0.saturating_sub(self.epoch.0);
        let back = |v: u32| u32::try_from(u64::from(v).saturating_sub(shift)).unwrap_or(0);
        for b in &mut self.buckets {
            b.changed = back(b.changed);
            for s in &mut b.entries {
                s.set_last_response(back(s.last_response()));
                s.set_last_query(back(s.last_query()));
            }
        }
        self.epoch = Time(self.epoch.0 + shift);
    }

    /// Sets how BEP 42 verification is used.
    pub fn set_bep42(&mut self, mode: Bep42Mode) {
        self.bep42 = mode;
    }

    /// Whether BEP 42 vouches for a node: a public address with a matching id. Local
    /// addresses are exempt (any id is valid there), so they are never *verified*.
    pub fn verified(node: &NodeInfo<A>) -> bool {
        bep42::is_verified_for(&node.id, &node.addr)
    }

    /// Moves the table to a new own id (after BEP 42 re-derivation): same contacts,
    /// re-bucketed around the new id.
    pub fn recentre(&mut self, own: Id, now: Time) {
        let old: Vec<Entry<A>> = self.iter().collect();
        let mut fresh = RoutingTable::with_epoch(own, self.k(), self.one_per_ip, now, self.epoch);
        fresh.bep42 = self.bep42;
        *self = fresh;
        for e in old {
            if self.on_response(e.node, e.last_response) == Insert::Added {
                let last_query = self.rel(e.last_query);
                if let Some(n) = self.find_mut(&e.node.id) {
                    n.set_last_query(last_query);
                    n.set_fails(e.fails);
                    n.set_answered(e.answered);
                }
            }
        }
    }

    /// Our id.
    pub fn own_id(&self) -> Id {
        self.own
    }

    /// Bucket size.
    pub fn k(&self) -> usize {
        usize::from(self.k)
    }

    /// The buckets, for status output and refresh.
    pub fn buckets(&self) -> &[Bucket<A>] {
        &self.buckets
    }

    /// Index of the bucket an id falls into.
    pub fn bucket_index(&self, id: &Id) -> usize {
        self.own
            .common_prefix_len(id)
            .min(self.buckets.len().saturating_sub(1))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Gives back what growth left unused (the IP index's slack, the replacement list's),
    /// for a node at rest: a million simulated tables keep only what they hold.
    pub fn shrink_to_fit(&mut self) {
        self.ips.shrink();
        if self.replacements.list.capacity() > self.replacements.list.len() {
            self.replacements.list.shrink_to_fit();
        }
    }

    /// Bucket `bi`'s replacement cache, oldest first: who takes the place of a node that dies.
    pub fn replacements(&self, bi: usize) -> impl Iterator<Item = &NodeInfo<A>> {
        self.replacements.of(bi)
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.entries.is_empty())
    }

    /// Number of good entries at `now`.
    pub fn good_count(&self, now: Time) -> usize {
        let now = self.now_rel(now);
        self.slots()
            .filter(|e| e.state(now) == NodeState::Good)
            .count()
    }

    /// All entries (copies with absolute times).
    pub fn iter(&self) -> impl Iterator<Item = Entry<A>> + '_ {
        let epoch = self.epoch;
        self.slots().map(move |s| s.view(epoch))
    }

    fn slots(&self) -> impl Iterator<Item = &Slot<A>> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    fn find_mut(&mut self, id: &Id) -> Option<&mut Slot<A>> {
        let b = self.bucket_index(id);
        self.buckets
            .get_mut(b)?
            .entries
            .iter_mut()
            .find(|e| e.node.id == *id)
    }

    /// The entry for `id`, if present (a copy with absolute times).
    pub fn get(&self, id: &Id) -> Option<Entry<A>> {
        let b = self.bucket_index(id);
        self.buckets
            .get(b)?
            .entries
            .iter()
            .find(|e| e.node.id == *id)
            .map(|s| s.view(self.epoch))
    }

    /// Whether another entry already uses `ip` (`on_response` has already handled the case
    /// of the node itself being in the table).
    fn ip_taken(&self, ip: &A::Ip) -> bool {
        self.entries_at_ip(ip) > 0
    }

    /// Entries currently using `ip` (tracked only with one entry per IP; 0 otherwise).
    pub fn entries_at_ip(&self, ip: &A::Ip) -> usize {
        if !self.ips.may_hold(self.one_per_ip, A::ip_addr(ip)) {
            return 0;
        }
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .filter(|e| e.node.addr.ip_of() == *ip)
            .count()
    }

    /// Records that `node` answered a query of ours at `now`, inserting it if there is room.
    pub fn on_response(&mut self, node: NodeInfo<A>, now: Time) -> Insert<A> {
        if node.id == self.own {
            return Insert::Refused;
        }
        let rel = self.rel(now);
        if let Some(e) = self.find_mut(&node.id) {
            if e.node.addr != node.addr {
                // Same id from another address: keep the one we know (anti-spoofing).
                return Insert::Refused;
            }
            e.answered_at(rel);
            let b = self.bucket_index(&node.id);
            if let Some(bucket) = self.buckets.get_mut(b) {
                bucket.changed = rel;
            }
            return Insert::Added;
        }
        if self.one_per_ip && self.ip_taken(&node.addr.ip_of()) {
            return Insert::Refused;
        }
        if self.bep42 == Bep42Mode::Enforce && !bep42::is_valid_for(&node.id, &node.addr) {
            return Insert::Refused;
        }
        if self.one_per_ip && !bep42::is_exempt_ip(&A::ip_addr(&node.addr.ip_of())) {
            let net = A::subnet(&node.addr.ip_of());
            let b = self.bucket_index(&node.id);
            let same_net = self.buckets.get(b).map_or(0, |b| {
                b.entries
                    .iter()
                    .filter(|e| A::subnet(&e.node.addr.ip_of()) == net)
                    .count()
            });
            if same_net >= MAX_PER_SLASH24 {
                return Insert::Refused;
            }
        }
        self.insert_new(node, rel)
    }

    fn insert_new(&mut self, node: NodeInfo<A>, now: u32) -> Insert<A> {
        let now_rel = u64::from(now);
        loop {
            let bi = self.bucket_index(&node.id);
            let n_buckets = self.buckets.len();
            let k = usize::from(self.k);
            let Some(bucket) = self.buckets.get_mut(bi) else {
                return Insert::Refused;
            };
            self.replacements.forget(bi, &node.id);
            if bucket.entries.len() < k {
                bucket.entries.push(Slot::new(node, now));
                bucket.changed = now;
                self.ips.add(self.one_per_ip, &node);
                return Insert::Added;
            }
            if let Some(bad) = bucket
                .entries
                .iter()
                .position(|e| e.state(now_rel) == NodeState::Bad)
            {
                let old = std::mem::replace(&mut bucket.entries[bad], Slot::new(node, now));
                bucket.changed = now;
                self.ips.remove(self.one_per_ip, &old.node);
                self.ips.add(self.one_per_ip, &node);
                return Insert::Added;
            }
            if bi == n_buckets - 1 && n_buckets < 160 {
                self.split_last();
                continue;
            }
            // A verified newcomer displaces the stalest unverified entry.
            if self.bep42 == Bep42Mode::Prefer && RoutingTable::verified(&node) {
                let victim = bucket
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !RoutingTable::verified(&e.node))
                    .min_by_key(|(_, e)| e.last_response())
                    .map(|(i, _)| i);
                if let Some(i) = victim {
                    let old = std::mem::replace(&mut bucket.entries[i], Slot::new(node, now));
                    bucket.changed = now;
                    self.replacements.push(bi, old.node);
                    self.ips.remove(self.one_per_ip, &old.node);
                    self.ips.add(self.one_per_ip, &node);
                    return Insert::Added;
                }
            }
            self.replacements.push(bi, node);
            // Ping the least recently seen questionable node that is not already being pinged.
            let stale = bucket
                .entries
                .iter_mut()
                .filter(|e| e.state(now_rel) == NodeState::Questionable && !e.pinging())
                .min_by_key(|e| e.last_response());
            return match stale {
                Some(e) => {
                    e.set_pinging(true);
                    Insert::PingFirst(e.node)
                }
                None => Insert::Replacement,
            };
        }
    }

    fn split_last(&mut self) {
        let depth = self.buckets.len() - 1;
        let own = self.own;
        let changed = self.buckets.last().map_or(0, |b| b.changed);
        let mut deeper = Bucket::empty(changed);
        if let Some(last) = self.buckets.last_mut() {
            let (stay, go): (Entries<A>, Entries<A>) = last
                .entries
                .drain(..)
                .partition(|e| own.common_prefix_len(&e.node.id) == depth);
            last.entries = stay;
            deeper.entries = go;
        }
        self.replacements
            .split(depth, |n| own.common_prefix_len(&n.id) == depth);
        // One bucket at a time (at most 160): no doubling slack in a million tables.
        self.buckets.reserve_exact(1);
        self.buckets.push(deeper);
    }

    /// Records that `id` sent us a query at `now` (keeps a known node good, and its bucket
    /// fresh: a bucket whose nodes talk to us needs no refresh lookup). Returns whether the
    /// node is already in the table.
    pub fn on_query(&mut self, id: &Id, addr: A, now: Time) -> bool {
        let now = self.rel(now);
        let b = self.bucket_index(id);
        let Some(bucket) = self.buckets.get_mut(b) else {
            return false;
        };
        match bucket.entries.iter_mut().find(|e| e.node.id == *id) {
            Some(e) if e.node.addr == addr => {
                e.set_last_query(now);
                if e.answered() {
                    bucket.changed = bucket.changed.max(now);
                }
                true
            }
            _ => false,
        }
    }

    /// A KRPC error came back from `node` for one of our queries: it is alive at that address
    /// (BEP 5 errors are answers too), so it counts as having answered, and an outstanding
    /// liveness ping is settled. Unknown nodes are not inserted: an error carries no id.
    pub fn on_error_reply(&mut self, id: &Id, addr: A, now: Time) {
        let now = self.rel(now);
        let b = self.bucket_index(id);
        let Some(bucket) = self.buckets.get_mut(b) else {
            return;
        };
        if let Some(e) = bucket
            .entries
            .iter_mut()
            .find(|e| e.node.id == *id && e.node.addr == addr)
        {
            e.answered_at(now);
            bucket.changed = bucket.changed.max(now);
        }
    }

    /// Our own send to `node` failed (no route, no buffer space): nothing is learnt about the
    /// node, but a liveness ping that never left must not block the next one.
    pub fn on_send_failed(&mut self, id: &Id, addr: A) {
        if let Some(e) = self.find_mut(id) {
            if e.node.addr == addr {
                e.set_pinging(false);
            }
        }
    }

    /// Whether a node with this id would currently find room (free slot, a bad node to
    /// replace, or a split) — used to decide whether an unknown querier is worth a ping.
    pub fn has_room_for(&self, id: &Id, now: Time) -> bool {
        if *id == self.own {
            return false;
        }
        let now = self.now_rel(now);
        let bi = self.bucket_index(id);
        let Some(b) = self.buckets.get(bi) else {
            return false;
        };
        b.entries.len() < usize::from(self.k)
            || (bi == self.buckets.len() - 1 && self.buckets.len() < 160)
            || b.entries.iter().any(|e| e.state(now) == NodeState::Bad)
    }

    /// Records that a query to `id` at `addr` timed out. Only the entry with that id *and*
    /// that address is charged: anyone can list a known node's id next to a dead address, and
    /// that must not cost the real node its slot. When the node turns bad and a replacement
    /// is waiting, the replacement takes its place and is returned so the caller can ping it.
    /// Also returns the node again if it is questionable and deserves a second ping.
    pub fn on_timeout(&mut self, id: &Id, addr: A, now: Time) -> TimeoutOutcome<A> {
        let bi = self.bucket_index(id);
        let one_per_ip = self.one_per_ip;
        let now = self.now_rel(now);
        let Some(bucket) = self.buckets.get_mut(bi) else {
            return TimeoutOutcome::Unknown;
        };
        let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.node.id == *id && e.node.addr == addr)
        else {
            return TimeoutOutcome::Unknown;
        };
        let e = &mut bucket.entries[pos];
        e.set_fails(e.fails().saturating_add(1));
        let was_pinging = e.pinging();
        e.set_pinging(false);
        if e.state(now) == NodeState::Bad {
            // The newest replacement whose IP has not entered the table meanwhile (the dying
            // entry's own IP does not count: the replacement takes its slot).
            loop {
                let Some(rep) = self.replacements.pop(bi) else {
                    return TimeoutOutcome::Bad;
                };
                let rep_ip = rep.addr.ip_of();
                if one_per_ip && rep_ip != addr.ip_of() && self.entries_at_ip(&rep_ip) > 0 {
                    continue;
                }
                let Some(slot) = self
                    .buckets
                    .get_mut(bi)
                    .and_then(|b| b.entries.get_mut(pos))
                else {
                    return TimeoutOutcome::Bad;
                };
                // The replacement has not answered us yet: it enters unproven (questionable,
                // never handed out) and the caller pings it so it proves itself or fails out.
                let mut fresh = Slot::unproven(rep);
                fresh.set_pinging(true);
                let old = std::mem::replace(slot, fresh);
                self.ips.remove(self.one_per_ip, &old.node);
                self.ips.add(self.one_per_ip, &rep);
                return TimeoutOutcome::Replaced(rep);
            }
        }
        if was_pinging {
            e.set_pinging(true);
            return TimeoutOutcome::PingAgain(e.node);
        }
        TimeoutOutcome::Counted
    }

    /// The `count` known nodes closest to `target`, closest first; bad nodes and nodes that
    /// never answered us (promoted replacements still being pinged) are skipped.
    ///
    /// Uses the bucket structure instead of scanning everything: nodes in the target's own
    /// bucket are closer than nodes in deeper buckets, which are closer than shallower ones.
    pub fn closest(&self, target: &Id, count: usize, now: Time) -> Vec<NodeInfo<A>> {
        let now = self.now_rel(now);
        let mut out: Vec<NodeInfo<A>> = Vec::with_capacity(count);
        let usable = |e: &&Slot<A>| e.answered() && e.state(now) != NodeState::Bad;
        let b = self.bucket_index(target);
        let take_sorted = |entries: &mut dyn Iterator<Item = &Slot<A>>,
                           out: &mut Vec<NodeInfo<A>>| {
            // Distances computed once per entry, not per comparison; only the `need`
            // closest are sorted. Ids in a table are distinct, so the order is total and the
            // result does not depend on the sort's algorithm.
            let mut v: Vec<(Id, NodeInfo<A>)> = entries
                .filter(usable)
                .map(|e| (e.node.id.distance(target), e.node))
                .collect();
            let need = count.saturating_sub(out.len());
            if need == 0 {
                return;
            }
            if v.len() > need {
                v.select_nth_unstable_by_key(need - 1, |(d, _)| *d);
                v.truncate(need);
            }
            v.sort_unstable_by_key(|(d, _)| *d);
            out.extend(v.into_iter().map(|(_, n)| n));
        };
        if let Some(bucket) = self.buckets.get(b) {
            take_sorted(&mut bucket.entries.iter(), &mut out);
        }
        if out.len() < count {
            let deeper = self
                .buckets
                .iter()
                .skip(b + 1)
                .flat_map(|x| x.entries.iter());
            take_sorted(&mut { deeper }, &mut out);
        }
        let mut i = b;
        while out.len() < count && i > 0 {
            i -= 1;
            if let Some(bucket) = self.buckets.get(i) {
                take_sorted(&mut bucket.entries.iter(), &mut out);
            }
        }
        out
    }

    /// Marks the bucket holding `target` as recently used (a lookup went through it).
    pub fn touch(&mut self, target: &Id, now: Time) {
        let now = self.rel(now);
        let b = self.bucket_index(target);
        if let Some(bucket) = self.buckets.get_mut(b) {
            bucket.changed = now;
        }
    }

    /// Indices of buckets not changed for `age` at `now`.
    pub fn stale_buckets(&self, now: Time, age: Duration) -> Vec<usize> {
        let now = self.now_rel(now);
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| since(now, b.changed) >= age)
            .map(|(i, _)| i)
            .collect()
    }

    /// The bucket that has gone longest without change, if it is older than `age`: the one
    /// to refresh next.
    pub fn stalest_bucket(&self, now: Time, age: Duration) -> Option<usize> {
        let now = self.now_rel(now);
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| since(now, b.changed) >= age)
            .min_by_key(|(_, b)| b.changed)
            .map(|(i, _)| i)
    }

    /// The entry of bucket `b` that answered longest ago (not already being pinged): the one a
    /// refresh asks, so a refresh doubles as the liveness check of the bucket's most doubtful
    /// entry (an unproven replacement first). `None` when the bucket has no such entry.
    pub fn refresh_candidate(&self, b: usize) -> Option<NodeInfo<A>> {
        self.buckets
            .get(b)?
            .entries
            .iter()
            .filter(|e| !e.pinging() && e.fails() < BAD_AFTER_FAILS)
            // Not `last_query`: a spoofed query under an entry's id must not keep a dead
            // entry from ever being asked.
            .min_by_key(|e| (e.answered(), e.last_response()))
            .map(|e| e.node)
    }

    /// A refresh of bucket `b` went unanswered: the bucket is due again at once
    /// (the next maintenance tick asks again, the same entry until it turns bad, then the
    /// next), so a bucket with dead entries is probed until one answers. The cost follows
    /// churn: a bucket whose entries answer is asked once per refresh interval.
    pub fn refresh_failed(&mut self, b: usize, now: Time, age: Duration) {
        let due = self.rel(now - age);
        if let Some(bucket) = self.buckets.get_mut(b) {
            bucket.changed = bucket.changed.min(due);
        }
    }

    /// Earliest time a bucket becomes due for refresh.
    pub fn next_refresh_due(&self, age: Duration) -> Option<Time> {
        self.buckets
            .iter()
            .map(|b| at(self.epoch, b.changed) + age)
            .min()
    }

    /// Questionable entries (not already being pinged), for liveness checks.
    pub fn questionable(&self, now: Time) -> Vec<NodeInfo<A>> {
        let now = self.now_rel(now);
        self.slots()
            .filter(|e| e.state(now) == NodeState::Questionable && !e.pinging())
            .map(|e| e.node)
            .collect()
    }

    /// Marks an entry as having a ping outstanding.
    pub fn set_pinging(&mut self, id: &Id) {
        if let Some(e) = self.find_mut(id) {
            e.set_pinging(true);
        }
    }
}

/// What a timeout did to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeoutOutcome<A = SocketAddrV4> {
    /// The node is not in the table.
    Unknown,
    /// Failure counted; nothing else to do.
    Counted,
    /// A questionable node missed a liveness ping: ping it once more before giving up.
    PingAgain(NodeInfo<A>),
    /// The node is bad and no replacement is waiting.
    Bad,
    /// The node was bad and this replacement took its slot; ping it.
    Replaced(NodeInfo<A>),
}

/// A 16-bit fingerprint of every entry's IP as a sorted multiset: "is this IP in the table?"
/// is a binary search, and only when the fingerprint is present (the IP is there, or one of
/// ~k x 20 / 65,536 false matches) does the table confirm it by a scan of its entries. Two
/// bytes per entry whatever the family (the addresses themselves were four for IPv4 and
/// sixteen for IPv6): a simulator holds a million tables. Kept only when the table allows
/// one entry per IP. The fingerprint is not keyed: a remote that picks colliding addresses
/// only makes us pay that bounded scan per insert attempt.
#[derive(Clone, Debug)]
struct IpIndex {
    /// Kept only while the table's `one_per_ip` is on (every method is told whether it is:
    /// a flag of its own here padded the table by eight bytes).
    sorted: Vec<u16>,
}

/// The fingerprint of an address (a multiplicative hash's high bits).
fn ip_fingerprint(ip: IpAddr) -> u16 {
    let folded: u64 = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
        }
    };
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u16
}

impl IpIndex {
    fn new() -> IpIndex {
        IpIndex { sorted: Vec::new() }
    }

    /// Whether some entry's IP may be `ip` (no false negatives while `on`).
    fn may_hold(&self, on: bool, ip: IpAddr) -> bool {
        on && self.sorted.binary_search(&ip_fingerprint(ip)).is_ok()
    }

    fn add<A: DhtAddr>(&mut self, on: bool, node: &NodeInfo<A>) {
        if !on {
            return;
        }
        let f = ip_fingerprint(A::ip_addr(&node.addr.ip_of()));
        if self.sorted.len() == self.sorted.capacity() {
            // Grow by an eighth, not double: the table itself bounds the length.
            self.sorted.reserve_exact(self.sorted.len() / 8 + 4);
        }
        let at = self.sorted.partition_point(|&x| x < f);
        self.sorted.insert(at, f);
    }

    /// Gives back the growth slack (the table is settled: the node is idle).
    fn shrink(&mut self) {
        if self.sorted.capacity() > self.sorted.len() {
            self.sorted.shrink_to_fit();
        }
    }

    fn remove<A: DhtAddr>(&mut self, on: bool, node: &NodeInfo<A>) {
        if !on {
            return;
        }
        let f = ip_fingerprint(A::ip_addr(&node.addr.ip_of()));
        let at = self.sorted.partition_point(|&x| x < f);
        if self.sorted.get(at) == Some(&f) {
            self.sorted.remove(at);
        }
    }
}

/// A replacement candidate and the bucket it waits for (at most 160 buckets: a `u8`).
#[derive(Clone, Copy, Debug)]
struct Candidate<A> {
    bucket: u8,
    node: NodeInfo<A>,
}

/// The replacement caches of all buckets in one list, sorted by bucket and, within a
/// bucket, oldest first. One `ThinVec` per table (one pointer while empty) where a cache per
/// bucket cost every bucket a pointer and padding, ~150 bytes per simulated table. Bounded by
/// [`REPLACEMENTS`] per bucket.
#[derive(Clone, Debug)]
struct Replacements<A> {
    list: ThinVec<Candidate<A>>,
}

/// A bucket index as [`Candidate`] stores it (the table has at most 160 buckets).
fn bucket_tag(bi: usize) -> u8 {
    u8::try_from(bi).unwrap_or(u8::MAX)
}

impl<A: DhtAddr> Replacements<A> {
    fn new() -> Replacements<A> {
        Replacements {
            list: ThinVec::new(),
        }
    }

    /// Where bucket `bi`'s candidates are in the list.
    fn range(&self, bi: usize) -> std::ops::Range<usize> {
        let tag = bucket_tag(bi);
        let lo = self.list.partition_point(|c| c.bucket < tag);
        let hi = lo + self.list[lo..].partition_point(|c| c.bucket == tag);
        lo..hi
    }

    /// Bucket `bi`'s candidates, oldest first.
    fn of(&self, bi: usize) -> impl Iterator<Item = &NodeInfo<A>> {
        let r = self.range(bi);
        self.list[r].iter().map(|c| &c.node)
    }

    /// Drops `id` from bucket `bi`'s candidates (it entered the table, or comes again).
    fn forget(&mut self, bi: usize, id: &Id) {
        let r = self.range(bi);
        if let Some(at) = self.list[r.clone()].iter().position(|c| c.node.id == *id) {
            self.list.remove(r.start + at);
        }
    }

    /// Makes `node` bucket `bi`'s newest candidate, dropping its oldest past the limit.
    fn push(&mut self, bi: usize, node: NodeInfo<A>) {
        self.forget(bi, &node.id);
        let r = self.range(bi);
        let mut end = r.end;
        if r.len() >= REPLACEMENTS {
            self.list.remove(r.start);
            end -= 1;
        }
        self.list.insert(
            end,
            Candidate {
                bucket: bucket_tag(bi),
                node,
            },
        );
    }

    /// Takes bucket `bi`'s newest candidate.
    fn pop(&mut self, bi: usize) -> Option<NodeInfo<A>> {
        let r = self.range(bi);
        if r.is_empty() {
            return None;
        }
        Some(self.list.remove(r.end - 1).node)
    }

    /// The last bucket, `depth`, split: its candidates that do not `stay` now wait for bucket
    /// `depth + 1`, after the ones that stay, each group in its old order.
    fn split(&mut self, depth: usize, stay: impl Fn(&NodeInfo<A>) -> bool) {
        let r = self.range(depth);
        if r.is_empty() {
            return;
        }
        let moved: Vec<Candidate<A>> = self.list.drain(r.start..).collect();
        let (kept, gone): (Vec<_>, Vec<_>) = moved.into_iter().partition(|c| stay(&c.node));
        let deeper = bucket_tag(depth + 1);
        self.list.extend(kept);
        self.list.extend(gone.into_iter().map(|c| Candidate {
            bucket: deeper,
            ..c
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A node with id `[first, 0, …, ip_last]` at `10.0.first.ip_last:6881`.
    pub(super) fn node(first: u8, ip_last: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = ip_last;
        NodeInfo {
            id: Id(id),
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, first, ip_last), 6881),
        }
    }

    #[test]
    fn only_own_bucket_splits() {
        let own = Id::ZERO;
        let mut t = RoutingTable::new(own, 8, true, Time(0));
        // 8 nodes far away (first bit set): fill bucket 0 area while it is the only bucket.
        for i in 0..8 {
            assert_eq!(t.on_response(node(0x80, i), Time(1)), Insert::Added);
        }
        // A 9th far node forces a split: bucket 0 (far half) keeps 8, the near half is empty.
        assert_eq!(t.on_response(node(0x80, 100), Time(1)), Insert::Replacement);
        assert_eq!(t.buckets().len(), 2);
        assert_eq!(t.buckets()[0].entries.len(), 8);
        // Near nodes go to the splittable last bucket.
        for i in 0..8 {
            assert_eq!(t.on_response(node(0x40, i), Time(1)), Insert::Added);
        }
        assert_eq!(t.buckets()[1].entries.len(), 8);
        // Far bucket full of good nodes never splits again.
        assert_eq!(t.on_response(node(0xc0, 1), Time(1)), Insert::Replacement);
        assert_eq!(t.buckets()[0].entries.len(), 8);
        assert_eq!(t.len(), 16);
    }

    #[test]
    fn one_entry_per_ip() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        let a = node(0x80, 1);
        let mut b = node(0x81, 1);
        b.addr = a.addr;
        assert_eq!(t.on_response(a, Time(1)), Insert::Added);
        assert_eq!(t.on_response(b, Time(1)), Insert::Refused);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn questionable_node_is_pinged_then_replaced_after_two_failures() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        for i in 0..8 {
            t.on_response(node(0x80, i), Time(0));
        }
        t.on_response(node(0x40, 1), Time(0)); // split so bucket 0 no longer splits
        let later = Time(0) + GOOD_FOR + Duration::from_secs(1);
        let newcomer = node(0x90, 50);
        // All 8 are questionable now: the newcomer waits and the stalest is pinged.
        let ping = match t.on_response(newcomer, later) {
            Insert::PingFirst(n) => n,
            other => panic!("expected ping, got {other:?}"),
        };
        assert_eq!(t.replacements(0).collect::<Vec<_>>(), vec![&newcomer]);
        // First timeout: ping again; second: replaced by the newcomer.
        assert_eq!(
            t.on_timeout(&ping.id, ping.addr, later),
            TimeoutOutcome::PingAgain(ping)
        );
        assert_eq!(
            t.on_timeout(&ping.id, ping.addr, later),
            TimeoutOutcome::Replaced(newcomer)
        );
        assert!(t.get(&ping.id).is_none());
        assert!(t.get(&newcomer.id).is_some());
    }

    #[test]
    fn answering_node_is_not_replaced() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        for i in 0..8 {
            t.on_response(node(0x80, i), Time(0));
        }
        t.on_response(node(0x40, 1), Time(0));
        let later = Time(0) + GOOD_FOR + Duration::from_secs(1);
        let Insert::PingFirst(p) = t.on_response(node(0x90, 50), later) else {
            panic!("expected ping");
        };
        // It answers: it stays, good again, and the newcomer stays a replacement.
        assert_eq!(t.on_response(p, later), Insert::Added);
        assert_eq!(t.get(&p.id).map(|e| e.state(later)), Some(NodeState::Good));
        assert!(t.get(&node(0x90, 50).id).is_none());
    }

    #[test]
    fn closest_matches_brute_force() {
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        let mut rng = StdRng::seed_from_u64(1);
        let own = Id::random(&mut rng);
        let mut t = RoutingTable::new(own, 8, false, Time(0));
        for i in 0..2000u32 {
            let id = Id::random(&mut rng);
            let b = i.to_be_bytes();
            let addr = SocketAddrV4::new(Ipv4Addr::new(10, b[1], b[2], b[3]), 1);
            t.on_response(NodeInfo { id, addr }, Time(0));
        }
        for _ in 0..50 {
            let target = Id::random(&mut rng);
            let got = t.closest(&target, 8, Time(1));
            let mut all: Vec<NodeInfo> = t.iter().map(|e| e.node).collect();
            all.sort_by_key(|n| n.id.distance(&target));
            all.truncate(8);
            assert_eq!(got, all);
        }
    }

    #[test]
    fn stale_buckets_are_reported() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        t.on_response(node(0x80, 1), Time(0));
        let age = Duration::from_secs(900);
        assert!(t.stale_buckets(Time(1000), age).is_empty());
        assert_eq!(t.stale_buckets(Time(0) + age, age), vec![0]);
        t.touch(&node(0x80, 2).id, Time(0) + age);
        assert!(t.stale_buckets(Time(0) + age, age).is_empty());
    }

    #[test]
    fn at_most_two_per_slash24_per_bucket_on_public_addresses() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        for i in 0..5u8 {
            let mut id = [0x80u8; 20];
            id[19] = i;
            let n = NodeInfo {
                id: Id(id),
                addr: SocketAddrV4::new(Ipv4Addr::new(80, 1, 2, i + 1), 6881),
            };
            let r = t.on_response(n, Time(0));
            assert_eq!(r == Insert::Added, i < 2, "node {i}: {r:?}");
        }
    }

    #[test]
    fn enforce_refuses_unverified_and_prefer_displaces_them() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let ip = Ipv4Addr::new(84, 124, 73, 14);
        let good = NodeInfo {
            id: bep42::id_for_ip(&ip, &mut rng),
            addr: SocketAddrV4::new(ip, 1),
        };
        let bad = NodeInfo {
            id: Id([0x77; 20]),
            addr: SocketAddrV4::new(Ipv4Addr::new(85, 1, 1, 1), 1),
        };
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        t.set_bep42(Bep42Mode::Enforce);
        assert_eq!(t.on_response(bad, Time(0)), Insert::Refused);
        assert_eq!(t.on_response(good, Time(0)), Insert::Added);

        // Prefer: with our id at 0xff.., ids starting with a 0 bit share the far bucket.
        // Fill it with two unverified public nodes, split it off, then offer a verified one
        // (84.124.73.14's ids start with 0x1b, a 0 bit).
        let mut t = RoutingTable::new(Id([0xff; 20]), 2, true, Time(0));
        for i in 0..2u8 {
            let n = NodeInfo {
                id: Id([0x10 + i * 0x10; 20]),
                addr: SocketAddrV4::new(Ipv4Addr::new(91, i, 0, 1), 1),
            };
            assert_eq!(t.on_response(n, Time(0)), Insert::Added);
        }
        let near = NodeInfo {
            id: Id([0xc0; 20]),
            addr: SocketAddrV4::new(Ipv4Addr::new(92, 0, 0, 1), 1),
        };
        assert_eq!(t.on_response(near, Time(0)), Insert::Added);
        assert_eq!(t.buckets().len(), 2);
        let v = NodeInfo {
            id: bep42::id_for_ip(&ip, &mut rng),
            addr: SocketAddrV4::new(ip, 1),
        };
        assert_eq!(t.bucket_index(&v.id), 0);
        assert_eq!(t.on_response(v, Time(1)), Insert::Added);
        assert!(t.get(&v.id).is_some());
    }
}

#[cfg(test)]
mod table_round2_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(first: u8, ip_last: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = ip_last;
        NodeInfo {
            id: Id(id),
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, first, ip_last), 6881),
        }
    }

    /// Eight far nodes (bucket 0, no longer splittable) answered at `at`.
    fn full_far_bucket(at: Time) -> RoutingTable {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        for i in 0..8 {
            assert_eq!(t.on_response(node(0x80, i), at), Insert::Added);
        }
        assert_eq!(t.on_response(node(0x40, 1), at), Insert::Added);
        assert_eq!(t.buckets().len(), 2);
        t
    }

    #[test]
    fn a_timeout_at_another_address_does_not_charge_the_entry() {
        let mut t = full_far_bucket(Time(0));
        let real = node(0x80, 3);
        let dead = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 6881);
        for _ in 0..3 {
            assert_eq!(
                t.on_timeout(&real.id, dead, Time(10)),
                TimeoutOutcome::Unknown
            );
        }
        let e = t.get(&real.id).expect("still listed");
        assert_eq!(e.fails, 0);
        assert_eq!(e.state(Time(10)), NodeState::Good);
        // The same id at its own address is charged as before.
        assert_eq!(
            t.on_timeout(&real.id, real.addr, Time(10)),
            TimeoutOutcome::Counted
        );
        assert_eq!(t.get(&real.id).map(|e| e.fails), Some(1));
    }

    #[test]
    fn a_promoted_replacement_is_not_good_before_it_answers() {
        // Early in the process clock (well within 15 minutes of Time(0)).
        let mut t = full_far_bucket(Time(0));
        let rep = node(0x90, 77);
        assert_eq!(t.on_response(rep, Time(1_000)), Insert::Replacement);
        let dying = node(0x80, 0);
        assert_eq!(
            t.on_timeout(&dying.id, dying.addr, Time(2_000)),
            TimeoutOutcome::Counted
        );
        assert_eq!(
            t.on_timeout(&dying.id, dying.addr, Time(3_000)),
            TimeoutOutcome::Replaced(rep)
        );
        let now = Time(4_000);
        let e = t.get(&rep.id).expect("promoted");
        assert_eq!(e.state(now), NodeState::Questionable);
        assert!(t.good_count(now) < t.len());
        // Never handed out before it answers...
        assert!(!t.closest(&rep.id, 16, now).contains(&rep));
        // ...and once it answers it is good and handed out.
        assert_eq!(t.on_response(rep, now), Insert::Added);
        assert_eq!(t.get(&rep.id).map(|e| e.state(now)), Some(NodeState::Good));
        assert!(t.closest(&rep.id, 16, now).contains(&rep));
    }

    #[test]
    fn an_error_reply_settles_the_liveness_ping() {
        let mut t = full_far_bucket(Time(0));
        let later = Time(0) + GOOD_FOR + Duration::from_secs(1);
        let Insert::PingFirst(p) = t.on_response(node(0x90, 50), later) else {
            panic!("expected a ping-first");
        };
        assert!(t.get(&p.id).is_some_and(|e| e.pinging));
        t.on_error_reply(&p.id, p.addr, later);
        let e = t.get(&p.id).expect("listed");
        assert!(!e.pinging, "flag cleared");
        assert_eq!(
            e.state(later),
            NodeState::Good,
            "an error proves it is alive"
        );
        // An error from another address proves nothing about the entry.
        let mut t = full_far_bucket(Time(0));
        let Insert::PingFirst(p) = t.on_response(node(0x90, 50), later) else {
            panic!("expected a ping-first");
        };
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1);
        t.on_error_reply(&p.id, other, later);
        assert_eq!(
            t.get(&p.id).map(|e| e.state(later)),
            Some(NodeState::Questionable)
        );
    }

    #[test]
    fn a_failed_send_clears_the_ping_flag() {
        let mut t = full_far_bucket(Time(0));
        let later = Time(0) + GOOD_FOR + Duration::from_secs(1);
        let Insert::PingFirst(p) = t.on_response(node(0x90, 50), later) else {
            panic!("expected a ping-first");
        };
        t.on_send_failed(&p.id, p.addr);
        let e = t.get(&p.id).expect("listed");
        assert!(!e.pinging);
        assert_eq!(e.fails, 0, "our own failure is not charged");
        assert!(t.questionable(later).contains(&p), "it can be pinged again");
    }

    #[test]
    fn a_query_from_a_bucket_member_keeps_the_bucket_fresh() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        let n = node(0x80, 1);
        t.on_response(n, Time(0));
        let age = Duration::from_secs(900);
        // It queries us 14 minutes in: the bucket is not due 15 minutes after the start.
        assert!(t.on_query(&n.id, n.addr, Time(0) + Duration::from_secs(840)));
        assert!(t.stale_buckets(Time(0) + age, age).is_empty());
        assert_eq!(
            t.next_refresh_due(age),
            Some(Time(0) + Duration::from_secs(840) + age)
        );
        // A query under a known id from another address does not count.
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        t.on_response(n, Time(0));
        let spoof = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1);
        assert!(!t.on_query(&n.id, spoof, Time(0) + Duration::from_secs(840)));
        assert_eq!(t.stale_buckets(Time(0) + age, age), vec![0]);
    }

    #[test]
    fn an_ip_whose_fingerprint_collides_is_not_taken_for_a_table_ip() {
        // Two different addresses with one fingerprint (found by search, so the test does
        // not depend on the hash's constants).
        let held = Ipv4Addr::new(10, 0, 0, 1);
        let f = ip_fingerprint(IpAddr::V4(held));
        let twin = (2u32..)
            .map(|n| Ipv4Addr::from(0x0a00_0000 + n))
            .find(|ip| ip_fingerprint(IpAddr::V4(*ip)) == f)
            .unwrap();
        let mut t: RoutingTable = RoutingTable::new(Id([0; 20]), 8, true, Time(0));
        let a = NodeInfo {
            id: Id([0x80; 20]),
            addr: SocketAddrV4::new(held, 6881),
        };
        assert_eq!(t.on_response(a, Time(1)), Insert::Added);
        assert_eq!(t.entries_at_ip(&held), 1);
        assert_eq!(
            t.entries_at_ip(&twin),
            0,
            "a fingerprint match is confirmed by a scan"
        );
        let b = NodeInfo {
            id: Id([0x40; 20]),
            addr: SocketAddrV4::new(twin, 6881),
        };
        assert_eq!(t.on_response(b, Time(1)), Insert::Added);
        let mut same_ip = b;
        same_ip.id = Id([0x41; 20]);
        assert_eq!(t.on_response(same_ip, Time(1)), Insert::Refused);
        // Re-bucketing around a new id keeps both twins counted, each exactly once.
        t.recentre(Id([0xff; 20]), Time(2));
        assert_eq!(t.entries_at_ip(&held) + t.entries_at_ip(&twin), t.len());
    }

    #[test]
    fn ip_counts_follow_inserts_replacements_and_recentring() {
        let mut t = full_far_bucket(Time(0));
        let dying = node(0x80, 0);
        let rep = node(0x90, 77);
        assert_eq!(t.on_response(rep, Time(1)), Insert::Replacement);
        assert_eq!(t.entries_at_ip(dying.addr.ip()), 1);
        assert_eq!(
            t.entries_at_ip(rep.addr.ip()),
            0,
            "a replacement holds no slot"
        );
        t.on_timeout(&dying.id, dying.addr, Time(2));
        assert_eq!(
            t.on_timeout(&dying.id, dying.addr, Time(3)),
            TimeoutOutcome::Replaced(rep)
        );
        assert_eq!(t.entries_at_ip(dying.addr.ip()), 0);
        assert_eq!(t.entries_at_ip(rep.addr.ip()), 1);
        // The freed IP may enter again (as another id); the taken one may not.
        let mut again = node(0x40, 9);
        again.addr = dying.addr;
        assert_eq!(t.on_response(again, Time(4)), Insert::Added);
        let mut dup = node(0x41, 9);
        dup.addr = rep.addr;
        assert_eq!(t.on_response(dup, Time(4)), Insert::Refused);
        // Every entry is counted exactly once, also after re-bucketing around a new id.
        let count = |t: &RoutingTable| {
            t.iter()
                .map(|e| t.entries_at_ip(e.node.addr.ip()))
                .sum::<usize>()
        };
        assert_eq!(count(&t), t.len());
        t.recentre(Id([0xff; 20]), Time(5));
        assert_eq!(count(&t), t.len());
        assert!(!t.is_empty());
    }

    #[test]
    fn a_replacement_whose_ip_entered_meanwhile_is_skipped() {
        let mut t = full_far_bucket(Time(0));
        let dying = node(0x80, 0);
        let older = node(0x91, 60);
        let newer = node(0x90, 77);
        assert_eq!(t.on_response(older, Time(1)), Insert::Replacement);
        assert_eq!(t.on_response(newer, Time(1)), Insert::Replacement);
        // `newer`'s IP enters the table under another id in another bucket.
        let mut twin = node(0x40, 5);
        twin.addr = newer.addr;
        assert_eq!(t.on_response(twin, Time(1)), Insert::Added);
        t.on_timeout(&dying.id, dying.addr, Time(2));
        assert_eq!(
            t.on_timeout(&dying.id, dying.addr, Time(3)),
            TimeoutOutcome::Replaced(older)
        );
        assert_eq!(t.entries_at_ip(newer.addr.ip()), 1);
    }
}

#[cfg(test)]
mod ipv6_index_tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn node6(first: u8, ip: Ipv6Addr, port: u16) -> NodeInfo<SocketAddrV6> {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = port as u8;
        NodeInfo {
            id: Id(id),
            addr: SocketAddrV6::new(ip, port, 0, 0),
        }
    }

    #[test]
    fn one_entry_per_ipv6_address() {
        let mut t: RoutingTable<SocketAddrV6> = RoutingTable::new(Id([0; 20]), 8, true, Time(0));
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(t.on_response(node6(0x80, a, 1), Time(1)), Insert::Added);
        // Another id at the same IPv6 address is refused; the index sees it.
        assert_eq!(t.on_response(node6(0x40, a, 2), Time(1)), Insert::Refused);
        assert_eq!(t.entries_at_ip(&a), 1);
        assert_eq!(t.on_response(node6(0x40, b, 2), Time(1)), Insert::Added);
        assert_eq!(t.entries_at_ip(&b), 1);
        assert_eq!(t.entries_at_ip(&"fd00::3".parse().unwrap()), 0);
    }
}

#[cfg(test)]
mod long_run_tests {
    use super::*;

    use super::tests::node;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Entries store `u32` milliseconds after the table's epoch: past 49.7 days (2^32 ms)
    /// the epoch moves, and every time the table reports or compares stays exact.
    #[test]
    fn times_stay_exact_past_49_days() {
        let mut t = RoutingTable::new(Id::ZERO, 8, true, Time(0));
        for i in 0..8 {
            assert_eq!(t.on_response(node(0x80, i), Time(0)), Insert::Added);
        }
        assert_eq!(t.on_response(node(0x40, 1), Time(0)), Insert::Added);
        // Months of answers, a day apart, each a millisecond-odd instant.
        let mut now = Time(0);
        for day in 1..=120u64 {
            now = Time(0) + DAY * day as u32 + Duration::from_millis(day * 37 + 1);
            for i in 1..8 {
                let at = now + Duration::from_millis(u64::from(i));
                assert_eq!(t.on_response(node(0x80, i), at), Insert::Added);
            }
            let e = t.get(&node(0x80, 3).id).expect("listed");
            assert_eq!(e.last_response, now + Duration::from_millis(3));
        }
        assert!(
            now.as_millis() > 2 * u64::from(u32::MAX),
            "ran past two wraps"
        );
        // Node 0 answered only at Time(0): long past good, not made fresh by a wrap.
        let old = node(0x80, 0);
        assert_eq!(
            t.get(&old.id).map(|e| e.state(now)),
            Some(NodeState::Questionable)
        );
        let fresh = node(0x80, 7);
        let answered = now + Duration::from_millis(7);
        assert_eq!(
            t.get(&fresh.id)
                .map(|e| e.state(answered + GOOD_FOR - Duration::from_millis(1))),
            Some(NodeState::Good)
        );
        let later = answered + GOOD_FOR;
        assert_eq!(
            t.get(&fresh.id).map(|e| e.state(later)),
            Some(NodeState::Questionable)
        );
        assert_eq!(t.good_count(later), 0);
        assert_eq!(t.questionable(later).len(), 9);
        // Millisecond order survives: the stalest is pinged first (node 0, then node 1,
        // which answered one millisecond before node 2).
        let Insert::PingFirst(p) = t.on_response(node(0x90, 50), later) else {
            panic!("expected a ping-first");
        };
        assert_eq!(p, old);
        let Insert::PingFirst(p) = t.on_response(node(0x91, 51), later) else {
            panic!("expected a ping-first");
        };
        assert_eq!(p, node(0x80, 1));
        // A query keeps an entry good and its bucket fresh, to the millisecond.
        let q = later + Duration::from_millis(123);
        assert!(t.on_query(&fresh.id, fresh.addr, q));
        assert_eq!(t.get(&fresh.id).map(|e| e.last_query), Some(q));
        assert_eq!(t.get(&fresh.id).map(|e| e.state(q)), Some(NodeState::Good));
        let age = Duration::from_secs(900);
        t.touch(&node(0x40, 2).id, q);
        assert_eq!(t.stale_buckets(q + age, age), vec![0, 1]);
        t.touch(&node(0x80, 2).id, q + Duration::from_millis(5));
        assert_eq!(t.next_refresh_due(age), Some(q + age));
        assert_eq!(t.stalest_bucket(q + age, age), Some(1));
        assert_eq!(
            t.stalest_bucket(q + age + Duration::from_millis(4), age),
            Some(1)
        );
        assert_eq!(
            t.stale_buckets(q + age + Duration::from_millis(5), age),
            vec![0, 1]
        );
    }
}
