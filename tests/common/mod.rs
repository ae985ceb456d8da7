//! Shared helpers of the end-to-end tests: spawning `dhtnode` and libtorrent processes that are
//! killed when the test ends (even on panic), reading their output line by line with bounded
//! waits, and giving each test its own loopback range so tests can run in parallel.

#![allow(dead_code)]

pub mod files;
pub mod lt;
pub mod netns;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dhtnode")
}

/// A child process killed on drop, with its stdout delivered line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Each stdout line with the time it was read.
    lines: Receiver<(Instant, String)>,
    stdin: Option<ChildStdin>,
}

/// How [`Proc::spawn_with`] starts a child beyond piping its stdin and stdout.
#[derive(Clone, Debug, Default)]
pub struct SpawnOpts {
    /// Write the child's stderr to `DIR/<name>.stderr` instead of inheriting ours.
    pub stderr_dir: Option<PathBuf>,
    /// `PR_SET_PDEATHSIG` = SIGKILL: the child dies with the thread that spawned it (for
    /// programs such as benches that may be killed before their destructors run; do not use
    /// it for children spawned from short-lived threads).
    pub die_with_parent: bool,
}

impl Proc {
    /// Starts `program args...` with piped stdio.
    pub fn spawn(name: &str, program: &str, args: &[String]) -> Proc {
        Proc::spawn_with(name, program, args, &SpawnOpts::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `program args...` with piped stdin/stdout and the stderr and lifetime of `opts`.
    pub fn spawn_with(
        name: &str,
        program: &str,
        args: &[String],
        opts: &SpawnOpts,
    ) -> Result<Proc, String> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        match &opts.stderr_dir {
            Some(d) => {
                let p = d.join(format!("{name}.stderr"));
                let f = std::fs::File::create(&p)
                    .map_err(|e| format!("create {}: {e}", p.display()))?;
                cmd.stderr(Stdio::from(f));
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        if opts.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
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
            lines: rx,
            stdin,
        })
    }

    /// Starts the dhtnode binary.
    pub fn dhtnode(name: &str, args: &[String]) -> Proc {
        Proc::spawn(name, bin(), args)
    }

    /// Next stdout line within `timeout`, or `None` (timeout or end of output).
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.next_line_at(timeout).map(|(_, l)| l)
    }

