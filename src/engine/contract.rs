//! The delivery contract: checks what would actually be produced against
//! the destination's limits (a rule file's `destination` section), and
//! splits a batch that is too large into records that each fit.
//!
//! It runs on the clean output, after every rule, because drops, hashes
//! and redactions change sizes and can remove identifiers.

use super::json::{self, members, Kind, Tok};
use super::walk::Placed;
use super::DeadLetterReason;
use crate::rules::Destination;
use smallvec::SmallVec;
use std::fmt;

/// A limit of the delivery contract; its [`code`](Self::code) names it in
/// dead-letter headers and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_call_bytes`.
    CallTooLarge,
    /// `max_batch_bytes`, for a batch that cannot be split to fit.
    BatchTooLarge,
    /// `require_identity`.
    MissingIdentity,
    /// `types`.
    UnknownType,
    /// A track call's `event` is absent, not text, or blank.
    MissingEventName,
    /// `max_event_name_bytes`.
    EventNameTooLong,
    /// `max_traits`.
    TooManyTraits,
    /// `max_trait_name_bytes`.
    TraitNameTooLong,
    /// `max_trait_value_bytes`.
    TraitValueTooLarge,
    /// `max_id_chars`.
    IdTooLong,
}

impl Limit {
    /// Every limit, in the order of [`DeadLetterReason::CODES`].
    pub const ALL: [Limit; 10] = [
        Limit::CallTooLarge,
        Limit::BatchTooLarge,
        Limit::MissingIdentity,
        Limit::UnknownType,
        Limit::MissingEventName,
        Limit::EventNameTooLong,
        Limit::TooManyTraits,
        Limit::TraitNameTooLong,
        Limit::TraitValueTooLarge,
        Limit::IdTooLong,
    ];

    /// The dead-letter reason code, `contract.<limit>`.
    pub fn code(self) -> &'static str {
        match self {
            Limit::CallTooLarge => "contract.event_too_large",
            Limit::BatchTooLarge => "contract.batch_too_large",
            Limit::MissingIdentity => "contract.missing_identity",
            Limit::UnknownType => "contract.unknown_type",
            Limit::MissingEventName => "contract.missing_event_name",
            Limit::EventNameTooLong => "contract.event_name_too_long",
            Limit::TooManyTraits => "contract.too_many_traits",
            Limit::TraitNameTooLong => "contract.trait_name_too_long",
            Limit::TraitValueTooLarge => "contract.trait_value_too_large",
            Limit::IdTooLong => "contract.id_too_long",
        }
    }
}

/// What broke the contract: the limit, and where, in words that never
/// quote the event's data (dead-letter details end up in logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The limit.
    pub limit: Limit,
    /// Position in the batch, for a batch element.
    pub index: Option<usize>,
    /// What was found against what is allowed.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.index {
            write!(f, "batch element {i}: ")?;
        }
        f.write_str(&self.detail)
    }
}

/// Where the clean records lie in the output buffer: one record, unless a
/// batch was split to fit the destination's batch limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// End offset of each record; empty means one record, the whole buffer.
    ends: SmallVec<[usize; 2]>,
}

impl Records {
    /// How many records.
    pub fn len(&self) -> usize {
        self.ends.len().max(1)
    }

    /// Always false: a sanitized message is at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The records, in order, as slices of the output buffer.
    pub fn slices<'o>(&self, out: &'o [u8]) -> SmallVec<[&'o [u8]; 1]> {
        let whole = self.ends.is_empty().then_some(out.len());
        let mut start = 0;
        let mut v = SmallVec::new();
        for end in self.ends.iter().copied().chain(whole) {
            v.push(&out[start..end]);
            start = end;
        }
        v
    }

    /// Each record's bytes in `out` (the buffer `sanitize` filled).
    pub fn iter<'a>(&'a self, out: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.slices(out).into_iter()
    }
}

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct ContractWork {
    tape: Vec<Tok>,
    /// A call's `traits`, opened when the contract reads it.
    traits: Vec<Tok>,
    parts: Vec<u8>,
    text: String,
}

