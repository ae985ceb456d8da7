//! Flash-crowd benchmark: how close a crowd of downloaders behind one slow seeder gets to the
//! ideal, for `dhtnode fetch --seed` and for libtorrent 2.0, same run, same seeder.
//!
//! ```text
//! cargo bench --bench flash_crowd                                   # N=6, 32 MiB, 4 MB/s, 3 rounds
//! cargo bench --bench flash_crowd -- --n 10 --size-mb 64 --cap 8000000 --rounds 5
//! cargo bench --bench flash_crowd -- --fetch-without-seed           # baseline: fetch exits when done
//! cargo bench --bench flash_crowd -- --n 20 --logs /tmp/fc-logs      # keep every child's stderr
//! ```
//!
//! Setup: a DHT of 4 `dhtnode bootstrap` processes on 127.130.0.1–4:6881; one libtorrent session
//! (`tests/interop/lt_torrent.py`, TCP only) on 127.130.0.100 seeds a file of `--size-mb` MiB of
//! pseudo-random bytes with its upload capped at `--cap` bytes/s (`set_upload_limit` on the
//! torrent handle), announced and visible in the DHT before anything is measured.
//!
//! Each round runs both arms, in an order that alternates every round. An arm starts N
//! downloaders at once, each on its own 127.130.X.i address and knowing only the info-hash and
//! one DHT node (node i mod 4), and keeps every one of them running, seeding, until the last
//! has finished, like real clients in a flash crowd:
//! - `dhtnode`: N `dhtnode fetch <infohash> --seed --json --bootstrap <node>` processes; the
//!   clock starts before the first is spawned; a downloader finishes when its JSON line is
//!   read (with `--fetch-without-seed`, a baseline for binaries whose fetch does not yet act
//!   as a swarm member, the fetches run without `--seed` and leave when done);
//! - `libtorrent`: N fresh `lt_torrent.py` sessions (interpreter start-up is not measured); the
//!   clock starts before the first is sent `add_node <node>` then `download <infohash>`; a
//!   downloader finishes when that reply arrives (torrent finished and its cache flushed); the
//!   torrents stay in their sessions, seeding, until the arm ends.
//!
//! Per arm: the wall time until the LAST downloader finished, also as a multiple of the ideal
//! S/C (the seed sends every byte once at its cap); each downloader's finish time; and the
//! seeder's payload upload during the arm ÷ the file size (1.0 is ideal; N means the crowd took
//! everything from the seed). For dhtnode also its `uploaded_bytes` / `peers_from_pex` /
//! `peers_connected` when the new contract provides them (at completion and, after SIGTERM, in
//! its `stopped` line); for libtorrent each session's payload upload. Every copy is compared
//! with the source byte for byte and deleted.
//!
//! Output: progress on stderr, then one JSON object on stdout with every run, the medians per
//! arm, the ratio dhtnode / libtorrent, and the git commit it ran on. Every wait is bounded;
//! every child is killed on drop (also on panic) and gets `PR_SET_PDEATHSIG`, so it dies with
//! this program; the temp dir is removed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::files::{same_file, write_random};
use common::lt::start_session;
use common::{fetch_args, node_addr, start_dht_network_with, wait_stopped, Proc, SpawnOpts};
use serde_json::{json, Value};

/// Second octet of every address the bench uses.
const NET: u8 = 130;
/// Nodes of the DHT.
const NODES: usize = 4;
/// The arms, in the order of even rounds.
const ARMS: [&str; 2] = ["dhtnode", "libtorrent"];

// ----- options ----------------------------------------------------------------------------

struct Opts {
    n: usize,
    size_mb: u64,
    cap: u64,
    rounds: usize,
    /// Baseline for binaries whose `fetch` is no swarm member: each fetch exits when done.
    fetch_without_seed: bool,
    /// Keep every child's stderr here (the temp dir and its logs are removed at the end).
    logs: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench flash_crowd -- [--n N (6)] [--size-mb M (32)] \
         [--cap BYTES_PER_S (4000000)] [--rounds R (3)] [--fetch-without-seed] [--logs DIR]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        n: 6,
        size_mb: 32,
        cap: 4_000_000,
        rounds: 3,
        fetch_without_seed: false,
        logs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a whole number");
                usage()
            })
        };
        match a.as_str() {
            "--n" => o.n = num("--n") as usize,
            "--size-mb" => o.size_mb = num("--size-mb"),
            "--cap" => o.cap = num("--cap"),
            "--rounds" => o.rounds = num("--rounds") as usize,
            "--fetch-without-seed" => o.fetch_without_seed = true,
            "--logs" => o.logs = it.next().map(PathBuf::from).or_else(|| usage()),
            // `cargo bench` passes --bench to harness = false programs.
            "--bench" => {}
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    if !(1..=200).contains(&o.n) || o.size_mb == 0 || o.cap == 0 || o.rounds == 0 {
        usage()
    }
    o
}

