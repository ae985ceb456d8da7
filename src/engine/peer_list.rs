//! The bounded list of peer addresses a torrent may dial.
//!
//! Fed by every peer source (DHT lookups, PEX, incoming connections, `--peer` / magnet
//! `x.pe`, trackers), drained by the driver's dial loop. Sans-IO with time passed in, so the
//! retry rules are unit-testable with fake time:
//! - a failed dial backs off exponentially ([`BASE_BACKOFF`] × 2^(failures−1), capped at
//!   [`MAX_BACKOFF`]) but is retried for ever: a peer that is down now may be up in an hour;
//! - hitting a connection cap (ours or theirs) is not the peer's fault: a short fixed retry
//!   ([`LIMIT_RETRY`]) that never counts as a failure;
//! - a connection that lasted [`LONG_LIVED`] proves the address good and clears its
//!   failures, one that dies young counts as a failure, so a peer that accepts and drops at
//!   once backs off like one that refuses;
//! - bans are per IP, so a banned peer cannot come back from another port;
//! - everything is bounded: at most `capacity` addresses (at capacity the worst
//!   non-connected one makes room for a fresh address), [`MAX_PER_IP`] addresses per host so
//!   one host cannot fill the list, and a bounded LRU of banned IPs.
//!
//! IPv6 (BEP 32): a host is an IPv4 address or an IPv6 /64 — one subscriber's allocation,
//! in which an attacker picks addresses for free — so the [`MAX_PER_IP`] cap counts every
//! address of a /64 together. Bans stay per full address, as libtorrent's do: banning a /64
//! would also shut out honest neighbours behind the same router, and a banned peer that
//! moves inside its /64 is still held to the per-/64 cap.
//!
//! IPv4-mapped IPv6 addresses are folded to IPv4 everywhere, so `::ffff:1.2.3.4` is the
//! same peer (and the same ban) as `1.2.3.4`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Wait after the first failure; doubles with each further one.
pub const BASE_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between attempts at a failing address.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Wait after [`FailKind::LimitReached`]: a slot may free up soon.
pub const LIMIT_RETRY: Duration = Duration::from_secs(30);
/// A connection that lasted this long was useful: its failure count is reset.
pub const LONG_LIVED: Duration = Duration::from_secs(60);
/// Most ports remembered per IP.
pub const MAX_PER_IP: usize = 8;
/// Fewest banned IPs remembered, whatever the list's capacity.
pub const MIN_BANS: usize = 1024;

/// Where an address came from. An address may have several sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerSource {
    /// Given by the user (`--peer`) or the magnet link (`x.pe`): dialed first.
    Manual,
    /// A DHT `get_peers` lookup.
    Dht,
    /// Peer exchange (BEP 11) from a connected peer.
    Pex,
    /// The peer connected to us; its port is usually an ephemeral one, not its listen port.
    Incoming,
    /// A tracker announce.
    Tracker,
}

impl PeerSource {
    fn bit(self) -> u8 {
        match self {
            PeerSource::Manual => 1,
            PeerSource::Dht => 2,
            PeerSource::Pex => 4,
            PeerSource::Incoming => 8,
            PeerSource::Tracker => 16,
        }
    }
}

/// Why a dial or handshake failed; decides the retry delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// The TCP connection was refused.
    Refused,
    /// Connecting or the handshake timed out.
    Timeout,
    /// Another socket error.
    Io,
    /// The peer spoke the protocol wrongly (bad handshake, wrong info-hash, ...).
    Protocol,
    /// Our or the peer's connection cap was reached: retried soon, not a failure.
    LimitReached,
    /// The peer is connected already through another address: retried later (like
    /// [`FailKind::LimitReached`]), not a failure.
    Duplicate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Connected,
}

#[derive(Clone, Debug)]
struct Entry {
    sources: u8,
    state: State,
    /// Failures in a row since the last useful connection.
    failures: u32,
    /// Not dialable before this time (`None` = now).
    retry_at: Option<Instant>,
    /// Whether we ever dialed it (or it connected to us).
    tried: bool,
    /// Last time a source reported it: eviction prefers the least recently heard of.
    seen: Instant,
    /// Insertion order, for a deterministic first-come-first-served tie-break.
    seq: u64,
}

