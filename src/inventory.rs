//! The field inventory: which field paths arrive, how often, which rule
//! and action applied to each, which detectors fire on their values, and
//! which paths no rule classifies, with a suggested action and why.
//!
//! Pure: [`Inventory::observe`] takes one raw event and the rules. The
//! `inventory` command runs it over a file; the service runs it on a
//! sample of live messages, in bounded memory, and serves the result at
//! `GET /inventory`. Paths are shapes: array indices written `[*]`, and
//! the calls of a batch folded into the call (`batch[2].traits.x` is
//! `traits.x`). Nothing here holds a value.

use crate::audit::Inspector;
use crate::engine::Sanitizer;
use crate::rules::keys::KeyMatch;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What is known of one field path.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Field {
    /// Events it occurred in.
    pub count: u64,
    /// Events in which a rule decided on it or on a field around it.
    pub classified: u64,
    /// (rule, action) -> events.
    pub rules: BTreeMap<String, u64>,
    /// Detector -> values it matched.
    pub detectors: BTreeMap<&'static str, u64>,
    /// Whether it holds objects or arrays (a container of other paths).
    pub container: bool,
}

/// A suggested rule for a field no rule classifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// `drop`, `hash` or `redact`.
    pub action: &'static str,
    /// Why, in a sentence.
    pub why: String,
}

/// The inventory of what has been seen.
pub struct Inventory {
    fields: BTreeMap<String, Field>,
    events: u64,
    /// Distinct paths kept at most; further new ones are counted only.
    cap: usize,
    over_cap: u64,
    inspector: Inspector,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// The path shape.
    pub path: &'a str,
    /// Its facts.
    #[serde(flatten)]
    pub field: &'a Field,
    /// A rule suggestion when nothing classifies it.
    pub suggestion: Option<Suggestion>,
}

/// Keys of the Segment spec that carry no personal data by themselves and
/// need no rule (ids are kept byte for byte on purpose).
const SPEC: &[&str] = &[
    "type",
    "event",
    "name",
    "message_id",
    "user_id",
    "anonymous_id",
    "previous_id",
    "group_id",
    "timestamp",
    "sent_at",
    "received_at",
    "original_timestamp",
    "version",
    "channel",
    "integrations",
    "context",
    "properties",
    "traits",
    "batch",
    "library",
    "locale",
];

/// Key-name words that look like personal data: (word, action, what).
const PII_WORDS: &[(&str, &str, &str)] = &[
    ("passport", "drop", "a passport number"),
    ("ssn", "drop", "a social security number"),
    ("social", "drop", "a social security number"),
    ("tax", "drop", "a tax id"),
    ("national", "drop", "a national id"),
    ("license", "drop", "a licence number"),
    ("licence", "drop", "a licence number"),
    ("card", "drop", "a payment card"),
    ("cvv", "drop", "a card security code"),
    ("cvc", "drop", "a card security code"),
    ("iban", "drop", "a bank account"),
    ("bank", "drop", "a bank account"),
    ("routing", "drop", "a bank routing number"),
    ("account", "drop", "an account number"),
    ("password", "drop", "a password"),
    ("passwd", "drop", "a password"),
    ("secret", "drop", "a secret"),
    ("token", "drop", "a token"),
    ("birth", "drop", "a date of birth"),
    ("dob", "drop", "a date of birth"),
    ("salary", "drop", "a salary"),
    ("diagnosis", "drop", "health data"),
    ("phone", "hash", "a phone number"),
    ("mobile", "hash", "a phone number"),
    ("email", "hash", "an email address"),
    ("address", "hash", "an address"),
    ("street", "hash", "an address"),
    ("postal", "hash", "a postal code"),
    ("zip", "hash", "a postal code"),
    ("ip", "hash", "an IP address"),
    ("latitude", "hash", "a location"),
    ("longitude", "hash", "a location"),
    ("last", "hash", "a surname"),
    ("surname", "hash", "a surname"),
];

/// Rules `explain` names with this action classify a field.
fn folded(location: &str) -> String {
    let shape = crate::audit::shape(location);
    match shape.strip_prefix("batch[*].") {
        Some(rest) => rest.to_string(),
        None => shape,
    }
}