fn violation(limit: Limit, index: Option<usize>, detail: String) -> DeadLetterReason {
    DeadLetterReason::Contract(Violation {
        limit,
        index,
        detail,
    })
}

/// The decoded text of string token `t` (borrowed unless escaped).
fn text<'a>(out: &'a str, t: &Tok, buf: &'a mut String) -> &'a str {
    // Token spans start and end at ASCII punctuation: char boundaries.
    let raw = &out[t.start as usize..t.end as usize];
    if !t.escaped {
        return raw;
    }
    buf.clear();
    json::unescape(raw, buf);
    buf
}

fn find(tape: &[Tok], out: &str, obj: usize, name: &str, buf: &mut String) -> Option<usize> {
    members(tape, obj)
        .find(|&(k, _)| text(out, &tape[k], buf) == name)
        .map(|(_, v)| v)
}

/// Checks `out` (the sanitized message) and, when a batch is over the
/// batch limit, rewrites `out` as several records that each fit.
pub(crate) fn check(
    d: &Destination,
    out: &mut Vec<u8>,
    placed: Option<&Placed>,
    w: &mut ContractWork,
) -> Result<Records, DeadLetterReason> {
    // The engine wrote `out` from validated JSON: only what the contract
    // reads is tokenized (the tokenizer checks it all in debug builds).
    #[cfg(debug_assertions)]
    json::tokenize(
        out,
        usize::MAX,
        json::Marks::None,
        &mut Vec::new(),
        &mut Default::default(),
    )
    .expect("the engine writes JSON");
    let from_walk = match placed {
        Some(p) => from_walk(out, p, &mut w.tape, &mut w.text),
        None => Ok(false),
    };
    let read = match from_walk {
        Ok(true) => Ok(()),
        _ => json::skim(out, &mut w.tape),
    };
    #[cfg(debug_assertions)]
    if from_walk == Ok(true) {
        let mut skimmed = Vec::new();
        json::skim(out, &mut skimmed).expect("the engine writes JSON");
        assert_eq!(w.tape, skimmed, "the contract's tape from the walk's spans");
    }
    read.map_err(|e| {
        // Cannot happen (the sanitizer writes JSON); fail closed if it does.
        DeadLetterReason::InvalidJson {
            offset: match e {
                json::JsonError::Syntax(o) | json::JsonError::NumberOutOfRange(o) => o,
                json::JsonError::TooDeep => 0,
            },
        }
    })?;
    // What the sanitizer wrote is UTF-8 (checked once, for the texts below).
    let src =
        simdutf8::basic::from_utf8(out).map_err(|_| DeadLetterReason::InvalidUtf8 { offset: 0 })?;
    let tape = &w.tape;
    let batch = find(tape, src, 0, "batch", &mut w.text).filter(|&v| tape[v].kind == Kind::Array);
    let Some(batch) = batch else {
        call(d, tape, src, 0, None, &mut w.traits, &mut w.text)?;
        return Ok(Records::default());
    };
    // Each element is a call; the envelope's other members go with every part.
    let mut elems: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    let mut i = batch + 1;
    let mut index = 0;
    while i < tape[batch].next as usize {
        call(d, tape, src, i, Some(index), &mut w.traits, &mut w.text)?;
        let t = &tape[i];
        elems.push((t.start as usize, t.end as usize));
        i = t.next as usize;
        index += 1;
    }
    let Some(max) = d.max_batch_bytes else {
        return Ok(Records::default());
    };
    if out.len() <= max {
        return Ok(Records::default());
    }
    // The envelope without its calls: `{<other members>,"batch":[]}`.
    let (open, close) = (tape[batch].start as usize + 1, tape[batch].end as usize - 1);
    let head = &out[..open];
    let tail = &out[close..];
    let overhead = head.len() + tail.len();
    let mut parts = std::mem::take(&mut w.parts);
    parts.clear();
    let mut ends = SmallVec::new();
    let mut in_part = 0usize;
    let mut part_len = 0usize;
    for (index, &(s, e)) in elems.iter().enumerate() {
        let len = e - s;
        if overhead + len > max {
            w.parts = parts;
            return Err(violation(
                Limit::BatchTooLarge,
                Some(index),
                format!("this call alone makes a batch record of {} bytes, over max_batch_bytes {max}; the batch is not split", overhead + len),
            ));
        }
        if in_part > 0 && part_len + 1 + len + tail.len() > max {
            parts.extend_from_slice(tail);
            ends.push(parts.len());
            in_part = 0;
        }
        if in_part == 0 {
            parts.extend_from_slice(head);
            part_len = head.len();
        } else {
            parts.push(b',');
            part_len += 1;
        }
        parts.extend_from_slice(&out[s..e]);
        part_len += len;
        in_part += 1;
    }
    parts.extend_from_slice(tail);
    ends.push(parts.len());
    std::mem::swap(out, &mut parts);
    w.parts = parts;
    Ok(Records { ends })
}

