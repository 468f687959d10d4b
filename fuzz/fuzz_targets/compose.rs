//! Compose files: YAML with positions, interpolation, key-by-key reading.
#![no_main]
use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shoal_cli::compose::parse_compose;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut variables = BTreeMap::new();
    variables.insert("TAG".to_string(), "1.0".to_string());
    variables.insert("EMPTY".to_string(), String::new());
    let _ = parse_compose(
        text,
        "compose.yml",
        &variables,
        Path::new("/nonexistent-fuzz-dir"),
    );
});
