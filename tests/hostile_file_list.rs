//! A hostile file list: 100,000 files with deep paths that share nothing. Parsing must stay
//! linear in the size of the info dictionary (before, every path prefix of every file was
//! allocated, so memory grew with depth squared) and within a stated bound.
//!
//! The bound is measured with a counting global allocator in this test binary: the peak of
//! live heap bytes while parsing, divided by the size of the info dictionary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use dhtnode::torrent::Info;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap while parsing, per byte of info dictionary. Measured: see the assertion message;
/// the bound leaves room for allocator and hash-map growth.
const MAX_HEAP_PER_INFO_BYTE: usize = 40;

#[test]
fn hundred_thousand_deep_paths_parse_in_linear_memory() {
    const FILES: usize = 100_000;
    const DEPTH: usize = 40;
    let mut info = Vec::with_capacity(16 << 20);
    info.extend_from_slice(b"d5:filesl");
    for i in 0..FILES {
        info.extend_from_slice(b"d6:lengthi1e4:pathl");
        let top = format!("d{i}");
        info.extend_from_slice(format!("{}:{top}", top.len()).as_bytes());
        for _ in 0..DEPTH - 2 {
            info.extend_from_slice(b"1:a");
        }
        info.extend_from_slice(b"1:fee");
    }
    let pieces = FILES.div_ceil(16384);
    info.extend_from_slice(b"e4:name4:tree12:piece lengthi16384e6:pieces");
    info.extend_from_slice(format!("{}:", pieces * 20).as_bytes());
    info.extend(std::iter::repeat_n(0u8, pieces * 20));
    info.push(b'e');

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = std::time::Instant::now();
    let parsed = Info::from_bytes(&info).expect("a deep but valid file list parses");
    let took = start.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(parsed.files.len(), FILES);
    assert_eq!(parsed.files[7].path.depth(), DEPTH + 1);
    let per_byte = peak / info.len();
    eprintln!(
        "info {} bytes, {FILES} files × {DEPTH} deep: peak heap {} MB ({per_byte} B per info byte), {took:?}",
        info.len(),
        peak >> 20
    );
    assert!(
        per_byte <= MAX_HEAP_PER_INFO_BYTE,
        "peak heap {peak} B = {per_byte} B per info byte (bound {MAX_HEAP_PER_INFO_BYTE})"
    );
}
