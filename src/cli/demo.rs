//! `dhtnode demo`: the whole system, offline, in one command. N DHT nodes form a network on
//! 127.x.y.z; a seeder whose upload is capped shares a generated file and announces it; a
//! flash crowd of downloaders, each knowing only the info-hash and one DHT node, find it (and
//! each other) through the DHT, fetch the metadata and the data, and trade pieces among
//! themselves so the seed uploads each byte about once. It prints who uploaded what and
//! checks every byte. Everything runs in this process (one `Session` per peer) and is removed
//! at the end.

use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dhtnode::net::{DhtHandle, NodeOptions};
use dhtnode::session::{announce_once, AddTorrent, Session, SessionConfig, TorrentSource};
use dhtnode::torrent::{build_torrent, BuildOptions};
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};

use super::output;
use super::progress::spawn_progress;

/// Arguments of `dhtnode demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// DHT nodes in the demo network.
    #[arg(long, value_name = "N", default_value_t = 24)]
    nodes: usize,
    /// Size of the generated file in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    size: u64,
    /// Downloaders started together.
    #[arg(long, value_name = "N", default_value_t = 4)]
    downloaders: usize,
    /// The seed's upload limit in bytes/s (0 = unlimited).
    #[arg(long, value_name = "BYTES_PER_S", default_value_t = 32_000_000)]
    seed_upload_limit: u64,
}

fn say(t0: Instant, msg: impl std::fmt::Display) {
    let _ = output::line(format_args!("[{:>6.2}s] {msg}", t0.elapsed().as_secs_f64()));
}

fn generate_file(path: &std::path::Path, size: u64, seed: u64) -> anyhow::Result<[u8; 20]> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..n).context("chunk")?;
        rng.fill_bytes(chunk);
        h.update(&*chunk);
        w.write_all(chunk)?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(h.finalize().into())
}

fn sha1_file(path: &std::path::Path) -> anyhow::Result<[u8; 20]> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).context("read")?);
    }
    Ok(h.finalize().into())
}

