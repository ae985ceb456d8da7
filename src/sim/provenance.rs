//! What produced a report: the commit the binary was built from (and whether its code
//! differed from that commit), and the machine and its load. A figure without these cannot be
//! checked against HEAD, and wall times cannot be compared across machines without them.

use serde::Serialize;

/// Where and from what a run's figures came.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Provenance {
    /// `git rev-parse HEAD` when the binary was built ("unknown" outside a checkout).
    pub commit: &'static str,
    /// The code (src/, build.rs, Cargo.*) had uncommitted changes at build time; `None` when
    /// git could not tell.
    pub dirty: Option<bool>,
    /// The machine.
    pub machine: Machine,
    /// 1-minute load average when the run started and when it ended (Linux; 0 elsewhere):
    /// wall times from a loaded machine are not comparable with an idle one's.
    pub load_at_start: f64,
    /// See `load_at_start`.
    pub load_at_end: f64,
}

/// The hardware a run had.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo` "model name").
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Physical memory, GiB.
    pub memory_gib: f64,
}

impl Provenance {
    /// This binary's build and this machine, with the load now as the start load.
    pub fn now() -> Provenance {
        let load = load_average();
        Provenance {
            commit: env!("DHTNODE_GIT_COMMIT"),
            dirty: match env!("DHTNODE_GIT_DIRTY") {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            },
            machine: Machine::this(),
            load_at_start: load,
            load_at_end: load,
        }
    }

    /// Records the load at the end of the run.
    pub fn finish(&mut self) {
        self.load_at_end = load_average();
    }
}

impl Machine {
    /// Reads this machine's description (best effort: empty / 0 where unavailable).
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: super::metrics::round3(kb / (1024.0 * 1024.0)),
        }
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_commit_is_recorded() {
        let p = Provenance::now();
        // Built inside the repository: a 40-hex-digit commit.
        assert_eq!(p.commit.len(), 40, "{}", p.commit);
        assert!(p.commit.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(p.dirty.is_some());
        assert!(p.machine.cores >= 1);
    }
}
