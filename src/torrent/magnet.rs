//! Magnet links (BEP 9): the way a user names a torrent without a `.torrent` file.
//!
//! The parts this node uses are modelled: the v1 info-hash (`xt=urn:btih:`), the display
//! name (`dn`), peer addresses (`x.pe`) and trackers (`tr`). Every other parameter (web
//! seeds, v2 hashes, ...) is accepted and ignored, so links made by other clients parse.

use std::fmt;
use std::net::SocketAddr;

use crate::id::Id;

/// The message shared by every "this is not an info-hash" error, so the CLI says what it wants.
const EXPECTED: &str =
    "expected 40 hex characters, 32 base32 characters, or a magnet link with xt=urn:btih:...";

/// Why a magnet link (or info-hash argument) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    /// The text does not start with `magnet:?`.
    #[error("not a magnet link (it must start with \"magnet:?\"): {0:?}")]
    NotMagnet(String),
    /// The link has no `xt=urn:btih:` parameter, so there is nothing to fetch.
    #[error("magnet link has no xt=urn:btih:<info-hash> parameter")]
    MissingInfoHash,
    /// The link names only a BEP 52 v2 info-hash (`xt=urn:btmh:`): a v2-only torrent.
    #[error("magnet link has only a v2 info-hash (xt=urn:btmh:, BEP 52): v2-only torrents are not supported; a hybrid torrent's link also carries xt=urn:btih:, which works")]
    V2Only,
    /// The `urn:btih:` value is neither 40 hex nor 32 base32 characters.
    #[error("invalid info-hash {0:?} in magnet link: expected 40 hex characters or 32 base32 characters")]
    InvalidInfoHash(String),
    /// A command-line argument was neither a bare info-hash nor a magnet link.
    #[error("invalid info-hash {0:?}: {EXPECTED}")]
    InvalidArg(String),
}

/// A parsed magnet link: what to fetch, what to call it, and peers to try before the DHT answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash (SHA-1 of the bencoded info dictionary).
    pub info_hash: Id,
    /// The suggested display name (`dn`), if the link carries one.
    pub name: Option<String>,
    /// Peer addresses from `x.pe` parameters, in link order, without duplicates.
    pub peers: Vec<SocketAddr>,
    /// Tracker URLs from `tr` parameters, in link order, without duplicates (at most
    /// [`MAX_TRACKERS`]); each is its own tier, as libtorrent treats them.
    pub trackers: Vec<String>,
}

/// Most `tr` parameters kept from one link (a link is untrusted input).
pub const MAX_TRACKERS: usize = 64;

impl Magnet {
    /// A magnet with only an info-hash: what a bare hash on the command line means.
    pub fn from_info_hash(info_hash: Id) -> Magnet {
        Magnet {
            info_hash,
            name: None,
            peers: Vec::new(),
            trackers: Vec::new(),
        }
    }