/// Runs the demo.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(args.nodes <= 250, "--nodes must be at most 250");
    anyhow::ensure!(args.size > 0, "--size must be positive");
    anyhow::ensure!(
        (1..=40).contains(&args.downloaders),
        "--downloaders must be 1 to 40"
    );
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("dhtnode-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    // A random 127.a.b.0/24 so two demos (or a test run) do not collide.
    let mut rng = rand::thread_rng();
    let (a, b) = (rng.gen_range(100..=250u8), rng.gen_range(1..=250u8));
    let ip = |host: u8| Ipv4Addr::new(127, a, b, host);

    // 1. The DHT network.
    say(
        t0,
        format!(
            "starting {} DHT nodes on 127.{a}.{b}.1-{}",
            args.nodes, args.nodes
        ),
    );
    let mut nodes: Vec<DhtHandle> = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let bootstrap = match nodes.first() {
            None => Vec::new(),
            Some(first) => {
                // Join through the first node and the previous one.
                let mut v = vec![first.local_addr().to_string()];
                if let Some(prev) = nodes.last() {
                    v.push(prev.local_addr().to_string());
                }
                v
            }
        };
        let node = DhtHandle::spawn(NodeOptions {
            bind: SocketAddr::V4(SocketAddrV4::new(ip(i as u8 + 1), 0)),
            bootstrap,
            ..NodeOptions::default()
        })
        .await
        .with_context(|| format!("starting DHT node {i}"))?;
        if i > 0 {
            node.wait_bootstrapped().await?;
        }
        nodes.push(node);
    }
    let mut sizes = Vec::new();
    for n in &nodes {
        sizes.push(n.stats().await?.nodes);
    }
    sizes.sort_unstable();
    say(
        t0,
        format!(
            "{} nodes joined; routing tables hold {}–{} nodes (median {})",
            nodes.len(),
            sizes.first().copied().unwrap_or(0),
            sizes.last().copied().unwrap_or(0),
            sizes.get(sizes.len() / 2).copied().unwrap_or(0)
        ),
    );

    // 2. The seeder, its upload capped: the swarm has to share for everyone to finish fast.
    let src_dir = dir.path().join("seed");
    std::fs::create_dir_all(&src_dir)?;
    let file = src_dir.join("demo.bin");
    let want = tokio::task::block_in_place(|| generate_file(&file, args.size, 42))?;
    let built = tokio::task::block_in_place(|| build_torrent(&file, &BuildOptions::default()))
        .context("building the torrent")?;
    let mi = built.metainfo;
    let cap = args.seed_upload_limit;
    say(
        t0,
        format!(
            "seeder shares demo.bin: {} bytes in {} pieces of {} KiB; info-hash {}; upload capped at {:.1} MB/s",
            args.size,
            mi.info.num_pieces(),
            mi.info.piece_length / 1024,
            mi.info_hash,
            cap as f64 / 1e6,
        ),
    );
    let entry = nodes[0].local_addr().to_string();
    let mut seed_cfg = SessionConfig::new(SocketAddr::V4(SocketAddrV4::new(ip(251), 0)));
    seed_cfg.bootstrap = vec![entry];
    seed_cfg.upload_limit = Some(cap).filter(|c| *c > 0);
    let seed_session = Session::new(seed_cfg).await?;
    if let Some(d) = seed_session.dht() {
        d.wait_bootstrapped().await?;
    }
    let seed = seed_session
        .add_torrent(AddTorrent::seed(mi.clone(), src_dir.clone(), false))
        .await?;
    let acks = match seed_session.dht() {
        Some(d) => announce_once(d, mi.info_hash, seed_session.listen_addr().port(), None)
            .await
            .unwrap_or(0),
        None => 0,
    };
    say(
        t0,
        format!(
            "seeder listening on {}; announced into the DHT, {acks} nodes stored it",
            seed_session.listen_addr()
        ),
    );

    // 3. A flash crowd: downloaders that know only the info-hash and one DHT node each,
    //    started together. Each announces itself at once and serves what it has verified.
    let n = args.downloaders;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let entry = nodes[(i * 7 + nodes.len() / 2) % nodes.len()].local_addr();
        let mut cfg = SessionConfig::new(SocketAddr::V4(SocketAddrV4::new(ip(201 + i as u8), 0)));
        cfg.bootstrap = vec![entry.to_string()];
        let session = Session::new(cfg).await?;
        clients.push((session, dir.path().join(format!("fetch-{i}"))));
    }
    say(
        t0,
        format!("{n} downloaders start together, each with only the info-hash and one DHT node"),
    );
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (session, out) in &clients {
        let mut add = AddTorrent::new(TorrentSource::InfoHash(mi.info_hash), out.clone());
        // Keep serving until everyone is done: that is what a swarm is.
        add.seed_after = true;
        handles.push(session.add_torrent(add).await?);
    }
    let progress = spawn_progress(handles[0].progress(), false);
    let mut reports = Vec::with_capacity(n);
    for h in &handles {
        let left = Duration::from_secs(120).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, h.wait_done()).await {
            Ok(Ok(r)) => reports.push((r, started.elapsed())),
            Ok(Err(e)) => anyhow::bail!("a download failed: {e}"),
            Err(_) => anyhow::bail!("the downloads did not finish within 120 s"),
        }
    }
    progress.abort();
    let last = started.elapsed();
    let first = &handles[0];
    let feed = first.feed_stats();
    say(
        t0,
        format!(
            "downloader 0's first lookup found a peer after {} ms ({} hop(s), {} nodes queried)",
            feed.first_peer()
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0)),
            feed.first_peer_hops(),
            feed.nodes_queried(),
        ),
    );
    let mut ok = true;
    let mut shared_total = 0u64;
    for (i, ((r, _), h)) in reports.iter().zip(&handles).enumerate() {
        let got = tokio::task::block_in_place(|| sha1_file(&clients[i].1.join("demo.bin")))?;
        let same = got == want;
        ok &= same;
        let up = h.stats().uploaded;
        shared_total += up;
        say(
            t0,
            format!(
                "downloader {i}: done in {:.2} s from {} peers; uploaded {:.1} MB to the others; file {}",
                r.elapsed.as_secs_f64(),
                r.peers_connected,
                up as f64 / 1e6,
                if same { "identical" } else { "DIFFERENT" }
            ),
        );
    }
    let seed_up = seed.stats().uploaded;
    let ideal = if cap > 0 {
        args.size as f64 / cap as f64
    } else {
        0.0
    };
    say(
        t0,
        format!(
            "all {n} done in {:.2} s (ideal at the seed's cap: {:.2} s); the seed uploaded {:.2}× the file, the downloaders {:.2}× it to each other",
            last.as_secs_f64(),
            ideal,
            seed_up as f64 / args.size as f64,
            shared_total as f64 / args.size as f64,
        ),
    );
    say(
        t0,
        if ok {
            "every fetched file is byte-identical to the original".to_string()
        } else {
            "MISMATCH: a fetched file differs from the original".to_string()
        },
    );
    for (s, _) in &clients {
        s.shutdown().await;
    }
    seed_session.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
    drop(dir);
    say(t0, "cleaned up; done");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
