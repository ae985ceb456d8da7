//! The query-flood scenario of issue 5, item 2, shared by `tests/flood.rs` (asserts) and
//! `benches/flood.rs` (prints the figures).
//!
//! 1. A network of `dhtnode bootstrap` nodes on 127.NET.0.1.. starts one node after another;
//!    node 1 (127.NET.0.1:6881) is the flood target. It runs with the default per-IP limit.
//! 2. A polite client (127.NET.1.1) announces a peer for info-hash X with
//!    `dhtnode lookup X --announce 7000`.
//! 3. The flood: ONE UDP socket bound to 0.0.0.0:<ephemeral> sends every datagram with
//!    `sendmsg` and an `IP_PKTINFO` control message whose `ipi_spec_dst` is a spoofed source
//!    address 127.SRC.b.c (all of 127.0.0.0/8 is local), so the target sees `sources`
//!    distinct IPs; its replies to those addresses come back to the same socket. Each source
//!    announces `per_source` fresh info-hashes, each with get_peers and then, with the token
//!    from that answer (tokens are bound to the info-hash), announce_peer; one query in flight
//!    per source.
//!    At most `window` sources are active at once (a reply clocks the next query), at most
//!    `max_rate` datagrams/s leave, a query unanswered for 2 s is retried twice, and the whole
//!    flood stops at `flood_limit`. The transaction id names the source and the step.
//! 4. Meanwhile one more spoofed address (127.SRC+2.0.1) hammers the target with pings at
//!    `hammer_rate`/s: it exceeds its budget and must be banned.
//! 5. Meanwhile, every `lookup_every`, the polite client 127.NET.1.2 runs
//!    `dhtnode lookup X --bootstrap 127.NET.0.1:6881` and must find 127.NET.1.1:7000.
//! 6. The target's RSS (`VmRSS`, `VmHWM` of /proc/<pid>/status) and status JSON are read
//!    before and after.
//!
//! Every wait is bounded; the processes are `Proc`s, killed when the report is built or on
//! panic.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use dhtnode::id::Id;
use dhtnode::krpc::{Body, Message, Method, Query};

use crate::common::{args, json, node_addr, run_dhtnode, start_dht_network, Proc};

/// The polite peer's info-hash.
pub const POLITE_IH: &str = "f1000d00000000000000000000000000000000ab";
/// Port the polite client announces.
pub const POLITE_PORT: u16 = 7000;
/// Time after which an unanswered flood query is sent again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Sends of one flood query at most.
const MAX_ATTEMPTS: u8 = 3;
/// Top bit of a transaction id: a hammering ping, not a flood query.
const HAMMER_TID: u32 = 1 << 31;

/// What to run.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    /// Second octet of the nodes' addresses (127.NET.0.i) and the polite client (127.NET.1.x).
    pub net: u8,
    /// Nodes in the network; the first one is flooded.
    pub nodes: usize,
    /// Flood sources are 127.SRC.b.c upwards (254 × 254 per second octet); the hammering
    /// IP is 127.SRC+2.0.1.
    pub src_net: u8,
    /// Distinct spoofed source addresses.
    pub sources: u32,
    /// Fresh info-hashes each source announces (≤ 8: get_peers + announce_peer each, 16 steps
    /// in the transaction id's 4 bits).
    pub per_source: u32,
    /// Flood sources active at once (each with one query in flight).
    pub window: usize,
    /// Flood datagrams per second at most; 0 = only the window paces.
    pub max_rate: u32,
    /// The flood stops after this long even if unfinished.
    pub flood_limit: Duration,
    /// Pings per second from the single hammering IP.
    pub hammer_rate: u32,
    /// Interval between polite lookups during the flood.
    pub lookup_every: Duration,
    /// `--ip-rate-limit` of the nodes.
    pub ip_rate_limit: u32,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            net: 88,
            nodes: 8,
            src_net: 150,
            sources: 100_000,
            per_source: 8,
            window: 512,
            max_rate: 0,
            flood_limit: Duration::from_secs(60),
            hammer_rate: 1000,
            lookup_every: Duration::from_secs(2),
            ip_rate_limit: 50,
        }
    }
}

