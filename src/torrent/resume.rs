//! A durable record of which pieces are verified on disk, so a restarted download does not
//! re-hash everything.
//!
//! The invariant: a `kill -9` (or power loss) at any moment never leaves a piece recorded as
//! verified whose bytes on disk are wrong. It holds by construction:
//! - only a [`VerifiedPiece`] (made by [`Storage`] after checking the hash) can be marked;
//! - [`ResumeFile::flush`] first `fdatasync`s every file the storage wrote ([`Storage::sync`]),
//!   and only then writes the record: to a temporary file, `fsync`, `rename` over the old
//!   record, `fsync` the directory. A crash leaves either the old record or the new one.
//!
//! Batching is the caller's choice: call [`ResumeFile::mark_verified`] per piece and
//! [`ResumeFile::flush`] every N pieces or T ms ([`ResumeFile::pending`] helps); no clocks here.
//! Loading tolerates anything (missing, truncated, corrupt, another torrent's record, the
//! older stamp-less format): the result is then simply empty and the data gets re-checked.
//!
//! The record also keeps each file's [`FileStamp`] (size, mtime, inode) as of the sync that
//! covered it, so a later start can tell which files were deleted, truncated or changed since
//! and re-check only the pieces touching them ([`crate::torrent::check`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::id::Id;
use crate::torrent::metainfo::Info;
use crate::torrent::storage::{FileFound, FileStamp, Storage, StorageError, VerifiedPiece};

const MAGIC: &[u8; 8] = b"DHTNRES2";

/// Bytes per file in the record: known flag, size, mtime seconds, mtime nanoseconds, inode.
const STAMP_LEN: usize = 1 + 8 + 8 + 4 + 8;

/// Most files a record may describe (a bound on what a corrupt record makes us read).
const MAX_RECORD_FILES: usize = 1 << 21;

