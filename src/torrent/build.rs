//! Making a trackerless `.torrent` from a file or directory (the `seed`/`create` path).
//!
//! The output has an `announce` key only when trackers are asked for (peers are found
//! through the DHT otherwise), optionally a BEP 5
//! `nodes` list, and is deterministic: the same input tree and options give the same bytes
//! (files sorted by name, no creation date), hence the same info-hash on every machine.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::torrent::metainfo::{
    put_announce_list, put_int, put_nodes, put_str, Metainfo, MetainfoError,
};
use crate::torrent::path::{check_component, PathError, SafePath, MAX_DEPTH};

/// Smallest piece length chosen automatically (one 16 KiB block).
pub const MIN_PIECE_LENGTH: u64 = 16 * 1024;
/// Largest piece length chosen automatically.
pub const MAX_AUTO_PIECE_LENGTH: u64 = 16 * 1024 * 1024;
/// Size of each read while hashing.
const READ_BUF: usize = 4 * 1024 * 1024;

/// Why a torrent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file name is not UTF-8 (torrents name files in UTF-8).
    #[error("{}: file name is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    /// A file name cannot be represented safely in a torrent (e.g. contains `\`).
    #[error("{}: {source}", path.display())]
    UnsafeName {
        /// The offending file.
        path: PathBuf,
        /// Why.
        source: PathError,
    },
    /// The input is neither a regular file nor a directory.
    #[error("{}: not a regular file or directory", .0.display())]
    NotFileOrDir(PathBuf),
    /// Nothing to share: no files, or only empty ones.
    #[error("{}: nothing to share (no data)", .0.display())]
    Empty(PathBuf),
    /// A file changed size while it was being hashed.
    #[error("{}: file changed while hashing", .0.display())]
    Changed(PathBuf),
    /// The requested piece length is not a power of two in 16 KiB..=16 MiB.
    #[error("piece length {0} must be a power of two between 16 KiB and 16 MiB")]
    PieceLength(u64),
    /// The result failed validation (e.g. more pieces than the wire can address).
    #[error("built torrent is invalid")]
    Invalid(#[from] MetainfoError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Choices for [`build_torrent`]; `Default` gives a plain public trackerless torrent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// DHT bootstrap nodes to embed (`nodes` key), e.g. our own address.
    pub nodes: Vec<(String, u16)>,
    /// Tracker URLs to embed: the first as `announce`, and with more than one, all of them
    /// in `announce-list`, one tier each in the order given (BEP 12: later ones are backups).
    pub trackers: Vec<String>,
    /// Force a piece length (power of two, 16 KiB..=16 MiB); `None` chooses by size.
    pub piece_length: Option<u64>,
    /// Torrent name; defaults to the file or directory name.
    pub name: Option<String>,
    /// Set the BEP 27 private flag (which disables DHT use by other clients).
    pub private: bool,
    /// Optional `comment`.
    pub comment: Option<String>,
    /// Optional `created by`.
    pub created_by: Option<String>,
}

/// A freshly built torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The encoded `.torrent` file.
    pub torrent: Vec<u8>,
    /// The same torrent, parsed (info-hash, layout, ...).
    pub metainfo: Metainfo,
}

/// Piece length for `total` bytes: the power of two giving 1,000–2,000 pieces, clamped to
/// 16 KiB..=16 MiB (few pieces for small files, more than 2,000 only above ~32 GiB).
pub fn choose_piece_length(total: u64) -> u64 {
    let target = total.div_ceil(2000).max(1);
    target
        .checked_next_power_of_two()
        .unwrap_or(MAX_AUTO_PIECE_LENGTH)
        .clamp(MIN_PIECE_LENGTH, MAX_AUTO_PIECE_LENGTH)
}

struct InputFile {
    /// Path to read from.
    abs: PathBuf,
    /// Path inside the torrent (without the torrent name).
    rel: Vec<String>,
    len: u64,
}

