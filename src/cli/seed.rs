//! `dhtnode seed`: share a file or directory with no tracker — build (or check) the torrent,
//! announce it into the DHT, and serve peers until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dhtnode::engine::{EngineConfig, Seeder};
use dhtnode::net::{DhtHandle, NodeOptions};
use dhtnode::torrent::{build_torrent, BuildOptions, Metainfo};

use super::swarm::spawn_announcer;
use super::{bind_arg, bootstrap_list, ShutdownSignal};

/// Arguments of `dhtnode seed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file or directory to share.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Use this .torrent (its data is at PATH) instead of building one; the data is verified.
    #[arg(long, value_name = "FILE")]
    torrent: Option<PathBuf>,
    /// Write the built .torrent here.
    #[arg(long, value_name = "FILE")]
    torrent_out: Option<PathBuf>,
    /// Local address for the DHT (UDP) and for peers (TCP).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881", value_parser = bind_arg)]
    bind: SocketAddr,
    /// Bootstrap node (repeatable); replaces the public routers; `none` starts alone.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// Print the torrent's details as one JSON object on the first stdout line.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Announcement {
    infohash: String,
    magnet: String,
    name: String,
    bytes: u64,
    pieces: usize,
}

/// The directory the torrent's name is resolved in: PATH itself if it holds an entry with the
/// torrent's name, otherwise PATH's parent (PATH is the file or top folder itself).
fn data_dir_for(path: &Path, name: &str) -> PathBuf {
    if path.is_dir() && path.join(name).exists() && path.file_name().is_some_and(|f| f != name) {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Runs the seeder until a signal arrives.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignal::install()?;
    if !args.path.exists() {
        eprintln!("error: {} does not exist", args.path.display());
        return Ok(ExitCode::from(2));
    }
    let (metainfo, verify) = match &args.torrent {
        Some(t) => (
            Metainfo::read_file(t).with_context(|| format!("reading {}", t.display()))?,
            true,
        ),
        None => {
            let built =
                tokio::task::block_in_place(|| build_torrent(&args.path, &BuildOptions::default()))
                    .with_context(|| format!("building a torrent from {}", args.path.display()))?;
            if let Some(out) = &args.torrent_out {
                std::fs::write(out, &built.torrent)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            (built.metainfo, false)
        }
    };
    let info = &metainfo.info;
    let announcement = Announcement {
        infohash: metainfo.info_hash.to_hex(),
        magnet: metainfo.magnet().to_uri(),
        name: info.name.clone(),
        bytes: info.total_length(),
        pieces: info.num_pieces(),
    };
    {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&announcement)?)?;
        } else {
            writeln!(out, "info-hash: {}", announcement.infohash)?;
            writeln!(out, "magnet:    {}", announcement.magnet)?;
        }
        out.flush()?;
    }

    let data_dir = data_dir_for(&args.path, &info.name);
    let peer_id = dhtnode::wire::generate_peer_id(&mut rand::thread_rng());
    let seeder = Seeder::bind(args.bind, peer_id, None, EngineConfig::default())
        .await
        .context("starting the peer listener")?;
    let port = seeder.local_addr().port();
    seeder
        .add_torrent(&metainfo, &data_dir, verify)
        .await
        .with_context(|| format!("serving data from {}", data_dir.display()))?;
    // The DHT node listens on the same port number, over UDP.
    let node = DhtHandle::spawn(NodeOptions {
        bind: SocketAddr::new(args.bind.ip(), port),
        bootstrap: bootstrap_list(&args.bootstrap),
        ..NodeOptions::default()
    })
    .await
    .context("starting the DHT node")?;
    tracing::info!(
        "seeding {} on {} (DHT on {})",
        info.name,
        seeder.local_addr(),
        node.local_addr()
    );
    // Announce once the join is done, and every 15 minutes after that.
    {
        let node = node.clone();
        let ih = metainfo.info_hash;
        tokio::spawn(async move {
            let _ = node.wait_bootstrapped().await;
            spawn_announcer(node, ih, port);
        });
    }
    signals.wait().await;
    tracing::info!(
        "stopping; uploaded {} bytes",
        seeder.uploaded(&metainfo.info_hash).unwrap_or(0)
    );
    seeder.shutdown();
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
