//! `dhtnode lookup`: one get_peers lookup, peers printed as they arrive.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dhtnode::dht;
use dhtnode::net::{DhtHandle, LookupUpdate, NodeOptions};
use dhtnode::torrent::Magnet;

use super::output::{self, err_line};
use super::{bind_arg, bootstrap_list, infohash_arg, split_binds};

/// Arguments of `dhtnode lookup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Info-hash (40 hex or 32 base32 characters) or a magnet link.
    #[arg(value_name = "INFOHASH|MAGNET", value_parser = infohash_arg)]
    target: Magnet,
    /// Local address (repeatable: one IPv4 and optionally one IPv6 address, `[::]:PORT`,
    /// for a dual-stack DHT node, BEP 32).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0", value_parser = bind_arg)]
    bind: Vec<SocketAddr>,
    /// Bootstrap node (repeatable); `none` for no default routers.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Announce ourselves as a peer on this TCP port after the lookup.
    #[arg(long, value_name = "PORT")]
    announce: Option<u16>,
    /// Print one JSON object at the end instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    infohash: String,
    peers: Vec<String>,
    nodes_queried: u32,
    responses: u32,
    first_peer_ms: Option<u64>,
    elapsed_ms: u64,
    announced_to: usize,
    announce_acks: usize,
}

/// Runs the lookup; exit 0 if a peer was found, 1 if none. A closed stdout (`| head -1`) is
/// no failure: the lookup stops early unless it still has an announce to make, and exits
/// with the same status.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let info_hash = args.target.info_hash;
    let bootstrap = bootstrap_list(&args.bootstrap);
    if bootstrap.is_empty() {
        anyhow::bail!(
            "no bootstrap nodes: give --bootstrap HOST:PORT (a lookup cannot start alone)"
        );
    }
    let (bind, bind6) = match split_binds(&args.bind) {
        Ok(b) => b,
        Err(e) => {
            // A bad argument: exit 2, like clap's own errors.
            super::output::err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    };
    let node = DhtHandle::spawn(NodeOptions {
        bind,
        bind6,
        bootstrap,
        join: false,
        dht: dht::Config {
            // A one-shot lookup should not be put in others' routing tables (BEP 43).
            read_only: true,
            ..dht::Config::default()
        },
        ..NodeOptions::default()
    })
    .await
    .context("starting the DHT node")?;

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut stream = match args.announce {
        Some(port) => node.announce(info_hash, port)?,
        None => node.get_peers(info_hash)?,
    };
    let mut peers: Vec<String> = Vec::new();
    let mut first_peer_ms = None;
    let mut ack_deadline = None;
    'lookup: loop {
        let wait_until = ack_deadline.unwrap_or(deadline).min(deadline);
        let update = match tokio::time::timeout_at(wait_until, stream.next_update()).await {
            Ok(Some(u)) => u,
            Ok(None) | Err(_) => break,
        };
        match update {
            LookupUpdate::Peers(ps) => {
                for p in ps {
                    let s = p.to_string();
                    if peers.contains(&s) {
                        continue;
                    }
                    first_peer_ms.get_or_insert(started.elapsed().as_millis() as u64);
                    let closed = !args.json && output::line(&s)?.is_err();
                    peers.push(s);
                    if closed && args.announce.is_none() {
                        // Nobody reads the peers any more and there is no announce to make.
                        break 'lookup;
                    }
                }
            }
            LookupUpdate::Done(s) => {
                if s.announced == 0 {
                    break;
                }
                // Give the announced nodes a moment to acknowledge.
                ack_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            LookupUpdate::AnnounceAcked(_) => {
                let announced = stream.summary().map_or(usize::MAX, |s| s.announced);
                if stream.acks().len() >= announced {
                    break;
                }
            }
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let summary = stream.summary().cloned().unwrap_or_default();
    let timed_out = stream.summary().is_none();
    for n in &summary.closest {
        tracing::debug!("closest: {} {}", n.id, n.addr);
    }
    let report = Report {
        infohash: info_hash.to_hex(),
        peers,
        nodes_queried: summary.stats.queried,
        responses: summary.stats.responses,
        first_peer_ms,
        elapsed_ms,
        announced_to: summary.announced,
        announce_acks: stream.acks().len(),
    };
    node.shutdown().await;
    if args.json {
        // Closed: the reader left before the report; the exit status still tells the outcome.
        let _ = output::json_line(&report)?;
    } else {
        err_line(format_args!(
            "{} peer(s) for {} in {} ms; {} nodes queried, {} answered{}",
            report.peers.len(),
            report.infohash,
            report.elapsed_ms,
            report.nodes_queried,
            report.responses,
            if args.announce.is_some() {
                format!(
                    "; announced to {} node(s), {} acknowledged",
                    report.announced_to, report.announce_acks
                )
            } else {
                String::new()
            }
        ));
    }
    if report.peers.is_empty() {
        err_line(format_args!(
            "no peers found for {}{}",
            report.infohash,
            if timed_out {
                format!(" before the {} s timeout", args.timeout)
            } else {
                String::new()
            }
        ));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
