//! Who a message is about, and sanitizing that leaves out the calls of
//! people who must not be processed (privacy requests).
//!
//! The identity of a call is its top-level `userId` and `anonymousId`, read
//! from the *input* (the rules may hash or drop them on the way out). A
//! batch envelope's calls are judged one by one: suppressed calls are left
//! out and the rest sanitized as a batch of their own.

use super::contract::Records;
use super::json::{members, unescape, Kind, Tok};
use super::{DeadLetterReason, Sanitizer, Scratch};
use std::borrow::Cow;

/// The identifiers of one call, as text (a number as written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    /// `userId`.
    pub user_id: Option<Cow<'a, str>>,
    /// `anonymousId`.
    pub anonymous_id: Option<Cow<'a, str>>,
}

/// What [`Sanitizer::sanitize_unless`] made of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sanitized {
    /// Clean records in `out`; `suppressed_calls` calls of a batch were
    /// left out.
    Clean {
        /// The records, as from [`Sanitizer::sanitize`].
        records: Records,
        /// Calls of the batch that were left out.
        suppressed_calls: usize,
    },
    /// Every call is about a suppressed person: nothing is produced.
    Suppressed,
}

fn text<'a>(src: &'a str, t: &Tok) -> Cow<'a, str> {
    let raw = &src[t.start as usize..t.end as usize];
    if t.escaped {
        let mut s = String::new();
        unescape(raw, &mut s);
        Cow::Owned(s)
    } else {
        Cow::Borrowed(raw)
    }
}

fn identity<'a>(src: &'a str, tape: &[Tok], obj: usize) -> Identity<'a> {
    let mut id = Identity::default();
    if tape[obj].kind != Kind::Object {
        return id;
    }
    for (k, v) in members(tape, obj) {
        let slot = match &*text(src, &tape[k]) {
            "userId" => &mut id.user_id,
            "anonymousId" => &mut id.anonymous_id,
            _ => continue,
        };
        let t = &tape[v];
        if slot.is_none() && matches!(t.kind, Kind::String | Kind::Number) {
            *slot = Some(text(src, t));
        }
    }
    id
}

/// The value of the root's `batch` member, when it is an array.
fn batch(src: &str, tape: &[Tok]) -> Option<usize> {
    members(tape, 0)
        .find(|&(k, _)| text(src, &tape[k]) == "batch")
        .map(|(_, v)| v)
        .filter(|&v| tape[v].kind == Kind::Array)
}

impl Sanitizer {
    /// As [`Sanitizer::sanitize`], but a call whose identity `suppressed`
    /// says yes to is not produced: a single call gives
    /// [`Sanitized::Suppressed`]; a batch loses those calls (all of them:
    /// `Suppressed`). A suppressed call wins over a dead letter: nothing of
    /// a suppressed person is produced anywhere, as long as the message is
    /// JSON that names them.
    pub fn sanitize_unless(
        &self,
        input: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
        suppressed: &mut dyn FnMut(&Identity) -> bool,
    ) -> Result<Sanitized, DeadLetterReason> {
        let walked = super::walk::run(
            self,
            input,
            &mut scratch.w,
            out,
            &mut super::explain::NoTrace,
        );
        if let Some(tape) = scratch.w.tape() {
            // Tokenized, so valid UTF-8.
            let src = std::str::from_utf8(input).unwrap_or_default();
            match batch(src, tape) {
                None => {
                    if suppressed(&identity(src, tape, 0)) {
                        out.clear();
                        return Ok(Sanitized::Suppressed);
                    }
                }
                Some(b) => {
                    let mut keep: Vec<(usize, usize)> = Vec::new();
                    let mut dropped = 0;
                    let mut i = b + 1;
                    while i < tape[b].next as usize {
                        let t = &tape[i];
                        if suppressed(&identity(src, tape, i)) {
                            dropped += 1;
                        } else {
                            keep.push((t.start as usize, t.end as usize));
                        }
                        i = t.next as usize;
                    }
                    if dropped > 0 {
                        out.clear();
                        if keep.is_empty() {
                            return Ok(Sanitized::Suppressed);
                        }
                        // The envelope with only the calls that may go.
                        let (open, close) = (tape[b].start as usize + 1, tape[b].end as usize - 1);
                        let mut rest = Vec::with_capacity(input.len());
                        rest.extend_from_slice(&input[..open]);
                        for (n, &(s, e)) in keep.iter().enumerate() {
                            if n > 0 {
                                rest.push(b',');
                            }
                            rest.extend_from_slice(&input[s..e]);
                        }
                        rest.extend_from_slice(&input[close..]);
                        let records = self.sanitize(&rest, scratch, out)?;
                        return Ok(Sanitized::Clean {
                            records,
                            suppressed_calls: dropped,
                        });
                    }
                }
            }
        }
        walked?;
        let records = self.contract(out, &mut scratch.contract)?;
        Ok(Sanitized::Clean {
            records,
            suppressed_calls: 0,
        })
    }
}
