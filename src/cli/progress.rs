//! Progress display for `fetch` and `demo`: an indicatif bar on a terminal, a log line every
//! few seconds otherwise (both on stderr, so stdout stays clean for `--json`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use dhtnode::engine::Progress;
use tokio::sync::watch;

use super::output;

/// Shows progress until the sender is dropped or `stop` flips; `quiet` shows nothing.
pub fn spawn_progress(
    mut rx: watch::Receiver<Progress>,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            while rx.changed().await.is_ok() {}
            return;
        }
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg:<22} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            Some(b)
        } else {
            None
        };
        let mut last_line = Instant::now() - Duration::from_secs(10);
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            let phase = p.phase.name();
            if let Some(b) = &bar {
                b.set_length(p.bytes_total);
                b.set_position(p.bytes_done);
                b.set_message(format!(
                    "{phase} {}p ↑{:.1}MB/s",
                    p.peers,
                    p.upload_rate / 1e6
                ));
            } else if last_line.elapsed() >= Duration::from_secs(2) {
                last_line = Instant::now();
                if p.phase == dhtnode::engine::Phase::Checking {
                    output::err_line(format_args!(
                        "checking existing data: {}/{} pieces hashed, {}/{} pieces good",
                        p.check_done, p.check_total, p.pieces_done, p.pieces_total
                    ));
                    continue;
                }
                let pct = if p.bytes_total > 0 {
                    100.0 * p.bytes_done as f64 / p.bytes_total as f64
                } else {
                    0.0
                };
                output::err_line(format_args!(
                    "{phase}: {pct:.1}% ({}/{} pieces), down {:.1} MB/s, up {:.1} MB/s ({} MB sent), {} peers",
                    p.pieces_done,
                    p.pieces_total,
                    p.download_rate / 1e6,
                    p.upload_rate / 1e6,
                    p.uploaded / 1_000_000,
                    p.peers
                ));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}
