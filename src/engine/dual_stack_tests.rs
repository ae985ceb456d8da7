//! One peer on both address families (BEP 7 `ipv6` key, BEP 32): driven end to end on
//! loopback — 127.0.0.x and `::1` — with our own seed, each wait bounded.
//!
//! libtorrent 2.0 does not send the `ipv6` key (its `write_extensions` has no such entry),
//! so the peer naming its IPv6 address here is our own engine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::events::Event;
use super::ratelimit::RateLimiter;
use super::tests::{cfg, make_torrent, pid, same_tree, LIMIT};
use super::*;
use crate::id::Id;
use crate::wire::Handshake;

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A dual-stack listener on 127.0.0.`n` and `[::1]` with the same port on both (the `ipv6`
/// key carries no port: the peer's `p` applies to it), retried on a port clash.
async fn dual_same_port(n: u8, lc: ListenerConfig) -> Listener {
    let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    for _ in 0..20 {
        let port = std::net::TcpListener::bind((v4, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let l = Listener::bind_dual(
            SocketAddr::new(v4, port),
            Some(SocketAddr::new(V6, port)),
            lc.clone(),
        )
        .await;
        if let Ok(l) = l {
            return l;
        }
    }
    panic!("no port free on both 127.0.0.{n} and [::1]");
}

/// Dials `addr` as peer `who` and completes the BitTorrent handshake.
async fn handshake_as(addr: SocketAddr, ih: Id, who: Id) -> TcpStream {
    let mut s = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .unwrap();
    s.write_all(&Handshake::new(ih, who).to_bytes())
        .await
        .unwrap();
    let mut hs = [0u8; 68];
    tokio::time::timeout(LIMIT, s.read_exact(&mut hs))
        .await
        .expect("handshake timed out")
        .unwrap();
    s
}

/// Whether the peer closes `s` within `wait` (EOF or reset), reading what it sends.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_id_gets_one_connection_across_families() {
    let src = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "d.bin", &[("x", 256 * 1024)], 16 * 1024, 31);
    let mut lc = ListenerConfig::new(pid(40));
    lc.engine = cfg();
    let seed = dual_same_port(40, lc).await;
    let _rt = seed
        .start(TorrentSpec::seed(
            mi.clone(),
            src.path().to_path_buf(),
            true,
        ))
        .await
        .unwrap();
    let v4 = seed.local_addr();
    let v6 = seed.local_addr6().expect("dual stack");
    let ih = mi.info_hash;

    // Peer 77 over IPv4, then the same peer id over IPv6: the second is dropped at once,
    // the first lives on.
    let mut first = handshake_as(v4, ih, pid(77)).await;
    let mut twin = handshake_as(v6, ih, pid(77)).await;
    assert!(
        closed_within(&mut twin, LIMIT).await,
        "the second connection of one peer id was kept"
    );
    assert!(
        !closed_within(&mut first, Duration::from_millis(500)).await,
        "the first connection was dropped instead"
    );
    // Another peer id over IPv6 is another peer.
    let mut other = handshake_as(v6, ih, pid(78)).await;
    assert!(!closed_within(&mut other, Duration::from_millis(500)).await);
    // Once the first connection is gone, the peer may come back over IPv6.
    drop(first);
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut again = handshake_as(v6, ih, pid(77)).await;
        if !closed_within(&mut again, Duration::from_millis(300)).await {
            break;
        }
        assert!(Instant::now() < deadline, "peer 77 never got back in");
    }
    seed.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_met_over_ipv4_is_dialed_at_the_ipv6_address_it_names() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let len = 1024 * 1024;
    let mi = make_torrent(src.path(), "v6.bin", &[("x", len)], 16 * 1024, 32);

    // The seed listens on 127.0.0.41 and [::1] (its extension handshake names ::1 as
    // `ipv6`), slowly, so the download is still running when IPv4 goes away.
    let mut lc = ListenerConfig::new(pid(41));
    lc.engine = cfg();
    lc.upload_limit = RateLimiter::new(Some(256 * 1024));
    let seed = dual_same_port(41, lc).await;
    let seed_rt = seed
        .start(TorrentSpec::seed(
            mi.clone(),
            src.path().to_path_buf(),
            true,
        ))
        .await
        .unwrap();
    let v6_addr = seed.local_addr6().expect("dual stack");

    // The fetcher is dual stack too, and is told the seed's IPv4 address only.
    let fetch_v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 201));
    let mut lc = ListenerConfig::new(pid(201));
    lc.engine = cfg();
    let fl = Listener::bind_dual(
        SocketAddr::new(fetch_v4, 0),
        Some(SocketAddr::new(V6, 0)),
        lc,
    )
    .await
    .unwrap();
    let mut spec = TorrentSpec::download(mi.info_hash, dst.path().to_path_buf());
    spec.metainfo = Some(mi.clone());
    spec.mode = StartMode::Download { seed_after: false };
    let mut rt = fl.start(spec).await.unwrap();
    let done = rt.done.take().unwrap();
    rt.peers
        .send((seed.local_addr(), PeerSource::Manual))
        .await
        .unwrap();

    // The fetcher learns the seed's IPv6 address from the extension handshake (a second
    // known address) but does not dial it while the IPv4 connection lasts.
    let deadline = Instant::now() + LIMIT;
    let mut progress = rt.progress.clone();
    loop {
        let p = progress.borrow_and_update().clone();
        if p.peers_known >= 2 && p.bytes_done > 0 {
            assert_eq!(p.peers, 1, "one peer, one connection: {p:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "IPv6 address never learnt: {p:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
    }
    let seen: Vec<SocketAddr> = seed_rt
        .torrent()
        .state()
        .peers
        .values()
        .map(|p| p.addr)
        .collect();
    assert!(
        seen.iter().all(|a| a.is_ipv4()),
        "dialed over IPv6 while connected over IPv4: {seen:?}"
    );
    assert!(rt.downloaded() < len as u64, "finished before the switch");

    // The seed bans the fetcher's IPv4 address (closing that connection and refusing it
    // from now on): only the IPv6 address it named in its handshake still reaches it.
    let _ = seed_rt.torrent().events.send(Event::Ban(fetch_v4));
    rt.close_peer_sources();
    let deadline = Instant::now() + LIMIT;
    let mut over_v6 = false;
    while !over_v6 && Instant::now() < deadline && rt.downloaded() < len as u64 {
        over_v6 = seed_rt
            .torrent()
            .state()
            .peers
            .values()
            .any(|p| p.addr.ip() == V6);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(over_v6, "the fetcher never connected to {v6_addr}");
    let report = tokio::time::timeout(LIMIT * 2, done)
        .await
        .expect("download over IPv6 timed out")
        .expect("no report")
        .expect("download failed");
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(report.bytes, len as u64);
    assert!(report.peers_connected >= 2, "{report:?}");
    assert!(
        seed_rt.torrent().state().banned.contains(&fetch_v4),
        "the IPv4 path stayed open"
    );
    fl.shutdown();
    seed.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simultaneous_open_keeps_the_connection_the_lower_peer_id_dialed() {
    let src = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "s.bin", &[("x", 64 * 1024)], 16 * 1024, 33);
    // We are pid(42): peer 30 is lower (its dial is kept), peer 90 higher (ours is kept).
    for (n, theirs, ours_kept) in [(42u8, 30u8, false), (44, 90, true)] {
        let dst = tempfile::tempdir().unwrap();
        let mut lc = ListenerConfig::new(pid(42));
        lc.engine = cfg();
        let l = Listener::bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0),
            lc,
        )
        .await
        .unwrap();
        let mut spec = TorrentSpec::download(mi.info_hash, dst.path().to_path_buf());
        spec.metainfo = Some(mi.clone());
        let rt = l.start(spec).await.unwrap();
        // The peer dials us ...
        let their_dial = handshake_as(l.local_addr(), mi.info_hash, pid(theirs)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ... and we dial the peer.
        let peer = tokio::net::TcpListener::bind("127.0.0.45:0").await.unwrap();
        rt.peers
            .send((peer.local_addr().unwrap(), PeerSource::Manual))
            .await
            .unwrap();
        let (mut our_dial, _) = tokio::time::timeout(LIMIT, peer.accept())
            .await
            .expect("we never dialed the peer")
            .unwrap();
        let mut hs = [0u8; 68];
        tokio::time::timeout(LIMIT, our_dial.read_exact(&mut hs))
            .await
            .expect("no handshake")
            .unwrap();
        our_dial
            .write_all(&Handshake::new(mi.info_hash, pid(theirs)).to_bytes())
            .await
            .unwrap();
        let (mut dropped, mut kept) = if ours_kept {
            (their_dial, our_dial)
        } else {
            (our_dial, their_dial)
        };
        assert!(
            closed_within(&mut dropped, LIMIT).await,
            "peer {theirs}: the connection the higher id dialed was kept"
        );
        assert!(
            !closed_within(&mut kept, Duration::from_millis(500)).await,
            "peer {theirs}: the connection the lower id dialed was closed"
        );
        l.shutdown();
    }
}
