//! A network namespace of the test's own, for IPv6 tests: `::1` is a single address, so a
//! test that needs several IPv6 hosts (BEP 32 dual stack) creates a namespace with
//! `fd00::1`..`fd00::9` (and all of 127/8) on its `lo`, runs every process inside it with
//! `ip netns exec`, and the guard deletes the namespace when the test ends, even on panic.
//! Tests run as root (as `.ci/run` does); without root or `ip` the test fails and says so.

use std::process::Command;
use std::time::Duration;

use super::{run_program, Proc, SpawnOpts};

/// How many `fd00::N` addresses a namespace gets.
pub const HOSTS6: u16 = 9;

/// A network namespace deleted on drop. Declare it before the processes run inside it, so
/// they are killed (dropped) first.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {} (IPv6 tests create a network namespace and must run as root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates namespace `dhtnode-TAG-PID` with `lo` up, `fd00::1`..`fd00::9` on it (`nodad`,
    /// usable at once) and 127.0.0.0/8 (the kernel's, on `lo`); fails the test on error.
    pub fn new(tag: &str) -> Netns {
        let name = format!("dhtnode-{tag}-{}", std::process::id());
        // A namespace left by a killed earlier run of the same pid: start clean.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        let ns = Netns { name };
        let setup = || -> Result<(), String> {
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
            for i in 1..=HOSTS6 {
                let a = format!("fd00::{i}/128");
                ip(&["-n", &ns.name, "addr", "add", &a, "dev", "lo", "nodad"])?;
            }
            Ok(())
        };
        setup().unwrap_or_else(|e| panic!("{e}"));
        ns
    }

    /// `ip netns exec NAME program args...` as the argument list of `ip`.
    fn wrap(&self, program: &str, args: &[String]) -> Vec<String> {
        let mut a = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone(),
            program.into(),
        ];
        a.extend(args.iter().cloned());
        a
    }

    /// Starts `program args...` inside the namespace (`ip netns exec` execs the program, so
    /// the [`Proc`] is the program itself and is killed on drop).
    pub fn spawn(&self, name: &str, program: &str, args: &[String]) -> Proc {
        Proc::spawn_with(name, "ip", &self.wrap(program, args), &SpawnOpts::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `program args...` inside the namespace to completion, bounded by `timeout`.
    pub fn run(&self, program: &str, args: &[String], timeout: Duration) -> (i32, String, String) {
        run_program("ip", &self.wrap(program, args), timeout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("{e}");
        }
    }
}
