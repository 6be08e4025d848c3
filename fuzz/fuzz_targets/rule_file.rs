//! Arbitrary text as a rule file: parsing and compiling never panic, and a
//! rule file that compiles sanitizes a sample event without panicking.
#![no_main]
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((file, _)) = RuleFile::parse("fuzz.yaml", text) else {
        return;
    };
    let key = Secret::new("fuzz-key");
    if let Ok(s) = Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()) {
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let event = include_bytes!("../../tests/data/one_event.json");
        let _ = s.sanitize(event, &mut scratch, &mut out);
    }
});
