//! The delivery contract: checks what would actually be produced against
//! the destination's limits (a rule file's `destination` section), and
//! splits a batch that is too large into records that each fit.
//!
//! It runs on the clean output, after every rule, because drops, hashes
//! and redactions change sizes and can remove identifiers.

use super::json::{self, members, Field, Kind, Tok};
use super::walk::{Placed, PlacedMember};
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

/// The decoded bytes of string token `t` (borrowed unless escaped).
fn text<'a>(out: &'a [u8], t: &Tok, buf: &'a mut String) -> Result<&'a [u8], DeadLetterReason> {
    span_text(out, (t.start as usize, t.end as usize), t.escaped, buf)
}

/// The decoded bytes of the string content at `start..end` of `out`.
///
/// The output is not validated as UTF-8 again: the engine wrote it from
/// input it validated, cut at ASCII punctuation, and from text of its own
/// (debug builds check all of it in [`check`]). Names and sizes are read
/// as bytes; where a limit counts characters or trims blanks, that text
/// alone is checked ([`utf8`]).
fn span_text<'a>(
    out: &'a [u8],
    (start, end): (usize, usize),
    escaped: bool,
    buf: &'a mut String,
) -> Result<&'a [u8], DeadLetterReason> {
    let raw = &out[start..end];
    if !escaped {
        return Ok(raw);
    }
    buf.clear();
    json::unescape(utf8(raw, start)?, buf);
    Ok(buf.as_bytes())
}

/// `text` (at `offset` of the output) as `str`; not UTF-8, which the
/// engine does not write, is a dead letter.
fn utf8(text: &[u8], offset: usize) -> Result<&str, DeadLetterReason> {
    simdutf8::basic::from_utf8(text).map_err(|_| DeadLetterReason::InvalidUtf8 { offset })
}

/// How many characters `text` holds (ASCII, the common case, counted
/// without decoding).
fn chars(text: &[u8], offset: usize) -> Result<usize, DeadLetterReason> {
    if text.is_ascii() {
        return Ok(text.len());
    }
    Ok(utf8(text, offset)?.chars().count())
}

/// Whether `text` is empty or all white space (`str::trim`'s white
/// space; ASCII text checked without decoding).
fn blank(text: &[u8], offset: usize) -> Result<bool, DeadLetterReason> {
    if text.is_ascii() {
        // The ASCII characters `char::is_whitespace` accepts.
        return Ok(text.iter().all(|&b| matches!(b, b'\t'..=b'\r' | b' ')));
    }
    Ok(utf8(text, offset)?.trim().is_empty())
}

fn find(tape: &[Tok], out: &[u8], obj: usize, name: &str, buf: &mut String) -> Option<usize> {
    members(tape, obj)
        .find(|&(k, _)| text(out, &tape[k], buf).is_ok_and(|t| t == name.as_bytes()))
        .map(|(_, v)| v)
}

/// Checks `out` (the sanitized message) and, when a batch is over the
/// batch limit, rewrites `out` as several records that each fit.
/// `placed` is where the walk wrote the members and calls: read from
/// there when given and fitting (nothing tokenized), else from a skim of
/// `out` (debug builds check that both give the same).
pub(crate) fn check(
    d: &Destination,
    out: &mut Vec<u8>,
    placed: Option<&Placed>,
    w: &mut ContractWork,
) -> Result<Records, DeadLetterReason> {
    // The engine wrote `out` from validated JSON (the tokenizer checks it
    // all in debug builds).
    #[cfg(debug_assertions)]
    json::tokenize(
        out,
        usize::MAX,
        json::Marks::None,
        &mut Vec::new(),
        &mut Default::default(),
    )
    .expect("the engine writes JSON");
    #[cfg(debug_assertions)]
    std::str::from_utf8(out).expect("the engine writes UTF-8");
    #[cfg(debug_assertions)]
    let skimmed = placed.map(|_| {
        let mut copy = out.clone();
        let r = by_skim(d, &mut copy, &mut ContractWork::default());
        (r, copy)
    });
    let checked = match placed.and_then(|p| from_walk(d, out, p, w)) {
        Some(r) => r,
        None => by_skim(d, out, w),
    };
    #[cfg(debug_assertions)]
    if let Some((r, copy)) = skimmed {
        assert_eq!(
            checked, r,
            "the contract from the walk's spans and from a skim"
        );
        if checked.is_ok() {
            assert!(
                *out == copy,
                "the records from the walk's spans and from a skim"
            );
        }
    }
    checked
}

