//! HTTP tracker answers (BEP 3) to typed values: `failure reason`, `warning message`,
//! `interval` / `min interval`, seeder and leecher counts, and peers in every form trackers
//! send — the compact string (BEP 23), the list of dictionaries (BEP 3) and `peers6` (BEP 7) —
//! plus scrape answers (BEP 48). The bytes come from the network: the depth is checked by the
//! bounded scanner before decoding, and peer lists are cut at [`MAX_PEERS`].

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bt_bencode::value::Number;
use bt_bencode::{ByteString, Value};

use super::{AnnounceResponse, ScrapeStats, TrackerError, MAX_PEERS};
use crate::id::Id;
use crate::torrent::bencode;

/// Longest text kept from a `failure reason` or `warning message` (it goes to a log line).
const MAX_TEXT: usize = 300;

type Dict = BTreeMap<ByteString, Value>;

/// Decodes a bencoded dictionary from untrusted bytes (depth-checked first).
fn top_dict(body: &[u8]) -> Result<Dict, TrackerError> {
    // Some trackers end the body with a newline.
    let body = body.trim_ascii_end();
    bencode::validate(body).map_err(|e| TrackerError::Malformed(e.to_string()))?;
    let v: Value =
        bt_bencode::from_slice(body).map_err(|e| TrackerError::Malformed(e.to_string()))?;
    match v {
        Value::Dict(d) => Ok(d),
        _ => Err(TrackerError::Malformed("not a dictionary".into())),
    }
}

fn get<'a>(d: &'a Dict, key: &str) -> Option<&'a Value> {
    d.get(key.as_bytes())
}

