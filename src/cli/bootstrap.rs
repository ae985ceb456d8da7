//! `dhtnode bootstrap`: a long-lived DHT node with persistent state and status lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dhtnode::net::state;
use dhtnode::net::{DhtHandle, NodeOptions, NodeStats};

use super::output::{self, Written};
use super::{bind_arg, bootstrap_list, split_binds, ShutdownSignal};

/// Arguments of `dhtnode bootstrap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Local address (repeatable: one IPv4 and optionally one IPv6 address, `[::]:PORT`,
    /// for a dual-stack DHT node, BEP 32).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881", value_parser = bind_arg)]
    bind: Vec<SocketAddr>,
    /// Bootstrap node (repeatable); replaces the public routers; `none` starts alone.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// Where the node id and routing table are kept (default: the platform data dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds between status lines.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    status_interval: u64,
    /// Print status as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Packets per second one IP may send on average before it is ignored for 5 minutes
    /// (0 = no limit, e.g. for load tests).
    #[arg(long, value_name = "PKTS", default_value_t = 50)]
    ip_rate_limit: u32,
    /// Reply bytes per second the node sends at most, over all queriers, so spoofed queries
    /// cannot turn it into an amplifier (0 = no limit, e.g. for load tests).
    #[arg(long, value_name = "BYTES", default_value_t = dhtnode::dht::ratelimit::DEFAULT_REPLY_BYTES_PER_SEC)]
    reply_rate_limit: u32,
}

/// How often the routing table is saved while running.
const SAVE_EVERY: Duration = Duration::from_secs(180);

fn default_state_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("dhtnode"))
        .unwrap_or_else(|| PathBuf::from(".dhtnode"))
}

/// Prints one status line; `Ok(Err(Closed))` once nobody reads stdout any more.
fn print_status(s: &NodeStats, json: bool) -> std::io::Result<Written> {
    if json {
        output::json_line(s)
    } else {
        let six = s.ipv6.as_ref().map_or(String::new(), |f| {
            format!(
                " | ipv4 {} ({} good), ipv6 {} ({} good)",
                s.ipv4.nodes, s.ipv4.good_nodes, f.nodes, f.good_nodes
            )
        });
        output::line(format_args!(
            "node {} | {} nodes ({} good) in {} buckets{six} | {} peers for {} info-hashes | queries in {} out {}",
            s.node_id,
            s.nodes,
            s.good_nodes,
            s.buckets,
            s.stored_peers,
            s.stored_infohashes,
            s.queries_in,
            s.queries_out
        ))
    }
}

async fn save(node: &DhtHandle, dir: &std::path::Path) -> anyhow::Result<()> {
    let st = node.saved_state().await?;
    state::save(dir, &st).with_context(|| format!("saving state to {}", dir.display()))
}

/// Runs the node until SIGINT/SIGTERM or until stdout's reader goes away (`| head`), then
/// saves its state and exits 0.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut shutdown =
        ShutdownSignal::install().context("installing the SIGINT/SIGTERM handlers")?;
    let dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let saved = state::load(&dir)?;
    let (id, known, known6) = match &saved {
        Some(s) => (Some(s.id), s.nodes.clone(), s.nodes6.clone()),
        None => (None, Vec::new(), Vec::new()),
    };
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
        bootstrap: bootstrap_list(&args.bootstrap),
        known_nodes: known,
        known_nodes6: known6,
        id,
        dht: dhtnode::dht::Config {
            rate_limits: dhtnode::dht::RateLimits {
                per_ip_per_sec: args.ip_rate_limit,
                reply_bytes_per_sec: args.reply_rate_limit,
                ..dhtnode::dht::RateLimits::default()
            },
            ..dhtnode::dht::Config::default()
        },
        ..NodeOptions::default()
    })
    .await
    .context("starting the DHT node")?;
    tracing::info!(
        "node {} listening on {} (state in {}, {} saved contacts)",
        node.id(),
        match node.local_addr6() {
            Some(a6) => format!("{} and {a6}", node.local_addr()),
            None => node.local_addr().to_string(),
        },
        dir.display(),
        saved.as_ref().map_or(0, |s| s.nodes.len() + s.nodes6.len())
    );
    // Save right away so the id survives even an early kill -9.
    save(&node, &dir).await?;

    // And again once the join has filled the table, so a crash soon after start still
    // leaves contacts to rejoin through.
    let joined = {
        let node = node.clone();
        async move { node.wait_bootstrapped().await }
    };
    tokio::pin!(joined);
    let mut joined_done = false;

    let mut status = tokio::time::interval(Duration::from_secs(args.status_interval.max(1)));
    let mut saver = tokio::time::interval(SAVE_EVERY);
    saver.tick().await;
    // Why the loop ended: a signal or a closed stdout is a clean stop, a failing stdout is an
    // error to report (after saving, like any stop).
    let stopped: anyhow::Result<()> = loop {
        tokio::select! {
            _ = status.tick() => match print_status(&node.stats().await?, args.json) {
                Ok(Ok(())) => {}
                Ok(Err(output::Closed)) => {
                    // Nobody reads the status any more (`| head`): stop as on SIGTERM.
                    tracing::info!("stdout closed: stopping");
                    break Ok(());
                }
                Err(e) => break Err(anyhow::Error::new(e).context("writing the status to stdout")),
            },
            _ = saver.tick() => {
                if let Err(e) = save(&node, &dir).await {
                    tracing::warn!("{e:#}");
                }
            }
            r = &mut joined, if !joined_done => {
                joined_done = true;
                if let Ok(n) = r {
                    tracing::info!("joined the DHT: {n} nodes in the routing table");
                }
                if let Err(e) = save(&node, &dir).await {
                    tracing::warn!("{e:#}");
                }
            }
            _ = shutdown.wait() => break Ok(()),
        }
    };
    save(&node, &dir).await?;
    stopped?;
    // The final status line; if stdout is closed there is no one to tell, and that is fine.
    let _ = print_status(&node.stats().await?, args.json)?;
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
