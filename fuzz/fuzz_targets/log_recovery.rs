#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| streambus_fuzz::log_recovery::check(data));