/// The contract's tape of a clean output from where the walk placed its
/// top-level members (`placed.members`: from each key's quote to the end
/// of its value) and a batch's calls: the same tape [`json::skim`] gives,
/// each key read where it is, with the values the contract checks (see
/// [`json::call_member`]); any other value is one token from its span,
/// unread, and any object or array one token spanning it. `Ok(false)` when
/// the spans do not fit what is there (then the output is skimmed).
fn from_walk(
    out: &[u8],
    placed: &Placed,
    tape: &mut Vec<Tok>,
    name: &mut String,
) -> Result<bool, json::JsonError> {
    tape.clear();
    if !out.starts_with(b"{") {
        return Ok(false);
    }
    let fits = object_from(out, 0, out.len(), &placed.members, Some(placed), tape, name)?;
    Ok(fits)
}

/// Pushes the object at `start..end` of `out`, whose members are
/// `members`, and their tokens as [`json::skim`] reads a call (`batch`
/// from `calls` when given, else refused). Returns whether the spans fit.
fn object_from(
    out: &[u8],
    start: usize,
    end: usize,
    members: &[(u32, u32)],
    calls: Option<&Placed>,
    tape: &mut Vec<Tok>,
    name: &mut String,
) -> Result<bool, json::JsonError> {
    if out.get(start) != Some(&b'{') || end == 0 || out.get(end - 1) != Some(&b'}') {
        return Ok(false);
    }
    let obj = tape.len();
    tape.push(Tok {
        kind: Kind::Object,
        escaped: false,
        may_repeat: false,
        start: start as u32,
        end: end as u32,
        next: 0,
    });
    for &(start, end) in members {
        let (start, end) = (start as usize, end as usize);
        if out.get(start) != Some(&b'"') {
            return Ok(false);
        }
        let (kend, escaped) = json::string_token(out, start, tape)?;
        let Some(how) = json::call_member(&out[start + 1..kend], escaped, name) else {
            return Ok(false);
        };
        let v = json::skip_ws(out, json::skip_ws(out, kend + 1) + 1);
        let after = match (out.get(v), how) {
            (Some(b'['), json::Skim::Calls) => match calls {
                Some(p) if calls_from(out, v, end, p, tape, name)? => end,
                _ => return Ok(false),
            },
            (_, json::Skim::Calls) => json::skim_value(out, v, tape, json::Skim::Calls)?,
            // Not read: its token from the span alone, nothing scanned.
            (Some(&c), json::Skim::Skip) if end > v => {
                let (kind, start, stop) = match c {
                    b'"' => (Kind::String, v + 1, end - 1),
                    b'{' => (Kind::Object, v, end),
                    b'[' => (Kind::Array, v, end),
                    b't' => (Kind::True, v, end),
                    b'f' => (Kind::False, v, end),
                    b'n' => (Kind::Null, v, end),
                    _ => (Kind::Number, v, end),
                };
                tape.push(Tok {
                    kind,
                    escaped: false,
                    may_repeat: false,
                    start: start as u32,
                    end: stop as u32,
                    next: tape.len() as u32 + 1,
                });
                end
            }
            (Some(&c @ (b'{' | b'[')), _) => {
                tape.push(Tok {
                    kind: if c == b'{' { Kind::Object } else { Kind::Array },
                    escaped: false,
                    may_repeat: false,
                    start: v as u32,
                    end: end as u32,
                    next: tape.len() as u32 + 1,
                });
                end
            }
            _ => json::skim_value(out, v, tape, json::Skim::Whole)?,
        };
        if after != end {
            return Ok(false);
        }
    }
    tape[obj].next = tape.len() as u32;
    Ok(true)
}