    /// Next stdout line within `timeout` with the time it was read, or `None`.
    pub fn next_line_at(&self, timeout: Duration) -> Option<(Instant, String)> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Reads lines until one satisfies `pred`, failing the test after `timeout`.
    pub fn wait_line(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, l)) if pred(&l) => return l,
                Ok(_) => continue,
                Err(_) => panic!("{}: no line with {what} within {timeout:?}", self.name),
            }
        }
    }

    /// Next stdout line that is JSON and satisfies `pred`, within `timeout`.
    pub fn wait_json(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.wait_json_at(timeout, pred).map(|(_, v)| v)
    }

    /// Like [`Proc::wait_json`], with the time the line was read.
    pub fn wait_json_at(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(Instant, serde_json::Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (t, line) = self.lines.recv_timeout(left).ok()?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if pred(&v) {
                    return Some((t, v));
                }
            }
        }
    }

    /// The newest JSON line printed so far, if any (older ones are discarded).
    pub fn latest_json(&self) -> Option<serde_json::Value> {
        let mut last = None;
        while let Ok((_, l)) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                last = Some(v);
            }
        }
        last
    }

    /// Sends a JSON command to a harness (tests/interop/*.py) and returns its reply, failing
    /// the caller if none comes within `timeout` or the harness reports an error.
    pub fn call_json(&mut self, cmd: serde_json::Value, timeout: Duration) -> serde_json::Value {
        self.try_call_json(cmd, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Proc::call_json`] that returns failures instead of panicking.
    pub fn try_call_json(
        &mut self,
        cmd: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("{}: write to stdin: {e}", self.name))?;
        let want = cmd["cmd"].clone();
        let r = self
            .wait_json(timeout, |v| v["cmd"] == want)
            .ok_or_else(|| format!("{}: no reply to {cmd} within {timeout:?}", self.name))?;
        if r["ok"] != true {
            return Err(format!("{}: {cmd} failed: {r}", self.name));
        }
        Ok(r)
    }

    /// Writes one line to the process's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// Sends a signal (e.g. libc::SIGTERM) to the process.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// The process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.exit_within(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name))
    }

    /// The exit status once the process exits, or `None` if it is still running after
    /// `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All remaining stdout after exit.
    pub fn rest(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok((_, l)) = self.lines.recv_timeout(Duration::from_millis(500)) {
            out.push(l);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with a time bound; returns (exit code, stdout, stderr).
pub fn run_dhtnode(args: &[String], timeout: Duration) -> (i32, String, String) {
    run_program(bin(), args, timeout)
}

/// Runs `program args...` to completion with a time bound (killed and the test failed when
/// it overruns); returns (exit code, stdout, stderr).
pub fn run_program(program: &str, args: &[String], timeout: Duration) -> (i32, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Address of node `i` of a test DHT on 127.NET.0.0/24 (nodes are numbered from 0).
pub fn node_addr(net: u8, i: usize) -> String {
    format!("127.{net}.0.{}:6881", i + 1)
}

/// Starts `n` `dhtnode bootstrap` nodes on 127.NET.0.1.. one after another, each once the
/// previous one printed its first status line (its socket is bound): node 0 starts alone,
/// the others join through one of the first three. `extra` flags go to every node. Returns
/// once the last node has a few contacts, so lookups through any node work.
pub fn start_dht_network(net: u8, n: usize, dir: &std::path::Path, extra: &[&str]) -> Vec<Proc> {
    start_dht_network_with(net, n, dir, extra, &SpawnOpts::default())
}

/// [`start_dht_network`] with the nodes started as `opts` says.
pub fn start_dht_network_with(
    net: u8,
    n: usize,
    dir: &std::path::Path,
    extra: &[&str],
    opts: &SpawnOpts,
) -> Vec<Proc> {
    let mut procs = Vec::new();
    for i in 0..n {
        let boot = if i == 0 {
            "none".to_string()
        } else {
            node_addr(net, i % 3.min(i))
        };
        let mut a = args(&[
            "bootstrap",
            "--bind",
            &node_addr(net, i),
            "--bootstrap",
            &boot,
            "--state-dir",
            dir.join(format!("n{i}")).to_str().expect("utf-8 temp path"),
            "--status-interval",
            "1",
            "--json",
        ]);
        a.extend(args(extra));
        let p = Proc::spawn_with(&format!("node{i}"), bin(), &a, opts)
            .unwrap_or_else(|e| panic!("{e}"));
        p.wait_line(Duration::from_secs(10), "first status line", |l| {
            json(l).get("node_id").is_some()
        });
        procs.push(p);
    }
    if n > 1 {
        procs[n - 1].wait_line(Duration::from_secs(20), "nodes >= 3", |l| {
            json(l)["nodes"].as_u64().unwrap_or(0) >= 3.min(n as u64 - 1)
        });
    }
    procs
}

/// Waits (bounded) until `dhtnode lookup` through `via` returns `want` as a peer of `ih`:
/// the seeder's announce has been stored in the DHT.
pub fn wait_announced(net: u8, ih: &str, via: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (_code, out, err) = run_dhtnode(
            &args(&[
                "lookup",
                ih,
                "--bind",
                &format!("127.{net}.1.1:0"),
                "--bootstrap",
                via,
                "--json",
                "--timeout",
                "10",
            ]),
            Duration::from_secs(30),
        );
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(out.trim()) {
            if r["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p.as_str() == Some(want)))
            {
                return;
            }
        }
        last = format!("stdout {out} stderr {err}");
    }
    panic!("the seeder {want} never became visible in the DHT for {ih}; last lookup: {last}");
}

/// Converts string slices to owned args.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Parses a JSON line, failing the test with the line on error.
pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Debian's interpreter with python3-libtorrent, or a test failure saying what to install.
pub fn libtorrent_python() -> &'static str {
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "libtorrent interop tests need Debian's python3-libtorrent: run `apt-get install -y python3-libtorrent` (as root), then rerun"
    );
    py
}

/// Arguments of `dhtnode fetch TARGET --output OUT --bind BIND --bootstrap BOOT --json`, then
/// `extra` (e.g. `--seed`, `--peer IP:PORT`).
pub fn fetch_args(
    target: &str,
    out: &std::path::Path,
    bind: &str,
    boot: &str,
    extra: &[&str],
) -> Vec<String> {
    let out = out.to_str().expect("utf-8 temp path");
    peer_args(&["fetch", target, "--output", out], bind, boot, extra)
}

/// Arguments of `dhtnode seed PATH --bind BIND --bootstrap BOOT --json`, then `extra`.
pub fn seed_args(path: &std::path::Path, bind: &str, boot: &str, extra: &[&str]) -> Vec<String> {
    let path = path.to_str().expect("utf-8 temp path");
    peer_args(&["seed", path], bind, boot, extra)
}

/// `head... --bind BIND --bootstrap BOOT --json extra...`.
fn peer_args(head: &[&str], bind: &str, boot: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(head);
    a.extend(args(&["--bind", bind, "--bootstrap", boot, "--json"]));
    a.extend(args(extra));
    a
}

/// Starts `dhtnode seed` with [`seed_args`] and returns it with its first JSON line
/// (infohash, magnet, name, bytes, pieces), failing the test if none comes within 30 s.
pub fn start_seed(
    path: &std::path::Path,
    bind: &str,
    boot: &str,
    extra: &[&str],
) -> (Proc, serde_json::Value) {
    let a = seed_args(path, bind, boot, extra);
    let p = Proc::dhtnode("seed", &a);
    let info = p
        .wait_json(Duration::from_secs(30), |v| v.get("infohash").is_some())
        .unwrap_or_else(|| panic!("dhtnode {a:?} printed no JSON line within 30 s"));
    (p, info)
}

/// For a `dhtnode seed` or `fetch --seed` process already sent SIGTERM (so that many can be
/// stopped at once): waits (bounded) for its `{"event":"stopped",...}` line and its exit, and
/// returns both (`None` for a line it did not print, or an exit that did not come).
pub fn wait_stopped(
    p: &mut Proc,
    timeout: Duration,
) -> (Option<ExitStatus>, Option<serde_json::Value>) {
    let stopped = p.wait_json(timeout, |v| v["event"] == "stopped");
    (p.exit_within(timeout), stopped)
}
