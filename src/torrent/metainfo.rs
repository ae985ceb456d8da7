//! `.torrent` metainfo (BEP 3, v1): parsing, validation and the info-hash.
//!
//! The info-hash is the SHA-1 of the info dictionary's bytes *as they appear in the input*:
//! [`crate::torrent::bencode`] finds that byte range, so a torrent written with unsorted keys
//! still gets the hash every other client computes. Everything a hostile file could use
//! against us is checked here once: piece length, piece count against total length, length
//! overflow, and every file path (via [`SafePath`]).

use std::collections::BTreeMap;
use std::path::Path;

use bt_bencode::{ByteString, Value};
use sha1::{Digest, Sha1};

use crate::id::Id;
use crate::torrent::bencode::{self, BencodeError};
use crate::torrent::layout::{Layout, LayoutError, MAX_PIECE_LENGTH};
use crate::torrent::magnet::Magnet;
use crate::torrent::path::{
    sanitize_component, NameRules, PathError, SafePath, Sanitized, MAX_DEPTH,
};

/// Largest `.torrent` file [`Metainfo::read_file`] will load (big enough for any real one).
pub const MAX_TORRENT_FILE: u64 = 64 * 1024 * 1024;

/// Why a `.torrent` or info dictionary was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// Not well-formed bencode (or nested too deep, or with trailing bytes).
    #[error("malformed bencode")]
    Bencode(#[from] BencodeError),
    /// Well-formed at the byte level, but the decoder refused it (e.g. an integer too big).
    #[error("cannot decode bencode")]
    Decode(#[from] bt_bencode::Error),
    /// The top level (or the info value) is not a dictionary.
    #[error("{0} is not a dictionary")]
    NotADict(&'static str),
    /// The top-level dictionary has no `info` key.
    #[error("missing info dictionary")]
    MissingInfo,
    /// The top-level dictionary has `info` twice: which one would the hash cover?
    #[error("duplicate info dictionary")]
    DuplicateInfo,
    /// A required key is absent.
    #[error("missing key {0:?}")]
    Missing(&'static str),
    /// A key holds the wrong kind of value (or a negative number).
    #[error("key {0:?} has the wrong type or value")]
    WrongType(&'static str),
    /// A BEP 52 v2-only torrent (no v1 `pieces`), which this node does not handle.
    #[error("v2-only torrents (BEP 52) are not supported: dhtnode checks pieces with v1 SHA-1 hashes only; use a hybrid (v1+v2) or v1 torrent")]
    V2Only,
    /// `pieces` is not a whole number of 20-byte SHA-1 hashes.
    #[error("pieces has {0} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    /// The number of hashes does not match `ceil(total length / piece length)`.
    #[error("torrent has {actual} piece hashes but its length needs {expected}")]
    PieceCount {
        /// Pieces implied by the lengths.
        expected: u32,
        /// Hashes present.
        actual: usize,
    },
    /// Piece length out of range, total overflow, or no data.
    #[error("bad geometry")]
    Layout(#[from] LayoutError),
    /// A multi-file torrent with an empty `files` list.
    #[error("multi-file torrent lists no files")]
    NoFiles,
    /// A file name or path is unsafe.
    #[error("unsafe path in torrent")]
    Path(#[from] PathError),
    /// Two files share a path, or a file is also used as a directory.
    #[error("conflicting file path {0:?}")]
    DuplicatePath(String),
    /// The `.torrent` file is bigger than [`MAX_TORRENT_FILE`].
    #[error("torrent file is larger than {MAX_TORRENT_FILE} bytes")]
    TooLarge,
    /// The `.torrent` file could not be read.
    #[error("cannot read torrent file")]
    Io(#[from] std::io::Error),
}

/// One file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the output directory. For a multi-file torrent it starts with the
    /// torrent's name (the top directory); for a single-file torrent it is just the name.
    pub path: SafePath,
    /// Length in bytes.
    pub length: u64,
    /// BEP 47 padding file (`attr` contains `p`, or an old `_____padding_file_` name): zeros
    /// that align the next file to a piece boundary. Never written to disk, never listed as
    /// a user's file; its bytes read as zeros.
    pub pad: bool,
    /// BEP 47 `attr` contains `x`: the file is created executable.
    pub executable: bool,
}

impl FileEntry {
    /// A plain file (no BEP 47 attributes).
    pub fn plain(path: SafePath, length: u64) -> FileEntry {
        FileEntry {
            path,
            length,
            pad: false,
            executable: false,
        }
    }
}

/// The validated info dictionary: what the info-hash commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name: the file name (single-file) or top directory (multi-file).
    pub name: String,
    /// Nominal piece length in bytes (1..=64 MiB).
    pub piece_length: u64,
    /// SHA-1 of every piece, in order.
    pub pieces: Vec<[u8; 20]>,
    /// Files in torrent order, with sanitised relative paths.
    pub files: Vec<FileEntry>,
    /// BEP 27 private flag: such torrents must not use the DHT (we report it; the CLI refuses).
    pub private: bool,
    /// True for the single-file form (`length` key) rather than `files`.
    pub single_file: bool,
    /// BEP 52 hybrid: the dictionary also carries a v2 `file tree` (`meta version` 2) beside
    /// the v1 `pieces`. We download and seed it through v1; its v2 info-hash is
    /// [`Metainfo::info_hash_v2`].
    pub hybrid: bool,
}

impl Info {
    /// Parses raw info-dictionary bytes, e.g. metadata fetched with BEP 9. The caller checks
    /// that `sha1(bytes)` is the info-hash it asked for ([`info_hash_of`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Info, MetainfoError> {
        bencode::validate(bytes)?;
        let value: Value = bt_bencode::from_slice(bytes)?;
        Info::from_value(&value)
    }

    /// Builds and validates an `Info` from a decoded info dictionary.
    fn from_value(value: &Value) -> Result<Info, MetainfoError> {
        let d = value.as_dict().ok_or(MetainfoError::NotADict("info"))?;
        let name_raw = get(d, "name.utf-8")
            .or_else(|| get(d, "name"))
            .ok_or(MetainfoError::Missing("name"))?;
        let name_bytes = name_raw
            .as_byte_str()
            .ok_or(MetainfoError::WrongType("name"))?;
        let name = lossy(name_bytes);
        let on_disk = match sanitize_component(name_bytes.as_slice(), NameRules::native())? {
            Sanitized::Name { name: n, renamed } => {
                if renamed {
                    tracing::warn!(torrent = %name.escape_debug(), saved_as = %n, "torrent name renamed for this system");
                }
                n
            }
            Sanitized::Skip => "_".to_string(),
        };
        let name_path = SafePath::new([on_disk])?;

        let piece_length = get(d, "piece length")
            .ok_or(MetainfoError::Missing("piece length"))?
            .as_u64()
            .ok_or(MetainfoError::WrongType("piece length"))?;
        if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
            return Err(LayoutError::PieceLength(piece_length).into());
        }

        let pieces_raw = match get(d, "pieces") {
            Some(p) => p.as_byte_str().ok_or(MetainfoError::WrongType("pieces"))?,
            None if get(d, "meta version").and_then(Value::as_u64) == Some(2) => {
                return Err(MetainfoError::V2Only)
            }
            None => return Err(MetainfoError::Missing("pieces")),
        };
        if pieces_raw.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces_raw.len()));
        }
        let pieces: Vec<[u8; 20]> = pieces_raw
            .chunks_exact(20)
            .filter_map(|c| <[u8; 20]>::try_from(c).ok())
            .collect();

        let private = matches!(get(d, "private").and_then(Value::as_u64), Some(1));

        let (files, single_file) = match (get(d, "length"), get(d, "files")) {
            (Some(len), None) => {
                let length = len.as_u64().ok_or(MetainfoError::WrongType("length"))?;
                let (pad, executable) = attrs(d);
                (
                    vec![FileEntry {
                        path: name_path,
                        length,
                        pad,
                        executable,
                    }],
                    true,
                )
            }
            (None, Some(files)) => (parse_files(files, &name_path)?, false),
            (Some(_), Some(_)) => return Err(MetainfoError::WrongType("length")),
            (None, None) => return Err(MetainfoError::Missing("length")),
        };

        let lengths: Vec<u64> = files.iter().map(|f| f.length).collect();
        let layout = Layout::new(piece_length, &lengths)?;
        if pieces.len() != layout.num_pieces() as usize {
            return Err(MetainfoError::PieceCount {
                expected: layout.num_pieces(),
                actual: pieces.len(),
            });
        }
        let hybrid = get(d, "meta version").and_then(Value::as_u64) == Some(2);
        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            private,
            single_file,
            hybrid,
        })
    }

    /// `.<name>.<suffix>`: the name of a file this node keeps beside the data (resume record,
    /// parts file), hidden and shortened so it stays within file-system name limits.
    pub fn side_file_name(&self, suffix: &str) -> String {
        // The name as the files are saved under (sanitised: no separators, no control
        // characters), not the raw `name` the torrent gave.
        let mut name = self
            .files
            .first()
            .and_then(|f| f.path.components().next())
            .unwrap_or(self.name.as_str());
        while name.len() > 200 {
            let mut cut = 200;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name = name.get(..cut).unwrap_or("torrent");
        }
        format!(".{name}.{suffix}")
    }

    /// Sum of all file lengths.
    pub fn total_length(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.length))
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> usize {
        self.pieces.len()
    }

    /// The piece/file geometry, for storage and the piece picker.
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        let lengths: Vec<u64> = self.files.iter().map(|f| f.length).collect();
        Layout::new(self.piece_length, &lengths)
    }
}

