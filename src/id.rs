//! 160-bit identifiers: node ids and info-hashes share one keyspace, so one type serves both.
//!
//! Kademlia's whole geometry lives here: XOR distance, the bucket a distance falls into, and
//! random ids inside a bucket's range (used to refresh a bucket with a lookup).

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Length in bytes of an id (SHA-1 sized).
pub const ID_LEN: usize = 20;

/// A 160-bit identifier: a DHT node id or a torrent info-hash.
///
/// Ordered as a big-endian integer, so sorting distances sorts by closeness.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id(pub [u8; ID_LEN]);

impl Id {
    /// The id as two big-endian integers (bytes 0..16, 16..20): comparing these compares
    /// the ids. The derived byte-wise order calls `memcmp` per comparison, which was ~5% of
    /// a simulation's time (lookups and `closest` sort by distance all the time).
    fn as_words(&self) -> (u128, u32) {
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, b0, b1, b2, b3] =
            self.0;
        (
            u128::from_be_bytes([
                a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
            ]),
            u32::from_be_bytes([b0, b1, b2, b3]),
        )
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        self.as_words().cmp(&other.as_words())
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// An info-hash is an id in the same keyspace; the alias documents intent at call sites.
pub type InfoHash = Id;

impl Id {
    /// The all-zero id; useful as a neutral element in tests.
    pub const ZERO: Id = Id([0; ID_LEN]);

    /// Builds an id from a slice, if and only if it has exactly 20 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Id> {
        <[u8; ID_LEN]>::try_from(bytes).ok().map(Id)
    }

    /// A uniformly random id drawn from the injected RNG (the core never uses a global RNG).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Id {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b[..]);
        Id(b)
    }

    /// XOR distance: the Kademlia metric. Smaller (as a big-endian integer) is closer.
    pub fn distance(&self, other: &Id) -> Id {
        let mut d = [0u8; ID_LEN];
        for (i, out) in d.iter_mut().enumerate() {
            *out = self.0[i] ^ other.0[i];
        }
        Id(d)
    }

    /// Number of leading bits `self` and `other` share (160 when equal).
    ///
    /// This is the index of the bucket `other` belongs to in a table centred on `self`:
    /// bucket `i` holds the ids that agree with ours on exactly the first `i` bits.
    pub fn common_prefix_len(&self, other: &Id) -> usize {
        for i in 0..ID_LEN {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        ID_LEN * 8
    }

    /// Value of bit `i` (0 = most significant).
    pub fn bit(&self, i: usize) -> bool {
        (self.0[i / 8] >> (7 - (i % 8))) & 1 == 1
    }

    /// A random id sharing exactly `prefix_len` leading bits with `self`: a target inside
    /// bucket `prefix_len` of a table centred on `self`. `prefix_len >= 160` gives `self`.
    pub fn random_in_bucket<R: Rng + ?Sized>(&self, prefix_len: usize, rng: &mut R) -> Id {
        if prefix_len >= ID_LEN * 8 {
            return *self;
        }
        let mut out = Id::random(rng);
        for i in 0..prefix_len {
            out.set_bit(i, self.bit(i));
        }
        // The bit right after the shared prefix must differ, or the id would be deeper.
        out.set_bit(prefix_len, !self.bit(prefix_len));
        out
    }

    fn set_bit(&mut self, i: usize, v: bool) {
        let mask = 1u8 << (7 - (i % 8));
        if v {
            self.0[i / 8] |= mask;
        } else {
            self.0[i / 8] &= !mask;
        }
    }

    /// Lower-case hex, the form users paste and tools print.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(ID_LEN * 2);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 40 hex characters (any case).
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != ID_LEN * 2 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; ID_LEN];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(Id(out))
    }

    /// Parses the 32-character base32 form used by old magnet links (any case).
    pub fn from_base32(s: &str) -> Option<Id> {
        if s.len() != 32 {
            return None;
        }
        let upper = s.to_ascii_uppercase();
        let bytes = data_encoding::BASE32_NOPAD.decode(upper.as_bytes()).ok()?;
        Id::from_slice(&bytes)
    }
}

/// Why a string is not an info-hash; the message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid info-hash {0:?}: expected 40 hex characters, 32 base32 characters, or a magnet link with xt=urn:btih:<hash>")]
pub struct ParseIdError(pub String);

impl FromStr for Id {
    type Err = ParseIdError;

    /// Accepts 40 hex or 32 base32 characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Id::from_hex(t)
            .or_else(|| Id::from_base32(t))
            .ok_or_else(|| ParseIdError(s.to_string()))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn order_is_the_byte_wise_order() {
        // The word-wise comparison must agree with comparing the bytes one by one, on
        // differences in every byte position and at the 16/4 split.
        let mut rng = StdRng::seed_from_u64(7);
        for pos in 0..ID_LEN {
            for _ in 0..50 {
                let a = Id::random(&mut rng);
                let mut b = a;
                b.0[pos] = rng.gen();
                assert_eq!(a.cmp(&b), a.0.cmp(&b.0), "{a} vs {b}");
                assert_eq!(b.cmp(&a), b.0.cmp(&a.0));
            }
        }
        assert_eq!(Id::ZERO.cmp(&Id::ZERO), std::cmp::Ordering::Equal);
    }

    #[test]
    fn distance_is_xor_and_symmetric() {
        let a = Id([0xff; 20]);
        let b = Id([0x0f; 20]);
        assert_eq!(a.distance(&b), Id([0xf0; 20]));
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a), Id::ZERO);
    }

    #[test]
    fn common_prefix_len_counts_leading_equal_bits() {
        let a = Id::ZERO;
        let mut b = Id::ZERO;
        assert_eq!(a.common_prefix_len(&b), 160);
        b.0[0] = 0x80;
        assert_eq!(a.common_prefix_len(&b), 0);
        b.0[0] = 0x01;
        assert_eq!(a.common_prefix_len(&b), 7);
        let mut c = Id::ZERO;
        c.0[19] = 1;
        assert_eq!(a.common_prefix_len(&c), 159);
    }

    #[test]
    fn random_in_bucket_lands_in_that_bucket() {
        let mut rng = StdRng::seed_from_u64(7);
        let me = Id::random(&mut rng);
        for p in 0..160 {
            let t = me.random_in_bucket(p, &mut rng);
            assert_eq!(me.common_prefix_len(&t), p, "prefix {p}");
        }
        assert_eq!(me.random_in_bucket(160, &mut rng), me);
    }

    #[test]
    fn hex_and_base32_parse() {
        let hex = "0123456789ABCDEF0123456789abcdef01234567";
        let id: Id = hex.parse().unwrap();
        assert_eq!(id.to_hex(), hex.to_lowercase());
        let b32 = data_encoding::BASE32_NOPAD.encode(&id.0);
        assert_eq!(b32.parse::<Id>().unwrap(), id);
        assert_eq!(b32.to_lowercase().parse::<Id>().unwrap(), id);
        assert!("xyz".parse::<Id>().is_err());
        assert!("0123456789abcdef0123456789abcdef0123456g"
            .parse::<Id>()
            .is_err());
        let err = "nope".parse::<Id>().unwrap_err().to_string();
        assert!(err.contains("40 hex"), "{err}");
    }
}
