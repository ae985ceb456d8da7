//! Transfer benchmark (issue 3, item 9): 1 GiB over loopback, side by side in one run.
//!
//! ```text
//! cargo bench --bench transfer                               # 3 rounds of 1024 MiB
//! cargo bench --bench transfer -- --rounds 5 --size-mb 256
//! cargo bench --bench transfer -- --tmp-dir /dev/shm         # data on tmpfs instead of /tmp
//! ```
//!
//! Phase 1, SHA-1 ceiling: `openssl speed -evp sha1` (one process, one core); the 16384-byte
//! column is the ceiling the fetch rate is compared with.
//!
//! Phase 2, transfers. One source file of `--size-mb` MiB of pseudo-random bytes in a temp dir
//! (under `--tmp-dir`, default `$TMPDIR` or /tmp; its filesystem type is reported). A small DHT
//! of 8 `dhtnode bootstrap` processes on 127.N.0.1–8:6881, one `dhtnode seed` of the file and one
//! libtorrent seeder of the same file (`tests/interop/lt_torrent.py`, TCP only, v1 torrent with
//! the piece length dhtnode would choose, so the info-hashes differ but the piece sizes match),
//! both announced and visible in the DHT before anything is measured. Then one unmeasured
//! libtorrent download (libtorrent seeds in `seed_mode`, checking each piece the first time it is
//! sent: the warm-up pays for that so no measured round does). Then R rounds, each running the
//! three configurations in an order that rotates every round:
//! - `a`: `dhtnode seed` → `dhtnode fetch <infohash>` (a fresh process, bootstrapped from one
//!   DHT node);
//! - `b`: libtorrent seeder → `dhtnode fetch <infohash>`;
//! - `c`: libtorrent seeder → a fresh libtorrent session (`lt_torrent.py download`, info-hash
//!   only: DHT lookup, BEP 9 metadata, download, `flush_cache`).
//!
//! Per run: the wall time from the start of the fetch (process spawn; for libtorrent, sending
//! the `download` request) to completion (the fetch's JSON line; the harness's reply), which
//! includes the DHT lookup and the metadata, and the wall rate in MB/s (10^6 bytes); for dhtnode
//! also its own `download_mb_s`, `metadata_ms`, `first_peer_ms`, and its peak RSS: `VmHWM` read
//! from `/proc/<pid>/status` the moment the JSON line arrives (the process has finished the
//! download and is shutting down), cross-checked with `ru_maxrss` from `wait4` at exit. Each
//! output is checked (size and 64 sampled 4 KiB blocks against the source) and deleted at once.
//!
//! Phase 3, latency: a 50-node DHT of `dhtnode bootstrap` processes on 127.M.0.1–50:6881. Each
//! round a new 16 MiB file (new info-hash) is seeded by `dhtnode seed` and, once a lookup sees
//! it, fetched by `dhtnode fetch <infohash>` bootstrapped from a random node; its
//! `first_peer_ms` and `metadata_ms` are reported.
//!
//! Output: progress on stderr, then one JSON object on stdout with every run, medians, the
//! ratios dhtnode(b)/libtorrent(c) and dhtnode(a)/libtorrent(c), the SHA-1 fractions, and the
//! issue's targets. Every wait is bounded; every child is killed on drop (also on panic) and
//! gets `PR_SET_PDEATHSIG` so it dies with this program. The temp dir is removed at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_dhtnode");
const PY: &str = "/usr/bin/python3";
const LT_TORRENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_torrent.py");

/// Nodes of the transfer DHT.
const TRANSFER_NODES: usize = 8;
/// Size of the file of each latency round.
const LATENCY_FILE: usize = 16 * 1024 * 1024;
/// Blocks compared with the source after each download.
const SAMPLES: u64 = 64;

// ----- options ----------------------------------------------------------------------------

struct Opts {
    rounds: usize,
    size_mb: u64,
    tmp_dir: PathBuf,
    latency_nodes: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench transfer -- [--rounds N (3)] [--size-mb M (1024)] \
         [--tmp-dir DIR ($TMPDIR or /tmp)] [--latency-nodes N (50)]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        rounds: 3,
        size_mb: 1024,
        tmp_dir: std::env::temp_dir(),
        latency_nodes: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                usage()
            })
        };
        match a.as_str() {
            "--rounds" => o.rounds = val("--rounds").parse().unwrap_or_else(|_| usage()),
            "--size-mb" => o.size_mb = val("--size-mb").parse().unwrap_or_else(|_| usage()),
            "--tmp-dir" => o.tmp_dir = PathBuf::from(val("--tmp-dir")),
            "--latency-nodes" => {
                o.latency_nodes = val("--latency-nodes").parse().unwrap_or_else(|_| usage())
            }
            // `cargo bench` passes --bench to harness = false programs.
            "--bench" => {}
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    if o.rounds == 0 || o.size_mb == 0 || !(2..=250).contains(&o.latency_nodes) {
        usage()
    }
    o
}

