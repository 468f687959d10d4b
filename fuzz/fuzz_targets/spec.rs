//! Spec files (JSON and YAML), then the daemon's validation at the API edge
//! (`spec_from_doc`) of what parses, and the spec back to a document.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_cli::spec::{parse_spec, SpecFormat};
use shoal_fuzz::services;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if kind % 2 == 0 {
        SpecFormat::Json
    } else {
        SpecFormat::Yaml
    };
    if let Ok(doc) = parse_spec(text, format) {
        if let Ok(spec) = services::spec_from_doc(&doc) {
            let again = services::doc_from_spec(&spec);
            services::spec_from_doc(&again).expect("a spec's own document is valid");
        }
    }
});
