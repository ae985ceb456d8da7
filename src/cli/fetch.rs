//! `dhtnode fetch`: join the swarm of one torrent — find peers through the DHT, trackers
//! (the torrent's, a magnet's `tr`, `--tracker`), PEX, `--peer` and magnet `x.pe`, fetch the metadata if needed, download, verify and write the files,
//! uploading what we have to the other downloaders all along; optionally keep seeding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use dhtnode::session::{AddTorrent, Session, SessionConfig, SessionError};
use dhtnode::torrent::{listed_files, Info};

use super::progress::spawn_progress;
use super::{bind_arg, bootstrap_list, output, rate_arg, split_binds, tracker_arg, ShutdownSignal};

/// Arguments of `dhtnode fetch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Info-hash (hex or base32), magnet link, or a .torrent file.
    #[arg(value_name = "INFOHASH|MAGNET|FILE.torrent")]
    target: String,
    /// Directory to write the files under.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Local address (repeatable: one IPv4 and optionally one IPv6 address, `[::]:PORT`,
    /// for a dual-stack DHT node, BEP 32).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0", value_parser = bind_arg)]
    bind: Vec<SocketAddr>,
    /// Bootstrap node (repeatable); `none` to use only --peer.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// A peer to connect to directly (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    peer: Vec<SocketAddr>,
    /// A tracker to announce to besides the torrent's own (repeatable; http://, https://,
    /// udp://).
    #[arg(long, value_name = "URL", value_parser = tracker_arg)]
    tracker: Vec<String>,
    /// Keep seeding after the download completes, until SIGINT/SIGTERM.
    #[arg(long)]
    seed: bool,
    /// Keep seeding after the download completes until R × the torrent's size is uploaded.
    #[arg(long, value_name = "R", value_parser = ratio_arg)]
    seed_ratio: Option<f64>,
    /// Upload limit in bytes per second (0 = unlimited).
    #[arg(long, value_name = "BYTES_PER_S", value_parser = rate_arg)]
    upload_limit: Option<u64>,
    /// Download limit in bytes per second (0 = unlimited).
    #[arg(long, value_name = "BYTES_PER_S", value_parser = rate_arg)]
    download_limit: Option<u64>,
    /// Hash every piece already in the output directory instead of trusting the resume
    /// record (files are compared with the record by size and mtime either way).
    #[arg(long)]
    recheck: bool,
    /// Print the torrent's files (index, size in bytes, path) once the metadata is known
    /// (fetched from peers for a magnet), then exit; nothing is written.
    #[arg(long)]
    list: bool,
    /// Download only files whose path matches this glob (repeatable; `*` crosses `/`, so
    /// `--only '*.srt'` selects every .srt). Matched against the path inside the torrent
    /// and the full path `--list` prints.
    #[arg(long, value_name = "GLOB")]
    only: Vec<String>,
    /// Download only these files, numbered as `--list` prints them: `0,3-5` (repeatable;
    /// combined with --only, a file either selects is fetched).
    #[arg(long, value_name = "LIST")]
    files: Vec<String>,
    /// Print one JSON object when the download is complete (and one more when a seeding
    /// fetch stops).
    #[arg(long)]
    json: bool,
}

fn ratio_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?}: expected a positive number, e.g. 1.5")),
    }
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
    peers_from_pex: usize,
    download_mb_s: f64,
    uploaded_bytes: u64,
    pieces_resumed: u32,
    pieces_checked: u32,
    pieces_fetched: u32,
    hash_failures: u32,
    peers_banned: usize,
    pieces_wanted: u32,
    bytes_wanted: u64,
}

/// One file as `--list` prints it.
#[derive(serde::Serialize)]
struct ListedFile {
    index: usize,
    length: u64,
    path: String,
    executable: bool,
}

/// `--list --json`.
#[derive(serde::Serialize)]
struct Listing {
    infohash: String,
    name: String,
    bytes: u64,
    pieces: u32,
    piece_length: u64,
    files: Vec<ListedFile>,
}