/// Counters of the flood itself.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FloodCounters {
    /// Sources that got a token and started announcing.
    pub sources_with_token: u64,
    /// Sources whose whole sequence ended (answered or given up).
    pub sources_done: u64,
    /// get_peers queries sent (first attempts).
    pub get_peers_sent: u64,
    /// Distinct info-hashes announced (first attempts of announce_peer).
    pub infohashes_announced: u64,
    /// announce_peer queries answered with a response.
    pub announces_acked: u64,
    /// announce_peer queries answered with an error (e.g. bad token).
    pub announce_errors: u64,
    /// Flood datagrams sent, retries included.
    pub datagrams_sent: u64,
    /// Flood datagrams answered (first answer per query).
    pub datagrams_answered: u64,
    /// Retries sent.
    pub retries: u64,
    /// Queries given up after `MAX_ATTEMPTS` sends.
    pub lost: u64,
    /// Queries the target sent to our spoofed sources (its verification pings).
    pub queries_from_target: u64,
    /// Bytes of the target's replies (responses and errors) to the flood and the hammer.
    pub reply_bytes: u64,
    /// Most reply bytes received within one of the 1-s windows the flood is cut into.
    pub reply_bytes_max_per_s: u64,
    /// Reply bytes per 1-s window, in order.
    pub reply_bytes_per_s: Vec<u64>,
    /// Pings sent by the hammering IP.
    pub hammer_sent: u64,
    /// Of those, answered.
    pub hammer_answered: u64,
    /// `sendmsg` calls that failed (flood and hammer), e.g. a full send buffer.
    pub send_errors: u64,
    /// Growth of the host-wide UDP `RcvbufErrors` counter (/proc/net/snmp) during the
    /// flood: datagrams some socket (most likely the target's) dropped for lack of room.
    /// Host-wide, so other traffic on the machine counts too.
    pub host_udp_rcvbuf_errors: u64,
    /// Wall time of the flood, seconds.
    pub duration_s: f64,
    /// Whether every source finished before `flood_limit`.
    pub completed: bool,
    /// Highest VmRSS of the target sampled during the flood, kB.
    pub target_rss_sampled_max_kb: u64,
}

/// One polite lookup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoliteLookup {
    /// Exit code of `dhtnode lookup`.
    pub code: i32,
    /// Whether it found the polite peer.
    pub ok: bool,
    /// Seconds after the flood began that it started.
    pub started_s: f64,
    /// From its JSON report.
    pub first_peer_ms: Option<u64>,
    /// From its JSON report.
    pub elapsed_ms: Option<u64>,
    /// Peers it found.
    pub peers: Vec<String>,
}

/// Everything measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FloodReport {
    /// Distinct source addresses of the flood.
    pub sources: u32,
    /// The flood's counters.
    pub flood: FloodCounters,
    /// Answered flood datagrams per second.
    pub answered_per_s: f64,
    /// Target VmRSS before the flood, kB.
    pub target_rss_before_kb: u64,
    /// Target VmHWM (peak RSS over its whole life) at the end, kB.
    pub target_rss_peak_kb: u64,
    /// Target VmRSS after the flood, kB.
    pub target_rss_after_kb: u64,
    /// Target status JSON before the flood.
    pub status_before: serde_json::Value,
    /// Target status JSON after the flood.
    pub status_after: serde_json::Value,
    /// The target process still ran at the end.
    pub target_alive: bool,
    /// Acknowledgements of the polite announce.
    pub polite_announce_acks: u64,
    /// The polite lookups through the target during the flood.
    pub lookups: Vec<PoliteLookup>,
}

impl FloodReport {
    /// Polite lookups that found the peer.
    pub fn lookups_ok(&self) -> usize {
        self.lookups.iter().filter(|l| l.ok).count()
    }

    /// A status field of the target after the flood.
    pub fn after(&self, key: &str) -> u64 {
        self.status_after[key].as_u64().unwrap_or(u64::MAX)
    }
}

/// Address of flood source `i`: 127.(src_net + i / 64516).(1 + i / 254 % 254).(1 + i % 254).
fn source_ip(src_net: u8, i: u32) -> Ipv4Addr {
    let hi = u32::from(src_net) + i / (254 * 254);
    assert!(hi < 255, "too many sources for 127.{src_net}.x.y");
    Ipv4Addr::new(
        127,
        hi as u8,
        (1 + i / 254 % 254) as u8,
        (1 + i % 254) as u8,
    )
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 20 pseudo-random bytes with `n` in the last four: distinct for distinct `n`.
fn id_for(kind: u64, n: u32) -> Id {
    let mut b = [0u8; 20];
    for (i, chunk) in b[..16].chunks_mut(8).enumerate() {
        let r = splitmix(kind.wrapping_mul(0x1_0000_0001) ^ (u64::from(n) << 8) ^ i as u64);
        chunk.copy_from_slice(&r.to_le_bytes());
    }
    b[16..].copy_from_slice(&n.to_be_bytes());
    Id(b)
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or 0.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The host-wide `Udp: RcvbufErrors` counter of /proc/net/snmp, or 0.
fn udp_rcvbuf_errors() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Alive and not a zombie.
fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with('Z'))
    })
}

