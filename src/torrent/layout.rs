//! Where each piece's bytes live: the mapping between the torrent's one long byte stream
//! (pieces of `piece_length`) and its files (laid end to end in metainfo order).
//!
//! A piece may span several files, and a file several pieces; the peer wire addresses data as
//! (piece, offset, length) while the disk wants (file, offset, length). This module converts.

use std::ops::Range;

/// Size of a request block on the peer wire (BEP 3 practice): 16 KiB.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Largest piece length we accept (64 MiB): bigger pieces are unreasonable and would let a
/// hostile torrent make us allocate huge buffers.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;

/// Why a layout (or a piece/block address in it) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Piece length is 0 or above [`MAX_PIECE_LENGTH`].
    #[error("invalid piece length {0} (must be 1..={MAX_PIECE_LENGTH})")]
    PieceLength(u64),
    /// The file lengths add up to more than `u64::MAX`.
    #[error("total length overflows")]
    Overflow,
    /// There is no data at all.
    #[error("torrent has no data (total length 0)")]
    Empty,
    /// More pieces than the peer wire can address (u32).
    #[error("too many pieces")]
    TooManyPieces,
    /// A piece index beyond the last piece.
    #[error("piece {piece} out of range (torrent has {num_pieces} pieces)")]
    PieceOutOfRange {
        /// Requested piece.
        piece: u32,
        /// Number of pieces in the torrent.
        num_pieces: u32,
    },
    /// A (offset, length) range that is empty or extends past the end of its piece.
    #[error("range {offset}+{len} is outside piece {piece} of {piece_size} bytes")]
    RangeOutOfPiece {
        /// Piece addressed.
        piece: u32,
        /// Offset within the piece.
        offset: u32,
        /// Length requested.
        len: u32,
        /// Actual size of that piece.
        piece_size: u32,
    },
}

/// One contiguous run of bytes inside one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index of the file in the torrent's file list.
    pub file: usize,
    /// Byte offset inside that file.
    pub offset: u64,
    /// Number of bytes (never 0).
    pub len: u64,
}

/// The piece/file geometry of one torrent; cheap to clone and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    piece_length: u64,
    total_length: u64,
    num_pieces: u32,
    /// (start offset in the torrent stream, length) per file.
    files: Vec<(u64, u64)>,
}

