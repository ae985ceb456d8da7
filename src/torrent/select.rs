//! Choosing which of a torrent's files to download (`fetch --files 0,3-5`, `--only GLOB`).
//!
//! Users number files as `fetch --list` prints them: padding files (BEP 47) are not listed
//! and take no number, so the numbers are the same whatever client made the torrent. A
//! selection is parsed from the command line once, then resolved against the metadata
//! (which a magnet only learns later), giving one flag per file in torrent order.

use std::ops::RangeInclusive;

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::torrent::layout::Layout;
use crate::torrent::metainfo::{FileEntry, Info};
use crate::torrent::resume::Bitfield;

/// Why a selection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// `--files` text that is not a comma-separated list of `N` or `N-M`.
    #[error(
        "invalid file list {0:?}: expected indices like 0,3-5 (as `fetch --list` numbers them)"
    )]
    BadIndices(String),
    /// A glob pattern that does not parse.
    #[error("invalid pattern {pattern:?}: {why}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// The parser's complaint.
        why: String,
    },
    /// An index past the last file.
    #[error("file index {index} is out of range: the torrent has {files} file(s), numbered 0..={last}", last = files.saturating_sub(1))]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// Files the torrent lists (padding excluded).
        files: usize,
    },
    /// Nothing matched: downloading nothing is surely not what was meant.
    #[error("the selection matches no file of the torrent (see `fetch --list`)")]
    NothingSelected,
}

/// A choice of files: the union of index ranges and glob patterns. Empty = every file.
#[derive(Clone, Debug, Default)]
pub struct FileSelection {
    ranges: Vec<RangeInclusive<usize>>,
    patterns: Vec<(String, GlobMatcher)>,
}

impl FileSelection {
    /// Every file (the default).
    pub fn all() -> FileSelection {
        FileSelection::default()
    }

    /// Whether this selects every file.
    pub fn is_all(&self) -> bool {
        self.ranges.is_empty() && self.patterns.is_empty()
    }

    /// Adds indices written as `0,3-5` (`--files`; repeatable).
    pub fn add_indices(&mut self, text: &str) -> Result<(), SelectError> {
        let bad = || SelectError::BadIndices(text.to_string());
        for part in text.split(',').map(str::trim) {
            let range = match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    a..=b
                }
                None => {
                    let a: usize = part.parse().map_err(|_| bad())?;
                    a..=a
                }
            };
            self.ranges.push(range);
        }
        Ok(())
    }

    /// Adds a glob pattern (`--only`; repeatable). `*` matches across `/`, so `*.srt`
    /// selects every subtitle at any depth. A pattern is matched against the path inside the
    /// torrent (without the top directory) and against the full path `fetch --list` prints.
    pub fn add_pattern(&mut self, pattern: &str) -> Result<(), SelectError> {
        let glob: Glob = GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| SelectError::BadPattern {
                pattern: pattern.to_string(),
                why: e.kind().to_string(),
            })?;
        self.patterns
            .push((pattern.to_string(), glob.compile_matcher()));
        Ok(())
    }

    /// One flag per file of `info` (torrent order): whether to download it. Padding files
    /// are never wanted. Fails on an index past the end or a selection matching nothing.
    pub fn resolve(&self, info: &Info) -> Result<Vec<bool>, SelectError> {
        let listed = listed_files(info).count();
        if self.is_all() {
            return Ok(info.files.iter().map(|f| !f.pad).collect());
        }
        if let Some(r) = self.ranges.iter().find(|r| *r.end() >= listed) {
            let index = if *r.start() >= listed {
                *r.start()
            } else {
                *r.end()
            };
            return Err(SelectError::IndexOutOfRange {
                index,
                files: listed,
            });
        }
        let mut wanted = vec![false; info.files.len()];
        for (number, torrent_index, f) in listed_files(info) {
            let by_index = self.ranges.iter().any(|r| r.contains(&number));
            let by_pattern = !by_index && self.matches(info, f);
            if let Some(w) = wanted.get_mut(torrent_index) {
                *w = by_index || by_pattern;
            }
        }
        if !wanted.iter().any(|&w| w) {
            return Err(SelectError::NothingSelected);
        }
        Ok(wanted)
    }

    fn matches(&self, info: &Info, f: &FileEntry) -> bool {
        let full = f.path.as_str();
        let inner = if info.single_file {
            full
        } else {
            full.split_once('/').map_or(full, |(_, rest)| rest)
        };
        self.patterns
            .iter()
            .any(|(_, m)| m.is_match(inner) || m.is_match(full))
    }
}

