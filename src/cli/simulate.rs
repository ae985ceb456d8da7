//! `dhtnode simulate`: runs a scenario of the network simulator (the production DHT core under
//! a virtual clock) and reports the figures; `--out` also writes CSV and plots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dhtnode::sim::provenance::Provenance;
use dhtnode::sim::{run_scenario, write_outputs, ProgressUpdate, RunOptions, Scenario};

use super::output::{self, err_line};

/// Arguments of `dhtnode simulate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Scenario file (see simulations/*.toml).
    #[arg(value_name = "SCENARIO.toml")]
    scenario: PathBuf,
    /// RNG seed (overrides the scenario's); same seed, same output.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Number of nodes (overrides the scenario's).
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,
    /// Directory for lookups.csv and the plots.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
    /// Threads to run the network on (default: every core). The output is byte-identical
    /// for every count; only the wall time changes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

/// glibc's malloc tunable (2.35 and later; older ones ignore it) that marks its heaps for
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), which Debian's kernels give only to
/// memory that asks. A simulated network is a large heap touched at random, one node per
/// event: with 4 KiB pages most of those touches also miss the TLB. churn-100k on one thread,
/// same binary and sitting: parallel work 33.6 s with 4 KiB pages, 26.7 s with huge pages.
const HUGEPAGE_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Starts this command again with [`HUGEPAGE_TUNABLE`] set, unless `GLIBC_TUNABLES` already
/// says something about it (`glibc.malloc.hugetlb=0` opts out). The tunable is read when the
/// process starts, so setting it now would be too late; `exec` keeps the pid, the arguments
/// and the standard streams. On failure the run goes on in this process as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn restart_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    // As bytes: a value that is not UTF-8 is kept whole, never dropped for ours.
    let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    const NAME: &[u8] = b"glibc.malloc.hugetlb";
    if current
        .as_encoded_bytes()
        .windows(NAME.len())
        .any(|w| w == NAME)
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut value = current;
    if !value.is_empty() {
        value.push(":");
    }
    value.push(HUGEPAGE_TUNABLE);
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", value)
        .exec();
    tracing::debug!("running without huge pages: could not restart: {err}");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn restart_with_huge_pages() {}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    restart_with_huge_pages();
    let scenario = match Scenario::from_path(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            err_line(format_args!("error: {e}"));
            return Ok(ExitCode::from(2));
        }
    };
    let opts = RunOptions {
        seed: args.seed,
        nodes: args.nodes,
        threads: args.threads.map(usize::from),
        ..RunOptions::default()
    };
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} lookups [{elapsed_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let mut last_line = std::time::Instant::now();
    let mut progress = |u: ProgressUpdate| match &bar {
        Some(b) => {
            b.set_length(u64::from(u.lookups_total));
            b.set_position(u64::from(u.lookups_done));
            b.set_message(format!(
                "{} t={:.0}s online={}",
                u.phase, u.sim_seconds, u.online
            ));
        }
        None => {
            if last_line.elapsed().as_secs() >= 5 {
                last_line = std::time::Instant::now();
                err_line(format_args!(
                    "{}: sim time {:.0} s, {} online, {}/{} lookups",
                    u.phase, u.sim_seconds, u.online, u.lookups_done, u.lookups_total
                ));
            }
        }
    };
    let mut provenance = Provenance::now();
    let mut report = run_scenario(&scenario, &opts, &mut progress)
        .with_context(|| format!("running {}", args.scenario.display()))?;
    provenance.finish();
    report.provenance = Some(provenance);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(dir) = &args.out {
        write_outputs(&report, dir).with_context(|| format!("writing {}", dir.display()))?;
    }
    // A closed stdout (`| head`) ends the output quietly: the run itself succeeded.
    if args.json {
        let _ = output::line(report.to_json())?;
    } else {
        let s = &report.summary;
        let _ = output::line(format_args!(
            "{}: {} nodes, {} lookups, success {:.2}%, first peer p50 {:.0} ms p90 {:.0} ms p99 {:.0} ms, hops mean {:.2}, {:.1} messages/lookup; {:.0} s simulated in {:.1} s, peak RSS {:.0} MB",
            report.scenario,
            report.nodes,
            s.lookups,
            s.success_rate * 100.0,
            s.first_peer_ms.p50,
            s.first_peer_ms.p90,
            s.first_peer_ms.p99,
            s.hops.mean,
            s.messages_per_lookup.mean,
            report.sim_seconds,
            report.wall_seconds,
            report.peak_rss_mb
        ))?;
        if let Some(r) = &report.ratio_to_perfect {
            let _ = output::line(format_args!("ratio to the perfect-table limit: {r:?}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
