//! The delivery contract (`destination` in a rule file): each Customer.io
//! limit just under and just over, checks on the sanitized output (not the
//! input), overrides, batch splitting, and a corpus with planted violations.

mod common;
use common::{compile, run};
use event_sanitizer::engine::{Sanitizer, Scratch};
use serde_json::{json, Value};

const CUSTOMERIO: &str = "version: 1\nname: t\ndestination: { profile: customerio }\nrules: []\n";

fn customerio() -> Sanitizer {
    compile(CUSTOMERIO)
}

fn check(s: &Sanitizer, v: &Value) -> Result<String, &'static str> {
    run(s, &v.to_string())
}

/// A track call padded so that its serialized form is exactly `size` bytes.
fn track_of_size(size: usize) -> Value {
    let mut v = json!({"type": "track", "userId": "u1", "event": "E", "properties": {"pad": ""}});
    let base = v.to_string().len();
    v["properties"]["pad"] = "x".repeat(size - base).into();
    assert_eq!(v.to_string().len(), size);
    v
}

#[test]
fn call_size_at_and_over_32_kib() {
    let s = customerio();
    assert!(check(&s, &track_of_size(32 * 1024)).is_ok());
    assert_eq!(
        check(&s, &track_of_size(32 * 1024 + 1)),
        Err("contract.event_too_large")
    );
}

#[test]
fn size_is_measured_after_the_rules() {
    // 40 KB in, but the big field is dropped: what is produced fits.
    let s = compile(
        "version: 1\nname: t\ndestination: { profile: customerio }\nrules:\n  - { id: d, action: drop, fields: [blob] }\n",
    );
    let mut v = track_of_size(40_000);
    v["properties"]["blob"] = v["properties"]["pad"].take();
    assert!(check(&s, &v).is_ok());
    // And the other way round: an identifier hashed away is a missing identity.
    let s = compile(
        "version: 1\nname: t\nhash: { algorithm: sha256 }\ndestination: { profile: customerio }\nrules:\n  - { id: h, action: hash, fields: [email] }\n",
    );
    let v = json!({"type": "identify", "traits": {"email": "a@b.co"}});
    assert_eq!(check(&s, &v), Err("contract.missing_identity"));
}

#[test]
fn event_name_present_non_blank_and_at_most_100_bytes() {
    let s = customerio();
    let track = |name: Value| json!({"type": "track", "userId": "u", "event": name});
    assert!(check(&s, &track("e".repeat(100).into())).is_ok());
    // 50 two-byte characters are 100 bytes: still fine; one more is not.
    assert!(check(&s, &track("é".repeat(50).into())).is_ok());
    assert_eq!(
        check(&s, &track(format!("{}x", "é".repeat(50)).into())),
        Err("contract.event_name_too_long")
    );
    assert_eq!(
        check(&s, &track("e".repeat(101).into())),
        Err("contract.event_name_too_long")
    );
    for blank in [json!("   "), json!(""), json!(null), json!(7)] {
        assert_eq!(
            check(&s, &track(blank.clone())),
            Err("contract.missing_event_name"),
            "{blank}"
        );
    }
    let no_event = json!({"type": "track", "userId": "u"});
    assert_eq!(check(&s, &no_event), Err("contract.missing_event_name"));
    // A page call needs no event name.
    assert!(check(&s, &json!({"type": "page", "userId": "u"})).is_ok());
}

