//! Arbitrary bytes as a consumed message, through the default rules: no
//! panic; every clean record is JSON serde_json reads; the same bytes give
//! the same outcome twice; with a suppression set that says yes to one
//! person, a message naming them is never clean with their id in it.
#![no_main]
use event_sanitizer::engine::{Id, KeySupply, Limits, Sanitized, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn sanitizer() -> &'static Sanitizer {
    static S: OnceLock<Sanitizer> = OnceLock::new();
    S.get_or_init(|| {
        let text = include_str!("../../rules/customerio.yaml");
        let (file, _) = RuleFile::parse("customerio.yaml", text).expect("the default rules parse");
        let limits = Limits {
            max_bytes: 64 * 1024,
            max_depth: 32,
        };
        Sanitizer::compile(&file, KeySupply::Fixed(&Secret::new("fuzz-key")), limits)
            .expect("the default rules compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let s = sanitizer();
    let (mut scratch, mut out) = (Scratch::default(), Vec::new());
    let first = s.judge(data, None, &mut scratch, &mut out, None);
    if let Ok(Sanitized::Clean { records, .. }) = &first {
        for r in records.iter(&out) {
            serde_json::from_slice::<serde_json::Value>(r).expect("clean output is JSON");
        }
    }
    let first_out = out.clone();
    let second = s.judge(data, None, &mut scratch, &mut out, None);
    assert_eq!(first, second, "deterministic");
    assert_eq!(first_out, out, "deterministic output");
    // Suppressed: "fz" as a userId, in any shape the message takes.
    let is = |id: Id<'_>| id == Id::User("fz");
    let judged = s.judge(data, Some(b"k"), &mut scratch, &mut out, Some(&is));
    if let Ok(Sanitized::Clean { records, .. }) = &judged {
        for r in records.iter(&out) {
            let v: serde_json::Value = serde_json::from_slice(r).expect("clean output is JSON");
            let mut calls = vec![&v];
            if let Some(b) = v.get("batch").and_then(|b| b.as_array()) {
                calls.extend(b.iter());
            }
            for c in calls {
                assert_ne!(
                    c.get("userId").and_then(|u| u.as_str()),
                    Some("fz"),
                    "a suppressed person went out"
                );
            }
        }
    }
});
