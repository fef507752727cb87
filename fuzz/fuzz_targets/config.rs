//! The configuration loader: arbitrary text as a wspair.toml. A bad file must be an error that
//! names what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(err) = wspair::Config::load_text(std::path::Path::new("fuzz.toml"), text, &[]) {
        assert!(!err.to_string().is_empty());
    }
});