#[test]
fn identify_traits_count_name_and_value() {
    let s = customerio();
    let identify = |traits: serde_json::Map<String, Value>| json!({"type": "identify", "userId": "u", "traits": traits});
    let many = |n: usize| (0..n).map(|i| (format!("t{i}"), json!(i))).collect();
    assert!(check(&s, &identify(many(300))).is_ok());
    assert_eq!(
        check(&s, &identify(many(301))),
        Err("contract.too_many_traits")
    );

    let named = |n: usize| [("k".repeat(n), json!(1))].into_iter().collect();
    assert!(check(&s, &identify(named(150))).is_ok());
    assert_eq!(
        check(&s, &identify(named(151))),
        Err("contract.trait_name_too_long")
    );

    let valued = |v: Value| [("bio".to_string(), v)].into_iter().collect();
    assert!(check(&s, &identify(valued("v".repeat(1000).into()))).is_ok());
    assert_eq!(
        check(&s, &identify(valued("v".repeat(1001).into()))),
        Err("contract.trait_value_too_large")
    );
    // Escapes count as the characters they stand for: 1,000 newlines fit.
    assert!(check(&s, &identify(valued("\n".repeat(1000).into()))).is_ok());
    // An object value is measured as the JSON it is sent as.
    let obj = json!({"a": "v".repeat(992)}); // {"a":"vvv..."} = 1,000 bytes
    assert_eq!(obj.to_string().len(), 1000);
    assert!(check(&s, &identify(valued(obj))).is_ok());
    let obj = json!({"a": "v".repeat(993)});
    assert_eq!(
        check(&s, &identify(valued(obj))),
        Err("contract.trait_value_too_large")
    );
    // Trait limits are identify limits: a track call's properties are not traits.
    let t = json!({"type": "track", "userId": "u", "event": "E", "properties": many(400)});
    assert!(check(&s, &t).is_ok());
}

#[test]
fn identifier_at_most_150_characters() {
    let s = customerio();
    let id = |u: String| json!({"type": "page", "userId": u});
    assert!(check(&s, &id("u".repeat(150))).is_ok());
    // Characters, not bytes.
    assert!(check(&s, &id("ü".repeat(150))).is_ok());
    assert_eq!(check(&s, &id("u".repeat(151))), Err("contract.id_too_long"));
}

#[test]
fn every_call_has_an_identity() {
    let s = customerio();
    for ok in [
        json!({"type": "page", "userId": "u"}),
        json!({"type": "page", "anonymousId": "a"}),
        json!({"type": "page", "userId": 42}),
        json!({"type": "identify", "traits": {"email": "a@b.co"}}),
    ] {
        assert!(check(&s, &ok).is_ok(), "{ok}");
    }
    for bad in [
        json!({"type": "page"}),
        json!({"type": "page", "userId": "", "anonymousId": null}),
        json!({"type": "track", "event": "E", "properties": {"email": "a@b.co"}}),
        json!({"type": "identify", "traits": {"email": "  "}}),
        json!({"type": "identify", "traits": {"mail": "a@b.co"}}),
    ] {
        assert_eq!(check(&s, &bad), Err("contract.missing_identity"), "{bad}");
    }
}

