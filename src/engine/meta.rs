//! What a torrent knows once its info dictionary is known: geometry, files, the dictionary's
//! exact bytes (served with `ut_metadata`), and block reads for serving peers. Also the pool
//! of piece buffers shared by peer tasks (which fill them) and hashers (which return them).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::torrent::{Info, Layout, LayoutError, Storage, StorageError};
use crate::wire::BlockRequest;

/// Everything known once the info dictionary is.
pub(crate) struct Meta {
    /// The parsed info dictionary.
    pub info: Info,
    /// Its exact bytes (served via `ut_metadata`).
    pub info_bytes: Vec<u8>,
    /// Piece/file geometry.
    pub layout: Layout,
    /// The files on disk.
    pub storage: Storage,
    /// Read-only handles for serving blocks, opened lazily.
    read_files: Mutex<HashMap<usize, Arc<File>>>,
}

impl Meta {
    /// Wraps parsed metadata and opened storage.
    pub(crate) fn new(info: Info, info_bytes: Vec<u8>, storage: Storage) -> Meta {
        Meta {
            layout: storage.layout().clone(),
            info,
            info_bytes,
            storage,
            read_files: Mutex::new(HashMap::new()),
        }
    }

    fn read_file(&self, i: usize) -> Result<Arc<File>, StorageError> {
        let mut files = lock(&self.read_files);
        if let Some(f) = files.get(&i) {
            return Ok(Arc::clone(f));
        }
        let path = self
            .storage
            .file_path(i)
            .map(PathBuf::from)
            .ok_or(LayoutError::Empty)?;
        let f = File::open(&path)
            .map(Arc::new)
            .map_err(|source| StorageError::Io { path, source })?;
        if files.len() >= crate::torrent::storage::MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(i, Arc::clone(&f));
        Ok(f)
    }

    /// Reads block `req` straight into `out` (exactly `req.length` bytes), for seeding.
    pub(crate) fn read_block_into(
        &self,
        req: &BlockRequest,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        let mut pos = 0usize;
        for seg in self.layout.segments(req.index, req.begin, req.length)? {
            let n = usize::try_from(seg.len).map_err(|_| LayoutError::Empty)?;
            let dst = out.get_mut(pos..pos + n).ok_or(LayoutError::Empty)?;
            let f = self.read_file(seg.file)?;
            f.read_exact_at(dst, seg.offset)
                .map_err(|source| StorageError::Io {
                    path: self
                        .storage
                        .file_path(seg.file)
                        .map(PathBuf::from)
                        .unwrap_or_default(),
                    source,
                })?;
            pos += n;
        }
        Ok(())
    }
}

/// Recycled piece buffers: fresh large allocations cost page faults and zeroing per piece,
/// which shows at loopback speed.
#[derive(Default)]
pub(crate) struct BufferPool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

/// Most piece buffers kept for reuse.
const POOL_MAX: usize = 16;

impl BufferPool {
    /// A buffer of exactly `size` bytes, recycled when possible (contents unspecified).
    pub(crate) fn take(&self, size: usize) -> Vec<u8> {
        let mut pool = lock(&self.bufs);
        match pool.iter().position(|b| b.len() == size) {
            Some(i) => pool.swap_remove(i),
            None => vec![0u8; size],
        }
    }

    /// Returns a buffer to the pool (dropped if the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        let mut pool = lock(&self.bufs);
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}