/// The newest status line: drops what is queued, then waits for a fresh one.
fn fresh_status(p: &Proc) -> serde_json::Value {
    while p.next_line(Duration::ZERO).is_some() {}
    let l = p.wait_line(Duration::from_secs(10), "a status line", |l| {
        json(l).get("node_id").is_some()
    });
    json(&l)
}

/// The spoofing socket: one UDP socket on 0.0.0.0, the source address chosen per datagram.
struct Spoofer {
    sock: UdpSocket,
    dst: libc::sockaddr_in,
}

impl Spoofer {
    fn new(dst: SocketAddrV4) -> io::Result<Spoofer> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_nonblocking(true)?;
        let size: libc::c_int = 8 << 20;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: a valid fd and a c_int option value of the stated size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: sockaddr_in is plain old data.
        let mut d: libc::sockaddr_in = unsafe { zeroed() };
        d.sin_family = libc::AF_INET as libc::sa_family_t;
        d.sin_port = dst.port().to_be();
        d.sin_addr = libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.ip().octets()),
        };
        Ok(Spoofer { sock, dst: d })
    }

    /// Sends `data` to the target as if from `src` (`IP_PKTINFO`, `ipi_spec_dst`).
    fn send_from(&self, src: Ipv4Addr, data: &[u8]) -> io::Result<()> {
        // Room for one cmsghdr with an in_pktinfo, 8-byte aligned.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut dst = self.dst;
        // SAFETY: msghdr is plain old data; every pointer set below points at a live local
        // (`dst`, `iov`, `control`) for the duration of the sendmsg call, and the cmsg written
        // fits in `control` (CMSG_SPACE of 12 bytes is 32 ≤ 64).
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            assert!(space <= size_of::<[u64; 8]>());
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(src.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
            if libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a datagram to read.
    fn wait_readable(&self, timeout: Duration) {
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(&mut p, 1, timeout.as_millis().min(1000) as libc::c_int);
        }
    }
}

/// A flood source in the middle of its sequence.
struct Active {
    /// 0: get_peers pending; j ≥ 1: announce of info-hash j - 1 pending.
    step: u8,
    attempts: u8,
    token: Vec<u8>,
}

fn query(tid: u32, id: Id, method: Method) -> Vec<u8> {
    Message {
        tid: tid.to_be_bytes().to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query(Query {
            id,
            method,
            want: dhtnode::krpc::Want::NONE,
        }),
    }
    .encode()
}

struct Flood<'a> {
    cfg: &'a FloodConfig,
    sp: Spoofer,
    active: HashMap<u32, Active>,
    /// (sent at, source, step, attempt): sent in order, so deadlines are in order too.
    timers: VecDeque<(Instant, u32, u8, u8)>,
    next_source: u32,
    started: Option<Instant>,
    c: FloodCounters,
}