fn parse_files(files: &Value, name: &SafePath) -> Result<Vec<FileEntry>, MetainfoError> {
    let list = files.as_list().ok_or(MetainfoError::WrongType("files"))?;
    if list.is_empty() {
        return Err(MetainfoError::NoFiles);
    }
    let mut out = Vec::with_capacity(list.len());
    let mut renames = Renames::default();
    let mut names: Vec<String> = Vec::new();
    for f in list {
        let fd = f.as_dict().ok_or(MetainfoError::WrongType("files"))?;
        let length = get(fd, "length")
            .ok_or(MetainfoError::Missing("length"))?
            .as_u64()
            .ok_or(MetainfoError::WrongType("length"))?;
        let comps = get(fd, "path.utf-8")
            .or_else(|| get(fd, "path"))
            .ok_or(MetainfoError::Missing("path"))?
            .as_list()
            .ok_or(MetainfoError::WrongType("path"))?;
        names.clear();
        for c in comps {
            let raw = c.as_byte_str().ok_or(MetainfoError::WrongType("path"))?;
            match sanitize_component(raw.as_slice(), NameRules::native())? {
                Sanitized::Skip => {}
                Sanitized::Name { name, renamed } => {
                    if renamed {
                        renames.note(raw.as_slice(), &name);
                    }
                    names.push(name);
                }
            }
            if names.len() + name.depth() > MAX_DEPTH {
                return Err(PathError::TooDeep(names.len() + name.depth()).into());
            }
        }
        if names.is_empty() {
            // Every component was `.`: the file still needs a name of its own.
            names.push("_".to_string());
        }
        let (mut pad, executable) = attrs(fd);
        // Before BEP 47, BitComet marked padding by name alone; libtorrent still honours it.
        pad |= names
            .last()
            .is_some_and(|n| n.starts_with("_____padding_file_"));
        let rel = name.join(&SafePath::new(&names)?)?;
        out.push(FileEntry {
            path: rel,
            length,
            pad,
            executable,
        });
    }
    renames.log();
    refuse_clashes(&out)?;
    Ok(out)
}