    /// Parses a `magnet:?` URI.
    ///
    /// Keys and values are percent-decoded (`+` in a value is a space). The first
    /// `xt=urn:btih:` wins; other `xt` forms (e.g. `urn:btmh:` for v2) are ignored. `x.pe`
    /// values that are not literal `ip:port` / `[ipv6]:port` addresses (e.g. host names, which
    /// would need DNS) are skipped rather than failing the whole link.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let uri = uri.trim();
        let query = strip_prefix_ci(uri, "magnet:?")
            .ok_or_else(|| MagnetError::NotMagnet(uri.to_string()))?;
        let mut info_hash = None;
        let mut saw_btmh = false;
        let mut name = None;
        let mut peers: Vec<SocketAddr> = Vec::new();
        let mut trackers: Vec<String> = Vec::new();
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k, false);
            let value = percent_decode(v, true);
            match key.as_str() {
                "xt" => {
                    if info_hash.is_some() {
                        continue;
                    }
                    if strip_prefix_ci(&value, "urn:btmh:").is_some() {
                        saw_btmh = true;
                    }
                    if let Some(h) = strip_prefix_ci(&value, "urn:btih:") {
                        let h = h.trim();
                        let id = Id::from_hex(h)
                            .or_else(|| Id::from_base32(h))
                            .ok_or_else(|| MagnetError::InvalidInfoHash(h.to_string()))?;
                        info_hash = Some(id);
                    }
                }
                "dn" if name.is_none() && !value.is_empty() => name = Some(value),
                "x.pe" => {
                    if let Ok(addr) = value.trim().parse::<SocketAddr>() {
                        if addr.port() != 0 && !peers.contains(&addr) {
                            peers.push(addr);
                        }
                    }
                }
                // `tr`, and the numbered `tr.1`, `tr.2`, ... some clients write.
                k if k == "tr" || k.starts_with("tr.") => {
                    let t = value.trim();
                    if !t.is_empty()
                        && trackers.len() < MAX_TRACKERS
                        && !trackers.iter().any(|x| x == t)
                    {
                        trackers.push(t.to_string());
                    }
                }
                _ => {}
            }
        }
        let info_hash = info_hash.ok_or(if saw_btmh {
            MagnetError::V2Only
        } else {
            MagnetError::MissingInfoHash
        })?;
        Ok(Magnet {
            info_hash,
            name,
            peers,
            trackers,
        })
    }

    /// Renders the link as `magnet:?xt=urn:btih:<hex>[&dn=..][&tr=..][&x.pe=..]`, percent-encoding
    /// values so [`Magnet::parse`] gives back an equal `Magnet`.
    pub fn to_uri(&self) -> String {
        let mut s = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        if let Some(name) = &self.name {
            s.push_str("&dn=");
            s.push_str(&percent_encode(name, b""));
        }
        for t in &self.trackers {
            s.push_str("&tr=");
            s.push_str(&percent_encode(t, b""));
        }
        for p in &self.peers {
            s.push_str("&x.pe=");
            s.push_str(&percent_encode(&p.to_string(), b":[]"));
        }
        s
    }
}

impl fmt::Display for Magnet {
    /// Same text as [`Magnet::to_uri`], so a magnet can be printed directly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

impl std::str::FromStr for Magnet {
    type Err = MagnetError;

    /// Same as [`parse_infohash_arg`]: a bare hash or a magnet link.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_infohash_arg(s)
    }
}

/// Parses a command-line "what to fetch" argument: a bare info-hash (40 hex or 32 base32
/// characters) or a magnet link. The error message names all accepted forms.
pub fn parse_infohash_arg(s: &str) -> Result<Magnet, MagnetError> {
    let t = s.trim();
    if strip_prefix_ci(t, "magnet:").is_some() {
        return Magnet::parse(t);
    }
    Id::from_hex(t)
        .or_else(|| Id::from_base32(t))
        .map(Magnet::from_info_hash)
        .ok_or_else(|| MagnetError::InvalidArg(s.to_string()))
}