impl Inventory {
    /// An empty inventory keeping at most `cap` distinct paths.
    pub fn new(cap: usize) -> Inventory {
        Inventory {
            fields: BTreeMap::new(),
            events: 0,
            cap,
            over_cap: 0,
            inspector: Inspector::new(None, None),
        }
    }

    /// Events observed.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Paths not kept because the cap was reached.
    pub fn over_cap(&self) -> u64 {
        self.over_cap
    }

    /// Observes one raw event (not JSON: ignored). Returns the paths seen
    /// for the first time that no rule classified in this event.
    pub fn observe(&mut self, rules: &Sanitizer, payload: &[u8]) -> Vec<String> {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return Vec::new();
        };
        self.events += 1;
        // What the rules decided, by shape (a decision on an object covers
        // what is under it).
        let mut decided: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for d in rules.explain(payload).decisions {
            if d.action == crate::engine::NOT_SCANNED {
                continue;
            }
            decided
                .entry(folded(&d.location))
                .or_default()
                .insert(format!("{} ({})", d.rule, d.action));
        }
        let mut seen: BTreeMap<String, (bool, BTreeSet<&'static str>)> = BTreeMap::new();
        let calls: Vec<&Value> = match v.get("batch").and_then(Value::as_array) {
            Some(b) => b.iter().collect(),
            None => vec![&v],
        };
        for call in calls {
            self.walk(call, &mut String::new(), &mut seen);
        }
        let mut first_unclassified = Vec::new();
        for (path, (container, detectors)) in seen {
            let covering: BTreeSet<&String> = decided
                .iter()
                .filter(|(d, _)| crate::audit::covers(d, &path))
                .flat_map(|(_, rules)| rules)
                .collect();
            let new = !self.fields.contains_key(&path);
            if new && self.fields.len() >= self.cap {
                self.over_cap += 1;
                continue;
            }
            let f = self.fields.entry(path.clone()).or_default();
            f.count += 1;
            f.container |= container;
            if !covering.is_empty() {
                f.classified += 1;
            }
            for r in covering {
                *f.rules.entry(r.clone()).or_default() += 1;
            }
            for d in detectors {
                *f.detectors.entry(d).or_default() += 1;
            }
            if new && f.classified == 0 && !container && !is_spec(&path) {
                first_unclassified.push(path);
            }
        }
        first_unclassified
    }

    /// [`Inventory::observe`], with the detectors that fired on each new
    /// unclassified path (for the audit stream).
    pub fn observe_reporting(
        &mut self,
        rules: &Sanitizer,
        payload: &[u8],
    ) -> Vec<(String, Vec<&'static str>)> {
        self.observe(rules, payload)
            .into_iter()
            .map(|p| {
                let d = self.fields[&p].detectors.keys().copied().collect();
                (p, d)
            })
            .collect()
    }

    /// The whole inventory as JSON: `events`, `paths_over_cap`, `fields`
    /// (each with `suggestion`), `unclassified`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "events": self.events(),
            "paths_over_cap": self.over_cap(),
            "fields": self.lines(),
            "unclassified": self.unclassified(),
        })
    }

    fn walk(
        &self,
        v: &Value,
        path: &mut String,
        seen: &mut BTreeMap<String, (bool, BTreeSet<&'static str>)>,
    ) {
        let len = path.len();
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    crate::engine::push_key(path, k);
                    let container = matches!(child, Value::Object(_) | Value::Array(_));
                    seen.entry(path.clone()).or_default().0 |= container;
                    self.walk(child, path, seen);
                    path.truncate(len);
                }
            }
            Value::Array(a) => {
                path.push_str("[*]");
                for child in a {
                    if !matches!(child, Value::Object(_) | Value::Array(_)) {
                        self.scalar(child, path, seen);
                    } else {
                        self.walk(child, path, seen);
                    }
                }
                path.truncate(len);
            }
            _ => self.scalar(v, path, seen),
        }
    }

    fn scalar(
        &self,
        v: &Value,
        path: &str,
        seen: &mut BTreeMap<String, (bool, BTreeSet<&'static str>)>,
    ) {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        let hits = self.inspector.detect(&text);
        seen.entry(path.to_string()).or_default().1.extend(hits);
    }

    /// Every path, in order, with a suggestion for those nothing classifies.
    pub fn lines(&self) -> Vec<Line<'_>> {
        self.fields
            .iter()
            .map(|(path, field)| Line {
                path,
                field,
                suggestion: (field.classified == 0 && !field.container && !is_spec(path))
                    .then(|| suggest(path, field))
                    .flatten(),
            })
            .collect()
    }

    /// The paths no rule classified in any event (containers and Segment
    /// spec fields left out).
    pub fn unclassified(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(p, f)| f.classified == 0 && !f.container && !is_spec(p))
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// The last key of a path, canonical.
fn leaf(path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last).trim_matches('"');
    KeyMatch::Normalized.canonical(last).into_owned()
}

