//! Arbitrary text as the service configuration: loading and validating it
//! never panics, and an error never shows a secret it read.
#![no_main]
use event_sanitizer::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::env::temp_dir().join(format!("es-fuzz-config-{}.yaml", std::process::id()));
    if std::fs::write(&path, text).is_err() {
        return;
    }
    let _ = Config::load_with_env(Some(&path), Vec::<(String, String)>::new());
});
