//! Files for transfer tests: deterministic random payloads and byte-for-byte comparisons.

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for hundreds of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` deterministic random bytes to `path`, creating its directories.
pub fn write_random(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, random_bytes(len, seed)).unwrap();
}

/// Every regular file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// Asserts that file `got` has exactly the bytes of `want` (without printing megabytes).
pub fn assert_same_file(want: &Path, got: &Path) {
    if let Err(e) = same_file(want, got) {
        panic!("{e}");
    }
}

/// Whether file `got` has exactly the bytes of `want`; the error says where it differs.
pub fn same_file(want: &Path, got: &Path) -> Result<(), String> {
    let a = std::fs::read(want).map_err(|e| format!("read {}: {e}", want.display()))?;
    let b = std::fs::read(got).map_err(|e| format!("read {}: {e}", got.display()))?;
    if a.len() != b.len() {
        return Err(format!(
            "{} has {} bytes, want {}",
            got.display(),
            b.len(),
            a.len()
        ));
    }
    match a.iter().zip(&b).position(|(x, y)| x != y) {
        Some(i) => Err(format!(
            "{} differs from {} at byte {i}",
            got.display(),
            want.display()
        )),
        None => Ok(()),
    }
}

/// Asserts that directory `got` holds exactly the files of `want` (plus dhtnode's hidden
/// resume record, if `got` is the output root), byte for byte.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let w = files_under(want);
    let g = files_under(got);
    assert_eq!(g, w, "files under {} differ from the source", got.display());
    for rel in &w {
        assert_same_file(&want.join(rel), &got.join(rel));
    }
}
