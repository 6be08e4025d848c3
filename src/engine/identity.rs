//! Who a message is about, and judging a message with the people who must
//! not be processed (privacy requests) left out first.
//!
//! The person is found before any other outcome, by a strict scan of its
//! own ([`scan`]) that needs none of the engine's limits: it reads messages
//! the engine refuses (too deep, too large up to [`SCAN_MAX_BYTES`],
//! duplicate keys, even JSON cut off after the ids). It reads, from the
//! *input* (the rules may hash or drop them on the way out), every
//! occurrence of `userId`, `anonymousId` and `previousId` at the top level
//! (a call, or a batch envelope) and in each call of `batch`, and the
//! message key. A suppressed person's message is then produced nowhere,
//! dead-letter topic included.
//!
//! A batch is judged call by call: suppressed calls are removed first; if
//! the rest cannot be sanitized as one batch, each call is tried alone, a
//! call that fails alone becomes a dead letter of its own (an envelope with
//! only that call) and the others still go out as one batch, in order.

use super::contract::Records;
use super::json::{scan_number, scan_string, skip_ws, unescape, JsonError};
use super::{DeadLetterReason, Sanitizer, Scratch};
use smallvec::SmallVec;
use std::borrow::Cow;

/// The largest message the identity scan reads (larger ones are judged by
/// their key only, then refused as too large by the engine).
pub const SCAN_MAX_BYTES: usize = 16 << 20;

/// One identifier, in the namespace the suppression set keeps it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id<'a> {
    /// A `userId`.
    User(&'a str),
    /// An `anonymousId`.
    Anonymous(&'a str),
}

/// Where a suppressed person was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedBy {
    /// The message key.
    MessageKey,
    /// The top level of a single call.
    Call,
    /// The envelope of a batch (its own `userId` / `anonymousId`).
    Envelope,
    /// Calls of a batch, which cannot be separated from the rest (every
    /// call suppressed, or the message is not whole JSON).
    BatchCalls,
}

impl NamedBy {
    /// The name in the audit stream.
    pub fn name(self) -> &'static str {
        match self {
            NamedBy::MessageKey => "message_key",
            NamedBy::Call => "call",
            NamedBy::Envelope => "envelope",
            NamedBy::BatchCalls => "batch_calls",
        }
    }
}

/// A call of a batch that failed on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedCall {
    /// Its position in the batch as consumed.
    pub index: usize,
    /// Why.
    pub reason: DeadLetterReason,
    /// The envelope with only this call: the dead letter's value.
    pub payload: Vec<u8>,
}

/// What [`Sanitizer::judge`] made of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sanitized {
    /// Clean records in `out`.
    Clean {
        /// The records, as from [`Sanitizer::sanitize`].
        records: Records,
        /// Calls of the batch that were left out (suppressed people).
        suppressed_calls: usize,
        /// Calls of the batch that are dead letters of their own.
        refused_calls: Vec<RefusedCall>,
    },
    /// About a suppressed person as a whole: nothing is produced.
    Suppressed(NamedBy),
    /// The batch without its suppressed calls cannot be sanitized: `rest`
    /// (never the original) is the dead letter.
    RefusedRest {
        /// Why.
        reason: DeadLetterReason,
        /// The envelope with the calls that may go.
        rest: Vec<u8>,
        /// Calls left out.
        suppressed_calls: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdKey {
    User,
    Anonymous,
    /// `previousId` (an alias call): either namespace.
    Previous,
}

#[derive(Clone, Debug)]
struct Found<'a> {
    key: IdKey,
    value: Cow<'a, str>,
}

#[derive(Clone, Debug, Default)]
struct Call<'a> {
    start: usize,
    end: usize,
    ids: SmallVec<[Found<'a>; 2]>,
}

/// Who a message names, as [`scan`] read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Named<'a> {
    /// Identifiers at the top level (every occurrence).
    root: SmallVec<[Found<'a>; 2]>,
    /// The elements of every top-level `batch` array, in order.
    calls: Vec<Call<'a>>,
    /// `batch` members at the top level.
    batches: usize,
    /// The span of the `batch` array, brackets included, when it is the
    /// only `batch` member and an array.
    batch: Option<(usize, usize)>,
    /// The top level is an object.
    object: bool,
    /// The whole message was read and is valid JSON.
    complete: bool,
}

