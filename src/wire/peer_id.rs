//! Peer ids (BEP 20): generating ours and recognising other clients'.
//!
//! Our peer id is Azureus-style, `-DN0100-` followed by 12 random bytes, so other clients (and
//! trackers' statistics) can tell which software and version they are talking to. Parsing a
//! peer's id is best-effort and only used for logs and diagnostics — never for decisions.

use std::fmt;

use rand::Rng;

use crate::id::Id;

/// Azureus-style prefix of our peer id: client code `DN` (dhtnode), version 0.1.0.0.
pub const PEER_ID_PREFIX: &[u8; 8] = b"-DN0100-";

/// Generates a fresh peer id: [`PEER_ID_PREFIX`] followed by 12 bytes from the injected RNG.
///
/// The RNG is injected so tests and simulations are reproducible from a seed.
pub fn generate_peer_id<R: Rng + ?Sized>(rng: &mut R) -> Id {
    let mut id = [0u8; 20];
    let (prefix, rest) = id.split_at_mut(PEER_ID_PREFIX.len());
    prefix.copy_from_slice(PEER_ID_PREFIX);
    rng.fill(rest);
    Id(id)
}

/// A best-effort identification of the client software behind a peer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Human-readable client name, or the raw client code when the code is not known.
    pub name: String,
    /// Version as decoded from the id (format depends on the client), possibly empty.
    pub version: String,
}

impl fmt::Display for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} {}", self.name, self.version)
        }
    }
}

/// Known Azureus-style two-letter client codes (BEP 20 and common practice).
const AZUREUS_CODES: &[(&[u8; 2], &str)] = &[
    (b"DN", "dhtnode"),
    (b"qB", "qBittorrent"),
    (b"TR", "Transmission"),
    (b"UT", "\u{b5}Torrent"),
    (b"UM", "\u{b5}Torrent Mac"),
    (b"LT", "libtorrent (Rasterbar)"),
    (b"lt", "libTorrent (rakshasa)"),
    (b"DE", "Deluge"),
    (b"AZ", "Azureus"),
    (b"BI", "BiglyBT"),
    (b"KT", "KTorrent"),
    (b"BT", "BitTorrent"),
    (b"BC", "BitComet"),
    (b"FD", "Free Download Manager"),
    (b"LW", "LimeWire"),
    (b"TX", "Tixati"),
    (b"WW", "WebTorrent"),
    (b"WD", "WebTorrent Desktop"),
    (b"AG", "Ares"),
    (b"XL", "Xunlei"),
    (b"SD", "Thunder"),
    (b"PI", "PicoTorrent"),
    (b"FW", "FrostWire"),
    (b"RT", "Retriever"),
    (b"HL", "Halite"),
    (b"LR", "LibreTorrent"),
    (b"SZ", "Shareaza"),
    (b"VG", "Vagaa"),
    (b"AT", "Artemis"),
];

/// Known Shadow-style one-letter client codes.
const SHADOW_CODES: &[(u8, &str)] = &[
    (b'A', "ABC"),
    (b'O', "Osprey Permaseed"),
    (b'Q', "BTQueue"),
    (b'R', "Tribler"),
    (b'S', "Shadow's client"),
    (b'T', "BitTornado"),
    (b'U', "UPnP NAT Bit Torrent"),
];

/// Identifies the client behind `peer_id`, if its id follows a recognisable convention.
///
/// Handles Azureus style (`-XXvvvv-`), Mainline style (`M4-3-6--`) and Shadow style
/// (`T03I----`). Unknown Azureus codes are returned with the raw code as name. Returns `None`
/// for ids that follow no convention (e.g. fully random ids).
pub fn client_name(peer_id: &Id) -> Option<ClientInfo> {
    let b = &peer_id.0;
    if let Some(info) = azureus(b) {
        return Some(info);
    }
    if let Some(info) = mainline(b) {
        return Some(info);
    }
    shadow(b)
}

fn azureus(b: &[u8; 20]) -> Option<ClientInfo> {
    let head = b.get(..8)?;
    let (&[dash1, c1, c2], rest) = head.split_first_chunk::<3>()?;
    let (version, last) = rest.split_first_chunk::<4>()?;
    if dash1 != b'-' || last != [b'-'] || !c1.is_ascii_alphanumeric() || !c2.is_ascii_alphanumeric()
    {
        return None;
    }
    if !version.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let code = [c1, c2];
    let name = AZUREUS_CODES
        .iter()
        .find(|(c, _)| **c == code)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(&code).into_owned());
    let version = if &code == b"TR" {
        transmission_version(version)
    } else {
        dotted_version(version)
    };
    Some(ClientInfo { name, version })
}