impl Flood<'_> {
    fn send_step(&mut self, src: u32, now: Instant) {
        let a = &self.active[&src];
        let (step, attempt) = (a.step, a.attempts);
        let id = id_for(1, src);
        let tid = (src << 4) | u32::from(step);
        // Even steps ask for a token for info-hash step/2, odd steps announce it.
        let info_hash = id_for(2, src * self.cfg.per_source + u32::from(step / 2));
        let data = if step.is_multiple_of(2) {
            query(tid, id, Method::GetPeers { info_hash })
        } else {
            query(
                tid,
                id,
                Method::AnnouncePeer {
                    info_hash,
                    port: 6881,
                    implied_port: false,
                    token: a.token.clone(),
                },
            )
        };
        if attempt == 1 {
            if step.is_multiple_of(2) {
                self.c.get_peers_sent += 1;
            } else {
                self.c.infohashes_announced += 1;
            }
        } else {
            self.c.retries += 1;
        }
        // A full send buffer loses the datagram like the network would; the retry covers it.
        if self
            .sp
            .send_from(source_ip(self.cfg.src_net, src), &data)
            .is_err()
        {
            self.c.send_errors += 1;
        }
        self.c.datagrams_sent += 1;
        self.timers.push_back((now, src, step, attempt));
    }

    /// Moves `src` to its next step, or retires it.
    fn advance(&mut self, src: u32, now: Instant) {
        let a = self.active.get_mut(&src).expect("active source");
        let last = u32::from(a.step) + 1 >= 2 * self.cfg.per_source;
        if last || (a.step.is_multiple_of(2) && a.token.is_empty()) {
            self.active.remove(&src);
            self.c.sources_done += 1;
            return;
        }
        a.step += 1;
        a.attempts = 1;
        self.send_step(src, now);
    }

    fn on_datagram(&mut self, buf: &[u8], now: Instant) {
        let Ok(m) = Message::decode(buf) else {
            return;
        };
        if matches!(m.body, Body::Query(_)) {
            self.c.queries_from_target += 1;
            return;
        }
        self.count_reply_bytes(buf.len() as u64, now);
        let Ok(tid) = <[u8; 4]>::try_from(m.tid.as_slice()) else {
            return;
        };
        let tid = u32::from_be_bytes(tid);
        if tid & HAMMER_TID != 0 {
            self.c.hammer_answered += 1;
            return;
        }
        let (src, step) = (tid >> 4, (tid & 15) as u8);
        let Some(a) = self.active.get_mut(&src) else {
            return;
        };
        if a.step != step {
            return; // a late answer to an earlier step
        }
        self.c.datagrams_answered += 1;
        match (step.is_multiple_of(2), m.body) {
            (true, Body::Response(r)) => {
                a.token = r.token.unwrap_or_default();
                if step == 0 && !a.token.is_empty() {
                    self.c.sources_with_token += 1;
                }
            }
            (true, _) => a.token.clear(),
            (false, Body::Response(_)) => self.c.announces_acked += 1,
            (false, _) => self.c.announce_errors += 1,
        }
        self.advance(src, now);
    }

    /// Adds a reply to the total and to its 1-s window since the flood began.
    fn count_reply_bytes(&mut self, n: u64, now: Instant) {
        self.c.reply_bytes += n;
        let Some(started) = self.started else { return };
        let w = now.duration_since(started).as_secs() as usize;
        let per_s = &mut self.c.reply_bytes_per_s;
        if per_s.len() <= w {
            per_s.resize(w + 1, 0);
        }
        per_s[w] += n;
        self.c.reply_bytes_max_per_s = self.c.reply_bytes_max_per_s.max(per_s[w]);
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(&(sent, src, step, attempt)) = self.timers.front() {
            if now.duration_since(sent) < RETRY_AFTER {
                break;
            }
            self.timers.pop_front();
            let Some(a) = self.active.get_mut(&src) else {
                continue;
            };
            if a.step != step || a.attempts != attempt {
                continue; // answered, or already retried
            }
            if attempt < MAX_ATTEMPTS {
                a.attempts += 1;
                self.send_step(src, now);
            } else {
                self.c.lost += 1;
                self.advance(src, now);
            }
        }
    }

    fn run(&mut self, target_pid: u32) {
        let started = Instant::now();
        self.started = Some(started);
        let deadline = started + self.cfg.flood_limit;
        let hammer_ip = Ipv4Addr::new(127, self.cfg.src_net + 2, 0, 1);
        let hammer_id = id_for(3, 0);
        let mut buf = vec![0u8; 4096];
        let mut next_sample = started;
        let rcvbuf_errors = udp_rcvbuf_errors();
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.next_source >= self.cfg.sources && self.active.is_empty() {
                self.c.completed = true;
                break;
            }
            let elapsed = now.duration_since(started).as_secs_f64();
            // New sources, within the window and the rate cap.
            let budget = if self.cfg.max_rate == 0 {
                u64::MAX
            } else {
                (elapsed * f64::from(self.cfg.max_rate)) as u64
            };
            while self.active.len() < self.cfg.window
                && self.next_source < self.cfg.sources
                && self.c.datagrams_sent < budget
            {
                let src = self.next_source;
                self.next_source += 1;
                self.active.insert(
                    src,
                    Active {
                        step: 0,
                        attempts: 1,
                        token: Vec::new(),
                    },
                );
                self.send_step(src, now);
            }
            // The hammering IP, paced.
            let due = (elapsed * f64::from(self.cfg.hammer_rate)) as u64;
            while self.c.hammer_sent < due {
                let tid = HAMMER_TID | (self.c.hammer_sent as u32 & 0x7fff_ffff);
                let data = query(tid, hammer_id, Method::Ping);
                if self.sp.send_from(hammer_ip, &data).is_err() {
                    self.c.send_errors += 1;
                }
                self.c.hammer_sent += 1;
            }
            self.on_timers(now);
            if now >= next_sample {
                next_sample = now + Duration::from_millis(250);
                let rss = proc_kb(target_pid, "VmRSS");
                self.c.target_rss_sampled_max_kb = self.c.target_rss_sampled_max_kb.max(rss);
            }
            self.sp.wait_readable(Duration::from_millis(5));
            let now = Instant::now();
            for _ in 0..4096 {
                match self.sp.sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let data = buf[..n].to_vec();
                        self.on_datagram(&data, now);
                    }
                    Err(_) => break,
                }
            }
        }
        self.c.duration_s = started.elapsed().as_secs_f64();
        self.c.host_udp_rcvbuf_errors = udp_rcvbuf_errors().saturating_sub(rcvbuf_errors);
    }
}