/// The files a user sees, numbered as `fetch --list` prints them: (number, index in the
/// torrent's file list, entry), padding files skipped.
pub fn listed_files(info: &Info) -> impl Iterator<Item = (usize, usize, &FileEntry)> + '_ {
    info.files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.pad)
        .enumerate()
        .map(|(n, (i, f))| (n, i, f))
}

/// The pieces to fetch for `wanted` files: every piece holding a byte of a wanted file
/// (pieces on the edges are fetched whole; their other bytes go to the parts file).
pub fn wanted_pieces(layout: &Layout, wanted: &[bool]) -> Bitfield {
    let mut bits = Bitfield::new(layout.num_pieces());
    for p in 0..layout.num_pieces() {
        let Ok(segs) = layout.piece_segments(p) else {
            continue;
        };
        if segs
            .iter()
            .any(|s| wanted.get(s.file).copied().unwrap_or(false))
        {
            bits.set(p, true);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::path::SafePath;

    fn info(files: &[(&str, u64, bool)]) -> Info {
        let entries: Vec<FileEntry> = files
            .iter()
            .map(|&(p, len, pad)| FileEntry {
                pad,
                ..FileEntry::plain(SafePath::parse(p).unwrap(), len)
            })
            .collect();
        let total: u64 = files.iter().map(|f| f.1).sum();
        Info {
            name: "t".into(),
            piece_length: 16,
            pieces: vec![[0; 20]; total.div_ceil(16) as usize],
            files: entries,
            private: false,
            single_file: false,
            hybrid: false,
        }
    }

    #[test]
    fn indices_skip_padding_and_patterns_match_inside_the_torrent() {
        let i = info(&[
            ("t/a.mkv", 20, false),
            ("t/.pad/12", 12, true),
            ("t/subs/en.srt", 16, false),
            ("t/subs/fr.srt", 16, false),
        ]);
        let mut s = FileSelection::all();
        assert_eq!(s.resolve(&i).unwrap(), vec![true, false, true, true]);
        s.add_indices("1").unwrap();
        assert_eq!(s.resolve(&i).unwrap(), vec![false, false, true, false]);
        let mut s = FileSelection::all();
        s.add_pattern("*.srt").unwrap();
        assert_eq!(s.resolve(&i).unwrap(), vec![false, false, true, true]);
        let mut s = FileSelection::all();
        s.add_pattern("subs/fr*").unwrap();
        s.add_indices("0").unwrap();
        assert_eq!(s.resolve(&i).unwrap(), vec![true, false, false, true]);
        let mut s = FileSelection::all();
        s.add_pattern("t/a.mkv").unwrap();
        assert_eq!(s.resolve(&i).unwrap(), vec![true, false, false, false]);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let i = info(&[("t/a", 20, false), ("t/b", 20, false)]);
        let mut s = FileSelection::all();
        for bad in ["", "x", "3-1", "1,,2", "-2"] {
            assert!(s.add_indices(bad).is_err(), "{bad:?}");
        }
        s.add_indices("0-2").unwrap();
        assert_eq!(
            s.resolve(&i),
            Err(SelectError::IndexOutOfRange { index: 2, files: 2 })
        );
        let mut s = FileSelection::all();
        s.add_pattern("*.iso").unwrap();
        assert_eq!(s.resolve(&i), Err(SelectError::NothingSelected));
        assert!(FileSelection::all().add_pattern("a[").is_err());
    }

    #[test]
    fn edge_pieces_are_wanted_whole() {
        // Files of 20, 12, 16 bytes in 16-byte pieces: piece 0 = a, piece 1 = a+b, piece 2 = c.
        let layout = Layout::new(16, &[20, 12, 16]).unwrap();
        let w = wanted_pieces(&layout, &[false, true, false]);
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![1]);
        let w = wanted_pieces(&layout, &[true, false, false]);
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![0, 1]);
    }
}
