//! BEP 11 peer exchange (`ut_pex`): peers tell each other whom they are connected to.
//!
//! A `ut_pex` message is the payload of an Extended message under the id the receiver assigned
//! to [`UT_PEX`] in its extension handshake. It is a bencoded dictionary of compact address
//! lists: `added` / `dropped` (IPv4, 6 bytes each: address + big-endian port), `added6` /
//! `dropped6` (IPv6, 18 bytes each), and `added.f` / `added6.f` with one [`PexFlags`] byte per
//! added peer.
//!
//! [`PexMessage::decode`] turns such a payload into typed addresses, bounded: the payload size
//! and nesting are capped before parsing, at most [`MAX_PEX_ENTRIES`] added and dropped peers
//! are kept per address family, and useless entries (port 0, unspecified address, repeats) are
//! dropped. [`PexSender`] is the sans-IO per-connection state that decides *what* to send and
//! *when* (the caller passes the clock), honouring BEP 11's one message per minute and 50 + 50
//! entries per message.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bt_bencode::Value;
use thiserror::Error;

use super::extension::{parse_value, put_bytes, ExtensionError};

/// Name of the extension in the extension handshake's `m` dictionary.
pub const UT_PEX: &str = "ut_pex";

/// BEP 11's cap on added (and, separately, dropped) peers per message. Decoding keeps at most
/// this many of each per address family; [`PexSender`] sends at most this many of each.
pub const MAX_PEX_ENTRIES: usize = 50;

/// Largest `ut_pex` payload we parse. A full message (50 + 50 peers of each family, with
/// flags) is about 2.6 KB; generous senders that list more still fit comfortably.
pub const MAX_PEX_PAYLOAD: usize = 16 * 1024;

/// Minimum time between two PEX messages to the same peer (BEP 11: at most one per minute).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);

/// Compact IPv4 peer length: 4 address bytes + 2 port bytes.
const V4_LEN: usize = 6;
/// Compact IPv6 peer length: 16 address bytes + 2 port bytes.
const V6_LEN: usize = 18;

/// Why a `ut_pex` payload was rejected. The usual reaction is to ignore the message (or, for
/// repeated offences, the peer's PEX); none of these need the connection dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PexError {
    /// The payload exceeds [`MAX_PEX_PAYLOAD`]; refused before parsing.
    #[error("ut_pex payload of {len} bytes exceeds {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The payload is not well-formed bencode, or nests too deep.
    #[error("malformed ut_pex bencode: {0}")]
    Bencode(#[from] ExtensionError),
    /// The payload is valid bencode but not a dictionary.
    #[error("ut_pex payload is not a dictionary")]
    NotADict,
    /// A compact peer list whose length is not a multiple of its entry size.
    #[error("ut_pex {key} is {len} bytes, not a multiple of {entry}")]
    BadCompactLength {
        /// The key (`added`, `dropped`, `added6` or `dropped6`).
        key: &'static str,
        /// The list's byte length.
        len: usize,
        /// The entry size (6 or 18).
        entry: usize,
    },
}

/// The per-peer flag byte of `added.f` / `added6.f`: what the sender knows about that peer.
///
/// Kept raw so unknown bits survive a round trip; use the named constants and accessors rather
/// than bit arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// No flag set (also what a missing `added.f` byte means).
    pub const NONE: PexFlags = PexFlags(0);
    /// 0x01: the peer prefers encrypted connections.
    pub const PREFERS_ENCRYPTION: PexFlags = PexFlags(0x01);
    /// 0x02: the peer is a seed / upload-only (no point connecting to it when seeding).
    pub const SEED: PexFlags = PexFlags(0x02);
    /// 0x04: the peer supports uTP.
    pub const UTP: PexFlags = PexFlags(0x04);
    /// 0x08: the peer supports the `ut_holepunch` extension.
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// 0x10: the sender reached the peer by an outgoing connection, so it is connectable.
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set (`on`) or cleared (`!on`).
    #[must_use]
    pub fn with(self, other: PexFlags, on: bool) -> PexFlags {
        if on {
            PexFlags(self.0 | other.0)
        } else {
            PexFlags(self.0 & !other.0)
        }
    }

    /// Whether the peer prefers encryption (0x01).
    pub fn prefers_encryption(self) -> bool {
        self.contains(Self::PREFERS_ENCRYPTION)
    }

    /// Whether the peer is a seed / upload-only (0x02).
    pub fn is_seed(self) -> bool {
        self.contains(Self::SEED)
    }

    /// Whether the peer supports uTP (0x04).
    pub fn supports_utp(self) -> bool {
        self.contains(Self::UTP)
    }

    /// Whether the peer supports holepunching (0x08).
    pub fn supports_holepunch(self) -> bool {
        self.contains(Self::HOLEPUNCH)
    }

    /// Whether the peer accepted an outgoing connection, i.e. is reachable (0x10).
    pub fn is_reachable(self) -> bool {
        self.contains(Self::REACHABLE)
    }
}

