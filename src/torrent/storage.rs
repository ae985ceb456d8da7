//! The torrent's files on disk: create and preallocate them, write verified pieces, read
//! blocks for seeding, and check existing data against the piece hashes.
//!
//! All I/O is positional (`pread`/`pwrite` via [`FileExt`]), so one `Storage` can be shared by
//! several threads (`&self` everywhere) without seek races. Paths come from [`SafePath`] and
//! are joined with [`join_under`]; in [`OpenMode::Create`] symbolic links on the way are
//! refused and the final component is opened with `O_NOFOLLOW`, so a torrent cannot make us
//! write outside the output directory.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};

use crate::sync::lock;
use crate::torrent::layout::{Layout, LayoutError, Segment};
use crate::torrent::metainfo::Info;
use crate::torrent::path::{check_no_symlinks, join_under, PathError};

/// At most this many files are kept open at once (torrents can have thousands of files).
pub const MAX_OPEN_FILES: usize = 64;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on a given path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file path from the torrent is unsafe (or crosses a symlink).
    #[error(transparent)]
    Path(#[from] PathError),
    /// A piece/offset/length outside the torrent.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The torrent's piece count does not match its lengths (an `Info` built by hand).
    #[error("info has {actual} piece hashes, layout needs {expected}")]
    PieceCount {
        /// Pieces implied by the lengths.
        expected: u32,
        /// Hashes present.
        actual: usize,
    },
    /// Data handed to [`Storage::write_piece`] is not the piece's size.
    #[error("piece {piece} is {expected} bytes, got {actual}")]
    WrongSize {
        /// Piece index.
        piece: u32,
        /// Its size.
        expected: u32,
        /// Bytes given.
        actual: usize,
    },
    /// Data handed to [`Storage::write_piece`] does not match the piece hash: not written.
    #[error("piece {0} does not match its hash; not written")]
    HashMismatch(u32),
    /// In [`OpenMode::Existing`], a file is absent or has the wrong length.
    #[error("{}: expected a file of {expected} bytes, found {found}", path.display())]
    FileMismatch {
        /// The file.
        path: PathBuf,
        /// Length the torrent says.
        expected: u64,
        /// What is on disk ("missing" or a length).
        found: String,
    },
    /// The torrent's hash for this piece covers nonzero bytes in a BEP 47 padding file:
    /// the torrent is broken (padding is zeros by definition, and is served as zeros).
    #[error("piece {0} has nonzero bytes in a padding file: the torrent is broken")]
    PaddingNotZero(u32),
    /// A write on storage opened with [`OpenMode::Existing`].
    #[error("storage is read-only")]
    ReadOnly,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How [`Storage::open`] treats the output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Downloading: create directories and files, preallocate them to their lengths
    /// (existing files are kept and resized), open read-write.
    Create,
    /// Seeding existing data: every file must already exist with its exact length;
    /// opened read-only, nothing is created or modified.
    Existing,
    /// Serving whatever matches of existing data: read-only like [`OpenMode::Existing`], but
    /// files may be missing, short or not regular files; their pieces simply fail
    /// [`Storage::verify_piece`] and are not served.
    Partial,
}

/// What identifies one version of a file's bytes without reading them: if any of these
/// differs from what the resume record saw, the file was changed (or replaced) since, and
/// the pieces touching it must be hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_nsec: u32,
    /// Inode number (a file replaced by a copy with the same size and mtime differs here).
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: m.len(),
            mtime_sec: m.mtime(),
            mtime_nsec: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            inode: m.ino(),
        }
    }
}

/// What [`Storage::open`] found of one file, so the caller can tell which bytes were there
/// before this run (and may be checked) from what is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFound {
    /// Bytes that existed before opening, capped at the torrent's length for the file (0 for
    /// a file that was missing or is not a regular file).
    pub present: u64,
    /// The file as it is now, after opening (and in [`OpenMode::Create`], resizing); `None`
    /// if it does not exist as a regular file.
    pub stamp: Option<FileStamp>,
}

/// Proof that a piece's bytes on disk were checked against its hash by this storage, either
/// because [`Storage::write_piece`] wrote them or [`Storage::verify_piece`] read them.
///
/// Only `Storage` can make one, and [`crate::torrent::resume::ResumeFile::mark_verified`]
/// only takes one, so nothing else can be recorded as verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "record it with ResumeFile::mark_verified, or the piece will be re-checked later"]
pub struct VerifiedPiece(u32);

