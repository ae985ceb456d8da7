//! The BEP 10 extension-protocol handshake: the bencoded dictionary sent as Extended message 0.
//!
//! It tells the other side which extensions we speak and under which message ids (`m`), plus
//! some hints: client name (`v`), listen port (`p`), request queue depth (`reqq`), the size of
//! the info dictionary for `ut_metadata` (`metadata_size`) and the address the peer sees us at
//! (`yourip`) and, for a dual-stack peer (BEP 7), its IPv6 address (`ipv6`). Decoding is lenient where BEP 10 asks for it — unknown keys and wrongly typed
//! optional fields are ignored — but strict where it protects us: the nesting depth is capped
//! before parsing, negative numbers are rejected and `metadata_size` is bounded.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bt_bencode::value::Number;
use bt_bencode::Value;
use thiserror::Error;

use super::bencode_scan::{bencode_value_len, ScanError};

/// Default cap on an advertised `metadata_size` (16 MiB): larger info dictionaries are
/// refused rather than fetched.
pub const DEFAULT_MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;

/// Nesting cap for extension payloads; real handshakes nest two levels (`m` inside the root).
pub const MAX_EXTENSION_DEPTH: usize = 32;

/// Why an extension handshake was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtensionError {
    /// The payload is not well-formed bencode (or nests too deep).
    #[error("malformed bencode")]
    Malformed(#[from] ScanError),
    /// `bt_bencode` refused the value (kept as text so the error stays `Clone + Eq`).
    #[error("bencode decode error: {0}")]
    Bencode(String),
    /// The payload is valid bencode but not a dictionary.
    #[error("extension handshake is not a dictionary")]
    NotADict,
    /// A numeric field that must be non-negative is negative.
    #[error("negative value for {key}")]
    Negative {
        /// The offending key (for `m` entries, the extension name).
        key: String,
    },
    /// The advertised `metadata_size` exceeds our cap.
    #[error("metadata_size {size} exceeds limit {max}")]
    MetadataTooLarge {
        /// Advertised size.
        size: u64,
        /// Our cap.
        max: u64,
    },
}

/// A decoded (or to-be-sent) BEP 10 extension handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtensionHandshake {
    /// Extension name → message id the *sender* wants to receive it under. Id 0 means the
    /// extension is disabled (meaningful in a repeated handshake). Non-UTF-8 names and ids
    /// above 255 are ignored when decoding.
    pub m: BTreeMap<String, u8>,
    /// Client name and version, for display only.
    pub v: Option<String>,
    /// The sender's TCP listen port, so an incoming connection can be recorded as a peer.
    pub p: Option<u16>,
    /// How many outstanding requests the sender accepts.
    pub reqq: Option<u32>,
    /// Size in bytes of the info dictionary (needed to fetch it with `ut_metadata`).
    pub metadata_size: Option<u64>,
    /// Our address as seen by the sender (4 or 16 bytes compact on the wire).
    pub yourip: Option<IpAddr>,
    /// The sender's IPv6 address (BEP 7 / BEP 10 `ipv6`, 16 bytes on the wire): a peer
    /// met over IPv4 may be dialed there too. Any other length is ignored.
    pub ipv6: Option<Ipv6Addr>,
}

