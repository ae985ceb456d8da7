#![no_main]
//! Fuzz target `ut_pex`: see `fuzz/checks.rs` (`check`) for what is decoded and asserted.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check("ut_pex", data);
});
