//! The second line of defence: what the service produced, examined again
//! without trusting the rules that produced it.
//!
//! [`Inspector::inspect`] is pure (bytes in, findings out) and is shared by
//! `event-sanitizer audit`, which reads the clean topic in its own group,
//! and `event-sanitizer incident`, which scans a window of it. It looks at
//! every value of a clean record with every detector the engine has (not
//! only those the rules enable), at key names the default rules never send
//! (under any spelling), and at keys that the default rules or the running
//! ones hash, when their value is not a digest. What a `keep` rule of the
//! running rule set names on purpose (the address Customer.io delivers to)
//! is not a finding: the audit asks the rules only that.
//!
//! A finding names a location and a detector, never the value.

pub mod canary;
pub mod time;

use crate::engine::detect::{Detector, Stats};
use crate::engine::{push_key, Sanitizer};
use crate::rules::keys::KeyMatch;
use crate::rules::{Action, Builtin, DetectorSpec, FieldName, RuleFile};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The detector name of a key that must never be sent.
pub const NEVER_SEND_KEY: &str = "never_send_key";
/// The detector name of a key that must go out hashed, with a raw value.
pub const UNHASHED_KEY: &str = "unhashed_key";

/// One thing that should not be on the clean topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// Where: `traits.passport_no`, `batch[2].properties.notes`.
    pub path: String,
    /// What found it: a value detector (`credit_card`, `email`...),
    /// [`NEVER_SEND_KEY`] or [`UNHASHED_KEY`].
    pub detector: &'static str,
}

impl Finding {
    /// The path with array indices written `[*]`: findings are counted per
    /// shape, so a leak in every element of a list is one line.
    pub fn shape(&self) -> String {
        shape(&self.path)
    }
}

/// `batch[3].products[0].name` -> `batch[*].products[*].name`.
pub fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            '[' if !quoted => {
                in_index = true;
                out.push_str("[*");
            }
            ']' if in_index => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Key names, canonical under `keys.match: normalized`.
struct Names(Vec<FieldName>);

impl Names {
    fn matches(&self, canonical: &str) -> bool {
        self.0.iter().any(|f| f.matches(canonical))
    }

    /// The `fields` of `file`'s rules with this action and no `when` or
    /// `scope` (a conditional rule says nothing about other events).
    fn of(file: &RuleFile, action: &str, into: &mut Vec<FieldName>) {
        for r in &file.rules {
            if r.action.name() != action || !r.when.is_empty() || !r.scope.is_empty() {
                continue;
            }
            for f in &r.fields {
                // Rules of another `keys.match` name keys their own way:
                // canonicalize again, as the audit matches.
                into.push(match f {
                    FieldName::Name(n) => {
                        FieldName::Name(KeyMatch::Normalized.canonical(n).into_owned())
                    }
                    FieldName::Glob(g) => FieldName::Glob(crate::rules::keys::Glob::new(
                        g.as_str(),
                        KeyMatch::Normalized,
                    )),
                });
            }
        }
    }
}

/// Examines clean records.
pub struct Inspector {
    detectors: Vec<Detector>,
    never: Names,
    hashed: Names,
    /// Unconditional `keep` names of the running rules.
    kept: Names,
    /// Whether the running rules keep anything conditionally (`when`,
    /// `scope`, `paths`): then the rules' own decisions are asked.
    conditional_keeps: bool,
    rules: Option<Arc<Sanitizer>>,
    /// Each key spelling's class ([`NEVER`], [`HASHED`], [`KEPT`] bits),
    /// computed once: key names repeat from record to record.
    classes: std::cell::RefCell<std::collections::HashMap<Box<str>, u8>>,
}

const NEVER: u8 = 1;
const HASHED: u8 = 2;
const KEPT: u8 = 4;
/// Distinct spellings remembered before the cache starts over.
const CLASS_CACHE: usize = 50_000;

