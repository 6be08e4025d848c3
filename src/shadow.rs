//! What a candidate rule set would change: one event sanitized by the
//! rules in use and by the candidate, compared field by field. Pure; used
//! by `event-sanitizer diff` over a file and by the service's shadow rules
//! (`rules.shadow_file`) on live events.
//!
//! A difference names a location and what happened there; a value is shown
//! only as the rules in use produced it (already sanitized), never the
//! candidate's, which may be raw.

use crate::engine::{DeadLetterReason, Sanitizer, Scratch};
use serde::Serialize;
use serde_json::Value;

/// What differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// In the current output, not in the candidate's.
    FieldRemoved,
    /// In the candidate's output only.
    FieldAdded,
    /// In both, with another value.
    FieldChanged,
    /// A dead letter with the current rules only.
    DeadLetterOnlyCurrent,
    /// A dead letter with the candidate only.
    DeadLetterOnlyCandidate,
    /// A dead letter with both, for other reasons (a contract verdict).
    DeadLetterReasonDiffers,
}

impl Kind {
    /// The label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::FieldRemoved => "field_removed",
            Kind::FieldAdded => "field_added",
            Kind::FieldChanged => "field_changed",
            Kind::DeadLetterOnlyCurrent => "dead_letter_only_current",
            Kind::DeadLetterOnlyCandidate => "dead_letter_only_candidate",
            Kind::DeadLetterReasonDiffers => "dead_letter_reason_differs",
        }
    }

    /// Every kind, for metrics declared at zero.
    pub const ALL: [Kind; 6] = [
        Kind::FieldRemoved,
        Kind::FieldAdded,
        Kind::FieldChanged,
        Kind::DeadLetterOnlyCurrent,
        Kind::DeadLetterOnlyCandidate,
        Kind::DeadLetterReasonDiffers,
    ];
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What.
    pub kind: Kind,
    /// Where (none for a whole-event dead letter).
    pub path: Option<String>,
    /// The candidate's rule that decided there, when it names one.
    pub rule: Option<String>,
    /// The value as the rules in use produced it (sanitized), if any.
    pub current: Option<String>,
    /// The dead-letter reasons, for dead-letter kinds: (current, candidate).
    pub reasons: Option<(Option<String>, Option<String>)>,
}

/// What the rules in use made of the event.
pub enum Current<'a> {
    /// Run them here.
    Run(&'a Sanitizer),
    /// Their clean output, already made (the service passes what it
    /// produced, so the shadow pays for the candidate only).
    Output(&'a [u8]),
    /// A dead letter, with this reason code.
    DeadLetter(&'a str),
}

/// Compares what the rules in use and `candidate` make of `input`; the
/// candidate's rule on each differing path comes from `attributed` (see
/// [`Attribution`]).
pub fn compare(
    current: Current<'_>,
    candidate: &Sanitizer,
    input: &[u8],
    scratch: &mut Scratch,
    attributed: &mut Attribution,
) -> Vec<Difference> {
    if attributed.of != candidate.content_hash() {
        *attributed = Attribution {
            of: candidate.content_hash().to_string(),
            ..Default::default()
        };
    }
    let run = |s: &Sanitizer, scratch: &mut Scratch| {
        let mut out = Vec::new();
        s.sanitize(input, scratch, &mut out)
            .map(|_| out)
            .map_err(|r: DeadLetterReason| r.code().to_string())
    };
    let a: Result<std::borrow::Cow<'_, [u8]>, String> = match current {
        Current::Run(s) => run(s, scratch).map(std::borrow::Cow::Owned),
        Current::Output(o) => Ok(std::borrow::Cow::Borrowed(o)),
        Current::DeadLetter(code) => Err(code.to_string()),
    };
    let b = run(candidate, scratch);
    let mut diffs = match (&a, &b) {
        (Ok(a), Ok(b)) if a[..] == b[..] => return Vec::new(),
        (Ok(a), Ok(b)) => fields(a, b),
        (Err(x), Err(y)) if x == y => return Vec::new(),
        (Err(x), Err(y)) => vec![dead(
            Kind::DeadLetterReasonDiffers,
            Some(x.clone()),
            Some(y.clone()),
        )],
        (Err(x), Ok(_)) => vec![dead(Kind::DeadLetterOnlyCurrent, Some(x.clone()), None)],
        (Ok(_), Err(y)) => vec![dead(Kind::DeadLetterOnlyCandidate, None, Some(y.clone()))],
    };
    // Which of the candidate's rules decided there. `explain` is what
    // costs: it runs only when a differing path's shape (indices as
    // `[*]`) has not been attributed before, for this candidate.
    let shape_of = |d: &Difference| d.path.as_deref().map(crate::audit::shape);
    let known = diffs
        .iter()
        .filter_map(shape_of)
        .all(|s| attributed.rules.contains_key(&s));
    if !known {
        let decisions = candidate.explain(input).decisions;
        for d in diffs.iter() {
            let Some(p) = &d.path else { continue };
            let rule = decisions
                .iter()
                .filter(|x| {
                    crate::audit::covers(&x.location, p)
                        || x.output
                            .as_deref()
                            .is_some_and(|o| crate::audit::covers(o, p))
                })
                .map(|x| format!("{} ({})", x.rule, x.action))
                .next_back();
            if attributed.rules.len() < ATTRIBUTED {
                attributed.rules.insert(crate::audit::shape(p), rule);
            }
        }
    }
    for d in diffs.iter_mut() {
        if let Some(s) = shape_of(d) {
            d.rule = attributed.rules.get(&s).cloned().flatten();
        }
    }
    diffs
}

/// Path shapes attributed to the candidate's rules, kept at most.
const ATTRIBUTED: usize = 10_000;

/// Which of a candidate's rules decided at each path shape, as first
/// found: one `explain` per shape, not per differing event. Start a new
/// one when the candidate changes.
#[derive(Default)]
pub struct Attribution {
    rules: std::collections::HashMap<String, Option<String>>,
    /// The candidate (by content hash) the rules are of.
    pub of: String,
}

fn dead(kind: Kind, current: Option<String>, candidate: Option<String>) -> Difference {
    Difference {
        kind,
        path: None,
        rule: None,
        current: None,
        reasons: Some((current, candidate)),
    }
}

/// Every scalar location under `v`, as `kind` differences (what is only
/// on one side).
fn all(v: &Value, path: &mut String, kind: Kind, current: bool, out: &mut Vec<Difference>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let len = path.len();
                crate::engine::push_key(path, k);
                all(c, path, kind, current, out);
                path.truncate(len);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, c) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                all(c, path, kind, current, out);
                path.truncate(len);
            }
        }
        other => out.push(Difference {
            kind,
            path: Some(path.clone()),
            rule: None,
            current: current.then(|| other.to_string()),
            reasons: None,
        }),
    }
}

