//! BEP 15, the UDP tracker protocol, without sockets: packet encoding, parsing of the
//! tracker's datagrams into typed replies, and [`Exchange`], the state machine of one request
//! (connect when there is no fresh connection id, then announce or scrape; retransmit after
//! `base · 2^n` up to a cap; a connection id is good for one minute). Time is passed in, so
//! the retransmission schedule is tested without waiting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{AnnounceRequest, AnnounceResponse, ScrapeStats, TrackerError, MAX_PEERS};
use crate::id::Id;

/// The magic `protocol_id` of a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// How long a connection id may be used (BEP 15: one minute).
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// Largest datagram we read; an answer with [`MAX_PEERS`] IPv6 peers fits.
pub const MAX_DATAGRAM: usize = 20 + 18 * MAX_PEERS;

const CONNECT: u32 = 0;
const ANNOUNCE: u32 = 1;
const SCRAPE: u32 = 2;
const ERROR: u32 = 3;

/// A connect request.
pub fn encode_connect(tid: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    b.extend_from_slice(&CONNECT.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    b
}

/// An announce request (98 bytes; IP field 0 = the source address).
pub fn encode_announce(conn: u64, tid: u32, req: &AnnounceRequest) -> Vec<u8> {
    let mut b = Vec::with_capacity(98);
    b.extend_from_slice(&conn.to_be_bytes());
    b.extend_from_slice(&ANNOUNCE.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    b.extend_from_slice(&req.info_hash.0);
    b.extend_from_slice(&req.peer_id.0);
    b.extend_from_slice(&req.downloaded.to_be_bytes());
    b.extend_from_slice(&req.left.to_be_bytes());
    b.extend_from_slice(&req.uploaded.to_be_bytes());
    b.extend_from_slice(&req.event.udp_code().to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&req.key.to_be_bytes());
    b.extend_from_slice(&req.numwant.to_be_bytes());
    b.extend_from_slice(&req.port.to_be_bytes());
    b
}

/// A scrape request for one torrent.
pub fn encode_scrape(conn: u64, tid: u32, info_hash: &Id) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(&conn.to_be_bytes());
    b.extend_from_slice(&SCRAPE.to_be_bytes());
    b.extend_from_slice(&tid.to_be_bytes());
    b.extend_from_slice(&info_hash.0);
    b
}

/// A datagram from a UDP tracker, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer to a connect request.
    Connected {
        /// Transaction id.
        tid: u32,
        /// The connection id to use for a minute.
        conn: u64,
    },
    /// Answer to an announce.
    Announced {
        /// Transaction id.
        tid: u32,
        /// The parsed answer.
        response: AnnounceResponse,
    },
    /// Answer to a scrape of one torrent.
    Scraped {
        /// Transaction id.
        tid: u32,
        /// The counts.
        stats: ScrapeStats,
    },
    /// The tracker refused, with a message.
    Error {
        /// Transaction id.
        tid: u32,
        /// The message (lossy UTF-8, cut to 300 characters).
        message: String,
    },
}