// ----- small helpers ----------------------------------------------------------------------

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The median of the present values (mean of the middle two for an even count).
fn median_of(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = xs.flatten().collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(round3(v[mid])),
        _ => Some(round3((v[mid - 1] + v[mid]) / 2.0)),
    }
}

/// Output of a git command run in the crate's directory.
fn git(a: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(a)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Everything one arm needs to know.
struct Setup<'a> {
    ih: &'a str,
    src: &'a Path,
    name: &'a str,
    bytes: u64,
    n: usize,
    tmp: &'a Path,
    spawn: &'a SpawnOpts,
    timeout: Duration,
    /// `--seed` on every `dhtnode fetch` (off only with --fetch-without-seed).
    fetch_seeds: bool,
}

/// The seeder's payload upload so far (harness `stats`).
fn seed_uploaded(seeder: &mut Proc, ih: &str) -> Result<u64, String> {
    let r = seeder.try_call_json(
        json!({"cmd": "stats", "info_hash": ih}),
        Duration::from_secs(10),
    )?;
    r["total_payload_upload"]
        .as_u64()
        .ok_or_else(|| format!("no total_payload_upload in {r}"))
}

/// Waits (bounded by `deadline`) for each downloader's finish line (`done` picks it); returns
/// for each the time from `t0` and the line. Lines are timed when read, so polling the
/// downloaders in turn does not delay the measurement.
fn wait_all(
    procs: &[Proc],
    t0: Instant,
    deadline: Instant,
    done: impl Fn(&Value) -> bool,
) -> Result<Vec<(f64, Value)>, String> {
    let mut got: Vec<Option<(f64, Value)>> = vec![None; procs.len()];
    while got.iter().any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing: Vec<&str> = procs
                .iter()
                .zip(&got)
                .filter(|(_, g)| g.is_none())
                .map(|(p, _)| p.name.as_str())
                .collect();
            return Err(format!(
                "{} of {} not finished after {:.0} s: {missing:?}",
                missing.len(),
                procs.len(),
                secs(deadline - t0)
            ));
        }
        for (p, g) in procs.iter().zip(got.iter_mut()) {
            if g.is_some() {
                continue;
            }
            if let Some((t, v)) = p.wait_json_at(Duration::from_millis(20), &done) {
                let at = secs(t - t0);
                eprintln!("  {} finished at {at:.2} s", p.name);
                *g = Some((at, v));
            }
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// Compares every copy with the source, then deletes it.
fn check_copies(s: &Setup, dirs: &[PathBuf]) -> Result<(), String> {
    let mut res = Ok(());
    for d in dirs {
        if res.is_ok() {
            res = same_file(s.src, &d.join(s.name));
        }
        let _ = std::fs::remove_dir_all(d);
    }
    res
}

// ----- the two arms -----------------------------------------------------------------------

/// N `dhtnode fetch --seed` at once; each stopped with SIGTERM after the last finished.
fn run_dhtnode(s: &Setup, run: usize) -> Result<Value, String> {
    let dirs: Vec<PathBuf> = (0..s.n)
        .map(|i| s.tmp.join(format!("run{run}-dhtnode-{i}")))
        .collect();
    let t0 = Instant::now();
    let mut procs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let bind = format!("127.{NET}.{}.{}:0", 10 + run, i + 1);
        let extra: &[&str] = if s.fetch_seeds { &["--seed"] } else { &[] };
        let a = fetch_args(s.ih, d, &bind, &node_addr(NET, i % NODES), extra);
        procs.push(Proc::spawn_with(
            &format!("run{run}-fetch{i}"),
            common::bin(),
            &a,
            s.spawn,
        )?);
    }
    let fin = wait_all(&procs, t0, t0 + s.timeout, |v| v.get("infohash").is_some());
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    // One bound for all: whatever has not exited by then is killed on drop.
    let stop_by = Instant::now() + Duration::from_secs(10);
    let mut stopped = Vec::new();
    for p in procs.iter_mut() {
        let left = stop_by.saturating_duration_since(Instant::now());
        let (st, line) = wait_stopped(p, left.max(Duration::from_millis(100)));
        stopped.push(json!({"exit": st.map(|s| s.code()), "line": line}));
    }
    let fin = fin?;
    check_copies(s, &dirs)?;
    let peers: Vec<Value> = fin
        .iter()
        .zip(&stopped)
        .map(|((at, v), st)| {
            json!({
                "finished_s": at,
                "elapsed_ms": v["elapsed_ms"],
                "first_peer_ms": v["first_peer_ms"],
                "metadata_ms": v["metadata_ms"],
                "peers_connected": v["peers_connected"],
                "peers_from_pex": v.get("peers_from_pex"),
                "uploaded_bytes_at_completion": v.get("uploaded_bytes"),
                "uploaded_bytes_at_stop": st["line"].get("uploaded_bytes"),
                "exit_on_sigterm": st["exit"],
            })
        })
        .collect();
    Ok(json!({ "downloaders": peers }))
}