// ----- processes --------------------------------------------------------------------------

/// A child process: stdout lines arrive on a channel with the time they were read; stderr goes
/// to a log file. Killed (SIGKILL) on drop unless it was already reaped; it also gets
/// `PR_SET_PDEATHSIG` so it cannot outlive this program.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    log: PathBuf,
    /// (exit code or -signal, ru_maxrss KiB) once reaped.
    exited: Option<(i32, u64)>,
}

impl Proc {
    fn spawn(name: &str, program: &str, args: &[String], logs: &Path) -> Result<Proc, String> {
        let log = logs.join(format!("{name}.stderr"));
        let err = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
            log,
            exited: None,
        })
    }

    fn dhtnode(name: &str, args: &[String], logs: &Path) -> Result<Proc, String> {
        Proc::spawn(name, BIN, args, logs)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next stdout line within `timeout`; Err on timeout or end of output.
    fn next_line(&self, timeout: Duration) -> Result<(Instant, String), String> {
        self.lines.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => format!("{}: no output within {timeout:?}", self.name),
            RecvTimeoutError::Disconnected => {
                format!(
                    "{}: exited early; stderr: {}",
                    self.name,
                    self.stderr_tail()
                )
            }
        })
    }

    /// The next stdout line that is JSON satisfying `pred`, within `timeout`.
    fn wait_json(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, line) = self
                .next_line(left)
                .map_err(|e| format!("waiting for {what}: {e}"))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if pred(&v) {
                    return Ok((t, v));
                }
            }
        }
    }

    /// The newest JSON line printed so far, if any (drains the channel).
    fn latest_json(&self) -> Option<Value> {
        let mut last = None;
        while let Ok((_, l)) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                last = Some(v);
            }
        }
        last
    }

    fn send_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("{}: write to stdin: {e}", self.name))
    }

    /// Sends a harness request; returns (time sent, time of the reply, reply). Progress events
    /// are skipped; a reply with `ok` false is an error.
    fn call(&mut self, cmd: Value, timeout: Duration) -> Result<(Instant, Instant, Value), String> {
        let want = cmd["cmd"].clone();
        let sent = Instant::now();
        self.send_line(&cmd.to_string())?;
        let (t, r) = self.wait_json(timeout, &format!("reply to {cmd}"), |v| v["cmd"] == want)?;
        if r["ok"] != true {
            return Err(format!("{}: {cmd} failed: {r}", self.name));
        }
        Ok((sent, t, r))
    }

    /// Waits (bounded, on a pidfd) for the process to exit and reaps it with `wait4`;
    /// returns (exit code or -signal, ru_maxrss in KiB).
    fn wait_exit(&mut self, timeout: Duration) -> Result<(i32, u64), String> {
        if let Some(r) = self.exited {
            return Ok(r);
        }
        let pid = self.pid();
        // SAFETY: plain syscalls on our own unreaped child (its pid cannot be reused).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        if fd < 0 {
            return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + timeout;
        let exited = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                break true;
            }
            if n == 0 || Instant::now() >= deadline {
                break false;
            }
        };
        unsafe { libc::close(fd) };
        if !exited {
            return Err(format!("{} did not exit within {timeout:?}", self.name));
        }
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r != pid {
            return Err(format!(
                "wait4({pid}) = {r}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -libc::WTERMSIG(status)
        };
        let res = (code, ru.ru_maxrss as u64);
        self.exited = Some(res);
        Ok(res)
    }

    /// The last few lines the process wrote to stderr.
    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmHWM` of a live process, in KiB.
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

// ----- files ------------------------------------------------------------------------------

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Filesystem type of `p` from statfs: (name, is_tmpfs).
fn fs_type(p: &Path) -> (String, bool) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL");
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return ("unknown".into(), false);
    }
    let magic = st.f_type as u64;
    let name = match magic {
        0x0102_1994 => "tmpfs",
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        _ => "other",
    };
    (format!("{name} (magic 0x{magic:x})"), magic == 0x0102_1994)
}

/// Writes `len` pseudo-random bytes (xorshift64*, seeded) to `path` and syncs it, so no
/// write-back of it runs during the measurements.
fn write_random(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut s = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            chunk.copy_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// `got` has `src`'s size and the same bytes in `SAMPLES` blocks spread over the file (the
/// fetchers verify every piece's SHA-1 themselves; this catches wrong files or offsets).
fn check_copy(src: &Path, got: &Path) -> Result<(), String> {
    let a = File::open(src).map_err(|e| format!("open {}: {e}", src.display()))?;
    let b = File::open(got).map_err(|e| format!("open {}: {e}", got.display()))?;
    let len = a.metadata().map_err(|e| e.to_string())?.len();
    let glen = b.metadata().map_err(|e| e.to_string())?.len();
    if len != glen {
        return Err(format!("{} has {glen} bytes, want {len}", got.display()));
    }
    let blk = 4096u64.min(len);
    let mut x = vec![0u8; blk as usize];
    let mut y = vec![0u8; blk as usize];
    for i in 0..=SAMPLES {
        let off = ((len - blk) / SAMPLES) * i;
        a.read_exact_at(&mut x, off).map_err(|e| e.to_string())?;
        b.read_exact_at(&mut y, off).map_err(|e| e.to_string())?;
        if x != y {
            return Err(format!(
                "{} differs from the source near byte {off}",
                got.display()
            ));
        }
    }
    Ok(())
}

// ----- statistics -------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ----- SHA-1 ceiling ----------------------------------------------------------------------

/// `openssl speed -evp sha1`: (16384-byte rate in MB/s, the table's two lines).
fn openssl_sha1(logs: &Path) -> Result<(f64, Vec<String>), String> {
    let p = Proc::spawn(
        "openssl",
        "openssl",
        &args(&["speed", "-evp", "sha1"]),
        logs,
    )?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok((_, l)) => lines.push(l),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => return Err("openssl speed took over 180 s".into()),
        }
    }
    let header = lines
        .iter()
        .find(|l| l.starts_with("type") && l.contains("16384 bytes"))
        .ok_or_else(|| format!("no header with a 16384 bytes column in {lines:?}"))?;
    let col = header
        .split("bytes")
        .position(|c| c.trim_end().ends_with("16384"))
        .ok_or("16384 column not found")?;
    let row = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with("sha1"))
        .ok_or_else(|| format!("no sha1 row in {lines:?}"))?;
    // The row is "sha1  v16 v64 v256 v1024 v8192 v16384" with values in 1000s of bytes/s.
    let vals: Vec<&str> = row.split_whitespace().skip(1).collect();
    let v = vals
        .get(col)
        .ok_or_else(|| format!("row {row} has no column {col}"))?;
    let k: f64 = v
        .trim_end_matches('k')
        .parse()
        .map_err(|e| format!("bad value {v}: {e}"))?;
    Ok((k / 1000.0, vec![header.clone(), row.clone()]))
}

// ----- DHT networks -----------------------------------------------------------------------

struct Net {
    /// Second octet of this network's 127.N.x.y addresses.
    n: u8,
    nodes: Vec<Proc>,
    addrs: Vec<String>,
}

/// Starts `count` `dhtnode bootstrap` nodes on 127.N.0.1..:6881, each bootstrapped from node 0
/// and up to two random earlier nodes, one after another; then waits (bounded) until every
/// routing table holds `min_table` nodes. Returns the network and the table sizes reached.
fn start_net(
    n: u8,
    count: usize,
    min_table: u64,
    dir: &Path,
    logs: &Path,
    rng: &mut SmallRng,
) -> Result<(Net, Vec<u64>), String> {
    let addrs: Vec<String> = (0..count)
        .map(|i| format!("127.{n}.0.{}:6881", i + 1))
        .collect();
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 0..count {
        let mut a = args(&["bootstrap", "--bind", &addrs[i]]);
        let mut boots = vec![0usize];
        for _ in 0..2 {
            if i > 1 {
                boots.push(rng.gen_range(1..i));
            }
        }
        boots.sort_unstable();
        boots.dedup();
        if i == 0 {
            a.extend(args(&["--bootstrap", "none"]));
        } else {
            for b in boots {
                a.extend(args(&["--bootstrap", &addrs[b]]));
            }
        }
        a.extend(args(&[
            "--state-dir",
            dir.join(format!("n{n}-{i}")).to_str().expect("utf-8"),
            "--status-interval",
            "1",
            "--json",
        ]));
        let p = Proc::dhtnode(&format!("node{n}-{i}"), &a, logs)?;
        p.wait_json(Duration::from_secs(15), "first status line", |v| {
            v.get("node_id").is_some()
        })?;
        nodes.push(p);
    }
    let mut sizes = vec![0u64; count];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, p) in nodes.iter().enumerate() {
            if let Some(v) = p.latest_json() {
                sizes[i] = v["nodes"].as_u64().unwrap_or(sizes[i]);
            }
        }
        let Some(lag) = sizes.iter().position(|&s| s < min_table) else {
            break;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("warning: network 127.{n}: not every table reached {min_table} nodes within 60 s: {sizes:?}");
            break;
        }
        // Block until the lagging node prints its next status line (once a second).
        let (_, l) = nodes[lag].next_line(left)?;
        if let Ok(v) = serde_json::from_str::<Value>(&l) {
            sizes[lag] = v["nodes"].as_u64().unwrap_or(sizes[lag]);
        }
    }
    Ok((Net { n, nodes, addrs }, sizes))
}

impl Net {
    fn random_node(&self, rng: &mut SmallRng) -> String {
        self.addrs[rng.gen_range(0..self.addrs.len())].clone()
    }

    /// Drains the status lines the nodes printed (so they do not pile up in memory) and
    /// checks that every node is still running.
    fn check(&mut self) -> Result<(), String> {
        for p in &mut self.nodes {
            let _ = p.latest_json();
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!("{} exited with {st}: {}", p.name, p.stderr_tail()));
            }
        }
        Ok(())
    }
}

/// Repeats `dhtnode lookup` (bounded) from 127.N.3.1 through `via` until `want` is a peer of
/// `ih`: the announce is stored in the DHT. Returns the time it took.
fn wait_announced(
    net: &Net,
    ih: &str,
    via: &str,
    want: &str,
    logs: &Path,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut p = Proc::dhtnode(
            "lookup",
            &args(&[
                "lookup",
                ih,
                "--bind",
                &format!("127.{}.3.1:0", net.n),
                "--bootstrap",
                via,
                "--json",
                "--timeout",
                "5",
            ]),
            logs,
        )?;
        let r = p.wait_json(Duration::from_secs(20), "lookup JSON", |v| {
            v.get("peers").is_some()
        });
        let _ = p.wait_exit(Duration::from_secs(10));
        match r {
            Ok((_, v)) => {
                if v["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x.as_str() == Some(want)))
                {
                    return Ok(started.elapsed());
                }
                last = v.to_string();
            }
            Err(e) => last = e,
        }
    }
    Err(format!(
        "{want} never became visible in the DHT for {ih} within 90 s; last lookup: {last}"
    ))
}

/// Starts `dhtnode seed PATH` on `bind`; returns it with its JSON line.
fn start_dhtnode_seed(
    path: &Path,
    bind: &str,
    boot: &str,
    timeout: Duration,
    logs: &Path,
    name: &str,
) -> Result<(Proc, Value), String> {
    let p = Proc::dhtnode(
        name,
        &args(&[
            "seed",
            path.to_str().expect("utf-8"),
            "--bind",
            bind,
            "--bootstrap",
            boot,
            "--json",
        ]),
        logs,
    )?;
    let (_, info) = p.wait_json(timeout, "seed JSON line", |v| v.get("infohash").is_some())?;
    Ok((p, info))
}

/// A libtorrent session (lt_torrent.py) on `ip`, wired to `nodes`.
fn start_lt(name: &str, ip: &str, nodes: &[String], logs: &Path) -> Result<Proc, String> {
    let mut a = args(&[LT_TORRENT, "--ip", ip]);
    for n in nodes {
        a.push("--add-node".into());
        a.push(n.clone());
    }
    let p = Proc::spawn(name, PY, &a, logs)?;
    let (_, r) = p.wait_json(Duration::from_secs(30), "ready", |v| {
        v.get("ready").is_some()
    })?;
    if r["ready"] != true {
        return Err(format!("{name}: lt_torrent.py failed to start: {r}"));
    }
    Ok(p)
}

// ----- one download -----------------------------------------------------------------------

struct Setup<'a> {
    net: &'a Net,
    src: &'a Path,
    bytes: u64,
    tmp: &'a Path,
    logs: &'a Path,
    timeout: Duration,
}

/// `dhtnode fetch <ih> --json` into a fresh dir; measures it, checks the output, deletes it.
fn run_fetch(
    s: &Setup,
    ih: &str,
    bind: &str,
    boot: &str,
    tag: &str,
    src: &Path,
) -> Result<Value, String> {
    let out = s.tmp.join(format!("out-{tag}"));
    let started = Instant::now();
    let mut p = Proc::dhtnode(
        &format!("fetch-{tag}"),
        &args(&[
            "fetch",
            ih,
            "--output",
            out.to_str().expect("utf-8"),
            "--bind",
            bind,
            "--bootstrap",
            boot,
            "--json",
        ]),
        s.logs,
    )?;
    let res = (|| {
        let (done, r) = p.wait_json(s.timeout, "fetch JSON", |v| v.get("infohash").is_some())?;
        let hwm = vm_hwm_kib(p.pid());
        let (code, maxrss) = p.wait_exit(Duration::from_secs(30))?;
        let exited = started.elapsed();
        if code != 0 {
            return Err(format!("fetch exited {code}: {}", p.stderr_tail()));
        }
        let name = r["name"].as_str().ok_or("no name in fetch JSON")?;
        check_copy(src, &out.join(name))?;
        let wall = secs(done - started);
        let bytes = r["bytes"].as_u64().unwrap_or(0) as f64;
        // VmHWM is gone once the process is a zombie (a small fetch may exit before it is
        // read); ru_maxrss is the same high-water mark, taken at exit.
        let rss_kib = hwm.unwrap_or(0).max(maxrss);
        Ok(json!({
            "wall_s": round3(wall),
            "wall_mb_s": round2(bytes / wall / 1e6),
            "download_mb_s": r["download_mb_s"].as_f64().map(round2),
            "metadata_ms": r["metadata_ms"],
            "first_peer_ms": r["first_peer_ms"],
            "elapsed_ms": r["elapsed_ms"],
            "process_exit_s": round3(secs(exited)),
            "peak_rss_mb": round2(rss_kib as f64 * 1024.0 / 1e6),
            "vm_hwm_kib": hwm,
            "ru_maxrss_kib": maxrss,
            "peers_connected": r["peers_connected"],
            "hash_failures": r["hash_failures"],
            "bytes": r["bytes"],
        }))
    })();
    drop(p);
    let _ = std::fs::remove_dir_all(&out);
    res.map_err(|e| format!("after {:.1} s: {e}", secs(started.elapsed())))
}

/// A fresh libtorrent session downloads `ih` (DHT lookup + BEP 9 + download); measured from
/// sending the request to the reply (which comes after libtorrent's `flush_cache`).
fn run_lt_download(s: &Setup, ih: &str, tag: &str) -> Result<Value, String> {
    let mut lt = start_lt(
        &format!("lt-dl-{tag}"),
        &format!("127.{}.0.150", s.net.n),
        &s.net.addrs,
        s.logs,
    )?;
    let save = s.tmp.join(format!("lt-save-{tag}"));
    let res = (|| {
        let (sent, done, r) = lt.call(
            json!({"cmd": "download", "info_hash": ih, "save_path": save,
                   "timeout": s.timeout.as_secs().min(300)}),
            s.timeout + Duration::from_secs(20),
        )?;
        let hwm = vm_hwm_kib(lt.pid());
        let name = r["name"].as_str().ok_or("no name in reply")?;
        check_copy(s.src, &save.join(name))?;
        let wall = secs(done - sent);
        let bytes = s.bytes as f64;
        let phase = match (r["elapsed_ms"].as_f64(), r["metadata_ms"].as_f64()) {
            (Some(e), Some(m)) if e > m => Some(round2(bytes / ((e - m) / 1000.0) / 1e6)),
            _ => None,
        };
        Ok(json!({
            "wall_s": round3(wall),
            "wall_mb_s": round2(bytes / wall / 1e6),
            "lt_elapsed_ms": r["elapsed_ms"],
            "metadata_ms": r["metadata_ms"],
            "after_metadata_mb_s": phase,
            "num_peers": r["num_peers"],
            "lt_process_vm_hwm_kib": hwm,
            "bytes": r["bytes"],
        }))
    })();
    let _ = lt.call(json!({"cmd": "quit"}), Duration::from_secs(10));
    let _ = lt.wait_exit(Duration::from_secs(10));
    drop(lt);
    let _ = std::fs::remove_dir_all(&save);
    res
}

// ----- summary ----------------------------------------------------------------------------

const CONFIGS: [(&str, &str); 3] = [
    ("a", "dhtnode seed -> dhtnode fetch"),
    ("b", "libtorrent seed -> dhtnode fetch"),
    ("c", "libtorrent seed -> libtorrent download"),
];

fn col(runs: &[Value], cfg: &str, field: &str) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r["config"] == cfg && r["ok"] == true)
            .filter_map(|r| r[field].as_f64())
            .collect(),
    )
    .map(round3)
}

fn ratio(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(round3(x / y)),
        _ => None,
    }
}

// ----- main -------------------------------------------------------------------------------

fn main() {
    let o = parse_opts();
    let bytes = o.size_mb * 1024 * 1024;
    let mut problems: Vec<String> = Vec::new();
    let mut rng = SmallRng::from_entropy();
    let load_start = loadavg();

    std::fs::create_dir_all(&o.tmp_dir).expect("create --tmp-dir");
    let tmp = TempDir(o.tmp_dir.join(format!(
        "dhtnode-transfer-bench-{}-{}",
        std::process::id(),
        rng.gen::<u32>()
    )));
    std::fs::create_dir_all(&tmp.0).expect("create temp dir");
    let logs = tmp.0.join("logs");
    std::fs::create_dir_all(&logs).expect("create logs dir");
    let (fs_name, is_tmpfs) = fs_type(&tmp.0);
    eprintln!(
        "temp dir {} on {fs_name}; load average {load_start}",
        tmp.0.display()
    );
    let lt_ok = Command::new(PY)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        lt_ok,
        "needs Debian's python3-libtorrent for /usr/bin/python3: apt-get install -y python3-libtorrent"
    );

    // Phase 1: the SHA-1 ceiling, with nothing else of ours running.
    eprintln!("openssl speed -evp sha1 ...");
    let sha = match openssl_sha1(&logs) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("openssl speed: {e}"));
            None
        }
    };
    let sha_mb_s = sha.as_ref().map(|s| s.0);
    eprintln!("SHA-1 16384-byte rate: {sha_mb_s:?} MB/s");

    // Phase 2: transfers.
    let net_a: u8 = rng.gen_range(150..=199);
    let src = tmp.0.join("src").join(format!("bench-{}m.bin", o.size_mb));
    let t = Instant::now();
    write_random(&src, bytes, 0x5eed).expect("write the source file");
    eprintln!(
        "wrote {} ({bytes} bytes) in {:.1} s",
        src.display(),
        secs(t.elapsed())
    );
    let timeout = Duration::from_secs(60 + o.size_mb / 4);

    let (mut net, sizes) = start_net(
        net_a,
        TRANSFER_NODES,
        (TRANSFER_NODES - 1).min(5) as u64,
        &tmp.0.join("dht"),
        &logs,
        &mut rng,
    )
    .expect("start the transfer DHT");
    eprintln!("transfer DHT 127.{net_a}.0.1-{TRANSFER_NODES}: table sizes {sizes:?}");

    let seed_addr = format!("127.{net_a}.0.200:7000");
    let t = Instant::now();
    let (seed_proc, seed_info) = start_dhtnode_seed(
        &src,
        &seed_addr,
        &net.addrs[0],
        Duration::from_secs(300),
        &logs,
        "dhtnode-seed",
    )
    .expect("start dhtnode seed");
    let ih_a = seed_info["infohash"]
        .as_str()
        .expect("infohash")
        .to_string();
    let seed_ready_s = secs(t.elapsed());
    let ann_a = wait_announced(
        &net,
        &ih_a,
        &net.addrs[TRANSFER_NODES - 1],
        &seed_addr,
        &logs,
    )
    .expect("dhtnode seeder announce");
    eprintln!(
        "dhtnode seed {ih_a}: {seed_info} (ready after {seed_ready_s:.1} s, visible {:.2} s later)",
        secs(ann_a)
    );

    // The same bytes under another name (a hard link: same page cache, no extra space), so
    // the libtorrent torrent's info dict, and so its info-hash, differs from dhtnode's: with
    // the same name both would build the identical info dict and every fetch would find both
    // seeders.
    let src_lt = tmp
        .0
        .join("src")
        .join(format!("bench-{}m-lt.bin", o.size_mb));
    std::fs::hard_link(&src, &src_lt).expect("hard link the source file");
    let piece = dhtnode::torrent::choose_piece_length(bytes);
    let mut lt_seed = start_lt("lt-seed", &format!("127.{net_a}.0.100"), &net.addrs, &logs)
        .expect("start the libtorrent seeder");
    let (_, _, lt_info) = lt_seed
        .call(
            json!({"cmd": "seed", "path": src_lt, "piece_size": piece, "wait_announced": true,
                   "timeout": 240}),
            Duration::from_secs(300),
        )
        .expect("libtorrent seed");
    let ih_lt = lt_info["info_hash"]
        .as_str()
        .expect("info_hash")
        .to_string();
    eprintln!("libtorrent seed {ih_lt}: {lt_info}");
    assert_ne!(ih_a, ih_lt, "both seeders built the same torrent");

    let setup = Setup {
        net: &net,
        src: &src,
        bytes,
        tmp: &tmp.0,
        logs: &logs,
        timeout,
    };
    eprintln!("warm-up: libtorrent download (libtorrent's seed_mode checks each piece once)");
    let warmup = match run_lt_download(&setup, &ih_lt, "warmup") {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("warm-up libtorrent download: {e}"));
            json!({"error": e})
        }
    };
    eprintln!("warm-up: {warmup}");

    let mut runs: Vec<Value> = Vec::new();
    for round in 0..o.rounds {
        for k in 0..3 {
            let (cfg, desc) = CONFIGS[(k + round) % 3];
            let tag = format!("{cfg}{round}");
            let t0 = Instant::now();
            let r = match cfg {
                "a" => run_fetch(
                    &setup,
                    &ih_a,
                    &format!("127.{net_a}.0.201:0"),
                    &net.addrs[rng.gen_range(1..TRANSFER_NODES)],
                    &tag,
                    &src,
                ),
                "b" => run_fetch(
                    &setup,
                    &ih_lt,
                    &format!("127.{net_a}.0.202:0"),
                    &net.addrs[rng.gen_range(1..TRANSFER_NODES)],
                    &tag,
                    &src,
                ),
                _ => run_lt_download(&setup, &ih_lt, &tag),
            };
            let mut v = match r {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("round {round} config {cfg} ({desc}): {e}"));
                    json!({"error": e})
                }
            };
            v["ok"] = json!(v.get("error").is_none());
            v["round"] = json!(round);
            v["order"] = json!(k);
            v["config"] = json!(cfg);
            eprintln!(
                "round {round} {cfg} ({desc}) [{:.1} s]: {v}",
                secs(t0.elapsed())
            );
            runs.push(v);
        }
    }
    if let Err(e) = net.check() {
        problems.push(format!("transfer DHT: {e}"));
    }
    let _ = lt_seed.call(json!({"cmd": "quit"}), Duration::from_secs(10));
    drop(lt_seed);
    drop(seed_proc);
    drop(net);
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&src_lt);

    // Phase 3: first peer and metadata in a 50-node DHT.
    let net_b: u8 = if net_a >= 200 { net_a - 50 } else { net_a + 50 };
    let (mut lnet, lsizes) = start_net(
        net_b,
        o.latency_nodes,
        8.min(o.latency_nodes as u64 - 1),
        &tmp.0.join("dht-latency"),
        &logs,
        &mut rng,
    )
    .expect("start the latency DHT");
    let mut ls = lsizes.clone();
    ls.sort_unstable();
    eprintln!(
        "latency DHT 127.{net_b}.0.1-{}: table sizes min {} median {} max {}",
        o.latency_nodes,
        ls[0],
        ls[ls.len() / 2],
        ls[ls.len() - 1]
    );
    let mut lat_runs: Vec<Value> = Vec::new();
    for round in 0..o.rounds {
        let dir = tmp.0.join(format!("lat{round}"));
        let file = dir.join(format!("latency-{round}.bin"));
        let r = (|| {
            write_random(&file, LATENCY_FILE as u64, 1000 + round as u64)
                .map_err(|e| e.to_string())?;
            let seed_boot = lnet.random_node(&mut rng);
            let bind = format!("127.{net_b}.1.{}:7000", 1 + round % 250);
            let (seed, info) = start_dhtnode_seed(
                &file,
                &bind,
                &seed_boot,
                Duration::from_secs(60),
                &logs,
                &format!("lat-seed-{round}"),
            )?;
            let ih = info["infohash"].as_str().ok_or("no infohash")?.to_string();
            let via = lnet.random_node(&mut rng);
            let vis = wait_announced(&lnet, &ih, &via, &bind, &logs)?;
            let mut boot = lnet.random_node(&mut rng);
            while boot == seed_boot {
                boot = lnet.random_node(&mut rng);
            }
            let s = Setup {
                net: &lnet,
                src: &file,
                bytes: LATENCY_FILE as u64,
                tmp: &dir,
                logs: &logs,
                timeout: Duration::from_secs(60),
            };
            let mut v = run_fetch(
                &s,
                &ih,
                &format!("127.{net_b}.2.{}:0", 1 + round % 250),
                &boot,
                &format!("lat{round}"),
                &file,
            )?;
            drop(seed);
            v["announce_visible_ms"] = json!(vis.as_millis() as u64);
            v["bootstrap"] = json!(boot);
            Ok::<Value, String>(v)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        let mut v = match r {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("latency round {round}: {e}"));
                json!({"error": e})
            }
        };
        v["ok"] = json!(v.get("error").is_none());
        v["round"] = json!(round);
        eprintln!("latency round {round}: {v}");
        lat_runs.push(v);
    }
    if let Err(e) = lnet.check() {
        problems.push(format!("latency DHT: {e}"));
    }
    drop(lnet);

    // Summary.
    let mut medians = serde_json::Map::new();
    for (cfg, desc) in CONFIGS {
        let ok = runs
            .iter()
            .filter(|r| r["config"] == cfg && r["ok"] == true)
            .count();
        let mut m = json!({
            "what": desc,
            "ok_runs": ok,
            "wall_s": col(&runs, cfg, "wall_s"),
            "wall_mb_s": col(&runs, cfg, "wall_mb_s"),
            "metadata_ms": col(&runs, cfg, "metadata_ms"),
        });
        if cfg == "c" {
            m["after_metadata_mb_s"] = json!(col(&runs, cfg, "after_metadata_mb_s"));
        } else {
            m["download_mb_s"] = json!(col(&runs, cfg, "download_mb_s"));
            m["first_peer_ms"] = json!(col(&runs, cfg, "first_peer_ms"));
            m["peak_rss_mb"] = json!(col(&runs, cfg, "peak_rss_mb"));
            let wall = col(&runs, cfg, "wall_mb_s");
            let dl = col(&runs, cfg, "download_mb_s");
            m["wall_rate_over_sha1"] = json!(ratio(wall, sha_mb_s));
            m["download_mb_s_over_sha1"] = json!(ratio(dl, sha_mb_s));
        }
        medians.insert(cfg.to_string(), m);
    }
    let w = |c: &str| col(&runs, c, "wall_mb_s");
    let ratios = json!({
        "b_over_c_wall_mb_s": ratio(w("b"), w("c")),
        "a_over_c_wall_mb_s": ratio(w("a"), w("c")),
        "b_over_c_download_phase": ratio(col(&runs, "b", "download_mb_s"), col(&runs, "c", "after_metadata_mb_s")),
        "a_over_c_download_phase": ratio(col(&runs, "a", "download_mb_s"), col(&runs, "c", "after_metadata_mb_s")),
        "note": "wall = bytes / (fetch start .. completion, incl. DHT lookup and metadata); download_phase = dhtnode's download_mb_s vs libtorrent's bytes / (elapsed_ms - metadata_ms)",
    });
    let max_rss = runs
        .iter()
        .filter(|r| r["ok"] == true)
        .filter_map(|r| r["peak_rss_mb"].as_f64())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let fb = ratio(w("b"), w("c"));
    let fa = ratio(w("a"), w("c"));
    let sha_frac_b = ratio(w("b"), sha_mb_s);
    let sha_frac_a = ratio(w("a"), sha_mb_s);
    let targets = json!({
        "fetch_ge_1_5x_libtorrent": {
            "b_over_c": fb, "a_over_c": fa,
            "met_b": fb.map(|x| x >= 1.5), "met_a": fa.map(|x| x >= 1.5),
        },
        "fetch_ge_60pct_sha1": {
            "b_wall": sha_frac_b, "a_wall": sha_frac_a,
            "b_download_mb_s": ratio(col(&runs, "b", "download_mb_s"), sha_mb_s),
            "a_download_mb_s": ratio(col(&runs, "a", "download_mb_s"), sha_mb_s),
            "met_b_wall": sha_frac_b.map(|x| x >= 0.6), "met_a_wall": sha_frac_a.map(|x| x >= 0.6),
        },
        "peak_rss_le_100_mb": {
            "max_peak_rss_mb": max_rss,
            "met": max_rss.map(|x| x <= 100.0),
        },
    });
    let lcol = |f: &str| {
        median(
            lat_runs
                .iter()
                .filter(|r| r["ok"] == true)
                .filter_map(|r| r[f].as_f64())
                .collect(),
        )
        .map(round3)
    };
    let latency = json!({
        "nodes": o.latency_nodes,
        "network": format!("127.{net_b}.0.1-{}:6881, dhtnode bootstrap processes", o.latency_nodes),
        "table_sizes": {"min": ls[0], "median": ls[ls.len() / 2], "max": ls[ls.len() - 1]},
        "file_bytes": LATENCY_FILE,
        "ok_runs": lat_runs.iter().filter(|r| r["ok"] == true).count(),
        "median_first_peer_ms": lcol("first_peer_ms"),
        "median_metadata_ms": lcol("metadata_ms"),
        "median_elapsed_ms": lcol("elapsed_ms"),
        "median_wall_s": lcol("wall_s"),
        "runs": lat_runs,
    });
    let mut command = format!(
        "cargo bench --bench transfer -- --rounds {} --size-mb {}",
        o.rounds, o.size_mb
    );
    if o.tmp_dir != std::env::temp_dir() {
        command += &format!(" --tmp-dir {}", o.tmp_dir.display());
    }
    if o.latency_nodes != 50 {
        command += &format!(" --latency-nodes {}", o.latency_nodes);
    }
    let out = json!({
        "bench": "transfer",
        "command": command,
        "rounds": o.rounds,
        "size_mb": o.size_mb,
        "bytes": bytes,
        "piece_length": piece,
        "units": "MB = 10^6 bytes; rates in MB/s",
        "tmp_dir": tmp.0.display().to_string(),
        "tmp_fs": fs_name,
        "tmp_on_tmpfs": is_tmpfs,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "sha1": {
            "command": "openssl speed -evp sha1",
            "mb_s_16384": sha_mb_s.map(round2),
            "table": sha.as_ref().map(|s| s.1.clone()),
        },
        "transfer_dht": format!("127.{net_a}.0.1-{TRANSFER_NODES}:6881, dhtnode bootstrap processes; table sizes {sizes:?}"),
        "dhtnode_seed": {"infohash": ih_a, "pieces": seed_info["pieces"], "ready_s": round2(seed_ready_s), "announce_visible_ms": ann_a.as_millis() as u64},
        "libtorrent_seed": lt_info,
        "warmup_c": warmup,
        "runs": runs,
        "medians": Value::Object(medians),
        "ratios": ratios,
        "targets": targets,
        "latency_50_node_dht": latency,
        "problems": problems,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("serialize"));
}