/// Pushes the batch array at `open..end` of `out` and each call the walk
/// placed in it; whether they fill it exactly (one comma between calls).
fn calls_from(
    out: &[u8],
    open: usize,
    end: usize,
    placed: &Placed,
    tape: &mut Vec<Tok>,
    name: &mut String,
) -> Result<bool, json::JsonError> {
    let arr = tape.len();
    tape.push(Tok {
        kind: Kind::Array,
        escaped: false,
        may_repeat: false,
        start: open as u32,
        end: end as u32,
        next: 0,
    });
    // Where the next call must start.
    let mut at = open + 1;
    for (n, call) in placed.calls.iter().enumerate() {
        let (start, stop) = (call.start as usize, call.end as usize);
        if n > 0 {
            if out.get(at) != Some(&b',') {
                return Ok(false);
            }
            at += 1;
        }
        let first = call.first as usize;
        let Some(members) = placed.call_members.get(first..first + call.len as usize) else {
            return Ok(false);
        };
        // A call's own `batch` is read by skimming (calls inside calls).
        if start != at || !object_from(out, start, stop, members, None, tape, name)? {
            return Ok(false);
        }
        at = stop;
    }
    if at + 1 != end || out.get(at) != Some(&b']') {
        return Ok(false);
    }
    tape[arr].next = tape.len() as u32;
    Ok(true)
}