/// Whether every key of the path is a Segment spec field (or `context.*`
/// of the spec: library, locale...).
fn is_spec(path: &str) -> bool {
    let l = leaf(path);
    SPEC.contains(&l.as_str())
        && !path.starts_with("traits.")
        && !path.starts_with("properties.")
        && !path.starts_with("context.traits.")
}

/// What a field no rule classifies should probably get, and why.
pub fn suggest(path: &str, f: &Field) -> Option<Suggestion> {
    let l = leaf(path);
    let words: Vec<&str> = l.split('_').collect();
    if let Some((_, action, what)) = PII_WORDS.iter().find(|(w, _, _)| words.contains(w)) {
        return Some(Suggestion {
            action,
            why: format!("the key name `{l}` looks like {what}"),
        });
    }
    let (detector, n) = f.detectors.iter().max_by_key(|(_, n)| **n)?;
    let action = match *detector {
        "email" | "phone" | "ipv4" | "ipv6" => "hash",
        _ => "redact",
    };
    Some(Suggestion {
        action,
        why: format!(
            "the {detector} detector matched {n} of its {} values",
            f.count
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeySupply, Limits};
    use crate::rules::RuleFile;

    fn default_rules() -> Sanitizer {
        let (f, _) = RuleFile::parse("r.yaml", crate::rules::DEFAULT_RULES).unwrap();
        Sanitizer::compile(&f, KeySupply::Placeholder, Limits::default()).unwrap()
    }

    #[test]
    fn classifies_folds_batches_and_suggests() {
        let s = default_rules();
        let mut inv = Inventory::new(100);
        let ev = br#"{"type":"identify","userId":"u","traits":{"phone":"+1 555 123 4567","passport_no":"X1234567","notes":"mail me at a@example.com","address":{"street":"1 Main St"}}}"#;
        let first = inv.observe(&s, ev);
        assert_eq!(first, vec!["traits.notes", "traits.passport_no"]);
        let batch =
            br#"{"batch":[{"type":"track","userId":"u","event":"E","properties":{"x":1}}]}"#;
        assert_eq!(inv.observe(&s, batch), vec!["properties.x"]);
        let lines = inv.lines();
        let get = |p: &str| lines.iter().find(|l| l.path == p).unwrap();
        assert_eq!(get("traits.phone").field.classified, 1);
        assert!(get("traits.phone")
            .field
            .rules
            .contains_key("hash-contact (hash)"));
        assert_eq!(
            get("traits.address.street").field.classified,
            1,
            "hashed whole"
        );
        assert_eq!(
            get("traits.passport_no")
                .suggestion
                .as_ref()
                .unwrap()
                .action,
            "drop"
        );
        let notes = get("traits.notes");
        assert_eq!(notes.field.detectors.get("email"), Some(&1));
        assert_eq!(notes.suggestion.as_ref().unwrap().action, "hash");
        assert!(get("type").suggestion.is_none(), "a spec field");
        assert_eq!(inv.events(), 2);
        assert!(!inv.unclassified().contains(&"userId"));
    }

    #[test]
    fn the_cap_bounds_memory() {
        let s = default_rules();
        let mut inv = Inventory::new(3);
        inv.observe(&s, br#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#);
        assert_eq!(inv.lines().len(), 3);
        assert_eq!(inv.over_cap(), 2);
    }
}