/// N fresh libtorrent sessions sent `add_node` + `download` at once; every torrent keeps
/// seeding in its session until the last finished.
fn run_libtorrent(s: &Setup, run: usize) -> Result<Value, String> {
    let dirs: Vec<PathBuf> = (0..s.n)
        .map(|i| s.tmp.join(format!("run{run}-lt-{i}")))
        .collect();
    let mut procs = Vec::new();
    for i in 0..s.n {
        let ip = format!("127.{NET}.{}.{}", 10 + run, i + 1);
        procs.push(start_session(
            &format!("run{run}-lt{i}"),
            &ip,
            &[],
            s.spawn,
        )?);
    }
    let t0 = Instant::now();
    for (i, p) in procs.iter_mut().enumerate() {
        let node = node_addr(NET, i % NODES);
        p.send_line(&json!({"cmd": "add_node", "addr": node}).to_string());
        p.send_line(
            &json!({"cmd": "download", "info_hash": s.ih, "save_path": dirs[i],
                    "timeout": s.timeout.as_secs().min(300)})
            .to_string(),
        );
    }
    let fin = wait_all(&procs, t0, t0 + s.timeout + Duration::from_secs(10), |v| {
        v["cmd"] == "download"
    })?;
    if let Some((_, bad)) = fin.iter().find(|(_, v)| v["ok"] != true) {
        return Err(format!("a libtorrent download failed: {bad}"));
    }
    let mut peers = Vec::new();
    for (p, (at, v)) in procs.iter_mut().zip(&fin) {
        let st = p.try_call_json(
            json!({"cmd": "stats", "info_hash": s.ih}),
            Duration::from_secs(10),
        )?;
        peers.push(json!({
            "finished_s": at,
            "elapsed_ms": v["elapsed_ms"],
            "metadata_ms": v["metadata_ms"],
            "num_peers": v["num_peers"],
            "uploaded_bytes": st["total_payload_upload"],
        }));
    }
    drop(procs);
    check_copies(s, &dirs)?;
    Ok(json!({ "downloaders": peers }))
}

// ----- main -------------------------------------------------------------------------------