/// BEP 47 `attr` of a file (or of a single-file info dict): (padding, executable). Unknown
/// letters (`h` hidden, `l` symlink) are ignored: the file is an ordinary file.
fn attrs(d: &BTreeMap<ByteString, Value>) -> (bool, bool) {
    let a = get(d, "attr")
        .and_then(Value::as_byte_str)
        .map_or(&[][..], |b| b.as_slice());
    (a.contains(&b'p'), a.contains(&b'x'))
}

/// Refuses a path used twice, or used both as a file and as a directory: neither can be laid
/// out on disk. Sorting component by component puts every path right before the paths below
/// it, so comparing neighbours finds every clash: O(n log n) time and one index per file, even
/// for a hostile list of 100,000 deep paths.
///
/// Padding files are left out: they are never created, and libtorrent names every pad of
/// the same size alike (`.pad/16384`), so a hybrid torrent repeats the name.
fn refuse_clashes(files: &[FileEntry]) -> Result<(), MetainfoError> {
    let mut order: Vec<&SafePath> = files.iter().filter(|f| !f.pad).map(|f| &f.path).collect();
    order.sort_unstable();
    for pair in order.windows(2) {
        if let [a, b] = pair {
            let (a, b) = (a.as_str(), b.as_str());
            if a == b || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/')) {
                return Err(MetainfoError::DuplicatePath(a.to_string()));
            }
        }
    }
    Ok(())
}

/// Components renamed while parsing: logged once per torrent (with the first few examples),
/// not once per file, so a hostile list of 100,000 odd names cannot flood the log.
#[derive(Default)]
struct Renames {
    count: usize,
    examples: Vec<(String, String)>,
}

impl Renames {
    fn note(&mut self, raw: &[u8], name: &str) {
        self.count += 1;
        if self.examples.len() < 3 {
            self.examples.push((
                String::from_utf8_lossy(raw).escape_debug().to_string(),
                name.to_string(),
            ));
        }
    }

    fn log(&self) {
        if self.count > 0 {
            tracing::warn!(
                renamed = self.count,
                examples = ?self.examples,
                "file names that cannot exist on this system were renamed"
            );
        }
    }
}

fn get<'a>(d: &'a BTreeMap<ByteString, Value>, key: &str) -> Option<&'a Value> {
    d.get(key.as_bytes())
}

fn lossy(b: &ByteString) -> String {
    String::from_utf8_lossy(b.as_slice()).into_owned()
}

fn opt_string(d: &BTreeMap<ByteString, Value>, key: &str) -> Option<String> {
    get(d, key).and_then(Value::as_byte_str).map(lossy)
}

