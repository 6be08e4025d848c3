//! Properties over generated JSON, with the default rules:
//! - no key a `drop` rule names survives, at any depth, under any spelling;
//! - no raw value of a hashed field appears anywhere in the output;
//! - output is valid JSON, and the same input gives the same bytes;
//! - the tokenizer accepts exactly what serde_json accepts;
//! - an object with the same key twice (however spelled in JSON) is a dead
//!   letter at any depth, in a subtree the rules walk or one copied whole.

mod common;
use event_sanitizer::engine::{DeadLetterReason, Scratch};
use proptest::prelude::*;
use serde_json::{Map, Value};

use common::HASH_FIELDS as HASHED;
use common::NEVER_SEND as NEVER;

/// The spellings apps use for a snake_case name.
fn spellings(name: &'static str) -> impl Strategy<Value = String> {
    let parts: Vec<&str> = name.split('_').collect();
    let camel = parts[0].to_string()
        + &parts[1..]
            .iter()
            .map(|p| p[..1].to_uppercase() + &p[1..])
            .collect::<String>();
    let pascal = parts
        .iter()
        .map(|p| p[..1].to_uppercase() + &p[1..])
        .collect::<String>();
    prop_oneof![
        Just(name.to_string()),
        Just(camel),
        Just(pascal),
        Just(name.to_uppercase()),
        Just(parts.join("-")),
        Just(parts.join(" "))
    ]
}

fn sensitive_key() -> impl Strategy<Value = String> {
    prop::sample::select(NEVER).prop_flat_map(spellings)
}

fn hashed_key() -> impl Strategy<Value = String> {
    prop::sample::select(HASHED).prop_flat_map(spellings)
}

fn plain_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("type".to_string()),
        Just("userId".to_string()),
        Just("plan".to_string()),
        "[a-z]{1,8}"
    ]
}

/// Values planted under hashed keys: unmistakable, so "appears anywhere" is exact.
fn secret_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 ]{4,12}".prop_map(|s| format!("PII<{s}>"))
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z0-9 .@-]{0,12}".prop_map(Value::from),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                prop_oneof![
                    (plain_key(), inner.clone()),
                    (sensitive_key(), inner.clone()),
                    (
                        hashed_key(),
                        prop_oneof![secret_value().prop_map(Value::from), inner.clone()]
                    ),
                ],
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop_oneof![plain_key(), sensitive_key(), hashed_key()],
            tree(),
        ),
        0..6,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

fn normalized(k: &str) -> String {
    event_sanitizer::rules::KeyMatch::Normalized
        .canonical(k)
        .into_owned()
}

fn keys_anywhere(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                keys_anywhere(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys_anywhere(v, out)),
        _ => {}
    }
}

