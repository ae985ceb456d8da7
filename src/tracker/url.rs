//! Tracker URLs: parse `http://`, `https://` and `udp://` announce URLs into a typed value,
//! build the HTTP announce and scrape request URLs, and percent-encode the binary info-hash
//! and peer id (every byte that is not unreserved becomes `%XX`, BEP 3).

use std::fmt::Write as _;

use super::{AnnounceRequest, TrackerError};
use crate::id::Id;

/// Longest tracker URL we accept (real ones are well under 200 bytes; a torrent or magnet is
/// untrusted input).
pub const MAX_URL_LEN: usize = 2048;

/// A tracker we can announce to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrackerUrl {
    /// HTTP or HTTPS: the announce URL as given (it may carry its own query, e.g. a passkey).
    Http(String),
    /// UDP (BEP 15): host (name or literal IP, IPv6 without brackets) and port.
    Udp {
        /// Host name or IP.
        host: String,
        /// UDP port.
        port: u16,
    },
}

impl TrackerUrl {
    /// Parses an announce URL. Schemes are case-insensitive; a UDP URL must have a port (BEP 15
    /// has no default) and its path (often `/announce`) is ignored.
    pub fn parse(s: &str) -> Result<TrackerUrl, TrackerError> {
        let s = s.trim();
        let bad = |why| TrackerError::BadUrl(s.chars().take(200).collect(), why);
        if s.len() > MAX_URL_LEN {
            return Err(bad("longer than 2048 bytes"));
        }
        if s.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad("contains spaces or control characters"));
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        match scheme.as_str() {
            "http" | "https" => Ok(TrackerUrl::Http(format!("{scheme}://{rest}"))),
            "udp" => {
                let (host, port) = split_host_port(authority).ok_or_else(|| bad("no port"))?;
                let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
                if port == 0 || host.is_empty() {
                    return Err(bad("no host or port 0"));
                }
                Ok(TrackerUrl::Udp {
                    host: host.to_string(),
                    port,
                })
            }
            _ => Err(bad("only http, https and udp trackers are supported")),
        }
    }

    /// The HTTP scrape URL (BEP 48): the last path component `announce...` becomes
    /// `scrape...`; `None` when the announce URL has no such component, or for UDP.
    pub fn scrape_url(&self) -> Option<String> {
        let TrackerUrl::Http(u) = self else {
            return None;
        };
        let (path, query) = match u.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (u.as_str(), None),
        };
        // The path starts at the first `/` after `scheme://host`.
        let host_start = path.find("://")? + 3;
        let path_start = host_start + path.get(host_start..)?.find('/')?;
        let slash = path.rfind('/')?;
        if slash < path_start {
            return None;
        }
        let (dir, last) = path.split_at(slash + 1);
        let tail = last.strip_prefix("announce")?;
        let mut out = format!("{dir}scrape{tail}");
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

impl std::fmt::Display for TrackerUrl {
    /// The URL as a user would write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackerUrl::Http(u) => f.write_str(u),
            TrackerUrl::Udp { host, port } if host.contains(':') => {
                write!(f, "udp://[{host}]:{port}")
            }
            TrackerUrl::Udp { host, port } => write!(f, "udp://{host}:{port}"),
        }
    }
}

/// `host:port` or `[v6]:port` (user info before `@` dropped); `None` without a port.
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    a.rsplit_once(':')
}

/// Percent-encodes bytes: RFC 3986 unreserved characters stay, everything else is `%XX`.
pub fn percent_encode_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The query separator to append to `base` (`&` if it already has a query).
fn sep(base: &str) -> char {
    if base.contains('?') {
        '&'
    } else {
        '?'
    }
}

