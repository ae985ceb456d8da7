//! libtorrent sessions for swarm tests and benches: one `tests/interop/lt_torrent.py` process
//! per session, each on its own loopback address, and readings of its `peers` replies.

use std::time::Duration;

use super::{args, libtorrent_python, Proc, SpawnOpts};

/// The one-session libtorrent harness.
pub const LT_TORRENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_torrent.py");

/// Starts a libtorrent session on `ip` that `add_dht_node`s each of `nodes`, and waits
/// (bounded) for its ready line. Fails the caller, saying what to install, when the
/// bindings are missing.
pub fn start_session(
    name: &str,
    ip: &str,
    nodes: &[String],
    opts: &SpawnOpts,
) -> Result<Proc, String> {
    let py = libtorrent_python();
    let mut a = args(&[LT_TORRENT, "--ip", ip]);
    for n in nodes {
        a.push("--add-node".into());
        a.push(n.clone());
    }
    let p = Proc::spawn_with(name, py, &a, opts)?;
    let r = p
        .wait_json(Duration::from_secs(30), |v| v.get("ready").is_some())
        .ok_or_else(|| format!("{name}: lt_torrent.py printed no ready line within 30 s"))?;
    if r["ready"] != true {
        return Err(format!("{name}: lt_torrent.py failed to start: {r}"));
    }
    Ok(p)
}

/// Payload bytes (downloaded from, uploaded to) the peers at `ip` in a `peers` reply.
pub fn traffic_with(peers_reply: &serde_json::Value, ip: &str) -> (u64, u64) {
    let mut down = 0;
    let mut up = 0;
    for p in peers_reply["peers"].as_array().into_iter().flatten() {
        if p["ip"].as_str() == Some(ip) {
            down += p["total_download"].as_u64().unwrap_or(0);
            up += p["total_upload"].as_u64().unwrap_or(0);
        }
    }
    (down, up)
}

/// Sends one request to a harness and waits (bounded) for its reply, echoing progress events
/// to stderr; panics when the reply is not ok.
pub fn call(p: &mut Proc, cmd: serde_json::Value, timeout: Duration) -> serde_json::Value {
    p.send_line(&cmd.to_string());
    let want = cmd["cmd"].as_str().unwrap_or_default().to_string();
    let line = p.wait_line(timeout, &want, |l| {
        let v = super::json(l);
        if v.get("event").is_some() {
            eprintln!("{l}");
        }
        v["cmd"].as_str() == Some(want.as_str())
    });
    let r = super::json(&line);
    assert_eq!(r["ok"], true, "libtorrent command {cmd} failed: {r}");
    r
}
