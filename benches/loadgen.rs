// Closed-loop KRPC (BEP 5) load generator.
//
// A standalone program (`[[bench]] name = "loadgen" harness = false`):
//
//     cargo bench --bench loadgen -- --target 127.0.0.1:6881 --duration 10
//     cargo bench --bench loadgen -- --self-test-echo --json
//
// Each of `--sources` UDP sockets is bound to its own loopback address
// (127.10.0.1, 127.10.0.2, ... by default) so per-source-IP rate limits on the
// target do not bite, and keeps `--inflight` queries outstanding, each with a
// distinct transaction id.  Every reply (`y` = `r` or `e`) that matches an
// outstanding transaction id immediately triggers the next query on that slot;
// a query unanswered after `--timeout-ms` is counted lost and replaced.  One
// thread drives all sockets with epoll plus recvmmsg/sendmmsg; same-sized
// queries of one batch leave as one UDP GSO send (`UDP_SEGMENT`; the target
// still receives ordinary single datagrams; `--no-gso` turns it off).  Queries
// are raw bencoded bytes built here; only std, libc and rand are used.
//
// Reported: answered queries/s (median of the per-second samples after warmup,
// and overall), lost (timed out), p50/p99/p99.9 latency in µs, and the CPU the
// generator thread used (if it nears 100 %, the generator is the bottleneck).
//
// `--self-test-echo` starts a trivial KRPC echo responder on a second thread
// and loads it, which measures the ceiling of the generator itself;
// `--echo-only ADDR` runs just that responder (for `--duration` seconds).

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages moved per recvmmsg/sendmmsg call.
const BATCH: usize = 64;
/// Largest datagram we accept; longer ones are truncated (and then rejected
/// as malformed by the parser).
const RECV_BUF: usize = 2048;
/// Room for one outgoing query (the largest, get_peers with `ro`, is ~110 bytes).
const SEND_BUF: usize = 160;
/// Latency histogram resolution: one bucket per microsecond up to this bound.
const HIST_US: usize = 1_000_000;
/// Socket buffer size asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE when root).
const SOCK_BUF: i32 = 8 << 20;
/// Deepest bencode nesting the reply parser follows before giving up.
const MAX_DEPTH: u32 = 32;
/// `UDP_SEGMENT` (linux/udp.h): send one buffer as equal-sized datagrams (UDP GSO).
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams put in one GSO send (the kernel allows 64 on older releases).
const GSO_MAX_SEGS: usize = 64;

/// The three query kinds the generator sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `ping`
    Ping = 0,
    /// `find_node` with a random target.
    FindNode = 1,
    /// `get_peers` with a random info_hash.
    GetPeers = 2,
}

impl Kind {
    /// All kinds, indexed by their discriminant.
    const ALL: [Kind; 3] = [Kind::Ping, Kind::FindNode, Kind::GetPeers];

    /// The KRPC method name.
    fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::FindNode => "find_node",
            Kind::GetPeers => "get_peers",
        }
    }
}

/// Parsed command line.
#[derive(Clone, Debug)]
struct Opts {
    /// Address under load.
    target: Option<SocketAddrV4>,
    /// Number of source sockets.
    sources: usize,
    /// Address of the first source socket; the rest count up from it.
    source_base: Ipv4Addr,
    /// Outstanding queries per socket.
    inflight: usize,
    /// Measured seconds (after warmup).
    duration: f64,
    /// Seconds of load before measuring starts.
    warmup: f64,
    /// Weights of ping, find_node and get_peers.
    mix: [u32; 3],
    /// A query unanswered after this long is lost and replaced.
    timeout: Duration,
    /// Print one JSON object instead of text.
    json: bool,
    /// Run an echo responder thread and load it.
    self_test_echo: bool,
    /// Run only the echo responder on this address.
    echo_only: Option<SocketAddrV4>,
    /// Draw a new random node id for every query instead of one per socket.
    fresh_ids: bool,
    /// Mark queries read-only (BEP 43 `ro=1`).
    read_only: bool,
    /// Never use UDP GSO (plain sendmmsg only).
    no_gso: bool,
    /// Sleep this long between event-loop passes so replies pile up into
    /// bigger batches (less generator CPU per query against a slow target).
    coalesce: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            target: None,
            sources: 16,
            source_base: Ipv4Addr::new(127, 10, 0, 1),
            inflight: 16,
            duration: 10.0,
            warmup: 2.0,
            mix: [1, 1, 1],
            timeout: Duration::from_millis(1000),
            json: false,
            self_test_echo: false,
            echo_only: None,
            fresh_ids: false,
            read_only: false,
            no_gso: false,
            coalesce: Duration::ZERO,
        }
    }
}

/// Usage text printed by `--help` and on argument errors.
const USAGE: &str = "\
loadgen: closed-loop KRPC load generator

  --target IP:PORT     node under load (required unless --self-test-echo/--echo-only)
  --sources N          UDP sockets, each on its own loopback address (default 16)
  --source-base IP     address of the first socket (default 127.10.0.1)
  --inflight W         outstanding queries per socket (default 16)
  --duration SECS      measured time after warmup (default 10)
  --warmup SECS        unmeasured time first (default 2)
  --mix P:F:G          weights of ping:find_node:get_peers (default 1:1:1)
  --timeout-ms MS      unanswered after this = lost, replaced (default 1000)
  --fresh-ids          new random node id in every query (default: one per socket)
  --read-only          send BEP 43 ro=1
  --no-gso             plain sendmmsg only (default: UDP GSO batches when the kernel has it)
  --coalesce-us US     sleep US between event-loop passes: bigger batches, less generator
                       CPU, more latency (default 0)
  --json               print one JSON object
  --self-test-echo     start a KRPC echo responder thread and load it (generator ceiling)
  --echo-only IP:PORT  only run the echo responder, for warmup+duration seconds
";

