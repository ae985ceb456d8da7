//! The sans-IO Mainline DHT node.
//!
//! [`Dht`] owns the routing table, outstanding queries, lookups and the peer store. It never
//! touches a socket, a clock or a global RNG: the driver hands it the time and the datagrams,
//! and collects datagrams to send ([`Dht::poll_transmit`]), the next wake-up
//! ([`Dht::poll_timeout`]) and results ([`Dht::poll_event`]). The tokio driver (`net`) and the
//! simulator (`sim`) run this same code.

pub mod bep42;
pub mod entropy;
pub mod lookup;
pub mod martian;
mod node;
pub mod ratelimit;
pub mod routing;
pub mod rpc;
pub mod store;
pub mod time;

pub use bep42::Bep42Mode;
pub use entropy::{Entropy, EntropyError};
pub use lookup::{AnnounceSpec, LookupId, LookupKind, LookupStats};
pub use martian::PrivateNodes;
pub use node::{Config, Dht, Event, NodeLists, Stats, Transmit, CLIENT_VERSION};
pub use ratelimit::{RateLimiter, RateLimits, TokenBucket};
pub use routing::{Insert, NodeState, RoutingTable, TimeoutOutcome};
pub use rpc::Purpose;
pub use store::{PeerStore, StoreFull, StoreLimits, Stored, Tokens};
pub use time::Time;

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod lookup_tests;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