/// The BEP 52 (v2) info-hash of raw info-dictionary bytes: their SHA-256.
pub fn info_hash_v2_of(info_bytes: &[u8]) -> [u8; 32] {
    use sha2::Sha256;
    Sha256::digest(info_bytes).into()
}

/// The info-hash of raw info-dictionary bytes: their SHA-1.
pub fn info_hash_of(info_bytes: &[u8]) -> Id {
    Id(Sha1::digest(info_bytes).into())
}

/// A parsed `.torrent`: the validated info, its exact bytes and hash, and DHT bootstrap nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// The validated info dictionary.
    pub info: Info,
    /// The info dictionary's bytes exactly as in the input (served to peers via BEP 9).
    pub info_bytes: Vec<u8>,
    /// SHA-1 of `info_bytes`.
    pub info_hash: Id,
    /// For a BEP 52 hybrid torrent, the SHA-256 of `info_bytes` (its v2 info-hash; the DHT
    /// and trackers use its first 20 bytes). `None` for v1 torrents.
    pub info_hash_v2: Option<[u8; 32]>,
    /// BEP 5 `nodes`: (host, port) pairs to bootstrap the DHT from.
    pub nodes: Vec<(String, u16)>,
    /// Tracker URL (BEP 3 `announce`), if any.
    pub announce: Option<String>,
    /// BEP 12 `announce-list`: tiers of tracker URLs (when present, it replaces `announce`).
    pub announce_list: Vec<Vec<String>>,
    /// Free-form comment.
    pub comment: Option<String>,
    /// Creating program.
    pub created_by: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
}

impl Metainfo {
    /// Parses a whole `.torrent` file's bytes. The input must be exactly one dictionary.
    pub fn from_bytes(buf: &[u8]) -> Result<Metainfo, MetainfoError> {
        let spans = bencode::dict_spans(buf).map_err(|e| match e {
            BencodeError::Unexpected { at: 0, .. } => MetainfoError::NotADict("torrent"),
            e => e.into(),
        })?;
        let mut info_range = None;
        for e in &spans {
            if buf.get(e.key.clone()) == Some(b"info".as_slice()) {
                if info_range.is_some() {
                    return Err(MetainfoError::DuplicateInfo);
                }
                info_range = Some(e.value.clone());
            }
        }
        let info_bytes = info_range
            .and_then(|r| buf.get(r))
            .ok_or(MetainfoError::MissingInfo)?
            .to_vec();
        // `validate` above bounded the depth, so the decoder cannot blow the stack.
        let top: Value = bt_bencode::from_slice(buf)?;
        let d = top.as_dict().ok_or(MetainfoError::NotADict("torrent"))?;
        let info_value = get(d, "info").ok_or(MetainfoError::MissingInfo)?;
        let info = Info::from_value(info_value)?;
        let nodes = get(d, "nodes").map(parse_nodes).unwrap_or_default();
        Ok(Metainfo {
            info_hash: info_hash_of(&info_bytes),
            info_hash_v2: info.hybrid.then(|| info_hash_v2_of(&info_bytes)),
            info,
            info_bytes,
            nodes,
            announce: opt_string(d, "announce"),
            announce_list: get(d, "announce-list")
                .map(parse_announce_list)
                .unwrap_or_default(),
            comment: opt_string(d, "comment"),
            created_by: opt_string(d, "created by"),
            creation_date: get(d, "creation date").and_then(Value::as_i64),
        })
    }

    /// Wraps info bytes fetched with BEP 9 into a `Metainfo` (hash = SHA-1 of the bytes), so
    /// fetched metadata can be saved as a `.torrent` with [`Metainfo::to_torrent_bytes`].
    pub fn from_info_bytes(info_bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let info = Info::from_bytes(info_bytes)?;
        Ok(Metainfo {
            info_hash_v2: info.hybrid.then(|| info_hash_v2_of(info_bytes)),
            info,
            info_bytes: info_bytes.to_vec(),
            info_hash: info_hash_of(info_bytes),
            nodes: Vec::new(),
            announce: None,
            announce_list: Vec::new(),
            comment: None,
            created_by: None,
            creation_date: None,
        })
    }

    /// A hybrid's v2 info-hash cut to 20 bytes, as BEP 52 has the DHT, trackers and the
    /// peer handshake use it.
    pub fn info_hash_v2_truncated(&self) -> Option<Id> {
        let v2 = self.info_hash_v2?;
        let mut id = [0u8; 20];
        id.copy_from_slice(v2.get(..20)?);
        Some(Id(id))
    }

