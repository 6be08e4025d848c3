//! The rule language's semantics, one behaviour per test, through the
//! public engine API (no broker needed: the engine is a pure function).

mod common;
use common::{compile, compile_with, hmac_hex, run};
use event_sanitizer::engine::Limits;

const HEAD: &str = "version: 1\nname: t\nhash: { key: { env: UNUSED } }\nrules:\n";

fn rules(body: &str) -> event_sanitizer::engine::Sanitizer {
    compile(&format!("{HEAD}{body}"))
}

#[test]
fn drop_fields_at_any_depth_and_spelling() {
    let s = rules("  - { id: d, action: drop, fields: [phone_number] }\n");
    let out = run(&s, r#"{"a":{"phoneNumber":1,"b":[{"PHONE-NUMBER":2,"PHONE_NUMBER":3,"keep":4}]},"phone number":5}"#).unwrap();
    assert_eq!(out, r#"{"a":{"b":[{"keep":4}]}}"#);
}

#[test]
fn key_match_modes() {
    let exact = compile("version: 1\nname: t\nkeys: { match: exact }\nrules:\n  - { id: d, action: drop, fields: [ssn] }\n");
    assert_eq!(run(&exact, r#"{"ssn":1,"SSN":2}"#).unwrap(), r#"{"SSN":2}"#);
    let ci = compile("version: 1\nname: t\nkeys: { match: case-insensitive }\nrules:\n  - { id: d, action: drop, fields: [ssn] }\n");
    assert_eq!(
        run(&ci, r#"{"ssn":1,"SSN":2,"s_sn":3}"#).unwrap(),
        r#"{"s_sn":3}"#
    );
}

#[test]
fn field_globs() {
    let s = rules("  - { id: d, action: drop, fields: [\"*_ip\", \"billing_*\"] }\n");
    assert_eq!(
        run(
            &s,
            r#"{"client_ip":1,"zip":2,"billingAddress":3,"billing":4}"#
        )
        .unwrap(),
        r#"{"zip":2,"billing":4}"#
    );
}

#[test]
fn hash_strings_numbers_objects_and_null() {
    let s = rules("  - { id: h, action: hash, fields: [v] }\n");
    let out = run(&s, r#"{"a":{"v":"x"},"b":{"v":42},"c":{"v":true},"d":{"v":null},"e":{"v":{"z":1,"a":[1,"s"]}}}"#).unwrap();
    let expect = format!(
        r#"{{"a":{{"v_hash":"{}"}},"b":{{"v_hash":"{}"}},"c":{{"v_hash":"{}"}},"d":{{"v_hash":null}},"e":{{"v_hash":"{}"}}}}"#,
        hmac_hex("x"),
        hmac_hex("42"),
        hmac_hex("true"),
        hmac_hex(r#"{"a":[1,"s"],"z":1}"#)
    );
    assert_eq!(out, expect);
}

#[test]
fn hash_options_rename_truncate_encoding_normalize() {
    let s = rules("  - { id: h, action: hash, fields: [email], rename: \"hashed_{key}\", truncate: 8, normalize: [trim, lowercase] }\n  - { id: k, action: hash, fields: [phone], rename: \"{key}\", encoding: base64url, normalize: digits }\n");
    let out = run(
        &s,
        r#"{"email":"  Jane@X.com ","phone":"+1 (555) 010-9999"}"#,
    )
    .unwrap();
    use base64::Engine as _;
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"test-key").unwrap();
    m.update(b"15550109999");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    assert_eq!(
        out,
        format!(
            r#"{{"hashed_email":"{}","phone":"{b64}"}}"#,
            &hmac_hex("jane@x.com")[..8]
        )
    );
}

#[test]
fn escaped_strings_are_hashed_by_their_decoded_text() {
    let s = rules("  - { id: h, action: hash, fields: [v] }\n");
    assert_eq!(
        run(&s, r#"{"v":"\u0061b"}"#).unwrap(),
        format!(r#"{{"v_hash":"{}"}}"#, hmac_hex("ab"))
    );
}

#[test]
fn precedence_drop_over_hash_over_redact_over_keep_regardless_of_order() {
    let s = rules(
        "  - { id: k, action: keep, fields: [a, b, c, d] }\n  - { id: r, action: redact, fields: [a, b, c] }\n  - { id: h, action: hash, fields: [a, b] }\n  - { id: x, action: drop, fields: [a] }\n",
    );
    let out = run(&s, r#"{"a":"1","b":"2","c":"3","d":"4"}"#).unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"b_hash":"{}","c":"[REDACTED]","d":"4"}}"#,
            hmac_hex("2")
        )
    );
}

#[test]
fn paths_with_wildcards_and_quoted_keys() {
    let s = rules(
        "  - { id: p, action: drop, paths: [\"a.b\", \"c.*.d\", \"e.**.f\", \"g[*].h\", 'traits.\"dot.name\"'] }\n",
    );
    let out = run(
        &s,
        r#"{"a":{"b":1,"x":2},"b":3,"c":{"p":{"d":4,"k":5}},"e":{"f":6,"m":{"n":{"f":7}}},"g":[{"h":8,"i":9}],"traits":{"dot.name":10,"dot":{"name":11}}}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"a":{"x":2},"b":3,"c":{"p":{"k":5}},"e":{"m":{"n":{}}},"g":[{"i":9}],"traits":{"dot":{"name":11}}}"#
    );
}

#[test]
fn arrays_are_walked_through_by_key_paths_and_index_paths_drop_elements() {
    let s = rules("  - { id: p, action: drop, paths: [\"items.secret\", \"tags[*]\"] }\n");
    assert_eq!(
        run(&s, r#"{"items":[{"secret":1,"ok":2}],"tags":["a","b"]}"#).unwrap(),
        r#"{"items":[{"ok":2}],"tags":[]}"#
    );
}

#[test]
fn scope_limits_fields() {
    let s = rules("  - { id: d, action: drop, fields: [name], scope: properties }\n");
    assert_eq!(
        run(&s, r#"{"name":"a","properties":{"x":{"name":"b"}}}"#).unwrap(),
        r#"{"name":"a","properties":{"x":{}}}"#
    );
}

#[test]
fn when_conditions() {
    let s = rules(
        "  - { id: a, action: drop, fields: [x], when: { type: track, event: [A, B] } }\n  - { id: b, action: drop, fields: [y], when: { event: { regex: \"^Order\" } } }\n  - { id: c, action: drop, fields: [z], when: { context.version: 2, anonymousId: { exists: false } } }\n",
    );
    assert_eq!(
        run(&s, r#"{"type":"track","event":"A","x":1,"y":2}"#).unwrap(),
        r#"{"type":"track","event":"A","y":2}"#
    );
    assert_eq!(
        run(&s, r#"{"type":"page","event":"A","x":1}"#).unwrap(),
        r#"{"type":"page","event":"A","x":1}"#
    );
    assert_eq!(
        run(&s, r#"{"event":"Order Completed","y":2}"#).unwrap(),
        r#"{"event":"Order Completed"}"#
    );
    assert_eq!(
        run(&s, r#"{"context":{"version":2.0},"z":1}"#).unwrap(),
        r#"{"context":{"version":2.0}}"#
    );
    assert_eq!(
        run(&s, r#"{"context":{"version":2},"anonymousId":"a","z":1}"#).unwrap(),
        r#"{"context":{"version":2},"anonymousId":"a","z":1}"#
    );
}

#[test]
fn allow_keeps_only_selected_locations_in_scope() {
    let s =
        rules("  - { id: a, action: allow, scope: properties, paths: [id, \"items[*].sku\"] }\n");
    let out = run(&s, r#"{"userId":"u","properties":{"id":1,"secret":2,"items":[{"sku":"s","price":3},"loose"],"deep":{"id":4}}}"#).unwrap();
    assert_eq!(
        out,
        r#"{"userId":"u","properties":{"id":1,"items":[{"sku":"s"}]}}"#
    );
}

#[test]
fn allow_over_the_whole_event_and_several_rules_share_a_scope() {
    let s = rules("  - { id: a, action: allow, paths: [type, userId] }\n  - { id: b, action: allow, paths: [\"traits.email\"] }\n  - { id: h, action: hash, fields: [userId] }\n");
    let out = run(&s, r#"{"type":"identify","userId":"u","traits":{"email":"e","phone":"p"},"context":{"ip":"i"}}"#).unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"type":"identify","userId_hash":"{}","traits":{{"email":"e"}}}}"#,
            hmac_hex("u")
        )
    );
}

#[test]
fn values_redact_drop_and_hash() {
    let s = rules(
        "  - { id: r, action: redact, values: [credit_card, email], scope: notes }\n  - { id: d, action: drop, values: [us_ssn] }\n  - { id: h, action: hash, values: [{ name: emp, regex: \"EMP-[0-9]{6}\" }] }\n",
    );
    let out = run(&s, r#"{"notes":"card 4111 1111 1111 1111 or a@b.co","other":"a@b.co","ssn_text":"x 123-45-6789","e":["EMP-123456"]}"#).unwrap();
    assert_eq!(
        out,
        format!(
            r#"{{"notes":"card [REDACTED:credit_card] or [REDACTED:email]","other":"a@b.co","e":["{}"]}}"#,
            hmac_hex("EMP-123456")
        )
    );
}

#[test]
fn keep_exempts_from_detectors_but_not_from_drop() {
    let s = rules("  - { id: r, action: redact, values: [email] }\n  - { id: k, action: keep, paths: [traits.email, traits.secret] }\n  - { id: d, action: drop, fields: [secret] }\n");
    let out = run(
        &s,
        r#"{"traits":{"email":"a@b.co","secret":"s","bio":"mail a@b.co"}}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"traits":{"email":"a@b.co","bio":"mail [REDACTED:email]"}}"#
    );
}

#[test]
fn detectors_see_decoded_text_and_output_stays_escaped() {
    let s = rules("  - { id: r, action: redact, values: [us_ssn] }\n");
    // \u0031 is "1": an escape cannot hide an SSN from the detector.
    let out = run(&s, r#"{"n":"\"q\" \u003123-45-6789\n"}"#).unwrap();
    assert_eq!(out, r#"{"n":"\"q\" [REDACTED:us_ssn]\n"}"#);
}

#[test]
fn batch_envelope_rules_per_event() {
    let s = rules("  - { id: d, action: drop, fields: [x], when: { type: track } }\n");
    let out = run(
        &s,
        r#"{"batch":[{"type":"track","x":1},{"type":"page","x":2}],"x":3}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"batch":[{"type":"track"},{"type":"page","x":2}],"x":3}"#
    );
}

#[test]
fn output_keeps_key_order_numbers_and_escapes_byte_for_byte() {
    let s = rules("  - { id: d, action: drop, fields: [gone] }\n");
    let input = r#"{ "z" : 1.50e+3, "a" : "\u00e9\n\"", "gone": 1, "m" : [ -0, true, null, {} ] }"#;
    assert_eq!(
        run(&s, input).unwrap(),
        r#"{"z":1.50e+3,"a":"\u00e9\n\"","m":[-0,true,null,{}]}"#
    );
}

#[test]
fn dead_letter_reasons() {
    let s = compile_with(
        &format!("{HEAD}  - {{ id: h, action: hash, fields: [phone] }}\n"),
        Limits {
            max_bytes: 100,
            max_depth: 3,
        },
    );
    assert_eq!(run(&s, ""), Err("empty"));
    assert_eq!(
        run(&s, &format!("{{\"a\":\"{}\"}}", "x".repeat(100))),
        Err("too_large")
    );
    assert_eq!(run(&s, "{\"a\":"), Err("invalid_json"));
    // Numbers no downstream parser reads as written fail closed; a number
    // that only underflows (to 0) is valid JSON that serde_json reads.
    for n in ["1e400", "-1e400", "1E+309", "0.5e309"] {
        let doc = format!("{{\"n\":{n}}}");
        assert_eq!(run(&s, &doc), Err("number_out_of_range"), "{n}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&doc).is_err(),
            "{n}"
        );
    }
    for n in [
        "1e-400",
        "1.7976931348623157e308",
        "-0.0e5",
        "12345678901234567890",
    ] {
        let doc = format!("{{\"n\":{n}}}");
        assert!(run(&s, &doc).is_ok(), "{n}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&doc).is_ok(),
            "{n}"
        );
    }
    assert_eq!(run(&s, r#"{"a":{"b":{"c":{}}}}"#), Err("too_deep"));
    assert_eq!(run(&s, "[1]"), Err("not_an_object"));
    assert_eq!(run(&s, r#"{"batch":{}}"#), Err("batch_not_array"));
    assert_eq!(
        run(&s, r#"{"batch":[{},1]}"#),
        Err("batch_element_not_object")
    );
    assert_eq!(run(&s, r#"{"a":1,"\u0061":2}"#), Err("duplicate_key"));
    assert_eq!(
        run(&s, r#"{"phone_hash":"x","phone":"1"}"#),
        Err("rename_collision")
    );
    assert_eq!(
        run(&s, r#"{"phone":"1","phone_hash":"x"}"#),
        Err("rename_collision")
    );
    let mut scratch = event_sanitizer::engine::Scratch::default();
    let mut out = Vec::new();
    let bad = s
        .sanitize(b"{\"a\":\"\xff\"}", &mut scratch, &mut out)
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_utf8");
    assert!(out.is_empty(), "no partial output");
    // The same key in sibling objects is fine.
    assert!(run(&s, r#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
}

#[test]
fn message_key_and_headers() {
    let s = compile("version: 1\nname: t\nhash: { key: { env: X } }\nmessage: { key: hash, headers: { allow: [Trace-Id] } }\nrules: []\n");
    assert_eq!(
        s.message_key(Some(b"user-1")).unwrap().as_ref(),
        hmac_hex("user-1").as_bytes()
    );
    assert!(s.keep_header("trace-id"));
    assert!(!s.keep_header("x-user-email"));
    let d = compile("version: 1\nname: t\nmessage: { key: drop, headers: { drop: [x-user-email] } }\nrules: []\n");
    assert!(d.message_key(Some(b"k")).is_none());
    assert!(!d.keep_header("X-User-Email"));
    assert!(d.keep_header("trace-id"));
}

#[test]
fn explain_names_every_decision() {
    let s = common::default_rules();
    let exp = s.explain(br#"{"type":"identify","traits":{"phone":"1","SSN":"2","email":"e@x.co","bio":"card 4111111111111111"}}"#);
    let lines: Vec<String> = exp.decisions.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "traits.phone -> traits.phone_hash: hash by rule hash-contact",
            "traits.SSN: drop by rule never-send",
            "traits.email: keep by rule delivery-identity",
            "traits.bio: redact by rule free-text-scan (detector credit_card matched)",
        ]
    );
    assert!(exp
        .skipped
        .iter()
        .any(|(_, r)| r == "order-completed-minimum"));
}

#[test]
fn rule_counts_per_rule() {
    let s = common::default_rules_without_contract();
    let mut scratch = event_sanitizer::engine::Scratch::default();
    let mut out = Vec::new();
    s.sanitize(
        br#"{"a":{"ssn":1,"cvv":2},"phone":"x"}"#,
        &mut scratch,
        &mut out,
    )
    .unwrap();
    let mut counts = Vec::new();
    scratch.drain_rule_counts(|i, n| counts.push((s.rule_id(i).to_string(), n)));
    assert_eq!(
        counts,
        vec![
            ("never-send".to_string(), 2),
            ("hash-contact".to_string(), 1)
        ]
    );
}

#[test]
fn a_duplicate_key_after_a_nested_object_with_the_same_key_is_refused() {
    // The nested object's keys are checked between the outer object's two
    // `b`s: the outer check must survive it, walked or copied, however the
    // keys are spelled; and so must a rename's collision check.
    let every = rules("  - { id: d, action: drop, fields: [phone] }\n");
    let top = rules("  - { id: d, action: drop, paths: [traits.phone] }\n");
    for doc in [
        r#"{"traits":{"b":0,"a":{"b":1},"b":2}}"#,
        r#"{"traits":{"b":0,"a":{"\u0062":1},"b":2}}"#,
        r#"{"traits":{"b":0,"a":[{"b":1}],"\u0062":2}}"#,
        r#"{"b":0,"a":{"c":{"b":1}},"b":2}"#,
    ] {
        assert_eq!(run(&every, doc), Err("duplicate_key"), "{doc}");
        assert_eq!(run(&top, doc), Err("duplicate_key"), "{doc}");
    }
    let renames = rules("  - { id: k, action: hash, fields: [phone], rename: \"{key}_hash\" }\n");
    assert_eq!(
        run(
            &renames,
            r#"{"phone":"1","a":{"phone_hash":"x"},"phone_hash":"y"}"#
        ),
        Err("rename_collision")
    );
    assert_eq!(
        run(
            &renames,
            r#"{"phone_hash":"y","a":{"phone":"1"},"phone":"2"}"#
        ),
        Err("rename_collision")
    );
    // Same keys at different levels are fine.
    let fine = r#"{"phone":"1","a":{"phone":"2","b":{"phone":"3"}},"b":{"phone_hash":"x"}}"#;
    assert!(run(&renames, fine).is_ok());
}

#[test]
fn untouched_subtrees_come_out_byte_for_byte_and_still_refuse_duplicate_keys() {
    // Only a path rule: `context` and `properties` are reached by nothing,
    // so the walk copies them whole; the checks it would make still hold.
    let s = rules("  - { id: d, action: drop, paths: [traits.phone] }\n");
    let input = r#"{"type":"identify","traits":{"phone":"1","name":"A"},"context":{"ip":"1.2.3.4","n":[1.50,-0e3,"\u00e9\n",{"x":null}]},"properties":{}}"#;
    assert_eq!(
        run(&s, input).unwrap(),
        r#"{"type":"identify","traits":{"name":"A"},"context":{"ip":"1.2.3.4","n":[1.50,-0e3,"\u00e9\n",{"x":null}]},"properties":{}}"#
    );
    // A duplicate key deep in an untouched subtree: plain, escaped, and in
    // an object too large to compare pairwise.
    assert_eq!(
        run(&s, r#"{"context":{"a":[{"k":1,"j":2,"k":3}]}}"#),
        Err("duplicate_key")
    );
    assert_eq!(
        run(&s, r#"{"context":{"a":{"k":1,"\u006b":2}}}"#),
        Err("duplicate_key")
    );
    // Keys longer than 16 bytes that agree on their first 16 bytes.
    let long =
        r#"{"context":{"a_long_key_name_one":1,"a_long_key_name_two":2,"a_long_key_name_on":3}}"#;
    assert_eq!(run(&s, long).unwrap(), long);
    assert_eq!(
        run(
            &s,
            r#"{"context":{"a_long_key_name_one":1,"b":2,"a_long_key_name_one":3}}"#
        ),
        Err("duplicate_key")
    );
    let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    let wide = format!("{{\"context\":{{{},\"k7\":0}}}}", many.join(","));
    assert_eq!(run(&s, &wide), Err("duplicate_key"));
    let fine = format!("{{\"context\":{{{}}}}}", many.join(","));
    assert_eq!(run(&s, &fine).unwrap(), fine);
    // Past 64 keys an object is checked through the key classes.
    let more: Vec<String> = (0..70).map(|i| format!("\"k{i}\":{i}")).collect();
    let wider = format!("{{\"context\":{{{},\"k69\":0}}}}", more.join(","));
    assert_eq!(run(&s, &wider), Err("duplicate_key"));
    let fine = format!("{{\"context\":{{{}}}}}", more.join(","));
    assert_eq!(run(&s, &fine).unwrap(), fine);
    // Spaced input still comes out compact (the copy is for compact input).
    assert_eq!(
        run(&s, "{ \"context\" : { \"a\" : [ 1 , 2 ] } }\n").unwrap(),
        r#"{"context":{"a":[1,2]}}"#
    );
    // With no rules at all the whole event is copied, and still checked.
    let none = compile("version: 1\nname: none\nrules: []\n");
    assert_eq!(run(&none, input).unwrap(), input);
    assert_eq!(run(&none, r#"{"a":{"b":1},"a":2}"#), Err("duplicate_key"));
}

#[test]
fn except_fields_keeps_detectors_off_ids_and_everything_below_them() {
    let s = rules("  - { id: r, action: redact, values: [credit_card], except_fields: [\"*_id\", timestamp], replacement: X }\n");
    let card = "4111 1111 1111 1111";
    let input = format!(
        r#"{{"orderId":"{card}","order_id":"{card}","timestamp":"{card}","note":"{card}","session_id":{{"deep":["{card}"]}},"list":[{{"item_id":"{card}","text":"{card}"}}]}}"#
    );
    assert_eq!(
        run(&s, &input).unwrap(),
        format!(
            r#"{{"orderId":"{card}","order_id":"{card}","timestamp":"{card}","note":"X","session_id":{{"deep":["{card}"]}},"list":[{{"item_id":"{card}","text":"X"}}]}}"#
        )
    );
}

#[test]
fn explain_says_where_except_fields_stopped_the_detectors() {
    let s =
        rules("  - { id: r, action: redact, values: [credit_card], except_fields: [\"*_id\"] }\n");
    let e = s.explain(br#"{"order_id":"4111 1111 1111 1111","note":"x"}"#);
    let stopped: Vec<_> = e
        .decisions
        .iter()
        .filter(|d| d.action == event_sanitizer::engine::NOT_SCANNED)
        .map(|d| (d.location.as_str(), d.rule.as_str()))
        .collect();
    assert_eq!(stopped, [("order_id", "r")]);
}

#[test]
fn within_fields_reads_values_only_under_the_keys_named() {
    // A bare nine-digit run is an SSN under a key that says so, not anywhere.
    let s = rules(concat!(
        "  - id: r\n    action: redact\n    replacement: X\n",
        "    values: [{ name: ssn-digits, regex: \"\\\\b[0-9]{9}\\\\b\" }]\n",
        "    within_fields: [\"*ssn*\", \"social_*\"]\n",
    ));
    assert_eq!(
        run(
            &s,
            r#"{"ssn":"123456789","userSSN":"id 123456789","socialSecurity":{"n":["123456789"]},"order":"123456789","zip":{"ssn_like":"x"}}"#
        )
        .unwrap(),
        r#"{"ssn":"X","userSSN":"id X","socialSecurity":{"n":["X"]},"order":"123456789","zip":{"ssn_like":"x"}}"#
    );
}

#[test]
fn except_and_within_fields_need_values() {
    let err = event_sanitizer::rules::RuleFile::parse(
        "t.yaml",
        &format!("{HEAD}  - {{ id: d, action: drop, fields: [a], except_fields: [b], within_fields: [c] }}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`except_fields` says where `values` detectors read"),
        "{err}"
    );
    assert!(
        err.contains("`within_fields` says where `values` detectors read"),
        "{err}"
    );
}

/// `json` with a space after each comma and colon outside its strings:
/// the same value, no longer compact.
fn spaced(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        out.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            ',' | ':' if !in_string => out.push(' '),
            _ => {}
        }
    }
    out
}

/// White space between tokens changes nothing in the output: the walk
/// copies spans of a compact input whole where it can, and writes a
/// spaced one member by member. Untouched members next to a card, an id
/// under `except_fields`, drops, hashes, containers and escapes.
#[test]
fn white_space_in_the_input_changes_nothing_in_the_output() {
    let s = rules(concat!(
        "  - { id: d, action: drop, fields: [secret] }\n",
        "  - { id: h, action: hash, fields: [phone] }\n",
        "  - { id: r, action: redact, values: [credit_card, us_ssn], except_fields: [\"*_id\"], replacement: X }\n",
    ));
    let card = "4111 1111 1111 1111";
    let uuid = "58455754-3422-8218-890f-a42cbc309ed4";
    let cases = [
        // A card inside a run: the run is written member by member.
        format!(r#"{{"a":1,"b":"x","c":"{card}","d":true,"e":null}}"#),
        // An id under an `except_fields` key reads as a card to the gate.
        format!(r#"{{"order_id":"{uuid}","a":"{uuid}","b":2.5e3}}"#),
        // Runs broken by a drop, a hash and containers.
        format!(
            r#"{{"a":1,"secret":"s","b":"y","phone":"555","c":[1,{{"d":"{card}","e":"f"}}],"g":{{}},"h":"i"}}"#
        ),
        // Escaped strings in and around runs.
        r#"{"a":"\u0041","b":"q\"r","c":"4111\u00201111 1111 1111","d":"e"}"#.to_string(),
        // A run that ends the object, and one member alone.
        r#"{"x":{"only":"one"},"y":"z","w":[],"v":-0}"#.to_string(),
    ];
    for compact in cases {
        let spaced = spaced(&compact);
        assert_ne!(compact, spaced);
        assert_eq!(run(&s, &compact), run(&s, &spaced), "{compact}");
    }
    assert_eq!(
        run(&s, &format!(r#"{{"a":1,"b":"x","c":"{card}","d":true}}"#)).unwrap(),
        r#"{"a":1,"b":"x","c":"X","d":true}"#
    );
    assert_eq!(
        run(
            &s,
            &format!(r#"{{"order_id":"{uuid}","a":"{uuid}","b":2.5e3}}"#)
        )
        .unwrap(),
        format!(r#"{{"order_id":"{uuid}","a":"{uuid}","b":2.5e3}}"#)
    );
}

/// The test corpus under the default rules: each event compact and
/// spaced comes out the same.
#[test]
fn the_corpus_comes_out_the_same_compact_or_spaced() {
    let s = common::default_rules();
    let text = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let mut compared = 0;
    for line in text.lines() {
        let spaced = spaced(line);
        if spaced == line {
            continue;
        }
        assert_eq!(run(&s, line), run(&s, &spaced), "{line}");
        compared += 1;
    }
    assert!(compared > 1000, "only {compared} events compared");
}