/// Checks one call (the object at `obj`).
fn call(
    d: &Destination,
    tape: &[Tok],
    out: &str,
    obj: usize,
    index: Option<usize>,
    opened: &mut Vec<Tok>,
    buf: &mut String,
) -> Result<(), DeadLetterReason> {
    let t = &tape[obj];
    if t.kind != Kind::Object {
        // The engine dead-letters non-object batch elements before this.
        return Err(DeadLetterReason::BatchElementNotObject {
            index: index.unwrap_or(0),
        });
    }
    let size = t.end as usize - t.start as usize;
    if let Some(max) = d.max_call_bytes {
        if size > max {
            return Err(violation(
                Limit::CallTooLarge,
                index,
                format!("the call is {size} bytes after sanitizing, over max_call_bytes {max}"),
            ));
        }
    }
    let (mut ty, mut identified, mut event, mut traits) = (None, false, None, None);
    for (k, v) in members(tape, obj) {
        #[derive(PartialEq)]
        enum Field {
            Type,
            UserId,
            AnonymousId,
            Event,
            Traits,
        }
        let field = match text(out, &tape[k], buf) {
            "type" => Field::Type,
            "userId" => Field::UserId,
            "anonymousId" => Field::AnonymousId,
            "event" => Field::Event,
            "traits" => Field::Traits,
            _ => continue,
        };
        let val = &tape[v];
        match field {
            Field::Type => ty = (val.kind == Kind::String).then_some(v),
            Field::Event => event = Some(v),
            Field::Traits => traits = Some(v),
            Field::UserId | Field::AnonymousId => {
                let present = match val.kind {
                    Kind::String => val.end > val.start,
                    Kind::Number => true,
                    _ => false,
                };
                identified |= present;
                if let (Field::UserId, true, Some(max)) = (&field, present, d.max_id_chars) {
                    let chars = if val.kind == Kind::String {
                        text(out, val, buf).chars().count()
                    } else {
                        (val.end - val.start) as usize
                    };
                    if chars > max {
                        return Err(violation(
                            Limit::IdTooLong,
                            index,
                            format!("userId is {chars} characters, over max_id_chars {max}"),
                        ));
                    }
                }
            }
        }
    }
    let mut ty_buf = String::new();
    let ty = ty.map(|v| text(out, &tape[v], &mut ty_buf));
    if let Some(types) = &d.types {
        if !ty.is_some_and(|t| types.iter().any(|x| x == t)) {
            let detail = match ty {
                None => "the call has no `type` (text)".to_string(),
                Some(_) => format!(
                    "`type` is not one of the accepted calls ({})",
                    types.join(", ")
                ),
            };
            return Err(violation(Limit::UnknownType, index, detail));
        }
    }
    let ty = ty.unwrap_or("");
    // `traits`, its members opened (at 0 of `opened`) only for an
    // identify call, the one the contract reads them for.
    let traits = match traits.filter(|&v| tape[v].kind == Kind::Object) {
        Some(v) if ty == "identify" => {
            opened.clear();
            json::skim_value(
                out.as_bytes(),
                tape[v].start as usize,
                opened,
                json::Skim::Members,
            )
            .map_err(|_| DeadLetterReason::InvalidJson {
                offset: tape[v].start as usize,
            })?;
            Some(0)
        }
        _ => None,
    };
    let opened = &*opened;
    if d.require_identity && !identified {
        let email = traits
            .and_then(|t| find(opened, out, t, "email", buf))
            .is_some_and(|v| {
                opened[v].kind == Kind::String && !text(out, &opened[v], buf).trim().is_empty()
            });
        if !email {
            return Err(violation(
                Limit::MissingIdentity,
                index,
                "the call has no userId or anonymousId (and, for identify, no traits.email) after sanitizing".into(),
            ));
        }
    }
    if ty == "track" {
        let name = event
            .filter(|&v| tape[v].kind == Kind::String)
            .map(|v| text(out, &tape[v], buf));
        let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
            return Err(violation(
                Limit::MissingEventName,
                index,
                "a track call needs a non-blank `event` name".into(),
            ));
        };
        if let Some(max) = d.max_event_name_bytes {
            if name.len() > max {
                return Err(violation(
                    Limit::EventNameTooLong,
                    index,
                    format!(
                        "the event name is {} bytes, over max_event_name_bytes {max}",
                        name.len()
                    ),
                ));
            }
        }
    }
    if ty == "identify" {
        if let Some(t) = traits {
            let mut count = 0;
            for (k, v) in members(opened, t) {
                count += 1;
                if let Some(max) = d.max_trait_name_bytes {
                    let n = text(out, &opened[k], buf).len();
                    if n > max {
                        return Err(violation(
                            Limit::TraitNameTooLong,
                            index,
                            format!("trait {count} has a name of {n} bytes, over max_trait_name_bytes {max}"),
                        ));
                    }
                }
                if let Some(max) = d.max_trait_value_bytes {
                    let val = &opened[v];
                    let n = if val.kind == Kind::String {
                        text(out, val, buf).len()
                    } else {
                        (val.end - val.start) as usize
                    };
                    if n > max {
                        return Err(violation(
                            Limit::TraitValueTooLarge,
                            index,
                            format!("trait {count} has a value of {n} bytes, over max_trait_value_bytes {max}"),
                        ));
                    }
                }
            }
            if let Some(max) = d.max_traits {
                if count > max {
                    return Err(violation(
                        Limit::TooManyTraits,
                        index,
                        format!("the call has {count} traits, over max_traits {max}"),
                    ));
                }
            }
        }
    }
    Ok(())
}