impl Reply {
    /// The transaction id the reply answers.
    pub fn tid(&self) -> u32 {
        match self {
            Reply::Connected { tid, .. }
            | Reply::Announced { tid, .. }
            | Reply::Scraped { tid, .. }
            | Reply::Error { tid, .. } => *tid,
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses a tracker datagram. `v6` says whether the announce went over IPv6 (BEP 15: the
/// peers of an answer are then 18 bytes each).
pub fn decode(b: &[u8], v6: bool) -> Result<Reply, TrackerError> {
    let short = || TrackerError::Malformed(format!("UDP tracker datagram of {} bytes", b.len()));
    let action = be32(b, 0).ok_or_else(short)?;
    let tid = be32(b, 4).ok_or_else(short)?;
    match action {
        CONNECT => Ok(Reply::Connected {
            tid,
            conn: be64(b, 8).ok_or_else(short)?,
        }),
        ANNOUNCE => {
            let interval = be32(b, 8).ok_or_else(short)?;
            let leechers = be32(b, 12).ok_or_else(short)?;
            let seeders = be32(b, 16).ok_or_else(short)?;
            let size = if v6 { 18 } else { 6 };
            let rest = b.get(20..).unwrap_or_default();
            let mut peers: Vec<SocketAddr> = Vec::new();
            let mut truncated = false;
            for c in rest.chunks_exact(size) {
                if peers.len() >= MAX_PEERS {
                    truncated = true;
                    break;
                }
                let (ip, port) = c.split_at(size - 2);
                let port = u16::from_be_bytes([port[0], port[1]]);
                let ip = match (<[u8; 4]>::try_from(ip), <[u8; 16]>::try_from(ip)) {
                    (Ok(a), _) => IpAddr::V4(Ipv4Addr::from(a)),
                    (_, Ok(a)) => IpAddr::V6(Ipv6Addr::from(a)),
                    _ => continue,
                };
                let a = SocketAddr::new(ip, port);
                if port != 0 && !ip.is_unspecified() && !peers.contains(&a) {
                    peers.push(a);
                }
            }
            Ok(Reply::Announced {
                tid,
                response: AnnounceResponse {
                    interval: Some(Duration::from_secs(interval.into())),
                    min_interval: None,
                    peers,
                    truncated,
                    seeders: Some(seeders),
                    leechers: Some(leechers),
                    warning: None,
                    tracker_id: None,
                },
            })
        }
        SCRAPE => Ok(Reply::Scraped {
            tid,
            stats: ScrapeStats {
                complete: be32(b, 8).ok_or_else(short)?,
                downloaded: be32(b, 12).ok_or_else(short)?,
                incomplete: be32(b, 16).ok_or_else(short)?,
            },
        }),
        ERROR => Ok(Reply::Error {
            tid,
            message: String::from_utf8_lossy(b.get(8..).unwrap_or_default())
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(300)
                .collect(),
        }),
        other => Err(TrackerError::Malformed(format!(
            "UDP tracker action {other}"
        ))),
    }
}

/// What one exchange asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// An announce.
    Announce(AnnounceRequest),
    /// A scrape of one torrent.
    Scrape(Id),
}

/// What an exchange ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The announce answer.
    Announced(AnnounceResponse),
    /// The scrape answer.
    Scraped(ScrapeStats),
}

/// Retransmission settings (BEP 15: 15 · 2^n seconds, n up to 8; a client gives up earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    /// The first timeout (15 s in BEP 15).
    pub base: Duration,
    /// Sends of one packet before giving up (each waits twice as long as the one before).
    pub tries: u32,
}

impl Default for Retransmit {
    /// 15 s, 30 s, 60 s: under two minutes before an unanswered tracker is given up on for
    /// this round (BEP 15 allows up to n = 8, an hour; the announce schedule retries later).
    fn default() -> Self {
        Retransmit {
            base: Duration::from_secs(15),
            tries: 3,
        }
    }
}

/// A connection id and when it was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The id.
    pub id: u64,
    /// When it arrived.
    pub at: Instant,
}

impl Connection {
    /// Still usable at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < CONNECTION_ID_LIFETIME
    }
}

/// The next thing the socket owner does for an exchange.
#[derive(Debug)]
pub enum Step {
    /// Send this datagram, and call [`Exchange::on_timeout`] at `deadline` if no answer came.
    Send {
        /// The datagram.
        packet: Vec<u8>,
        /// When to give up waiting for its answer.
        deadline: Instant,
    },
    /// Keep waiting (the datagram was not for us).
    Wait,
    /// The exchange is over.
    Done(Result<Outcome, TrackerError>),
}

/// One request to a UDP tracker, as a state machine.
#[derive(Debug)]
pub struct Exchange {
    op: Op,
    v6: bool,
    retransmit: Retransmit,
    conn: Option<Connection>,
    /// Transaction id of the packet in flight.
    tid: u32,
    /// Sends of the packet in flight so far.
    sent: u32,
    /// Transaction ids come from here (random start, then counting).
    next_tid: u32,
}

impl Exchange {
    /// Starts an exchange; `conn` is a connection id kept from an earlier one, `tid_seed` a
    /// random number. Returns the exchange and its first step (always a `Send`).
    pub fn start(
        now: Instant,
        op: Op,
        v6: bool,
        retransmit: Retransmit,
        conn: Option<Connection>,
        tid_seed: u32,
    ) -> (Exchange, Step) {
        let mut x = Exchange {
            op,
            v6,
            retransmit,
            conn: conn.filter(|c| c.fresh(now)),
            tid: 0,
            sent: 0,
            next_tid: tid_seed,
        };
        let step = x.send_new(now);
        (x, step)
    }

    /// The connection id to keep for the next exchange.
    pub fn connection(&self) -> Option<Connection> {
        self.conn
    }

    fn fresh_tid(&mut self) -> u32 {
        self.next_tid = self.next_tid.wrapping_add(0x9E37_79B9);
        self.next_tid
    }

    /// The packet for the current state, under a new transaction id.
    fn send_new(&mut self, now: Instant) -> Step {
        self.sent = 0;
        self.tid = self.fresh_tid();
        self.send(now)
    }

