//! A strict JSON tokenizer that records a flat tape of tokens with byte
//! spans into the input, so the sanitizer can validate a whole message
//! before writing anything, look ahead (for `when`), skip subtrees, and copy
//! untouched scalars byte for byte.
//!
//! Strictness is part of failing closed: anything `serde_json` would reject
//! is rejected here too, and so are unpaired UTF-16 surrogate escapes.

use super::swar::{zero_bytes, HI, LO7, ONES};

/// Token kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

/// One token. For containers `start..end` spans the brackets and `next` is
/// the tape index just past the container's last token; for strings
/// `start..end` is the content between the quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tok {
    pub kind: Kind,
    /// Strings: whether the content has a backslash escape.
    pub escaped: bool,
    /// Containers from [`tokenize`]: whether an object (this one or one
    /// inside it) may have two equal keys: two plainly equal, one with an
    /// escape, or too many to compare. Only those need the walk's
    /// duplicate-key check; false elsewhere.
    pub may_repeat: bool,
    pub start: u32,
    pub end: u32,
    pub next: u32,
}

/// Why a message is not acceptable JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON, at this byte offset.
    Syntax(usize),
    /// Nested deeper than the limit.
    TooDeep,
    /// A number beyond the range of a double (`1e400`), at this byte
    /// offset: serde_json and Go refuse it, Python reads `inf`.
    NumberOutOfRange(usize),
}

/// Whether the number `num` (valid JSON) is beyond the range of a double.
/// Only a number with an exponent or over 300 digits can be: the others
/// are decided without parsing.
#[inline]
fn overflows(num: &[u8]) -> bool {
    if num.len() < 300 && !num.iter().any(|&c| c | 0x20 == b'e') {
        return false;
    }
    std::str::from_utf8(num)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .is_none_or(f64::is_infinite)
}

#[inline(always)]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // Compact JSON, the common case: one comparison (every whitespace
    // byte is at most a space).
    if b.get(i).is_none_or(|&c| c > b' ') {
        return i;
    }
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// [`skip_ws`] inside a value, remembering in `spaced` whether there was
/// any (the value is then not compact).
#[inline(always)]
fn ws(b: &[u8], i: usize, spaced: &mut bool) -> usize {
    if b.get(i).is_none_or(|&c| c > b' ') {
        return i;
    }
    // Whitespace (or a control byte, which fails the value anyway).
    *spaced = true;
    skip_ws(b, i)
}

/// Whether `b` holds a backslash: eight bytes per step (SWAR), in line,
/// for the short texts (keys, ids, names) where a call to `memchr` costs
/// more than the search.
#[inline(always)]
pub(crate) fn has_backslash(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let chunk = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if zero_bytes(chunk ^ (ONES * b'\\' as u64)) != 0 {
            return true;
        }
    }
    words.remainder().contains(&b'\\')
}

/// High bit set in each byte of `chunk` that a JSON string scan must stop
/// at: a quote, a backslash, or a control character.
#[inline(always)]
fn stops(chunk: u64) -> u64 {
    let quote = zero_bytes(chunk ^ (ONES * b'"' as u64));
    let backslash = zero_bytes(chunk ^ (ONES * b'\\' as u64));
    // Bytes below 0x20: adding 0x60 to the low seven bits leaves bit 7 clear.
    let control = !(((chunk & LO7).wrapping_add(ONES * 0x60)) | chunk) & HI;
    quote | backslash | control
}

