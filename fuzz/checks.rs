//! The property checks behind every fuzz target, shared verbatim by the libFuzzer targets in
//! `fuzz/fuzz_targets/` and by the corpus replay test `tests/fuzz_corpus.rs` (both include this
//! file with `#[path]`), so the corpus runs under plain `cargo test` exactly as it is fuzzed.
//!
//! Each `check_*` takes raw bytes and must never panic, hang or allocate out of proportion to
//! its input; where an encoder exists, decode → encode → decode must give back an equal value.
//! Only the public `dhtnode` API is used.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dhtnode::id::Id;
use dhtnode::krpc;
use dhtnode::torrent::{self, Info, Magnet, Metainfo};
use dhtnode::wire::{
    self, ExtensionHandshake, Handshake, Limits, MetadataAssembler, MetadataMessage, PexFlags,
    PexMessage, PexSender,
};

/// The targets, by the name of their corpus / regression folder.
pub const TARGETS: &[&str] = &[
    "krpc_decode",
    "metainfo_parse",
    "magnet_parse",
    "wire_codec",
    "ut_metadata",
    "metadata_assembler",
    "ut_pex",
    "tracker_http",
    "tracker_udp",
];

/// Runs the check for `target` on `data`. Panics on an unknown target name.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "krpc_decode" => check_krpc(data),
        "metainfo_parse" => check_metainfo(data),
        "magnet_parse" => check_magnet(data),
        "wire_codec" => check_wire(data),
        "ut_metadata" => check_ut_metadata(data),
        "metadata_assembler" => check_assembler(data),
        "ut_pex" => check_pex(data),
        "tracker_http" => check_tracker_http(data),
        "tracker_udp" => check_tracker_udp(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// HTTP tracker answers (announce and scrape bodies): parse; a parsed announce has at most
/// `MAX_PEERS` peers, no duplicates, no port 0 and no unspecified address.
pub fn check_tracker_http(data: &[u8]) {
    use dhtnode::tracker::{response, MAX_PEERS};
    if let Ok(r) = response::parse_announce(data) {
        assert!(r.peers.len() <= MAX_PEERS, "{} peers kept", r.peers.len());
        let mut seen = std::collections::HashSet::new();
        for p in &r.peers {
            assert!(
                p.port() != 0 && !p.ip().is_unspecified(),
                "useless peer {p}"
            );
            assert!(seen.insert(*p), "duplicate peer {p}");
        }
        assert!(r.warning.as_ref().map_or(0, |w| w.chars().count()) <= 300);
    }
    let _ = response::parse_scrape(data, &Id([0; 20]));
}

/// UDP tracker datagrams: decode for both families; fed to an exchange waiting for a connect
/// answer, any datagram leads to a send, a wait or an end — never a panic.
pub fn check_tracker_udp(data: &[u8]) {
    use dhtnode::tracker::udp_proto::{self, Exchange, Op, Reply, Retransmit};
    use dhtnode::tracker::MAX_PEERS;
    for v6 in [false, true] {
        if let Ok(Reply::Announced { response, .. }) = udp_proto::decode(data, v6) {
            assert!(response.peers.len() <= MAX_PEERS);
        }
        let now = Instant::now();
        let (mut x, _) = Exchange::start(
            now,
            Op::Scrape(Id([1; 20])),
            v6,
            Retransmit::default(),
            None,
            data.first().copied().map_or(0, u32::from),
        );
        let _ = x.on_datagram(now, data);
        let _ = x.on_timeout(now + Duration::from_secs(3600));
    }
}

/// KRPC datagrams: decode; a decoded message re-encodes to bytes that decode to the same
/// message, and encoding is stable after one round.
pub fn check_krpc(data: &[u8]) {
    let Ok(msg) = krpc::Message::decode(data) else {
        return;
    };
    let bytes = msg.encode();
    let again = krpc::Message::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded KRPC message does not decode: {e:?}\nmsg: {msg:?}"));
    assert_eq!(msg, again, "KRPC round trip changed the message");
    assert_eq!(bytes, again.encode(), "KRPC encoding is not stable");
}

/// `.torrent` files and bare info dictionaries (BEP 9 metadata): parse; for a parsed torrent,
/// the layout the engine would build is valid, and `to_torrent_bytes` parses back to an equal
/// `Metainfo`.
pub fn check_metainfo(data: &[u8]) {
    if let Ok(m) = Metainfo::from_bytes(data) {
        assert_eq!(m.info_hash, torrent::info_hash_of(&m.info_bytes));
        exercise_info(&m.info);
        // The info dictionary alone must parse the same way (that is what BEP 9 fetches).
        let info = Info::from_bytes(&m.info_bytes)
            .unwrap_or_else(|e| panic!("info of a valid torrent does not parse alone: {e:?}"));
        assert_eq!(
            info, m.info,
            "info parses differently alone and inside the torrent"
        );
        let bytes = m.to_torrent_bytes();
        let again = Metainfo::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("to_torrent_bytes output does not parse: {e:?}"));
        assert_eq!(m, again, "Metainfo round trip changed the torrent");
    }
    if let Ok(info) = Info::from_bytes(data) {
        exercise_info(&info);
        let m = Metainfo::from_info_bytes(data).unwrap_or_else(|e| {
            panic!("from_info_bytes refuses what Info::from_bytes took: {e:?}")
        });
        assert_eq!(m.info, info);
        let again = Metainfo::from_bytes(&m.to_torrent_bytes()).unwrap_or_else(|e| {
            panic!("torrent wrapped around a valid info does not parse: {e:?}")
        });
        assert_eq!(
            again.info_hash, m.info_hash,
            "wrapping changed the info-hash"
        );
    }
}