    /// Reads and parses a `.torrent` file, refusing files over [`MAX_TORRENT_FILE`].
    pub fn read_file(path: &Path) -> Result<Metainfo, MetainfoError> {
        use std::io::Read;
        let f = std::fs::File::open(path)?;
        let mut buf = Vec::new();
        f.take(MAX_TORRENT_FILE + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_TORRENT_FILE {
            return Err(MetainfoError::TooLarge);
        }
        Metainfo::from_bytes(&buf)
    }

    /// A magnet link for this torrent (info-hash and name).
    pub fn magnet(&self) -> Magnet {
        Magnet {
            info_hash: self.info_hash,
            name: Some(self.info.name.clone()),
            peers: Vec::new(),
            trackers: self.trackers().into_iter().flatten().collect(),
        }
    }

    /// The trackers to announce to, as tiers: `announce-list` when it has any URL (BEP 12),
    /// else `announce` alone.
    pub fn trackers(&self) -> Vec<Vec<String>> {
        if !self.announce_list.is_empty() {
            return self.announce_list.clone();
        }
        self.announce.iter().map(|a| vec![a.clone()]).collect()
    }

    /// Encodes a `.torrent` with the info dictionary's original bytes (so the info-hash is
    /// preserved) and the other fields re-encoded canonically (keys sorted).
    pub fn to_torrent_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.info_bytes.len() + 256);
        out.push(b'd');
        if let Some(a) = &self.announce {
            put_str(&mut out, b"announce");
            put_str(&mut out, a.as_bytes());
        }
        if !self.announce_list.is_empty() {
            put_announce_list(&mut out, &self.announce_list);
        }
        if let Some(c) = &self.comment {
            put_str(&mut out, b"comment");
            put_str(&mut out, c.as_bytes());
        }
        if let Some(c) = &self.created_by {
            put_str(&mut out, b"created by");
            put_str(&mut out, c.as_bytes());
        }
        if let Some(t) = self.creation_date {
            put_str(&mut out, b"creation date");
            put_int(&mut out, t);
        }
        put_str(&mut out, b"info");
        out.extend_from_slice(&self.info_bytes);
        if !self.nodes.is_empty() {
            put_nodes(&mut out, &self.nodes);
        }
        out.push(b'e');
        out
    }
}

/// Appends a bencoded `announce-list` key and its tiers (BEP 12).
pub(crate) fn put_announce_list(out: &mut Vec<u8>, tiers: &[Vec<String>]) {
    put_str(out, b"announce-list");
    out.push(b'l');
    for tier in tiers {
        out.push(b'l');
        for u in tier {
            put_str(out, u.as_bytes());
        }
        out.push(b'e');
    }
    out.push(b'e');
}

/// Most tiers and URLs per tier kept from `announce-list` (a torrent is untrusted input).
const MAX_ANNOUNCE_TIERS: usize = 64;

/// BEP 12 `announce-list`: a list of tiers, each a list of URL strings. Entries of the wrong
/// type and empty tiers are skipped, not fatal; at most 64 tiers of 64 URLs are kept.
fn parse_announce_list(v: &Value) -> Vec<Vec<String>> {
    let Some(list) = v.as_list() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|tier| {
            let urls: Vec<String> = tier
                .as_list()?
                .iter()
                .filter_map(|u| u.as_str().map(|s| s.trim().to_string()))
                .filter(|s| !s.is_empty())
                .take(MAX_ANNOUNCE_TIERS)
                .collect();
            (!urls.is_empty()).then_some(urls)
        })
        .take(MAX_ANNOUNCE_TIERS)
        .collect()
}

/// Appends a bencoded `nodes` key and list of `[host, port]` pairs.
pub(crate) fn put_nodes(out: &mut Vec<u8>, nodes: &[(String, u16)]) {
    put_str(out, b"nodes");
    out.push(b'l');
    for (h, p) in nodes {
        out.push(b'l');
        put_str(out, h.as_bytes());
        put_int(out, i64::from(*p));
        out.push(b'e');
    }
    out.push(b'e');
}

/// Appends a bencoded byte string.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

/// Appends a bencoded integer.
pub(crate) fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