/// Bit `n` set where byte `n` of `c` must stop a string scan (as
/// [`stops`]), sixteen bytes at once with SSE2.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn stops16(c: &[u8; 16]) -> u32 {
    use std::arch::x86_64::*;
    let word = |k: usize| i64::from_le_bytes(c[k..k + 8].try_into().expect("8 bytes"));
    // SAFETY: these intrinsics need only SSE2, which this code is compiled
    // with (the `cfg` above; every x86_64 processor has it), and none of
    // them reads or writes memory: the bytes come in as two words, the
    // result leaves as an integer.
    unsafe {
        let v = _mm_set_epi64x(word(8), word(0));
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Bytes up to 0x1f (unsigned): their minimum with 0x1f is themselves.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// The index of the first byte from `j` on that stops a string scan, or
/// one in the last seven bytes (decided byte by byte).
#[inline(always)]
fn next_stop(b: &[u8], mut j: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(c) = b.get(j..j + 16) {
        let m = stops16(c.try_into().expect("16 bytes"));
        if m != 0 {
            return j + m.trailing_zeros() as usize;
        }
        j += 16;
    }
    while let Some(c) = b.get(j..j + 8) {
        let m = stops(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        if m != 0 {
            return j + (m.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    j
}

/// Scans a string whose opening quote is at `i`; returns (index of the
/// closing quote, has escapes). Sixteen bytes per step with SSE2, else
/// eight (SWAR), then byte by byte ([`next_stop`]): the first byte needing
/// attention is found from the stop mask's trailing zeros.
#[inline(always)]
pub(crate) fn scan_string(b: &[u8], i: usize) -> Result<(usize, bool), JsonError> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = next_stop(b, j);
        let Some(&c) = b.get(j) else {
            return Err(JsonError::Syntax(j));
        };
        match c {
            b'"' => return Ok((j, escaped)),
            b'\\' => {
                escaped = true;
                j = scan_escape(b, j)?;
            }
            0..=0x1f => return Err(JsonError::Syntax(j)),
            _ => j += 1,
        }
    }
}

/// Validates the escape at `b[i] == '\\'`; returns the index after it.
fn scan_escape(b: &[u8], i: usize) -> Result<usize, JsonError> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let unit = hex4(b, i + 2).ok_or(JsonError::Syntax(i))?;
            match unit {
                0xD800..=0xDBFF => {
                    // A high surrogate must be followed by a low one.
                    if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                        if let Some(0xDC00..=0xDFFF) = hex4(b, i + 8) {
                            return Ok(i + 12);
                        }
                    }
                    Err(JsonError::Syntax(i))
                }
                0xDC00..=0xDFFF => Err(JsonError::Syntax(i)),
                _ => Ok(i + 6),
            }
        }
        _ => Err(JsonError::Syntax(i)),
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

pub(crate) fn scan_number(b: &[u8], i: usize) -> Result<usize, JsonError> {
    let mut j = i;
    if b[j] == b'-' {
        j += 1;
    }
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => j = digits_from(b, j),
        _ => return Err(JsonError::Syntax(j)),
    }
    if b.get(j) == Some(&b'.') {
        j = some_digits(b, j + 1)?;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = some_digits(b, j)?;
    }
    Ok(j)
}

/// The end of the run of ASCII digits at `j` (`j` itself if none).
#[inline(always)]
fn digits_from(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    j
}

/// The end of the run of ASCII digits at `j`, which must hold one at
/// least (a fraction's or an exponent's).
#[inline(always)]
fn some_digits(b: &[u8], j: usize) -> Result<usize, JsonError> {
    let end = digits_from(b, j);
    if end == j {
        return Err(JsonError::Syntax(j));
    }
    Ok(end)
}

/// What [`tokenize`] keeps of the containers open at a point (reused
/// between calls, so it allocates only while it grows).
#[derive(Debug, Default)]
pub(crate) struct Nesting {
    open: Vec<Open>,
}

/// An open container.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Its tape index.
    at: u32,
    /// Its keys so far (while they are compared).
    keys: u32,
    /// One bit per key, picked by its fingerprint.
    bits: u64,
    /// Marked `may_repeat` (by its keys or an object inside it): its keys
    /// are no longer compared, the walk checks them.
    marked: bool,
}

/// Whether [`tokenize`] marks the objects whose keys may repeat
/// ([`Tok::may_repeat`]): only a walk that copies containers whole
/// (without visiting their keys) reads the marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marks {
    Repeats,
    None,
}

/// Past this many keys an object is marked `may_repeat` rather than
/// compared key by key here.
const COMPARED_KEYS: usize = 64;

