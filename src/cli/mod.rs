//! Command-line interface: clap definitions, shared argument handling, and dispatch.
//!
//! Flag names and JSON field names are a contract other tools rely on; keep them stable.

mod bootstrap;
mod demo;
mod fetch;
mod lookup;
mod output;
mod progress;
mod seed;
mod simulate;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dhtnode::torrent::{parse_infohash_arg, Magnet};

/// Public routers used when no `--bootstrap` is given.
pub const DEFAULT_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

#[derive(Parser, Debug)]
#[command(
    name = "dhtnode",
    version,
    about = "A trackerless BitTorrent node on the Mainline DHT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a long-lived DHT node until SIGINT/SIGTERM.
    Bootstrap(bootstrap::Args),
    /// Find peers of one info-hash through the DHT (and optionally announce ourselves).
    Lookup(lookup::Args),
    /// Download a torrent by info-hash, magnet link or .torrent file, with no tracker.
    Fetch(fetch::Args),
    /// Share a file or directory: build the torrent, announce it into the DHT, serve peers.
    Seed(seed::Args),
    /// Run a network simulation scenario on the production DHT core (virtual time).
    Simulate(simulate::Args),
    /// The whole system offline on loopback: DHT nodes, a seeder, a fetch by info-hash.
    Demo(demo::Args),
}

/// Parses an info-hash argument (hex, base32 or magnet) for clap.
pub fn infohash_arg(s: &str) -> Result<Magnet, String> {
    parse_infohash_arg(s).map_err(|e| e.to_string())
}

/// Turns `--bootstrap` values into the list to resolve: the defaults when none is given,
/// nothing for `none`.
pub fn bootstrap_list(given: &[String]) -> Vec<String> {
    if given.is_empty() {
        return DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect();
    }
    given
        .iter()
        .filter(|s| !s.eq_ignore_ascii_case("none"))
        .cloned()
        .collect()
}

/// Checks a `--tracker` URL (http, https or udp with a port) and keeps it as written.
pub fn tracker_arg(s: &str) -> Result<String, String> {
    dhtnode::tracker::TrackerUrl::parse(s)
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// Parses `IP:PORT` or `[IPv6]:PORT` for `--bind`.
pub fn bind_arg(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("invalid address {s:?}: expected IP:PORT, e.g. 0.0.0.0:6881 or [::]:6881")
    })
}

/// Splits the repeatable `--bind` into the IPv4 socket and the optional IPv6 one of a
/// dual-stack node (BEP 32): at most one of each family, and the IPv4 one is required.
pub fn split_binds(binds: &[SocketAddr]) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let v4: Vec<SocketAddr> = binds.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<SocketAddr> = binds.iter().copied().filter(SocketAddr::is_ipv6).collect();
    if v4.len() > 1 || v6.len() > 1 {
        return Err("--bind: give at most one IPv4 and one IPv6 address".into());
    }
    match v4.first() {
        Some(a) => Ok((*a, v6.first().copied())),
        None => Err(
            "--bind: an IPv4 address is needed (an IPv6 one may be given beside it, e.g. \
             --bind 0.0.0.0:6881 --bind [::]:6881)"
                .into(),
        ),
    }
}

/// Parses a rate in bytes per second (`0` = unlimited) for `--upload-limit` and
/// `--download-limit`; `None` means unlimited.
pub fn rate_arg(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("{s:?}: expected bytes per second, e.g. 4000000 (0 = unlimited)"))
}

/// SIGINT/SIGTERM handlers installed up front, so a signal that arrives while a command is
/// still starting up is noticed instead of killing the process mid-write.
pub struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Installs the handlers (call at the very start of a long-running command).
    pub fn install() -> anyhow::Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Bootstrap(a) => {
                init_tracing("info");
                bootstrap::run(a).await
            }
            Command::Lookup(a) => {
                init_tracing("warn");
                lookup::run(a).await
            }
            Command::Fetch(a) => {
                init_tracing("warn");
                fetch::run(a).await
            }
            Command::Seed(a) => {
                init_tracing("info");
                seed::run(a).await
            }
            Command::Simulate(a) => {
                init_tracing("warn");
                tokio::task::block_in_place(|| simulate::run(a))
            }
            Command::Demo(a) => {
                init_tracing("warn");
                demo::run(a).await
            }
        }
    });
    // Do not wait for stray blocking tasks (DNS lookups) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
