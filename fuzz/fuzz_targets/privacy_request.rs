//! Arbitrary records of the privacy-requests topic: parsing never panics,
//! an error never shows an id, and a request's `Debug` never does either.
#![no_main]
use event_sanitizer::privacy::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(r) => {
            let shown = format!("{r:?}");
            for id in [&r.user_id, &r.anonymous_id].into_iter().flatten() {
                if id.len() > 3 && !"Request request_id action user_id anonymous_id redacted Delete Suppress Unsuppress".contains(id.as_str()) && !r.request_id.contains(id.as_str()) {
                    assert!(!shown.contains(id.as_str()), "an id in Debug");
                }
            }
        }
        Err(e) => {
            let _ = e.code();
            let _ = e.to_string();
        }
    }
});
