//! The default rules, configured like the Customer.io security checklist
//! (`algorithm: sha256`, `truncate: 16`), reproduce the checklist's
//! sanitizer exactly on top-level fields: NEVER_SEND keys removed,
//! HASH_FIELDS string values replaced by `sha256(value)` hex, first 16
//! characters, under `<key>_hash`; everything else passed.

mod common;
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer};
use event_sanitizer::rules::RuleFile;
use sha2::Digest;

use common::HASH_FIELDS;
use common::NEVER_SEND;

/// The checklist's `sanitizeAttributes`, transcribed.
fn checklist(
    attrs: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in attrs {
        if NEVER_SEND.contains(&k.as_str()) {
            continue;
        }
        match v.as_str() {
            Some(s) if HASH_FIELDS.contains(&k.as_str()) => {
                let h = hex::encode(sha2::Sha256::digest(s.as_bytes()));
                out.insert(format!("{k}_hash"), h[..16].into());
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[test]
fn default_rules_with_sha256_reproduce_the_checklist() {
    let text = std::fs::read_to_string(common::root().join("rules/customerio.yaml")).unwrap();
    let old = "  algorithm: hmac-sha256     # keyed: a digest cannot be reversed by guessing\n  key: { env: SANITIZER_HASH_KEY }\n";
    assert!(
        text.contains(old),
        "the default rules' hash section moved; update this test"
    );
    let text = text.replace(old, "  algorithm: sha256\n  truncate: 16\n");
    // The checklist sanitizes bare trait maps, which are not Customer.io calls.
    let contract = "  profile: customerio\n";
    assert!(text.contains(contract));
    let text = text.replace(contract, "  profile: none\n");
    let (file, warnings) = RuleFile::parse("compat.yaml", &text).unwrap();
    assert!(
        warnings.warnings().any(|w| w.message.contains("unkeyed")),
        "sha256 warns"
    );
    let s = Sanitizer::compile(&file, KeySupply::FromSource, Limits::default()).unwrap();
    let samples = [
        r#"{"email":"jane@example.com","first_name":"Jane","plan":"pro","phone":"+1-555-123-4567","ssn":"123-45-6789","created_at":1700000000}"#,
        r#"{"phone_number":"(555) 123-4567","ip":"10.1.2.3","ip_address":"2001:db8::1","address":"12 Main St","street_address":"Linden 4","cvv":"123","password":"hunter2"}"#,
        r#"{"tax_id":"x","credit_card":"4111111111111111","card_number":"1","bank_account":"2","routing_number":"3","password_hash":"h","social_security":"s","name":"Acme"}"#,
    ];
    for sample in samples {
        let input: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(sample).unwrap();
        let ours: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&common::run(&s, sample).unwrap()).unwrap();
        assert_eq!(ours, checklist(&input), "input {sample}");
    }
}