/// Tokenizes `b` (already known to be UTF-8) into `tape`. Returns whether
/// the value is compact: no whitespace between its tokens (whitespace
/// around it does not count), so a container's span is exactly what a
/// compact writer would write for it.
pub(crate) fn tokenize(
    b: &[u8],
    max_depth: usize,
    marks: Marks,
    tape: &mut Vec<Tok>,
    nest: &mut Nesting,
) -> Result<bool, JsonError> {
    tape.clear();
    nest.open.clear();
    // Whitespace inside the value: skipped, and remembered.
    let mut spaced = false;
    let mut i = skip_ws(b, 0);
    'value: loop {
        // Expecting a value at `i`.
        let Some(&c) = b.get(i) else {
            return Err(JsonError::Syntax(i));
        };
        match c {
            b'{' | b'[' => {
                if nest.open.len() >= max_depth {
                    return Err(JsonError::TooDeep);
                }
                let is_obj = c == b'{';
                nest.open.push(Open {
                    at: tape.len() as u32,
                    keys: 0,
                    bits: 0,
                    // Not compared at all when nobody reads the marks.
                    marked: marks == Marks::None,
                });
                tape.push(Tok {
                    kind: if is_obj { Kind::Object } else { Kind::Array },
                    escaped: false,
                    may_repeat: false,
                    start: i as u32,
                    end: 0,
                    next: 0,
                });
                i = ws(b, i + 1, &mut spaced);
                let close = if is_obj { b'}' } else { b']' };
                if b.get(i) != Some(&close) {
                    if is_obj {
                        i = object_key(b, i, tape, nest, &mut spaced)?;
                    }
                    continue 'value;
                }
                // Empty container: fall through to closing below.
            }
            b'"' => {
                let (end, _) = string_token(b, i, tape)?;
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = scan_number(b, i)?;
                if overflows(&b[i..end]) {
                    return Err(JsonError::NumberOutOfRange(i));
                }
                tape.push(Tok {
                    kind: Kind::Number,
                    escaped: false,
                    may_repeat: false,
                    start: i as u32,
                    end: end as u32,
                    next: tape.len() as u32 + 1,
                });
                i = end;
            }
            _ => {
                let (kind, end) = literal(b, i)?;
                tape.push(Tok {
                    kind,
                    escaped: false,
                    may_repeat: false,
                    start: i as u32,
                    end: end as u32,
                    next: tape.len() as u32 + 1,
                });
                i = end;
            }
        }
        // After a value (or at an empty container's closing bracket).
        loop {
            let Some(&Open { at: top, .. }) = nest.open.last() else {
                i = skip_ws(b, i);
                return if i == b.len() {
                    Ok(!spaced)
                } else {
                    Err(JsonError::Syntax(i))
                };
            };
            i = ws(b, i, &mut spaced);
            let is_obj = tape[top as usize].kind == Kind::Object;
            match (is_obj, b.get(i)) {
                (true, Some(b'}')) | (false, Some(b']')) => {
                    let n = tape.len() as u32;
                    let t = &mut tape[top as usize];
                    t.end = i as u32 + 1;
                    t.next = n;
                    let may_repeat = t.may_repeat;
                    nest.open.pop();
                    if let (true, Some(outer)) = (may_repeat, nest.open.last_mut()) {
                        outer.marked = true;
                        tape[outer.at as usize].may_repeat = true;
                    }
                    i += 1;
                }
                (true, Some(b',')) => {
                    let at = ws(b, i + 1, &mut spaced);
                    i = object_key(b, at, tape, nest, &mut spaced)?;
                    continue 'value;
                }
                (false, Some(b',')) => {
                    i = ws(b, i + 1, &mut spaced);
                    continue 'value;
                }
                _ => return Err(JsonError::Syntax(i)),
            }
        }
    }
}

/// The `true`, `false` or `null` at `i`: its kind and the index after it.
#[inline(always)]
fn literal(b: &[u8], i: usize) -> Result<(Kind, usize), JsonError> {
    let (kind, word): (Kind, &[u8]) = match b.get(i) {
        Some(b't') => (Kind::True, b"true"),
        Some(b'f') => (Kind::False, b"false"),
        Some(b'n') => (Kind::Null, b"null"),
        _ => return Err(JsonError::Syntax(i)),
    };
    if !b[i..].starts_with(word) {
        return Err(JsonError::Syntax(i));
    }
    Ok((kind, i + word.len()))
}

/// Scans the string whose opening quote is at `i` and pushes its token;
/// returns (index of the closing quote, has escapes).
#[inline(always)]
pub(crate) fn string_token(
    b: &[u8],
    i: usize,
    tape: &mut Vec<Tok>,
) -> Result<(usize, bool), JsonError> {
    let (end, escaped) = scan_string(b, i)?;
    tape.push(Tok {
        kind: Kind::String,
        escaped,
        may_repeat: false,
        start: i as u32 + 1,
        end: end as u32,
        next: tape.len() as u32 + 1,
    });
    Ok((end, escaped))
}

