//! `dhtnode seed`: share a file or directory — build (or check) the torrent, announce it into
//! the DHT (and to the `--tracker`s, if any), and serve peers until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dhtnode::session::{AddTorrent, Session, SessionConfig};
use dhtnode::torrent::{build_torrent, BuildOptions, Metainfo};

use super::{bind_arg, bootstrap_list, output, rate_arg, split_binds, tracker_arg, ShutdownSignal};

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
    /// Local address (repeatable: one IPv4 and optionally one IPv6 address, `[::]:PORT`,
    /// for a dual-stack DHT node, BEP 32).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881", value_parser = bind_arg)]
    bind: Vec<SocketAddr>,
    /// Bootstrap node (repeatable); replaces the public routers; `none` starts alone.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// Tracker announce URL, http://, https:// or udp:// (repeatable): written into the
    /// built torrent (`announce`, and `announce-list` with one tier each in the order given)
    /// and announced to, beside the DHT. With --torrent, announced to besides its own.
    #[arg(long, value_name = "URL", value_parser = tracker_arg)]
    tracker: Vec<String>,
    /// Upload limit in bytes per second (0 = unlimited).
    #[arg(long, value_name = "BYTES_PER_S", value_parser = rate_arg)]
    upload_limit: Option<u64>,
    /// Print the torrent's details as one JSON object on the first stdout line (and one
    /// more, with the bytes uploaded, when stopped).
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
    /// BEP 52 hybrid: the v2 info-hash (64 hex digits); the DHT also holds us under its
    /// first 40.
    #[serde(skip_serializing_if = "Option::is_none")]
    infohash_v2: Option<String>,
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
    let (bind, bind6) = match split_binds(&args.bind) {
        Ok(b) => b,
        Err(e) => {
            // A bad argument: exit 2, like clap's own errors.
            super::output::err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    };
    if !args.path.exists() {
        output::err_line(format_args!(
            "error: {} does not exist",
            args.path.display()
        ));
        return Ok(ExitCode::from(2));
    }
    let (metainfo, verify) = match &args.torrent {
        Some(t) => (
            Metainfo::read_file(t).with_context(|| format!("reading {}", t.display()))?,
            true,
        ),
        None => {
            let opts = BuildOptions {
                trackers: args.tracker.clone(),
                ..BuildOptions::default()
            };
            let built = tokio::task::block_in_place(|| build_torrent(&args.path, &opts))
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
        infohash_v2: metainfo.info_hash_v2.map(|h| {
            h.iter().fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write;
                let _ = write!(s, "{b:02x}");
                s
            })
        }),
    };
    // A closed stdout is no reason to stop serving.
    if args.json {
        let _ = output::json_line(&announcement)?;
    } else {
        let _ = output::line(format_args!("info-hash: {}", announcement.infohash))?;
        let _ = output::line(format_args!("magnet:    {}", announcement.magnet))?;
    }

    let data_dir = data_dir_for(&args.path, &info.name);
    let mut cfg = SessionConfig::new(bind);
    cfg.bind6 = bind6;
    cfg.bootstrap = bootstrap_list(&args.bootstrap);
    // A seed is a DHT node even when it starts alone: others bootstrap from it.
    cfg.dht_always = true;
    cfg.upload_limit = args.upload_limit;
    let session = Session::new(cfg).await.context("starting the session")?;
    let info_hash = metainfo.info_hash;
    let name = info.name.clone();
    let mut add = AddTorrent::seed(metainfo, data_dir.clone(), verify);
    if args.torrent.is_some() {
        // A built torrent has them inside already.
        add.trackers = args.tracker.clone();
    }
    let handle = match session.add_torrent(add).await {
        Ok(h) => h,
        Err(e) => {
            session.shutdown().await;
            return Err(
                anyhow::Error::from(e).context(format!("serving data from {}", data_dir.display()))
            );
        }
    };
    tracing::info!(
        "seeding {name} on {}{} (DHT on {})",
        session.listen_addr(),
        session
            .listen_addr6()
            .map_or(String::new(), |a| format!(" and {a}")),
        session
            .dht()
            .map_or("-".to_string(), |d| d.local_addr().to_string())
    );
    tokio::select! {
        _ = signals.wait() => {}
        _ = handle.stopped() => {}
    }
    let uploaded = handle.stats().uploaded;
    tracing::info!("stopping {info_hash}; uploaded {uploaded} bytes");
    session.shutdown().await;
    if args.json {
        let _ = output::json_line(&serde_json::json!({
            "event": "stopped",
            "uploaded_bytes": uploaded,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}