impl Named<'_> {
    /// The batch that can be rebuilt without some of its calls.
    fn separable(&self) -> Option<(usize, usize)> {
        self.batch
            .filter(|_| self.complete && self.object && self.batches == 1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Batch,
    Call,
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    Batch,
    Element,
    RootId(IdKey),
    CallId(IdKey),
    Other,
}

#[derive(Clone, Copy)]
struct Frame {
    obj: bool,
    role: Role,
    /// An element of the batch array (its end closes a [`Call`]).
    element: bool,
}

fn id_key(b: &[u8], start: usize, end: usize, escaped: bool) -> Option<IdKey> {
    let raw = &b[start..end];
    let decoded;
    let name: &[u8] = if escaped {
        let mut s = String::new();
        unescape(std::str::from_utf8(raw).ok()?, &mut s);
        decoded = s;
        decoded.as_bytes()
    } else {
        raw
    };
    match name {
        b"userId" => Some(IdKey::User),
        b"anonymousId" => Some(IdKey::Anonymous),
        b"previousId" => Some(IdKey::Previous),
        _ => None,
    }
}

fn text(b: &[u8], start: usize, end: usize, escaped: bool) -> Option<Cow<'_, str>> {
    let raw = std::str::from_utf8(&b[start..end]).ok()?;
    Some(if escaped {
        let mut s = String::new();
        unescape(raw, &mut s);
        Cow::Owned(s)
    } else {
        Cow::Borrowed(raw)
    })
}

/// Reads who `b` names. Strict JSON (as the engine's tokenizer), with no
/// depth limit (a byte per level); on a syntax error it stops and keeps
/// what it found before it (`complete` is false).
pub(crate) fn scan(b: &[u8]) -> Named<'_> {
    let mut n = Named::default();
    n.complete = scan_into(b, &mut n).is_ok();
    n
}

fn scan_into<'a>(b: &'a [u8], n: &mut Named<'a>) -> Result<(), JsonError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = skip_ws(b, 0);
    let mut slot = Slot::Root;
    // Reads `"key" :` at `i` inside a container of `role`.
    let key = |i: usize, role: Role| -> Result<(usize, Slot), JsonError> {
        if b.get(i) != Some(&b'"') {
            return Err(JsonError::Syntax(i));
        }
        let (end, escaped) = scan_string(b, i)?;
        let slot = match (role, id_key(b, i + 1, end, escaped)) {
            (Role::Root, Some(k)) => Slot::RootId(k),
            (Role::Call, Some(k)) => Slot::CallId(k),
            (Role::Root, None)
                if (!escaped && &b[i + 1..end] == b"batch")
                    || (escaped && text(b, i + 1, end, true).as_deref() == Some("batch")) =>
            {
                Slot::Batch
            }
            _ => Slot::Other,
        };
        let j = skip_ws(b, end + 1);
        if b.get(j) != Some(&b':') {
            return Err(JsonError::Syntax(j));
        }
        Ok((skip_ws(b, j + 1), slot))
    };
    'value: loop {
        let Some(&c) = b.get(i) else {
            return Err(JsonError::Syntax(i));
        };
        let element = slot == Slot::Element;
        if element {
            n.calls.push(Call {
                start: i,
                ..Call::default()
            });
        }
        if slot == Slot::Batch {
            n.batches += 1;
        }
        match c {
            b'{' | b'[' => {
                let obj = c == b'{';
                let role = match (slot, obj) {
                    (Slot::Root, true) => {
                        n.object = true;
                        Role::Root
                    }
                    (Slot::Batch, false) => Role::Batch,
                    (Slot::Element, true) => Role::Call,
                    _ => Role::Other,
                };
                if role == Role::Batch && n.batches == 1 {
                    n.batch = Some((i, 0));
                }
                stack.push(Frame { obj, role, element });
                i = skip_ws(b, i + 1);
                let close = if obj { b'}' } else { b']' };
                if b.get(i) != Some(&close) {
                    if obj {
                        (i, slot) = key(i, role)?;
                    } else {
                        slot = if role == Role::Batch {
                            Slot::Element
                        } else {
                            Slot::Other
                        };
                    }
                    continue 'value;
                }
                // Empty: closed below.
            }
            b'"' => {
                let (end, escaped) = scan_string(b, i)?;
                if matches!(slot, Slot::RootId(_) | Slot::CallId(_)) {
                    found(n, slot, text(b, i + 1, end, escaped));
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = scan_number(b, i)?;
                if matches!(slot, Slot::RootId(_) | Slot::CallId(_)) {
                    found(n, slot, text(b, i, end, false));
                }
                i = end;
            }
            _ => {
                let word: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    b'n' => b"null",
                    _ => return Err(JsonError::Syntax(i)),
                };
                if !b[i..].starts_with(word) {
                    return Err(JsonError::Syntax(i));
                }
                i += word.len();
            }
        }
        if element && !matches!(c, b'{' | b'[') {
            if let Some(call) = n.calls.last_mut() {
                call.end = i;
            }
        }
        // After a value (or at an empty container's closing bracket).
        loop {
            let Some(&top) = stack.last() else {
                i = skip_ws(b, i);
                return if i == b.len() {
                    Ok(())
                } else {
                    Err(JsonError::Syntax(i))
                };
            };
            i = skip_ws(b, i);
            match (top.obj, b.get(i)) {
                (true, Some(b'}')) | (false, Some(b']')) => {
                    stack.pop();
                    i += 1;
                    if top.element {
                        if let Some(call) = n.calls.last_mut() {
                            call.end = i;
                        }
                    }
                    if top.role == Role::Batch {
                        if let Some((_, end @ 0)) = &mut n.batch {
                            *end = i;
                        }
                    }
                }
                (true, Some(b',')) => {
                    (i, slot) = key(skip_ws(b, i + 1), top.role)?;
                    continue 'value;
                }
                (false, Some(b',')) => {
                    i = skip_ws(b, i + 1);
                    slot = if top.role == Role::Batch {
                        Slot::Element
                    } else {
                        Slot::Other
                    };
                    continue 'value;
                }
                _ => return Err(JsonError::Syntax(i)),
            }
        }
    }
}