impl Inspector {
    /// Every built-in detector; the default rules' dropped and hashed key
    /// names, with those of `rules` (the running rule set) added; `rules`'
    /// own `keep` decisions exempt.
    pub fn new(rules: Option<Arc<Sanitizer>>, file: Option<&RuleFile>) -> Inspector {
        let detectors = Builtin::ALL
            .iter()
            .map(|(_, b)| {
                Detector::compile(&DetectorSpec::Builtin(*b)).expect("built-in detectors compile")
            })
            .collect();
        let (defaults, _) = RuleFile::parse("customerio.yaml", crate::rules::DEFAULT_RULES)
            .expect("the built-in default rules parse");
        let (mut never, mut hashed, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for f in std::iter::once(&defaults).chain(file) {
            Names::of(f, "drop", &mut never);
            Names::of(f, "hash", &mut hashed);
        }
        // The running rules' unconditional `keep` names: a finding there
        // is exempt without asking the rules; others ask `explain`.
        let mut conditional_keeps = false;
        if let Some(f) = file {
            Names::of(f, "keep", &mut kept);
            conditional_keeps = f.rules.iter().any(|r| {
                matches!(r.action, Action::Keep)
                    && (!r.when.is_empty() || !r.scope.is_empty() || !r.paths.is_empty())
            });
        }
        Inspector {
            detectors,
            never: Names(never),
            hashed: Names(hashed),
            kept: Names(kept),
            conditional_keeps,
            rules,
            classes: Default::default(),
        }
    }

    /// The class bits of a key as spelled.
    fn class(&self, key: &str) -> u8 {
        if let Some(&c) = self.classes.borrow().get(key) {
            return c;
        }
        let canonical = KeyMatch::Normalized.canonical(key);
        let c = (self.never.matches(&canonical) as u8 * NEVER)
            | (self.hashed.matches(&canonical) as u8 * HASHED)
            | (self.kept.matches(&canonical) as u8 * KEPT);
        let mut classes = self.classes.borrow_mut();
        if classes.len() >= CLASS_CACHE {
            classes.clear();
        }
        classes.insert(key.into(), c);
        c
    }

    /// The findings in one clean record, sorted by path, or `Err` when
    /// it is not JSON (nothing on the clean topic should be).
    pub fn inspect(&self, payload: &[u8]) -> Result<Vec<Finding>, String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let mut w = Walk {
            inspector: self,
            path: String::new(),
            kept: false,
            found: Vec::new(),
        };
        w.value(&v);
        let mut found = w.found;
        if !found.is_empty() && self.conditional_keeps {
            if let Some(rules) = &self.rules {
                let kept = kept(rules, payload);
                found.retain(|f| !kept.iter().any(|k| covers(k, &f.path)));
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The built-in detectors that match somewhere in `s`, by name.
    pub fn detect(&self, s: &str) -> Vec<&'static str> {
        let mut stats = Stats::default();
        let mut matches = Vec::new();
        for (i, d) in self.detectors.iter().enumerate() {
            d.find(s, &mut stats, i as u16, &mut matches);
        }
        let mut names: Vec<&'static str> = matches
            .iter()
            .map(|m| Builtin::ALL[m.detector as usize].0)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The detector names a finding can carry, for metrics and docs.
    pub fn detector_names() -> Vec<&'static str> {
        Builtin::ALL
            .iter()
            .map(|(n, _)| *n)
            .chain([NEVER_SEND_KEY, UNHASHED_KEY])
            .collect()
    }
}

/// Locations a `keep` rule of `rules` keeps in this record.
fn kept(rules: &Sanitizer, payload: &[u8]) -> Vec<String> {
    rules
        .explain(payload)
        .decisions
        .into_iter()
        .filter(|d| d.action == "keep")
        .map(|d| d.location)
        .collect()
}

/// Whether a location covers `path` (itself or anything under it).
pub fn covers(kept: &str, path: &str) -> bool {
    path.strip_prefix(kept)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

struct Walk<'i> {
    inspector: &'i Inspector,
    path: String,
    /// Below a key an unconditional `keep` of the running rules names:
    /// nothing there is a finding.
    kept: bool,
    found: Vec<Finding>,
}

impl Walk<'_> {
    fn value(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let len = self.path.len();
                    push_key(&mut self.path, k);
                    let outer = self.kept;
                    let class = self.inspector.class(k);
                    self.kept = outer || class & KEPT != 0;
                    if !self.kept {
                        self.key(class, v);
                    }
                    self.value(v);
                    self.kept = outer;
                    self.path.truncate(len);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let len = self.path.len();
                    self.path.push_str(&format!("[{i}]"));
                    self.value(v);
                    self.path.truncate(len);
                }
            }
            _ if self.kept => {}
            Value::String(s) => self.text(s),
            // No detector matches fewer than 7 digits (a phone's least).
            Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() < 1e6) => {}
            Value::Number(n) => self.text(&n.to_string()),
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn key(&mut self, class: u8, v: &Value) {
        let detector = if class & NEVER != 0 {
            NEVER_SEND_KEY
        } else if class & HASHED != 0 && !is_digest(v) {
            UNHASHED_KEY
        } else {
            return;
        };
        self.found.push(Finding {
            path: self.path.clone(),
            detector,
        });
    }

    fn text(&mut self, s: &str) {
        // Shorter than the shortest value any detector matches (`a@b.io`).
        if s.len() < 6 {
            return;
        }
        for detector in self.inspector.detect(s) {
            self.found.push(Finding {
                path: self.path.clone(),
                detector,
            });
        }
    }
}

