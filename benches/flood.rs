//! Query-flood measurement (issue 5, item 2; issue 9: reply bytes/s under the default global
//! reply budget): the scenario of `tests/flood.rs`, printing its figures as one JSON object
//! instead of asserting.
//!
//! ```text
//! cargo bench --bench flood
//! cargo bench --bench flood -- --sources 100000 --per-source 8 --window 512 --rate 0 \
//!     --limit 120 --hammer-rate 1000 --lookup-every 2 --nodes 8
//! ```
//!
//! The network runs on 127.89.0.x (the test uses 127.88.0.x), the flood sources are
//! 127.160.x.y upwards and the hammering IP 127.162.0.1, so both can run at once.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/flood.rs"]
mod flood;

use std::time::Duration;

use flood::FloodConfig;

fn main() {
    let mut cfg = FloodConfig {
        net: 89,
        src_net: 160,
        flood_limit: Duration::from_secs(120),
        ..FloodConfig::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--bench" {
            continue; // passed by `cargo bench`
        }
        let mut val = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--sources" => cfg.sources = val() as u32,
            "--per-source" => cfg.per_source = val() as u32,
            "--window" => cfg.window = val() as usize,
            "--rate" => cfg.max_rate = val() as u32,
            "--limit" => cfg.flood_limit = Duration::from_secs(val()),
            "--hammer-rate" => cfg.hammer_rate = val() as u32,
            "--lookup-every" => cfg.lookup_every = Duration::from_secs(val()),
            "--nodes" => cfg.nodes = val() as usize,
            "--ip-rate-limit" => cfg.ip_rate_limit = val() as u32,
            other => panic!("unknown option {other}"),
        }
    }
    let r = flood::run(&cfg);
    let lookups_ok = r.lookups_ok();
    let out = serde_json::json!({
        "sources": r.sources,
        "infohashes_announced": r.flood.infohashes_announced,
        "announces_acked": r.flood.announces_acked,
        "datagrams_sent": r.flood.datagrams_sent,
        "datagrams_answered": r.flood.datagrams_answered,
        "answered_per_s": r.answered_per_s.round(),
        "duration_s": (r.flood.duration_s * 10.0).round() / 10.0,
        "completed": r.flood.completed,
        "target_rss_before_kb": r.target_rss_before_kb,
        "target_rss_peak_kb": r.target_rss_peak_kb,
        "target_rss_after_kb": r.target_rss_after_kb,
        "target_rss_sampled_max_kb": r.flood.target_rss_sampled_max_kb,
        "stored_infohashes": r.after("stored_infohashes"),
        "stored_peers": r.after("stored_peers"),
        "dropped_rate_limited": r.after("dropped_rate_limited"),
        "reply_budget_bytes_per_s": dhtnode::dht::RateLimits::default().reply_bytes_per_sec,
        "reply_burst_bytes": dhtnode::dht::RateLimits::default().reply_burst_bytes,
        "reply_bytes": r.flood.reply_bytes,
        "reply_bytes_per_s": (r.flood.reply_bytes as f64 / r.flood.duration_s.max(1e-9)).round(),
        "reply_bytes_max_per_s": r.flood.reply_bytes_max_per_s,
        "hammer_sent": r.flood.hammer_sent,
        "hammer_answered": r.flood.hammer_answered,
        "send_errors": r.flood.send_errors,
        "host_udp_rcvbuf_errors": r.flood.host_udp_rcvbuf_errors,
        "target_alive": r.target_alive,
        "lookups_ok": lookups_ok,
        "lookups_total": r.lookups.len(),
        "lookups_first_peer_ms": r.lookups.iter().map(|l| l.first_peer_ms).collect::<Vec<_>>(),
        "detail": r,
    });
    println!("{out}");
}