fn found<'a>(n: &mut Named<'a>, slot: Slot, value: Option<Cow<'a, str>>) {
    let Some(value) = value else { return };
    match slot {
        Slot::RootId(key) => n.root.push(Found { key, value }),
        Slot::CallId(key) => {
            if let Some(call) = n.calls.last_mut() {
                call.ids.push(Found { key, value });
            }
        }
        _ => {}
    }
}

/// Whether `f` names a suppressed person.
fn names(f: &Found<'_>, is: &dyn Fn(Id<'_>) -> bool) -> bool {
    let v = &*f.value;
    match f.key {
        IdKey::User => is(Id::User(v)),
        IdKey::Anonymous => is(Id::Anonymous(v)),
        IdKey::Previous => is(Id::User(v)) || is(Id::Anonymous(v)),
    }
}

/// `input` with its batch array (`batch`, brackets included) holding only
/// the calls at `spans`.
fn envelope(input: &[u8], batch: (usize, usize), spans: &[(usize, usize)]) -> Vec<u8> {
    let (open, close) = (batch.0 + 1, batch.1 - 1);
    let mut v = Vec::with_capacity(input.len());
    v.extend_from_slice(&input[..open]);
    for (n, &(s, e)) in spans.iter().enumerate() {
        if n > 0 {
            v.push(b',');
        }
        v.extend_from_slice(&input[s..e]);
    }
    v.extend_from_slice(&input[close..]);
    v
}

impl DeadLetterReason {
    /// Whether a batch refused for this reason may be judged call by call:
    /// not when the message as a whole is unreadable or over its size.
    fn may_be_one_call(&self) -> bool {
        !matches!(
            self,
            Self::Empty
                | Self::TooLarge { .. }
                | Self::InvalidUtf8 { .. }
                | Self::InvalidJson { .. }
                | Self::NotAnObject
                | Self::BatchNotArray
        )
    }
}

