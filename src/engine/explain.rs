//! What `explain` reports: every decision the engine took, and where.

use super::DeadLetterReason;
use std::fmt;

/// The action of a [`Decision`] that records where `except_fields`
/// stopped a values rule's detectors: a note on the rule, not an action on
/// the data (coverage and the inventory do not count it).
pub const NOT_SCANNED: &str = "not scanned";

/// One decision on one location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Where, from the message root: `traits.phone`, `batch[2].context.ip`.
    pub location: String,
    /// Where the value went when the key was renamed (`traits.phone_hash`).
    pub output: Option<String>,
    /// `drop`, `hash`, `redact`, `keep` or `drop (not allowed)`.
    pub action: &'static str,
    /// The rule that decided.
    pub rule: String,
    /// More detail: which detector matched, which scope did not allow.
    pub note: Option<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.location)?;
        if let Some(out) = &self.output {
            write!(f, " -> {out}")?;
        }
        write!(f, ": {} by rule {}", self.action, self.rule)?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// Appends `key` to a location (`traits.phone`): a key with a dot, a
/// bracket or a quote in it, or an empty one, is written as a JSON string
/// (`traits."a.b"`) so the location reads back unambiguously.
pub fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if key.contains(['.', '[', '"']) || key.is_empty() {
        path.push_str(&serde_json::to_string(key).unwrap_or_default());
    } else {
        path.push_str(key);
    }
}

/// The result of [`Sanitizer::explain`](super::Sanitizer::explain).
#[derive(Debug)]
pub struct Explanation {
    /// The clean JSON, or why the message is a dead letter.
    pub output: Result<Vec<u8>, DeadLetterReason>,
    /// How `output` divides into records (more than one when a batch was
    /// split to fit the destination's batch limit).
    pub records: super::Records,
    /// Decisions in document order.
    pub decisions: Vec<Decision>,
    /// Rules whose `when` did not hold: (event location, rule id).
    pub skipped: Vec<(String, String)>,
    /// `allow` rules whose scope was reached with their `when` holding.
    pub reached: Vec<String>,
}

/// Receives decisions while the engine walks a message. The engine is
/// generic over it, so the production path ([`NoTrace`]) pays nothing.
pub(crate) trait Trace {
    const ON: bool;
    fn decision(&mut self, d: Decision);
    fn skipped(&mut self, event: &str, rule: &str);
    fn reached(&mut self, rule: &str);
}

pub(crate) struct NoTrace;

impl Trace for NoTrace {
    const ON: bool = false;
    #[inline(always)]
    fn decision(&mut self, _: Decision) {}
    #[inline(always)]
    fn skipped(&mut self, _: &str, _: &str) {}
    #[inline(always)]
    fn reached(&mut self, _: &str) {}
}

#[derive(Default)]
pub(crate) struct Recorder {
    pub decisions: Vec<Decision>,
    pub skipped: Vec<(String, String)>,
    pub reached: Vec<String>,
}

impl Trace for Recorder {
    const ON: bool = true;
    fn decision(&mut self, d: Decision) {
        self.decisions.push(d);
    }
    fn skipped(&mut self, event: &str, rule: &str) {
        let event = if event.is_empty() { "(event)" } else { event };
        self.skipped.push((event.to_string(), rule.to_string()));
    }
    fn reached(&mut self, rule: &str) {
        if !self.reached.iter().any(|r| r == rule) {
            self.reached.push(rule.to_string());
        }
    }
}