/// What the engine does with a parsed info: layout, piece sizes, first/last piece segments.
fn exercise_info(info: &Info) {
    let _ = info.total_length();
    let layout = info
        .layout()
        .unwrap_or_else(|e| panic!("validated info has no valid layout: {e:?}"));
    assert_eq!(layout.num_pieces() as usize, info.num_pieces());
    assert_eq!(layout.total_length(), info.total_length());
    let n = layout.num_pieces();
    let mut sum = 0u64;
    for p in [
        0,
        1,
        n / 2,
        n.saturating_sub(2),
        n.saturating_sub(1),
        n,
        u32::MAX,
    ] {
        let in_range = p < n;
        let size = layout.piece_size(p);
        assert_eq!(size.is_ok(), in_range, "piece_size({p}) with {n} pieces");
        if let Ok(size) = size {
            if p == n - 1 {
                sum = u64::from(p) * layout.piece_length() + u64::from(size);
            }
            let _ = layout.num_blocks(p);
            let _ = layout.block(p, 0);
            // Segments of a piece can list one entry per (possibly empty) file it spans;
            // bounded by the file count, which is bounded by the input size.
            if let Ok(segs) = layout.piece_segments(p) {
                assert!(segs.len() <= layout.num_files() + 1);
            }
        }
    }
    if n > 0 {
        assert_eq!(
            sum,
            layout.total_length(),
            "piece sizes do not add up to the total"
        );
    }
}

/// Magnet links and command-line info-hash arguments (any bytes, taken as UTF-8 lossily).
/// A parsed magnet renders to a URI that parses back to an equal magnet.
pub fn check_magnet(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    for m in [Magnet::parse(&s), torrent::parse_infohash_arg(&s)]
        .into_iter()
        .flatten()
    {
        let uri = m.to_uri();
        let again = Magnet::parse(&uri)
            .unwrap_or_else(|e| panic!("to_uri output {uri:?} does not parse: {e:?}"));
        assert_eq!(m, again, "magnet round trip changed the link {uri:?}");
        assert_eq!(uri, m.to_string());
    }
}