impl ExtensionHandshake {
    /// The id the sender assigned to extension `name`, if enabled (non-zero).
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|&id| id != 0)
    }

    /// Encodes as a bencoded dictionary (the payload of Extended message 0).
    ///
    /// Written by hand (keys in sorted order, as bencode requires) because it cannot fail.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(b'd');
        if let Some(ip) = self.ipv6 {
            put_bytes(&mut out, b"ipv6");
            put_bytes(&mut out, &ip.octets());
        }
        put_bytes(&mut out, b"m");
        out.push(b'd');
        for (name, id) in &self.m {
            put_bytes(&mut out, name.as_bytes());
            put_int(&mut out, u64::from(*id));
        }
        out.push(b'e');
        if let Some(size) = self.metadata_size {
            put_bytes(&mut out, b"metadata_size");
            put_int(&mut out, size);
        }
        if let Some(p) = self.p {
            put_bytes(&mut out, b"p");
            put_int(&mut out, u64::from(p));
        }
        if let Some(reqq) = self.reqq {
            put_bytes(&mut out, b"reqq");
            put_int(&mut out, u64::from(reqq));
        }
        if let Some(v) = &self.v {
            put_bytes(&mut out, b"v");
            put_bytes(&mut out, v.as_bytes());
        }
        if let Some(ip) = self.yourip {
            put_bytes(&mut out, b"yourip");
            match ip {
                IpAddr::V4(a) => put_bytes(&mut out, &a.octets()),
                IpAddr::V6(a) => put_bytes(&mut out, &a.octets()),
            }
        }
        out.push(b'e');
        out
    }

    /// Decodes an extension handshake payload.
    ///
    /// Trailing bytes after the dictionary are ignored. Fails on malformed or over-nested
    /// bencode, a non-dictionary root, negative numbers in known fields or `m`, and a
    /// `metadata_size` above `max_metadata_size`.
    pub fn decode(payload: &[u8], max_metadata_size: u64) -> Result<Self, ExtensionError> {
        let root = parse_value(payload)?;
        let dict = root.as_dict().ok_or(ExtensionError::NotADict)?;
        let mut hs = ExtensionHandshake::default();

        if let Some(Value::Dict(m)) = dict.get(&b"m"[..]) {
            for (name, value) in m {
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                if let Some(id) = non_negative(value, name)? {
                    if let Ok(id) = u8::try_from(id) {
                        hs.m.insert(name.to_string(), id);
                    }
                }
            }
        }
        if let Some(Value::ByteStr(v)) = dict.get(&b"v"[..]) {
            hs.v = Some(String::from_utf8_lossy(v).into_owned());
        }
        if let Some(value) = dict.get(&b"p"[..]) {
            hs.p = non_negative(value, "p")?
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0);
        }
        if let Some(value) = dict.get(&b"reqq"[..]) {
            hs.reqq = non_negative(value, "reqq")?.and_then(|r| u32::try_from(r).ok());
        }
        if let Some(value) = dict.get(&b"metadata_size"[..]) {
            if let Some(size) = non_negative(value, "metadata_size")? {
                if size > max_metadata_size {
                    return Err(ExtensionError::MetadataTooLarge {
                        size,
                        max: max_metadata_size,
                    });
                }
                hs.metadata_size = Some(size);
            }
        }
        if let Some(Value::ByteStr(ip)) = dict.get(&b"yourip"[..]) {
            hs.yourip = compact_ip(ip);
        }
        if let Some(Value::ByteStr(ip)) = dict.get(&b"ipv6"[..]) {
            hs.ipv6 = <[u8; 16]>::try_from(ip.as_slice()).ok().map(Ipv6Addr::from);
        }
        Ok(hs)
    }
}

/// Scans (depth-capped) and parses the bencoded value at the start of `payload`.
///
/// Shared with `ut_metadata`, whose dictionaries have the same trust level.
pub(crate) fn parse_value(payload: &[u8]) -> Result<Value, ExtensionError> {
    let len = bencode_value_len(payload, MAX_EXTENSION_DEPTH)?;
    let bytes = payload.get(..len).ok_or(ScanError::Truncated)?;
    bt_bencode::from_slice(bytes).map_err(|e| ExtensionError::Bencode(e.to_string()))
}

/// Reads an integer field: `Ok(None)` if it is not an integer (ignored), an error if negative.
pub(crate) fn non_negative(value: &Value, key: &str) -> Result<Option<u64>, ExtensionError> {
    match value {
        Value::Int(Number::Unsigned(n)) => Ok(Some(*n)),
        Value::Int(Number::Signed(n)) => {
            u64::try_from(*n)
                .map(Some)
                .map_err(|_| ExtensionError::Negative {
                    key: key.to_string(),
                })
        }
        _ => Ok(None),
    }
}

/// A compact IPv4 (4 bytes) or IPv6 (16 bytes) address; other lengths are ignored.
fn compact_ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
}