/// A fingerprint of the key `b[s..e]` for the duplicate-key marks: its
/// length, first eight and last eight bytes, read from the input (the
/// bytes after a short key stand in for the padding, masked off). Equal
/// keys have equal prints; unequal ones with equal prints are told apart
/// by their bytes.
#[inline(always)]
pub(crate) fn key_print(b: &[u8], s: usize, e: usize) -> u64 {
    let n = e - s;
    let head = match b.get(s..s + 8) {
        Some(w) => {
            let mask = if n >= 8 { !0 } else { (1u64 << (8 * n)) - 1 };
            u64::from_le_bytes(w.try_into().expect("8 bytes")) & mask
        }
        // Near the end of the input: a short key, byte by byte.
        None => b[s..e].iter().rev().fold(0, |w, &c| w << 8 | u64::from(c)),
    };
    let tail = match n {
        9.. => u64::from_le_bytes(b[e - 8..e].try_into().expect("8 bytes")),
        _ => 0,
    };
    (head ^ tail.rotate_left(23) ^ (n as u64).rotate_left(47)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Reads `"key" :` at `i` in the innermost open object of `nest`;
/// returns the index of the value. Marks the object `may_repeat` when the
/// key has an escape or is plainly one it already has (its fingerprint
/// bit set, then its bytes compared with the keys before it), or past
/// [`COMPARED_KEYS`] keys.
#[inline(always)]
fn object_key(
    b: &[u8],
    i: usize,
    tape: &mut Vec<Tok>,
    nest: &mut Nesting,
    spaced: &mut bool,
) -> Result<usize, JsonError> {
    if b.get(i) != Some(&b'"') {
        return Err(JsonError::Syntax(i));
    }
    let (end, escaped) = string_token(b, i, tape)?;
    let open = nest.open.last_mut().expect("in an object");
    if !open.marked {
        let bit = 1u64 << (key_print(b, i + 1, end) >> 58);
        let repeat = escaped
            || open.keys as usize >= COMPARED_KEYS
            || (open.bits & bit != 0 && has_key(b, tape, open.at as usize, i + 1, end));
        if repeat {
            open.marked = true;
            tape[open.at as usize].may_repeat = true;
        } else {
            open.bits |= bit;
            open.keys += 1;
        }
    }
    let j = ws(b, end + 1, spaced);
    if b.get(j) != Some(&b':') {
        return Err(JsonError::Syntax(j));
    }
    Ok(ws(b, j + 1, spaced))
}

/// Whether the object open at tape index `at` has the key `b[s..e]`
/// among its keys before the one just pushed (the tape's last token), all
/// unescaped: read from the tape, each key's value skipped by its `next`
/// (a container value is closed by the time its next key is read).
fn has_key(b: &[u8], tape: &[Tok], at: usize, s: usize, e: usize) -> bool {
    let key = &b[s..e];
    let last = tape.len() - 1;
    let mut k = at + 1;
    while k < last {
        let t = tape[k];
        if &b[t.start as usize..t.end as usize] == key {
            return true;
        }
        k = tape[k + 1].next as usize;
    }
    false
}

/// Decodes the content of a JSON string (validated by the tokenizer).
pub(crate) fn unescape(raw: &str, out: &mut String) {
    out.clear();
    let b = raw.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&raw[run..i]);
        let (c, len) = match b[i + 1] {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            _ => {
                let hi = hex4(b, i + 2).unwrap_or(0xFFFD);
                if (0xD800..=0xDBFF).contains(&hi) {
                    let lo = hex4(b, i + 8).unwrap_or(0xDC00);
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    (char::from_u32(cp).unwrap_or('\u{FFFD}'), 12)
                } else {
                    (char::from_u32(hi).unwrap_or('\u{FFFD}'), 6)
                }
            }
        };
        out.push(c);
        i += len;
        run = i;
    }
    out.push_str(&raw[run..]);
}

/// Writes `s` as JSON string content (no quotes), escaping as `serde_json`
/// does: `"`, `\` and control characters.
pub(crate) fn escape_into(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[run..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
}

/// Which parts of a clean output [`skim`] records token by token; the
/// rest it records as one token per value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skim {
    /// A value whose insides nothing reads.
    Whole,
    /// A value the contract does not read at all (a call's member other
    /// than those it checks): one token over its span, as `Whole`, but
    /// with `escaped` false, so it can be recorded from the span alone.
    Skip,
    /// A call: its members, with `batch` opened (`traits` is opened when
    /// it is read).
    Call,
    /// `batch`: its elements, each a call.
    Calls,
}

/// Tokenizes what the delivery contract reads of `b`, a clean output the
/// engine wrote (so already valid JSON): the members of the top-level
/// object and the elements of its `batch` and their members (see
/// [`call_member`]). Any other object or array is one token whose
/// span covers it (and whose `next` is the token after it), found by
/// skipping strings and counting brackets: a fraction of the cost of
/// [`tokenize`]. The tokens it records have the same kinds and spans as
/// `tokenize` gives them.
pub(crate) fn skim(b: &[u8], tape: &mut Vec<Tok>) -> Result<(), JsonError> {
    tape.clear();
    let i = skip_ws(b, 0);
    let end = skim_value(b, i, tape, Skim::Call)?;
    if skip_ws(b, end) != b.len() {
        return Err(JsonError::Syntax(end));
    }
    Ok(())
}