/// Whether a value under a hashed key is what a hash action leaves: a
/// digest (hex, or base64 of at least 16 bytes), or nothing at all (an
/// empty text is how a repair removes an attribute).
fn is_digest(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) if s.is_empty() => true,
        Value::String(s) => {
            let hex = s.len() >= 16 && s.bytes().all(|c| c.is_ascii_hexdigit());
            let b64 = s.len() >= 22
                && s.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_')
                })
                && s.bytes().any(|c| c.is_ascii_digit())
                && s.bytes().any(|c| c.is_ascii_alphabetic());
            hex || b64
        }
        _ => false,
    }
}

/// Distinct findings by shape and detector, with counts: what `audit`
/// and `incident` print and what the audit stream sums up.
#[derive(Default, Debug)]
pub struct Tally {
    /// Records examined.
    pub records: u64,
    /// Records with at least one finding.
    pub records_with_findings: u64,
    /// (shape, detector) -> findings.
    pub by_shape: std::collections::BTreeMap<(String, &'static str), u64>,
}

impl Tally {
    /// Counts one record's findings.
    pub fn add(&mut self, findings: &[Finding]) {
        self.records += 1;
        if !findings.is_empty() {
            self.records_with_findings += 1;
        }
        let mut seen = BTreeSet::new();
        for f in findings {
            if seen.insert((f.shape(), f.detector)) {
                *self.by_shape.entry((f.shape(), f.detector)).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeySupply, Limits};
    use crate::secret::Secret;

    fn rules(text: &str) -> (Arc<Sanitizer>, RuleFile) {
        let (file, _) = RuleFile::parse("r.yaml", text).unwrap();
        let key = Secret::new(b"k".to_vec());
        let s = Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()).unwrap();
        (Arc::new(s), file)
    }

    #[test]
    fn shapes_replace_indices_but_not_quoted_keys() {
        assert_eq!(
            shape("batch[3].products[10].name"),
            "batch[*].products[*].name"
        );
        assert_eq!(shape(r#"traits."a[1]".x"#), r#"traits."a[1]".x"#);
    }

    #[test]
    fn finds_every_kind_and_names_no_value() {
        let (s, f) = rules(crate::rules::DEFAULT_RULES);
        let i = Inspector::new(Some(s), Some(&f));
        let doc = br#"{"type":"identify","userId":"u1","traits":{"email":"a@example.com","Social-Security":"x","phone":"+1 555 123 4567","phone_hash":"9f86d081884c7d659a2feaa0c55ad015","notes":"card 4111 1111 1111 1111, mail b@example.org","list":[{"ip":"10.1.2.3"}]}}"#;
        let found = i.inspect(doc).unwrap();
        let got: Vec<(String, &str)> = found.iter().map(|f| (f.path.clone(), f.detector)).collect();
        assert_eq!(
            got,
            vec![
                ("traits.Social-Security".to_string(), NEVER_SEND_KEY),
                ("traits.list[0].ip".into(), "ipv4"),
                ("traits.list[0].ip".into(), UNHASHED_KEY),
                ("traits.notes".into(), "credit_card"),
                ("traits.notes".into(), "email"),
                ("traits.phone".into(), "phone"),
                ("traits.phone".into(), UNHASHED_KEY),
            ],
            "traits.email is kept by delivery-identity and is no finding"
        );
        assert!(format!("{found:?}").find("4111").is_none());
    }

    #[test]
    fn without_the_running_rules_a_kept_address_is_a_finding() {
        let i = Inspector::new(None, None);
        let found = i
            .inspect(br#"{"traits":{"email":"a@example.com"}}"#)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, "email");
    }

    #[test]
    fn running_rules_add_their_own_dropped_and_hashed_names() {
        let (s, f) = rules(
            "version: 1\nname: t\nhash: { algorithm: sha256 }\nrules:\n  - { id: p, action: drop, fields: [passport_no] }\n  - { id: h, action: hash, fields: [loyalty_card] }\n",
        );
        let i = Inspector::new(Some(s), Some(&f));
        let found = i
            .inspect(br#"{"traits":{"passportNo":"X1","loyalty_card":"L-1","loyalty_card_x":"y"}}"#)
            .unwrap();
        let got: Vec<_> = found
            .iter()
            .map(|f| (f.path.as_str(), f.detector))
            .collect();
        assert_eq!(
            got,
            vec![
                ("traits.loyalty_card", UNHASHED_KEY),
                ("traits.passportNo", NEVER_SEND_KEY)
            ]
        );
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(Inspector::new(None, None).inspect(b"{").is_err());
    }

    #[test]
    fn a_tally_counts_a_shape_once_per_record() {
        let mut t = Tally::default();
        let f = |p: &str| Finding {
            path: p.into(),
            detector: "email",
        };
        t.add(&[f("a[0].e"), f("a[1].e")]);
        t.add(&[f("a[0].e")]);
        t.add(&[]);
        assert_eq!(t.records, 3);
        assert_eq!(t.records_with_findings, 2);
        assert_eq!(t.by_shape[&("a[*].e".to_string(), "email")], 2);
    }
}
