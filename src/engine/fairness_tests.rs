//! Peer management that is fair to honest peers and hard on hostile ones, each rule driven
//! through real connections on loopback (each test on its own 127.0.0.x addresses, port 0):
//! per-IP bans, a piece completed just before its sender errors, metadata-size liars and
//! unsolicited metadata, a peer that asks and never reads, and a handshake flood.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::tests::{
    cfg, make_torrent, pid, raw_connect, run_fetch, same_tree, start_fetch, start_seeder,
    until_closed, LIMIT,
};
use super::*;
use crate::id::Id;
use crate::wire::{encode, ExtensionHandshake, Handshake, Message, MetadataMessage};

/// Connects to `to` from `from_ip` and sends a handshake; true if the peer answered with its
/// own handshake (false: refused or closed).
async fn handshake_from(from_ip: &str, to: SocketAddr, ih: Id) -> bool {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from_ip}:0").parse().unwrap()).unwrap();
    let Ok(mut s) = sock.connect(to).await else {
        return false;
    };
    if s.write_all(&Handshake::new(ih, pid(99)).to_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut hs = [0u8; 68];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hs)).await,
        Ok(Ok(_))
    )
}

/// Reads one length-prefixed frame (body without the prefix); `None` on EOF.
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(body)
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut m = Vec::new();
    encode(msg, &mut m);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_ip_cannot_come_back_from_another_port() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "ban.bin", &[("x", 1024 * 1024)], 32 * 1024, 11);
    // The liar (127.0.0.9) corrupts everything; the honest seeder is on 127.0.0.1.
    let liar = start_seeder(&mi, src.path(), 9, Some(Arc::new(|_| true))).await;
    let honest = start_seeder(&mi, src.path(), 1, None).await;
    let (l, rt, done) =
        start_fetch(mi.info_hash, Some(mi.clone()), dst.path(), 203, cfg(), true).await;
    rt.peers
        .send((liar.local_addr(), PeerSource::Manual))
        .await
        .unwrap();
    let first = tokio::time::timeout(LIMIT, async {
        let mut p = rt.progress.clone();
        while p.borrow_and_update().downloaded == 0 {
            p.changed().await.unwrap();
        }
    })
    .await;
    assert!(first.is_ok(), "the liar sent nothing");
    rt.peers
        .send((honest.local_addr(), PeerSource::Manual))
        .await
        .unwrap();
    let report = tokio::time::timeout(LIMIT, done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(report.peers_banned, 1, "{report:?}");
    // The fetcher still listens (seeding): the liar's IP is refused from any port, while
    // another address is served.
    assert!(!handshake_from("127.0.0.9", l.local_addr(), mi.info_hash).await);
    assert!(!handshake_from("127.0.0.9", l.local_addr(), mi.info_hash).await);
    assert!(handshake_from("127.0.0.60", l.local_addr(), mi.info_hash).await);
    for s in [&liar, &honest] {
        s.shutdown();
    }
    l.shutdown();
}