/// The full HTTP announce URL for `req` (compact peers asked for; `tracker_id` echoed).
pub fn announce_url(base: &str, req: &AnnounceRequest, tracker_id: Option<&str>) -> String {
    let mut u = String::with_capacity(base.len() + 200);
    u.push_str(base);
    u.push(sep(base));
    let _ = write!(
        u,
        "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}&key={:08x}",
        percent_encode_bytes(&req.info_hash.0),
        percent_encode_bytes(&req.peer_id.0),
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.numwant,
        req.key,
    );
    if let Some(e) = req.event.http_name() {
        let _ = write!(u, "&event={e}");
    }
    if let Some(t) = tracker_id {
        let _ = write!(u, "&trackerid={}", percent_encode_bytes(t.as_bytes()));
    }
    u
}

/// The full HTTP scrape URL for one torrent.
pub fn scrape_url(scrape_base: &str, info_hash: &Id) -> String {
    format!(
        "{scrape_base}{}info_hash={}",
        sep(scrape_base),
        percent_encode_bytes(&info_hash.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::AnnounceEvent;

    #[test]
    fn parses_the_three_schemes() {
        assert_eq!(
            TrackerUrl::parse("HTTP://t.example:6969/announce").unwrap(),
            TrackerUrl::Http("http://t.example:6969/announce".into())
        );
        assert_eq!(
            TrackerUrl::parse(" udp://tracker.example.org:1337/announce ").unwrap(),
            TrackerUrl::Udp {
                host: "tracker.example.org".into(),
                port: 1337
            }
        );
        assert_eq!(
            TrackerUrl::parse("udp://[::1]:80").unwrap(),
            TrackerUrl::Udp {
                host: "::1".into(),
                port: 80
            }
        );
        assert_eq!(
            TrackerUrl::parse("udp://[::1]:80").unwrap().to_string(),
            "udp://[::1]:80"
        );
    }

    #[test]
    fn refuses_what_cannot_be_announced_to() {
        for bad in [
            "wss://t.example/announce",
            "udp://t.example/announce",
            "udp://t.example:0",
            "udp://:80",
            "http:///announce",
            "no scheme",
            "http://a b/",
            "",
        ] {
            assert!(TrackerUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("http://t.example/{}", "a".repeat(MAX_URL_LEN));
        assert!(TrackerUrl::parse(&long).is_err());
    }

    #[test]
    fn binary_bytes_are_percent_encoded() {
        assert_eq!(
            percent_encode_bytes(b"\x00\xffAz-._~ /"),
            "%00%FFAz-._~%20%2F"
        );
    }

    #[test]
    fn announce_url_carries_every_field() {
        let req = AnnounceRequest {
            info_hash: Id([0x12; 20]),
            peer_id: Id(*b"-DN0001-abcdefghijkl"),
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: AnnounceEvent::Started,
            numwant: 50,
            key: 0xdead_beef,
        };
        let u = announce_url("http://t/announce?pk=1", &req, Some("x y"));
        assert_eq!(
            u,
            format!(
                "http://t/announce?pk=1&info_hash={}&peer_id=-DN0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3&compact=1&numwant=50&key=deadbeef&event=started&trackerid=x%20y",
                "%12".repeat(20)
            )
        );
        let plain = announce_url(
            "http://t/a",
            &AnnounceRequest {
                event: AnnounceEvent::None,
                ..req
            },
            None,
        );
        assert!(plain.starts_with("http://t/a?info_hash="));
        assert!(!plain.contains("event="));
    }

    #[test]
    fn scrape_url_follows_bep48() {
        let s = |u: &str| TrackerUrl::parse(u).unwrap().scrape_url();
        assert_eq!(
            s("http://t.example/announce").as_deref(),
            Some("http://t.example/scrape")
        );
        assert_eq!(
            s("http://t.example/x/announce.php?pk=7").as_deref(),
            Some("http://t.example/x/scrape.php?pk=7")
        );
        assert_eq!(s("http://t.example/a"), None);
        assert_eq!(s("http://t.example/announce/x"), None);
        assert_eq!(s("http://announce"), None);
        assert_eq!(s("udp://t.example:1"), None);
        assert_eq!(
            scrape_url("http://t/scrape", &Id([0; 20])),
            format!("http://t/scrape?info_hash={}", "%00".repeat(20))
        );
    }
}
