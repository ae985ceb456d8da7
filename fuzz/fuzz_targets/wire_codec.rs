#![no_main]
//! Fuzz target `wire_codec`: see `fuzz/checks.rs` (`check`) for what is decoded and asserted.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check("wire_codec", data);
});