impl VerifiedPiece {
    /// The piece index.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// Where one file's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// Its own file at its path.
    File,
    /// A BEP 47 padding file: zeros, nothing on disk.
    Pad,
    /// A file outside the download's selection: the bytes of it that edge pieces carry are
    /// kept in the hidden parts file at `base + offset` (a sparse file laid out like the
    /// torrent's byte stream), so no unselected file appears in the output directory.
    Parts {
        /// The file's offset in the torrent's byte stream.
        base: u64,
    },
}

/// Key of the parts file in the open-file and unsynced maps (real files use their index).
const PARTS_KEY: usize = usize::MAX;

/// The stamp of a file that has no file of its own (padding, or kept in the parts file):
/// its length as the torrent says, and the parts file's identity when there is one.
fn virtual_stamp(length: u64, parts: Option<&std::fs::Metadata>) -> FileStamp {
    match parts {
        Some(m) => FileStamp {
            size: length,
            ..FileStamp::of(m)
        },
        None => FileStamp {
            size: length,
            mtime_sec: 0,
            mtime_nsec: 0,
            inode: 0,
        },
    }
}

/// A torrent's files under an output directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    paths: Vec<PathBuf>,
    backing: Vec<Backing>,
    /// The hidden file holding unselected files' edge bytes (see [`Backing::Parts`]).
    parts_path: PathBuf,
    layout: Layout,
    hashes: Vec<[u8; 20]>,
    mode: OpenMode,
    open: Mutex<HashMap<usize, Arc<File>>>,
    /// Files written (or verified) since the last [`Storage::sync`], each with a generation
    /// bumped by every write: a sync clears a file only if no write happened while it ran.
    unsynced: Mutex<HashMap<usize, u64>>,
    found: Vec<FileFound>,
}

impl Storage {
    /// Opens (and in [`OpenMode::Create`], creates and preallocates) the torrent's files
    /// under `root`. Padding files (BEP 47) are never created.
    pub fn open(root: &Path, info: &Info, mode: OpenMode) -> Result<Storage, StorageError> {
        Storage::open_selected(root, info, mode, None)
    }