/// Builds a torrent of `path` (a file, or a directory walked recursively in name order).
///
/// Symbolic links inside a directory are followed only if they point to a regular file inside
/// that directory; others (and all links to directories, which could loop) are skipped.
/// Non-regular files (sockets, FIFOs) are skipped. All data is hashed in one sequential pass.
pub fn build_torrent(path: &Path, opts: &BuildOptions) -> Result<Built, BuildError> {
    let root = path.canonicalize().map_err(io_err(path))?;
    let meta = std::fs::metadata(&root).map_err(io_err(&root))?;
    let default_name = root
        .file_name()
        .map(|n| utf8(n.as_bytes(), &root))
        .transpose()?
        .unwrap_or_else(|| "root".to_string());
    let name = opts.name.clone().unwrap_or(default_name);
    check_component(&name).map_err(|source| BuildError::UnsafeName {
        path: root.clone(),
        source,
    })?;

    let single = meta.is_file();
    let files = if single {
        vec![InputFile {
            abs: root.clone(),
            rel: Vec::new(),
            len: meta.len(),
        }]
    } else if meta.is_dir() {
        let mut files = Vec::new();
        walk(&root, &root, &mut Vec::new(), &mut files)?;
        files
    } else {
        return Err(BuildError::NotFileOrDir(root));
    };
    let total = files
        .iter()
        .try_fold(0u64, |a, f| a.checked_add(f.len))
        .ok_or_else(|| BuildError::Empty(root.clone()))?;
    if files.is_empty() || total == 0 {
        return Err(BuildError::Empty(root));
    }

    let piece_length = match opts.piece_length {
        Some(p)
            if p.is_power_of_two() && (MIN_PIECE_LENGTH..=MAX_AUTO_PIECE_LENGTH).contains(&p) =>
        {
            p
        }
        Some(p) => return Err(BuildError::PieceLength(p)),
        None => choose_piece_length(total),
    };
    let pieces = hash_pieces(&files, piece_length)?;

    // Info dictionary, keys in sorted order.
    let mut info = b"d".to_vec();
    if single {
        put_str(&mut info, b"length");
        put_int(&mut info, int(total));
    } else {
        put_str(&mut info, b"files");
        info.push(b'l');
        for f in &files {
            info.push(b'd');
            put_str(&mut info, b"length");
            put_int(&mut info, int(f.len));
            put_str(&mut info, b"path");
            info.push(b'l');
            for c in &f.rel {
                put_str(&mut info, c.as_bytes());
            }
            info.extend_from_slice(b"ee");
        }
        info.push(b'e');
    }
    put_str(&mut info, b"name");
    put_str(&mut info, name.as_bytes());
    put_str(&mut info, b"piece length");
    put_int(&mut info, int(piece_length));
    put_str(&mut info, b"pieces");
    put_str(&mut info, &pieces);
    if opts.private {
        put_str(&mut info, b"private");
        put_int(&mut info, 1);
    }
    info.push(b'e');

    let mut torrent = b"d".to_vec();
    if let Some(first) = opts.trackers.first() {
        put_str(&mut torrent, b"announce");
        put_str(&mut torrent, first.as_bytes());
    }
    if opts.trackers.len() > 1 {
        let tiers: Vec<Vec<String>> = opts.trackers.iter().map(|t| vec![t.clone()]).collect();
        put_announce_list(&mut torrent, &tiers);
    }
    if let Some(c) = &opts.comment {
        put_str(&mut torrent, b"comment");
        put_str(&mut torrent, c.as_bytes());
    }
    if let Some(c) = &opts.created_by {
        put_str(&mut torrent, b"created by");
        put_str(&mut torrent, c.as_bytes());
    }
    put_str(&mut torrent, b"info");
    torrent.extend_from_slice(&info);
    if !opts.nodes.is_empty() {
        put_nodes(&mut torrent, &opts.nodes);
    }
    torrent.push(b'e');

    let metainfo = Metainfo::from_bytes(&torrent)?;
    Ok(Built { torrent, metainfo })
}

/// Bencode integers are signed; lengths above `i64::MAX` cannot be encoded (and never occur).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn utf8(b: &[u8], path: &Path) -> Result<String, BuildError> {
    String::from_utf8(b.to_vec()).map_err(|_| BuildError::NotUtf8(path.to_path_buf()))
}

/// Depth-first walk in byte order of names, collecting regular files.
fn walk(
    root: &Path,
    dir: &Path,
    rel: &mut Vec<String>,
    out: &mut Vec<InputFile>,
) -> Result<(), BuildError> {
    if rel.len() >= MAX_DEPTH {
        return Err(BuildError::UnsafeName {
            path: dir.to_path_buf(),
            source: PathError::TooDeep(rel.len() + 1),
        });
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        entries.push(e.file_name());
    }
    entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in entries {
        let abs = dir.join(&name);
        let lmeta = std::fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
        let (is_file, len) = if lmeta.file_type().is_symlink() {
            match abs.canonicalize() {
                Ok(target) if target.starts_with(root) => match std::fs::metadata(&target) {
                    Ok(m) if m.is_file() => (true, m.len()),
                    _ => continue,
                },
                _ => continue,
            }
        } else if lmeta.is_file() {
            (true, lmeta.len())
        } else if lmeta.is_dir() {
            (false, 0)
        } else {
            continue;
        };
        let comp = utf8(name.as_bytes(), &abs)?;
        check_component(&comp).map_err(|source| BuildError::UnsafeName {
            path: abs.clone(),
            source,
        })?;
        rel.push(comp);
        if is_file {
            SafePath::new(rel.iter().cloned()).map_err(|source| BuildError::UnsafeName {
                path: abs.clone(),
                source,
            })?;
            out.push(InputFile {
                abs,
                rel: rel.clone(),
                len,
            });
        } else {
            walk(root, &abs, rel, out)?;
        }
        rel.pop();
    }
    Ok(())
}