impl std::ops::BitOr for PexFlags {
    type Output = PexFlags;

    fn bitor(self, rhs: PexFlags) -> PexFlags {
        PexFlags(self.0 | rhs.0)
    }
}

/// One `ut_pex` message: peers the sender connected to and disconnected from since its last
/// message. IPv4 and IPv6 peers share each list; encoding splits them by family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Newly connected peers with what the sender knows about them.
    pub added: Vec<(SocketAddr, PexFlags)>,
    /// Peers the sender is no longer connected to.
    pub dropped: Vec<SocketAddr>,
}

impl PexMessage {
    /// Whether the message lists no peer at all (nothing worth sending).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Decodes a `ut_pex` payload.
    ///
    /// Refuses payloads over [`MAX_PEX_PAYLOAD`], malformed or over-nested bencode, a
    /// non-dictionary root, and compact lists whose length is not a multiple of 6 (IPv4) or
    /// 18 (IPv6). Tolerates what BEP 11 peers actually send: unknown keys, known keys of the
    /// wrong type (ignored), a missing or short `added.f` (missing flags read as
    /// [`PexFlags::NONE`]) and trailing bytes after the dictionary. Keeps at most
    /// [`MAX_PEX_ENTRIES`] added and dropped peers per family (the rest are ignored), and
    /// skips entries with port 0 or an unspecified address and repeats within a list.
    pub fn decode(payload: &[u8]) -> Result<PexMessage, PexError> {
        if payload.len() > MAX_PEX_PAYLOAD {
            return Err(PexError::TooLarge {
                len: payload.len(),
                max: MAX_PEX_PAYLOAD,
            });
        }
        let root = parse_value(payload)?;
        let dict = root.as_dict().ok_or(PexError::NotADict)?;
        let bytes = |key: &str| match dict.get(key.as_bytes()) {
            Some(Value::ByteStr(b)) => b.as_slice(),
            _ => &[],
        };
        let mut msg = PexMessage::default();
        for family in [Family::V4, Family::V6] {
            let (added_key, flags_key, dropped_key) = family.keys();
            let flags = bytes(flags_key);
            let mut added = Vec::new();
            for (i, addr) in compact_peers(family, added_key, bytes(added_key))?.enumerate() {
                if added.len() >= MAX_PEX_ENTRIES {
                    break;
                }
                if useful(&addr) && !added.iter().any(|(a, _)| *a == addr) {
                    let flag = flags.get(i).copied().map_or(PexFlags::NONE, PexFlags);
                    added.push((addr, flag));
                }
            }
            let mut dropped = Vec::new();
            for addr in compact_peers(family, dropped_key, bytes(dropped_key))? {
                if dropped.len() >= MAX_PEX_ENTRIES {
                    break;
                }
                if useful(&addr) && !dropped.contains(&addr) {
                    dropped.push(addr);
                }
            }
            msg.added.extend(added);
            msg.dropped.extend(dropped);
        }
        Ok(msg)
    }