/// BEP 5 `nodes`: a list of `[host, port]`; malformed entries are skipped, not fatal.
fn parse_nodes(v: &Value) -> Vec<(String, u16)> {
    let Some(list) = v.as_list() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|n| {
            let pair = n.as_list()?;
            let host = pair.first()?.as_str()?.trim();
            let port = u16::try_from(pair.get(1)?.as_u64()?).ok()?;
            (!host.is_empty() && port != 0).then(|| (host.to_string(), port))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn announce_list_tiers_parse_leniently() {
        let info = single_info("x", 16384, b"abc");
        let mut t = b"d8:announce12:http://a/ann13:announce-listll12:http://a/ann9:udp://b:1eli5eelel10:udp://c:2 ee4:info".to_vec();
        t.extend_from_slice(&info);
        t.push(b'e');
        let m = Metainfo::from_bytes(&t).unwrap();
        // The int, the empty tier are skipped; URLs are trimmed.
        assert_eq!(
            m.announce_list,
            vec![
                vec!["http://a/ann".to_string(), "udp://b:1".into()],
                vec!["udp://c:2".into()]
            ]
        );
        assert_eq!(m.trackers(), m.announce_list);
        let again = Metainfo::from_bytes(&m.to_torrent_bytes()).unwrap();
        assert_eq!(again, m);
        // A wrong type is no error: no tiers, the plain announce is used.
        let mut t = b"d8:announce12:http://a/ann13:announce-listi3e4:info".to_vec();
        t.extend_from_slice(&info);
        t.push(b'e');
        let m = Metainfo::from_bytes(&t).unwrap();
        assert!(m.announce_list.is_empty());
        assert_eq!(m.trackers(), vec![vec!["http://a/ann".to_string()]]);
    }

    /// Builds an info dict by hand so tests control the exact bytes.
    pub(crate) fn single_info(name: &str, piece_len: u64, data: &[u8]) -> Vec<u8> {
        let mut pieces = Vec::new();
        for c in data.chunks(piece_len as usize) {
            pieces.extend_from_slice(&Sha1::digest(c));
        }
        let mut out = b"d".to_vec();
        put_str(&mut out, b"length");
        put_int(&mut out, data.len() as i64);
        put_str(&mut out, b"name");
        put_str(&mut out, name.as_bytes());
        put_str(&mut out, b"piece length");
        put_int(&mut out, piece_len as i64);
        put_str(&mut out, b"pieces");
        put_str(&mut out, &pieces);
        out.push(b'e');
        out
    }

    fn wrap(info: &[u8]) -> Vec<u8> {
        let mut t = b"d".to_vec();
        put_str(&mut t, b"info");
        t.extend_from_slice(info);
        t.push(b'e');
        t
    }

    #[test]
    fn single_file() {
        let info = single_info("a.bin", 4, b"0123456789");
        let mut t = b"d".to_vec();
        put_str(&mut t, b"comment");
        put_str(&mut t, b"hi");
        put_str(&mut t, b"info");
        t.extend_from_slice(&info);
        put_nodes(
            &mut t,
            &[("router.example".into(), 6881), ("1.2.3.4".into(), 1)],
        );
        t.push(b'e');
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.info.name, "a.bin");
        assert!(m.info.single_file);
        assert_eq!(m.info.files.len(), 1);
        assert_eq!(m.info.files[0].path.to_string(), "a.bin");
        assert_eq!(m.info.total_length(), 10);
        assert_eq!(m.info.num_pieces(), 3);
        assert_eq!(m.info_bytes, info);
        assert_eq!(m.info_hash, Id(Sha1::digest(&info).into()));
        assert_eq!(
            m.nodes,
            vec![("router.example".into(), 6881), ("1.2.3.4".into(), 1)]
        );
        assert_eq!(m.comment.as_deref(), Some("hi"));
        assert!(!m.info.private);
        assert_eq!(m.magnet().info_hash, m.info_hash);
        // Re-encoding keeps the info bytes, hence the hash.
        let again = Metainfo::from_bytes(&m.to_torrent_bytes()).unwrap();
        assert_eq!(again, m);
        // BEP 9 path.
        let f = Metainfo::from_info_bytes(&info).unwrap();
        assert_eq!(f.info_hash, m.info_hash);
        assert_eq!(Info::from_bytes(&info).unwrap(), m.info);
    }

    #[test]
    fn multi_file_and_private() {
        let mut info = b"d5:filesl".to_vec();
        info.extend_from_slice(b"d6:lengthi3e4:pathl3:dir1:aee");
        info.extend_from_slice(b"d6:lengthi0e4:pathl5:emptyee");
        info.extend_from_slice(b"d6:lengthi5e4:pathl1:bee");
        info.extend_from_slice(b"e4:name4:root12:piece lengthi4e6:pieces40:");
        info.extend_from_slice(&[7u8; 40]);
        info.extend_from_slice(b"7:privatei1ee");
        let m = Metainfo::from_bytes(&wrap(&info)).unwrap();
        let paths: Vec<String> = m.info.files.iter().map(|f| f.path.to_string()).collect();
        assert_eq!(paths, ["root/dir/a", "root/empty", "root/b"]);
        assert!(!m.info.single_file);
        assert!(m.info.private);
        assert_eq!(m.info.total_length(), 8);
        assert_eq!(m.info.layout().unwrap().num_pieces(), 2);
    }

    #[test]
    fn hash_covers_original_bytes_with_unsorted_keys() {
        // Keys deliberately out of order: a re-encoding would sort them and change the hash.
        let mut info = b"d4:name1:x6:lengthi3e6:pieces20:".to_vec();
        info.extend_from_slice(&[1u8; 20]);
        info.extend_from_slice(b"12:piece lengthi16ee");
        let mut t = b"d5:nodesle4:info".to_vec();
        t.extend_from_slice(&info);
        t.push(b'e');
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.info_hash, info_hash_of(&info));
        let canonical =
            bt_bencode::to_vec(&bt_bencode::from_slice::<Value>(&info).unwrap()).unwrap();
        assert_ne!(canonical, info);
        assert_ne!(m.info_hash, info_hash_of(&canonical));
    }

    /// BEP 47: `p` marks padding (libtorrent repeats `.pad/N` names, which must not count as
    /// a clash), `x` executable; BitComet's old padding names count too. BEP 52 hybrid:
    /// `meta version` 2 beside `pieces`, with a v2 hash.
    #[test]
    fn padding_executable_and_hybrid() {
        let mut info = b"d5:filesl".to_vec();
        info.extend_from_slice(b"d6:lengthi3e4:pathl1:aee");
        info.extend_from_slice(b"d4:attr1:p6:lengthi1e4:pathl4:.pad1:1ee");
        info.extend_from_slice(b"d4:attr2:xh6:lengthi3e4:pathl1:bee");
        info.extend_from_slice(b"d4:attr1:p6:lengthi1e4:pathl4:.pad1:1ee");
        info.extend_from_slice(b"d6:lengthi4e4:pathl21:_____padding_file_0_xee");
        info.extend_from_slice(b"d6:lengthi4e4:pathl1:cee");
        info.extend_from_slice(b"e12:meta versioni2e4:name4:root12:piece lengthi4e6:pieces80:");
        info.extend_from_slice(&[7u8; 80]);
        info.push(b'e');
        let m = Metainfo::from_bytes(&wrap(&info)).unwrap();
        let flags: Vec<(bool, bool)> = m.info.files.iter().map(|f| (f.pad, f.executable)).collect();
        assert_eq!(
            flags,
            [
                (false, false),
                (true, false),
                (false, true),
                (true, false),
                (true, false),
                (false, false)
            ]
        );
        assert!(m.info.hybrid);
        assert_eq!(m.info_hash_v2, Some(info_hash_v2_of(&info)));
        // Two real files of one name still clash.
        let mut dup = b"d5:filesl".to_vec();
        dup.extend_from_slice(b"d6:lengthi1e4:pathl1:aeed6:lengthi1e4:pathl1:aee");
        dup.extend_from_slice(b"e4:name1:r12:piece lengthi4e6:pieces20:");
        dup.extend_from_slice(&[7u8; 20]);
        dup.push(b'e');
        assert!(matches!(err_of(&dup), MetainfoError::DuplicatePath(_)));
        // v1 torrents have no v2 hash.
        let mut v1 = b"d6:lengthi3e4:name1:x12:piece lengthi16e6:pieces20:".to_vec();
        v1.extend_from_slice(&[1u8; 20]);
        v1.push(b'e');
        assert_eq!(Metainfo::from_bytes(&wrap(&v1)).unwrap().info_hash_v2, None);
    }

    /// The resume record and parts file are named after the saved name, never the raw one.
    #[test]
    fn side_files_use_the_sanitised_name() {
        let mut info = b"d6:lengthi3e4:name3:a\x01b12:piece lengthi16e6:pieces20:".to_vec();
        info.extend_from_slice(&[1u8; 20]);
        info.push(b'e');
        let m = Metainfo::from_bytes(&wrap(&info)).unwrap();
        let side = m.info.side_file_name("dhtnode-resume");
        assert!(!side.contains('\u{1}'), "{side:?}");
        assert_eq!(
            side,
            format!(".{}.dhtnode-resume", m.info.files[0].path.as_str())
        );
    }

    fn err_of(info: &[u8]) -> MetainfoError {
        Metainfo::from_bytes(&wrap(info)).unwrap_err()
    }

    #[test]
    fn hostile_infos() {
        // path traversal
        let mut i =
            b"d5:filesld6:lengthi1e4:pathl2:..6:passwdeee4:name1:r12:piece lengthi4e6:pieces20:"
                .to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(
            err_of(&i),
            MetainfoError::Path(PathError::ParentDir)
        ));
        // traversal through the name
        let info = single_info("..", 4, b"abc");
        assert!(matches!(err_of(&info), MetainfoError::Path(_)));
        let info = single_info("a/b", 4, b"abc");
        assert!(matches!(err_of(&info), MetainfoError::Path(_)));
        // duplicate paths / file-vs-dir conflict
        for files in [
            "d6:lengthi1e4:pathl1:aeed6:lengthi1e4:pathl1:aee",
            "d6:lengthi1e4:pathl1:aeed6:lengthi1e4:pathl1:a1:bee",
            "d6:lengthi1e4:pathl1:a1:beed6:lengthi1e4:pathl1:aee",
        ] {
            let mut i =
                format!("d5:filesl{files}e4:name1:r12:piece lengthi4e6:pieces20:").into_bytes();
            i.extend_from_slice(&[0u8; 20]);
            i.push(b'e');
            assert!(
                matches!(err_of(&i), MetainfoError::DuplicatePath(_)),
                "{files}"
            );
        }
        // piece length 0 / too big
        let mut i = b"d6:lengthi3e4:name1:x12:piece lengthi0e6:pieces20:".to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(
            err_of(&i),
            MetainfoError::Layout(LayoutError::PieceLength(0))
        ));
        let mut i = b"d6:lengthi3e4:name1:x12:piece lengthi67108865e6:pieces20:".to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(err_of(&i), MetainfoError::Layout(_)));
        // pieces not a multiple of 20
        let i = b"d6:lengthi3e4:name1:x12:piece lengthi4e6:pieces19:aaaaaaaaaaaaaaaaaaae";
        assert!(matches!(
            err_of(i),
            MetainfoError::PiecesNotMultipleOf20(19)
        ));
        // huge length, one piece hash
        let mut i =
            b"d6:lengthi18446744073709551615e4:name1:x12:piece lengthi16384e6:pieces20:".to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(
            err_of(&i),
            MetainfoError::PieceCount { .. } | MetainfoError::Layout(_)
        ));
        // lengths that overflow u64 when summed
        let mut i = b"d5:filesld6:lengthi18446744073709551615e4:pathl1:aeed6:lengthi1e4:pathl1:beee4:name1:r12:piece lengthi4e6:pieces20:".to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(
            err_of(&i),
            MetainfoError::Layout(LayoutError::Overflow)
        ));
        // negative length
        let mut i = b"d6:lengthi-3e4:name1:x12:piece lengthi4e6:pieces20:".to_vec();
        i.extend_from_slice(&[0u8; 20]);
        i.push(b'e');
        assert!(matches!(err_of(&i), MetainfoError::WrongType("length")));
        // too few hashes
        let info = single_info("x", 4, b"abcdefgh");
        let short = String::from_utf8_lossy(&info).replace("pieces40:", "pieces20:");
        assert!(Metainfo::from_bytes(&wrap(short.as_bytes())).is_err());
        // v2 only
        assert!(matches!(
            err_of(b"d9:file treede12:meta versioni2e4:name1:x12:piece lengthi16384ee"),
            MetainfoError::V2Only
        ));
        // missing things / wrong types
        assert!(matches!(err_of(b"de"), MetainfoError::Missing("name")));
        assert!(matches!(err_of(b"i1e"), MetainfoError::NotADict("info")));
        assert!(matches!(
            Metainfo::from_bytes(b"d3:fooi1ee"),
            Err(MetainfoError::MissingInfo)
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"li1ee"),
            Err(MetainfoError::NotADict(_))
        ));
        let info = single_info("x", 4, b"abc");
        let mut dup = b"d4:info".to_vec();
        dup.extend_from_slice(&info);
        dup.extend_from_slice(b"4:info");
        dup.extend_from_slice(&info);
        dup.push(b'e');
        assert!(matches!(
            Metainfo::from_bytes(&dup),
            Err(MetainfoError::DuplicateInfo)
        ));
    }

    #[test]
    fn malformed_and_truncated_never_panic() {
        let info = single_info("x", 4, b"abcdefghij");
        let t = wrap(&info);
        for n in 0..t.len() {
            assert!(Metainfo::from_bytes(&t[..n]).is_err());
        }
        let mut deep = b"d4:info".to_vec();
        deep.extend(vec![b'l'; 100_000]);
        assert!(matches!(
            Metainfo::from_bytes(&deep),
            Err(MetainfoError::Bencode(_))
        ));
        let mut trailing = t.clone();
        trailing.push(b'x');
        assert!(Metainfo::from_bytes(&trailing).is_err());
        // Huge integer: the scanner accepts the syntax, the decoder refuses it.
        assert!(Metainfo::from_bytes(b"d4:infoi99999999999999999999999999ee").is_err());
        // Flip every byte to a few values: must never panic.
        for i in 0..t.len() {
            for b in [b'e', b'0', b'9', b'd', b'l', b'i', b':', b'-'] {
                let mut m = t.clone();
                m[i] = b;
                let _ = Metainfo::from_bytes(&m);
            }
        }
        // Malformed nodes are skipped.
        let mut t2 = b"d4:info".to_vec();
        t2.extend_from_slice(&info);
        t2.extend_from_slice(b"5:nodesll1:hi70000eel0:i1eei5el1:ai0eel1:bi2eeee");
        assert_eq!(
            Metainfo::from_bytes(&t2).unwrap().nodes,
            vec![("b".into(), 2)]
        );
    }

    #[test]
    fn read_file_works_and_bounds_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.torrent");
        std::fs::write(&p, wrap(&single_info("x", 4, b"abc"))).unwrap();
        assert_eq!(Metainfo::read_file(&p).unwrap().info.name, "x");
        assert!(matches!(
            Metainfo::read_file(&dir.path().join("missing")),
            Err(MetainfoError::Io(_))
        ));
    }
}
