//! dhtnode: a trackerless BitTorrent node built around a sans-IO Mainline DHT core.
//!
//! Layers (a lower one never imports a higher one): `id` → `krpc` → `dht` → `net`; the
//! simulator (`sim`) drives `dht` directly with a virtual clock.

pub mod dht;
pub mod engine;
mod error_text;
pub mod id;
pub mod krpc;
pub mod net;
pub mod session;
pub mod sim;
mod sync;
pub mod torrent;
pub mod tracker;
pub mod wire;
