//! `dhtnode demo`: the whole system, offline, in one command. N DHT nodes form a network on
//! 127.x.y.z, a seeder shares a generated file and announces it, and a fresh client finds it
//! by info-hash through the DHT alone, fetches the metadata and the data from the swarm, and
//! checks every byte. Everything runs in this process and is removed at the end.

use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use dhtnode::dht;
use dhtnode::engine::{fetch, EngineConfig, FetchOptions, Progress, Seeder};
use dhtnode::net::{DhtHandle, NodeOptions};
use dhtnode::torrent::{build_torrent, BuildOptions};
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, watch};

use super::swarm::{announce_once, spawn_peer_feed, spawn_progress, FeedStats};

/// Arguments of `dhtnode demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// DHT nodes in the demo network.
    #[arg(long, value_name = "N", default_value_t = 24)]
    nodes: usize,
    /// Size of the generated file in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    size: u64,
}

fn say(t0: Instant, msg: impl std::fmt::Display) {
    println!("[{:>6.2}s] {msg}", t0.elapsed().as_secs_f64());
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

    // 2. The seeder.
    let src_dir = dir.path().join("seed");
    std::fs::create_dir_all(&src_dir)?;
    let file = src_dir.join("demo.bin");
    let want = tokio::task::block_in_place(|| generate_file(&file, args.size, 42))?;
    let built = tokio::task::block_in_place(|| build_torrent(&file, &BuildOptions::default()))
        .context("building the torrent")?;
    let mi = built.metainfo;
    say(
        t0,
        format!(
            "seeder shares demo.bin: {} bytes in {} pieces of {} KiB; info-hash {}",
            args.size,
            mi.info.num_pieces(),
            mi.info.piece_length / 1024,
            mi.info_hash
        ),
    );
    let peer_id = dhtnode::wire::generate_peer_id(&mut rng);
    let seeder = Seeder::bind(
        SocketAddr::V4(SocketAddrV4::new(ip(251), 0)),
        peer_id,
        None,
        EngineConfig::default(),
    )
    .await?;
    seeder.add_torrent(&mi, &src_dir, false).await?;
    let seed_port = seeder.local_addr().port();
    let seed_node = DhtHandle::spawn(NodeOptions {
        bind: SocketAddr::V4(SocketAddrV4::new(ip(251), seed_port)),
        bootstrap: vec![nodes[0].local_addr().to_string()],
        ..NodeOptions::default()
    })
    .await?;
    seed_node.wait_bootstrapped().await?;
    let acks = announce_once(&seed_node, mi.info_hash, seed_port)
        .await
        .unwrap_or(0);
    say(
        t0,
        format!(
            "seeder listening on {}; announced into the DHT, {acks} nodes stored it",
            seeder.local_addr()
        ),
    );

    // 3. A fresh client that knows only the info-hash and one DHT node.
    let entry = nodes[nodes.len() / 2].local_addr();
    let client = DhtHandle::spawn(NodeOptions {
        bind: SocketAddr::V4(SocketAddrV4::new(ip(252), 0)),
        bootstrap: vec![entry.to_string()],
        join: false,
        dht: dht::Config {
            read_only: true,
            ..dht::Config::default()
        },
        ..NodeOptions::default()
    })
    .await?;
    say(
        t0,
        format!("client starts with only the info-hash and one DHT node ({entry})"),
    );
    let (tx, rx) = mpsc::channel(256);
    let feed = FeedStats::new(Instant::now());
    spawn_peer_feed(
        Some(client.clone()),
        mi.info_hash,
        Vec::new(),
        tx,
        feed.clone(),
        4,
    );
    let out_dir = dir.path().join("fetch");
    let mut opts = FetchOptions::new(
        mi.info_hash,
        out_dir.clone(),
        dhtnode::wire::generate_peer_id(&mut rng),
    );
    opts.dht_port = Some(client.local_addr().port());
    let (ptx, prx) = watch::channel(Progress::default());
    let progress = spawn_progress(prx, false);
    let outcome = tokio::time::timeout(Duration::from_secs(120), fetch(opts, rx, ptx)).await;
    let _ = progress.await;
    let report = match outcome {
        Ok(Ok(o)) => o.report,
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("the fetch failed")),
        Err(_) => anyhow::bail!("the fetch did not finish within 120 s"),
    };
    let first_peer = feed.first_peer();
    say(
        t0,
        format!(
            "lookup found the seeder after {} ms ({} hop(s), {} nodes queried)",
            first_peer.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0)),
            feed.first_peer_hops.load(Ordering::Relaxed),
            feed.nodes_queried.load(Ordering::Relaxed),
        ),
    );
    if let Some(m) = report.metadata {
        say(
            t0,
            format!(
                "metadata (BEP 9) fetched from the peer in {:.2} ms",
                m.as_secs_f64() * 1000.0
            ),
        );
    }
    say(
        t0,
        format!(
            "downloaded {} bytes in {:.2} s: {:.1} MB/s, every piece SHA-1 verified",
            report.bytes,
            report.elapsed.as_secs_f64(),
            report.download_mb_s()
        ),
    );
    let got = tokio::task::block_in_place(|| sha1_file(&out_dir.join("demo.bin")))?;
    let ok = got == want;
    say(
        t0,
        if ok {
            "the fetched file is byte-identical to the original".to_string()
        } else {
            "MISMATCH: the fetched file differs from the original".to_string()
        },
    );
    client.shutdown().await;
    seed_node.shutdown().await;
    seeder.shutdown();
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
