//! What a start-up may trust: which pieces the resume record vouches for, which must be hashed
//! again because the bytes under them may have changed, and which are simply to be fetched.
//!
//! A record only vouches for pieces whose every file is exactly as the record saw it (same
//! size, mtime and inode, and all of its bytes were there before this run). A file that is
//! missing, shorter, longer, touched or replaced since loses that: the pieces touching it are
//! hashed from whatever bytes were there, and what fails (or was never there) is fetched.
//! Data without a record (copied from elsewhere) is the same case with every file unknown.
//! Pure computation on what [`Storage::open`](super::Storage::open) found; no I/O.

use crate::torrent::layout::Layout;
use crate::torrent::resume::Bitfield;
use crate::torrent::storage::{FileFound, FileStamp};

/// The outcome of comparing the record with the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPlan {
    /// Pieces the record vouches for and whose files are unchanged: not read at all.
    pub trusted: Bitfield,
    /// Pieces to hash from disk (ascending): some of their bytes were there before this run
    /// in a file the record cannot vouch for.
    pub to_check: Vec<u32>,
    /// Files the record could not vouch for (changed, missing, unknown), for the log.
    pub changed_files: Vec<usize>,
}

/// Compares the record (`record_bits`, `record_stamps`) with what was `found` on disk. With
/// `recheck`, nothing is trusted and every piece with bytes on disk is hashed.
pub fn plan(
    layout: &Layout,
    found: &[FileFound],
    record_bits: &Bitfield,
    record_stamps: &[Option<FileStamp>],
    recheck: bool,
) -> CheckPlan {
    let n = layout.num_files();
    let stamps_usable = record_stamps.len() == n && found.len() == n;
    let unchanged: Vec<bool> = (0..n)
        .map(|i| {
            !recheck
                && stamps_usable
                && match (record_stamps.get(i), found.get(i), layout.file_length(i)) {
                    (Some(Some(rec)), Some(f), Some(len)) => {
                        f.present == len && f.stamp.as_ref() == Some(rec) && rec.size == len
                    }
                    _ => false,
                }
        })
        .collect();
    let present = |file: usize| found.get(file).map_or(0, |f| f.present);
    let is_unchanged = |file: usize| unchanged.get(file).copied().unwrap_or(false);
    let num_pieces = layout.num_pieces();
    let mut trusted = Bitfield::new(num_pieces);
    let mut to_check = Vec::new();
    for p in 0..num_pieces {
        let Ok(segs) = layout.piece_segments(p) else {
            continue;
        };
        if record_bits.get(p) && segs.iter().all(|s| is_unchanged(s.file)) {
            trusted.set(p, true);
        } else if segs
            .iter()
            .any(|s| !is_unchanged(s.file) && s.offset < present(s.file))
        {
            to_check.push(p);
        }
    }
    let changed_files = (0..n)
        .filter(|&i| !is_unchanged(i) && layout.file_length(i).is_some_and(|l| l > 0))
        .collect();
    CheckPlan {
        trusted,
        to_check,
        changed_files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, mtime: i64) -> FileStamp {
        FileStamp {
            size,
            mtime_sec: mtime,
            mtime_nsec: 5,
            inode: 77,
        }
    }

    fn found(present: u64, st: Option<FileStamp>) -> FileFound {
        FileFound { present, stamp: st }
    }

    /// Files a = [0, 40), b = [40, 60), c = [60, 100), pieces of 16: 0..=1 in a, 2 spans a|b,
    /// 3 spans b|c, 4..=6 in c.
    fn setup() -> (Layout, Vec<Option<FileStamp>>, Bitfield) {
        let l = Layout::new(16, &[40, 20, 40]).unwrap();
        let rec = vec![Some(stamp(40, 1)), Some(stamp(20, 2)), Some(stamp(40, 3))];
        (l, rec, Bitfield::full(7))
    }

    #[test]
    fn unchanged_files_are_trusted_without_reading() {
        let (l, rec, bits) = setup();
        let f: Vec<FileFound> = rec.iter().map(|s| found(s.unwrap().size, *s)).collect();
        let p = plan(&l, &f, &bits, &rec, false);
        assert!(p.trusted.is_complete());
        assert!(p.to_check.is_empty());
        assert!(p.changed_files.is_empty());
        // Pieces the record lacks in unchanged files are fetched, not hashed.
        let mut some = bits.clone();
        some.set(5, false);
        let p = plan(&l, &f, &some, &rec, false);
        assert_eq!(p.trusted.count(), 6);
        assert!(!p.trusted.get(5) && p.to_check.is_empty());
    }

    #[test]
    fn a_changed_file_makes_every_piece_touching_it_unverified() {
        let (l, rec, bits) = setup();
        // b was rewritten (same size, new mtime).
        let f = vec![
            found(40, rec[0]),
            found(20, Some(stamp(20, 9))),
            found(40, rec[2]),
        ];
        let p = plan(&l, &f, &bits, &rec, false);
        assert_eq!(p.trusted.iter().collect::<Vec<_>>(), vec![0, 1, 4, 5, 6]);
        assert_eq!(p.to_check, vec![2, 3]);
        assert_eq!(p.changed_files, vec![1]);
        // Replaced by a copy with the same size and mtime: the inode tells.
        let mut copy = rec[1].unwrap();
        copy.inode += 1;
        let f = vec![found(40, rec[0]), found(20, Some(copy)), found(40, rec[2])];
        assert_eq!(plan(&l, &f, &bits, &rec, false).to_check, vec![2, 3]);
    }

    #[test]
    fn missing_and_truncated_files_hash_what_is_there_and_fetch_the_rest() {
        let (l, rec, bits) = setup();
        // a deleted (recreated empty, then sized by open), c truncated to 10 bytes.
        let f = vec![
            found(0, Some(stamp(40, 50))),
            found(20, rec[1]),
            found(10, Some(stamp(40, 51))),
        ];
        let p = plan(&l, &f, &bits, &rec, false);
        // 0..=1 lie in a (nothing there), 2 spans a and b (unchanged): fetched, not hashed.
        // 3 (b and c's first 4 bytes) and 4 (c from byte 4) have bytes of c that are there:
        // hashed. 5 and 6 start past c's 10 bytes: fetched.
        assert_eq!(p.trusted.count(), 0);
        assert_eq!(p.to_check, vec![3, 4]);
        assert_eq!(p.changed_files, vec![0, 2]);
    }

    #[test]
    fn no_record_or_recheck_hashes_everything_present() {
        let (l, rec, bits) = setup();
        let f: Vec<FileFound> = rec.iter().map(|s| found(s.unwrap().size, *s)).collect();
        // Data copied from elsewhere: no record at all.
        let p = plan(&l, &f, &Bitfield::new(7), &[], false);
        assert_eq!(p.trusted.count(), 0);
        assert_eq!(p.to_check, (0..7).collect::<Vec<_>>());
        // A record of another file count is as good as none.
        let p = plan(&l, &f, &bits, &rec[..2], false);
        assert_eq!(p.to_check.len(), 7);
        // --recheck ignores a perfect record.
        let p = plan(&l, &f, &bits, &rec, true);
        assert_eq!(p.trusted.count(), 0);
        assert_eq!(p.to_check.len(), 7);
        // An unknown stamp in the record: that file's pieces are hashed.
        let mut partial = rec.clone();
        partial[2] = None;
        let p = plan(&l, &f, &bits, &partial, false);
        assert_eq!(p.to_check, vec![3, 4, 5, 6]);
        // A fresh download: nothing on disk, nothing to hash.
        let empty: Vec<FileFound> = rec.iter().map(|s| found(0, *s)).collect();
        let p = plan(&l, &empty, &Bitfield::new(7), &[], false);
        assert!(p.to_check.is_empty() && p.trusted.count() == 0);
    }

    #[test]
    fn a_longer_file_is_not_trusted() {
        let (l, rec, bits) = setup();
        let f = vec![
            found(40, rec[0]),
            found(20, Some(stamp(25, 2))),
            found(40, rec[2]),
        ];
        let p = plan(&l, &f, &bits, &rec, false);
        assert_eq!(p.to_check, vec![2, 3]);
    }
}
