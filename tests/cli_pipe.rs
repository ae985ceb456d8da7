//! Output into a closed pipe (`dhtnode bootstrap --json | head -3`) ends the command quietly:
//! no panic, exit status 0 (or 141 = death by SIGPIPE), and `bootstrap` still saves its state
//! on the way out, as on SIGTERM. The test holds the read end of the child's stdout and closes
//! it itself, so the next write the child makes meets EPIPE.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{args, bin, json, node_addr, run_dhtnode, start_dht_network, wait_announced};
use dhtnode::net::state;

const IH: &str = "77a1c3e5f7092b4d6f8a0c2e4a6b8d0f1e3c5a79";

/// `dhtnode ARGS` with stdout and stderr piped, killed on drop (even when the test fails).
/// The stdout read end is handed to the test, which closes it by dropping it.
struct Piped {
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Piped {
    fn spawn(args: &[String]) -> (Piped, ChildStdout) {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dhtnode");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        // Drained all along, so a chatty stderr cannot block the child.
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let p = Piped {
            child,
            stderr: Some(stderr),
        };
        (p, stdout)
    }

    /// Waits (bounded) for the exit; returns the status and the whole of stderr.
    fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "dhtnode did not exit within {timeout:?} of its stdout closing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().expect("wait");
        let err = self.stderr.take().expect("finish once");
        (status, err.join().expect("stderr reader"))
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `n` lines of `stdout`, runs `before_close` on them, then closes the read end. Fails
/// the test if the lines do not come within `timeout` (the `Piped` is then dropped, killing
/// the child, which ends the reading thread).
fn read_then_close(
    stdout: ChildStdout,
    n: usize,
    timeout: Duration,
    before_close: impl FnOnce(&[String]) + Send + 'static,
) -> Vec<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let lines: Vec<String> = (&mut reader)
            .lines()
            .take(n)
            .map_while(Result::ok)
            .collect();
        before_close(&lines);
        drop(reader);
        let _ = tx.send(lines);
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("no {n} stdout lines within {timeout:?}"))
}

/// No panic, and a quiet exit: status 0, or death by SIGPIPE (141 in a shell).
fn assert_quiet_exit(what: &str, status: ExitStatus, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{what}: {status}; stderr: {stderr}"
    );
}

#[test]
fn bootstrap_json_into_closed_pipe_saves_state_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let (mut p, stdout) = Piped::spawn(&args(&[
        "bootstrap",
        "--bind",
        &node_addr(77, 0),
        "--bootstrap",
        "none",
        "--state-dir",
        state_dir.to_str().expect("utf-8 temp path"),
        "--status-interval",
        "1",
        "--json",
    ]));
    // The node saved its state at start, before its first status line. Remove that file
    // while the pipe is still open, so a file found after the exit is the save on the way out.
    let file = state::state_path(&state_dir);
    let lines = read_then_close(stdout, 3, Duration::from_secs(20), move |_| {
        let _ = std::fs::remove_file(file);
    });
    let (status, err) = p.finish(Duration::from_secs(15));
    assert_eq!(lines.len(), 3, "stdout ended early; stderr: {err}");
    assert_quiet_exit("bootstrap", status, &err);
    assert!(err.contains("stdout closed: stopping"), "{err}");
    let saved = state::load(&state_dir)
        .unwrap()
        .unwrap_or_else(|| panic!("no state saved on exit; stderr: {err}"));
    assert_eq!(
        Some(saved.id.to_hex().as_str()),
        json(&lines[0])["node_id"].as_str()
    );
}

#[test]
fn lookup_into_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let net = 78;
    let procs = start_dht_network(net, 4, dir.path(), &[]);
    // Give the info-hash a peer, so the lookups below have something to print (and exit 0).
    let lookup = |bind: &str, via: usize, extra: &[&str]| {
        let mut a = args(&["lookup", IH, "--bind", bind, "--bootstrap"]);
        a.push(node_addr(net, via));
        a.extend(args(&["--timeout", "10"]));
        a.extend(args(extra));
        a
    };
    let announcer = format!("127.{net}.1.1");
    run_dhtnode(
        &lookup(&format!("{announcer}:0"), 0, &["--announce", "5555"]),
        Duration::from_secs(30),
    );
    wait_announced(net, IH, &node_addr(net, 3), &format!("{announcer}:5555"));

    // `--json` prints one line at the end, text mode a line per peer: either way the pipe is
    // closed before the first write (read 0 lines).
    for (i, mode) in [&["--json"][..], &[][..]].into_iter().enumerate() {
        let what = format!("lookup {mode:?}");
        let bind = format!("127.{net}.1.{}:0", 2 + i);
        let (mut p, stdout) = Piped::spawn(&lookup(&bind, 2, mode));
        drop(stdout);
        let (status, err) = p.finish(Duration::from_secs(30));
        assert_quiet_exit(&what, status, &err);
        assert!(!err.contains("no peers found"), "{what}: {err}");
    }
    drop(procs);
}

/// `seed --json` and `fetch --json` into pipes their readers close: the seed keeps serving
/// (its stdout is nobody's business once the info-hash is out), the fetch completes, writes
/// the file and exits quietly when its one JSON line meets the closed pipe.
#[test]
fn seed_and_fetch_into_closed_pipes_exit_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("pipe.bin");
    common::files::write_random(&src, 3 * 1024 * 1024 + 5, 77);
    let (mut seed, seed_out) = Piped::spawn(&args(&[
        "seed",
        src.to_str().unwrap(),
        "--bind",
        "127.79.0.1:7100",
        "--bootstrap",
        "none",
        "--json",
    ]));
    // Read the announcement, then close the seed's stdout.
    let lines = read_then_close(seed_out, 1, Duration::from_secs(30), |_| {});
    let ih = json(&lines[0])["infohash"].as_str().unwrap().to_string();
    let out = tmp.path().join("out");
    let (mut fetch, fetch_out) = Piped::spawn(&args(&[
        "fetch",
        &ih,
        "--output",
        out.to_str().unwrap(),
        "--bind",
        "127.79.0.2:0",
        "--bootstrap",
        "none",
        "--peer",
        "127.79.0.1:7100",
        "--json",
    ]));
    drop(fetch_out);
    let (status, stderr) = fetch.finish(Duration::from_secs(60));
    assert_quiet_exit("fetch --json", status, &stderr);
    common::files::assert_same_file(&src, &out.join("pipe.bin"));
    // The seed is still alive and stops quietly on SIGTERM, its last line unread.
    assert!(seed.child.try_wait().unwrap().is_none(), "the seed died");
    unsafe { libc::kill(seed.child.id() as i32, libc::SIGTERM) };
    let (status, stderr) = seed.finish(Duration::from_secs(20));
    assert_quiet_exit("seed --json", status, &stderr);
}