/// A non-negative integer (saturating at `u64::MAX`; negative is `None`).
fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(Number::Unsigned(n)) => Some(*n),
        Value::Int(Number::Signed(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn count(d: &Dict, key: &str) -> Option<u32> {
    get(d, key)
        .and_then(uint)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn secs(d: &Dict, key: &str) -> Option<Duration> {
    get(d, key).and_then(uint).map(Duration::from_secs)
}

/// Text for a log line: lossy UTF-8, control characters replaced, cut at [`MAX_TEXT`].
fn text(v: &Value) -> Option<String> {
    let b = v.as_byte_str()?;
    let s: String = String::from_utf8_lossy(b.as_slice())
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect();
    Some(s)
}

/// Collects unique peers up to [`MAX_PEERS`]; remembers whether any were dropped.
struct PeerSet {
    peers: Vec<SocketAddr>,
    seen: HashSet<SocketAddr>,
    truncated: bool,
}

impl PeerSet {
    fn push(&mut self, a: SocketAddr) {
        if a.port() == 0 || a.ip().is_unspecified() {
            return;
        }
        if self.peers.len() >= MAX_PEERS {
            self.truncated = true;
            return;
        }
        if self.seen.insert(a) {
            self.peers.push(a);
        }
    }

    /// Compact peers: 6 bytes (IPv4) or 18 bytes (IPv6) each; a trailing partial entry is
    /// ignored.
    fn compact(&mut self, b: &[u8], v6: bool) {
        let size = if v6 { 18 } else { 6 };
        for c in b.chunks_exact(size) {
            if self.peers.len() >= MAX_PEERS {
                self.truncated = true;
                return;
            }
            self.push(compact_addr(c));
        }
    }
}

/// One compact entry (length 6 or 18) as an address.
fn compact_addr(c: &[u8]) -> SocketAddr {
    let (ip, port) = c.split_at(c.len() - 2);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = match <[u8; 4]>::try_from(ip) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => match <[u8; 16]>::try_from(ip) {
            Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
    };
    SocketAddr::new(ip, port)
}

/// Parses an HTTP announce answer. A `failure reason` is an error even when other keys are
/// present (BEP 3: "no other keys may be present").
pub fn parse_announce(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let d = top_dict(body)?;
    if let Some(f) = get(&d, "failure reason") {
        return Err(TrackerError::Failure(
            text(f).unwrap_or_else(|| "(failure reason not a string)".into()),
        ));
    }
    let mut set = PeerSet {
        peers: Vec::new(),
        seen: HashSet::new(),
        truncated: false,
    };
    let mut any = false;
    match get(&d, "peers") {
        Some(Value::ByteStr(b)) => {
            any = true;
            set.compact(b.as_slice(), false);
        }
        Some(Value::List(l)) => {
            any = true;
            for p in l {
                if set.peers.len() >= MAX_PEERS {
                    set.truncated = true;
                    break;
                }
                if let Some(a) = dict_peer(p) {
                    set.push(a);
                }
            }
        }
        Some(_) => {
            return Err(TrackerError::Malformed(
                "peers is neither string nor list".into(),
            ))
        }
        None => {}
    }
    if let Some(Value::ByteStr(b)) = get(&d, "peers6") {
        any = true;
        set.compact(b.as_slice(), true);
    }
    if !any && get(&d, "interval").is_none() {
        return Err(TrackerError::Malformed(
            "no peers, no interval and no failure reason".into(),
        ));
    }
    Ok(AnnounceResponse {
        interval: secs(&d, "interval"),
        min_interval: secs(&d, "min interval"),
        peers: set.peers,
        truncated: set.truncated,
        seeders: count(&d, "complete"),
        leechers: count(&d, "incomplete"),
        warning: get(&d, "warning message").and_then(text),
        tracker_id: get(&d, "tracker id").and_then(text),
    })
}

/// A `{ip, port}` dictionary peer; `ip` must be a literal address (names would need DNS).
fn dict_peer(v: &Value) -> Option<SocketAddr> {
    let d = v.as_dict()?;
    let ip: IpAddr = get(d, "ip")?.as_str()?.trim().parse().ok()?;
    let port = u16::try_from(get(d, "port").and_then(uint)?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Parses an HTTP scrape answer and returns the counts of `info_hash` (BEP 48: `files` maps
/// each 20-byte info-hash to `complete` / `downloaded` / `incomplete`).
pub fn parse_scrape(body: &[u8], info_hash: &Id) -> Result<ScrapeStats, TrackerError> {
    let d = top_dict(body)?;
    if let Some(f) = get(&d, "failure reason") {
        return Err(TrackerError::Failure(
            text(f).unwrap_or_else(|| "(failure reason not a string)".into()),
        ));
    }
    let files = get(&d, "files")
        .and_then(Value::as_dict)
        .ok_or_else(|| TrackerError::Malformed("scrape answer has no files dictionary".into()))?;
    let entry = files
        .get(info_hash.0.as_slice())
        .and_then(Value::as_dict)
        .ok_or_else(|| {
            TrackerError::Malformed("scrape answer does not list this torrent".into())
        })?;
    Ok(ScrapeStats {
        complete: count(entry, "complete").unwrap_or(0),
        downloaded: count(entry, "downloaded").unwrap_or(0),
        incomplete: count(entry, "incomplete").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: [u8; 4], p: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p)
    }

    #[test]
    fn opentracker_style_compact_answer() {
        // Bytes as Debian's opentracker sends them.
        let mut body = b"d8:completei1e10:downloadedi0e10:incompletei1e8:intervali1683e12:min intervali841e5:peers12:".to_vec();
        body.extend_from_slice(&[127, 0, 0, 1, 0x13, 0x88, 10, 0, 0, 2, 0x1a, 0xe1]);
        body.extend_from_slice(b"e");
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.interval, Some(Duration::from_secs(1683)));
        assert_eq!(r.min_interval, Some(Duration::from_secs(841)));
        assert_eq!(r.seeders, Some(1));
        assert_eq!(r.leechers, Some(1));
        assert_eq!(
            r.peers,
            vec![v4([127, 0, 0, 1], 5000), v4([10, 0, 0, 2], 6881)]
        );
        assert!(!r.truncated);
    }

    #[test]
    fn dictionary_peers_and_peers6() {
        let mut body = b"d8:intervali60e5:peersld2:ip9:127.0.0.54:porti7000eed2:ip11:example.com4:porti1eed2:ip3:::14:porti0eee6:peers618:".to_vec();
        let mut six = [0u8; 18];
        six[15] = 1;
        six[16] = 0x1b;
        six[17] = 0x58;
        body.extend_from_slice(&six);
        body.extend_from_slice(b"15:warning message5:slow!e");
        let r = parse_announce(&body).unwrap();
        assert_eq!(
            r.peers,
            vec![v4([127, 0, 0, 5], 7000), "[::1]:7000".parse().unwrap()]
        );
        assert_eq!(r.warning.as_deref(), Some("slow!"));
    }

    #[test]
    fn failure_reason_is_an_error() {
        let e = parse_announce(b"d14:failure reason63:Requested download is not authorized for use with this tracker.e")
            .unwrap_err();
        assert!(
            matches!(e, TrackerError::Failure(ref s) if s.contains("not authorized")),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for b in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            b"le",
            b"d5:peersi3ee",
            b"de",
            b"d8:intervali60e",
            b"llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll",
        ] {
            let r = parse_announce(b);
            // `d8:intervali60e` lacks the closing `e` of the dictionary.
            assert!(r.is_err(), "{:?} parsed: {r:?}", String::from_utf8_lossy(b));
        }
        // An answer with an interval and no peers is valid (empty swarm).
        assert_eq!(parse_announce(b"d8:intervali60ee").unwrap().peers, vec![]);
    }

    #[test]
    fn huge_peer_lists_are_cut() {
        let n = MAX_PEERS + 500;
        let mut body = format!("d8:intervali60e5:peers{}:", n * 6).into_bytes();
        for i in 0..n {
            let i = i as u32 + 1;
            body.extend_from_slice(&i.to_be_bytes());
            body.extend_from_slice(&[0, 1]);
        }
        body.push(b'e');
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.peers.len(), MAX_PEERS);
        assert!(r.truncated);
    }

    #[test]
    fn scrape_answer() {
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(&[7; 20]);
        body.extend_from_slice(b"d8:completei3e10:downloadedi9e10:incompletei2eeee");
        let s = parse_scrape(&body, &Id([7; 20])).unwrap();
        assert_eq!(
            s,
            ScrapeStats {
                complete: 3,
                downloaded: 9,
                incomplete: 2
            }
        );
        assert!(parse_scrape(&body, &Id([8; 20])).is_err());
        assert!(parse_scrape(b"d5:filesdee", &Id([7; 20])).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_announce(&b);
            let _ = parse_scrape(&b, &Id([0; 20]));
        }

        #[test]
        fn compact_peers_round_trip(peers in proptest::collection::vec((any::<[u8; 4]>(), 1u16..), 0..50)) {
            let mut body = format!("d8:intervali60e5:peers{}:", peers.len() * 6).into_bytes();
            for (ip, port) in &peers {
                body.extend_from_slice(ip);
                body.extend_from_slice(&port.to_be_bytes());
            }
            body.push(b'e');
            let r = parse_announce(&body).unwrap();
            let mut want: Vec<SocketAddr> = Vec::new();
            for (ip, port) in &peers {
                let a = v4(*ip, *port);
                if !a.ip().is_unspecified() && !want.contains(&a) {
                    want.push(a);
                }
            }
            prop_assert_eq!(r.peers, want);
        }
    }
}