/// ASCII case-insensitive `strip_prefix` (schemes and URNs are case-insensitive).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (a malformed escape is kept literally) and, if asked, `+` as space.
/// Bytes that are not UTF-8 after decoding are replaced, never rejected.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_val);
            let lo = b.get(i + 2).copied().and_then(hex_val);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            out.push(c);
        } else if c == b'+' && plus_is_space {
            out.push(b' ');
        } else {
            out.push(c);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything except RFC 3986 unreserved characters and `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) || keep.contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef01234567";

    fn id() -> Id {
        Id::from_hex(HEX).unwrap()
    }

    #[test]
    fn parses_hex_name_and_peers() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{}&dn=My%20File+1.iso&tr=udp%3A%2F%2Fx&x.pe=1.2.3.4:6881&x.pe=%5B%3A%3A1%5D%3A51413&x.pe=[2001:db8::1]:1",
            HEX.to_uppercase()
        ))
        .unwrap();
        assert_eq!(m.info_hash, id());
        assert_eq!(m.name.as_deref(), Some("My File 1.iso"));
        assert_eq!(
            m.peers,
            vec![
                "1.2.3.4:6881".parse().unwrap(),
                "[::1]:51413".parse().unwrap(),
                "[2001:db8::1]:1".parse().unwrap()
            ]
        );
        assert_eq!(m.trackers, vec!["udp://x".to_string()]);
    }

    #[test]
    fn trackers_in_link_order_without_duplicates_and_capped() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&tr=http%3A%2F%2Fa%2Fannounce&tr.1=udp://b:1&tr=&tr=http://a/announce"
        ))
        .unwrap();
        assert_eq!(
            m.trackers,
            vec!["http://a/announce".to_string(), "udp://b:1".into()]
        );
        let many: String = (0..200).map(|i| format!("&tr=udp://t{i}:1")).collect();
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}{many}")).unwrap();
        assert_eq!(m.trackers.len(), MAX_TRACKERS);
    }

    #[test]
    fn parses_base32_and_case_insensitive_scheme() {
        let b32 = data_encoding::BASE32_NOPAD.encode(&id().0);
        let m = Magnet::parse(&format!("MAGNET:?XT=urn:btih:{b32}")).unwrap_err();
        // Keys are case-sensitive per the spec: "XT" is unknown, so no hash.
        assert_eq!(m, MagnetError::MissingInfoHash);
        let m = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{}", b32.to_lowercase())).unwrap();
        assert_eq!(m.info_hash, id());
        assert_eq!(m.name, None);
        assert!(m.peers.is_empty());
    }

    #[test]
    fn skips_unknown_and_bad_peers_and_other_xt() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btmh:1220abcd&xt=urn:btih:{HEX}&x.pe=example.com:80&x.pe=1.2.3.4&x.pe=1.2.3.4:0&x.pe=5.6.7.8:9&x.pe=5.6.7.8:9&&foo&so=0-3"
        ))
        .unwrap();
        assert_eq!(m.info_hash, id());
        assert_eq!(m.peers, vec!["5.6.7.8:9".parse().unwrap()]);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Magnet::parse("http://x"),
            Err(MagnetError::NotMagnet(_))
        ));
        assert_eq!(
            Magnet::parse("magnet:?dn=x"),
            Err(MagnetError::MissingInfoHash)
        );
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:abc"),
            Err(MagnetError::InvalidInfoHash(_))
        ));
        // Hostile: truncated escapes, non-UTF-8 bytes, multibyte chars near slicing points.
        let m =
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&dn=%&x.pe=%F&dn=%ff%fe")).unwrap();
        assert_eq!(m.name.as_deref(), Some("%"));
        assert!(Magnet::parse("é").is_err());
        assert!(Magnet::parse("magnet:?xt=urn:btih:é").is_err());
        assert!(Magnet::parse("").is_err());
    }

    #[test]
    fn round_trip() {
        let m = Magnet {
            info_hash: id(),
            name: Some("a b&c=d/é%+".into()),
            peers: vec![
                "10.0.0.1:6881".parse().unwrap(),
                "[fe80::1]:7000".parse().unwrap(),
            ],
            trackers: vec![
                "udp://t.example:1337/announce".into(),
                "http://t.example/announce?pk=a&b=c+d".into(),
            ],
        };
        let uri = m.to_uri();
        assert!(uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&dn=")));
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
        assert_eq!(m.to_string(), uri);
        let bare = Magnet::from_info_hash(id());
        assert_eq!(bare.to_uri(), format!("magnet:?xt=urn:btih:{HEX}"));
    }

    #[test]
    fn infohash_arg() {
        assert_eq!(
            parse_infohash_arg(HEX).unwrap(),
            Magnet::from_info_hash(id())
        );
        assert_eq!(
            parse_infohash_arg(&format!("  {}\n", HEX.to_uppercase()))
                .unwrap()
                .info_hash,
            id()
        );
        let b32 = data_encoding::BASE32_NOPAD.encode(&id().0).to_lowercase();
        assert_eq!(parse_infohash_arg(&b32).unwrap().info_hash, id());
        let m = parse_infohash_arg(&format!("magnet:?xt=urn:btih:{HEX}&dn=x")).unwrap();
        assert_eq!(m.name.as_deref(), Some("x"));
        assert_eq!(
            format!("magnet:?xt=urn:btih:{HEX}")
                .parse::<Magnet>()
                .unwrap()
                .info_hash,
            id()
        );
        let err = parse_infohash_arg("nope").unwrap_err().to_string();
        assert!(err.contains("expected 40 hex characters, 32 base32 characters, or a magnet link with xt=urn:btih:"), "{err}");
        assert!(!err.contains('\n'));
        assert!(parse_infohash_arg("magnet:?dn=x").is_err());
    }
}
