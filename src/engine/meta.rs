//! What a torrent knows once its info dictionary is known: geometry, files, the dictionary's
//! exact bytes (served with `ut_metadata`), and block reads for serving peers. Also the pool
//! of piece buffers shared by peer tasks (which fill them) and hashers (which return them).

use std::sync::Mutex;

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
}

impl Meta {
    /// Wraps parsed metadata and opened storage.
    pub(crate) fn new(info: Info, info_bytes: Vec<u8>, storage: Storage) -> Meta {
        Meta {
            layout: storage.layout().clone(),
            info,
            info_bytes,
            storage,
        }
    }

    /// Reads block `req` straight into `out` (exactly `req.length` bytes), for seeding.
    pub(crate) fn read_block_into(
        &self,
        req: &BlockRequest,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        if out.len() != req.length as usize {
            return Err(LayoutError::Empty.into());
        }
        self.storage.read_block_into(req.index, req.begin, out)
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