/// Runs the polite lookups until told to stop (or `max` of them ran).
fn polite_lookups(
    net: u8,
    every: Duration,
    max: usize,
    flood_start: Instant,
    stop: Receiver<()>,
) -> Vec<PoliteLookup> {
    let want = format!("127.{net}.1.1:{POLITE_PORT}");
    let mut out = Vec::new();
    for _ in 0..max {
        if !matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
            break;
        }
        let started_s = flood_start.elapsed().as_secs_f64();
        let (code, stdout, _) = run_dhtnode(
            &args(&[
                "lookup",
                POLITE_IH,
                "--bind",
                &format!("127.{net}.1.2:0"),
                "--bootstrap",
                &node_addr(net, 0),
                "--json",
                "--timeout",
                "20",
            ]),
            Duration::from_secs(30),
        );
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
        let peers: Vec<String> = r["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.push(PoliteLookup {
            code,
            ok: code == 0 && peers.contains(&want),
            started_s,
            first_peer_ms: r["first_peer_ms"].as_u64(),
            elapsed_ms: r["elapsed_ms"].as_u64(),
            peers,
        });
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    out
}

/// Runs the whole scenario and returns the figures; all processes are gone on return.
pub fn run(cfg: &FloodConfig) -> FloodReport {
    assert!(
        (1..=8).contains(&cfg.per_source),
        "per_source must be 1..=8"
    );
    assert!(cfg.nodes >= 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let rate = cfg.ip_rate_limit.to_string();
    let procs = start_dht_network(cfg.net, cfg.nodes, dir.path(), &["--ip-rate-limit", &rate]);
    let target = &procs[0];
    let pid = target.pid();
    let target_bind = node_addr(cfg.net, 0);
    // The target learns every other node (they join through it and it verifies them).
    let want = (cfg.nodes - 1) as u64;
    target.wait_line(Duration::from_secs(30), "a full routing table", |l| {
        json(l)["nodes"].as_u64().unwrap_or(0) >= want
    });
    for p in &procs[1..] {
        p.wait_line(Duration::from_secs(30), "nodes >= 2", |l| {
            json(l)["nodes"].as_u64().unwrap_or(0) >= 2.min(want)
        });
    }

    // The polite peer, announced before the flood through another node.
    let (code, out, err) = run_dhtnode(
        &args(&[
            "lookup",
            POLITE_IH,
            "--bind",
            &format!("127.{}.1.1:0", cfg.net),
            "--bootstrap",
            &node_addr(cfg.net, 1),
            "--announce",
            &POLITE_PORT.to_string(),
            "--json",
            "--timeout",
            "20",
        ]),
        Duration::from_secs(30),
    );
    assert!(code == 0 || code == 1, "polite announce: {out} {err}");
    let polite_announce_acks = json(out.trim())["announce_acks"].as_u64().unwrap_or(0);

    let status_before = fresh_status(target);
    let rss_before = proc_kb(pid, "VmRSS");

    let target_addr: SocketAddrV4 = target_bind.parse().unwrap();
    let mut flood = Flood {
        cfg,
        sp: Spoofer::new(target_addr).expect("flood socket"),
        active: HashMap::new(),
        timers: VecDeque::new(),
        next_source: 0,
        started: None,
        c: FloodCounters::default(),
    };
    let (stop_tx, stop_rx) = channel();
    let flood_start = Instant::now();
    let (net, every) = (cfg.net, cfg.lookup_every);
    let lookups =
        std::thread::spawn(move || polite_lookups(net, every, 1000, flood_start, stop_rx));
    flood.run(pid);
    let _ = stop_tx.send(());
    let lookups = lookups.join().expect("lookup thread");

    let status_after = fresh_status(target);
    let target_alive = proc_alive(pid);
    let report = FloodReport {
        sources: cfg.sources,
        answered_per_s: flood.c.datagrams_answered as f64 / flood.c.duration_s.max(1e-9),
        flood: flood.c,
        target_rss_before_kb: rss_before,
        target_rss_peak_kb: proc_kb(pid, "VmHWM"),
        target_rss_after_kb: proc_kb(pid, "VmRSS"),
        status_before,
        status_after,
        target_alive,
        polite_announce_acks,
        lookups,
    };
    drop(procs);
    report
}