pub(crate) fn skim_value(
    b: &[u8],
    i: usize,
    tape: &mut Vec<Tok>,
    how: Skim,
) -> Result<usize, JsonError> {
    let Some(&c) = b.get(i) else {
        return Err(JsonError::Syntax(i));
    };
    let at = tape.len();
    if how == Skim::Skip {
        let end = skim_value(b, i, tape, Skim::Whole)?;
        tape[at].escaped = false;
        return Ok(end);
    }
    let (kind, end) = match c {
        b'"' => return Ok(string_token(b, i, tape)?.0 + 1),
        b'{' | b'[' => {
            let kind = if c == b'{' { Kind::Object } else { Kind::Array };
            tape.push(Tok {
                kind,
                escaped: false,
                may_repeat: false,
                start: i as u32,
                end: 0,
                next: 0,
            });
            let end = match (how, kind) {
                (Skim::Call, Kind::Object) => skim_members(b, i, tape)?,
                (Skim::Calls, Kind::Array) => skim_elements(b, i, tape)?,
                _ => skip_container(b, i)?,
            };
            let next = tape.len() as u32;
            let t = &mut tape[at];
            t.end = end as u32;
            t.next = next;
            return Ok(end);
        }
        b'-' | b'0'..=b'9' => (Kind::Number, scan_number(b, i)?),
        _ => literal(b, i)?,
    };
    tape.push(Tok {
        kind,
        escaped: false,
        may_repeat: false,
        start: i as u32,
        end: end as u32,
        next: at as u32 + 1,
    });
    Ok(end)
}

/// The members of the object opening at `open`; returns the index after
/// its closing brace.
fn skim_members(b: &[u8], open: usize, tape: &mut Vec<Tok>) -> Result<usize, JsonError> {
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    let mut name = String::new();
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(JsonError::Syntax(i));
        }
        let (end, escaped) = string_token(b, i, tape)?;
        let child = call_member(&b[i + 1..end], escaped, &mut name).ok_or(JsonError::Syntax(i))?;
        let colon = skip_ws(b, end + 1);
        if b.get(colon) != Some(&b':') {
            return Err(JsonError::Syntax(colon));
        }
        let after = skim_value(b, skip_ws(b, colon + 1), tape, child)?;
        i = skip_ws(b, after);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(JsonError::Syntax(i)),
        }
    }
}

/// What the delivery contract reads a member of a call as, by its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Field {
    Type,
    UserId,
    AnonymousId,
    Event,
    Traits,
    /// The envelope's calls (read at the top level only).
    Batch,
    #[default]
    Other,
}

impl Field {
    /// The field a key names (`key` decoded): a length test and a few
    /// word compares.
    pub(crate) fn of(key: &[u8]) -> Field {
        match key {
            b"type" => Field::Type,
            b"userId" => Field::UserId,
            b"anonymousId" => Field::AnonymousId,
            b"event" => Field::Event,
            b"traits" => Field::Traits,
            b"batch" => Field::Batch,
            _ => Field::Other,
        }
    }

    /// The field the key `raw` (between its quotes, decoded into `buf`
    /// when `escaped`) names; `None` when an escaped key is not UTF-8.
    pub(crate) fn read(raw: &[u8], escaped: bool, buf: &mut String) -> Option<Field> {
        if !escaped {
            return Some(Field::of(raw));
        }
        buf.clear();
        unescape(std::str::from_utf8(raw).ok()?, buf);
        Some(Field::of(buf.as_bytes()))
    }
}

/// How a call's member is skimmed, by its key (`raw`, decoded into
/// `buf` when `escaped`): `batch` holds calls; `type`, `userId`,
/// `anonymousId`, `event` and `traits` are what the contract reads, each
/// one token; the rest is skipped. `None` when an escaped key is not
/// UTF-8.
pub(crate) fn call_member(raw: &[u8], escaped: bool, buf: &mut String) -> Option<Skim> {
    Some(match Field::read(raw, escaped, buf)? {
        Field::Batch => Skim::Calls,
        Field::Other => Skim::Skip,
        _ => Skim::Whole,
    })
}

/// The elements of the array opening at `open`, each as a call.
fn skim_elements(b: &[u8], open: usize, tape: &mut Vec<Tok>) -> Result<usize, JsonError> {
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b']') {
        return Ok(i + 1);
    }
    loop {
        let after = skim_value(b, i, tape, Skim::Call)?;
        i = skip_ws(b, after);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(i + 1),
            _ => return Err(JsonError::Syntax(i)),
        }
    }
}