/// The walk tells the contract which field each key of a call is; a key
/// spelled with escapes, or renamed by a hash, is read from the output
/// itself. Either way the contract reads the keys as they go out.
#[test]
fn fields_are_the_keys_as_they_go_out() {
    let s = customerio();
    // `type` and `userId` spelled with escapes are those fields.
    assert!(run(
        &s,
        r#"{"\u0074ype":"track","user\u0049d":"u1","event":"E"}"#
    )
    .is_ok());
    assert_eq!(
        run(&s, r#"{"\u0074ype":"purchase","userId":"u1"}"#),
        Err("contract.unknown_type")
    );
    // In a batch too, and the batch's own key.
    assert!(run(
        &s,
        r#"{"b\u0061tch":[{"\u0074ype":"track","userId":"u1","event":"E"}]}"#
    )
    .is_ok());
    assert_eq!(
        run(
            &s,
            r#"{"batch":[{"type":"track","userId":"u1","event":"E"},{"type":"track","\u0075serId":"u1"}]}"#
        ),
        Err("contract.missing_event_name")
    );
    // A hashed key is the name it is renamed to: `user` renamed `userId`
    // identifies the call; `userId` renamed `userId_hash` no longer does.
    let renamed = |template: &str, field: &str| {
        compile(&format!(
            "version: 1\nname: t\nhash: {{ algorithm: sha256, rename: \"{template}\" }}\ndestination: {{ profile: customerio }}\nrules:\n  - {{ id: h, action: hash, fields: [{field}] }}\n"
        ))
    };
    let page = |key: &str| format!(r#"{{"type":"page","{key}":"u1"}}"#);
    assert!(run(&renamed("{key}Id", "user"), &page("user")).is_ok());
    assert_eq!(
        run(&renamed("{key}_hash", "userId"), &page("userId")),
        Err("contract.missing_identity")
    );
    assert_eq!(run(&s, &page("user")), Err("contract.missing_identity"));
}

#[test]
fn type_must_be_a_known_call() {
    let s = customerio();
    for t in ["identify", "track", "page", "screen", "group", "alias"] {
        let v = json!({"type": t, "userId": "u", "event": "E"});
        assert!(check(&s, &v).is_ok(), "{t}");
    }
    for bad in [json!("purchase"), json!("Track"), json!(1), json!(null)] {
        let v = json!({"type": bad, "userId": "u"});
        assert_eq!(check(&s, &v), Err("contract.unknown_type"), "{bad}");
    }
    assert_eq!(
        check(&s, &json!({"userId": "u"})),
        Err("contract.unknown_type")
    );
}

#[test]
fn limits_can_be_overridden_or_turned_off() {
    let s = compile(
        "version: 1\nname: t\ndestination:\n  profile: customerio\n  max_event_name_bytes: off\n  require_identity: false\n  types: [identify, track, order]\n  max_call_bytes: 200\nrules: []\n",
    );
    let long = json!({"type": "track", "event": "e".repeat(150)});
    assert!(check(&s, &long).is_ok());
    assert!(check(&s, &json!({"type": "order"})).is_ok());
    assert_eq!(
        check(&s, &json!({"type": "page", "userId": "u"})),
        Err("contract.unknown_type")
    );
    assert_eq!(
        check(&s, &track_of_size(201)),
        Err("contract.event_too_large")
    );
    // `none` turns everything off; no `destination` checks nothing.
    for text in [
        "version: 1\nname: t\ndestination: { profile: none }\nrules: []\n",
        "version: 1\nname: t\nrules: []\n",
    ] {
        let s = compile(text);
        assert!(check(&s, &json!({"hello": "x".repeat(40_000)})).is_ok());
    }
}

#[test]
fn the_reason_names_the_limit_and_never_the_data() {
    let s = customerio();
    let secret = "u".repeat(151) + "SECRET-ID";
    let v = json!({"type": "page", "userId": secret});
    let exp = s.explain(v.to_string().as_bytes());
    let reason = exp.output.unwrap_err();
    assert_eq!(reason.code(), "contract.id_too_long");
    let text = reason.to_string();
    assert!(text.contains("max_id_chars 150"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

/// Sanitizes and returns the records as JSON values.
fn records(s: &Sanitizer, input: &str) -> Result<Vec<Value>, &'static str> {
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let recs = s
        .sanitize(input.as_bytes(), &mut scratch, &mut out)
        .map_err(|r| r.code())?;
    Ok(recs
        .iter(&out)
        .map(|r| serde_json::from_slice(r).expect("each record is JSON"))
        .collect())
}

#[test]
fn a_large_batch_is_split_in_order_with_its_envelope() {
    let s = compile(
        "version: 1\nname: t\ndestination: { profile: customerio, max_batch_bytes: 1000, max_call_bytes: 200 }\nrules:\n  - { id: d, action: drop, fields: [secret] }\n",
    );
    let calls: Vec<Value> = (0..40)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "E", "properties": {"n": i, "secret": "s"}}))
        .collect();
    let input =
        json!({"batch": calls, "context": {"library": "x"}, "sentAt": "2026-01-01T00:00:00Z"});
    let out = records(&s, &input.to_string()).unwrap();
    assert!(out.len() > 1, "split: {}", out.len());
    let mut seen = Vec::new();
    for rec in &out {
        assert!(rec.to_string().len() <= 1000, "{}", rec.to_string().len());
        assert_eq!(rec["context"], json!({"library": "x"}));
        assert_eq!(rec["sentAt"], "2026-01-01T00:00:00Z");
        for call in rec["batch"].as_array().unwrap() {
            assert!(call["properties"].get("secret").is_none());
            seen.push(call["properties"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (0..40).collect::<Vec<u64>>(), "every call, in order");

    // Under the limit: one record, unchanged.
    let small = json!({"batch": calls[..3]});
    assert_eq!(records(&s, &small.to_string()).unwrap().len(), 1);

    // One call over the call limit: the whole batch is a dead letter.
    let mut big = calls.clone();
    big[7]["properties"]["pad"] = "x".repeat(300).into();
    let input = json!({"batch": big});
    assert_eq!(
        records(&s, &input.to_string()),
        Err("contract.event_too_large")
    );
    let exp = s.explain(input.to_string().as_bytes());
    assert!(exp
        .output
        .unwrap_err()
        .to_string()
        .contains("batch element 7"));

    // Every element is checked like a call.
    let mut anon = calls.clone();
    anon[3].as_object_mut().unwrap().remove("userId");
    assert_eq!(
        records(&s, &json!({"batch": anon}).to_string()),
        Err("contract.missing_identity")
    );
}

#[test]
fn a_call_too_big_for_any_batch_record_is_a_dead_letter() {
    let s = compile(
        "version: 1\nname: t\ndestination: { profile: customerio, max_batch_bytes: 300, max_call_bytes: off }\nrules: []\n",
    );
    let input = json!({"batch": [track_of_size(100), track_of_size(400)]});
    assert_eq!(
        records(&s, &input.to_string()),
        Err("contract.batch_too_large")
    );
}

#[test]
fn the_default_batch_limit_splits_a_900_kb_batch() {
    let s = common::default_rules();
    let calls: Vec<Value> = (0..1000).map(|_| track_of_size(900)).collect();
    let input = json!({"batch": calls}).to_string();
    assert!(input.len() > 900_000);
    let out = records(&s, &input).unwrap();
    assert_eq!(out.len(), 2);
    let total: usize = out
        .iter()
        .map(|r| r["batch"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 1000);
    for r in &out {
        assert!(r.to_string().len() <= 500_000);
    }
}

/// The shared corpus with planted violations: every planted line is a dead
/// letter with the right reason, every other line comes out clean.
#[test]
fn corpus_with_planted_violations() {
    let s = common::default_rules();
    let text = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let mut planted = 0;
    for (i, line) in text.lines().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        let is_batch = v.get("batch").is_some();
        let want = match i % 10 {
            3 => {
                // Oversized: 40 KB of context on the (first) call (in
                // `properties`, an allow rule could legitimately drop it).
                let call = if is_batch { &mut v["batch"][0] } else { &mut v };
                call["context"]["attachment"] = "x".repeat(40_000).into();
                Some("contract.event_too_large")
            }
            7 => {
                let call = if is_batch { &mut v["batch"][0] } else { &mut v };
                let obj = call.as_object_mut().unwrap();
                obj.remove("userId");
                obj.remove("anonymousId");
                if let Some(t) = obj.get_mut("traits").and_then(Value::as_object_mut) {
                    t.remove("email");
                }
                Some("contract.missing_identity")
            }
            _ => None,
        };
        let got = run(&s, &v.to_string());
        match want {
            Some(code) => {
                planted += 1;
                assert_eq!(got.map(|_| "clean"), Err(code), "line {}", i + 1);
            }
            None => assert!(got.is_ok(), "line {}: {:?}", i + 1, got.err()),
        }
    }
    assert!(planted >= 400, "{planted}");
}
