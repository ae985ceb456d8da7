//! `dhtnode fetch`: find peers through the DHT (and `--peer` / magnet `x.pe`), fetch the
//! metadata if needed, download, verify and write the files; optionally keep seeding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use dhtnode::dht;
use dhtnode::engine::{fetch, FetchOptions, Progress};
use dhtnode::id::Id;
use dhtnode::net::{DhtHandle, NodeOptions};
use dhtnode::torrent::{parse_infohash_arg, Metainfo};
use tokio::sync::{mpsc, watch};

use super::swarm::{spawn_announcer, spawn_peer_feed, spawn_progress, FeedStats};
use super::{bind_arg, bootstrap_list, ShutdownSignal};

/// Arguments of `dhtnode fetch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Info-hash (hex or base32), magnet link, or a .torrent file.
    #[arg(value_name = "INFOHASH|MAGNET|FILE.torrent")]
    target: String,
    /// Directory to write the files under.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Local address for the DHT (UDP) and for incoming peers (TCP).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0", value_parser = bind_arg)]
    bind: SocketAddr,
    /// Bootstrap node (repeatable); `none` to use only --peer.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// A peer to connect to directly (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    peer: Vec<SocketAddr>,
    /// Keep seeding after the download completes, until SIGINT/SIGTERM.
    #[arg(long)]
    seed: bool,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    infohash: String,
    name: String,
    bytes: u64,
    pieces: u32,
    elapsed_ms: u64,
    first_peer_ms: Option<u64>,
    metadata_ms: Option<u64>,
    peers_connected: usize,
    download_mb_s: f64,
    pieces_resumed: u32,
    hash_failures: u32,
    peers_banned: usize,
}

/// What the positional argument named.
struct Target {
    info_hash: Id,
    metainfo: Option<Metainfo>,
    peers: Vec<SocketAddr>,
}

fn parse_target(s: &str) -> anyhow::Result<Target> {
    let path = std::path::Path::new(s);
    if s.ends_with(".torrent") || (path.is_file() && !s.starts_with("magnet:")) {
        let mi = Metainfo::read_file(path).with_context(|| format!("reading {s}"))?;
        return Ok(Target {
            info_hash: mi.info_hash,
            metainfo: Some(mi),
            peers: Vec::new(),
        });
    }
    let m = parse_infohash_arg(s).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Target {
        info_hash: m.info_hash,
        metainfo: None,
        peers: m.peers,
    })
}

/// Lookups the peer feed runs before it gives up on finding more peers.
const MAX_LOOKUPS: u32 = 6;

