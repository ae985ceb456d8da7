//! Simulator tests: same seed → same output byte for byte; the CI scenario reaches ≥ 99%
//! success; lookups survive 20% lying nodes; every shipped scenario file parses; outputs are
//! written.

use std::path::PathBuf;

use dhtnode::sim::scenario::Behaviour;
use dhtnode::sim::{run_scenario, write_outputs, RunOptions, Scenario};

fn sims_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("simulations")
}

fn small() -> Scenario {
    Scenario::from_path(&sims_dir().join("small.toml")).expect("small.toml parses")
}

fn quiet() -> impl FnMut(dhtnode::sim::ProgressUpdate) {
    |_| {}
}

#[test]
fn same_seed_same_json_and_csv() {
    let opts = RunOptions {
        nodes: Some(300),
        lookups: Some(200),
        baseline: Some(true),
        ..RunOptions::default()
    };
    let a = run_scenario(&small(), &opts, &mut quiet()).unwrap();
    let b = run_scenario(&small(), &opts, &mut quiet()).unwrap();
    assert_eq!(a.deterministic().to_json(), b.deterministic().to_json());
    assert_eq!(
        dhtnode::sim::output::lookups_csv(&a),
        dhtnode::sim::output::lookups_csv(&b)
    );
    let other = RunOptions {
        seed: Some(2),
        ..opts
    };
    let c = run_scenario(&small(), &other, &mut quiet()).unwrap();
    assert_ne!(
        dhtnode::sim::output::lookups_csv(&a),
        dhtnode::sim::output::lookups_csv(&c),
        "the seed must matter"
    );
}

#[test]
fn small_scenario_succeeds_at_least_99_percent() {
    let r = run_scenario(&small(), &RunOptions::default(), &mut quiet()).unwrap();
    let s = &r.summary;
    assert_eq!(s.lookups, 1000);
    assert!(s.success_rate >= 0.99, "success rate {}", s.success_rate);
    assert!(s.hops.p99 <= 8.0, "hops p99 {}", s.hops.p99);
    assert!(s.first_peer_ms.p50 > 0.0 && s.first_peer_ms.p50 < 1000.0);
    let ratio = r.ratio_to_perfect.expect("baseline ran");
    assert!(ratio.first_peer_p50 < 2.0, "{ratio:?}");
}