/// Parse a value or explain which option it was for.
fn parse_val<T: std::str::FromStr>(opt: &str, v: Option<String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{opt} needs a value"))?;
    v.parse::<T>()
        .map_err(|_| format!("{opt}: cannot parse {v:?}"))
}

/// Parse the command line (cargo's own `--bench` flag is ignored).
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Opts>, String> {
    let mut o = Opts::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut val = || inline.clone().or_else(|| it.next());
        match name.as_str() {
            "--bench" | "--nocapture" => {}
            "-h" | "--help" => return Ok(None),
            "--target" => o.target = Some(parse_val(&name, val())?),
            "--sources" => o.sources = parse_val(&name, val())?,
            "--source-base" => o.source_base = parse_val(&name, val())?,
            "--inflight" => o.inflight = parse_val(&name, val())?,
            "--duration" => o.duration = parse_val(&name, val())?,
            "--warmup" => o.warmup = parse_val(&name, val())?,
            "--timeout-ms" => o.timeout = Duration::from_millis(parse_val(&name, val())?),
            "--mix" => {
                let v: String = parse_val(&name, val())?;
                let parts: Vec<&str> = v.split(':').collect();
                if parts.len() != 3 {
                    return Err("--mix wants three weights, e.g. 1:1:1".into());
                }
                for (i, p) in parts.iter().enumerate() {
                    o.mix[i] = p.parse().map_err(|_| format!("--mix: bad weight {p:?}"))?;
                }
                if o.mix.iter().all(|&w| w == 0) {
                    return Err("--mix: all weights are zero".into());
                }
            }
            "--json" => o.json = true,
            "--self-test-echo" => o.self_test_echo = true,
            "--echo-only" => o.echo_only = Some(parse_val(&name, val())?),
            "--fresh-ids" => o.fresh_ids = true,
            "--read-only" => o.read_only = true,
            "--no-gso" => o.no_gso = true,
            "--coalesce-us" => o.coalesce = Duration::from_micros(parse_val(&name, val())?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.sources == 0 || o.sources > 65_536 {
        return Err("--sources must be 1..65536".into());
    }
    if o.inflight == 0 || o.inflight > 65_535 {
        return Err("--inflight must be 1..65535".into());
    }
    if !(o.duration.is_finite() && o.duration > 0.0 && o.warmup.is_finite() && o.warmup >= 0.0) {
        return Err("--duration must be > 0 and --warmup >= 0".into());
    }
    if o.timeout.is_zero() {
        return Err("--timeout-ms must be > 0".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// `sockaddr_in` for an IPv4 socket address.
fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// The IPv4 address in a `sockaddr_storage`, if it holds one.
fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddrV4> {
    if s.ss_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    // SAFETY: ss_family says AF_INET, and sockaddr_storage is large and aligned
    // enough to hold a sockaddr_in.
    let sin = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// Turn a libc return value into an io::Result.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Set an int socket option.
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A UDP socket bound to `bind`, with big buffers, optionally non-blocking.
fn udp_socket(bind: SocketAddrV4, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = cvt(unsafe { libc::socket(libc::AF_INET, ty, 0) })?;
    // SAFETY: raw is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(raw, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
            let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, SOCK_BUF);
        }
    }
    let sa = sockaddr_in(bind);
    // SAFETY: sa is a valid sockaddr_in and the length matches it.
    cvt(unsafe {
        libc::bind(
            raw,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("bind {bind}: {e}")))?;
    Ok(fd)
}

/// connect(2) a UDP socket so the kernel drops datagrams from anyone else.
fn connect(fd: RawFd, to: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(to);
    // SAFETY: sa is a valid sockaddr_in and the length matches it.
    cvt(unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The address a socket is bound to.
fn local_addr(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are live and len is ss's size.
    cvt(unsafe {
        libc::getsockname(
            fd,
            &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    from_storage(&ss).ok_or_else(|| io::Error::other("not an IPv4 socket"))
}

/// Buffers and headers for one recvmmsg/sendmmsg call of up to BATCH messages.
///
/// The raw pointers inside `hdrs` are refreshed by [`MsgBatch::prepare`] right
/// before each call, so moving the struct around is harmless.
struct MsgBatch<const N: usize> {
    /// Payload buffers.
    bufs: Vec<[u8; N]>,
    /// Lengths of the payloads to send (ignored when receiving).
    lens: Vec<usize>,
    /// Peer addresses (receive: filled by the kernel; send: destinations).
    names: Vec<libc::sockaddr_storage>,
    /// One iovec per message.
    iovs: Vec<libc::iovec>,
    /// The mmsghdr array handed to the kernel.
    hdrs: Vec<libc::mmsghdr>,
}

impl<const N: usize> MsgBatch<N> {
    /// BATCH zeroed messages.
    fn new() -> Self {
        // SAFETY: these libc structs are plain old data; all-zero is valid.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        MsgBatch {
            bufs: vec![[0u8; N]; BATCH],
            lens: vec![0; BATCH],
            names: vec![zero_name; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            hdrs: vec![zero_hdr; BATCH],
        }
    }

    /// Point the first `n` headers at their buffers; `recv` sizes iovecs to the
    /// whole buffer, otherwise to `lens`; `with_names` attaches the addresses.
    fn prepare(&mut self, n: usize, recv: bool, with_names: bool) {
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr() as *mut libc::c_void;
            self.iovs[i].iov_len = if recv { N } else { self.lens[i].min(N) };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            if with_names {
                h.msg_hdr.msg_name =
                    &mut self.names[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
                h.msg_hdr.msg_namelen = if recv {
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
                } else {
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
                };
            } else {
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
            }
        }
    }

    /// recvmmsg up to BATCH datagrams; Ok(0) when nothing is waiting.
    fn recv(&mut self, fd: RawFd, flags: libc::c_int, with_names: bool) -> io::Result<usize> {
        self.prepare(BATCH, true, with_names);
        // SAFETY: hdrs holds BATCH headers whose pointers were just set to live
        // buffers owned by self, which outlives the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// The payload of received message `i`.
    fn received(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(N);
        &self.bufs[i][..len]
    }

    /// sendmmsg the first `n` messages; returns how many went out (0 on EAGAIN).
    fn send(&mut self, fd: RawFd, n: usize, with_names: bool) -> io::Result<usize> {
        if n == 0 {
            return Ok(0);
        }
        self.prepare(n, false, with_names);
        // SAFETY: the first n headers point at live buffers owned by self.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }
}

/// One UDP GSO send: `count` datagrams of `seg` bytes each, back to back in
/// [`GsoBatch::data`] from `off`, optionally to an explicit destination.
#[derive(Clone, Copy)]
struct Group {
    /// Offset of the first datagram in `data`.
    off: usize,
    /// Size of every datagram in the group.
    seg: usize,
    /// Number of datagrams.
    count: usize,
    /// Destination (unconnected sockets), or None for a connected socket.
    dest: Option<libc::sockaddr_storage>,
}

/// Several GSO groups sent with one sendmmsg call (one message per group).
///
/// UDP GSO (`UDP_SEGMENT`) makes the kernel walk its send path once per group
/// instead of once per datagram; a receiver without `UDP_GRO` still gets the
/// datagrams one by one, so the target sees exactly the same traffic.
struct GsoBatch {
    /// Datagram bytes, groups back to back.
    data: Vec<u8>,
    /// The groups to send.
    groups: Vec<Group>,
    /// One iovec per group.
    iovs: Vec<libc::iovec>,
    /// Control-message space per group (u64 for alignment).
    ctrl: Vec<[u64; 4]>,
    /// Destinations per group.
    names: Vec<libc::sockaddr_storage>,
    /// The mmsghdr array handed to the kernel.
    hdrs: Vec<libc::mmsghdr>,
}

impl GsoBatch {
    /// Room for `max_groups` groups and `bytes` bytes of datagrams.
    fn new(max_groups: usize, bytes: usize) -> Self {
        // SAFETY: these libc structs are plain old data; all-zero is valid.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        GsoBatch {
            data: vec![0; bytes],
            groups: Vec::with_capacity(max_groups),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                max_groups
            ],
            ctrl: vec![[0u64; 4]; max_groups],
            names: vec![zero_name; max_groups],
            hdrs: vec![zero_hdr; max_groups],
        }
    }

    /// sendmmsg the groups; returns how many groups went out (0 on EAGAIN).
    fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.groups.len().min(self.hdrs.len());
        if n == 0 {
            return Ok(0);
        }
        for i in 0..n {
            let g = self.groups[i];
            let Some(bytes) = self.data.get_mut(g.off..g.off + g.seg * g.count) else {
                return Err(io::Error::other("GSO group outside its buffer"));
            };
            self.iovs[i].iov_base = bytes.as_mut_ptr() as *mut libc::c_void;
            self.iovs[i].iov_len = bytes.len();
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            match g.dest {
                Some(d) => {
                    self.names[i] = d;
                    h.msg_name =
                        &mut self.names[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
                    h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                }
                None => {
                    h.msg_name = std::ptr::null_mut();
                    h.msg_namelen = 0;
                }
            }
            if g.count > 1 {
                let ctrl = &mut self.ctrl[i];
                h.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE only computes a size.
                let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
                h.msg_controllen = space.min(std::mem::size_of::<[u64; 4]>()) as _;
                // SAFETY: msg_control points at ctrl, which is 8-aligned and at
                // least CMSG_SPACE(2) bytes long, so the first header and its
                // 2 data bytes lie inside it.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(h);
                    if cm.is_null() {
                        return Err(io::Error::other("no room for the GSO control message"));
                    }
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    let seg = g.seg as u16;
                    std::ptr::copy_nonoverlapping(
                        seg.to_ne_bytes().as_ptr(),
                        libc::CMSG_DATA(cm),
                        2,
                    );
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // SAFETY: the first n headers point at live buffers owned by self.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }
}

/// Whether a send error means "this kernel or socket cannot do UDP GSO".
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EIO) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

// ---------------------------------------------------------------------------
// Bencode
// ---------------------------------------------------------------------------

/// Append-only writer into a fixed buffer; overflow is recorded, never a panic.
struct Writer<'a> {
    /// Destination.
    buf: &'a mut [u8],
    /// Bytes written so far.
    len: usize,
    /// Set if something did not fit.
    overflow: bool,
}

impl<'a> Writer<'a> {
    /// Start writing at the beginning of `buf`.
    fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Append raw bytes.
    fn raw(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    /// Append a bencoded byte string.
    fn bstr(&mut self, b: &[u8]) {
        let mut num = [0u8; 20];
        let digits = fmt_usize(b.len(), &mut num);
        self.raw(digits);
        self.raw(b":");
        self.raw(b);
    }
}

/// Decimal digits of `n` inside `scratch`.
fn fmt_usize(mut n: usize, scratch: &mut [u8; 20]) -> &[u8] {
    let mut i = scratch.len();
    loop {
        i -= 1;
        scratch[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &scratch[i..]
}

/// Build one KRPC query into `buf`; returns its length (0 if it did not fit).
fn build_query(
    buf: &mut [u8],
    kind: Kind,
    id: &[u8; 20],
    key: &[u8; 20],
    tid: &[u8; 4],
    read_only: bool,
) -> usize {
    let mut w = Writer::new(buf);
    w.raw(b"d1:ad2:id");
    w.bstr(id);
    match kind {
        Kind::Ping => {}
        Kind::FindNode => {
            w.raw(b"6:target");
            w.bstr(key);
        }
        Kind::GetPeers => {
            w.raw(b"9:info_hash");
            w.bstr(key);
        }
    }
    w.raw(b"e1:q");
    w.bstr(kind.name().as_bytes());
    if read_only {
        w.raw(b"2:roi1e");
    }
    w.raw(b"1:t");
    w.bstr(tid);
    w.raw(b"1:y1:qe");
    if w.overflow {
        0
    } else {
        w.len
    }
}

/// Parse a bencoded byte string at `pos`: (bytes, position after it).
fn bdecode_str(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let mut i = pos;
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let c = *buf.get(i)?;
        if c == b':' {
            break;
        }
        if !c.is_ascii_digit() || digits >= 10 {
            return None;
        }
        len = len * 10 + usize::from(c - b'0');
        digits += 1;
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    let start = i + 1;
    let end = start.checked_add(len)?;
    Some((buf.get(start..end)?, end))
}

/// Skip the bencoded value at `pos`; returns the position after it.
fn bskip(buf: &[u8], pos: usize, depth: u32) -> Option<usize> {
    match *buf.get(pos)? {
        b'i' => {
            let rel = buf.get(pos + 1..)?.iter().position(|&c| c == b'e')?;
            Some(pos + 1 + rel + 1)
        }
        b'l' | b'd' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let mut p = pos + 1;
            while *buf.get(p)? != b'e' {
                p = bskip(buf, p, depth + 1)?;
            }
            Some(p + 1)
        }
        b'0'..=b'9' => bdecode_str(buf, pos).map(|(_, end)| end),
        _ => None,
    }
}

/// The `y` and `t` values of a top-level KRPC dictionary, or None if malformed.
fn parse_krpc(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    if *buf.first()? != b'd' {
        return None;
    }
    let mut p = 1;
    let mut y = None;
    let mut t = None;
    while *buf.get(p)? != b'e' {
        let (key, after_key) = bdecode_str(buf, p)?;
        match key {
            b"t" => {
                let (v, end) = bdecode_str(buf, after_key)?;
                t = Some(v);
                p = end;
            }
            b"y" => {
                let (v, end) = bdecode_str(buf, after_key)?;
                y = Some(v);
                p = end;
            }
            _ => p = bskip(buf, after_key, 1)?,
        }
    }
    Some((y?, t?))
}

// ---------------------------------------------------------------------------
// Echo responder
// ---------------------------------------------------------------------------

/// Answer every KRPC query on `fd` with a minimal `r` reply echoing its `t`,
/// until `stop` is set (the socket has a receive timeout so this is noticed).
fn echo_loop(fd: OwnedFd, stop: Arc<AtomicBool>, mut gso: bool) -> io::Result<u64> {
    let raw = fd.as_raw_fd();
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: passes a pointer to a live timeval and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    let mut rx: MsgBatch<RECV_BUF> = MsgBatch::new();
    let mut tx: MsgBatch<256> = MsgBatch::new();
    let mut gtx = GsoBatch::new(BATCH, BATCH * 256);
    let mut order: Vec<(u64, usize, usize)> = Vec::with_capacity(BATCH);
    let id = [0x55u8; 20];
    let mut answered = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(raw, libc::MSG_WAITFORONE, true) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => 0,
            Err(e) => return Err(e),
        };
        let mut m = 0;
        for i in 0..n {
            let Some((y, t)) = parse_krpc(rx.received(i)) else {
                continue;
            };
            if y != b"q" {
                continue;
            }
            let mut w = Writer::new(&mut tx.bufs[m]);
            w.raw(b"d1:rd2:id");
            w.bstr(&id);
            w.raw(b"e1:t");
            w.bstr(t);
            w.raw(b"1:y1:re");
            if w.overflow {
                continue;
            }
            tx.lens[m] = w.len;
            tx.names[m] = rx.names[i];
            m += 1;
        }
        if gso {
            match echo_send_gso(raw, &tx, m, &mut gtx, &mut order) {
                Ok(sent) => {
                    answered += sent as u64;
                    continue;
                }
                Err(e) if gso_unsupported(&e) => gso = false,
                Err(_) => continue,
            }
        }
        let mut off = 0;
        let mut tries = 0;
        while off < m && tries < 1000 {
            if off > 0 {
                // Shift the unsent tail to the front (rare: only after a short send).
                for k in off..m {
                    tx.bufs[k - off] = tx.bufs[k];
                    tx.lens[k - off] = tx.lens[k];
                    tx.names[k - off] = tx.names[k];
                }
                m -= off;
                off = 0;
            }
            match tx.send(raw, m, true) {
                Ok(s) => off += s,
                Err(_) => break,
            }
            tries += 1;
        }
        answered += off as u64;
    }
    Ok(answered)
}

/// Send the first `m` replies in `tx` as GSO groups (one per destination and
/// size); returns how many datagrams went out.
fn echo_send_gso(
    fd: RawFd,
    tx: &MsgBatch<256>,
    m: usize,
    gtx: &mut GsoBatch,
    order: &mut Vec<(u64, usize, usize)>,
) -> io::Result<usize> {
    order.clear();
    for i in 0..m {
        let key = from_storage(&tx.names[i]).map_or(0, |a| {
            (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
        });
        order.push((key, tx.lens[i], i));
    }
    order.sort_unstable();
    gtx.groups.clear();
    let mut off = 0;
    let mut last_key = None;
    for &(key, len, i) in order.iter() {
        let Some(dst) = gtx.data.get_mut(off..off + len) else {
            break;
        };
        dst.copy_from_slice(&tx.bufs[i][..len]);
        match gtx.groups.last_mut() {
            Some(g) if last_key == Some(key) && g.seg == len && g.count < GSO_MAX_SEGS => {
                g.count += 1
            }
            _ => gtx.groups.push(Group {
                off,
                seg: len,
                count: 1,
                dest: Some(tx.names[i]),
            }),
        }
        last_key = Some(key);
        off += len;
    }
    let mut sent = 0;
    let mut tries = 0;
    while !gtx.groups.is_empty() && tries < 1000 {
        tries += 1;
        let g = gtx.send(fd)?;
        sent += gtx.groups.drain(..g).map(|g| g.count).sum::<usize>();
    }
    Ok(sent)
}

/// Bind the echo responder and run it on its own thread.
fn spawn_echo(
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    gso: bool,
) -> io::Result<(SocketAddrV4, std::thread::JoinHandle<io::Result<u64>>)> {
    let fd = udp_socket(addr, false)?;
    let bound = local_addr(fd.as_raw_fd())?;
    let h = std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || echo_loop(fd, stop, gso))?;
    Ok((bound, h))
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

/// One outstanding-query slot of a source socket.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Generation: the low half of the transaction id; bumped per query.
    gen: u16,
    /// When the current query went out (ns since start).
    sent_ns: u64,
    /// Whether a query is in flight in this slot.
    outstanding: bool,
    /// Kind of the current query.
    kind: u8,
}

/// One source socket and its slots.
struct Source {
    /// The connected, non-blocking UDP socket.
    fd: OwnedFd,
    /// This socket's node id.
    id: [u8; 20],
    /// `--inflight` slots.
    slots: Vec<Slot>,
    /// Slots waiting for their next query to be sent.
    pending: Vec<u16>,
}

/// Counters and the latency histogram.
struct Stats {
    /// Queries sent, whole run.
    sent_total: u64,
    /// Matched replies, whole run.
    answered_total: u64,
    /// Matched replies in the measured window.
    answered: u64,
    /// Matched `e` replies in the measured window.
    errors: u64,
    /// Timeouts in the measured window.
    lost: u64,
    /// Timeouts, whole run.
    lost_total: u64,
    /// Well-formed replies whose tid matched no outstanding query (e.g. late).
    unmatched: u64,
    /// Datagrams that were not a KRPC message dictionary.
    malformed: u64,
    /// Queries the target sent to our sources (e.g. pings); not answered.
    incoming_queries: u64,
    /// CPU seconds the generator thread used during the run.
    gen_cpu_s: f64,
    /// Send errors other than EAGAIN.
    send_errors: u64,
    /// Matched replies in the measured window, by query kind.
    answered_by_kind: [u64; 3],
    /// Latency counts, one bucket per microsecond.
    hist: Vec<u32>,
    /// Latencies at or above HIST_US microseconds.
    hist_over: u64,
    /// Largest latency seen, µs.
    max_us: u64,
    /// Replies counted in the current one-second interval.
    this_sec: u64,
    /// Per-second reply counts after warmup.
    per_sec: Vec<u64>,
}

impl Stats {
    /// Zeroed counters.
    fn new() -> Self {
        Stats {
            sent_total: 0,
            answered_total: 0,
            answered: 0,
            errors: 0,
            lost: 0,
            lost_total: 0,
            unmatched: 0,
            malformed: 0,
            incoming_queries: 0,
            gen_cpu_s: 0.0,
            send_errors: 0,
            answered_by_kind: [0; 3],
            hist: vec![0; HIST_US],
            hist_over: 0,
            max_us: 0,
            this_sec: 0,
            per_sec: Vec::new(),
        }
    }

    /// The latency (µs) at quantile q in the measured window.
    fn percentile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.hist.iter().map(|&c| u64::from(c)).sum::<u64>() + self.hist_over;
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut acc = 0u64;
        for (us, &c) in self.hist.iter().enumerate() {
            acc += u64::from(c);
            if acc >= rank {
                return Some(us as u64);
            }
        }
        Some(self.max_us)
    }
}

/// Median of a list of samples (0 when empty).
fn median(v: &[u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// The whole closed-loop generator.
struct Gen {
    /// Options.
    opts: Opts,
    /// Source sockets.
    sources: Vec<Source>,
    /// epoll instance.
    ep: OwnedFd,
    /// Random numbers for ids and keys.
    rng: SmallRng,
    /// Cumulative mix weights.
    mix_cum: [u32; 3],
    /// Send scratch.
    tx: MsgBatch<SEND_BUF>,
    /// Send scratch for UDP GSO.
    gtx: GsoBatch,
    /// Whether UDP GSO is in use (cleared if the kernel refuses it).
    gso: bool,
    /// Slots of one batch, sorted by query kind.
    by_kind: [Vec<u16>; 3],
    /// Receive scratch.
    rx: MsgBatch<RECV_BUF>,
    /// Counters.
    stats: Stats,
    /// Time zero.
    start: Instant,
    /// End of warmup, ns since start.
    warm_end_ns: u64,
}

impl Gen {
    /// Open, bind and connect the source sockets and register them with epoll.
    fn new(opts: Opts, target: SocketAddrV4) -> io::Result<Self> {
        // SAFETY: plain epoll_create1 call; the result is checked.
        let ep_raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: ep_raw is a fresh descriptor that nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep_raw) };
        let mut rng = SmallRng::from_entropy();
        let mut sources = Vec::with_capacity(opts.sources);
        let mut ip = u32::from(opts.source_base);
        for i in 0..opts.sources {
            // Skip .0 and .255 host parts; they work on lo but look odd to targets.
            while matches!(ip & 0xff, 0 | 255) {
                ip = ip.wrapping_add(1);
            }
            let addr = Ipv4Addr::from(ip);
            if addr.octets()[0] != 127 {
                return Err(io::Error::other(format!(
                    "source address {addr} left 127.0.0.0/8"
                )));
            }
            ip = ip.wrapping_add(1);
            let fd = udp_socket(SocketAddrV4::new(addr, 0), true)?;
            connect(fd.as_raw_fd(), target)?;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: ev is a live epoll_event; both descriptors are open.
            cvt(unsafe {
                libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
            })?;
            let mut id = [0u8; 20];
            rng.fill_bytes(&mut id);
            sources.push(Source {
                fd,
                id,
                slots: vec![Slot::default(); opts.inflight],
                pending: (0..opts.inflight as u16).rev().collect(),
            });
        }
        let mut mix_cum = [0u32; 3];
        let mut acc = 0;
        for (i, w) in opts.mix.iter().enumerate() {
            acc += w;
            mix_cum[i] = acc;
        }
        let warm_end_ns = (opts.warmup * 1e9) as u64;
        let gso = !opts.no_gso;
        Ok(Gen {
            opts,
            sources,
            ep,
            rng,
            mix_cum,
            tx: MsgBatch::new(),
            gtx: GsoBatch::new(3, GSO_MAX_SEGS * SEND_BUF),
            gso,
            by_kind: [Vec::new(), Vec::new(), Vec::new()],
            rx: MsgBatch::new(),
            stats: Stats::new(),
            start: Instant::now(),
            warm_end_ns,
        })
    }

    /// Nanoseconds since start.
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Pick a query kind by the mix weights.
    fn pick_kind(&mut self) -> Kind {
        let total = self.mix_cum[2];
        let r = self.rng.gen_range(0..total);
        let i = self.mix_cum.iter().position(|&c| r < c).unwrap_or(0);
        Kind::ALL[i]
    }

    /// Send queries for as many pending slots of source `si` as the socket takes.
    fn flush(&mut self, si: usize) {
        if self.gso {
            self.flush_gso(si);
        } else {
            self.flush_plain(si);
        }
    }

    /// [`Gen::flush`] with UDP GSO: each batch is sorted by query kind, and
    /// each kind (all of one size) goes out as one GSO group.
    fn flush_gso(&mut self, si: usize) {
        let mut guard = 0;
        while !self.sources[si].pending.is_empty() && guard < 64 {
            guard += 1;
            let n = self.sources[si].pending.len().min(GSO_MAX_SEGS);
            let base = self.sources[si].pending.len() - n;
            for v in self.by_kind.iter_mut() {
                v.clear();
            }
            for k in 0..n {
                let slot_idx = self.sources[si].pending[base + k];
                let kind = self.pick_kind();
                self.by_kind[kind as usize].push(slot_idx);
            }
            let mut w = base;
            for list in &self.by_kind {
                for &slot_idx in list {
                    self.sources[si].pending[w] = slot_idx;
                    w += 1;
                }
            }
            self.gtx.groups.clear();
            let mut off = 0;
            let mut idx = base;
            for (kind_i, kind) in Kind::ALL.into_iter().enumerate() {
                let cnt = self.by_kind[kind_i].len();
                for _ in 0..cnt {
                    let slot_idx = self.sources[si].pending[idx];
                    idx += 1;
                    let mut key = [0u8; 20];
                    self.rng.fill_bytes(&mut key);
                    let id = if self.opts.fresh_ids {
                        let mut id = [0u8; 20];
                        self.rng.fill_bytes(&mut id);
                        id
                    } else {
                        self.sources[si].id
                    };
                    let slot = &mut self.sources[si].slots[usize::from(slot_idx)];
                    slot.kind = kind as u8;
                    let s = slot_idx.to_be_bytes();
                    let g = slot.gen.to_be_bytes();
                    let tid = [s[0], s[1], g[0], g[1]];
                    let Some(buf) = self.gtx.data.get_mut(off..off + SEND_BUF) else {
                        break;
                    };
                    let len = build_query(buf, kind, &id, &key, &tid, self.opts.read_only);
                    match self.gtx.groups.last_mut() {
                        Some(g) if g.seg == len && g.off + g.seg * g.count == off => g.count += 1,
                        _ => self.gtx.groups.push(Group {
                            off,
                            seg: len,
                            count: 1,
                            dest: None,
                        }),
                    }
                    off += len;
                }
            }
            let fd = self.sources[si].fd.as_raw_fd();
            let sent_groups = match self.gtx.send(fd) {
                Ok(g) => g,
                Err(e) if gso_unsupported(&e) => {
                    self.gso = false;
                    self.flush_plain(si);
                    return;
                }
                Err(_) => {
                    self.stats.send_errors += 1;
                    0
                }
            };
            let sent: usize = self.gtx.groups[..sent_groups].iter().map(|g| g.count).sum();
            let now = self.now_ns();
            for k in 0..sent {
                let slot_idx = self.sources[si].pending[base + k];
                let slot = &mut self.sources[si].slots[usize::from(slot_idx)];
                slot.outstanding = true;
                slot.sent_ns = now;
            }
            self.sources[si].pending.drain(base..base + sent);
            self.stats.sent_total += sent as u64;
            if sent < n {
                break;
            }
        }
    }

    /// [`Gen::flush`] with one datagram per sendmmsg message.
    fn flush_plain(&mut self, si: usize) {
        let mut guard = 0;
        while !self.sources[si].pending.is_empty() && guard < 64 {
            guard += 1;
            let n = self.sources[si].pending.len().min(BATCH);
            let base = self.sources[si].pending.len() - n;
            for k in 0..n {
                let slot_idx = self.sources[si].pending[base + k];
                let kind = self.pick_kind();
                let mut key = [0u8; 20];
                self.rng.fill_bytes(&mut key);
                let id = if self.opts.fresh_ids {
                    let mut id = [0u8; 20];
                    self.rng.fill_bytes(&mut id);
                    id
                } else {
                    self.sources[si].id
                };
                let slot = &mut self.sources[si].slots[usize::from(slot_idx)];
                slot.kind = kind as u8;
                let s = slot_idx.to_be_bytes();
                let g = slot.gen.to_be_bytes();
                let tid = [s[0], s[1], g[0], g[1]];
                self.tx.lens[k] = build_query(
                    &mut self.tx.bufs[k],
                    kind,
                    &id,
                    &key,
                    &tid,
                    self.opts.read_only,
                );
            }
            let fd = self.sources[si].fd.as_raw_fd();
            let sent = match self.tx.send(fd, n, false) {
                Ok(s) => s,
                Err(_) => {
                    // ECONNREFUSED and friends: the error is now cleared; retry
                    // on the next pass, the slots stay pending.
                    self.stats.send_errors += 1;
                    0
                }
            };
            let now = self.now_ns();
            for k in 0..sent {
                let slot_idx = self.sources[si].pending[base + k];
                let slot = &mut self.sources[si].slots[usize::from(slot_idx)];
                slot.outstanding = true;
                slot.sent_ns = now;
            }
            // Drop the sent ones (they are pending[base..base+sent]).
            self.sources[si].pending.drain(base..base + sent);
            self.stats.sent_total += sent as u64;
            if sent < n {
                break;
            }
        }
    }

    /// Account for one datagram received on source `si` at `now`.
    fn on_datagram(&mut self, si: usize, k: usize, now: u64) {
        let Some((y, t)) = parse_krpc(self.rx.received(k)) else {
            self.stats.malformed += 1;
            return;
        };
        let is_err = match y {
            b"r" => false,
            b"e" => true,
            b"q" => {
                self.stats.incoming_queries += 1;
                return;
            }
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        let &[s0, s1, g0, g1] = t else {
            self.stats.unmatched += 1;
            return;
        };
        let slot_idx = u16::from_be_bytes([s0, s1]);
        let gen = u16::from_be_bytes([g0, g1]);
        let src = &mut self.sources[si];
        let Some(slot) = src.slots.get_mut(usize::from(slot_idx)) else {
            self.stats.unmatched += 1;
            return;
        };
        if !slot.outstanding || slot.gen != gen {
            self.stats.unmatched += 1;
            return;
        }
        slot.outstanding = false;
        slot.gen = slot.gen.wrapping_add(1);
        let kind = usize::from(slot.kind).min(2);
        let lat_us = now.saturating_sub(slot.sent_ns) / 1000;
        src.pending.push(slot_idx);
        self.stats.answered_total += 1;
        if now >= self.warm_end_ns {
            let st = &mut self.stats;
            st.answered += 1;
            st.this_sec += 1;
            st.answered_by_kind[kind] += 1;
            if is_err {
                st.errors += 1;
            }
            match st.hist.get_mut(lat_us as usize) {
                Some(c) => *c = c.saturating_add(1),
                None => st.hist_over += 1,
            }
            st.max_us = st.max_us.max(lat_us);
        }
    }

    /// Read everything waiting on source `si`, then send the follow-up queries.
    fn drain(&mut self, si: usize) {
        let fd = self.sources[si].fd.as_raw_fd();
        for _ in 0..64 {
            // An error (ICMP port unreachable while the target is not up, and
            // the like) is consumed by the call; those queries will time out.
            let n = self.rx.recv(fd, libc::MSG_DONTWAIT, false).unwrap_or(0);
            if n == 0 {
                break;
            }
            let now = self.now_ns();
            for k in 0..n {
                self.on_datagram(si, k, now);
            }
            if n < BATCH {
                break;
            }
        }
        self.flush(si);
    }

    /// Replace queries older than the timeout, and retry stuck sends.
    fn scan_timeouts(&mut self, now: u64) {
        let timeout_ns = self.opts.timeout.as_nanos() as u64;
        let in_window = now >= self.warm_end_ns;
        for si in 0..self.sources.len() {
            let src = &mut self.sources[si];
            for (i, slot) in src.slots.iter_mut().enumerate() {
                if slot.outstanding && now.saturating_sub(slot.sent_ns) > timeout_ns {
                    slot.outstanding = false;
                    slot.gen = slot.gen.wrapping_add(1);
                    src.pending.push(i as u16);
                    self.stats.lost_total += 1;
                    if in_window {
                        self.stats.lost += 1;
                    }
                }
            }
            if !self.sources[si].pending.is_empty() {
                self.flush(si);
            }
        }
    }

    /// Run warmup + duration; returns the measured window length in seconds.
    fn run(&mut self) -> f64 {
        let end_ns = self.warm_end_ns + (self.opts.duration * 1e9) as u64;
        self.start = Instant::now();
        for si in 0..self.sources.len() {
            self.flush(si);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut cpu_at_warm: Option<f64> = None;
        let mut next_scan = 0u64;
        let mut next_sec = 1_000_000_000u64;
        let scan_every = (self.opts.timeout.as_nanos() as u64 / 4).clamp(1_000_000, 50_000_000);
        loop {
            // SAFETY: events is a live buffer of events.len() entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    1,
                )
            };
            for ev in events.iter().take(n.max(0) as usize) {
                let si = ev.u64 as usize;
                if si < self.sources.len() {
                    self.drain(si);
                }
            }
            if !self.opts.coalesce.is_zero() {
                std::thread::sleep(self.opts.coalesce);
            }
            let now = self.now_ns();
            if now >= next_scan {
                self.scan_timeouts(now);
                next_scan = now + scan_every;
            }
            while now >= next_sec {
                if next_sec > self.warm_end_ns {
                    self.stats.per_sec.push(self.stats.this_sec);
                }
                self.stats.this_sec = 0;
                next_sec += 1_000_000_000;
            }
            if cpu_at_warm.is_none() && now >= self.warm_end_ns {
                cpu_at_warm = Some(thread_cpu_s());
            }
            if now >= end_ns {
                self.stats.gen_cpu_s = thread_cpu_s() - cpu_at_warm.unwrap_or(0.0);
                return (now - self.warm_end_ns.min(now)) as f64 / 1e9;
            }
        }
    }
}

/// CPU time (user + system) of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    // SAFETY: rusage is plain old data; getrusage fills the live struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a live rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Everything the final report says.
struct Report<'a> {
    /// Options used.
    opts: &'a Opts,
    /// Target address.
    target: SocketAddrV4,
    /// Counters.
    stats: &'a Stats,
    /// Measured window in seconds.
    window_s: f64,
    /// Replies the self-test echo sent, if it ran.
    echo_answered: Option<u64>,
    /// Whether UDP GSO was still in use at the end.
    gso: bool,
}

impl Report<'_> {
    /// One JSON object.
    fn json(&self) -> String {
        let s = self.stats;
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |x| x.to_string());
        let per_sec: Vec<String> = s.per_sec.iter().map(|v| v.to_string()).collect();
        format!(
            concat!(
                "{{\"target\":\"{}\",\"sources\":{},\"inflight\":{},\"mix\":\"{}:{}:{}\",",
                "\"warmup_s\":{},\"duration_s\":{:.3},\"timeout_ms\":{},",
                "\"qps_median\":{},\"qps_overall\":{:.0},\"answered\":{},\"errors\":{},",
                "\"answered_ping\":{},\"answered_find_node\":{},\"answered_get_peers\":{},",
                "\"lost\":{},\"lost_total\":{},\"unmatched\":{},\"malformed\":{},\"send_errors\":{},",
                "\"incoming_queries\":{},\"gen_cpu_s\":{:.3},\"gen_cpu_util\":{:.3},\"gso\":{},",
                "\"sent_total\":{},\"answered_total\":{},",
                "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},",
                "\"per_second\":[{}],\"echo_answered\":{}}}"
            ),
            self.target,
            self.opts.sources,
            self.opts.inflight,
            self.opts.mix[0],
            self.opts.mix[1],
            self.opts.mix[2],
            self.opts.warmup,
            self.window_s,
            self.opts.timeout.as_millis(),
            median(&s.per_sec),
            self.qps(),
            s.answered,
            s.errors,
            s.answered_by_kind[0],
            s.answered_by_kind[1],
            s.answered_by_kind[2],
            s.lost,
            s.lost_total,
            s.unmatched,
            s.malformed,
            s.send_errors,
            s.incoming_queries,
            s.gen_cpu_s,
            self.cpu_util(),
            self.gso,
            s.sent_total,
            s.answered_total,
            opt(s.percentile(0.50)),
            opt(s.percentile(0.99)),
            opt(s.percentile(0.999)),
            s.max_us,
            per_sec.join(","),
            opt(self.echo_answered),
        )
    }

    /// Fraction of one core the generator thread used in the window.
    fn cpu_util(&self) -> f64 {
        if self.window_s > 0.0 {
            self.stats.gen_cpu_s / self.window_s
        } else {
            0.0
        }
    }

    /// Answered queries per second over the whole measured window.
    fn qps(&self) -> f64 {
        if self.window_s > 0.0 {
            self.stats.answered as f64 / self.window_s
        } else {
            0.0
        }
    }

    /// Human-readable lines.
    fn text(&self) -> String {
        let s = self.stats;
        let p = |q| s.percentile(q).map_or("-".to_string(), |v| v.to_string());
        format!(
            "target {} sources {} inflight {} mix {}:{}:{} window {:.2}s\n\
             answered/s: median {} overall {:.0}  (answered {}, e-replies {}, ping/find_node/get_peers {}/{}/{})\n\
             lost {} (whole run {}), unmatched {}, malformed {}, send errors {}, queries from target {}\n\
             generator: {:.2} CPU s ({:.0}% of a core), gso {}\n\
             latency us: p50 {} p99 {} p99.9 {} max {}\n\
             per second: {:?}\n",
            self.target,
            self.opts.sources,
            self.opts.inflight,
            self.opts.mix[0],
            self.opts.mix[1],
            self.opts.mix[2],
            self.window_s,
            median(&s.per_sec),
            self.qps(),
            s.answered,
            s.errors,
            s.answered_by_kind[0],
            s.answered_by_kind[1],
            s.answered_by_kind[2],
            s.lost,
            s.lost_total,
            s.unmatched,
            s.malformed,
            s.send_errors,
            s.incoming_queries,
            s.gen_cpu_s,
            self.cpu_util() * 100.0,
            self.gso,
            p(0.50),
            p(0.99),
            p(0.999),
            s.max_us,
            s.per_sec,
        )
    }
}

/// Run according to the options; returns the process exit code.
fn run(opts: Opts) -> io::Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(addr) = opts.echo_only {
        let (bound, h) = spawn_echo(addr, stop.clone(), !opts.no_gso)?;
        eprintln!(
            "echo responder on {bound} for {}s",
            opts.warmup + opts.duration
        );
        std::thread::sleep(Duration::from_secs_f64(opts.warmup + opts.duration));
        stop.store(true, Ordering::Relaxed);
        let n = h
            .join()
            .map_err(|_| io::Error::other("echo thread panicked"))??;
        eprintln!("echo answered {n}");
        return Ok(0);
    }
    let mut echo = None;
    let target = if opts.self_test_echo {
        let want = opts
            .target
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let (bound, h) = spawn_echo(want, stop.clone(), !opts.no_gso)?;
        echo = Some(h);
        bound
    } else {
        match opts.target {
            Some(t) => t,
            None => {
                eprintln!("loadgen: no --target given; nothing to do (see --help)");
                return Ok(0);
            }
        }
    };
    let mut g = Gen::new(opts.clone(), target)?;
    let window_s = g.run();
    stop.store(true, Ordering::Relaxed);
    let echo_answered = match echo {
        Some(h) => Some(
            h.join()
                .map_err(|_| io::Error::other("echo thread panicked"))??,
        ),
        None => None,
    };
    let rep = Report {
        opts: &opts,
        target,
        stats: &g.stats,
        window_s,
        echo_answered,
        gso: g.gso,
    };
    if opts.json {
        println!("{}", rep.json());
    } else {
        print!("{}", rep.text());
    }
    Ok(0)
}

/// Entry point.
fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(opts) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}