/// Joins version characters with dots, dropping trailing zero components beyond two (so
/// `4500` reads `4.5.0`, `0100` reads `0.1.0`). Letters are kept as-is.
fn dotted_version(v: &[u8]) -> String {
    let mut parts: Vec<String> = v.iter().map(|&c| char::from(c).to_string()).collect();
    while parts.len() > 3 && parts.last().is_some_and(|p| p == "0") {
        parts.pop();
    }
    parts.join(".")
}

/// Transmission encodes `-TRMmmX-` as major, two-digit minor, and a release flag
/// (`0` release, `Z`/`X` development builds).
fn transmission_version(v: &[u8; 4]) -> String {
    let [major, m1, m2, flag] = *v;
    let mut s = format!("{}.{}{}", char::from(major), char::from(m1), char::from(m2));
    if flag == b'Z' || flag == b'X' {
        s.push('+');
    }
    s
}

/// Mainline style: `M` then `major-minor-patch-` with digits, padded with dashes.
fn mainline(b: &[u8; 20]) -> Option<ClientInfo> {
    let (&first, rest) = b.split_first()?;
    if first != b'M' {
        return None;
    }
    let head = rest.get(..7)?;
    let mut parts = Vec::new();
    let mut cur = String::new();
    for &c in head {
        if c.is_ascii_digit() {
            cur.push(char::from(c));
        } else if c == b'-' {
            if !cur.is_empty() {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            return None;
        }
    }
    if parts.len() != 3 || !cur.is_empty() {
        return None;
    }
    Some(ClientInfo {
        name: "BitTorrent (Mainline)".to_string(),
        version: parts.join("."),
    })
}

/// Shadow style: one letter code, then up to five version characters, then dashes.
fn shadow(b: &[u8; 20]) -> Option<ClientInfo> {
    let (&code, rest) = b.split_first()?;
    let name = SHADOW_CODES.iter().find(|(c, _)| *c == code)?.1;
    let head = rest.get(..5)?;
    let version_len = head.iter().take_while(|&&c| c != b'-').count();
    let pad_start = 1 + version_len;
    if version_len == 0 || b.get(pad_start..pad_start + 3)? != b"---" {
        return None;
    }
    let version: String = head
        .get(..version_len)?
        .iter()
        .map(|&c| match c {
            b'0'..=b'9' => (c - b'0').to_string(),
            b'A'..=b'Z' => (c - b'A' + 10).to_string(),
            b'a'..=b'z' => (c - b'a' + 36).to_string(),
            b'.' => "62".to_string(),
            _ => "?".to_string(),
        })
        .collect::<Vec<_>>()
        .join(".");
    Some(ClientInfo {
        name: name.to_string(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn id(s: &[u8]) -> Id {
        let mut b = [b'x'; 20];
        b[..s.len()].copy_from_slice(s);
        Id(b)
    }

    #[test]
    fn generated_ids_have_prefix_and_are_random() {
        let mut rng = SmallRng::seed_from_u64(7);
        let a = generate_peer_id(&mut rng);
        let b = generate_peer_id(&mut rng);
        assert_eq!(&a.0[..8], PEER_ID_PREFIX);
        assert_ne!(a, b);
        let info = client_name(&a).unwrap();
        assert_eq!(info.name, "dhtnode");
        assert_eq!(info.version, "0.1.0");
        // Reproducible from the seed.
        assert_eq!(a, generate_peer_id(&mut SmallRng::seed_from_u64(7)));
    }

    #[test]
    fn known_clients() {
        let q = client_name(&id(b"-qB4500-")).unwrap();
        assert_eq!(q.to_string(), "qBittorrent 4.5.0");
        let t = client_name(&id(b"-TR2940-")).unwrap();
        assert_eq!(t.to_string(), "Transmission 2.94");
        let lt = client_name(&id(b"-LT1207-")).unwrap();
        assert_eq!(lt.name, "libtorrent (Rasterbar)");
        assert_eq!(lt.version, "1.2.0.7");
        let unknown = client_name(&id(b"-ZZ0001-")).unwrap();
        assert_eq!(unknown.name, "ZZ");
        let m = client_name(&id(b"M4-3-6--")).unwrap();
        assert_eq!(m.to_string(), "BitTorrent (Mainline) 4.3.6");
        let s = client_name(&id(b"T03I-----")).unwrap();
        assert_eq!(s.name, "BitTornado");
        assert_eq!(s.version, "0.3.18");
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(client_name(&Id([0; 20])), None);
        assert_eq!(client_name(&Id([0xFF; 20])), None);
        assert_eq!(client_name(&id(b"-q\xff4500-")), None);
        assert_eq!(client_name(&id(b"MX-3-6--")), None);
    }
}