impl Layout {
    /// Builds the layout from the piece length and file lengths (metainfo order), checking
    /// that the piece length is sane, the total fits a `u64`, and pieces fit a `u32` index.
    pub fn new(piece_length: u64, file_lengths: &[u64]) -> Result<Layout, LayoutError> {
        if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
            return Err(LayoutError::PieceLength(piece_length));
        }
        let mut files = Vec::with_capacity(file_lengths.len());
        let mut total: u64 = 0;
        for &len in file_lengths {
            files.push((total, len));
            total = total.checked_add(len).ok_or(LayoutError::Overflow)?;
        }
        if total == 0 {
            return Err(LayoutError::Empty);
        }
        let num_pieces =
            u32::try_from(total.div_ceil(piece_length)).map_err(|_| LayoutError::TooManyPieces)?;
        Ok(Layout {
            piece_length,
            total_length: total,
            num_pieces,
            files,
        })
    }

    /// Nominal piece length (every piece but possibly the last has this size).
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    /// Sum of all file lengths.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Number of pieces (the last one may be short).
    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Number of files.
    pub fn num_files(&self) -> usize {
        self.files.len()
    }

    /// Length of file `file`, if it exists.
    pub fn file_length(&self, file: usize) -> Option<u64> {
        self.files.get(file).map(|&(_, l)| l)
    }

    /// Offset of piece `piece` in the torrent's byte stream.
    pub fn piece_offset(&self, piece: u32) -> Result<u64, LayoutError> {
        self.check_piece(piece)?;
        Ok(u64::from(piece) * self.piece_length)
    }

    fn check_piece(&self, piece: u32) -> Result<(), LayoutError> {
        if piece >= self.num_pieces {
            return Err(LayoutError::PieceOutOfRange {
                piece,
                num_pieces: self.num_pieces,
            });
        }
        Ok(())
    }

    /// Actual size of piece `piece`: `piece_length`, except the last, which holds the rest.
    pub fn piece_size(&self, piece: u32) -> Result<u32, LayoutError> {
        let start = self.piece_offset(piece)?;
        let size = (self.total_length - start).min(self.piece_length);
        // piece_length <= 64 MiB, so this always fits.
        u32::try_from(size).map_err(|_| LayoutError::PieceLength(self.piece_length))
    }

    /// Number of [`BLOCK_SIZE`] blocks in piece `piece` (the last block may be short).
    pub fn num_blocks(&self, piece: u32) -> Result<u32, LayoutError> {
        Ok(self.piece_size(piece)?.div_ceil(BLOCK_SIZE))
    }

    /// (offset, length) of block `block` of piece `piece`, for building requests.
    pub fn block(&self, piece: u32, block: u32) -> Result<(u32, u32), LayoutError> {
        let size = self.piece_size(piece)?;
        let offset = block.checked_mul(BLOCK_SIZE).filter(|&o| o < size).ok_or(
            LayoutError::RangeOutOfPiece {
                piece,
                offset: block.saturating_mul(BLOCK_SIZE),
                len: BLOCK_SIZE,
                piece_size: size,
            },
        )?;
        Ok((offset, (size - offset).min(BLOCK_SIZE)))
    }

    /// Maps `len` bytes at `offset` inside piece `piece` to file segments, in order.
    ///
    /// Zero-length files are skipped; the range must be non-empty and inside the piece.
    pub fn segments(&self, piece: u32, offset: u32, len: u32) -> Result<Vec<Segment>, LayoutError> {
        let size = self.piece_size(piece)?;
        let end = offset.checked_add(len);
        if len == 0 || end.is_none_or(|e| e > size) {
            return Err(LayoutError::RangeOutOfPiece {
                piece,
                offset,
                len,
                piece_size: size,
            });
        }
        let start = u64::from(piece) * self.piece_length + u64::from(offset);
        Ok(self.stream_segments(start..start + u64::from(len)))
    }

    /// All segments of piece `piece`.
    pub fn piece_segments(&self, piece: u32) -> Result<Vec<Segment>, LayoutError> {
        let size = self.piece_size(piece)?;
        self.segments(piece, 0, size)
    }

    /// Segments covering a range of the torrent stream (clipped to the total length).
    fn stream_segments(&self, range: Range<u64>) -> Vec<Segment> {
        let mut out = Vec::new();
        // First file whose end is past range.start.
        let first = self.files.partition_point(|&(s, l)| s + l <= range.start);
        for (i, &(fstart, flen)) in self.files.iter().enumerate().skip(first) {
            if fstart >= range.end {
                break;
            }
            if flen == 0 {
                continue;
            }
            let a = range.start.max(fstart);
            let b = range.end.min(fstart + flen);
            if a < b {
                out.push(Segment {
                    file: i,
                    offset: a - fstart,
                    len: b - a,
                });
            }
        }
        out
    }

    /// The pieces that hold at least one byte of file `file` (empty for an empty file);
    /// used to tell which pieces must be complete before a file is.
    pub fn pieces_of_file(&self, file: usize) -> Option<Range<u32>> {
        let &(start, len) = self.files.get(file)?;
        if len == 0 {
            return Some(0..0);
        }
        let first = start / self.piece_length;
        let last = (start + len - 1) / self.piece_length;
        // Both are < num_pieces, which fits u32.
        Some(u32::try_from(first).ok()?..u32::try_from(last + 1).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_last_piece_short() {
        let l = Layout::new(16, &[40]).unwrap();
        assert_eq!(l.num_pieces(), 3);
        assert_eq!(l.piece_size(0), Ok(16));
        assert_eq!(l.piece_size(2), Ok(8));
        assert!(l.piece_size(3).is_err());
        assert_eq!(
            l.piece_segments(2).unwrap(),
            vec![Segment {
                file: 0,
                offset: 32,
                len: 8
            }]
        );
    }

    #[test]
    fn pieces_span_files() {
        // files: [0,10) [10,10) empty [10,35) [35,40)
        let l = Layout::new(16, &[10, 0, 25, 5]).unwrap();
        assert_eq!(l.total_length(), 40);
        assert_eq!(
            l.piece_segments(0).unwrap(),
            vec![
                Segment {
                    file: 0,
                    offset: 0,
                    len: 10
                },
                Segment {
                    file: 2,
                    offset: 0,
                    len: 6
                }
            ]
        );
        assert_eq!(
            l.piece_segments(2).unwrap(),
            vec![
                Segment {
                    file: 2,
                    offset: 22,
                    len: 3
                },
                Segment {
                    file: 3,
                    offset: 0,
                    len: 5
                }
            ]
        );
        assert_eq!(
            l.segments(0, 9, 2).unwrap(),
            vec![
                Segment {
                    file: 0,
                    offset: 9,
                    len: 1
                },
                Segment {
                    file: 2,
                    offset: 0,
                    len: 1
                }
            ]
        );
        assert_eq!(l.pieces_of_file(0), Some(0..1));
        assert_eq!(l.pieces_of_file(1), Some(0..0));
        assert_eq!(l.pieces_of_file(2), Some(0..3));
        assert_eq!(l.pieces_of_file(3), Some(2..3));
        assert_eq!(l.pieces_of_file(4), None);
    }

    #[test]
    fn blocks() {
        let l = Layout::new(
            u64::from(BLOCK_SIZE) * 2,
            &[u64::from(BLOCK_SIZE) * 3 + 100],
        )
        .unwrap();
        assert_eq!(l.num_pieces(), 2);
        assert_eq!(l.num_blocks(0), Ok(2));
        assert_eq!(l.num_blocks(1), Ok(2));
        assert_eq!(l.block(1, 1), Ok((BLOCK_SIZE, 100)));
        assert!(l.block(1, 2).is_err());
        assert!(l.block(1, u32::MAX).is_err());
    }

    #[test]
    fn hostile_inputs() {
        assert_eq!(Layout::new(0, &[1]), Err(LayoutError::PieceLength(0)));
        assert!(Layout::new(MAX_PIECE_LENGTH + 1, &[1]).is_err());
        assert_eq!(Layout::new(16, &[u64::MAX, 1]), Err(LayoutError::Overflow));
        assert_eq!(Layout::new(16, &[0, 0]), Err(LayoutError::Empty));
        assert_eq!(Layout::new(1, &[u64::MAX]), Err(LayoutError::TooManyPieces));
        assert_eq!(
            Layout::new(MAX_PIECE_LENGTH, &[u64::MAX]),
            Err(LayoutError::TooManyPieces)
        );
        let l = Layout::new(MAX_PIECE_LENGTH, &[(1 << 57) + 5]).unwrap();
        assert_eq!(l.num_pieces(), (1 << 31) + 1);
        assert_eq!(l.piece_size(l.num_pieces() - 1), Ok(5));
        assert_eq!(
            l.piece_segments(l.num_pieces() - 1).unwrap(),
            vec![Segment {
                file: 0,
                offset: 1 << 57,
                len: 5
            }]
        );
        let l = Layout::new(16, &[40]).unwrap();
        assert!(l.segments(0, 0, 0).is_err());
        assert!(l.segments(0, 10, 7).is_err());
        assert!(l.segments(0, u32::MAX, 2).is_err());
        assert!(l.segments(2, 0, 9).is_err());
        assert!(l.segments(9, 0, 1).is_err());
    }
}
