//! Embedding dhtnode: download one torrent with the library's `Session`, the same API the
//! `dhtnode fetch` command is built on.
//!
//! ```text
//! cargo run --release --example fetch_with_session -- <INFOHASH|MAGNET|FILE.torrent> <OUT_DIR> \
//!     [BOOTSTRAP_HOST:PORT ...]
//! ```
//!
//! It joins the DHT through the given bootstrap nodes (the public routers if none are given),
//! announces itself, uploads to other downloaders while it downloads, prints progress and
//! events, and exits when every piece is verified and on disk.

use std::path::PathBuf;

use dhtnode::session::{AddTorrent, Session, SessionConfig, TorrentEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(out)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: fetch_with_session <INFOHASH|MAGNET|FILE.torrent> <OUT_DIR> [HOST:PORT ...]"
        );
        std::process::exit(2);
    };
    let mut bootstrap: Vec<String> = args.collect();
    if bootstrap.is_empty() {
        bootstrap = vec![
            "router.bittorrent.com:6881".into(),
            "dht.transmissionbt.com:6881".into(),
        ];
    }

    // One session: a DHT node and a TCP listener on one port, shared by every torrent.
    let mut cfg = SessionConfig::new("0.0.0.0:0".parse()?);
    cfg.bootstrap = bootstrap;
    let session = Session::new(cfg).await?;
    eprintln!("listening on {}", session.listen_addr());

    let handle = session
        .add_torrent(AddTorrent::parse(&target, PathBuf::from(out))?)
        .await?;

    // Events (metadata, announces, completion) and progress arrive independently.
    let mut events = handle.events();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            match ev {
                TorrentEvent::MetadataReceived { name, bytes } => {
                    eprintln!("metadata: {name}, {bytes} bytes")
                }
                TorrentEvent::Announced { nodes } => eprintln!("announced to {nodes} DHT nodes"),
                other => eprintln!("event: {other:?}"),
            }
        }
    });
    let mut progress = handle.progress();
    tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            eprintln!(
                "{:>13}: {}/{} pieces, {} peers, down {:.1} MB/s, up {:.1} MB/s",
                p.phase.name(),
                p.pieces_done,
                p.pieces_total,
                p.peers,
                p.download_rate / 1e6,
                p.upload_rate / 1e6
            );
        }
    });

    let report = handle.wait_done().await?;
    println!(
        "{}: {} bytes in {:.1} s from {} peers; uploaded {} bytes meanwhile",
        report.name,
        report.bytes,
        report.elapsed.as_secs_f64(),
        report.peers_connected,
        report.uploaded_bytes
    );
    session.shutdown().await;
    Ok(())
}
