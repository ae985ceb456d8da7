//! Progress reports of a run: which phase it is in and how far it got, for the CLI's
//! progress bar. Nothing here feeds back into the simulation.

use std::fmt;

/// The stage a run is in. The CLI prints it as is, so [`fmt::Display`] gives the words a
/// user sees ("build", "attack run 2", …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The world is being made (never reported: a run leaves it before its first report).
    Setup,
    /// Perfect tables are being filled.
    Build,
    /// Nodes are arriving through the protocol bootstrap.
    Join,
    /// The network forms or settles before the first announce.
    Settle,
    /// Announces are under way, lookups not yet.
    Announce,
    /// Measured lookups are under way.
    Lookups,
    /// The perfect-table reference run is filling its tables.
    BaselineBuild,
    /// The perfect-table reference run, after its build.
    Baseline,
    /// The run with the scenario's `[variant]` tunables.
    Variant,
    /// The run with the `n`-th behaviour of `[attack] also` (counted from 1).
    AttackRun(usize),
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            Phase::Setup => "setup",
            Phase::Build => "build",
            Phase::Join => "join",
            Phase::Settle => "settle",
            Phase::Announce => "announce",
            Phase::Lookups => "lookups",
            Phase::BaselineBuild => "baseline build",
            Phase::Baseline => "baseline",
            Phase::Variant => "variant",
            Phase::AttackRun(n) => return write!(f, "attack run {n}"),
        };
        f.write_str(word)
    }
}

/// Where a run is, for a progress bar. Reported every few tens of thousands of events; it
/// never influences the simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressUpdate {
    /// The stage of the run.
    pub phase: Phase,
    /// Virtual time reached.
    pub sim_seconds: f64,
    /// Measured lookups finished.
    pub lookups_done: u32,
    /// Measured lookups in the scenario.
    pub lookups_total: u32,
    /// Nodes online.
    pub online: u32,
    /// Events processed.
    pub events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_print_the_words_the_cli_always_printed() {
        let all = [
            (Phase::Setup, "setup"),
            (Phase::Build, "build"),
            (Phase::Join, "join"),
            (Phase::Settle, "settle"),
            (Phase::Announce, "announce"),
            (Phase::Lookups, "lookups"),
            (Phase::BaselineBuild, "baseline build"),
            (Phase::Baseline, "baseline"),
            (Phase::Variant, "variant"),
            (Phase::AttackRun(1), "attack run 1"),
            (Phase::AttackRun(5), "attack run 5"),
        ];
        for (p, want) in all {
            assert_eq!(p.to_string(), want);
        }
    }
}
