//! Arbitrary webhook requests (timestamp header, signature header, body):
//! verification never panics and never accepts without the key; a body
//! that verifies is sanitized by the webhook rules without panicking, and
//! its clean output is JSON.
#![no_main]
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use event_sanitizer::webhooks::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rules() -> &'static Sanitizer {
    static S: OnceLock<Sanitizer> = OnceLock::new();
    S.get_or_init(|| {
        let text = include_str!("../../rules/customerio-webhooks.yaml");
        let (file, _) = RuleFile::parse("customerio-webhooks.yaml", text).expect("parses");
        Sanitizer::compile(
            &file,
            KeySupply::Fixed(&Secret::new("fuzz-key")),
            Limits::default(),
        )
        .expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    // timestamp \n signature \n body
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(ts), Some(sig), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(ts), Ok(sig)) = (std::str::from_utf8(ts), std::str::from_utf8(sig)) else {
        return;
    };
    let keys = [Secret::new("the-signing-key")];
    assert!(!verify(&keys, ts, body, sig) || sig == sign(b"the-signing-key", ts, body));
    // As a request signed with the key would be handled.
    assert!(verify(&keys, ts, body, &sign(b"the-signing-key", ts, body)));
    let (mut scratch, mut out) = (Scratch::default(), Vec::new());
    if let Ok(records) = rules().sanitize(body, &mut scratch, &mut out) {
        for r in records.iter(&out) {
            serde_json::from_slice::<serde_json::Value>(r).expect("clean output is JSON");
        }
    }
});