    /// Appends the bencoded payload to `out`: a dictionary with all six keys in sorted order
    /// (`added`, `added.f`, `added6`, `added6.f`, `dropped`, `dropped6`; empty lists included,
    /// as libtorrent sends them), each list in the order of [`PexMessage::added`] /
    /// [`PexMessage::dropped`] within its family.
    ///
    /// Writes every entry it is given; keeping within [`MAX_PEX_ENTRIES`] is the sender's job
    /// ([`PexSender`] does).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut added4 = Vec::new();
        let mut flags4 = Vec::new();
        let mut added6 = Vec::new();
        let mut flags6 = Vec::new();
        for (addr, flags) in &self.added {
            let (list, flag_bytes) = if addr.is_ipv4() {
                (&mut added4, &mut flags4)
            } else {
                (&mut added6, &mut flags6)
            };
            put_compact(list, addr);
            flag_bytes.push(flags.0);
        }
        let mut dropped4 = Vec::new();
        let mut dropped6 = Vec::new();
        for addr in &self.dropped {
            let list = if addr.is_ipv4() {
                &mut dropped4
            } else {
                &mut dropped6
            };
            put_compact(list, addr);
        }
        out.push(b'd');
        for (key, value) in [
            (&b"added"[..], &added4),
            (b"added.f", &flags4),
            (b"added6", &added6),
            (b"added6.f", &flags6),
            (b"dropped", &dropped4),
            (b"dropped6", &dropped6),
        ] {
            put_bytes(out, key);
            put_bytes(out, value);
        }
        out.push(b'e');
    }
}

/// IPv4 or IPv6: which keys and entry size a compact list uses.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The (added, flags, dropped) keys of this family.
    fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::V4 => ("added", "added.f", "dropped"),
            Family::V6 => ("added6", "added6.f", "dropped6"),
        }
    }
}

/// The addresses of a compact peer list, or an error if its length is not a whole number of
/// entries. Lazy, so only the entries that will be kept are turned into addresses.
fn compact_peers<'a>(
    family: Family,
    key: &'static str,
    bytes: &'a [u8],
) -> Result<Box<dyn Iterator<Item = SocketAddr> + 'a>, PexError> {
    let bad = |entry| PexError::BadCompactLength {
        key,
        len: bytes.len(),
        entry,
    };
    match family {
        Family::V4 => {
            let (entries, rest) = bytes.as_chunks::<V4_LEN>();
            if !rest.is_empty() {
                return Err(bad(V4_LEN));
            }
            Ok(Box::new(entries.iter().map(|&[a, b, c, d, p0, p1]| {
                SocketAddr::from(([a, b, c, d], u16::from_be_bytes([p0, p1])))
            })))
        }
        Family::V6 => {
            let (entries, rest) = bytes.as_chunks::<V6_LEN>();
            if !rest.is_empty() {
                return Err(bad(V6_LEN));
            }
            Ok(Box::new(entries.iter().map(|&[ip @ .., p0, p1]| {
                SocketAddr::from((Ipv6Addr::from(ip), u16::from_be_bytes([p0, p1])))
            })))
        }
    }
}

