#![no_main]
//! Fuzz target `tracker_http`: see `fuzz/checks.rs` (`check`) for what is decoded and asserted.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check("tracker_http", data);
});
