//! Fuzz target: any bytes through parse + check, and through fmt (idempotent) when they parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptl::lang::{check, format, parse};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = check::check_bytes(Path::new("pipelines/fuzz.ptl"), data, &[]);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(module) = parse::parse(0, text) {
            let once = format::format(text, &module);
            let again = parse::parse(0, &once).expect("formatted output parses");
            assert_eq!(format::format(&once, &again), once);
        }
    }
});