#[test]
fn shipped_scenarios_parse() {
    let mut n = 0;
    for e in std::fs::read_dir(sims_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Scenario::from_path(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 8, "{n} scenario files");
}

#[test]
fn outputs_are_written() {
    let opts = RunOptions {
        nodes: Some(200),
        lookups: Some(100),
        baseline: Some(false),
        ..RunOptions::default()
    };
    let r = run_scenario(&small(), &opts, &mut quiet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_outputs(&r, dir.path()).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("lookups.csv")).unwrap();
    assert_eq!(csv.lines().count(), 101);
    for f in [
        "first_peer_cdf.svg",
        "hops_hist.svg",
        "success_over_time.svg",
        "report.json",
    ] {
        let meta = std::fs::metadata(dir.path().join(f)).unwrap();
        assert!(meta.len() > 100, "{f}");
    }
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for key in [
        "nodes",
        "lookups",
        "success_rate",
        "first_peer_ms",
        "lookup_ms",
        "hops",
        "messages_per_lookup",
        "sim_seconds",
        "wall_seconds",
        "peak_rss_mb",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let e = Scenario::from_path(&sims_dir().join("no-such.toml")).unwrap_err();
    assert!(e.to_string().contains("no-such.toml"), "{e}");
}

/// sybil.toml cut down to `nodes` nodes and 1,000 lookups, with one behaviour.
fn sybil(nodes: u32, b: Behaviour) -> Scenario {
    let mut sc = Scenario::from_path(&sims_dir().join("sybil.toml")).expect("sybil.toml parses");
    sc.nodes = nodes;
    sc.workload.infohashes = 100;
    sc.workload.lookups = 1000;
    sc.attack.behaviour = b;
    sc.attack.also.clear();
    sc.baseline.enabled = false;
    sc
}

#[test]
fn sybil_runs_are_deterministic() {
    let opts = RunOptions {
        lookups: Some(200),
        ..RunOptions::default()
    };
    let sc = sybil(300, Behaviour::Mixed);
    let a = run_scenario(&sc, &opts, &mut quiet()).unwrap();
    let b = run_scenario(&sc, &opts, &mut quiet()).unwrap();
    assert_eq!(a.deterministic().to_json(), b.deterministic().to_json());
    let att = a.attack.as_ref().expect("attackers present");
    assert!((40..=80).contains(&att.attackers), "{att:?}");
    assert!(att.queries_to_attackers > 0);
}

/// 1,000 nodes, 20% of them attackers: bogus nodes, silent nodes and broken tokens each
/// leave ≥ 95% of lookups successful with today's core.
#[test]
fn lookups_survive_20_percent_bogus_silent_and_bad_token_nodes() {
    for b in [Behaviour::BogusNodes, Behaviour::Drop, Behaviour::BadTokens] {
        let r = run_scenario(&sybil(1000, b), &RunOptions::default(), &mut quiet()).unwrap();
        let s = &r.summary;
        assert_eq!(s.lookups, 1000);
        assert!(s.success_rate >= 0.95, "{b:?}: success {}", s.success_rate);
    }
}

/// Consistent Sybils claiming ids next to every target (alone and mixed with the others)
/// capture lookups unless the core ranks candidates whose id is not BEP 42-valid for their
/// address after the verified ones (simulations/README.md, "Lying nodes"). With that core
/// change, 100% at 1,000 nodes; without, claim_close ≈ 4% and mixed ≈ 82%.
#[test]
fn lookups_survive_20_percent_claim_close_and_mixed_sybils() {
    for b in [Behaviour::ClaimClose, Behaviour::Mixed] {
        let r = run_scenario(&sybil(1000, b), &RunOptions::default(), &mut quiet()).unwrap();
        let s = &r.summary;
        assert!(s.success_rate >= 0.95, "{b:?}: success {}", s.success_rate);
    }
}

/// A network that exercises every part of the engine at once: protocol join, churn with
/// new ids, NAT, loss, lying nodes (in tables or joining through the protocol), the
/// baseline run, and every realism knob turned on.
fn busy(join: &str) -> Scenario {
    let toml = format!(
        "name = \"busy\"\nnodes = 1500\n\
         [network]\nloss = 0.02\nnat_fraction = 0.1\npublic_ips = true\nbep42_valid_share = 0.7\naccess_median_ms = 6.0\naccess_sigma = 0.7\njitter_ms = 3.0\n\
         [join]\nmode = \"{join}\"\nduration_s = 40.0\nsettle_s = 20.0\nrefresh_after_join_s = 30.0\n\
         [churn]\nenabled = true\nsame_id = 0.5\nstationary_start = true\nrestart_from_saved = true\n\
         session = {{ dist = \"weibull\", shape = 0.5, scale_s = 120.0 }}\n\
         offline = {{ dist = \"weibull\", shape = 0.5, scale_s = 60.0 }}\n\
         [workload]\ninfohashes = 40\nannouncers_per_infohash = 2\nlookups = 300\nlookup_window_s = 60.0\n\
         [attack]\nfraction = 0.1\nbehaviour = \"mixed\"\nquery_every_s = 30.0\n\
         [baseline]\nenabled = true\nlookups = 100\n",
    );
    Scenario::from_toml_str(&toml).expect("busy scenario parses")
}

#[test]
fn the_thread_count_does_not_change_a_byte() {
    for join in ["bootstrap", "perfect"] {
        let sc = busy(join);
        let run = |threads| {
            let opts = RunOptions {
                threads: Some(threads),
                ..RunOptions::default()
            };
            let r = run_scenario(&sc, &opts, &mut quiet()).unwrap();
            assert_eq!(r.threads, threads);
            (
                r.deterministic().to_json(),
                dhtnode::sim::output::lookups_csv(&r),
                r.network.events,
            )
        };
        let one = run(1);
        assert!(one.2 > 10_000, "{join}: only {} events", one.2);
        for threads in [2, 4] {
            let many = run(threads);
            assert_eq!(
                one.0, many.0,
                "{join}: report differs with {threads} threads"
            );
            assert_eq!(
                one.1, many.1,
                "{join}: lookups.csv differs with {threads} threads"
            );
        }
    }
}