/// Why a resume record could not be saved (loading never fails).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// Syncing the piece data failed: the record was not written.
    #[error("cannot sync piece data")]
    Storage(#[from] StorageError),
    /// Writing the record failed; the previous record (if any) is intact.
    #[error("cannot write resume file {}: {source}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// A fixed-size set of piece indices, stored as in the peer wire's `bitfield` message
/// (piece 0 is the high bit of byte 0), so it can be sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitfield {
    /// An empty set for `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; (len as usize).div_ceil(8)],
            len,
        }
    }

    /// Every one of `len` pieces (a seed, or BEP 6 `have_all`).
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i, true);
        }
        b
    }

    /// Parses wire bytes for `len` pieces; `None` if the size is wrong or spare bits are set
    /// (BEP 3 says a peer sending that should be dropped).
    pub fn from_bytes(bytes: &[u8], len: u32) -> Option<Bitfield> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let spare = (bytes.len() * 8) as u64 - u64::from(len);
        if spare > 0 {
            let last = *bytes.last()?;
            if last & ((1u8 << spare) - 1) != 0 {
                return None;
            }
        }
        Some(Bitfield {
            bytes: bytes.to_vec(),
            len,
        })
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True if it ranges over zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `i` is in the set (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.len
            && self
                .bytes
                .get(i as usize / 8)
                .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Adds or removes piece `i`; returns false (and does nothing) when out of range.
    pub fn set(&mut self, i: u32, v: bool) -> bool {
        if i >= self.len {
            return false;
        }
        match self.bytes.get_mut(i as usize / 8) {
            Some(b) if v => *b |= 0x80 >> (i % 8),
            Some(b) => *b &= !(0x80 >> (i % 8)),
            None => return false,
        }
        true
    }

    /// How many pieces are in the set.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every piece is in the set.
    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    /// The piece indices in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

/// The on-disk record of verified pieces for one torrent.
#[derive(Debug)]
pub struct ResumeFile {
    path: PathBuf,
    info_hash: Id,
    verified: Bitfield,
    /// Per file, its stamp when last synced or checked (`None`: unknown, trust nothing).
    stamps: Vec<Option<FileStamp>>,
    pending: usize,
}

impl ResumeFile {
    /// Where the record lives by default: `<output>/.<name>.dhtnode-resume`, next to the data
    /// (the name is shortened so the file name stays within filesystem limits).
    pub fn default_path(output_dir: &Path, info: &Info) -> PathBuf {
        output_dir.join(info.side_file_name("dhtnode-resume"))
    }

    /// Loads the record at `path` for this torrent. A missing, unreadable, truncated or
    /// corrupt file, or one for another torrent or piece count, gives an empty record.
    pub fn load(path: &Path, info_hash: Id, num_pieces: u32) -> ResumeFile {
        let (verified, stamps) = read_record(path, info_hash, num_pieces)
            .unwrap_or_else(|| (Bitfield::new(num_pieces), Vec::new()));
        ResumeFile {
            path: path.to_path_buf(),
            info_hash,
            verified,
            stamps,
            pending: 0,
        }
    }

    /// The pieces recorded (or marked since loading) as verified.
    pub fn verified(&self) -> &Bitfield {
        &self.verified
    }

    /// Each file's stamp as the record saw it (empty when the record had none: every file is
    /// then unknown).
    pub fn stamps(&self) -> &[Option<FileStamp>] {
        &self.stamps
    }

    /// Replaces the record's view with what the start-up check established: `trusted` are
    /// the pieces still known good, `found` the files as they are now. Durable at the next
    /// flush (counted as pending when anything changed).
    pub fn adopt(&mut self, trusted: Bitfield, found: &[FileFound]) {
        let stamps: Vec<Option<FileStamp>> = found.iter().map(|f| f.stamp).collect();
        if trusted != self.verified || stamps != self.stamps {
            self.pending += 1;
        }
        self.verified = trusted;
        self.stamps = stamps;
    }

    /// Where the record is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes a piece as verified in memory; it becomes durable at the next [`flush`].
    /// Returns false if the index is out of range (a `VerifiedPiece` of another torrent).
    ///
    /// [`flush`]: ResumeFile::flush
    pub fn mark_verified(&mut self, piece: VerifiedPiece) -> bool {
        let i = piece.index();
        if self.verified.get(i) {
            return true;
        }
        let ok = self.verified.set(i, true);
        if ok {
            self.pending += 1;
        }
        ok
    }

    /// Forgets a piece (e.g. a recheck found it damaged); durable at the next flush.
    pub fn unmark(&mut self, piece: u32) {
        if self.verified.get(piece) {
            self.verified.set(piece, false);
            self.pending += 1;
        }
    }

    /// Changes since the last successful flush: the caller's batching signal.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Makes the record durable: syncs the storage's data first, then atomically replaces the
    /// record file. Does nothing if there are no pending changes.
    pub fn flush(&mut self, storage: &Storage) -> Result<(), ResumeError> {
        if self.pending == 0 {
            return Ok(());
        }
        let synced = storage.sync()?;
        let n = storage.layout().num_files();
        if self.stamps.len() != n {
            self.stamps = storage.found().iter().map(|f| f.stamp).collect();
            self.stamps.resize(n, None);
        }
        // The files just synced changed: record them as they are now (a file that cannot be
        // stat'ed is recorded unknown, so its pieces are re-checked next time).
        for i in synced {
            if let Some(s) = self.stamps.get_mut(i) {
                *s = storage.stamp(i).ok();
            }
        }
        self.write_record()?;
        self.pending = 0;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 20 + 4 + self.verified.as_bytes().len() + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.info_hash.0);
        out.extend_from_slice(&self.verified.len().to_be_bytes());
        out.extend_from_slice(self.verified.as_bytes());
        out.extend_from_slice(&(self.stamps.len() as u32).to_be_bytes());
        for st in &self.stamps {
            match st {
                Some(st) => {
                    out.push(1);
                    out.extend_from_slice(&st.size.to_be_bytes());
                    out.extend_from_slice(&st.mtime_sec.to_be_bytes());
                    out.extend_from_slice(&st.mtime_nsec.to_be_bytes());
                    out.extend_from_slice(&st.inode.to_be_bytes());
                }
                None => out.extend_from_slice(&[0u8; STAMP_LEN]),
            }
        }
        let sum = Sha1::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn write_record(&self) -> Result<(), ResumeError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ResumeError::Io { path, source }
        };
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let bytes = self.encode();
        {
            let mut f = File::create(&tmp).map_err(err(&tmp))?;
            f.write_all(&bytes).map_err(err(&tmp))?;
            f.sync_all().map_err(err(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err(&self.path))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir))?;
        Ok(())
    }
}

fn read_record(
    path: &Path,
    info_hash: Id,
    num_pieces: u32,
) -> Option<(Bitfield, Vec<Option<FileStamp>>)> {
    let nbytes = (num_pieces as usize).div_ceil(8);
    let head = 8 + 20 + 4 + nbytes + 4;
    let limit = head + MAX_RECORD_FILES * STAMP_LEN + 20;
    let mut buf = Vec::new();
    File::open(path)
        .ok()?
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .ok()?;
    let nfiles = u32::from_be_bytes(buf.get(head - 4..head)?.try_into().ok()?) as usize;
    if nfiles > MAX_RECORD_FILES || buf.len() != head + nfiles * STAMP_LEN + 20 {
        return None;
    }
    let (body, sum) = buf.split_at(buf.len() - 20);
    if Sha1::digest(body).as_slice() != sum {
        return None;
    }
    if body.get(..8)? != MAGIC || body.get(8..28)? != info_hash.0 {
        return None;
    }
    let n = u32::from_be_bytes(body.get(28..32)?.try_into().ok()?);
    if n != num_pieces {
        return None;
    }
    let bits = Bitfield::from_bytes(body.get(32..32 + nbytes)?, num_pieces)?;
    let stamps = body
        .get(head..)?
        .chunks_exact(STAMP_LEN)
        .map(parse_stamp)
        .collect::<Option<Vec<_>>>()?;
    Some((bits, stamps))
}