fn hashed_strings(v: &Value, under_hashed: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let h = under_hashed || HASHED.contains(&normalized(k).as_str());
                hashed_strings(v, h, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| hashed_strings(v, under_hashed, out)),
        Value::String(s) if under_hashed && s.starts_with("PII<") => out.push(s.clone()),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn drops_and_hashes_hold_at_any_depth(ev in event()) {
        let s = common::default_rules_without_contract();
        let input = serde_json::to_string(&ev).unwrap();
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        match s.sanitize(input.as_bytes(), &mut scratch, &mut out) {
            // A generated object can hold `phone` and `phone_hash`-like
            // collisions only by chance; those are dead letters, never leaks.
            Err(DeadLetterReason::RenameCollision) => return Ok(()),
            Err(e) => prop_assert!(false, "dead letter {e} for {input}"),
            Ok(_) => {}
        }
        let text = String::from_utf8(out.clone()).unwrap();
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        let mut keys = Vec::new();
        keys_anywhere(&v, &mut keys);
        for k in &keys {
            prop_assert!(!NEVER.contains(&normalized(k).as_str()), "dropped key {k} survived: {text}");
            prop_assert!(!HASHED.contains(&normalized(k).as_str()), "hashed key {k} kept its name: {text}");
        }
        let mut planted = Vec::new();
        hashed_strings(&ev, false, &mut planted);
        for p in planted {
            prop_assert!(!text.contains(&p), "hashed value {p} appears raw: {text}");
        }
        let mut again = Vec::new();
        s.sanitize(input.as_bytes(), &mut Scratch::default(), &mut again).unwrap();
        prop_assert_eq!(out, again);
    }

    #[test]
    fn tokenizer_accepts_exactly_what_serde_json_accepts(ev in event(), cut in 0usize..400, insert in prop::sample::select(vec!['{', '}', '[', ']', ',', ':', '"', '\\', 'x', '1', ' ', '-', '.'])) {
        let s = common::default_rules();
        let mut text = serde_json::to_string(&ev).unwrap();
        let at = cut.min(text.len());
        if text.is_char_boundary(at) {
            if cut % 2 == 0 { text.insert(at, insert); } else if at < text.len() && text.is_char_boundary(at + 1) { text.remove(at); }
        }
        let serde_ok = serde_json::from_str::<Value>(&text).is_ok();
        let ours = s.sanitize(text.as_bytes(), &mut Scratch::default(), &mut Vec::new());
        let ours_syntax_ok = !matches!(ours, Err(DeadLetterReason::InvalidJson { .. }) | Err(DeadLetterReason::Empty));
        prop_assert_eq!(ours_syntax_ok, serde_ok, "input {}", text);
    }

    #[test]
    fn duplicate_keys_are_refused_walked_or_copied(
        traits in keyed_tree(),
        context in keyed_tree(),
        spaced in any::<bool>(),
    ) {
        // Only `traits` is walked by a path rule; `context` is copied whole
        // (and everything is with no rules at all).
        let walked = common::compile(
            "version: 1\nname: t\nrules:\n  - { id: d, action: drop, paths: [traits.phone] }\n",
        );
        let copied = common::compile("version: 1\nname: t\nrules: []\n");
        // A field rule walks every object.
        let every = common::compile(
            "version: 1\nname: t\nrules:\n  - { id: d, action: drop, fields: [phone] }\n",
        );
        let sep = if spaced { ", " } else { "," };
        let input = format!(
            "{{\"type\":\"identify\"{sep}\"traits\":{}{sep}\"context\":{}}}",
            traits.text(sep),
            context.text(sep)
        );
        let dup = traits.has_duplicate() || context.has_duplicate();
        for s in [&walked, &copied, &every] {
            let got = common::run(s, &input);
            if dup {
                prop_assert_eq!(got, Err("duplicate_key"), "{}", input);
            } else {
                prop_assert!(got.is_ok(), "{:?} for {}", got, input);
            }
        }
    }
}

/// Key spellings: raw JSON text and what it decodes to. Escapes spell keys
/// that are also there plainly; long keys share their first 16 bytes.
const KEYS: &[(&str, &str)] = &[
    ("a", "a"),
    ("b", "b"),
    ("\\u0061", "a"),
    ("ab", "ab"),
    ("ba", "ba"),
    ("\\u0062", "b"),
    ("a_long_key_name_one", "a_long_key_name_one"),
    ("a_long_key_name_two", "a_long_key_name_two"),
    ("a_long_key_name_on\\u0065", "a_long_key_name_one"),
    ("k", "k"),
];

/// A JSON value whose objects draw their keys from [`KEYS`].
#[derive(Clone, Debug)]
enum Keyed {
    Leaf(u8),
    Object(Vec<(usize, Keyed)>),
    Array(Vec<Keyed>),
}

impl Keyed {
    fn text(&self, sep: &str) -> String {
        match self {
            Keyed::Leaf(n) => n.to_string(),
            Keyed::Object(m) => {
                let members: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("\"{}\":{}", KEYS[*k].0, v.text(sep)))
                    .collect();
                format!("{{{}}}", members.join(sep))
            }
            Keyed::Array(a) => {
                let items: Vec<String> = a.iter().map(|v| v.text(sep)).collect();
                format!("[{}]", items.join(sep))
            }
        }
    }

    fn has_duplicate(&self) -> bool {
        match self {
            Keyed::Leaf(_) => false,
            Keyed::Object(m) => {
                let mut seen = std::collections::HashSet::new();
                m.iter().any(|(k, _)| !seen.insert(KEYS[*k].1))
                    || m.iter().any(|(_, v)| v.has_duplicate())
            }
            Keyed::Array(a) => a.iter().any(Keyed::has_duplicate),
        }
    }
}

fn keyed_tree() -> impl Strategy<Value = Keyed> {
    let leaf = any::<u8>().prop_map(Keyed::Leaf);
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec((0..KEYS.len(), inner.clone()), 0..6).prop_map(Keyed::Object),
            prop::collection::vec(inner, 0..4).prop_map(Keyed::Array),
        ]
    })
    .prop_map(|v| match v {
        // `traits` and `context` are objects.
        Keyed::Object(_) => v,
        other => Keyed::Object(vec![(9, other)]),
    })
}
