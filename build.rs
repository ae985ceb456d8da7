//! Records which commit the binary was built from, and whether the code differed from it, so
//! that every simulation report can say what produced it (`report.json` → `provenance`).
//! Only the code counts as "dirty" (src/, build.rs, Cargo.toml, Cargo.lock): results and
//! documentation being edited do not change what the binary computes.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
    ]) {
        Some(s) if s.is_empty() => "0",
        Some(_) => "1",
        None => "unknown",
    };
    println!("cargo:rustc-env=DHTNODE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DHTNODE_GIT_DIRTY={dirty}");
    // Re-run when the code or the checked-out commit changes (not on every file of the
    // package: result files written by runs must not force a rebuild).
    for p in ["src", "build.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={p}");
    }
    for p in ["HEAD", "index"] {
        if let Some(path) = git(&["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
