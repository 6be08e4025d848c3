//! Arbitrary bytes as a consumed message, through the default rules: no
//! panic; every clean record is JSON serde_json reads; the same bytes give
//! the same outcome twice; with a suppression set that says yes to one
//! person, a message naming them is never clean with their id in it.
//! And through an empty rule set (no rule names a key, so the walk copies
//! objects whole on the tokenizer's duplicate-key marks), checked against
//! serde_json: a message comes out exactly when serde_json reads it as an
//! object without a repeated key, and then as the same value (envelopes
//! aside: their calls are judged one by one).
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
        Sanitizer::compile(&file, KeySupply::Fixed(&Secret::new("fuzz-key")), LIMITS)
            .expect("the default rules compile")
    })
}

fn empty_rules() -> &'static Sanitizer {
    static S: OnceLock<Sanitizer> = OnceLock::new();
    S.get_or_init(|| {
        let (file, _) = RuleFile::parse("empty.yaml", "version: 1\nname: empty\nrules: []\n")
            .expect("the empty rule set parses");
        Sanitizer::compile(&file, KeySupply::Fixed(&Secret::new("fuzz-key")), LIMITS)
            .expect("the empty rule set compiles")
    })
}

const LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_depth: 32,
};

/// A JSON value as serde_json reads it, refusing an object with a
/// repeated key, and its depth (containers nested).
struct Unique(serde_json::Value, usize);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
                Ok(Unique(Value::Bool(v), 0))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
                Ok(Unique(v.into(), 0))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
                Ok(Unique(v.into(), 0))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
                Ok(Unique(v.into(), 0))
            }
            fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
                Ok(Unique(v.into(), 0))
            }
            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique(Value::Null, 0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                let (mut v, mut depth) = (Vec::new(), 0);
                while let Some(Unique(e, d)) = a.next_element()? {
                    v.push(e);
                    depth = depth.max(d);
                }
                Ok(Unique(Value::Array(v), depth + 1))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                let (mut m, mut depth) = (serde_json::Map::new(), 0);
                while let Some((k, Unique(e, d))) = a.next_entry::<String, Unique>()? {
                    if m.insert(k, e).is_some() {
                        return Err(A::Error::custom("repeated key"));
                    }
                    depth = depth.max(d);
                }
                Ok(Unique(Value::Object(m), depth + 1))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `data` may be an envelope, whose calls are judged one by one
/// (a bad call is refused, the others go out): beyond what serde_json can
/// tell. When serde_json cannot read the message at all (a call with
/// `1e400`, say), any `batch` in it, or an escape that may spell one.
fn may_be_envelope(data: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) => v.get("batch").is_some(),
        Err(_) => {
            let has = |s: &[u8]| data.windows(s.len()).any(|w| w == s);
            has(b"batch") || has(b"\\u")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let empty = empty_rules();
    let (mut scratch, mut out) = (Scratch::default(), Vec::new());
    let judged = empty.judge(data, None, &mut scratch, &mut out, None);
    let expected = match serde_json::from_slice::<Unique>(data) {
        Ok(Unique(v @ serde_json::Value::Object(_), depth)) if depth <= LIMITS.max_depth => Some(v),
        _ => None,
    };
    match (&judged, &expected) {
        (Ok(Sanitized::Clean { records, .. }), Some(v)) if v.get("batch").is_none() => {
            let r: Vec<&[u8]> = records.iter(&out).collect();
            assert_eq!(r.len(), 1, "one record");
            let got: serde_json::Value =
                serde_json::from_slice(r[0]).expect("clean output is JSON");
            assert_eq!(&got, v, "no rules: the value as it came");
        }
        (Err(_), None) => {}
        // Over the size limit: a dead letter serde_json cannot tell.
        (Err(_), Some(_)) if data.len() > LIMITS.max_bytes => {}
        _ if may_be_envelope(data) => {}
        _ => panic!("empty rules: {judged:?}, serde_json: {expected:?}"),
    }
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
