//! Small synchronisation helpers shared by the engine and storage.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: a task that panicked while holding a lock must not take
/// the whole torrent (or storage) down with it; every guarded structure here stays consistent
/// between statements, so the data behind a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