fn main() {
    let o = parse_opts();
    let bytes = o.size_mb * 1024 * 1024;
    let ideal_s = bytes as f64 / o.cap as f64;
    let started = Instant::now();
    let load_start = loadavg();
    let tmp = tempfile::Builder::new()
        .prefix("dhtnode-flash-crowd-")
        .tempdir()
        .expect("create temp dir");
    let logs = o.logs.clone().unwrap_or_else(|| tmp.path().join("logs"));
    std::fs::create_dir_all(&logs).expect("create logs dir");
    let spawn = SpawnOpts {
        stderr_dir: Some(logs.clone()),
        die_with_parent: true,
    };
    eprintln!(
        "temp dir {}; N={} size={} MiB cap={} B/s ideal={ideal_s:.2} s; load {load_start}",
        tmp.path().display(),
        o.n,
        o.size_mb,
        o.cap
    );

    let name = format!("crowd-{}m.bin", o.size_mb);
    let src = tmp.path().join("src").join(&name);
    write_random(&src, bytes as usize, 0xc20d);
    let net = start_dht_network_with(NET, NODES, &tmp.path().join("dht"), &[], &spawn);
    let nodes: Vec<String> = (0..NODES).map(|i| node_addr(NET, i)).collect();
    let mut seeder = start_session("lt-seed", &format!("127.{NET}.0.100"), &nodes, &spawn)
        .unwrap_or_else(|e| panic!("{e}"));
    let seed = seeder
        .try_call_json(
            json!({"cmd": "seed", "path": src, "upload_limit": o.cap,
                   "wait_announced": true, "timeout": 60}),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("libtorrent seed: {e}"));
    let ih = seed["info_hash"].as_str().expect("info_hash").to_string();
    eprintln!("libtorrent seeds {ih}: {seed}");

    let setup = Setup {
        ih: &ih,
        src: &src,
        name: &name,
        bytes,
        n: o.n,
        tmp: tmp.path(),
        spawn: &spawn,
        // Everybody from the seed alone takes N x ideal; allow twice that.
        timeout: Duration::from_secs_f64(2.0 * o.n as f64 * ideal_s + 60.0),
        fetch_seeds: !o.fetch_without_seed,
    };
    let mut runs: Vec<Value> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for round in 0..o.rounds {
        for k in 0..ARMS.len() {
            let arm = ARMS[(k + round) % ARMS.len()];
            let run = runs.len();
            eprintln!("round {round}: {arm} ({} downloaders)", o.n);
            let before = seed_uploaded(&mut seeder, &ih);
            let t = Instant::now();
            let r = match arm {
                "dhtnode" => run_dhtnode(&setup, run),
                _ => run_libtorrent(&setup, run),
            };
            let after = seed_uploaded(&mut seeder, &ih);
            let mut v = match r {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("round {round} {arm}: {e}"));
                    json!({"error": e})
                }
            };
            let last = v["downloaders"].as_array().and_then(|ds| {
                ds.iter()
                    .filter_map(|d| d["finished_s"].as_f64())
                    .reduce(f64::max)
            });
            v["arm"] = json!(arm);
            v["round"] = json!(round);
            v["order"] = json!(k);
            v["ok"] = json!(v.get("error").is_none());
            v["wall_s"] = json!(last);
            v["wall_over_ideal"] = json!(last.map(|w| round3(w / ideal_s)));
            v["seed_upload_over_size"] = match (before, after) {
                (Ok(b), Ok(a)) => json!(round3((a - b) as f64 / setup.bytes as f64)),
                _ => json!(null),
            };
            v["arm_s"] = json!(secs(t.elapsed()));
            eprintln!(
                "round {round} {arm}: last finished at {last:?} s = {} x ideal; seed sent {} x \
                 the file [{:.1} s]",
                v["wall_over_ideal"],
                v["seed_upload_over_size"],
                t.elapsed().as_secs_f64()
            );
            runs.push(v);
        }
    }
    let _ = seeder.try_call_json(json!({"cmd": "quit"}), Duration::from_secs(5));
    drop(seeder);
    drop(net);

    let col = |arm: &str, f: &str| {
        median_of(
            runs.iter()
                .filter(|r| r["arm"] == arm && r["ok"] == true)
                .map(|r| r[f].as_f64()),
        )
    };
    let mut medians = serde_json::Map::new();
    for arm in ARMS {
        medians.insert(
            arm.to_string(),
            json!({
                "ok_runs": runs.iter().filter(|r| r["arm"] == arm && r["ok"] == true).count(),
                "wall_s": col(arm, "wall_s"),
                "wall_over_ideal": col(arm, "wall_over_ideal"),
                "seed_upload_over_size": col(arm, "seed_upload_over_size"),
            }),
        );
    }
    let ratio = match (col("dhtnode", "wall_s"), col("libtorrent", "wall_s")) {
        (Some(d), Some(l)) if l > 0.0 => Some(round3(d / l)),
        _ => None,
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let out = json!({
        "bench": "flash_crowd",
        "command": format!(
            "cargo bench --bench flash_crowd -- --n {} --size-mb {} --cap {} --rounds {}{}",
            o.n,
            o.size_mb,
            o.cap,
            o.rounds,
            if o.fetch_without_seed { " --fetch-without-seed" } else { "" }
        ),
        "dhtnode_fetch_seeds": !o.fetch_without_seed,
        "git": {"commit": git(&["rev-parse", "--short", "HEAD"]), "dirty": dirty},
        "n": o.n,
        "size_mb": o.size_mb,
        "bytes": bytes,
        "cap_bytes_per_s": o.cap,
        "ideal_s": round3(ideal_s),
        "rounds": o.rounds,
        "setup": format!(
            "DHT of {NODES} dhtnode bootstrap nodes on 127.{NET}.0.1-{NODES}:6881; libtorrent \
             seeder on 127.{NET}.0.100 capped at {} B/s (TCP only); each downloader knows the \
             info-hash and one DHT node",
            o.cap
        ),
        "libtorrent_seed": seed,
        "runs": runs,
        "medians": Value::Object(medians),
        "ratio_dhtnode_over_libtorrent_wall": ratio,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "total_s": secs(started.elapsed()),
        "problems": problems,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("serialize"));
}