impl Entry {
    fn manual(&self) -> bool {
        self.sources & PeerSource::Manual.bit() != 0
    }

    fn due(&self, now: Instant) -> bool {
        self.state == State::Idle && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// Dial candidates of one torrent with their retry state. See the module docs for rules.
#[derive(Debug)]
pub struct PeerList {
    capacity: usize,
    /// First back-off step ([`BASE_BACKOFF`] unless set with [`PeerList::with_base_backoff`]).
    base: Duration,
    entries: HashMap<SocketAddr, Entry>,
    /// Addresses per host (see [`host`]: an IPv4 address or an IPv6 /64).
    per_ip: HashMap<IpAddr, usize>,
    banned: LruCache<IpAddr, ()>,
    next_seq: u64,
}

impl PeerList {
    /// A list of at most `capacity` addresses (at least one) remembering at least
    /// [`MIN_BANS`] banned IPs.
    pub fn new(capacity: usize) -> PeerList {
        PeerList::with_ban_capacity(capacity, capacity.max(MIN_BANS))
    }

    /// Like [`PeerList::new`] with an explicit bound on remembered bans (at least one); the
    /// least recently banned IP is forgotten first.
    pub fn with_ban_capacity(capacity: usize, bans: usize) -> PeerList {
        PeerList {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            per_ip: HashMap::new(),
            banned: LruCache::new(NonZeroUsize::new(bans).unwrap_or(NonZeroUsize::MIN)),
            next_seq: 0,
            base: BASE_BACKOFF,
        }
    }

    /// The same list with `base` as the first back-off step (doubling from there up to
    /// [`MAX_BACKOFF`]): tests and short-lived fetches that know only a few peers want to
    /// give up sooner than a long-running client.
    pub fn with_base_backoff(mut self, base: Duration) -> PeerList {
        self.base = base.max(Duration::from_millis(1));
        self
    }

    /// Offers `addr` from `source`. Returns true if it was added as a new candidate; false
    /// if it is invalid (port 0, unspecified or multicast IP), banned, already known (it
    /// then just gains `source` and counts as freshly seen), its IP already has
    /// [`MAX_PER_IP`] ports, or the list is full of entries at least as good.
    ///
    /// At capacity the worst non-connected entry (most failures, then non-manual, then
    /// least recently seen) is evicted if it has failed at least once, or if `source` is
    /// [`PeerSource::Manual`] and it is not; entries that never failed are kept, first come
    /// first served, and connected or connecting ones are never evicted.
    pub fn add(&mut self, addr: SocketAddr, source: PeerSource, now: Instant) -> bool {
        let addr = canonical(addr);
        if !valid(&addr) || self.is_banned(&addr.ip()) {
            return false;
        }
        if let Some(e) = self.entries.get_mut(&addr) {
            e.sources |= source.bit();
            e.seen = e.seen.max(now);
            return false;
        }
        if self.per_ip.get(&host(addr.ip())).copied().unwrap_or(0) >= MAX_PER_IP {
            return false;
        }
        if self.entries.len() >= self.capacity {
            let Some((victim, worst)) = self.worst_idle() else {
                return false;
            };
            let replace = worst.failures > 0 || (source == PeerSource::Manual && !worst.manual());
            if !replace {
                return false;
            }
            self.remove(victim);
        }
        self.insert(addr, source, now);
        true
    }

    /// The best address to dial now, marked connecting: one whose back-off has expired and
    /// that is not connecting, connected or banned. Prefers manual addresses, then ones never
    /// tried, then fewest failures, then first added. Call [`PeerList::on_connected`] or
    /// [`PeerList::on_failed`] with the outcome.
    pub fn next_to_dial(&mut self, now: Instant) -> Option<SocketAddr> {
        let (&addr, _) = self
            .entries
            .iter()
            .filter(|(_, e)| e.due(now))
            .min_by_key(|(_, e)| (!e.manual(), e.tried, e.failures, e.seq))?;
        if let Some(e) = self.entries.get_mut(&addr) {
            e.state = State::Connecting;
            e.tried = true;
            e.retry_at = None;
        }
        Some(addr)
    }

    /// A connection to `addr` is up (dialed by us or accepted). An address not in the list
    /// (an incoming connection) is added with [`PeerSource::Incoming`], making room by
    /// evicting the worst non-connected entry if needed; live connections are bounded by the
    /// caller's connection cap, so the list may exceed its capacity by at most that much.
    /// Banned IPs are ignored (the caller should not accept them).
    pub fn on_connected(&mut self, addr: SocketAddr, now: Instant) {
        let addr = canonical(addr);
        if self.is_banned(&addr.ip()) {
            return;
        }
        if !self.entries.contains_key(&addr) {
            if self.entries.len() >= self.capacity {
                if let Some((victim, _)) = self.worst_idle() {
                    self.remove(victim);
                }
            }
            self.insert(addr, PeerSource::Incoming, now);
        }
        if let Some(e) = self.entries.get_mut(&addr) {
            e.state = State::Connected;
            e.tried = true;
            e.retry_at = None;
        }
    }

    /// A dial or handshake to `addr` failed at `now`. Schedules the retry: exponential
    /// back-off counted as a failure, or [`LIMIT_RETRY`] for [`FailKind::LimitReached`].
    pub fn on_failed(&mut self, addr: SocketAddr, now: Instant, kind: FailKind) {
        let base = self.base;
        let Some(e) = self.entries.get_mut(&canonical(addr)) else {
            return;
        };
        e.state = State::Idle;
        e.tried = true;
        if matches!(kind, FailKind::LimitReached | FailKind::Duplicate) {
            e.retry_at = Some(now + LIMIT_RETRY);
        } else {
            e.failures = e.failures.saturating_add(1);
            e.retry_at = Some(now + backoff(base, e.failures));
        }
    }

    /// An established connection to `addr` ended at `now` after `lasted`. At least
    /// [`LONG_LIVED`] clears the failure count (retry after the base back-off); shorter counts
    /// as a failure with its back-off.
    pub fn on_disconnected(&mut self, addr: SocketAddr, now: Instant, lasted: Duration) {
        let base = self.base;
        let Some(e) = self.entries.get_mut(&canonical(addr)) else {
            return;
        };
        e.state = State::Idle;
        e.tried = true;
        if lasted >= LONG_LIVED {
            e.failures = 0;
            e.retry_at = Some(now + base);
        } else {
            e.failures = e.failures.saturating_add(1);
            e.retry_at = Some(now + backoff(base, e.failures));
        }
    }

    /// Bans every port of `ip`: its entries are dropped (the caller closes its
    /// connections) and [`PeerList::add`] refuses it from now on. Returns true if it was not
    /// banned before.
    pub fn ban_ip(&mut self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let fresh = self.banned.put(ip, ()).is_none();
        if self.per_ip.contains_key(&host(ip)) {
            let gone: Vec<SocketAddr> = self
                .entries
                .keys()
                .filter(|a| a.ip() == ip)
                .copied()
                .collect();
            for a in gone {
                self.remove(a);
            }
        }
        fresh
    }

    /// Whether `ip` is banned (any port).
    pub fn is_banned(&self, ip: &IpAddr) -> bool {
        self.banned.contains(&ip.to_canonical())
    }

    /// Addresses known (any state).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Addresses currently connected.
    pub fn connected(&self) -> usize {
        self.count(State::Connected)
    }

    /// Addresses currently being dialed (half-open).
    pub fn connecting(&self) -> usize {
        self.count(State::Connecting)
    }

    /// Failures in a row of `addr`, `None` if unknown.
    pub fn failures(&self, addr: SocketAddr) -> Option<u32> {
        self.entries.get(&canonical(addr)).map(|e| e.failures)
    }

    /// When [`PeerList::next_to_dial`] may next return something: `now` if an address is
    /// due already, the earliest back-off expiry otherwise, `None` if nothing is idle.
    /// For the caller's timer.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| e.state == State::Idle)
            .map(|e| e.retry_at.map_or(now, |t| t.max(now)))
            .min()
    }

    /// True when every known address has failed at least `max_failures` times in a row and
    /// none is connected or connecting (also when the list is empty). Together with "no
    /// peer source is still running" this means the torrent is out of peers.
    pub fn exhausted(&self, max_failures: u32) -> bool {
        self.entries
            .values()
            .all(|e| e.state == State::Idle && e.failures >= max_failures)
    }

    /// Connected addresses others can dial, for PEX: those known only from an incoming
    /// connection are left out, as their port is normally not the peer's listen port.
    pub fn dialable(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.state == State::Connected && e.sources != PeerSource::Incoming.bit())
            .map(|(a, _)| *a)
    }

