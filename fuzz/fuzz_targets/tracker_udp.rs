#![no_main]
//! Fuzz target `tracker_udp`: see `fuzz/checks.rs` (`check`) for what is decoded and asserted.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check("tracker_udp", data);
});