impl Sanitizer {
    /// Judges one consumed message: as [`Sanitizer::sanitize`], with a
    /// batch judged call by call (module docs) and, when `suppressed` is
    /// given, the people it says yes to left out before anything else: a
    /// message (or all calls of a batch) about them gives
    /// [`Sanitized::Suppressed`], whatever else is wrong with it.
    pub fn judge(
        &self,
        input: &[u8],
        key: Option<&[u8]>,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
        suppressed: Option<&dyn Fn(Id<'_>) -> bool>,
    ) -> Result<Sanitized, DeadLetterReason> {
        out.clear();
        if let Some(is) = suppressed {
            let key = key.and_then(|k| std::str::from_utf8(k).ok());
            let named = (input.len() <= SCAN_MAX_BYTES).then(|| scan(input));
            // The key, unless it is the text of an id the message carries
            // (then it is that id, checked in its own namespace below).
            let known = |k: &str| {
                named.as_ref().is_some_and(|n| {
                    n.root
                        .iter()
                        .chain(n.calls.iter().flat_map(|c| c.ids.iter()))
                        .any(|f| f.value == k)
                })
            };
            if let Some(k) = key.filter(|k| !known(k)) {
                if is(Id::User(k)) || is(Id::Anonymous(k)) {
                    return Ok(Sanitized::Suppressed(NamedBy::MessageKey));
                }
            }
            if let Some(named) = named {
                if named.root.iter().any(|f| names(f, is)) {
                    let by = if named.batches > 0 {
                        NamedBy::Envelope
                    } else {
                        NamedBy::Call
                    };
                    return Ok(Sanitized::Suppressed(by));
                }
                let mut kept = Vec::new();
                let mut index = Vec::new();
                for (i, c) in named.calls.iter().enumerate() {
                    if !c.ids.iter().any(|f| names(f, is)) {
                        kept.push((c.start, c.end));
                        index.push(i);
                    }
                }
                let dropped = named.calls.len() - kept.len();
                if dropped > 0 {
                    let Some(batch) = named.separable().filter(|_| !kept.is_empty()) else {
                        return Ok(Sanitized::Suppressed(NamedBy::BatchCalls));
                    };
                    let rest = envelope(input, batch, &kept);
                    return Ok(match self.settle(&rest, Some(&index), scratch, out) {
                        Ok((records, refused_calls)) => Sanitized::Clean {
                            records,
                            suppressed_calls: dropped,
                            refused_calls,
                        },
                        Err(reason) => Sanitized::RefusedRest {
                            reason,
                            rest,
                            suppressed_calls: dropped,
                        },
                    });
                }
            }
        }
        let (records, refused_calls) = self.settle(input, None, scratch, out)?;
        Ok(Sanitized::Clean {
            records,
            suppressed_calls: 0,
            refused_calls,
        })
    }

    /// Sanitizes `bytes`; a batch that fails as a whole is tried call by
    /// call. `index` maps a call's position in `bytes` to its position in
    /// the batch as consumed.
    fn settle(
        &self,
        bytes: &[u8],
        index: Option<&[usize]>,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<(Records, Vec<RefusedCall>), DeadLetterReason> {
        let reason = match self.sanitize(bytes, scratch, out) {
            Ok(records) => return Ok((records, Vec::new())),
            Err(reason) if reason.may_be_one_call() => reason,
            Err(reason) => return Err(reason),
        };
        let named = scan(bytes);
        let Some(batch) = named.separable().filter(|_| named.calls.len() > 1) else {
            return Err(reason);
        };
        let (mut good, mut refused) = (Vec::new(), Vec::new());
        for (i, c) in named.calls.iter().enumerate() {
            let one = envelope(bytes, batch, &[(c.start, c.end)]);
            match self.sanitize(&one, scratch, out) {
                Ok(_) => good.push((c.start, c.end)),
                Err(r) => refused.push(RefusedCall {
                    index: index.and_then(|x| x.get(i).copied()).unwrap_or(i),
                    reason: r,
                    payload: one,
                }),
            }
        }
        if good.is_empty() || refused.is_empty() {
            out.clear();
            return Err(reason);
        }
        let records = self.sanitize(&envelope(bytes, batch, &good), scratch, out)?;
        Ok((records, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: &Named<'_>) -> (Vec<String>, Vec<Vec<String>>) {
        let show = |f: &Found<'_>| format!("{:?}={}", f.key, f.value);
        (
            n.root.iter().map(show).collect(),
            n.calls
                .iter()
                .map(|c| c.ids.iter().map(show).collect())
                .collect(),
        )
    }

    #[test]
    fn the_scan_finds_every_id_at_the_top_and_in_each_call() {
        let input = br#"{"userId":"a","x":{"userId":"deep"},"userId":"b","anonymousId":7,"batch":[{"user\u0049d":"c","previousId":"p"},"str",{"context":{"anonymousId":"no"}}]}"#;
        let n = scan(input);
        assert!(n.complete && n.object);
        assert_eq!(n.batches, 1);
        let (root, calls) = ids(&n);
        assert_eq!(root, ["User=a", "User=b", "Anonymous=7"]);
        assert_eq!(calls, vec![vec!["User=c", "Previous=p"], vec![], vec![]]);
        let spans: Vec<&[u8]> = n.calls.iter().map(|c| &input[c.start..c.end]).collect();
        assert_eq!(
            spans,
            [
                &br#"{"user\u0049d":"c","previousId":"p"}"#[..],
                br#""str""#,
                br#"{"context":{"anonymousId":"no"}}"#
            ]
        );
        let (s, e) = n.batch.unwrap();
        assert_eq!(input[s], b'[');
        assert_eq!(input[e - 1], b']');
    }

    #[test]
    fn the_scan_needs_no_depth_limit_and_keeps_what_it_read_before_an_error() {
        let deep = format!(
            r#"{{"userId":"a","p":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let n = scan(deep.as_bytes());
        assert!(n.complete);
        assert_eq!(ids(&n).0, ["User=a"]);
        let cut = scan(br#"{"anonymousId":"x","batch":[{"userId":"y"},{"#);
        assert!(!cut.complete);
        assert_eq!(
            ids(&cut),
            (
                vec!["Anonymous=x".into()],
                vec![vec!["User=y".into()], vec![]]
            )
        );
        // Strict: a string is read as a string, quotes escaped inside it
        // name no one.
        let n = scan(br#"{"x":"\",\"userId\":\"z","userId":"real"}"#);
        assert_eq!(ids(&n).0, ["User=real"]);
        for bad in [
            &b"{\"userId\":\"a\"} x"[..],
            b"{\"a\":tru}",
            b"{\"a\" 1}",
            b"[1,]",
        ] {
            assert!(!scan(bad).complete, "{}", String::from_utf8_lossy(bad));
        }
    }
}