    fn count(&self, state: State) -> usize {
        self.entries.values().filter(|e| e.state == state).count()
    }

    /// The entry to evict first: idle, most failures, non-manual, least recently seen.
    fn worst_idle(&self) -> Option<(SocketAddr, Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state == State::Idle)
            .max_by_key(|(_, e)| {
                (
                    e.failures,
                    !e.manual(),
                    std::cmp::Reverse(e.seen),
                    std::cmp::Reverse(e.seq),
                )
            })
            .map(|(a, e)| (*a, e.clone()))
    }

    fn insert(&mut self, addr: SocketAddr, source: PeerSource, now: Instant) {
        self.entries.insert(
            addr,
            Entry {
                sources: source.bit(),
                state: State::Idle,
                failures: 0,
                retry_at: None,
                tried: false,
                seen: now,
                seq: self.next_seq,
            },
        );
        self.next_seq += 1;
        *self.per_ip.entry(host(addr.ip())).or_insert(0) += 1;
    }

    fn remove(&mut self, addr: SocketAddr) {
        if self.entries.remove(&addr).is_none() {
            return;
        }
        let key = host(addr.ip());
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
    }
}

/// Wait before the next attempt after `failures` failures in a row (at least one).
fn backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (base * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// `addr` with an IPv4-mapped IPv6 address folded to IPv4.
/// The host an address counts against for [`MAX_PER_IP`]: an IPv4 address itself, an IPv6
/// address's /64 (the low 64 bits zeroed).
fn host(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(std::net::Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether anyone could be listening at `addr`.
fn valid(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn a(host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), port)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A list of capacity 10 holding `host:1` from the DHT for each host, seen at `t`.
    fn dht_list(hosts: impl IntoIterator<Item = u8>, t: Instant) -> PeerList {
        let mut l = PeerList::new(10);
        for h in hosts {
            assert!(l.add(a(h, 1), PeerSource::Dht, t));
        }
        l
    }

    /// Records `n` refused dials of `addr` at `t`.
    fn fail(l: &mut PeerList, addr: SocketAddr, n: u32, t: Instant) {
        for _ in 0..n {
            l.on_failed(addr, t, FailKind::Refused);
        }
    }

    #[test]
    fn add_rejects_known_invalid_and_banned() {
        let t = Instant::now();
        let mut l = PeerList::new(10);
        assert!(l.add(a(1, 1000), PeerSource::Dht, t));
        assert!(!l.add(a(1, 1000), PeerSource::Pex, t), "known");
        assert!(!l.add(a(1, 0), PeerSource::Dht, t), "port 0");
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1);
        let multicast = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)), 1);
        let bcast = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), 1);
        for bad in [unspecified, multicast, bcast] {
            assert!(!l.add(bad, PeerSource::Dht, t), "{bad}");
        }
        l.ban_ip(a(2, 1).ip());
        assert!(!l.add(a(2, 5000), PeerSource::Manual, t));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn known_entry_gains_source() {
        let t = Instant::now();
        let mut l = dht_list(1..=2, t);
        // Becoming manual moves it to the front of the dial order.
        l.add(a(2, 1), PeerSource::Manual, t);
        assert_eq!(l.next_to_dial(t), Some(a(2, 1)));
    }

    #[test]
    fn dial_order_manual_then_untried_then_fewest_failures() {
        let t = Instant::now();
        let mut l = dht_list(1..=3, t);
        // 1 failed twice, 2 once, 3 never tried; all back-offs expired at t + 1 h.
        fail(&mut l, a(1, 1), 2, t);
        fail(&mut l, a(2, 1), 1, t);
        let later = t + secs(3600);
        l.add(a(9, 1), PeerSource::Manual, t);
        fail(&mut l, a(9, 1), 1, t);
        assert_eq!(l.next_to_dial(later), Some(a(9, 1)), "manual first");
        assert_eq!(l.next_to_dial(later), Some(a(3, 1)), "then never tried");
        assert_eq!(l.next_to_dial(later), Some(a(2, 1)), "then fewest failures");
        assert_eq!(l.next_to_dial(later), Some(a(1, 1)));
        // All connecting now: nothing else to dial.
        assert_eq!(l.next_to_dial(later), None);
        assert_eq!(l.connecting(), 4);
    }

    #[test]
    fn failure_backs_off_exponentially_capped_and_retries_forever() {
        let t0 = Instant::now();
        let mut l = dht_list([1], t0);
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert_eq!(l.next_to_dial(t), Some(a(1, 1)));
            l.on_failed(a(1, 1), t, FailKind::Timeout);
            let wake = l.next_wakeup(t).expect("scheduled");
            // Not dialable one second before the back-off expires.
            assert_eq!(l.next_to_dial(wake - secs(1)), None);
            waits.push(wake.duration_since(t).as_secs());
            t = wake;
        }
        assert_eq!(&waits[..7], &[10, 20, 40, 80, 160, 320, 600]);
        assert!(waits[7..].iter().all(|&w| w == 600), "{waits:?}");
        assert_eq!(l.failures(a(1, 1)), Some(12));
        assert_eq!(l.len(), 1, "never forgotten");
    }

    #[test]
    fn limit_reached_is_a_short_retry_not_a_failure() {
        let t = Instant::now();
        let mut l = dht_list([1], t);
        for i in 0..5 {
            let now = t + LIMIT_RETRY * i;
            assert_eq!(l.next_to_dial(now), Some(a(1, 1)));
            l.on_failed(a(1, 1), now, FailKind::LimitReached);
        }
        assert_eq!(l.failures(a(1, 1)), Some(0));
        assert_eq!(
            l.next_wakeup(t + LIMIT_RETRY * 4),
            Some(t + LIMIT_RETRY * 5)
        );
        assert!(!l.exhausted(1));
    }

    #[test]
    fn long_connection_resets_failures_short_one_counts() {
        let t = Instant::now();
        let mut l = dht_list([1], t);
        fail(&mut l, a(1, 1), 3, t);
        let t1 = t + secs(10_000);
        assert_eq!(l.next_to_dial(t1), Some(a(1, 1)));
        l.on_connected(a(1, 1), t1);
        assert_eq!(l.connected(), 1);
        l.on_disconnected(a(1, 1), t1 + secs(60), secs(60));
        assert_eq!(l.failures(a(1, 1)), Some(0));
        assert_eq!(l.connected(), 0);
        // Accepts and drops at once: backs off like a failure, more each time.
        let mut t = t1 + secs(60);
        for n in 1..=3u32 {
            t = l.next_wakeup(t).expect("retry scheduled");
            assert_eq!(l.next_to_dial(t), Some(a(1, 1)));
            l.on_connected(a(1, 1), t);
            l.on_disconnected(a(1, 1), t, secs(1));
            assert_eq!(l.failures(a(1, 1)), Some(n));
        }
        assert_eq!(l.next_wakeup(t), Some(t + secs(40)));
    }

    #[test]
    fn ban_covers_every_port_and_survives_new_ports() {
        let t = Instant::now();
        let mut l = PeerList::new(10);
        l.add(a(1, 1), PeerSource::Dht, t);
        l.add(a(1, 2), PeerSource::Pex, t);
        l.add(a(2, 1), PeerSource::Dht, t);
        assert_eq!(l.next_to_dial(t), Some(a(1, 1)));
        l.on_connected(a(1, 1), t);
        assert!(l.ban_ip(a(1, 0).ip()));
        assert!(!l.ban_ip(a(1, 0).ip()), "already banned");
        assert_eq!(l.len(), 1);
        assert_eq!(l.connected(), 0);
        assert!(l.is_banned(&a(1, 0).ip()));
        assert!(!l.add(a(1, 3), PeerSource::Incoming, t));
        // The IPv4-mapped spelling is the same host.
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 4);
        assert!(!l.add(mapped, PeerSource::Dht, t));
        l.on_connected(a(1, 5), t);
        assert_eq!(l.len(), 1, "banned incoming is not tracked");
        // Late reports about the banned connection are ignored.
        l.on_disconnected(a(1, 1), t, secs(1));
        assert_eq!(l.failures(a(1, 1)), None);
    }

    #[test]
    fn ban_set_is_bounded() {
        let mut l = PeerList::with_ban_capacity(10, 3);
        for h in 1..=4 {
            l.ban_ip(a(h, 1).ip());
        }
        assert!(!l.is_banned(&a(1, 1).ip()), "oldest ban forgotten");
        assert!((2..=4).all(|h| l.is_banned(&a(h, 1).ip())));
        assert!(PeerList::new(1).banned.cap().get() >= MIN_BANS);
    }

    #[test]
    fn capacity_evicts_worst_failed_never_connected() {
        let t = Instant::now();
        let mut l = PeerList::new(3);
        for h in 1..=3 {
            assert!(l.add(a(h, 1), PeerSource::Dht, t + secs(u64::from(h))));
        }
        // Full of never-failed entries: a fresh address waits its turn.
        assert!(!l.add(a(4, 1), PeerSource::Dht, t));
        // 1 connected (after a failure), 2 failed once, 3 failed twice.
        let later = t + secs(100_000);
        for (h, n) in [(1u8, 1), (2, 1), (3, 2)] {
            fail(&mut l, a(h, 1), n, t);
        }
        assert_eq!(l.next_to_dial(later), Some(a(1, 1)));
        l.on_connected(a(1, 1), later);
        assert!(l.add(a(4, 1), PeerSource::Dht, later));
        assert_eq!(l.failures(a(3, 1)), None, "most failures evicted");
        assert!(l.add(a(5, 1), PeerSource::Dht, later));
        assert_eq!(l.failures(a(2, 1)), None);
        assert_eq!(l.failures(a(1, 1)), Some(1), "connected one kept");
        // Manual beats an untried DHT address; the least recently seen one goes.
        l.add(a(5, 1), PeerSource::Dht, later + secs(1));
        assert!(l.add(a(6, 1), PeerSource::Manual, later + secs(1)));
        assert_eq!(l.len(), 3);
        assert_eq!(l.failures(a(4, 1)), None);
        assert_eq!(l.failures(a(5, 1)), Some(0));
        assert!(l.add(a(7, 1), PeerSource::Manual, later + secs(2)));
        assert_eq!(l.failures(a(5, 1)), None);
        // A manual address that never failed is not evicted for another manual one.
        assert!(!l.add(a(8, 1), PeerSource::Manual, later + secs(3)));
        assert_eq!(l.failures(a(6, 1)), Some(0));
    }

    #[test]
    fn full_of_connected_refuses() {
        let t = Instant::now();
        let mut l = PeerList::new(2);
        for h in 1..=2 {
            l.add(a(h, 1), PeerSource::Dht, t);
            let d = l.next_to_dial(t).expect("dialable");
            l.on_connected(d, t);
        }
        assert!(!l.add(a(3, 1), PeerSource::Manual, t));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn incoming_connection_is_tracked_even_when_full() {
        let t = Instant::now();
        let mut l = PeerList::new(2);
        l.add(a(1, 1), PeerSource::Dht, t);
        l.add(a(2, 1), PeerSource::Dht, t + secs(1));
        l.on_connected(a(3, 50_000), t);
        assert_eq!(l.connected(), 1);
        assert_eq!(l.len(), 2, "an idle entry made room");
        assert_eq!(l.failures(a(1, 1)), None, "least recently seen evicted");
    }

    #[test]
    fn per_ip_cap() {
        let t = Instant::now();
        let mut l = PeerList::new(100);
        for port in 1..=20 {
            l.add(a(1, port), PeerSource::Pex, t);
        }
        assert_eq!(l.len(), MAX_PER_IP);
        assert!(l.add(a(2, 1), PeerSource::Pex, t));
        assert!(!l.add(a(1, 99), PeerSource::Manual, t));
    }

    #[test]
    fn an_ipv6_slash64_is_one_host_and_bans_are_per_address() {
        let t = Instant::now();
        let mut l = PeerList::new(100);
        let in64 = |i: u16| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i)),
                6881,
            )
        };
        for i in 1..=20 {
            l.add(in64(i), PeerSource::Pex, t);
        }
        assert_eq!(l.len(), MAX_PER_IP, "addresses of one /64 count together");
        let next64 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1)),
            1,
        );
        assert!(
            l.add(next64, PeerSource::Pex, t),
            "another /64 is another host"
        );
        // A ban takes the one address, not its neighbours, and frees its slot.
        assert!(l.ban_ip(in64(1).ip()));
        assert!(l.is_banned(&in64(1).ip()));
        assert!(!l.is_banned(&in64(2).ip()));
        assert_eq!(l.len(), MAX_PER_IP);
        assert!(!l.add(in64(1), PeerSource::Pex, t), "banned");
        assert!(
            l.add(in64(30), PeerSource::Pex, t),
            "the freed slot of the /64"
        );
        assert!(
            !l.add(in64(31), PeerSource::Pex, t),
            "and the /64 is full again"
        );
    }

    #[test]
    fn next_wakeup_tracks_earliest_backoff() {
        let t = Instant::now();
        assert_eq!(PeerList::new(10).next_wakeup(t), None);
        let mut l = dht_list(1..=2, t);
        assert_eq!(l.next_wakeup(t), Some(t), "due now");
        for _ in 0..2 {
            l.next_to_dial(t);
        }
        assert_eq!(l.next_wakeup(t), None, "all connecting");
        l.on_failed(a(1, 1), t, FailKind::Io);
        l.on_failed(a(2, 1), t, FailKind::LimitReached);
        assert_eq!(l.next_wakeup(t), Some(t + BASE_BACKOFF));
        assert_eq!(l.next_wakeup(t + secs(20)), Some(t + secs(20)));
        assert_eq!(l.next_to_dial(t + BASE_BACKOFF), Some(a(1, 1)));
        assert_eq!(l.next_wakeup(t + BASE_BACKOFF), Some(t + LIMIT_RETRY));
    }

    #[test]
    fn exhausted_only_when_all_failed_enough_and_none_live() {
        let t = Instant::now();
        assert!(PeerList::new(10).exhausted(3), "empty");
        let mut l = dht_list(1..=2, t);
        assert!(!l.exhausted(3));
        let late = t + secs(100_000);
        fail(&mut l, a(1, 1), 3, t);
        fail(&mut l, a(2, 1), 2, t);
        assert!(!l.exhausted(3), "2 has failed only twice");
        assert_eq!(l.next_to_dial(late), Some(a(2, 1)));
        assert!(!l.exhausted(2), "connecting");
        l.on_connected(a(2, 1), late);
        assert!(!l.exhausted(2), "connected");
        l.on_disconnected(a(2, 1), late, secs(1));
        assert!(l.exhausted(3));
    }

    #[test]
    fn dialable_lists_connected_non_incoming() {
        let t = Instant::now();
        let mut l = PeerList::new(10);
        l.add(a(1, 1), PeerSource::Dht, t);
        l.add(a(2, 1), PeerSource::Tracker, t);
        l.add(a(3, 1), PeerSource::Incoming, t);
        l.add(a(4, 1), PeerSource::Incoming, t);
        l.add(a(4, 1), PeerSource::Pex, t);
        for _ in 0..4 {
            l.next_to_dial(t);
        }
        for h in [1, 3, 4] {
            l.on_connected(a(h, 1), t);
        }
        l.on_failed(a(2, 1), t, FailKind::Refused);
        l.on_connected(a(5, 40_000), t);
        let got: HashSet<SocketAddr> = l.dialable().collect();
        assert_eq!(got, HashSet::from([a(1, 1), a(4, 1)]));
    }

    #[test]
    fn ipv6_works_and_mapped_v4_is_folded() {
        let t = Instant::now();
        let mut l = PeerList::new(10);
        let v6 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            6881,
        );
        assert!(l.add(v6, PeerSource::Dht, t));
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 1);
        assert!(l.add(mapped, PeerSource::Dht, t));
        assert!(
            !l.add(a(1, 1), PeerSource::Dht, t),
            "same as the mapped one"
        );
        let dialed: HashSet<SocketAddr> = [l.next_to_dial(t), l.next_to_dial(t)]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(dialed, HashSet::from([v6, a(1, 1)]));
    }
}