    /// [`Storage::open`] for a download of some files only (`wanted`, one flag per file; see
    /// [`crate::torrent::FileSelection`]). An unwanted file that is not on disk already is
    /// not created: the bytes of it that edge pieces carry go to a hidden parts file
    /// (`.<name>.dhtnode-parts`), so pieces stay whole and verifiable. An unwanted file that
    /// exists (from an earlier, wider fetch) is used as it is.
    pub fn open_selected(
        root: &Path,
        info: &Info,
        mode: OpenMode,
        wanted: Option<&[bool]>,
    ) -> Result<Storage, StorageError> {
        let layout = info.layout()?;
        if info.pieces.len() != layout.num_pieces() as usize {
            return Err(StorageError::PieceCount {
                expected: layout.num_pieces(),
                actual: info.pieces.len(),
            });
        }
        if mode == OpenMode::Create {
            std::fs::create_dir_all(root).map_err(io_err(root))?;
        }
        let mut paths = Vec::with_capacity(info.files.len());
        let mut backing = Vec::with_capacity(info.files.len());
        let mut found = Vec::with_capacity(info.files.len());
        let mut dirs_to_sync = BTreeSet::new();
        let parts_path = root.join(info.side_file_name("dhtnode-parts"));
        let parts_meta = std::fs::symlink_metadata(&parts_path)
            .ok()
            .filter(|m| m.is_file());
        let mut base = 0u64;
        for (i, f) in info.files.iter().enumerate() {
            let path = join_under(root, &f.path)?;
            let file_base = base;
            base = base.saturating_add(f.length);
            if f.pad {
                // Zeros by definition: always "present", never on disk.
                found.push(FileFound {
                    present: f.length,
                    stamp: Some(virtual_stamp(f.length, None)),
                });
                backing.push(Backing::Pad);
                paths.push(path);
                continue;
            }
            let unwanted = mode == OpenMode::Create
                && wanted.is_some_and(|w| !w.get(i).copied().unwrap_or(true));
            if unwanted && check_no_symlinks(root, &f.path).is_ok() {
                let exists = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
                if !exists {
                    found.push(FileFound {
                        present: if parts_meta.is_some() { f.length } else { 0 },
                        stamp: parts_meta
                            .as_ref()
                            .map(|m| virtual_stamp(f.length, Some(m))),
                    });
                    backing.push(Backing::Parts { base: file_base });
                    paths.push(path);
                    continue;
                }
            }
            backing.push(Backing::File);
            match mode {
                OpenMode::Create => {
                    check_no_symlinks(root, &f.path)?;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                        dirs_to_sync.insert(parent.to_path_buf());
                    }
                    // Re-check now that directories exist (narrows the race window).
                    check_no_symlinks(root, &f.path)?;
                    let file = open_file(&path, true, true)?;
                    if f.executable {
                        make_executable(&file, &path)?;
                    }
                    let before = file.metadata().map_err(io_err(&path))?;
                    let len = before.len();
                    let mut stamp = FileStamp::of(&before);
                    if len != f.length {
                        file.set_len(f.length).map_err(io_err(&path))?;
                        stamp = FileStamp::of(&file.metadata().map_err(io_err(&path))?);
                    }
                    found.push(FileFound {
                        present: len.min(f.length),
                        stamp: Some(stamp),
                    });
                }
                OpenMode::Partial => {
                    let m = std::fs::metadata(&path).ok().filter(|m| m.is_file());
                    found.push(FileFound {
                        present: m.as_ref().map_or(0, |m| m.len().min(f.length)),
                        stamp: m.as_ref().map(FileStamp::of),
                    });
                }
                OpenMode::Existing => {
                    let len = match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => m.len(),
                        Ok(_) => u64::MAX,
                        Err(_) => {
                            return Err(StorageError::FileMismatch {
                                path,
                                expected: f.length,
                                found: "missing".into(),
                            })
                        }
                    };
                    if len != f.length {
                        return Err(StorageError::FileMismatch {
                            path,
                            expected: f.length,
                            found: if len == u64::MAX {
                                "not a regular file".into()
                            } else {
                                format!("{len} bytes")
                            },
                        });
                    }
                    let m = std::fs::metadata(&path).map_err(io_err(&path))?;
                    found.push(FileFound {
                        present: f.length,
                        stamp: Some(FileStamp::of(&m)),
                    });
                }
            }
            paths.push(path);
        }
        // New directory entries must be durable too, or a crash could lose whole files.
        for d in dirs_to_sync {
            if let Ok(dir) = File::open(&d) {
                dir.sync_all().map_err(io_err(&d))?;
            }
        }
        Ok(Storage {
            root: root.to_path_buf(),
            paths,
            backing,
            parts_path,
            layout,
            hashes: info.pieces.clone(),
            mode,
            open: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(HashMap::new()),
            found,
        })
    }

    /// What was found of each file when opening (metainfo order): which bytes pre-existed,
    /// and each file's stamp right after opening. The resume check compares these with the
    /// record.
    pub fn found(&self) -> &[FileFound] {
        &self.found
    }

    /// The current stamp of file `i` (after a sync, for the resume record).
    pub fn stamp(&self, i: usize) -> Result<FileStamp, StorageError> {
        let length = self.layout.file_length(i).unwrap_or(0);
        match self.backing.get(i) {
            Some(Backing::Pad) => return Ok(virtual_stamp(length, None)),
            Some(Backing::Parts { .. }) => {
                let m = std::fs::metadata(&self.parts_path).map_err(io_err(&self.parts_path))?;
                return Ok(virtual_stamp(length, Some(&m)));
            }
            _ => {}
        }
        let f = self.file(i)?;
        let m = f.metadata().map_err(io_err(self.path_of(i)))?;
        Ok(FileStamp::of(&m))
    }

    /// Notes that file `i` has bytes that may not be durable yet: a new generation, so a sync
    /// already running does not clear it.
    fn mark_unsynced(&self, i: usize) {
        let mut u = lock(&self.unsynced);
        let g = u.entry(i).or_insert(0);
        *g = g.wrapping_add(1);
    }

    /// The output directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The piece/file geometry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Full path of file `i`, for messages.
    pub fn file_path(&self, i: usize) -> Option<&Path> {
        self.paths.get(i).map(PathBuf::as_path)
    }

    fn path_of(&self, i: usize) -> &Path {
        if i == PARTS_KEY {
            return &self.parts_path;
        }
        self.paths.get(i).map_or(&self.root, PathBuf::as_path)
    }

    /// Where segment `seg` of the torrent lives: the open-file key and the offset in that
    /// file, or `None` for padding (zeros, not stored).
    fn place(&self, seg: &Segment) -> Option<(usize, u64)> {
        match self.backing.get(seg.file) {
            Some(Backing::Pad) => None,
            Some(Backing::Parts { base }) => Some((PARTS_KEY, base.saturating_add(seg.offset))),
            _ => Some((seg.file, seg.offset)),
        }
    }

    fn file(&self, i: usize) -> Result<Arc<File>, StorageError> {
        let mut open = lock(&self.open);
        if let Some(f) = open.get(&i) {
            return Ok(Arc::clone(f));
        }
        let f = if i == PARTS_KEY {
            // Created by the first write (`parts_for_write`); a read before that finds
            // nothing (NotFound), so a read never leaves an empty parts file behind.
            Arc::new(open_file(
                &self.parts_path,
                self.mode == OpenMode::Create,
                false,
            )?)
        } else {
            let path = self.paths.get(i).ok_or(LayoutError::Empty)?;
            Arc::new(open_file(path, self.mode == OpenMode::Create, false)?)
        };
        if open.len() >= MAX_OPEN_FILES {
            if let Some(&k) = open.keys().next() {
                open.remove(&k);
            }
        }
        open.insert(i, Arc::clone(&f));
        Ok(f)
    }

    fn expected_hash(&self, piece: u32) -> Result<&[u8; 20], StorageError> {
        self.hashes
            .get(piece as usize)
            .ok_or(StorageError::Layout(LayoutError::PieceOutOfRange {
                piece,
                num_pieces: self.layout.num_pieces(),
            }))
    }

    /// Writes a whole piece after checking its SHA-1 (a wrong piece is never written).
    ///
    /// The bytes are in the page cache when this returns; call [`Storage::sync`] (or
    /// [`crate::torrent::resume::ResumeFile::flush`], which does) to make them durable.
    pub fn write_piece(&self, piece: u32, data: &[u8]) -> Result<VerifiedPiece, StorageError> {
        if self.mode != OpenMode::Create {
            return Err(StorageError::ReadOnly);
        }
        let size = self.layout.piece_size(piece)?;
        if data.len() != size as usize {
            return Err(StorageError::WrongSize {
                piece,
                expected: size,
                actual: data.len(),
            });
        }
        if Sha1::digest(data).as_slice() != self.expected_hash(piece)? {
            return Err(StorageError::HashMismatch(piece));
        }
        let segments = self.layout.piece_segments(piece)?;
        // Padding is served as zeros: a piece whose hash covers other bytes there could
        // never be served or re-verified, so it is refused (the torrent is broken).
        let mut pos = 0usize;
        for seg in &segments {
            let len = seg.len as usize;
            if self.place(seg).is_none()
                && data
                    .get(pos..pos + len)
                    .is_some_and(|b| b.iter().any(|&x| x != 0))
            {
                return Err(StorageError::PaddingNotZero(piece));
            }
            pos += len;
        }
        let mut pos = 0usize;
        for seg in segments {
            let len = seg.len as usize;
            let chunk = data.get(pos..pos + len).ok_or(StorageError::WrongSize {
                piece,
                expected: size,
                actual: data.len(),
            })?;
            pos += len;
            let Some((key, at)) = self.place(&seg) else {
                continue;
            };
            if key == PARTS_KEY && !self.parts_path.exists() {
                open_file(&self.parts_path, true, true)?;
            }
            let f = self.file(key)?;
            // Mark before writing: if the write fails half-way the file still gets synced.
            self.mark_unsynced(key);
            f.write_all_at(chunk, at)
                .map_err(io_err(self.path_of(key)))?;
            // And after, as a new generation: a `sync` that started before this write landed
            // sees the generation change and keeps the file marked.
            self.mark_unsynced(key);
        }
        Ok(VerifiedPiece(piece))
    }

    /// Reads `len` bytes at `offset` in piece `piece` (a peer's `request`).
    pub fn read_block(&self, piece: u32, offset: u32, len: u32) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; len as usize];
        self.read_block_into(piece, offset, &mut buf)?;
        Ok(buf)
    }

    /// Reads `out.len()` bytes at `offset` in piece `piece` straight into `out` (serving a
    /// peer without an extra copy). Padding reads as zeros; unselected files' bytes come
    /// from the parts file.
    pub fn read_block_into(
        &self,
        piece: u32,
        offset: u32,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        let len = u32::try_from(out.len()).map_err(|_| LayoutError::Empty)?;
        let mut pos = 0usize;
        for seg in self.layout.segments(piece, offset, len)? {
            let n = seg.len as usize;
            let dst = out.get_mut(pos..pos + n).ok_or(LayoutError::Empty)?;
            pos += n;
            let Some((key, at)) = self.place(&seg) else {
                dst.fill(0);
                continue;
            };
            let f = self.file(key)?;
            f.read_exact_at(dst, at)
                .map_err(io_err(self.path_of(key)))?;
        }
        Ok(())
    }

    /// Reads a whole piece.
    pub fn read_piece(&self, piece: u32) -> Result<Vec<u8>, StorageError> {
        let size = self.layout.piece_size(piece)?;
        self.read_block(piece, 0, size)
    }

    /// Checks piece `piece` on disk against its hash: `Some` if it matches, `None` if it does
    /// not or the data is short. Other I/O errors are returned.
    pub fn verify_piece(&self, piece: u32) -> Result<Option<VerifiedPiece>, StorageError> {
        let hash = *self.expected_hash(piece)?;
        let data = match self.read_piece(piece) {
            Ok(d) => d,
            Err(StorageError::Io { source, .. })
                if source.kind() == io::ErrorKind::UnexpectedEof
                    || source.kind() == io::ErrorKind::NotFound
                    || (self.mode == OpenMode::Partial
                        && source.raw_os_error() == Some(libc::EISDIR)) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if Sha1::digest(&data).as_slice() != hash {
            return Ok(None);
        }
        // The bytes may still be only in the page cache (written by an earlier run that was
        // killed): make sure the next sync covers these files before this is recorded.
        if self.mode == OpenMode::Create {
            for seg in self.layout.piece_segments(piece)? {
                if let Some((key, _)) = self.place(&seg) {
                    self.mark_unsynced(key);
                }
            }
        }
        Ok(Some(VerifiedPiece(piece)))
    }

    /// Checks every piece (for `seed` of existing data, or a full recheck); returns the
    /// pieces that match.
    pub fn verify_all(&self) -> Result<Vec<VerifiedPiece>, StorageError> {
        let mut out = Vec::new();
        for p in 0..self.layout.num_pieces() {
            if let Some(v) = self.verify_piece(p)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Flushes the data of every file written or verified since the last call to stable
    /// storage (`fdatasync`). Must succeed before pieces are recorded as verified.
    ///
    /// Returns the files synced (their stamps may have changed). A file written while its
    /// sync runs stays marked for the next call: only the generation seen before the
    /// `fdatasync` is cleared.
    pub fn sync(&self) -> Result<Vec<usize>, StorageError> {
        self.sync_with(|_| {})
    }

    /// [`Storage::sync`], calling `during(file)` between a file's `fdatasync` and clearing its
    /// mark (where a concurrent write can land; tests use it to make one land there).
    fn sync_with(&self, mut during: impl FnMut(usize)) -> Result<Vec<usize>, StorageError> {
        let pending: Vec<(usize, u64)> =
            lock(&self.unsynced).iter().map(|(&i, &g)| (i, g)).collect();
        let mut done = Vec::with_capacity(pending.len());
        for (i, seen) in pending {
            let f = self.file(i)?;
            let path = self.path_of(i);
            f.sync_data().map_err(io_err(path))?;
            during(i);
            let mut u = lock(&self.unsynced);
            if u.get(&i) == Some(&seen) {
                u.remove(&i);
            }
            if i == PARTS_KEY {
                // Every file kept in the parts file changed with it.
                done.extend(
                    (0..self.backing.len())
                        .filter(|&j| matches!(self.backing.get(j), Some(Backing::Parts { .. }))),
                );
            } else {
                done.push(i);
            }
        }
        done.sort_unstable();
        Ok(done)
    }
}

/// Opens a data file; with `write`, read-write and refusing a symlink as the last component.
/// BEP 47 `x`: adds execute permission wherever read permission is set (so the umask the
/// file was created with still decides who may run it).
fn make_executable(file: &File, path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = file.metadata().map_err(io_err(path))?.permissions();
    let mode = perm.mode();
    let with_x = mode | ((mode & 0o444) >> 2);
    if with_x != mode {
        perm.set_mode(with_x);
        file.set_permissions(perm).map_err(io_err(path))?;
    }
    Ok(())
}

fn open_file(path: &Path, write: bool, create: bool) -> Result<File, StorageError> {
    let mut o = OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(create).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            StorageError::Path(PathError::Symlink(path.to_path_buf()))
        } else {
            StorageError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::metainfo::FileEntry;
    use crate::torrent::path::SafePath;

    fn info_for(files: &[(&str, &[u8])], piece_length: u64) -> Info {
        let mut all = Vec::new();
        let mut entries = Vec::new();
        for (p, d) in files {
            all.extend_from_slice(d);
            entries.push(FileEntry::plain(
                SafePath::parse(p).unwrap(),
                d.len() as u64,
            ));
        }
        Info {
            name: "t".into(),
            piece_length,
            pieces: all
                .chunks(piece_length as usize)
                .map(|c| Sha1::digest(c).into())
                .collect(),
            files: entries,
            private: false,
            single_file: false,
            hybrid: false,
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn write_read_verify_across_files() {
        let a = data(10, 1);
        let b = data(0, 0);
        let c = data(25, 2);
        let info = info_for(&[("t/a", &a), ("t/empty", &b), ("t/sub/c", &c)], 16);
        let all: Vec<u8> = [a.clone(), c.clone()].concat();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("t/sub/c")).unwrap().len(),
            25
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("t/empty")).unwrap().len(),
            0
        );
        assert_eq!(s.verify_all().unwrap(), vec![]);
        for p in 0..s.layout().num_pieces() {
            let size = s.layout().piece_size(p).unwrap() as usize;
            let off = p as usize * 16;
            let v = s.write_piece(p, &all[off..off + size]).unwrap();
            assert_eq!(v.index(), p);
        }
        s.sync().unwrap();
        assert_eq!(std::fs::read(dir.path().join("t/a")).unwrap(), a);
        assert_eq!(std::fs::read(dir.path().join("t/sub/c")).unwrap(), c);
        assert_eq!(s.read_block(0, 8, 4).unwrap(), all[8..12].to_vec());
        assert_eq!(s.read_piece(2).unwrap(), all[32..35].to_vec());
        assert!(s.read_block(2, 0, 4).is_err());
        assert_eq!(s.verify_all().unwrap().len(), 3);

        // Seeding the same data read-only.
        let ro = Storage::open(dir.path(), &info, OpenMode::Existing).unwrap();
        assert_eq!(ro.verify_all().unwrap().len(), 3);
        assert!(matches!(
            ro.write_piece(0, &all[..16]),
            Err(StorageError::ReadOnly)
        ));

        // Corrupt one byte: only that piece fails.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("t/sub/c"))
            .unwrap();
        f.write_all_at(b"\xff", 20).unwrap();
        let ok: Vec<u32> = ro.verify_all().unwrap().iter().map(|v| v.index()).collect();
        assert_eq!(ok, vec![0, 2]);
    }

    /// Padding is never on disk and reads as zeros; an unselected file is not created, its
    /// edge bytes go to the hidden parts file, and the edge pieces still verify after a
    /// reopen; a file selected later is created and its pieces checked from scratch.
    #[test]
    fn padding_and_unselected_files_stay_off_the_output_tree() {
        let a = data(20, 1);
        let pad = vec![0u8; 12];
        let b = data(16, 2);
        let c = data(10, 3);
        let mut info = info_for(
            &[("t/a", &a), ("t/.pad/12", &pad), ("t/b", &b), ("t/c", &c)],
            16,
        );
        info.files[1].pad = true;
        info.files[3].executable = true;
        let all: Vec<u8> = [a.clone(), pad.clone(), b.clone(), c.clone()].concat();
        let dir = tempfile::tempdir().unwrap();
        // a: pieces 0-1 (piece 1 = a's tail + padding), b: piece 2, c: piece 3.
        let wanted = [false, false, true, true];
        let s = Storage::open_selected(dir.path(), &info, OpenMode::Create, Some(&wanted)).unwrap();
        for p in 0..s.layout().num_pieces() {
            let off = p as usize * 16;
            let size = s.layout().piece_size(p).unwrap() as usize;
            let _ = s.write_piece(p, &all[off..off + size]).unwrap();
        }
        let synced = s.sync().unwrap();
        assert!(
            synced.contains(&0),
            "the parts file covers file 0: {synced:?}"
        );
        assert!(!dir.path().join("t/a").exists());
        assert!(!dir.path().join("t/.pad").exists());
        assert_eq!(std::fs::read(dir.path().join("t/b")).unwrap(), b);
        assert_eq!(std::fs::read(dir.path().join("t/c")).unwrap(), c);
        let mode = std::fs::metadata(dir.path().join("t/c"))
            .unwrap()
            .permissions();
        assert_ne!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o100, 0);
        assert!(dir.path().join(".t.dhtnode-parts").is_file());
        assert_eq!(s.read_piece(1).unwrap(), all[16..32].to_vec());
        assert_eq!(s.stamp(1).unwrap().size, 12);
        drop(s);

        // Reopened with the same selection: every piece verifies (parts file included), and
        // the stamps seen at open match those after the sync, so a record would be trusted.
        let s = Storage::open_selected(dir.path(), &info, OpenMode::Create, Some(&wanted)).unwrap();
        assert_eq!(s.verify_all().unwrap().len(), 4);
        assert_eq!(s.found()[0].stamp, Some(s.stamp(0).unwrap()));
        assert_eq!(s.found()[1].present, 12);
        drop(s);

        // Everything selected now: a is created empty and its pieces fail until fetched.
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        let ok: Vec<u32> = s.verify_all().unwrap().iter().map(|v| v.index()).collect();
        assert_eq!(ok, vec![2, 3]);
        assert!(!dir.path().join("t/.pad").exists());

        // Seeding complete data does not need padding on disk either.
        let _ = s.write_piece(0, &all[..16]).unwrap();
        let _ = s.write_piece(1, &all[16..32]).unwrap();
        let ro = Storage::open(dir.path(), &info, OpenMode::Existing).unwrap();
        assert_eq!(ro.verify_all().unwrap().len(), 4);
    }

    /// A torrent whose hash covers nonzero padding is refused at the write, not stored.
    #[test]
    fn nonzero_padding_is_refused() {
        let a = data(20, 1);
        let pad = vec![7u8; 12];
        let mut info = info_for(&[("t/a", &a), ("t/.pad/12", &pad)], 16);
        info.files[1].pad = true;
        let all: Vec<u8> = [a, pad].concat();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        assert!(s.write_piece(0, &all[..16]).is_ok());
        assert!(matches!(
            s.write_piece(1, &all[16..]),
            Err(StorageError::PaddingNotZero(1))
        ));
        assert!(!dir.path().join(".t.dhtnode-parts").exists());
    }

    #[test]
    fn a_write_landing_during_sync_keeps_its_file_marked() {
        let a = data(48, 5);
        let info = info_for(&[("f", &a)], 16);
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        let _ = s.write_piece(0, &a[..16]).unwrap();
        // Piece 1 lands in the same file after its fdatasync, before the mark is cleared:
        // its bytes are not covered by that sync, so the file must stay marked.
        let mut landed = false;
        let synced = s
            .sync_with(|file| {
                if !landed {
                    landed = true;
                    let _ = s.write_piece(1, &a[16..32]).unwrap();
                    assert_eq!(file, 0);
                }
            })
            .unwrap();
        assert!(landed);
        assert_eq!(synced, vec![0]);
        assert!(
            lock(&s.unsynced).contains_key(&0),
            "a write during sync lost its needs-sync mark"
        );
        assert_eq!(s.sync().unwrap(), vec![0]);
        assert!(lock(&s.unsynced).is_empty());
        assert_eq!(s.sync().unwrap(), Vec::<usize>::new());
        // Verifying marks the file too (bytes of an earlier run may be in the page cache).
        assert!(s.verify_piece(1).unwrap().is_some());
        assert_eq!(s.sync().unwrap(), vec![0]);
    }

    #[test]
    fn open_reports_what_was_there_and_partial_mode_tolerates_damage() {
        let a = data(40, 3);
        let b = data(20, 4);
        let info = info_for(&[("t/a", &a), ("t/b", &b)], 16);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/a"), &a[..25]).unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        let found = s.found();
        assert_eq!(found[0].present, 25);
        assert_eq!(
            found[0].stamp.unwrap().size,
            40,
            "stamp taken after resizing"
        );
        assert_eq!(found[1].present, 0);
        assert_eq!(found[1].stamp.unwrap().size, 20);
        assert_eq!(s.stamp(0).unwrap(), found[0].stamp.unwrap());
        drop(s);
        // Partial: a missing file and a directory in place of a file are just absent data.
        std::fs::remove_file(dir.path().join("t/b")).unwrap();
        let p = Storage::open(dir.path(), &info, OpenMode::Partial).unwrap();
        assert_eq!(
            p.found()[1],
            FileFound {
                present: 0,
                stamp: None
            }
        );
        assert!(p.verify_piece(3).unwrap().is_none());
        assert!(p.verify_piece(0).unwrap().is_some());
        assert!(matches!(
            p.write_piece(0, &a[..16]),
            Err(StorageError::ReadOnly)
        ));
        std::fs::create_dir(dir.path().join("t/b")).unwrap();
        let p = Storage::open(dir.path(), &info, OpenMode::Partial).unwrap();
        let ok: Vec<u32> = p.verify_all().unwrap().iter().map(|v| v.index()).collect();
        assert_eq!(ok, vec![0]);
        assert!(
            lock(&p.unsynced).is_empty(),
            "read-only storage has nothing to sync"
        );
    }

    #[test]
    fn refuses_bad_pieces() {
        let a = data(40, 3);
        let info = info_for(&[("f", &a)], 16);
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        assert!(matches!(
            s.write_piece(0, &a[..15]),
            Err(StorageError::WrongSize { .. })
        ));
        let mut bad = a[..16].to_vec();
        bad[0] ^= 1;
        assert!(matches!(
            s.write_piece(0, &bad),
            Err(StorageError::HashMismatch(0))
        ));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), vec![0u8; 40]);
        assert!(matches!(
            s.write_piece(3, &a[..8]),
            Err(StorageError::Layout(_))
        ));
        assert!(s.verify_piece(9).is_err());
        assert!(s.read_block(0, 10, 10).is_err());
    }

    #[test]
    fn existing_mode_checks_files() {
        let a = data(40, 3);
        let info = info_for(&[("f", &a)], 16);
        let dir = tempfile::tempdir().unwrap();
        let e = Storage::open(dir.path(), &info, OpenMode::Existing).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::write(dir.path().join("f"), &a[..39]).unwrap();
        let e = Storage::open(dir.path(), &info, OpenMode::Existing).unwrap_err();
        assert!(e.to_string().contains("39 bytes"), "{e}");
    }

    #[test]
    fn create_resizes_and_refuses_symlinks() {
        let a = data(40, 3);
        let info = info_for(&[("d/f", &a)], 16);
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        assert!(matches!(
            Storage::open(dir.path(), &info, OpenMode::Create),
            Err(StorageError::Path(PathError::Symlink(_)))
        ));
        std::fs::remove_file(dir.path().join("d")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), dir.path().join("d/f")).unwrap();
        assert!(matches!(
            Storage::open(dir.path(), &info, OpenMode::Create),
            Err(StorageError::Path(PathError::Symlink(_)))
        ));
        assert!(!outside.path().join("x").exists());
        std::fs::remove_file(dir.path().join("d/f")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 100]).unwrap();
        Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("d/f")).unwrap().len(), 40);
    }

    #[test]
    fn many_files_do_not_exhaust_descriptors() {
        let blobs: Vec<Vec<u8>> = (0..MAX_OPEN_FILES * 2).map(|i| data(3, i as u8)).collect();
        let names: Vec<String> = (0..blobs.len()).map(|i| format!("f{i:03}")).collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&blobs)
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let info = info_for(&files, 16);
        let all = blobs.concat();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &info, OpenMode::Create).unwrap();
        for p in 0..s.layout().num_pieces() {
            let size = s.layout().piece_size(p).unwrap() as usize;
            let off = p as usize * 16;
            let _ = s.write_piece(p, &all[off..off + size]).unwrap();
        }
        assert!(lock(&s.open).len() <= MAX_OPEN_FILES);
        s.sync().unwrap();
        assert!(lock(&s.unsynced).is_empty());
        assert_eq!(
            s.verify_all().unwrap().len(),
            s.layout().num_pieces() as usize
        );
    }
}
