#![no_main]
//! Fuzz target `krpc_decode`: see `fuzz/checks.rs` (`check`) for what is decoded and asserted.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check("krpc_decode", data);
});