/// [`check`] from a skim of `out`: the tokens of its calls.
fn by_skim(
    d: &Destination,
    out: &mut Vec<u8>,
    w: &mut ContractWork,
) -> Result<Records, DeadLetterReason> {
    json::skim(out, &mut w.tape).map_err(|e| {
        // Cannot happen (the sanitizer writes JSON); fail closed if it does.
        DeadLetterReason::InvalidJson {
            offset: match e {
                json::JsonError::Syntax(o) | json::JsonError::NumberOutOfRange(o) => o,
                json::JsonError::TooDeep => 0,
            },
        }
    })?;
    let tape = &w.tape;
    let batch = find(tape, out, 0, "batch", &mut w.text).filter(|&v| tape[v].kind == Kind::Array);
    let Some(batch) = batch else {
        call(d, tape, out, 0, None, &mut w.text)?;
        return Ok(Records::default());
    };
    // Each element is a call; the envelope's other members go with every part.
    let mut elems: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    let mut i = batch + 1;
    let mut index = 0;
    while i < tape[batch].next as usize {
        call(d, tape, out, i, Some(index), &mut w.text)?;
        let t = &tape[i];
        elems.push((t.start as usize, t.end as usize));
        i = t.next as usize;
        index += 1;
    }
    let (open, close) = (tape[batch].start as usize + 1, tape[batch].end as usize - 1);
    split(d, out, &elems, open, close, w)
}

/// [`check`] from where the walk placed the top-level members and a
/// batch's calls and their members: each member's field known from its
/// key as the walk wrote it (a renamed or escaped key read in place), the
/// values the contract checks read in place, nothing else read. `None`
/// when the spans do not fit what is there.
fn from_walk(
    d: &Destination,
    out: &mut Vec<u8>,
    placed: &Placed,
    w: &mut ContractWork,
) -> Option<Result<Records, DeadLetterReason>> {
    if !out.starts_with(b"{") || !out.ends_with(b"}") {
        return None;
    }
    // The first `batch` member, as a skim finds it.
    let mut batch = None;
    for m in &placed.members {
        // A key the walk named is not read here.
        if m.key_end != 0 && m.field != Field::Batch {
            continue;
        }
        let (field, value) = read_member(out, m, &mut w.text)?;
        if field == Field::Batch {
            batch = Some((value, m.end as usize));
            break;
        }
    }
    let Some((open, end)) = batch.filter(|&(v, _)| out[v] == b'[') else {
        let r = call_at(d, out, 0, out.len(), &placed.members, None, w)?;
        return Some(r.map(|()| Records::default()));
    };
    // The calls must fill the array exactly, one comma between them.
    let mut at = open + 1;
    for (n, c) in placed.calls.iter().enumerate() {
        if n > 0 {
            if out.get(at) != Some(&b',') {
                return None;
            }
            at += 1;
        }
        if c.start as usize != at {
            return None;
        }
        at = c.end as usize;
    }
    if at + 1 != end || out.get(at) != Some(&b']') {
        return None;
    }
    let mut elems: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    for (index, c) in placed.calls.iter().enumerate() {
        let first = c.first as usize;
        let members = placed.call_members.get(first..first + c.len as usize)?;
        let (start, stop) = (c.start as usize, c.end as usize);
        if let Err(e) = call_at(d, out, start, stop, members, Some(index), w)? {
            return Some(Err(e));
        }
        elems.push((start, stop));
    }
    Some(split(d, out, &elems, open + 1, end - 1, w))
}

/// The field of member `m` of `out` and where its value starts; `None`
/// when its span does not fit.
#[inline(always)]
fn read_member(out: &[u8], m: &PlacedMember, buf: &mut String) -> Option<(Field, usize)> {
    let (start, end, key_end) = (m.start as usize, m.end as usize, m.key_end as usize);
    if out.get(start) != Some(&b'"') {
        return None;
    }
    if key_end != 0 {
        // Written as it came: `"key":value`.
        if out.get(key_end) != Some(&b'"')
            || out.get(key_end + 1) != Some(&b':')
            || key_end + 2 >= end
        {
            return None;
        }
        return Some((m.field, key_end + 2));
    }
    let (kend, escaped) = json::scan_string(out, start).ok()?;
    let field = Field::read(&out[start + 1..kend], escaped, buf)?;
    let colon = json::skip_ws(out, kend + 1);
    if out.get(colon) != Some(&b':') {
        return None;
    }
    let value = json::skip_ws(out, colon + 1);
    (value < end).then_some((field, value))
}