/// A fake seed that serves real blocks of `file` (one 16 KiB block per piece) and, right
/// after the first piece it sends, a malformed frame in the same write: the connection
/// errors just after that piece's last block arrived.
async fn dying_seed(file: PathBuf) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.70:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut c, _)) = l.accept().await else {
            return;
        };
        let mut hs = [0u8; 68];
        if c.read_exact(&mut hs).await.is_err() {
            return;
        }
        let theirs = Handshake::decode(&hs).unwrap().unwrap();
        let mut out = Handshake::new(theirs.info_hash, pid(70))
            .to_bytes()
            .to_vec();
        let n = (std::fs::metadata(&file).unwrap().len() / 16384) as u32;
        let mut bits = vec![0u8; (n as usize).div_ceil(8)];
        for i in 0..n {
            bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
        out.extend(frame(&Message::Bitfield(bits)));
        out.extend(frame(&Message::Unchoke));
        let _ = c.write_all(&out).await;
        let f = std::fs::File::open(&file).unwrap();
        while let Some(body) = read_frame(&mut c).await {
            if body.first() != Some(&6) {
                continue;
            }
            let index = u32::from_be_bytes(body[1..5].try_into().unwrap());
            let mut data = vec![0u8; 16384];
            f.read_exact_at(&mut data, u64::from(index) * 16384)
                .unwrap();
            let mut m = Vec::new();
            crate::wire::encode_piece_header(index, 0, 16384, &mut m);
            m.extend_from_slice(&data);
            // A bitfield of the wrong size: a protocol error right behind the last block.
            m.extend_from_slice(&[0, 0, 0, 2, 5, 0xFF]);
            let _ = c.write_all(&m).await;
            break;
        }
        let mut sink = [0u8; 4096];
        while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piece_completed_just_before_an_error_is_not_lost() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "die.bin", &[("x", 64 * 16384)], 16384, 12);
    let fake = dying_seed(src.path().join("die.bin")).await;
    let honest = start_seeder(&mi, src.path(), 1, None).await;
    // The fake seed comes first; the honest one later supplies the rest. If the piece the
    // fake completed were lost in "hashing", the fetch would never finish.
    let out = run_fetch(
        mi.info_hash,
        Some(mi.clone()),
        dst.path(),
        &[fake, honest.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(out.report.hash_failures, 0, "{:?}", out.report);
    honest.shutdown();
}

/// A fake peer that claims a wrong `metadata_size` and answers metadata requests with junk of
/// that size; with `unsolicited`, it sends a metadata piece nobody asked for right away.
/// `id_byte` makes its peer id: two fakes under one id would be one peer to the engine (one
/// connection per peer id), and which of them got through would be down to timing.
async fn metadata_liar(ip: &str, id_byte: u8, fake_size: u64, unsolicited: bool) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut hs = [0u8; 68];
                if c.read_exact(&mut hs).await.is_err() {
                    return;
                }
                let theirs = Handshake::decode(&hs).unwrap().unwrap();
                let mut out = Handshake::new(theirs.info_hash, pid(id_byte))
                    .to_bytes()
                    .to_vec();
                let mut eh = ExtensionHandshake {
                    metadata_size: Some(fake_size),
                    ..ExtensionHandshake::default()
                };
                eh.m.insert("ut_metadata".into(), 3);
                out.extend(frame(&Message::Extended {
                    ext_id: 0,
                    payload: eh.encode(),
                }));
                let junk = |piece: u32| {
                    let len = (fake_size - u64::from(piece) * 16384).min(16384) as usize;
                    let mut p = Vec::new();
                    MetadataMessage::encode_data_header(piece, fake_size, &mut p);
                    p.extend(std::iter::repeat_n(0x42u8, len));
                    p
                };
                let mut their_ut = None;
                if unsolicited {
                    // Their id is unknown until their handshake; 2 is what dhtnode assigns.
                    out.extend(frame(&Message::Extended {
                        ext_id: 2,
                        payload: junk(0),
                    }));
                }
                let _ = c.write_all(&out).await;
                while let Some(body) = read_frame(&mut c).await {
                    if body.first() != Some(&20) || body.len() < 2 {
                        continue;
                    }
                    if body[1] == 0 {
                        if let Ok(h) = ExtensionHandshake::decode(&body[2..], 1 << 30) {
                            their_ut = h.extension_id("ut_metadata");
                        }
                        continue;
                    }
                    if let (Some(id), Ok(MetadataMessage::Request { piece })) =
                        (their_ut, MetadataMessage::decode(&body[2..]))
                    {
                        let _ = c
                            .write_all(&frame(&Message::Extended {
                                ext_id: id,
                                payload: junk(piece),
                            }))
                            .await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_liars_cannot_stall_a_magnet_fetch() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "meta.bin", &[("x", 512 * 1024)], 16384, 13);
    let real = mi.info_bytes.len() as u64;
    // Listed first, so they are dialed first and claim their sizes first.
    let liar = metadata_liar("127.0.0.81", 80, real + 5000, false).await;
    let pusher = metadata_liar("127.0.0.82", 81, real, true).await;
    let honest = start_seeder(&mi, src.path(), 1, None).await;
    let out = run_fetch(
        mi.info_hash,
        None,
        dst.path(),
        &[liar, pusher, honest.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert!(out.report.metadata.is_some());
    honest.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_and_never_reads_is_dropped() {
    let src = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "slow.bin", &[("x", 256 * 1024)], 16384, 14);
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let mut s = raw_connect(seeder.local_addr(), mi.info_hash).await;
    let mut eh = ExtensionHandshake::default();
    eh.m.insert("ut_metadata".into(), 3);
    let mut m = frame(&Message::Extended {
        ext_id: 0,
        payload: eh.encode(),
    });
    let mut req = Vec::new();
    MetadataMessage::Request { piece: 0 }.encode(&mut req);
    let one = frame(&Message::Extended {
        ext_id: 2,
        payload: req,
    });
    // Far more replies than the queue bound plus socket buffers can hold.
    let replies_needed = (64 * 1024 * 1024) / mi.info_bytes.len() + 1;
    for _ in 0..replies_needed.min(400_000) {
        m.extend_from_slice(&one);
    }
    // Write without reading (in the background: our own send buffer fills up too).
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&m).await;
        wr
    });
    // Do not read for a while, then read: the seeder must have closed the connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a peer that never reads was not dropped");
    writer.abort();
    // The seeder still serves others.
    s = raw_connect(seeder.local_addr(), mi.info_hash).await;
    drop(s);
    seeder.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_is_capped_and_honest_peers_still_served() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "flood.bin", &[("x", 256 * 1024)], 16384, 15);
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let cap = cfg().max_pending_handshakes;
    // Silent connections: they never send a handshake.
    let mut silent = Vec::new();
    for _ in 0..cap + 20 {
        silent.push(TcpStream::connect(seeder.local_addr()).await.unwrap());
    }
    // Those over the cap are closed at once.
    let mut closed = 0;
    for s in silent.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 20,
        "only {closed} of the connections over the cap were closed"
    );
    // Once the silent ones go, an honest fetch works.
    drop(silent);
    let out = run_fetch(
        mi.info_hash,
        Some(mi.clone()),
        dst.path(),
        &[seeder.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(out.report.fetched_bytes, mi.info.total_length());
    let _ = until_closed;
    seeder.shutdown();
}