/// One member of an object, as [`each_member`] reads it: spans into the
/// text, a string's without its quotes, any other value's whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub key: (usize, usize),
    pub key_escaped: bool,
    pub kind: Kind,
    pub value: (usize, usize),
    pub value_escaped: bool,
}

/// Calls `f` with each member of the object opening at `open` in `b`
/// (JSON the engine wrote), in order, recording no token: a container
/// value is skipped whole. Returns the index after the closing brace.
pub(crate) fn each_member(
    b: &[u8],
    open: usize,
    mut f: impl FnMut(Member),
) -> Result<usize, JsonError> {
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(JsonError::Syntax(i));
        }
        let (key_end, key_escaped) = scan_string(b, i)?;
        let colon = skip_ws(b, key_end + 1);
        if b.get(colon) != Some(&b':') {
            return Err(JsonError::Syntax(colon));
        }
        let v = skip_ws(b, colon + 1);
        let (kind, value, value_escaped, after) = match b.get(v) {
            Some(b'"') => {
                let (e, escaped) = scan_string(b, v)?;
                (Kind::String, (v + 1, e), escaped, e + 1)
            }
            Some(&c @ (b'{' | b'[')) => {
                let e = skip_container(b, v)?;
                let kind = if c == b'{' { Kind::Object } else { Kind::Array };
                (kind, (v, e), false, e)
            }
            Some(b'-' | b'0'..=b'9') => {
                let e = scan_number(b, v)?;
                (Kind::Number, (v, e), false, e)
            }
            _ => {
                let (kind, e) = literal(b, v)?;
                (kind, (v, e), false, e)
            }
        };
        f(Member {
            key: (i + 1, key_end),
            key_escaped,
            kind,
            value,
            value_escaped,
        });
        i = skip_ws(b, after);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(JsonError::Syntax(i)),
        }
    }
}