/// One file's stamp from the record: `Some(None)` for an unknown file, `None` if malformed.
fn parse_stamp(b: &[u8]) -> Option<Option<FileStamp>> {
    let be8 = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { b.get(r)?.try_into().ok() };
    match b.first()? {
        0 => Some(None),
        1 => Some(Some(FileStamp {
            size: u64::from_be_bytes(be8(1..9)?),
            mtime_sec: i64::from_be_bytes(be8(9..17)?),
            mtime_nsec: u32::from_be_bytes(b.get(17..21)?.try_into().ok()?),
            inode: u64::from_be_bytes(be8(21..29)?),
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::metainfo::FileEntry;
    use crate::torrent::path::SafePath;
    use crate::torrent::storage::OpenMode;

    #[test]
    fn bitfield_basics() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        assert!(b.set(0, true) && b.set(9, true));
        assert!(!b.set(10, true));
        assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(10) && !b.get(u32::MAX));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x40], 10), Some(b.clone()));
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x60], 10), None);
        assert_eq!(Bitfield::from_bytes(&[0x80], 10), None);
        assert!(Bitfield::new(0).is_complete());
        let mut full = Bitfield::new(3);
        (0..3).for_each(|i| {
            full.set(i, true);
        });
        assert!(full.is_complete());
        b.set(0, false);
        assert_eq!(b.count(), 1);
    }

    fn setup(dir: &Path) -> (Info, Vec<u8>, Storage) {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 7) as u8).collect();
        let info = Info {
            name: "t".into(),
            piece_length: 16,
            pieces: data.chunks(16).map(|c| Sha1::digest(c).into()).collect(),
            files: vec![FileEntry::plain(SafePath::parse("t").unwrap(), 100)],
            private: false,
            single_file: true,
            hybrid: false,
        };
        let s = Storage::open(dir, &info, OpenMode::Create).unwrap();
        (info, data, s)
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (info, data, s) = setup(dir.path());
        let id = Id([9; 20]);
        let path = ResumeFile::default_path(dir.path(), &info);
        assert_eq!(path, dir.path().join(".t.dhtnode-resume"));
        let mut r = ResumeFile::load(&path, id, 7);
        assert_eq!(r.verified().count(), 0);
        r.flush(&s).unwrap();
        assert!(!path.exists(), "nothing pending, nothing written");
        for p in [0u32, 3, 6] {
            let size = s.layout().piece_size(p).unwrap() as usize;
            let off = p as usize * 16;
            let v = s.write_piece(p, &data[off..off + size]).unwrap();
            assert!(r.mark_verified(v));
        }
        assert_eq!(r.pending(), 3);
        r.flush(&s).unwrap();
        assert_eq!(r.pending(), 0);
        let back = ResumeFile::load(&path, id, 7);
        assert_eq!(back.verified().iter().collect::<Vec<_>>(), vec![0, 3, 6]);
        // Another torrent, or another piece count: empty.
        assert_eq!(
            ResumeFile::load(&path, Id([8; 20]), 7).verified().count(),
            0
        );
        assert_eq!(ResumeFile::load(&path, id, 8).verified().count(), 0);
        // Unmark persists too.
        r.unmark(3);
        r.flush(&s).unwrap();
        let back = ResumeFile::load(&path, id, 7);
        assert_eq!(back.verified().iter().collect::<Vec<_>>(), vec![0, 6]);
        assert!(!PathBuf::from(format!("{}.tmp", path.display())).exists());
    }

    #[test]
    fn corrupt_or_truncated_record_loads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (_info, data, s) = setup(dir.path());
        let id = Id([1; 20]);
        let path = dir.path().join("rec");
        let mut r = ResumeFile::load(&path, id, 7);
        let _ = r.mark_verified(s.write_piece(1, &data[16..32]).unwrap());
        r.flush(&s).unwrap();
        let good = std::fs::read(&path).unwrap();
        for n in 0..good.len() {
            std::fs::write(&path, &good[..n]).unwrap();
            assert_eq!(ResumeFile::load(&path, id, 7).verified().count(), 0);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(
                ResumeFile::load(&path, id, 7).verified().count(),
                0,
                "byte {i}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        std::fs::write(&path, &long).unwrap();
        assert_eq!(ResumeFile::load(&path, id, 7).verified().count(), 0);
        std::fs::write(&path, vec![0xffu8; 1 << 20]).unwrap();
        assert_eq!(ResumeFile::load(&path, id, 7).verified().count(), 0);
        std::fs::write(&path, &good).unwrap();
        assert_eq!(ResumeFile::load(&path, id, 7).verified().count(), 1);
        // A directory where the file should be: still just empty.
        assert_eq!(ResumeFile::load(dir.path(), id, 7).verified().count(), 0);
    }

    #[test]
    fn flush_syncs_data_before_recording() {
        let dir = tempfile::tempdir().unwrap();
        let (_info, data, s) = setup(dir.path());
        let path = dir.path().join("rec");
        let mut r = ResumeFile::load(&path, Id([2; 20]), 7);
        let v = s.write_piece(2, &data[32..48]).unwrap();
        let _ = r.mark_verified(v);
        // A failing record write leaves pending changes for a retry.
        let mut bad = ResumeFile::load(&dir.path().join("no/such/dir/rec"), Id([2; 20]), 7);
        let _ = bad.mark_verified(v);
        assert!(matches!(bad.flush(&s), Err(ResumeError::Io { .. })));
        assert_eq!(bad.pending(), 1);
        r.flush(&s).unwrap();
        // Whatever the record says is verified must match on disk.
        let back = ResumeFile::load(&path, Id([2; 20]), 7);
        for p in back.verified().iter() {
            assert!(s.verify_piece(p).unwrap().is_some());
        }
        assert_eq!(back.verified().count(), 1);
    }

    #[test]
    fn the_record_keeps_file_stamps_and_a_changed_file_loses_its_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (info, data, s) = setup(dir.path());
        let id = Id([4; 20]);
        let path = dir.path().join("rec");
        let mut r = ResumeFile::load(&path, id, 7);
        assert!(r.stamps().is_empty());
        for p in 0..7u32 {
            let size = s.layout().piece_size(p).unwrap() as usize;
            let off = p as usize * 16;
            let _ = r.mark_verified(s.write_piece(p, &data[off..off + size]).unwrap());
        }
        r.flush(&s).unwrap();
        let back = ResumeFile::load(&path, id, 7);
        assert_eq!(back.stamps(), &[Some(s.stamp(0).unwrap())]);
        drop(s);
        let plan_of = |s: &Storage, r: &ResumeFile| {
            crate::torrent::check::plan(s.layout(), s.found(), r.verified(), r.stamps(), false)
        };
        // Unchanged: the record vouches for every piece.
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        let plan = plan_of(&s, &back);
        assert!(plan.trusted.is_complete() && plan.to_check.is_empty());
        drop(s);
        // Rewritten in place with the same bytes but a new mtime: every piece is hashed.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("t"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        let plan = plan_of(&s, &back);
        assert_eq!(plan.trusted.count(), 0);
        assert_eq!(plan.to_check, (0..7).collect::<Vec<_>>());
        // Adopting the check's outcome rewrites the record with the new stamp.
        let mut r = back;
        r.adopt(plan.trusted, s.found());
        assert_eq!(r.pending(), 1);
        for p in plan.to_check {
            let _ = r.mark_verified(s.verify_piece(p).unwrap().unwrap());
        }
        r.flush(&s).unwrap();
        let again = ResumeFile::load(&path, id, 7);
        assert_eq!(again.verified().count(), 7);
        assert_eq!(again.stamps(), &[s.found()[0].stamp]);
        // The old stamp-less format loads empty (its data is then checked).
        let mut v1 = std::fs::read(&path).unwrap();
        v1[..8].copy_from_slice(b"DHTNRES1");
        std::fs::write(&path, &v1).unwrap();
        assert_eq!(ResumeFile::load(&path, id, 7).verified().count(), 0);
    }

    #[test]
    fn long_names_are_shortened() {
        let mut info = Info {
            name: "é".repeat(127),
            piece_length: 1,
            pieces: vec![],
            files: vec![],
            private: false,
            single_file: true,
            hybrid: false,
        };
        let p = ResumeFile::default_path(Path::new("/o"), &info);
        assert!(p.file_name().unwrap().len() <= 255);
        info.name = "x".into();
        assert_eq!(
            ResumeFile::default_path(Path::new("/o"), &info),
            Path::new("/o/.x.dhtnode-resume")
        );
    }
}