/// Hashes the concatenation of `files` in `piece_length` pieces with one sequential read pass.
fn hash_pieces(files: &[InputFile], piece_length: u64) -> Result<Vec<u8>, BuildError> {
    let mut buf = vec![0u8; READ_BUF];
    let mut pieces = Vec::new();
    let mut hasher = Sha1::new();
    let mut in_piece: u64 = 0;
    for f in files {
        let mut file = File::open(&f.abs).map_err(io_err(&f.abs))?;
        let mut remaining = f.len;
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let n = match file.read(chunk) {
                Ok(0) => return Err(BuildError::Changed(f.abs.clone())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&f.abs)(e)),
            };
            remaining -= n as u64;
            let mut data = chunk.get(..n).unwrap_or_default();
            while !data.is_empty() {
                let room = usize::try_from(piece_length - in_piece).unwrap_or(usize::MAX);
                let (now, rest) = data.split_at(room.min(data.len()));
                hasher.update(now);
                in_piece += now.len() as u64;
                if in_piece == piece_length {
                    pieces.extend_from_slice(&hasher.finalize_reset());
                    in_piece = 0;
                }
                data = rest;
            }
        }
        // A file that grew would make the torrent disagree with the data on disk.
        let now_len = file.metadata().map_err(io_err(&f.abs))?.len();
        if now_len != f.len {
            return Err(BuildError::Changed(f.abs.clone()));
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&hasher.finalize());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::storage::{OpenMode, Storage};

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn piece_length_choice() {
        assert_eq!(choose_piece_length(0), MIN_PIECE_LENGTH);
        assert_eq!(choose_piece_length(1), MIN_PIECE_LENGTH);
        assert_eq!(choose_piece_length(u64::MAX), MAX_AUTO_PIECE_LENGTH);
        for total in [
            100u64 << 20,
            700 << 20,
            1 << 30,
            3 << 30,
            5_000_000_000,
            31 << 30,
        ] {
            let p = choose_piece_length(total);
            let n = total.div_ceil(p);
            assert!(p.is_power_of_two());
            assert!((1000..=2000).contains(&n), "{total} -> {p} -> {n}");
        }
    }

    #[test]
    fn trackers_go_into_announce_and_announce_list() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data.bin");
        std::fs::write(&f, bytes(40_000, 2)).unwrap();
        let one = BuildOptions {
            trackers: vec!["http://t.example/announce".into()],
            ..Default::default()
        };
        let m = build_torrent(&f, &one).unwrap().metainfo;
        assert_eq!(m.announce.as_deref(), Some("http://t.example/announce"));
        assert!(m.announce_list.is_empty());
        assert_eq!(
            m.trackers(),
            vec![vec!["http://t.example/announce".to_string()]]
        );
        let two = BuildOptions {
            trackers: vec![
                "http://t.example/announce".into(),
                "udp://u.example:1".into(),
            ],
            ..Default::default()
        };
        let b = build_torrent(&f, &two).unwrap();
        assert_eq!(
            b.metainfo.announce_list,
            vec![
                vec!["http://t.example/announce".to_string()],
                vec!["udp://u.example:1".to_string()]
            ]
        );
        // Trackers are outside the info dictionary: same info-hash as without them.
        let bare = build_torrent(&f, &BuildOptions::default()).unwrap();
        assert_eq!(b.metainfo.info_hash, bare.metainfo.info_hash);
        // And the torrent re-encodes to the same bytes.
        assert_eq!(b.metainfo.to_torrent_bytes(), b.torrent);
        assert_eq!(
            b.metainfo.magnet().trackers,
            vec![
                "http://t.example/announce".to_string(),
                "udp://u.example:1".into()
            ]
        );
    }

    #[test]
    fn single_file_trackerless_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data.bin");
        let data = bytes(100_000, 1);
        std::fs::write(&f, &data).unwrap();
        let opts = BuildOptions {
            nodes: vec![("127.0.0.1".into(), 6881)],
            ..Default::default()
        };
        let b = build_torrent(&f, &opts).unwrap();
        let again = build_torrent(&f, &opts).unwrap();
        assert_eq!(b, again);
        let m = &b.metainfo;
        assert_eq!(m.info.name, "data.bin");
        assert!(m.info.single_file);
        assert_eq!(m.info.piece_length, MIN_PIECE_LENGTH);
        assert_eq!(m.info.num_pieces(), 7);
        assert_eq!(m.nodes, opts.nodes);
        assert_eq!(m.announce, None);
        assert!(!b.torrent.windows(10).any(|w| w == b"8:announce"));
        for (i, c) in data.chunks(MIN_PIECE_LENGTH as usize).enumerate() {
            assert_eq!(m.info.pieces[i], <[u8; 20]>::from(Sha1::digest(c)));
        }
        // Seeding it: the storage sees the data as complete.
        let s = Storage::open(dir.path(), &m.info, OpenMode::Existing).unwrap();
        assert_eq!(s.verify_all().unwrap().len(), 7);
        // Options change the bytes but not necessarily the info.
        let plain = build_torrent(&f, &BuildOptions::default()).unwrap();
        assert_eq!(plain.metainfo.info_hash, m.info_hash);
        let private = build_torrent(
            &f,
            &BuildOptions {
                private: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(private.metainfo.info.private);
        assert_ne!(private.metainfo.info_hash, m.info_hash);
    }

    #[test]
    fn directory_sorted_with_symlinks_and_empty_files() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let root = base.path().join("share");
        std::fs::create_dir_all(root.join("b/sub")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("z.txt"), bytes(20_000, 2)).unwrap();
        std::fs::write(root.join("b/sub/x"), bytes(30_000, 3)).unwrap();
        std::fs::write(root.join("a/empty"), b"").unwrap();
        std::fs::write(root.join("B"), bytes(5, 4)).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("leak")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("leakdir")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        std::os::unix::fs::symlink(root.join("z.txt"), root.join("link-in")).unwrap();
        let b = build_torrent(&root, &BuildOptions::default()).unwrap();
        let info = &b.metainfo.info;
        let paths: Vec<String> = info.files.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "share/B",
                "share/a/empty",
                "share/b/sub/x",
                "share/link-in",
                "share/z.txt"
            ]
        );
        assert_eq!(info.total_length(), 5 + 30_000 + 20_000 + 20_000);
        assert!(!info.single_file);
        let s = Storage::open(base.path(), info, OpenMode::Existing).unwrap();
        assert_eq!(s.verify_all().unwrap().len(), info.num_pieces());
        assert_eq!(build_torrent(&root, &BuildOptions::default()).unwrap(), b);
        let named = BuildOptions {
            name: Some("other".into()),
            piece_length: Some(32 * 1024),
            comment: Some("c".into()),
            created_by: Some("dhtnode".into()),
            ..Default::default()
        };
        let n = build_torrent(&root, &named).unwrap();
        assert_eq!(n.metainfo.info.name, "other");
        assert_eq!(n.metainfo.info.piece_length, 32 * 1024);
        assert_eq!(n.metainfo.comment.as_deref(), Some("c"));
        assert_eq!(n.metainfo.created_by.as_deref(), Some("dhtnode"));
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            build_torrent(&empty, &BuildOptions::default()),
            Err(BuildError::Empty(_))
        ));
        std::fs::write(empty.join("zero"), b"").unwrap();
        assert!(matches!(
            build_torrent(&empty, &BuildOptions::default()),
            Err(BuildError::Empty(_))
        ));
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        for p in [0, 1000, 8 * 1024, 32 * 1024 * 1024] {
            let o = BuildOptions {
                piece_length: Some(p),
                ..Default::default()
            };
            assert!(
                matches!(build_torrent(&f, &o), Err(BuildError::PieceLength(_))),
                "{p}"
            );
        }
        let o = BuildOptions {
            name: Some("../x".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_torrent(&f, &o),
            Err(BuildError::UnsafeName { .. })
        ));
        let bad = dir.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        // On Unix a backslash, a newline or a Windows device name is an ordinary name.
        std::fs::write(bad.join("a\\b"), b"x").unwrap();
        std::fs::write(bad.join("aux.c"), b"y").unwrap();
        std::fs::write(bad.join("line\nbreak"), b"z").unwrap();
        let ok = build_torrent(&bad, &BuildOptions::default()).unwrap();
        assert_eq!(ok.metainfo.info.files.len(), 3);
        assert!(matches!(
            build_torrent(&dir.path().join("missing"), &BuildOptions::default()),
            Err(BuildError::Io { .. })
        ));
    }

    #[test]
    fn pieces_span_file_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir(&root).unwrap();
        let a = bytes(10_000, 5);
        let c = bytes(40_000, 6);
        std::fs::write(root.join("a"), &a).unwrap();
        std::fs::write(root.join("c"), &c).unwrap();
        let b = build_torrent(&root, &BuildOptions::default()).unwrap();
        let all = [a, c].concat();
        let expect: Vec<[u8; 20]> = all
            .chunks(MIN_PIECE_LENGTH as usize)
            .map(|p| Sha1::digest(p).into())
            .collect();
        assert_eq!(b.metainfo.info.pieces, expect);
    }
}