/// The index after the object or array opening at `open`: strings are
/// skipped whole (a bracket inside one does not count), brackets counted.
fn skip_container(b: &[u8], open: usize) -> Result<usize, JsonError> {
    let mut depth = 0usize;
    let mut j = open;
    while let Some(&c) = b.get(j) {
        match c {
            b'"' => {
                j = scan_string(b, j)?.0 + 1;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    Err(JsonError::Syntax(j))
}

/// The members of the object at `obj`: (key token index, value token index).
pub(crate) fn members(tape: &[Tok], obj: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let end = tape[obj].next as usize;
    let mut i = obj + 1;
    std::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let k = i;
        i = tape[k + 1].next as usize;
        Some((k, k + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        let mut tape = Vec::new();
        let mut stack = Nesting::default();
        tokenize(s.as_bytes(), 64, Marks::Repeats, &mut tape, &mut stack).is_ok()
    }

    #[test]
    fn a_backslash_is_found_at_every_place_and_only_there() {
        // Every length to 40 and every position, among bytes that differ
        // from a backslash by one bit (0x5c ^ 1, ^ 0x80: the near misses
        // of a word-wise compare) and plain text.
        for n in 0..40 {
            for filler in [b'a', 0x5d, 0xdc, 0x00, 0xff] {
                let mut text = vec![filler; n];
                assert!(!has_backslash(&text), "{n} x {filler:#x}");
                for at in 0..n {
                    text[at] = b'\\';
                    assert!(has_backslash(&text), "{n} x {filler:#x}, at {at}");
                    text[at] = filler;
                }
            }
        }
    }

    #[test]
    fn numbers_beyond_a_double_are_refused_like_serde_json_does() {
        let long = "9".repeat(400);
        for (n, refused) in [
            ("1e400", true),
            ("-1e400", true),
            (long.as_str(), true),
            ("1e-400", false),
            ("1e308", false),
            ("123", false),
        ] {
            let (mut tape, mut stack) = (Vec::new(), Nesting::default());
            let ours = tokenize(n.as_bytes(), 64, Marks::Repeats, &mut tape, &mut stack);
            assert_eq!(
                matches!(ours, Err(JsonError::NumberOutOfRange(0))),
                refused,
                "{n}"
            );
            let serde = serde_json::from_str::<serde_json::Value>(n);
            assert_eq!(serde.is_err(), refused, "{n}: serde_json agrees");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_edge_cases() {
        let cases = [
            "{}",
            "[]",
            "{\"a\":1}",
            " { \"a\" : [ 1 , 2 ] } ",
            "0",
            "-0",
            "1.5e10",
            "1E+2",
            "\"x\"",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "[1,]",
            "{\"a\":1,}",
            "{,}",
            "[,1]",
            "{\"a\" 1}",
            "{1:2}",
            "tru",
            "nul",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\u{1}\"",
            "{} {}",
            "",
            "   ",
            "[",
            "{\"a\":",
            "\"\\ud83d\\ude00\"",
            "\"\\u00e9\"",
            "[true,false,null]",
            "{\"a\":{\"b\":{}}}",
        ];
        for c in cases {
            let serde = serde_json::from_str::<serde_json::Value>(c).is_ok();
            assert_eq!(ok(c), serde, "{c:?}");
        }
        // Unpaired surrogates are refused (serde_json refuses them too).
        assert!(!ok("\"\\ud83d\""));
        assert!(!ok("\"\\ude00\""));
    }

    #[test]
    fn stop_scans_match_a_plain_loop() {
        let bytes: Vec<u8> = (0u8..=255).collect();
        for w in bytes.chunks(8) {
            let m = stops(u64::from_le_bytes(w.try_into().unwrap()));
            for (k, &c) in w.iter().enumerate() {
                let want = c == b'"' || c == b'\\' || c < 0x20;
                assert_eq!((m >> (8 * k + 7)) & 1 == 1, want, "byte {c}");
            }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        for w in bytes.chunks(16) {
            let m = stops16(w.try_into().unwrap());
            for (k, &c) in w.iter().enumerate() {
                let want = c == b'"' || c == b'\\' || c < 0x20;
                assert_eq!((m >> k) & 1 == 1, want, "byte {c}");
            }
        }
        // Every stop byte at every place in strings that take each path
        // (16 bytes at once, 8, one by one).
        for len in 0..40 {
            for at in 0..len {
                for stop in [b'"', b'\\', 0x00, 0x1f] {
                    let mut b = vec![b'a'; len];
                    b[at] = stop;
                    let plain = (0..len).find(|&j| b[j] == stop).unwrap();
                    let j = next_stop(&b, 0);
                    assert!(
                        j == plain || (j + 8 > len && j <= plain),
                        "{len} {at} {stop}"
                    );
                }
            }
        }
    }

    /// The tokens `skim` records (the members of the top level and of its
    /// `batch` elements, and of a `traits` opened) equal `tokenize`'s.
    #[test]
    fn skim_records_what_the_contract_reads_as_tokenize_does() {
        fn same(b: &[u8], full: &[Tok], sk: &[Tok], f: usize, s: usize, how: Skim) {
            let (a, c) = (full[f], sk[s]);
            let escaped = a.escaped && how != Skim::Skip;
            assert_eq!(
                (a.kind, a.start, a.end, escaped),
                (c.kind, c.start, c.end, c.escaped)
            );
            match (how, a.kind) {
                (Skim::Call, Kind::Object) => {
                    let (fm, sm): (Vec<_>, Vec<_>) =
                        (members(full, f).collect(), members(sk, s).collect());
                    assert_eq!(fm.len(), sm.len());
                    for ((fk, fv), (sk_, sv)) in fm.into_iter().zip(sm) {
                        same(b, full, sk, fk, sk_, Skim::Whole);
                        let mut name = String::new();
                        let raw =
                            std::str::from_utf8(&b[full[fk].start as usize..full[fk].end as usize])
                                .unwrap();
                        unescape(raw, &mut name);
                        let child = match (how, name.as_str()) {
                            (Skim::Call, "batch") => Skim::Calls,
                            (Skim::Call, "type" | "userId" | "anonymousId" | "event") => {
                                Skim::Whole
                            }
                            (Skim::Call, "traits") if full[fv].kind == Kind::Object => {
                                // Read when checked: its members, as tokenize's.
                                let mut read = Vec::new();
                                let end = each_member(b, full[fv].start as usize, |m| read.push(m))
                                    .unwrap();
                                assert_eq!(end, full[fv].end as usize);
                                let want: Vec<Member> = members(full, fv)
                                    .map(|(k, v)| {
                                        let (k, v) = (full[k], full[v]);
                                        Member {
                                            key: (k.start as usize, k.end as usize),
                                            key_escaped: k.escaped,
                                            kind: v.kind,
                                            value: (v.start as usize, v.end as usize),
                                            value_escaped: v.escaped,
                                        }
                                    })
                                    .collect();
                                assert_eq!(read, want);
                                Skim::Whole
                            }
                            (Skim::Call, _) => Skim::Skip,
                            _ => Skim::Whole,
                        };
                        same(b, full, sk, fv, sv, child);
                    }
                }
                (Skim::Calls, Kind::Array) => {
                    let (mut fi, mut si) = (f + 1, s + 1);
                    while fi < a.next as usize {
                        assert!(si < c.next as usize);
                        same(b, full, sk, fi, si, Skim::Call);
                        (fi, si) = (full[fi].next as usize, sk[si].next as usize);
                    }
                    assert_eq!(si, c.next as usize);
                }
                _ => assert_eq!(c.next as usize, s + 1, "one token for a value read whole"),
            }
        }
        let corpus = include_str!("../../tests/data/corpus.jsonl");
        let extra = [
            r#"{"type":"identify","tr\u0061its":{"a":[1,{"b":"}]"}],"c":"x\"y"},"n":-1.5e3,"t":true,"f":false,"z":null}"#,
            r#"{"batch":[{"type":"track","traits":{"k":{"x":[]}}},3,"s",[{"traits":1}]],"context":{"batch":[{"traits":{}}]}}"#,
            r#"{}"#,
            r#" { "a" : [ ] , "traits" : { } } "#,
        ];
        let (mut full, mut stack, mut sk) = (Vec::new(), Nesting::default(), Vec::new());
        for line in corpus.lines().chain(extra) {
            let b = line.as_bytes();
            tokenize(b, 64, Marks::Repeats, &mut full, &mut stack).unwrap();
            skim(b, &mut sk).unwrap();
            same(b, &full, &sk, 0, 0, Skim::Call);
        }
    }

    #[test]
    fn depth_limit() {
        let deep = "[".repeat(65) + &"]".repeat(65);
        let mut tape = Vec::new();
        let mut stack = Nesting::default();
        assert_eq!(
            tokenize(deep.as_bytes(), 64, Marks::Repeats, &mut tape, &mut stack),
            Err(JsonError::TooDeep)
        );
        let fine = "[".repeat(64) + &"]".repeat(64);
        assert!(tokenize(fine.as_bytes(), 64, Marks::Repeats, &mut tape, &mut stack).is_ok());
    }

    #[test]
    fn a_key_print_is_the_same_wherever_the_key_is() {
        for n in 0..20 {
            let key: Vec<u8> = (0..n as u8).map(|c| b'a' + c).collect();
            let mut spaced = key.clone();
            spaced.extend_from_slice(b"\":0,\"zzzzzzzzzzzzzzzz");
            let at_end = key_print(&key, 0, n);
            assert_eq!(key_print(&spaced, 0, n), at_end, "{n} bytes");
            if n > 0 {
                assert_ne!(key_print(&key[..n - 1], 0, n - 1), at_end);
            }
        }
    }

    #[test]
    fn objects_whose_keys_may_repeat_are_marked() {
        let marked = |s: &str| {
            let (mut tape, mut stack) = (Vec::new(), Nesting::default());
            tokenize(s.as_bytes(), 64, Marks::Repeats, &mut tape, &mut stack).unwrap();
            tape.iter()
                .filter(|t| t.kind == Kind::Object)
                .map(|t| t.may_repeat)
                .collect::<Vec<_>>()
        };
        assert_eq!(marked(r#"{"a":1,"b":{"a":2,"c":3}}"#), [false, false]);
        // An object that may repeat marks the containers around it.
        assert_eq!(marked(r#"{"a":1,"b":{"c":2,"c":3}}"#), [true, true]);
        assert_eq!(
            marked(r#"{"a":[{"c":2,"c":3}],"b":{}}"#),
            [true, true, false]
        );
        assert_eq!(marked(r#"{"a":{"x":1},"a":2}"#), [true, false]);
        // An escape may spell a key that is there plainly.
        assert_eq!(marked(r#"{"\u0061":1,"b":2}"#), [true]);
        // Many keys: the 64 bits fill up, and the object is checked.
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert_eq!(marked(&format!("{{{}}}", many.join(","))), [true]);
    }

    #[test]
    fn tape_shape() {
        let mut tape = Vec::new();
        let mut stack = Nesting::default();
        tokenize(
            br#"{"a":[1,"x"],"b":null}"#,
            64,
            Marks::Repeats,
            &mut tape,
            &mut stack,
        )
        .unwrap();
        let kinds: Vec<Kind> = tape.iter().map(|t| t.kind).collect();
        use Kind::*;
        assert_eq!(
            kinds,
            vec![Object, String, Array, Number, String, String, Null]
        );
        assert_eq!(tape[0].next, 7);
        assert_eq!(tape[2].next, 5);
    }

    #[test]
    fn unescape_and_escape_round_trip() {
        let mut s = String::new();
        unescape(r#"a\"b\\c\n\u00e9\ud83d\ude00"#, &mut s);
        assert_eq!(s, "a\"b\\c\né😀");
        let mut out = Vec::new();
        escape_into("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string("a\"b\\c\n\u{1}é")
                .unwrap()
                .trim_matches('"')
        );
    }
}