/// Peer-wire bytes. The first byte picks the limits (unknown piece count, or a piece count from
/// the next two bytes) and whether a BEP 3 handshake precedes the frames; then frames are
/// decoded until the buffer runs out or an error. Each decoded message re-encodes to exactly
/// the bytes it was decoded from (keep-alives included), and decodes again to itself.
pub fn check_wire(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (limits, mut buf) = if mode & 1 == 0 {
        (Limits::default(), rest)
    } else {
        let n = rest
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        (
            Limits::with_pieces(u32::from(n)),
            rest.get(2..).unwrap_or_default(),
        )
    };
    // Handshake decoding on the same bytes, prefix and full.
    let prefix = Handshake::decode_prefix(buf);
    match Handshake::decode(buf) {
        Ok(Some(hs)) => {
            assert_eq!(
                hs.to_bytes()[..],
                buf[..wire::HANDSHAKE_LEN],
                "handshake re-encoding"
            );
            let Ok(Some((reserved, info_hash))) = prefix else {
                panic!("full handshake decodes but its prefix does not: {prefix:?}");
            };
            assert_eq!((reserved, info_hash), (hs.reserved, hs.info_hash));
            if mode & 2 != 0 {
                buf = &buf[wire::HANDSHAKE_LEN..];
            }
        }
        Ok(None) => {}
        Err(_) => assert!(
            prefix.is_err(),
            "prefix accepts what the full decode refused"
        ),
    }
    let _ = wire::frame_len(buf, &limits);
    // A frame can be at least 4 bytes, so this bounds the loop even if `consumed` misbehaved.
    for _ in 0..=buf.len() / 4 {
        match wire::decode(buf, &limits) {
            Ok(Some((msg, consumed))) => {
                assert!(
                    consumed >= 4 && consumed <= buf.len(),
                    "consumed {consumed} of {}",
                    buf.len()
                );
                let total = wire::frame_len(buf, &limits);
                assert_eq!(total, Ok(Some(consumed)), "frame_len disagrees with decode");
                let mut out = Vec::new();
                wire::encode(&msg, &mut out);
                assert_eq!(out, buf[..consumed], "wire re-encoding differs for {msg:?}");
                let again = wire::decode(&out, &limits);
                assert_eq!(again, Ok(Some((msg, consumed))), "wire round trip");
                buf = &buf[consumed..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// BEP 10 / BEP 9 payloads: the same bytes as an extension handshake and as a `ut_metadata`
/// message. Decoded values re-encode to bytes that decode to the same value.
pub fn check_ut_metadata(data: &[u8]) {
    let max = wire::DEFAULT_MAX_METADATA_SIZE;
    if let Ok(hs) = ExtensionHandshake::decode(data, max) {
        if let Some(size) = hs.metadata_size {
            assert!(size <= max);
        }
        let bytes = hs.encode();
        let again = ExtensionHandshake::decode(&bytes, max)
            .unwrap_or_else(|e| panic!("re-encoded extension handshake does not decode: {e:?}"));
        assert_eq!(hs, again, "extension handshake round trip");
        let _ = hs.extension_id(wire::UT_METADATA);
    }
    if let Ok(msg) = MetadataMessage::decode(data) {
        if let MetadataMessage::Data { data: piece, .. } = &msg {
            assert!(piece.len() <= wire::METADATA_PIECE_LEN);
        }
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let again = MetadataMessage::decode(&bytes)
            .unwrap_or_else(|e| panic!("re-encoded ut_metadata message does not decode: {e:?}"));
        assert_eq!(msg, again, "ut_metadata round trip");
    }
    let _ = wire::bencode_value_len(data, wire::MAX_EXTENSION_DEPTH);
}

/// BEP 11 `ut_pex` payloads: decode; a decoded message keeps within the per-family caps and
/// holds no unconnectable address, and decode → encode → decode gives an equal message with a
/// stable encoding. The decoded peers then drive a `PexSender` with a fake clock: every message
/// it makes stays within 50 added + 50 dropped, none comes sooner than `PEX_INTERVAL` after the
/// last, and it converges (announces everything, then drops everything).
pub fn check_pex(data: &[u8]) {
    let Ok(msg) = PexMessage::decode(data) else {
        return;
    };
    assert!(data.len() <= wire::MAX_PEX_PAYLOAD);
    for v4 in [true, false] {
        let added = msg.added.iter().filter(|(a, _)| a.is_ipv4() == v4).count();
        let dropped = msg.dropped.iter().filter(|a| a.is_ipv4() == v4).count();
        assert!(added <= wire::MAX_PEX_ENTRIES && dropped <= wire::MAX_PEX_ENTRIES);
    }
    let addrs = msg.added.iter().map(|(a, _)| a).chain(&msg.dropped);
    for a in addrs {
        assert!(a.port() != 0 && !a.ip().is_unspecified(), "kept {a}");
    }
    let mut bytes = Vec::new();
    msg.encode(&mut bytes);
    let again = PexMessage::decode(&bytes).unwrap_or_else(|e| {
        panic!("re-encoded ut_pex message does not decode: {e:?}\nmsg: {msg:?}")
    });
    assert_eq!(msg, again, "ut_pex round trip changed the message");
    let mut bytes2 = Vec::new();
    again.encode(&mut bytes2);
    assert_eq!(bytes, bytes2, "ut_pex encoding is not stable");

    // All decoded peers (added and dropped, once each) as one connected set: first half of it,
    // then all of it, then none. At most 200 peers and 50 per message: 8 rounds settle a phase.
    let mut connected: Vec<(SocketAddr, PexFlags)> = Vec::new();
    let candidates = msg.added.iter().copied();
    for (addr, flags) in candidates.chain(msg.dropped.iter().map(|&a| (a, PexFlags::NONE))) {
        if !connected.iter().any(|(a, _)| *a == addr) {
            connected.push((addr, flags));
        }
    }
    let mut sender = PexSender::new();
    let mut now = Instant::now();
    let (mut announced, mut dropped) = (0, 0);
    let half = connected.len() / 2;
    for set in [&connected[..half], &connected[..], &[]] {
        for _ in 0..8 {
            if let Some(m) = sender.poll(now, set) {
                assert!(!m.is_empty(), "PexSender made an empty message");
                assert!(
                    m.added.len() <= wire::MAX_PEX_ENTRIES,
                    "{} added",
                    m.added.len()
                );
                assert!(
                    m.dropped.len() <= wire::MAX_PEX_ENTRIES,
                    "{} dropped",
                    m.dropped.len()
                );
                assert!(
                    m.added.iter().all(|p| set.contains(p)),
                    "announced a stranger"
                );
                assert!(m.dropped.iter().all(|d| set.iter().all(|(a, _)| a != d)));
                announced += m.added.len();
                dropped += m.dropped.len();
                let soon = now + wire::PEX_INTERVAL - Duration::from_millis(1);
                assert_eq!(
                    sender.poll(soon, &[]),
                    None,
                    "two PEX messages within a minute"
                );
            }
            now += wire::PEX_INTERVAL;
        }
    }
    assert_eq!(
        announced,
        connected.len(),
        "every connected peer announced once"
    );
    assert_eq!(dropped, announced, "every announced peer dropped once");
    assert_eq!(sender.poll(now, &[]), None, "PexSender did not settle");
}

/// Reads fuzz input as a little stream of numbers.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The `MetadataAssembler` driven by a fuzzed script.
///
/// Input: `u16` size in 16 KiB-ish units plus a remainder (total size, kept small so pieces are
/// reachable), then `size` bytes of "true" metadata (zero-padded) whose SHA-1 is the info-hash,
/// then operations: receive a true piece, receive a fuzzed piece (any index, size, total size),
/// request, mark, release, release a peer, decode-then-receive a `ut_metadata` message.
/// Invariants: counts stay within range, only the true buffer can complete, and a completed
/// assembler stays complete.
pub fn check_assembler(data: &[u8]) {
    let mut r = Bytes(data);
    let (Some(a), Some(b)) = (r.u8(), r.u16()) else {
        return;
    };
    // 1 ..= 4 pieces' worth of size, plus a remainder, so a few pieces exist.
    let size = (u64::from(a % 4) * wire::METADATA_PIECE_LEN as u64 + u64::from(b)).max(1);
    let mut truth = r.take(size as usize).to_vec();
    truth.resize(size as usize, 0);
    let info_hash = torrent::info_hash_of(&truth);
    // Creating with a hostile size must be refused or bounded, never allocate the claim.
    for claim in [0, u64::MAX, wire::DEFAULT_MAX_METADATA_SIZE + 1] {
        assert!(MetadataAssembler::new(info_hash, claim, wire::DEFAULT_MAX_METADATA_SIZE).is_err());
    }
    let mut asm = MetadataAssembler::new(info_hash, size, wire::DEFAULT_MAX_METADATA_SIZE)
        .unwrap_or_else(|e| panic!("size {size} refused: {e:?}"));
    let n = asm.num_pieces();
    assert_eq!(u64::from(n), size.div_ceil(wire::METADATA_PIECE_LEN as u64));
    let mut completed = false;
    // At most a few hundred operations, each bounded.
    for _ in 0..256 {
        let Some(op) = r.u8() else { break };
        let peer = u64::from(op >> 4);
        let result = match op % 8 {
            0 | 1 => {
                let piece = u32::from(r.u8().unwrap_or(0)) % n.max(1);
                let start = piece as usize * wire::METADATA_PIECE_LEN;
                let len = asm.piece_len(piece).expect("in-range piece has a length");
                Some(asm.receive(peer, piece, size, &truth[start..start + len]))
            }
            2 => {
                let piece = u32::from(r.u8().unwrap_or(0));
                let total = if r.u8().unwrap_or(0) & 1 == 0 {
                    size
                } else {
                    u64::from(r.u16().unwrap_or(0))
                };
                let len = usize::from(r.u16().unwrap_or(0)) % (wire::METADATA_PIECE_LEN + 2);
                let junk = r.take(len).to_vec();
                Some(asm.receive(peer, piece, total, &junk))
            }
            3 => {
                if let Some(p) = asm.next_request(peer) {
                    assert!(p < n);
                }
                None
            }
            4 => {
                let piece = u32::from(r.u8().unwrap_or(0));
                let _ = asm.mark_requested(piece, peer);
                None
            }
            5 => {
                let piece = u32::from(r.u8().unwrap_or(0));
                asm.release(piece, peer);
                None
            }
            6 => {
                asm.release_peer(peer);
                None
            }
            _ => {
                // A ut_metadata payload from the stream, as the engine would feed it.
                let len = usize::from(r.u16().unwrap_or(0)) % (wire::METADATA_PIECE_LEN + 64);
                let payload = r.take(len);
                match MetadataMessage::decode(payload) {
                    Ok(MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    }) => Some(asm.receive(peer, piece, total_size, &data)),
                    _ => None,
                }
            }
        };
        if let Some(Ok(wire::Received::Complete(buf))) = &result {
            assert!(!completed, "completed twice");
            assert_eq!(
                buf, &truth,
                "completed with a buffer other than the true one"
            );
            completed = true;
        }
        assert_eq!(asm.is_complete(), completed);
        assert!(asm.pieces_received() <= n);
        assert!(asm.missing().all(|p| p < n));
        for p in 0..16 {
            assert!(asm.requested_from(p).all(|i| i < n));
        }
    }
}

/// An id from the first 20 bytes (zero-padded); handy for hand-made seeds.
pub fn id_from(bytes: &[u8]) -> Id {
    let mut id = [0u8; 20];
    let n = bytes.len().min(20);
    id[..n].copy_from_slice(&bytes[..n]);
    Id(id)
}