/// The differences between two documents, walked side by side: equal
/// subtrees cost one comparison and are not visited.
fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<Difference>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if !x.is_empty() && !y.is_empty() => {
            for (k, va) in x {
                let len = path.len();
                crate::engine::push_key(path, k);
                match y.get(k) {
                    Some(vb) => walk(va, vb, path, out),
                    None => all(va, path, Kind::FieldRemoved, true, out),
                }
                path.truncate(len);
            }
            for (k, vb) in y.iter().filter(|(k, _)| !x.contains_key(*k)) {
                let len = path.len();
                crate::engine::push_key(path, k);
                all(vb, path, Kind::FieldAdded, false, out);
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) if !x.is_empty() && !y.is_empty() => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => walk(va, vb, path, out),
                    (Some(va), None) => all(va, path, Kind::FieldRemoved, true, out),
                    (None, Some(vb)) => all(vb, path, Kind::FieldAdded, false, out),
                    (None, None) => {}
                }
                path.truncate(len);
            }
        }
        (x, y) if is_scalar(x) && is_scalar(y) => out.push(Difference {
            kind: Kind::FieldChanged,
            path: Some(path.clone()),
            rule: None,
            current: Some(x.to_string()),
            reasons: None,
        }),
        // A scalar against a container (or an empty one): what one side
        // has there is gone, and the other's is new.
        (x, y) => {
            all(x, path, Kind::FieldRemoved, true, out);
            all(y, path, Kind::FieldAdded, false, out);
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(m) if !m.is_empty())
        && !matches!(v, Value::Array(a) if !a.is_empty())
}

fn fields(a: &[u8], b: &[u8]) -> Vec<Difference> {
    let parse = |x: &[u8]| serde_json::from_slice::<Value>(x).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk(&parse(a), &parse(b), &mut String::new(), &mut out);
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeySupply, Limits};
    use crate::rules::RuleFile;

    fn compile(text: &str) -> Sanitizer {
        let (f, _) = RuleFile::parse("r.yaml", text).unwrap();
        Sanitizer::compile(&f, KeySupply::Placeholder, Limits::default()).unwrap()
    }

    #[test]
    fn a_candidate_that_drops_one_more_field_differs_exactly_there() {
        let current = compile(crate::rules::DEFAULT_RULES);
        let candidate = compile(&format!(
            "{}\n  - id: never-send-passport\n    action: drop\n    fields: [passport_no]\n",
            crate::rules::DEFAULT_RULES
        ));
        let mut s = Scratch::default();
        let ev = br#"{"type":"identify","userId":"u","traits":{"passport_no":"X1","phone":"+1 555 123 4567"}}"#;
        let d = compare(
            Current::Run(&current),
            &candidate,
            ev,
            &mut s,
            &mut Attribution::default(),
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::FieldRemoved);
        assert_eq!(d[0].path.as_deref(), Some("traits.passport_no"));
        assert_eq!(d[0].rule.as_deref(), Some("never-send-passport (drop)"));
        let same = br#"{"type":"identify","userId":"u","traits":{"plan":"pro"}}"#;
        assert!(compare(
            Current::Run(&current),
            &candidate,
            same,
            &mut s,
            &mut Attribution::default()
        )
        .is_empty());
        // A looser candidate: the phone comes out raw there, and the diff
        // shows only the current (hashed) value.
        let loose =
            compile(&crate::rules::DEFAULT_RULES.replacen("fields: [phone, ", "fields: [", 1));
        let d = compare(
            Current::Run(&current),
            &loose,
            ev,
            &mut s,
            &mut Attribution::default(),
        );
        assert!(d
            .iter()
            .any(|x| x.kind == Kind::FieldAdded && x.path.as_deref() == Some("traits.phone")));
        assert!(
            format!("{d:?}").find("555").is_none(),
            "no raw value: {d:?}"
        );
        // Dead letters on one side only, with the reasons.
        let (f, _) = RuleFile::parse("r.yaml", crate::rules::DEFAULT_RULES).unwrap();
        let tight = Limits {
            max_bytes: 40,
            ..Limits::default()
        };
        let small = Sanitizer::compile(&f, KeySupply::Placeholder, tight).unwrap();
        let d = compare(
            Current::Run(&current),
            &small,
            ev,
            &mut s,
            &mut Attribution::default(),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::DeadLetterOnlyCandidate);
        assert_eq!(d[0].reasons, Some((None, Some("too_large".into()))));
        assert!(compare(
            Current::Run(&current),
            &small,
            b"not json",
            &mut s,
            &mut Attribution::default()
        )
        .is_empty());
    }
}
