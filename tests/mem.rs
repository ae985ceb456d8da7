//! Memory per DHT node, the figure that decides how many nodes the simulator can hold: the
//! type sizes of the parts, and the heap a node built like the simulator's perfect tables
//! (`build_perfect`: ~142 entries, bucket by bucket, at 1M nodes, with the configuration a
//! scenario gives its nodes) keeps, counted by a counting global allocator over 10,000 such
//! nodes. `cargo test --release --test mem --
//! --nocapture` prints the breakdown; the test fails if a node grows past its budget.

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use dhtnode::dht::routing::{Bucket, Entry, Slot};
use dhtnode::dht::{Config, Dht, Event, PeerStore, RateLimiter, RoutingTable, Time, Transmit};
use dhtnode::id::Id;
use dhtnode::krpc::NodeInfo;
use dhtnode::sim::scenario::DhtSpec;

/// The system allocator, counting live bytes and live blocks.
struct Counting;

static BYTES: AtomicI64 = AtomicI64::new(0);
static BLOCKS: AtomicI64 = AtomicI64::new(0);
/// glibc's cost of a block: 8 bytes of header, rounded up to 16, at least 32.
static MALLOC_BYTES: AtomicI64 = AtomicI64::new(0);

fn malloc_cost(size: usize) -> i64 {
    ((size + 8).div_ceil(16) * 16).max(32) as i64
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        MALLOC_BYTES.fetch_add(malloc_cost(l.size()), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as i64, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        MALLOC_BYTES.fetch_sub(malloc_cost(l.size()), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        MALLOC_BYTES.fetch_add(malloc_cost(new) - malloc_cost(l.size()), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests of this binary run one at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
struct Snap {
    bytes: i64,
    blocks: i64,
    malloc: i64,
}

fn snap() -> Snap {
    Snap {
        bytes: BYTES.load(Ordering::Relaxed),
        blocks: BLOCKS.load(Ordering::Relaxed),
        malloc: MALLOC_BYTES.load(Ordering::Relaxed),
    }
}

fn per(after: Snap, before: Snap, n: usize) -> (f64, f64, f64) {
    let n = n as f64;
    (
        (after.bytes - before.bytes) as f64 / n,
        (after.blocks - before.blocks) as f64 / n,
        (after.malloc - before.malloc) as f64 / n,
    )
}

/// Entries per depth of a perfect table in a network of a million: full buckets down to
/// depth 16, then the few nodes sharing more bits (142 in all, as `million.toml` measures).
const PERFECT: [usize; 19] = [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4, 2];

/// What a scenario without overrides configures its nodes with (per-IP limits and the reply
/// budget off unless it asks for flood protection: see `DhtSpec::flood_protection`).
fn sim_config() -> Config {
    DhtSpec::default().config()
}

/// A node with a perfect table, filled the way `build_perfect` does: depth after depth,
/// at one moment of the first refresh interval.
fn perfect_node(i: u32, rng: &mut SmallRng) -> Dht {
    let own = Id::random(rng);
    let mut d = Dht::new(own, sim_config(), u64::from(i), Time(0));
    let now = Time(u64::from(i) * 7919 % 900_000);
    let mut ip = 0x0b00_0000u32 + i * 4096;
    for (depth, &n) in PERFECT.iter().enumerate() {
        for _ in 0..n {
            ip = ip.wrapping_add(256);
            let node = NodeInfo {
                id: own.random_in_bucket(depth, rng),
                addr: SocketAddrV4::new(Ipv4Addr::from(ip), 6881),
            };
            let _ = d.insert_node(now, node);
        }
    }
    d
}

/// The simulator's `drain` after going online: whatever the node wants to send or report,
/// then its first timer.
fn go_online(d: &mut Dht, now: Time) {
    d.handle_timeout(now);
    while d.poll_transmit().is_some() {}
    while d.poll_event().is_some() {}
    let _ = d.poll_timeout();
}

/// The heap of a routing table as its capacities say (what the allocator holds for it,
/// without allocator overhead and without the IP index, which is private).
fn table_heap(t: &RoutingTable) -> (usize, usize, usize) {
    let buckets = t.buckets();
    let vec_of_buckets = std::mem::size_of_val(buckets); // capacity is private: len
                                                         // Entries live inside their bucket up to k = 8; only a larger bucket has its own block.
    let entries: usize = buckets
        .iter()
        .filter(|b| b.entries.spilled())
        .map(|b| b.entries.capacity() * size_of::<Slot>())
        .sum();
    let reps: usize = (0..buckets.len())
        .map(|bi| t.replacements(bi).count() * size_of::<NodeInfo>())
        .sum();
    (vec_of_buckets, entries, reps)
}

#[test]
fn bytes_per_perfect_node() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    println!("size_of:");
    println!("  Dht                {:5}", size_of::<Dht>());
    println!("  Config             {:5}", size_of::<Config>());
    println!("  RoutingTable       {:5}", size_of::<RoutingTable>());
    println!("  Bucket             {:5}", size_of::<Bucket>());
    println!("  Entry (view)       {:5}", size_of::<Entry>());
    println!("  Slot (stored)      {:5}", size_of::<Slot>());
    println!("  NodeInfo           {:5}", size_of::<NodeInfo>());
    println!("  PeerStore          {:5}", size_of::<PeerStore>());
    println!("  RateLimiter        {:5}", size_of::<RateLimiter>());
    println!("  Event              {:5}", size_of::<Event>());
    println!("  Transmit           {:5}", size_of::<Transmit>());

    const N: usize = 10_000;
    let mut rng = SmallRng::seed_from_u64(1);
    let mut nodes: Vec<Dht> = Vec::with_capacity(N);
    let s0 = snap();
    for i in 0..N {
        nodes.push(Dht::new(
            Id::random(&mut rng),
            sim_config(),
            i as u64,
            Time(0),
        ));
    }
    let s1 = snap();
    let (b, k, m) = per(s1, s0, N);
    println!("empty node heap: {b:.0} B in {k:.1} blocks ({m:.0} B with malloc overhead)");
    nodes.clear();
    nodes.shrink_to_fit();

    let mut rng = SmallRng::seed_from_u64(2);
    let mut nodes: Vec<Dht> = Vec::with_capacity(N);
    let s0 = snap();
    for i in 0..N {
        nodes.push(perfect_node(i as u32, &mut rng));
    }
    let s1 = snap();
    let (b, k, m) = per(s1, s0, N);
    let entries = nodes[0].routing_table().len();
    let buckets = nodes[0].routing_table().buckets().len();
    println!(
        "perfect node ({entries} entries, {buckets} buckets) heap: {b:.0} B in {k:.1} blocks \
         ({m:.0} B with malloc overhead)"
    );
    let (vb, ve, vr) = table_heap(nodes[0].routing_table());
    println!(
        "  of which buckets {vb} B (their entries inline), entries elsewhere {ve} B, \
         replacements {vr} B"
    );
    for (i, d) in nodes.iter_mut().enumerate() {
        go_online(d, Time(900_000 + i as u64 % 1000));
    }
    let s2 = snap();
    let (b2, k2, m2) = per(s2, s0, N);
    println!("after going online: {b2:.0} B in {k2:.1} blocks ({m2:.0} B with malloc overhead)");
    let total = size_of::<Dht>() as f64 + m2;
    println!("per node, struct + heap + malloc overhead: {total:.0} B");
    assert_eq!(entries, PERFECT.iter().sum::<usize>());
    // The simulator issue's budget: at most 6 KB per node.
    assert!(
        total <= 6_000.0,
        "a perfect node takes {total:.0} B, over 6,000"
    );
}
