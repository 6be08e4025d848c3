//! Canary events: every `canary.interval` the service produces one
//! synthetic identify to an input topic, carrying one planted value of each
//! kind the default rules remove or hash, marked with the
//! [`CANARY_HEADER`](crate::kafka::CANARY_HEADER) (its value is the
//! canary's id). The audit reads it back from the clean topic and checks
//! that none of its values is there raw. The values are derived from the
//! id alone, so the audit needs no state shared with the service.

use sha2::{Digest, Sha256};

/// The `userId` of every canary: one profile, easy to exclude.
pub const USER_ID: &str = "sanitizer-canary";

/// The kinds planted, in the event's order.
pub const KINDS: &[&str] = &[
    "ssn",
    "card_number",
    "password",
    "phone",
    "ip_address",
    "address",
    "text_card",
    "text_ssn",
];

/// A canary id: who sent it and when (ms since the epoch), which the audit
/// reads back to know how old the newest arrival is.
pub fn id(instance: &str, sent_ms: i64) -> String {
    format!("{instance}.{sent_ms}")
}

/// When the canary with this id was sent (ms since the epoch).
pub fn sent_ms(id: &str) -> Option<i64> {
    id.rsplit_once('.')?.1.parse().ok()
}

/// The planted values, by kind, as they are written in the event.
pub fn planted(id: &str) -> Vec<(&'static str, String)> {
    let h = Sha256::digest(id.as_bytes());
    let n = |i: usize, m: u32| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) % m;
    let ssn = |i: usize| {
        format!(
            "{:03}-{:02}-{:04}",
            1 + n(i, 665),
            1 + n(i + 4, 99),
            1 + n(i + 8, 9999)
        )
    };
    let card = |i: usize| {
        let mut d: Vec<u32> = vec![4];
        d.extend((0..14).map(|k| h[(i + k) % 32] as u32 % 10));
        let sum: u32 = d
            .iter()
            .rev()
            .enumerate()
            .map(|(k, &x)| {
                if k % 2 == 0 {
                    (2 * x) % 9 + if x == 9 { 9 } else { 0 }
                } else {
                    x
                }
            })
            .sum();
        d.push((10 - sum % 10) % 10);
        d.iter()
            .map(|x| char::from(b'0' + *x as u8))
            .collect::<String>()
    };
    let spaced = |c: String| {
        c.as_bytes()
            .chunks(4)
            .map(|g| String::from_utf8_lossy(g).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    vec![
        ("ssn", ssn(0)),
        ("card_number", card(2)),
        ("password", format!("canary-{}", hex::encode(&h[12..20]))),
        (
            "phone",
            format!("+1-555-{:03}-{:04}", 100 + n(16, 900), n(20, 10000)),
        ),
        (
            "ip_address",
            format!("10.{}.{}.{}", h[24], h[25], 1 + h[26] % 254),
        ),
        ("address", format!("{} Canary St", 1 + n(27, 9999))),
        ("text_card", spaced(card(9))),
        ("text_ssn", ssn(12)),
    ]
}

/// The canary event with this id, sent at `timestamp` (ISO 8601).
pub fn event(id: &str, timestamp: &str) -> Vec<u8> {
    let v = planted(id);
    let get = |k: &str| {
        v.iter()
            .find(|(n, _)| *n == k)
            .map_or("", |(_, s)| s.as_str())
    };
    let traits = serde_json::json!({
        "ssn": get("ssn"),
        "card_number": get("card_number"),
        "password": get("password"),
        "phone": get("phone"),
        "ip_address": get("ip_address"),
        "address": get("address"),
        "notes": format!("canary: card {} and SSN {}", get("text_card"), get("text_ssn")),
    });
    serde_json::to_vec(&serde_json::json!({
        "type": "identify",
        "messageId": format!("canary-{id}"),
        "userId": USER_ID,
        "timestamp": timestamp,
        "traits": traits,
    }))
    .expect("a JSON value serializes")
}

/// The kinds whose planted value is in `payload` as it was written (or,
/// for a card, as its bare digits).
pub fn leaks(id: &str, payload: &[u8]) -> Vec<&'static str> {
    planted(id)
        .into_iter()
        .filter(|(kind, value)| {
            let digits: String = value.chars().filter(|c| c.is_ascii_digit()).collect();
            let card = kind.ends_with("card") || *kind == "card_number";
            memchr::memmem::find(payload, value.as_bytes()).is_some()
                || (card && memchr::memmem::find(payload, digits.as_bytes()).is_some())
        })
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeySupply, Limits, Sanitizer, Scratch};
    use crate::rules::RuleFile;

    fn sanitize(rules: &str, input: &[u8]) -> Vec<u8> {
        let (file, _) = RuleFile::parse("r.yaml", rules).unwrap();
        let s = Sanitizer::compile(&file, KeySupply::Placeholder, Limits::default()).unwrap();
        let mut out = Vec::new();
        s.sanitize(input, &mut Scratch::default(), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn planted_values_are_real_looking_and_caught_by_the_detectors() {
        let v = planted(&id("pod-1", 1_700_000_000_000));
        assert_eq!(v.len(), KINDS.len());
        for ((kind, value), k) in v.iter().zip(KINDS) {
            assert_eq!(kind, k);
            if kind.contains("card") {
                assert!(crate::engine::detect::luhn(value.as_bytes()), "{value}");
            }
        }
        assert_ne!(planted("a.1"), planted("a.2"));
        assert_eq!(sent_ms(&id("pod.x", 42)), Some(42));
    }

    #[test]
    fn the_default_rules_leave_nothing_of_a_canary_and_a_gap_shows() {
        let i = id("pod-1", 1_700_000_000_000);
        let ev = event(&i, "2026-12-01T00:00:00.000Z");
        assert_eq!(leaks(&i, &ev).len(), KINDS.len(), "all planted");
        let out = sanitize(crate::rules::DEFAULT_RULES, &ev);
        assert_eq!(leaks(&i, &out), Vec::<&str>::new());
        // A dropped SSN is also redacted by the free-text scan: no leak
        // without both. A phone only the hash rule covers leaks at once.
        let gap = crate::rules::DEFAULT_RULES.replacen("fields: [phone, ", "fields: [", 1);
        let out = sanitize(&gap, &ev);
        assert_eq!(leaks(&i, &out), vec!["phone"]);
    }
}
