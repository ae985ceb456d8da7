//! Hasher threads: SHA-1 check complete pieces in memory and write them to disk.
//!
//! Hashing is the CPU bottleneck of a fast download, so it runs on dedicated OS threads,
//! overlapping with the network tasks. A piece is hashed exactly once, from the buffer its
//! blocks were assembled in ([`Storage::write_piece`] checks the hash before its positional
//! writes) — never read back from disk. The job channel is bounded: when hashers fall behind,
//! peer tasks wait to hand over pieces and TCP pushes back on the senders, so memory stays
//! bounded.
//!
//! [`Storage::write_piece`]: crate::torrent::Storage::write_piece

use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};
use tokio::sync::mpsc;

use super::events::{Event, HashOutcome, HashResult};
use super::meta::{BufferPool, Meta};
use crate::sync::lock;
use crate::torrent::{StorageError, BLOCK_SIZE};

/// A complete piece to check and write.
pub(crate) struct HashJob {
    /// Piece index.
    pub piece: u32,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Torrent metadata and storage.
    pub meta: Arc<Meta>,
    /// Also return per-block hashes on success (the piece failed before: smart-ban compares).
    pub block_hashes: bool,
    /// Where the result goes (the torrent's driver).
    pub events: mpsc::UnboundedSender<Event>,
    /// Where the buffer goes back to once hashed.
    pub pool: Arc<BufferPool>,
}

/// SHA-1 of every 16 KiB block of `data`.
pub(crate) fn block_hashes(data: &[u8]) -> Vec<[u8; 20]> {
    data.chunks(BLOCK_SIZE as usize)
        .map(|c| Sha1::digest(c).into())
        .collect()
}

fn run(job: HashJob) {
    let outcome = match job.meta.storage.write_piece(job.piece, &job.data) {
        Ok(v) => HashOutcome::Passed(v, job.block_hashes.then(|| block_hashes(&job.data))),
        Err(StorageError::HashMismatch(_)) => HashOutcome::Failed(block_hashes(&job.data)),
        Err(e) => HashOutcome::Error(e),
    };
    job.pool.give(job.data);
    let _ = job.events.send(Event::Hashed(HashResult {
        piece: job.piece,
        outcome,
    }));
}

/// Starts `threads` hasher threads; they exit when every sender is dropped.
pub(crate) fn spawn(threads: usize, capacity: usize) -> mpsc::Sender<HashJob> {
    let (tx, rx) = mpsc::channel::<HashJob>(capacity.max(1));
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        let _ = std::thread::Builder::new()
            .name(format!("dhtnode-hash-{i}"))
            .spawn(move || loop {
                let job = lock(&rx).blocking_recv();
                match job {
                    Some(job) => run(job),
                    None => return,
                }
            });
    }
    tx
}

/// Number of hasher threads for a config value (0 = one per CPU, at most 4).
pub(crate) fn thread_count(cfg: usize) -> usize {
    if cfg > 0 {
        return cfg;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4)
}