/// The token of the value at `start..end` of `out` (as a skim gives it:
/// a string between its quotes, escaped when it has a backslash); `None`
/// when it does not fit.
fn value_token(out: &[u8], start: usize, end: usize) -> Option<Tok> {
    let (kind, s, e) = match out.get(start)? {
        b'"' if end >= start + 2 && out.get(end - 1) == Some(&b'"') => {
            (Kind::String, start + 1, end - 1)
        }
        b'"' => return None,
        b'{' => (Kind::Object, start, end),
        b'[' => (Kind::Array, start, end),
        b't' => (Kind::True, start, end),
        b'f' => (Kind::False, start, end),
        b'n' => (Kind::Null, start, end),
        _ => (Kind::Number, start, end),
    };
    Some(Tok {
        kind,
        escaped: kind == Kind::String && json::has_backslash(&out[s..e]),
        may_repeat: false,
        start: s as u32,
        end: e as u32,
        next: 0,
    })
}

/// Checks the call at `start..end` of `out` whose members the walk
/// placed at `members`; `None` when a span does not fit.
fn call_at(
    d: &Destination,
    out: &[u8],
    start: usize,
    end: usize,
    members: &[PlacedMember],
    index: Option<usize>,
    w: &mut ContractWork,
) -> Option<Result<(), DeadLetterReason>> {
    if out.get(start) != Some(&b'{') || end == 0 || out.get(end - 1) != Some(&b'}') {
        return None;
    }
    let mut fields: SmallVec<[(Field, Tok); 8]> = SmallVec::new();
    for m in members {
        let (field, value) = read_member(out, m, &mut w.text)?;
        if !matches!(field, Field::Other | Field::Batch) {
            fields.push((field, value_token(out, value, m.end as usize)?));
        }
    }
    Some(call_fields(
        d,
        out,
        end - start,
        &fields,
        index,
        &mut w.text,
    ))
}

/// Splits a batch whose calls are at `elems` of `out`, between `open` and
/// `close` (the array's brackets exclusive), into records of at most
/// `max_batch_bytes` each, every one with the envelope's other members.
fn split(
    d: &Destination,
    out: &mut Vec<u8>,
    elems: &[(usize, usize)],
    open: usize,
    close: usize,
    w: &mut ContractWork,
) -> Result<Records, DeadLetterReason> {
    let Some(max) = d.max_batch_bytes else {
        return Ok(Records::default());
    };
    if out.len() <= max {
        return Ok(Records::default());
    }
    // The envelope without its calls: `{<other members>,"batch":[]}`.
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

/// Checks one call (the object at `obj`).
fn call(
    d: &Destination,
    tape: &[Tok],
    out: &[u8],
    obj: usize,
    index: Option<usize>,
    buf: &mut String,
) -> Result<(), DeadLetterReason> {
    let t = &tape[obj];
    if t.kind != Kind::Object {
        // The engine dead-letters non-object batch elements before this.
        return Err(DeadLetterReason::BatchElementNotObject {
            index: index.unwrap_or(0),
        });
    }
    let mut fields: SmallVec<[(Field, Tok); 8]> = SmallVec::new();
    for (k, v) in members(tape, obj) {
        let field = Field::of(text(out, &tape[k], buf)?);
        if !matches!(field, Field::Other | Field::Batch) {
            fields.push((field, tape[v]));
        }
    }
    let size = t.end as usize - t.start as usize;
    call_fields(d, out, size, &fields, index, buf)
}

/// A member's value as the limits measure it: a string's decoded text,
/// any other value's JSON text (never escaped).
fn value_text<'a>(
    out: &'a [u8],
    m: &json::Member,
    buf: &'a mut String,
) -> Result<&'a [u8], DeadLetterReason> {
    span_text(out, m.value, m.value_escaped, buf)
}

/// What the contract reads of an identify call's `traits`.
struct Traits {
    count: usize,
    /// Whether the first member named `email` holds text that is not
    /// blank; `None` without one.
    email: Option<bool>,
    /// The first trait over a name or value limit, names checked first.
    violation: Option<DeadLetterReason>,
}

/// Reads the `traits` object opening at `open` of `out` in one pass over
/// its members, recording no token.
fn read_traits(
    d: &Destination,
    out: &[u8],
    open: usize,
    index: Option<usize>,
    buf: &mut String,
) -> Result<Traits, DeadLetterReason> {
    let mut t = Traits {
        count: 0,
        email: None,
        violation: None,
    };
    let mut value_buf = String::new();
    // A trait's text that is not UTF-8 (which the engine does not write)
    // fails the call before any limit does.
    let mut not_text = None;
    json::each_member(out, open, |m| {
        t.count += 1;
        let count = t.count;
        if not_text.is_some() || (t.violation.is_some() && t.email.is_some()) {
            return;
        }
        let key = match span_text(out, m.key, m.key_escaped, buf) {
            Ok(key) => key,
            Err(e) => return not_text = Some(e),
        };
        if t.email.is_none() && key == b"email" {
            let v = value_text(out, &m, &mut value_buf);
            match v.and_then(|v| blank(v, m.value.0)) {
                Ok(blank) => t.email = Some(m.kind == Kind::String && !blank),
                Err(e) => return not_text = Some(e),
            }
        }
        if t.violation.is_some() {
            return;
        }
        let name = key.len();
        if let Some(max) = d.max_trait_name_bytes.filter(|&max| name > max) {
            t.violation = Some(violation(
                Limit::TraitNameTooLong,
                index,
                format!(
                    "trait {count} has a name of {name} bytes, over max_trait_name_bytes {max}"
                ),
            ));
            return;
        }
        if let Some(max) = d.max_trait_value_bytes {
            let n = match value_text(out, &m, &mut value_buf) {
                Ok(v) => v.len(),
                Err(e) => return not_text = Some(e),
            };
            if n > max {
                t.violation = Some(violation(
                    Limit::TraitValueTooLarge,
                    index,
                    format!(
                        "trait {count} has a value of {n} bytes, over max_trait_value_bytes {max}"
                    ),
                ));
            }
        }
    })
    .map_err(|_| DeadLetterReason::InvalidJson { offset: open })?;
    match not_text {
        Some(e) => Err(e),
        None => Ok(t),
    }
}

