//! Replays the fuzzing corpora as an ordinary test: every file under `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` goes through the same checks the libFuzzer targets run
//! (`fuzz/checks.rs`, included below), so CI exercises them on stable Rust without libFuzzer.
//! A panic names the target and the file; regressions are inputs that once crashed or hung.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dhtnode::torrent::{build_torrent, BuildOptions};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Files of `dir` (not recursive), sorted; none if the folder does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `checks::check(target, ..)` on every file of `kind/<target>/`; returns how many ran.
fn replay(kind: &str, target: &str) -> usize {
    let dir = fuzz_dir().join(kind).join(target);
    let files = files_in(&dir);
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let start = Instant::now();
        let result = std::panic::catch_unwind(|| checks::check(target, &data));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!(
                "{target}: {} panicked: {msg}\ninput ({} bytes): {}",
                path.display(),
                data.len(),
                hex(&data[..data.len().min(256)])
            );
        }
        // libFuzzer runs with -timeout=5 on an optimised build; a debug build gets headroom.
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{target}: {} took {took:?} (a hang?)",
            path.display()
        );
    }
    files.len()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_corpus_and_regression_folder_names_a_target() {
    for kind in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                checks::TARGETS.contains(&name.as_str()),
                "fuzz/{kind}/{name} is not a fuzz target (targets: {:?})",
                checks::TARGETS
            );
        }
    }
}

macro_rules! corpus_test {
    ($name:ident, $target:literal) => {
        #[test]
        fn $name() {
            let seeds = replay("corpus", $target);
            assert!(seeds > 0, "fuzz/corpus/{} is empty", $target);
            replay("regressions", $target);
        }
    };
}

corpus_test!(krpc_decode, "krpc_decode");
corpus_test!(metainfo_parse, "metainfo_parse");
corpus_test!(magnet_parse, "magnet_parse");
corpus_test!(wire_codec, "wire_codec");
corpus_test!(ut_metadata, "ut_metadata");
corpus_test!(metadata_assembler, "metadata_assembler");
corpus_test!(ut_pex, "ut_pex");
corpus_test!(tracker_http, "tracker_http");
corpus_test!(tracker_udp, "tracker_udp");

/// Real torrents from `build_torrent` (single file, and a directory with an empty file and a
/// nested one) pass the metainfo checks, as does their info dictionary alone, and their
/// magnet link passes the magnet checks.
#[test]
fn built_torrents_pass_the_metainfo_checks() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.bin");
    std::fs::write(
        &single,
        (0..70_000u32).map(|i| (i * 31) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello").unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::fs::write(tree.join("sub/deeper/c.bin"), vec![7u8; 40_000]).unwrap();

    let with_nodes = BuildOptions {
        nodes: vec![("127.0.0.1".into(), 6881), ("router.example".into(), 6881)],
        comment: Some("fuzz corpus test".into()),
        created_by: Some("dhtnode tests".into()),
        ..BuildOptions::default()
    };
    for (path, opts) in [
        (&single, BuildOptions::default()),
        (&single, with_nodes.clone()),
        (&tree, BuildOptions::default()),
        (
            &tree,
            BuildOptions {
                piece_length: Some(16 * 1024),
                private: true,
                ..with_nodes
            },
        ),
    ] {
        let built = build_torrent(path, &opts).unwrap();
        checks::check("metainfo_parse", &built.torrent);
        checks::check("metainfo_parse", &built.metainfo.info_bytes);
        checks::check("magnet_parse", built.metainfo.magnet().to_uri().as_bytes());
    }
}
