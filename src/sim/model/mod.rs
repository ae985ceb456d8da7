//! The network model: where nodes live ([`addr`], spread over the public space by
//! [`spread`]), how long datagrams take ([`latency`]),
//! and which ones a NAT drops ([`nat`]). Loss is a single probability, drawn in the event
//! loop. Called `model` to keep it apart from the crate's `net` (real sockets).

pub mod addr;
pub mod latency;
pub mod nat;
pub mod spread;

pub use addr::{addr_of, bep42_valid, node_of, node_of_ip, Addrs, PORT};
pub use latency::Latency;
pub use nat::Nat;

/// SplitMix64: a fast, well-mixed hash of one word. Per-pair and per-node values (latency,
/// attacker roles, core seeds) derive from it, so they need no table and no RNG draw.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