/// Appends the compact form of `addr` (address bytes, then the big-endian port).
fn put_compact(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Whether an address could be connected to at all (port 0 and `0.0.0.0` / `::` cannot).
fn useful(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

/// Per-connection PEX sender state: what this peer has been told, and when.
///
/// Sans-IO: the caller passes the current time and its current list of connected peers to
/// [`PexSender::poll`] (e.g. on every tick) and sends whatever message comes back. The first
/// message may go out immediately; later ones at most once per [`PEX_INTERVAL`], each with at
/// most [`MAX_PEX_ENTRIES`] added and as many dropped peers — what does not fit goes out in
/// later messages.
#[derive(Clone, Debug, Default)]
pub struct PexSender {
    /// Peers we told this peer about (added and not dropped since), with the flags we sent.
    sent: BTreeMap<SocketAddr, PexFlags>,
    /// When the last message was produced; `None` before the first.
    last_sent: Option<Instant>,
}

impl PexSender {
    /// A sender that has told the peer nothing yet.
    pub fn new() -> PexSender {
        PexSender::default()
    }

    /// The next message for this peer, if one is due and anything changed.
    ///
    /// `connected` is every peer we are connected to now (the caller leaves out the receiving
    /// peer itself; nothing else is filtered, repeats are ignored). `added` lists peers in
    /// `connected` we have not announced yet, in `connected` order; `dropped` lists announced
    /// peers no longer in `connected`, in address order. Returns `None` — and leaves the
    /// state untouched — while [`PEX_INTERVAL`] has not passed since the last message, or
    /// when nothing changed. A peer whose flags change while it stays connected is not
    /// re-announced.
    pub fn poll(
        &mut self,
        now: Instant,
        connected: &[(SocketAddr, PexFlags)],
    ) -> Option<PexMessage> {
        if let Some(last) = self.last_sent {
            if now.saturating_duration_since(last) < PEX_INTERVAL {
                return None;
            }
        }
        let mut msg = PexMessage::default();
        for (addr, flags) in connected {
            if msg.added.len() >= MAX_PEX_ENTRIES {
                break;
            }
            if !self.sent.contains_key(addr) && !msg.added.iter().any(|(a, _)| a == addr) {
                msg.added.push((*addr, *flags));
            }
        }
        msg.dropped = self
            .sent
            .keys()
            .filter(|addr| !connected.iter().any(|(a, _)| a == *addr))
            .take(MAX_PEX_ENTRIES)
            .copied()
            .collect();
        if msg.is_empty() {
            return None;
        }
        for (addr, flags) in &msg.added {
            self.sent.insert(*addr, *flags);
        }
        for addr in &msg.dropped {
            self.sent.remove(addr);
        }
        self.last_sent = Some(now);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    fn v6(last: u16, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), port))
    }

    fn enc(m: &PexMessage) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out);
        out
    }

    fn sample() -> PexMessage {
        PexMessage {
            added: vec![
                (v4(1, 6881), PexFlags::SEED | PexFlags::REACHABLE),
                (v6(1, 51413), PexFlags::UTP),
                (v4(2, 80), PexFlags::NONE),
            ],
            dropped: vec![v6(9, 1), v4(3, 6882)],
        }
    }

    #[test]
    fn encodes_sorted_keys_split_by_family() {
        let bytes = enc(&sample());
        let mut want = b"d5:added12:".to_vec();
        want.extend_from_slice(&[10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0, 80]);
        want.extend_from_slice(b"7:added.f2:\x12\x00");
        want.extend_from_slice(b"6:added618:");
        want.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        want.extend_from_slice(&51413u16.to_be_bytes());
        want.extend_from_slice(b"8:added6.f1:\x04");
        want.extend_from_slice(b"7:dropped6:");
        want.extend_from_slice(&[10, 0, 0, 3, 0x1A, 0xE2]);
        want.extend_from_slice(b"8:dropped618:");
        want.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets());
        want.extend_from_slice(&[0, 1]);
        want.push(b'e');
        assert_eq!(bytes, want);
        // bt_bencode agrees it is canonical bencode (sorted keys, no junk).
        let v: Value = bt_bencode::from_slice(&bytes).unwrap();
        assert_eq!(bt_bencode::to_vec(&v).unwrap(), bytes);
        assert_eq!(
            enc(&PexMessage::default()),
            b"d5:added0:7:added.f0:6:added60:8:added6.f0:7:dropped0:8:dropped60:e"
        );
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let back = PexMessage::decode(&enc(&m)).unwrap();
        // Decoding groups by family (IPv4 first); the sets are the same.
        assert_eq!(
            back.added,
            vec![m.added[0], m.added[2], m.added[1]],
            "added, IPv4 then IPv6"
        );
        assert_eq!(back.dropped, vec![m.dropped[1], m.dropped[0]]);
        assert_eq!(PexMessage::decode(&enc(&back)).unwrap(), back);
        assert!(PexMessage::decode(&enc(&PexMessage::default()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn flags_accessors() {
        let f = PexFlags(0x1F);
        assert!(f.prefers_encryption() && f.is_seed() && f.supports_utp());
        assert!(f.supports_holepunch() && f.is_reachable());
        let none = PexFlags::NONE;
        assert!(!none.prefers_encryption() && !none.is_seed() && !none.supports_utp());
        assert!(!none.supports_holepunch() && !none.is_reachable());
        assert_eq!(none.with(PexFlags::SEED, true), PexFlags(0x02));
        assert_eq!(f.with(PexFlags::SEED, false), PexFlags(0x1D));
        assert!(f.contains(PexFlags::UTP | PexFlags::HOLEPUNCH));
        assert!(!PexFlags::UTP.contains(PexFlags::UTP | PexFlags::SEED));
        // Unknown bits survive a round trip.
        let m = PexMessage {
            added: vec![(v4(1, 1), PexFlags(0xE0))],
            dropped: vec![],
        };
        assert_eq!(PexMessage::decode(&enc(&m)).unwrap(), m);
    }

    #[test]
    fn tolerates_unknown_keys_wrong_types_and_missing_flags() {
        let p = b"d1:ai1e5:added12:\x0a\x00\x00\x01\x00\x50\x0a\x00\x00\x02\x00\x51\
            7:added.f1:\x027:dropped3:abc6:added6i5e1:zd1:xleee";
        // `dropped` has the wrong length: that is an error even with junk around it.
        assert!(matches!(
            PexMessage::decode(p),
            Err(PexError::BadCompactLength {
                key: "dropped",
                len: 3,
                entry: 6
            })
        ));
        let p = b"d1:ai1e5:added12:\x0a\x00\x00\x01\x00\x50\x0a\x00\x00\x02\x00\x51\
            7:added.f1:\x027:droppedli1ee6:added6i5e1:zd1:xleeeTRAILING";
        let m = PexMessage::decode(p).unwrap();
        assert_eq!(
            m.added,
            vec![(v4(1, 80), PexFlags::SEED), (v4(2, 81), PexFlags::NONE)],
            "short added.f: the second peer has no flags"
        );
        assert!(m.dropped.is_empty(), "wrongly typed dropped is ignored");
        // No added.f at all, and an over-long one.
        let m = PexMessage::decode(b"d5:added6:\x0a\x00\x00\x01\x00\x50e").unwrap();
        assert_eq!(m.added, vec![(v4(1, 80), PexFlags::NONE)]);
        let m = PexMessage::decode(b"d5:added6:\x0a\x00\x00\x01\x00\x507:added.f3:\x01\x02\x03e")
            .unwrap();
        assert_eq!(m.added, vec![(v4(1, 80), PexFlags::PREFERS_ENCRYPTION)]);
        assert_eq!(PexMessage::decode(b"de").unwrap(), PexMessage::default());
    }

    #[test]
    fn drops_useless_and_repeated_entries() {
        let m = PexMessage {
            added: vec![
                (v4(1, 0), PexFlags::SEED),
                (SocketAddr::from(([0, 0, 0, 0], 80)), PexFlags::NONE),
                (v4(2, 80), PexFlags::UTP),
                (v4(2, 80), PexFlags::SEED),
                (
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80)),
                    PexFlags::NONE,
                ),
                (v6(1, 0), PexFlags::NONE),
                (v6(1, 1), PexFlags::NONE),
            ],
            dropped: vec![v4(3, 0), v4(3, 1), v4(3, 1), v6(2, 0), v6(2, 2)],
        };
        let back = PexMessage::decode(&enc(&m)).unwrap();
        assert_eq!(
            back.added,
            vec![(v4(2, 80), PexFlags::UTP), (v6(1, 1), PexFlags::NONE)],
            "flags stay with their own entry after filtering"
        );
        assert_eq!(back.dropped, vec![v4(3, 1), v6(2, 2)]);
    }

    #[test]
    fn keeps_at_most_50_per_family_and_list() {
        let m = PexMessage {
            added: (0..120u16)
                .flat_map(|i| {
                    [
                        (v4(1, 1000 + i), PexFlags(1)),
                        (v6(1, 1000 + i), PexFlags(2)),
                    ]
                })
                .collect(),
            dropped: (0..70u16)
                .flat_map(|i| [v4(2, 1 + i), v6(2, 1 + i)])
                .collect(),
        };
        let bytes = enc(&m);
        assert!(bytes.len() <= MAX_PEX_PAYLOAD);
        let back = PexMessage::decode(&bytes).unwrap();
        let count = |v4: bool| back.added.iter().filter(|(a, _)| a.is_ipv4() == v4).count();
        assert_eq!((count(true), count(false)), (50, 50));
        assert_eq!(back.dropped.iter().filter(|a| a.is_ipv4()).count(), 50);
        assert_eq!(back.dropped.len(), 100);
        // The first 50 of each family are the ones kept, with their own flags.
        assert_eq!(back.added[0], (v4(1, 1000), PexFlags(1)));
        assert_eq!(back.added[49], (v4(1, 1049), PexFlags(1)));
        assert_eq!(back.added[50], (v6(1, 1000), PexFlags(2)));
        // Re-encoding what was kept round-trips exactly.
        assert_eq!(PexMessage::decode(&enc(&back)).unwrap(), back);
    }

    #[test]
    fn rejects_malformed() {
        for (payload, key, len, entry) in [
            (&b"d5:added5:abcdee"[..], "added", 5, 6),
            (b"d7:dropped7:abcdefge", "dropped", 7, 6),
            (b"d6:added66:abcdefe", "added6", 6, 18),
            (b"d8:dropped619:abcdefghijklmnopqrse", "dropped6", 19, 18),
        ] {
            assert_eq!(
                PexMessage::decode(payload),
                Err(PexError::BadCompactLength { key, len, entry }),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(PexMessage::decode(b"li1ee"), Err(PexError::NotADict));
        assert_eq!(PexMessage::decode(b"4:spam"), Err(PexError::NotADict));
        assert!(matches!(
            PexMessage::decode(b""),
            Err(PexError::Bencode(ExtensionError::Malformed(_)))
        ));
        assert!(matches!(
            PexMessage::decode(b"d5:added6:abc"),
            Err(PexError::Bencode(_))
        ));
        let mut deep = b"d1:x".to_vec();
        deep.extend(std::iter::repeat_n(b'l', 64));
        deep.extend(std::iter::repeat_n(b'e', 64));
        deep.push(b'e');
        assert!(matches!(
            PexMessage::decode(&deep),
            Err(PexError::Bencode(ExtensionError::Malformed(_)))
        ));
        let mut big = b"d1:x16384:".to_vec();
        big.extend(std::iter::repeat_n(0u8, 16384));
        big.push(b'e');
        assert_eq!(
            PexMessage::decode(&big),
            Err(PexError::TooLarge {
                len: big.len(),
                max: MAX_PEX_PAYLOAD
            })
        );
        // Exactly at the cap is parsed.
        // "d1:x" + "16373:" + 16373 bytes + "e" = 16384.
        let mut at_cap = b"d1:x16373:".to_vec();
        at_cap.extend(std::iter::repeat_n(0u8, 16373));
        at_cap.push(b'e');
        assert_eq!(at_cap.len(), MAX_PEX_PAYLOAD);
        assert_eq!(PexMessage::decode(&at_cap), Ok(PexMessage::default()));
    }

    fn peers(range: std::ops::Range<u16>) -> Vec<(SocketAddr, PexFlags)> {
        range.map(|i| (v4(7, 1 + i), PexFlags::REACHABLE)).collect()
    }

    #[test]
    fn sender_diffs_and_rate_limits() {
        let t0 = Instant::now();
        let mut s = PexSender::new();
        assert_eq!(s.poll(t0, &[]), None, "nothing to say");
        // The first real message goes out at once, even right after an empty poll.
        let a = peers(0..3);
        let m = s.poll(t0, &a).unwrap();
        assert_eq!(m.added, a);
        assert!(m.dropped.is_empty());
        // A change within the minute waits.
        let b = vec![a[1], a[2], (v6(1, 9), PexFlags::UTP)];
        assert_eq!(s.poll(t0 + Duration::from_secs(1), &b), None);
        assert_eq!(
            s.poll(t0 + PEX_INTERVAL - Duration::from_millis(1), &b),
            None
        );
        // Then goes out with exactly the diff.
        let m = s.poll(t0 + PEX_INTERVAL, &b).unwrap();
        assert_eq!(m.added, vec![(v6(1, 9), PexFlags::UTP)]);
        assert_eq!(m.dropped, vec![a[0].0]);
        // Nothing changed: no message, even when one would be allowed.
        assert_eq!(s.poll(t0 + 10 * PEX_INTERVAL, &b), None);
        // A flag change alone is not news; repeats in `connected` are ignored.
        let b2 = vec![(b[0].0, PexFlags::SEED), b[1], b[2], b[1]];
        assert_eq!(s.poll(t0 + 11 * PEX_INTERVAL, &b2), None);
        // A peer that left and came back within one interval shows as no change.
        let m = s.poll(t0 + 12 * PEX_INTERVAL, &[]).unwrap();
        assert_eq!(m.dropped.len(), 3);
        assert!(m.added.is_empty());
        let m = s.poll(t0 + 13 * PEX_INTERVAL, &a).unwrap();
        assert_eq!(m.added, a, "re-added after being dropped");
    }

    #[test]
    fn sender_caps_each_message_and_sends_the_rest_later() {
        let t0 = Instant::now();
        let mut s = PexSender::new();
        let all = peers(0..120);
        let m1 = s.poll(t0, &all).unwrap();
        assert_eq!(m1.added, all[..50]);
        let m2 = s.poll(t0 + PEX_INTERVAL, &all).unwrap();
        assert_eq!(m2.added, all[50..100]);
        let m3 = s.poll(t0 + 2 * PEX_INTERVAL, &all).unwrap();
        assert_eq!(m3.added, all[100..]);
        assert_eq!(s.poll(t0 + 3 * PEX_INTERVAL, &all), None);
        // All 120 leave, 60 new arrive: 50 + 50, then the rest.
        let new = (0..60u16)
            .map(|i| (v6(3, 1 + i), PexFlags::NONE))
            .collect::<Vec<_>>();
        let m4 = s.poll(t0 + 4 * PEX_INTERVAL, &new).unwrap();
        assert_eq!((m4.added.len(), m4.dropped.len()), (50, 50));
        assert_eq!(m4.added, new[..50]);
        let m5 = s.poll(t0 + 5 * PEX_INTERVAL, &new).unwrap();
        assert_eq!((m5.added.len(), m5.dropped.len()), (10, 50));
        let m6 = s.poll(t0 + 6 * PEX_INTERVAL, &new).unwrap();
        assert_eq!((m6.added.len(), m6.dropped.len()), (0, 20));
        assert_eq!(s.poll(t0 + 7 * PEX_INTERVAL, &new), None);
        // Every message the sender makes decodes to itself (by family order).
        for m in [m1, m4, m6] {
            let back = PexMessage::decode(&enc(&m)).unwrap();
            assert_eq!(back.added.len(), m.added.len());
            assert_eq!(back.dropped.len(), m.dropped.len());
        }
    }

    #[test]
    fn sender_tolerates_a_clock_that_goes_backwards() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut s = PexSender::new();
        assert!(s.poll(t0, &peers(0..1)).is_some());
        assert_eq!(s.poll(t0 - Duration::from_secs(30), &peers(0..2)), None);
        assert!(s.poll(t0 + PEX_INTERVAL, &peers(0..2)).is_some());
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = PexMessage::decode(&bytes);
            let mut d = b"d5:added".to_vec();
            d.extend_from_slice(&bytes);
            if let Ok(m) = PexMessage::decode(&d) {
                proptest::prop_assert_eq!(PexMessage::decode(&enc(&m)), Ok(m));
            }
        }
    }
}