/// Checks one call of `size` bytes whose members the contract reads are
/// `fields` (in order, each with its value's token).
fn call_fields(
    d: &Destination,
    out: &[u8],
    size: usize,
    fields: &[(Field, Tok)],
    index: Option<usize>,
    buf: &mut String,
) -> Result<(), DeadLetterReason> {
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
    for &(field, val) in fields {
        match field {
            Field::Type => ty = (val.kind == Kind::String).then_some(val),
            Field::Event => event = Some(val),
            Field::Traits => traits = Some(val),
            Field::UserId | Field::AnonymousId => {
                let present = match val.kind {
                    Kind::String => val.end > val.start,
                    Kind::Number => true,
                    _ => false,
                };
                identified |= present;
                if let (Field::UserId, true, Some(max)) = (field, present, d.max_id_chars) {
                    let chars = if val.kind == Kind::String {
                        chars(text(out, &val, buf)?, val.start as usize)?
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
            Field::Batch | Field::Other => {}
        }
    }
    let mut ty_buf = String::new();
    let ty = ty.map(|v| text(out, &v, &mut ty_buf)).transpose()?;
    if let Some(types) = &d.types {
        if !ty.is_some_and(|t| types.iter().any(|x| x.as_bytes() == t)) {
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
    let ty = ty.unwrap_or(b"");
    // `traits`, read only for an identify call, the one the contract
    // reads them for.
    let traits = match traits.filter(|v: &Tok| v.kind == Kind::Object) {
        Some(v) if ty == b"identify" => Some(read_traits(d, out, v.start as usize, index, buf)?),
        _ => None,
    };
    // For identify, a non-blank `traits.email` identifies the person too.
    let email = traits.as_ref().is_some_and(|t| t.email == Some(true));
    if d.require_identity && !identified && !email {
        return Err(violation(
            Limit::MissingIdentity,
            index,
            "the call has no userId or anonymousId (and, for identify, no traits.email) after sanitizing".into(),
        ));
    }
    if ty == b"track" {
        let name = match event.filter(|v| v.kind == Kind::String) {
            Some(v) => {
                let t = text(out, &v, buf)?;
                (!blank(t, v.start as usize)?).then_some(t)
            }
            None => None,
        };
        let Some(name) = name else {
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
    if let Some(t) = traits {
        if let Some(e) = t.violation {
            return Err(e);
        }
        if let Some(max) = d.max_traits {
            if t.count > max {
                return Err(violation(
                    Limit::TooManyTraits,
                    index,
                    format!("the call has {} traits, over max_traits {max}", t.count),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `blank` and `chars` read ASCII as bytes: they must agree with
    /// `str::trim` and `str::chars` on every text.
    #[test]
    fn blank_and_chars_agree_with_str() {
        let mut texts: Vec<String> = (0u8..128).map(|b| char::from(b).to_string()).collect();
        for s in [
            "\u{85}", "\u{a0}", "\u{2028}", "\u{3000}", "é", "😀", " \u{a0}x", "",
        ] {
            texts.push(s.to_string());
        }
        let singles = texts.clone();
        for a in &singles {
            for b in ["", " ", "\t", "\u{b}", "x", "\u{a0}", "é"] {
                texts.push(format!("{b}{a}{b}"));
            }
        }
        for t in &texts {
            assert_eq!(blank(t.as_bytes(), 0), Ok(t.trim().is_empty()), "{t:?}");
            assert_eq!(chars(t.as_bytes(), 0), Ok(t.chars().count()), "{t:?}");
        }
        assert!(blank(b"\xff", 3).is_err());
        assert!(chars(b"a\xc3", 3).is_err());
    }
}