/// Runs the fetch; exit 0 only when every piece is verified and on disk.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignal::install()?;
    let target = match parse_target(&args.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let started = Instant::now();
    let info_hash = target.info_hash;
    let bootstrap = bootstrap_list(&args.bootstrap);
    let node =
        if bootstrap.is_empty() && target.metainfo.as_ref().is_none_or(|m| m.nodes.is_empty()) {
            None
        } else {
            let mut boot = bootstrap.clone();
            if let Some(mi) = &target.metainfo {
                // Trackerless torrents may list DHT nodes to start from (`nodes` key).
                boot.extend(mi.nodes.iter().map(|(h, p)| format!("{h}:{p}")));
            }
            Some(
                DhtHandle::spawn(NodeOptions {
                    bind: args.bind,
                    bootstrap: boot,
                    join: args.seed,
                    dht: dht::Config {
                        read_only: !args.seed,
                        ..dht::Config::default()
                    },
                    ..NodeOptions::default()
                })
                .await
                .context("starting the DHT node")?,
            )
        };
    if node.is_none() && target.peers.is_empty() && args.peer.is_empty() {
        eprintln!("error: no way to find peers: give --bootstrap HOST:PORT or --peer IP:PORT");
        return Ok(ExitCode::from(2));
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;

    let (tx, rx) = mpsc::channel(1024);
    let feed = FeedStats::new(started);
    let mut initial = args.peer.clone();
    initial.extend(target.peers.iter().copied());
    spawn_peer_feed(
        node.clone(),
        target.info_hash,
        initial,
        tx,
        feed.clone(),
        MAX_LOOKUPS,
    );

    let mut opts = FetchOptions::new(
        target.info_hash,
        args.output.clone(),
        dhtnode::wire::generate_peer_id(&mut rand::thread_rng()),
    );
    opts.metainfo = target.metainfo;
    opts.seed_after = args.seed;
    opts.dht_port = node.as_ref().map(|n| n.local_addr().port());
    if let Some(n) = &node {
        // DHT nodes that peers tell us about (PORT messages) are pinged into our table.
        let (ntx, mut nrx) = mpsc::unbounded_channel::<SocketAddr>();
        opts.dht_nodes = Some(ntx);
        let n = n.clone();
        tokio::spawn(async move {
            while let Some(a) = nrx.recv().await {
                if let SocketAddr::V4(a) = a {
                    if n.add_node(a).is_err() {
                        break;
                    }
                }
            }
        });
    }
    if args.seed {
        // Accept peers on the same IP; the same port number as the DHT when it is free.
        let port = node.as_ref().map_or(0, |n| n.local_addr().port());
        opts.listen = Some(SocketAddr::new(args.bind.ip(), port));
    }
    let (ptx, prx) = watch::channel(Progress::default());
    let progress = spawn_progress(prx, args.json);
    // Ctrl-C / SIGTERM stops the download; verified pieces are already durable (resume).
    let outcome = tokio::select! {
        r = fetch(opts, rx, ptx) => r,
        _ = signals.wait() => {
            if let Some(n) = &node {
                n.shutdown().await;
            }
            eprintln!("interrupted; run the same command again to resume");
            return Ok(ExitCode::from(130));
        }
    };
    let _ = progress.await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if let Some(n) = &node {
                n.shutdown().await;
            }
            eprintln!(
                "error: download of {} failed after {:.1} s: {:#}",
                info_hash,
                started.elapsed().as_secs_f64(),
                anyhow::Error::from(e)
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let r = &outcome.report;
    let report = Report {
        infohash: r.info_hash.to_hex(),
        name: r.name.clone(),
        bytes: r.bytes,
        pieces: r.pieces,
        elapsed_ms: started.elapsed().as_millis() as u64,
        // From the start of the command to the first peer the DHT gave us; with only
        // --peer / x.pe peers, to the first connected peer.
        first_peer_ms: feed
            .first_peer()
            .or(r.first_peer)
            .map(|d| d.as_millis() as u64),
        metadata_ms: r.metadata.map(|d| d.as_millis() as u64),
        peers_connected: r.peers_connected,
        download_mb_s: r.download_mb_s(),
        pieces_resumed: r.pieces_resumed,
        hash_failures: r.hash_failures,
        peers_banned: r.peers_banned,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!(
            "done: {} ({} bytes, {} pieces, {} resumed) in {:.1} s at {:.1} MB/s from {} peer(s); first peer after {} ms, {} lookups",
            report.name,
            report.bytes,
            report.pieces,
            report.pieces_resumed,
            report.elapsed_ms as f64 / 1000.0,
            report.download_mb_s,
            report.peers_connected,
            report.first_peer_ms.map_or("-".to_string(), |v| v.to_string()),
            feed.lookups.load(Ordering::Relaxed),
        );
    }
    if let (true, Some(seeder)) = (args.seed, outcome.seeder) {
        if let Some(n) = &node {
            spawn_announcer(n.clone(), info_hash, seeder.local_addr().port());
        }
        eprintln!("seeding on {}; Ctrl-C to stop", seeder.local_addr());
        signals.wait().await;
        seeder.shutdown();
    }
    if let Some(n) = &node {
        n.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