/// Appends a bencoded byte string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Appends a bencoded non-negative integer.
pub(crate) fn put_int(out: &mut Vec<u8>, n: u64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ExtensionHandshake {
        let mut m = BTreeMap::new();
        m.insert("ut_metadata".to_string(), 3);
        m.insert("ut_pex".to_string(), 1);
        m.insert("lt_donthave".to_string(), 0);
        ExtensionHandshake {
            m,
            v: Some("dhtnode 0.1.0".to_string()),
            p: Some(6881),
            reqq: Some(250),
            metadata_size: Some(31_235),
            yourip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)),
        }
    }

    #[test]
    fn round_trip() {
        let hs = full();
        let bytes = hs.encode();
        assert_eq!(
            ExtensionHandshake::decode(&bytes, DEFAULT_MAX_METADATA_SIZE),
            Ok(hs.clone())
        );
        // bt_bencode agrees it is canonical bencode.
        let v: Value = bt_bencode::from_slice(&bytes).unwrap();
        assert_eq!(bt_bencode::to_vec(&v).unwrap(), bytes);
        assert_eq!(hs.extension_id("ut_metadata"), Some(3));
        assert_eq!(hs.extension_id("lt_donthave"), None);
        assert_eq!(hs.extension_id("nope"), None);

        let v6 = ExtensionHandshake {
            yourip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ..ExtensionHandshake::default()
        };
        assert_eq!(
            ExtensionHandshake::decode(&v6.encode(), DEFAULT_MAX_METADATA_SIZE),
            Ok(v6)
        );
        let empty = ExtensionHandshake::default();
        assert_eq!(empty.encode(), b"d1:mdee");
    }

    #[test]
    fn ipv6_key_is_sixteen_bytes_first_in_key_order() {
        let ip = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let hs = ExtensionHandshake {
            ipv6: Some(ip),
            ..ExtensionHandshake::default()
        };
        let mut want = b"d4:ipv616:".to_vec();
        want.extend_from_slice(&ip.octets());
        want.extend_from_slice(b"1:mdee");
        assert_eq!(hs.encode(), want);
        // What libtorrent sends beside other keys decodes; a 4-byte value is not IPv6.
        let got = ExtensionHandshake::decode(&want, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(got.ipv6, Some(ip));
        let short =
            ExtensionHandshake::decode(b"d4:ipv64:\x7f\0\0\x011:mdee", DEFAULT_MAX_METADATA_SIZE);
        assert_eq!(short.map(|h| h.ipv6), Ok(None));
    }

    #[test]
    fn tolerates_unknown_and_wrong_types() {
        let payload = b"d1:ai1e4:ipv6i6e1:md11:ut_metadata3:abc6:ut_pexi300e2:okli1eee\
            13:metadata_size3:big1:pi70000e4:reqq2:xx1:vi5e6:yourip3:abc1:zd1:xleee";
        let hs = ExtensionHandshake::decode(payload, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(hs, ExtensionHandshake::default());
        // Trailing bytes are ignored.
        let hs = ExtensionHandshake::decode(b"d1:pi80eeXYZ", DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(hs.p, Some(80));
    }

    #[test]
    fn rejects_bad_input() {
        let max = DEFAULT_MAX_METADATA_SIZE;
        assert_eq!(
            ExtensionHandshake::decode(b"li1ee", max),
            Err(ExtensionError::NotADict)
        );
        assert!(matches!(
            ExtensionHandshake::decode(b"d1:p", max),
            Err(ExtensionError::Malformed(ScanError::Truncated))
        ));
        assert!(matches!(
            ExtensionHandshake::decode(&[b'l'; 100_000], max),
            Err(ExtensionError::Malformed(ScanError::TooDeep { .. }))
        ));
        for (payload, key) in [
            (&b"d1:pi-1ee"[..], "p"),
            (b"d4:reqqi-5ee", "reqq"),
            (b"d13:metadata_sizei-1ee", "metadata_size"),
            (b"d1:md11:ut_metadatai-2eee", "ut_metadata"),
        ] {
            assert_eq!(
                ExtensionHandshake::decode(payload, max),
                Err(ExtensionError::Negative {
                    key: key.to_string()
                })
            );
        }
        assert_eq!(
            ExtensionHandshake::decode(b"d13:metadata_sizei16777217ee", max),
            Err(ExtensionError::MetadataTooLarge {
                size: 16_777_217,
                max
            })
        );
        let ok = ExtensionHandshake::decode(b"d13:metadata_sizei16777216ee", max).unwrap();
        assert_eq!(ok.metadata_size, Some(16_777_216));
        assert!(matches!(
            ExtensionHandshake::decode(b"d13:metadata_sizei100ee", 99),
            Err(ExtensionError::MetadataTooLarge { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = ExtensionHandshake::decode(&bytes, DEFAULT_MAX_METADATA_SIZE);
            let mut d = b"d1:md".to_vec();
            d.extend_from_slice(&bytes);
            let _ = ExtensionHandshake::decode(&d, DEFAULT_MAX_METADATA_SIZE);
        }
    }
}