/// Prints the file list of `info` (stdout: one line per file, or one JSON object).
fn print_listing(info_hash: &str, info: &Info, json: bool) -> anyhow::Result<()> {
    let files: Vec<ListedFile> = listed_files(info)
        .map(|(index, _, f)| ListedFile {
            index,
            length: f.length,
            path: f.path.to_string(),
            executable: f.executable,
        })
        .collect();
    if json {
        let _ = output::json_line(&Listing {
            infohash: info_hash.to_string(),
            name: info.name.clone(),
            bytes: info.total_length(),
            pieces: info.num_pieces() as u32,
            piece_length: info.piece_length,
            files,
        })?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for f in &files {
            // A closed stdout (`| head`) ends the listing, not the program with a panic.
            if writeln!(out, "{}\t{}\t{}", f.index, f.length, f.path).is_err() {
                break;
            }
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Stopped {
    event: &'static str,
    uploaded_bytes: u64,
}

/// Runs the fetch; exit 0 only when every piece is verified and on disk.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignal::install()?;
    let started = Instant::now();
    let mut add = match AddTorrent::parse(&args.target, args.output.clone()) {
        Ok(a) => a,
        Err(e) => {
            output::err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    };
    add.peers = args.peer.clone();
    add.trackers = args.tracker.clone();
    add.seed_after = args.seed;
    add.seed_ratio = args.seed_ratio;
    add.recheck = args.recheck;
    add.metadata_only = args.list;
    for f in &args.files {
        if let Err(e) = add.files.add_indices(f) {
            output::err_line(format_args!("error: --files: {e}"));
            return Ok(ExitCode::from(2));
        }
    }
    for p in &args.only {
        if let Err(e) = add.files.add_pattern(p) {
            output::err_line(format_args!("error: --only: {e}"));
            return Ok(ExitCode::from(2));
        }
    }
    if args.list {
        if let Some(mi) = add.metainfo() {
            // The file list is in the .torrent: no peers needed.
            print_listing(&mi.info_hash.to_hex(), &mi.info, args.json)?;
            return Ok(ExitCode::SUCCESS);
        }
    } else if let Some(mi) = add.metainfo() {
        // A selection that does not fit the torrent is a usage error, found before any work.
        if let Err(e) = add.files.resolve(&mi.info) {
            output::err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    }
    let (bind, bind6) = match split_binds(&args.bind) {
        Ok(b) => b,
        Err(e) => {
            // A bad argument: exit 2, like clap's own errors.
            super::output::err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    };
    let mut cfg = SessionConfig::new(bind);
    cfg.bind6 = bind6;
    cfg.bootstrap = bootstrap_list(&args.bootstrap);
    if let Some(mi) = add.metainfo() {
        // Trackerless torrents may list DHT nodes to start from (`nodes` key).
        cfg.bootstrap
            .extend(mi.nodes.iter().map(|(h, p)| format!("{h}:{p}")));
    }
    cfg.upload_limit = args.upload_limit;
    cfg.download_limit = args.download_limit;
    if cfg.bootstrap.is_empty() && add.initial_peers().is_empty() && add.tracker_tiers().is_empty()
    {
        output::err_line(
            "error: no way to find peers: give --bootstrap HOST:PORT, --peer IP:PORT or --tracker URL",
        );
        return Ok(ExitCode::from(2));
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let session = Session::new(cfg).await.context("starting the session")?;
    let info_hash = add.info_hash();
    // The torrent's own clocks start here; the report counts from the start of the command.
    let added_after = started.elapsed();
    let handle = match session.add_torrent(add).await {
        Ok(h) => h,
        Err(e) => {
            session.shutdown().await;
            return Err(anyhow::Error::from(e).context(format!("starting {info_hash}")));
        }
    };
    tracing::info!(listen = %session.listen_addr(), "fetching {info_hash}");
    let progress = spawn_progress(handle.progress(), args.json);
    // Ctrl-C / SIGTERM stops the download; verified pieces are already durable (resume).
    let outcome = tokio::select! {
        r = handle.wait_done() => r,
        _ = signals.wait() => {
            progress.abort();
            session.shutdown().await;
            output::err_line("interrupted; run the same command again to resume");
            return Ok(ExitCode::from(130));
        }
    };
    progress.abort();
    if args.list {
        session.shutdown().await;
        return match outcome.as_ref().ok().and_then(|r| r.info.clone()) {
            Some(info) => {
                print_listing(&info_hash.to_hex(), &info, args.json)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                let why = match outcome {
                    Err(SessionError::Failed(s)) => s,
                    Err(other) => other.to_string(),
                    Ok(_) => "no metadata".to_string(),
                };
                output::err_line(format_args!(
                    "error: could not get the metadata of {info_hash}: {why}"
                ));
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let r = match outcome {
        Ok(r) => r,
        Err(e) => {
            session.shutdown().await;
            let why = match e {
                SessionError::Failed(s) => s,
                other => other.to_string(),
            };
            output::err_line(format_args!(
                "error: download of {info_hash} failed after {:.1} s: {why}",
                started.elapsed().as_secs_f64(),
            ));
            return Ok(ExitCode::FAILURE);
        }
    };
    let feed = handle.feed_stats();
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
            .map(|d| (d + added_after).as_millis() as u64),
        metadata_ms: r.metadata.map(|d| d.as_millis() as u64),
        peers_connected: r.peers_connected,
        peers_from_pex: r.peers_from_pex,
        download_mb_s: r.download_mb_s(),
        uploaded_bytes: r.uploaded_bytes,
        pieces_resumed: r.pieces_resumed,
        pieces_checked: r.pieces_checked,
        pieces_fetched: r.pieces_fetched,
        hash_failures: r.hash_failures,
        peers_banned: r.peers_banned,
        pieces_wanted: r.pieces_wanted,
        bytes_wanted: r.bytes_wanted,
    };
    if args.json {
        // A closed stdout (`| head`) is fine: the download is done either way.
        let _ = output::json_line(&report)?;
    } else {
        output::err_line(format_args!(
            "done: {}{} ({} bytes, {} pieces, {} resumed, {} checked on disk, {} fetched) in {:.1} s at {:.1} MB/s from {} peer(s) ({} via PEX); uploaded {} bytes meanwhile; first peer after {} ms, {} lookups",
            report.name,
            if report.pieces_wanted < report.pieces {
                format!(
                    " [selected files: {} bytes in {} of the pieces]",
                    report.bytes_wanted, report.pieces_wanted
                )
            } else {
                String::new()
            },
            report.bytes,
            report.pieces,
            report.pieces_resumed,
            report.pieces_checked,
            report.pieces_fetched,
            report.elapsed_ms as f64 / 1000.0,
            report.download_mb_s,
            report.peers_connected,
            report.peers_from_pex,
            report.uploaded_bytes,
            report.first_peer_ms.map_or("-".to_string(), |v| v.to_string()),
            feed.lookups(),
        ));
    }
    if args.seed || args.seed_ratio.is_some() {
        output::err_line(format_args!(
            "seeding on {}; Ctrl-C to stop",
            session.listen_addr()
        ));
        tokio::select! {
            _ = signals.wait() => {}
            _ = handle.stopped() => {}
        }
        let uploaded = handle.stats().uploaded;
        session.shutdown().await;
        if args.json {
            let _ = output::json_line(&Stopped {
                event: "stopped",
                uploaded_bytes: uploaded,
            })?;
        } else {
            output::err_line(format_args!("stopped; uploaded {uploaded} bytes"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    session.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
