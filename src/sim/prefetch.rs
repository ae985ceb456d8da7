//! Cache prefetch hints for the event loop.
//!
//! A simulated network is far larger than any cache, and each event runs a different node:
//! most of an event's time was the processor waiting for that node's memory (its core's
//! state, the datagram), one miss after another. The event after the current one is known
//! (the queue's next entry), so its first misses can be started while this one runs.
//!
//! No crate offers this: it is one intrinsic, and std only exposes it per architecture.

/// Bytes per cache line on the machines we run on.
const LINE: usize = 64;

/// Asks the processor to start loading `bytes` bytes from `p` into cache. A hint only: it
/// reads nothing into the program and never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T, bytes: usize) {
    let base = p.cast::<u8>();
    let mut off = 0;
    while off < bytes {
        line(base.wrapping_add(off));
        off += LINE;
    }
}

#[inline(always)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint; it has no architectural effect and cannot fault, so
    // any address is sound.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
