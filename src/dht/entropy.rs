//! Where a node's randomness comes from, kept in separate streams: the fast RNG whose outputs
//! go on the wire (refresh targets, sampled peers), and two secret keys drawn from a CSPRNG of
//! their own, so no amount of watching our traffic predicts the tokens we accept or the
//! transaction ids of our next queries. Production nodes take both from the OS; the simulator and the tests
//! inject deterministic entropy so runs repeat exactly.

use rand::rngs::OsRng;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// The generator of a node's wire-visible randomness: xoshiro256++ by name, not
/// `rand::rngs::SmallRng`, whose algorithm rand may change between versions or platforms, so
/// a seed gives the same simulated network everywhere. (`SmallRng` is the same algorithm on
/// 64-bit targets with rand 0.8 but expands a `u64` seed differently, so seeded streams
/// changed with the switch.)
pub type WireRng = rand_xoshiro::Xoshiro256PlusPlus;

/// The OS could not give us random bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct EntropyError(#[from] rand::Error);

/// The randomness a [`crate::dht::Dht`] starts from.
pub struct Entropy {
    /// Seeds the RNG whose outputs are visible to other nodes.
    pub(crate) wire: WireRng,
    /// The write-token key; never derived from `wire`.
    pub(crate) token_key: [u8; 20],
    /// The transaction-id key ([`crate::dht::rpc`]); never derived from `wire`.
    pub(crate) tid_key: [u8; 16],
}

impl Entropy {
    /// Both streams from the operating system (`getrandom`): what every real node uses.
    pub fn from_os() -> Result<Entropy, EntropyError> {
        let mut wire = [0u8; 32];
        OsRng.try_fill_bytes(&mut wire)?;
        let mut token_key = [0u8; 20];
        OsRng.try_fill_bytes(&mut token_key)?;
        let mut tid_key = [0u8; 16];
        OsRng.try_fill_bytes(&mut tid_key)?;
        Ok(Entropy {
            wire: WireRng::from_seed(wire),
            token_key,
            tid_key,
        })
    }

    /// Deterministic entropy from `seed`, for the simulator and tests: the wire stream is
    /// [`WireRng`] seeded with `seed`, the keys come from ChaCha12 seeded independently of
    /// it.
    pub fn from_seed(seed: u64) -> Entropy {
        let mut secret = secret_stream(seed);
        Entropy {
            wire: WireRng::seed_from_u64(seed),
            token_key: secret.gen(),
            tid_key: secret.gen(),
        }
    }

    /// Deterministic entropy with the token key given apart from the wire seed (tests that
    /// show the two streams are independent).
    pub fn with_token_key(seed: u64, token_key: [u8; 20]) -> Entropy {
        Entropy {
            token_key,
            ..Entropy::from_seed(seed)
        }
    }
}

/// The secret keys' deterministic source for `seed`, apart from the wire stream: ChaCha12 by
/// name (what rand 0.8's `StdRng` is, without its "may change" caveat).
fn secret_stream(seed: u64) -> ChaCha12Rng {
    ChaCha12Rng::seed_from_u64(seed ^ 0x7e4e_5ec7_7e4e_5ec7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_entropy_differs_between_nodes() {
        let (a, b) = (Entropy::from_os(), Entropy::from_os());
        let (Ok(mut a), Ok(mut b)) = (a, b) else {
            panic!("no OS entropy on this machine");
        };
        assert_ne!(a.token_key, b.token_key);
        assert_ne!(a.wire.gen::<u64>(), b.wire.gen::<u64>());
    }

    #[test]
    fn seeded_entropy_repeats_and_the_key_is_not_the_wire_stream() {
        let (mut a, mut b) = (Entropy::from_seed(5), Entropy::from_seed(5));
        assert_eq!(a.token_key, b.token_key);
        assert_eq!(a.wire.gen::<u64>(), b.wire.gen::<u64>());
        // The key is not what the wire RNG of the same seed would have produced.
        let mut wire = WireRng::seed_from_u64(5);
        let leaked: [u8; 20] = wire.gen();
        assert_ne!(a.token_key, leaked);
    }
}