    fn send(&mut self, now: Instant) -> Step {
        let packet = match (&self.conn, &self.op) {
            (Some(c), _) if !c.fresh(now) => {
                // Expired while waiting: connect again.
                self.conn = None;
                return self.send_new(now);
            }
            (None, _) => encode_connect(self.tid),
            (Some(c), Op::Announce(req)) => encode_announce(c.id, self.tid, req),
            (Some(c), Op::Scrape(ih)) => encode_scrape(c.id, self.tid, ih),
        };
        let wait = self
            .retransmit
            .base
            .saturating_mul(1u32 << self.sent.min(8));
        self.sent += 1;
        Step::Send {
            packet,
            deadline: now + wait,
        }
    }

    /// No answer by the deadline: send again (waiting twice as long), or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if self.sent >= self.retransmit.tries {
            let waited: Duration = (0..self.sent)
                .map(|n| self.retransmit.base.saturating_mul(1u32 << n.min(8)))
                .sum();
            return Step::Done(Err(TrackerError::Timeout(waited)));
        }
        self.send(now)
    }

    /// A datagram arrived from the tracker.
    pub fn on_datagram(&mut self, now: Instant, b: &[u8]) -> Step {
        let Ok(reply) = decode(b, self.v6) else {
            // Garbage from the tracker's address: not an answer; keep waiting for one.
            return Step::Wait;
        };
        if reply.tid() != self.tid {
            return Step::Wait;
        }
        match (reply, &self.op, self.conn.is_some()) {
            (Reply::Error { message, .. }, _, _) => Step::Done(Err(TrackerError::Failure(message))),
            (Reply::Connected { conn, .. }, _, false) => {
                self.conn = Some(Connection { id: conn, at: now });
                self.send_new(now)
            }
            (Reply::Announced { response, .. }, Op::Announce(_), true) => {
                Step::Done(Ok(Outcome::Announced(response)))
            }
            (Reply::Scraped { stats, .. }, Op::Scrape(_), true) => {
                Step::Done(Ok(Outcome::Scraped(stats)))
            }
            _ => Step::Done(Err(TrackerError::Malformed(
                "UDP tracker answered with the wrong action".into(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::AnnounceEvent;
    use proptest::prelude::*;

    fn req() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: Id([1; 20]),
            peer_id: Id([2; 20]),
            port: 6881,
            uploaded: 3,
            downloaded: 4,
            left: 5,
            event: AnnounceEvent::Started,
            numwant: 50,
            key: 9,
        }
    }

    fn tid_of(p: &[u8]) -> u32 {
        be32(p, 12).unwrap()
    }

    fn connect_reply(tid: u32, conn: u64) -> Vec<u8> {
        let mut b = CONNECT.to_be_bytes().to_vec();
        b.extend_from_slice(&tid.to_be_bytes());
        b.extend_from_slice(&conn.to_be_bytes());
        b
    }

    fn announce_reply(tid: u32, peers: &[[u8; 6]]) -> Vec<u8> {
        let mut b = ANNOUNCE.to_be_bytes().to_vec();
        b.extend_from_slice(&tid.to_be_bytes());
        b.extend_from_slice(&1800u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        for p in peers {
            b.extend_from_slice(p);
        }
        b
    }

    fn sent(s: Step) -> (Vec<u8>, Instant) {
        match s {
            Step::Send { packet, deadline } => (packet, deadline),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn packets_have_the_bep15_layout() {
        let c = encode_connect(7);
        assert_eq!(c.len(), 16);
        assert_eq!(&c[..8], &0x41727101980u64.to_be_bytes());
        let a = encode_announce(0x1122, 7, &req());
        assert_eq!(a.len(), 98);
        assert_eq!(be64(&a, 0), Some(0x1122));
        assert_eq!(be32(&a, 8), Some(ANNOUNCE));
        assert_eq!(be32(&a, 80), Some(2), "event started = 2");
        assert_eq!(&a[96..], &6881u16.to_be_bytes());
        assert_eq!(encode_scrape(1, 2, &Id([3; 20])).len(), 36);
    }

    #[test]
    fn connect_then_announce() {
        let t0 = Instant::now();
        let rt = Retransmit {
            base: Duration::from_millis(100),
            tries: 3,
        };
        let (mut x, s) = Exchange::start(t0, Op::Announce(req()), false, rt, None, 1);
        let (p, d) = sent(s);
        assert_eq!(p.len(), 16);
        assert_eq!(d, t0 + Duration::from_millis(100));
        // A stray answer with another transaction id is ignored.
        assert!(matches!(
            x.on_datagram(t0, &connect_reply(tid_of(&p) ^ 1, 5)),
            Step::Wait
        ));
        assert!(matches!(x.on_datagram(t0, b"junk"), Step::Wait));
        let (a, _) = sent(x.on_datagram(t0, &connect_reply(tid_of(&p), 0xabc)));
        assert_eq!(a.len(), 98);
        assert_eq!(be64(&a, 0), Some(0xabc));
        let done = x.on_datagram(
            t0,
            &announce_reply(be32(&a, 12).unwrap(), &[[127, 0, 0, 9, 0, 80]]),
        );
        let Step::Done(Ok(Outcome::Announced(r))) = done else {
            panic!("{done:?}");
        };
        assert_eq!(r.peers, vec!["127.0.0.9:80".parse().unwrap()]);
        assert_eq!(r.interval, Some(Duration::from_secs(1800)));
        assert_eq!((r.seeders, r.leechers), (Some(1), Some(2)));
        assert_eq!(x.connection().map(|c| c.id), Some(0xabc));
    }

    #[test]
    fn retransmits_with_doubling_waits_then_gives_up() {
        let t0 = Instant::now();
        let rt = Retransmit {
            base: Duration::from_secs(15),
            tries: 3,
        };
        let (mut x, s) = Exchange::start(t0, Op::Scrape(Id([1; 20])), false, rt, None, 1);
        let (p1, d1) = sent(s);
        assert_eq!(d1 - t0, Duration::from_secs(15));
        let (p2, d2) = sent(x.on_timeout(d1));
        assert_eq!(p1, p2, "a retransmission resends the same packet");
        assert_eq!(d2 - d1, Duration::from_secs(30));
        let (_, d3) = sent(x.on_timeout(d2));
        assert_eq!(d3 - d2, Duration::from_secs(60));
        match x.on_timeout(d3) {
            Step::Done(Err(TrackerError::Timeout(w))) => assert_eq!(w, Duration::from_secs(105)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_connection_id_is_reused_for_a_minute_only() {
        let t0 = Instant::now();
        let conn = Connection { id: 42, at: t0 };
        let rt = Retransmit::default();
        let (_, s) = Exchange::start(
            t0 + Duration::from_secs(59),
            Op::Announce(req()),
            false,
            rt,
            Some(conn),
            1,
        );
        assert_eq!(sent(s).0.len(), 98, "fresh id: announce directly");
        let (_, s) = Exchange::start(
            t0 + Duration::from_secs(60),
            Op::Announce(req()),
            false,
            rt,
            Some(conn),
            1,
        );
        assert_eq!(sent(s).0.len(), 16, "expired id: connect first");
        // Expiring while retransmitting an announce goes back to connect.
        let (mut x, s) = Exchange::start(
            t0 + Duration::from_secs(50),
            Op::Announce(req()),
            false,
            rt,
            Some(conn),
            1,
        );
        let (_, d) = sent(s);
        assert_eq!(sent(x.on_timeout(d)).0.len(), 16);
    }

    #[test]
    fn error_packets_and_wrong_actions_end_the_exchange() {
        let t0 = Instant::now();
        let (mut x, s) = Exchange::start(
            t0,
            Op::Announce(req()),
            false,
            Retransmit::default(),
            None,
            1,
        );
        let tid = tid_of(&sent(s).0);
        let mut e = ERROR.to_be_bytes().to_vec();
        e.extend_from_slice(&tid.to_be_bytes());
        e.extend_from_slice(b"torrent not registered\n");
        match x.on_datagram(t0, &e) {
            Step::Done(Err(TrackerError::Failure(m))) => assert_eq!(m, "torrent not registered "),
            other => panic!("{other:?}"),
        }
        let (mut x, s) = Exchange::start(
            t0,
            Op::Announce(req()),
            false,
            Retransmit::default(),
            None,
            1,
        );
        let tid = tid_of(&sent(s).0);
        let mut scr = SCRAPE.to_be_bytes().to_vec();
        scr.extend_from_slice(&tid.to_be_bytes());
        scr.extend_from_slice(&[0; 12]);
        assert!(matches!(
            x.on_datagram(t0, &scr),
            Step::Done(Err(TrackerError::Malformed(_)))
        ));
    }

    #[test]
    fn ipv6_answers_have_18_byte_peers_and_huge_ones_are_cut() {
        let mut b = ANNOUNCE.to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        let mut p = [0u8; 18];
        p[15] = 1;
        p[17] = 7;
        b.extend_from_slice(&p);
        let Ok(Reply::Announced { response, .. }) = decode(&b, true) else {
            panic!()
        };
        assert_eq!(response.peers, vec!["[::1]:7".parse().unwrap()]);
        let mut big = ANNOUNCE.to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        for i in 0..(MAX_PEERS as u32 + 10) {
            big.extend_from_slice(&(i + 1).to_be_bytes());
            big.extend_from_slice(&[0, 1]);
        }
        let Ok(Reply::Announced { response, .. }) = decode(&big, false) else {
            panic!()
        };
        assert_eq!(response.peers.len(), MAX_PEERS);
        assert!(response.truncated);
    }

    proptest! {
        #[test]
        fn any_datagram_decodes_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300), v6: bool) {
            let _ = decode(&b, v6);
        }
    }
}
