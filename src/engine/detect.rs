//! Value detectors: find PII inside free text.
//!
//! Each detector has a cheap prefilter (a byte that must be present, a
//! minimum count of digits) so that most strings cost one pass over their
//! bytes; card numbers and SSNs are found by hand-written scanners that
//! also do the checks a regex cannot (Luhn, SSN area rules).

use super::swar::{zero_bytes, HI, LO7, ONES};
use crate::rules::{Builtin, DetectorSpec};
use regex::Regex;

/// A match: byte range in the scanned string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    /// Index into the sanitizer's detector table.
    pub detector: u16,
}

/// A compiled detector.
#[derive(Debug)]
pub(crate) struct Detector {
    pub name: String,
    kind: DetectorKind,
}

#[derive(Debug)]
enum DetectorKind {
    CreditCard,
    UsSsn,
    Ipv6,
    /// A regex with a prefilter and a validator.
    Regex {
        re: Regex,
        pre: Prefilter,
        check: fn(&str) -> bool,
        /// Whether the match stands where such a value would (the whole
        /// string, the match's byte range).
        context: fn(&[u8], usize, usize) -> bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum Prefilter {
    None,
    Byte(u8),
    Literal(&'static str),
    MinDigits(usize),
    Dots(usize),
}

fn always(_: &str) -> bool {
    true
}

fn anywhere(_: &[u8], _: usize, _: usize) -> bool {
    true
}

/// A dotted quad right after a product name and a slash is a version
/// (`Chrome/120.0.0.0`, `Safari/537.36.0.1` in a User-Agent), not an
/// address; after `//` (a URL) or anything else it is one.
fn not_a_version(b: &[u8], start: usize, _: usize) -> bool {
    !(start >= 2 && b[start - 1] == b'/' && b[start - 2].is_ascii_alphanumeric())
}

impl Detector {
    pub fn compile(spec: &DetectorSpec) -> Result<Detector, regex::Error> {
        let rx = |p: &str| regex::RegexBuilder::new(p).size_limit(1 << 20).build();
        let kind = match spec {
            DetectorSpec::Builtin(Builtin::CreditCard) => DetectorKind::CreditCard,
            DetectorSpec::Builtin(Builtin::UsSsn) => DetectorKind::UsSsn,
            DetectorSpec::Builtin(Builtin::Ipv6) => DetectorKind::Ipv6,
            DetectorSpec::Builtin(Builtin::Email) => DetectorKind::Regex {
                re: rx(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")?,
                pre: Prefilter::Byte(b'@'),
                check: always,
                context: anywhere,
            },
            DetectorSpec::Builtin(Builtin::Phone) => DetectorKind::Regex {
                re: rx(concat!(
                    r"\+[0-9]{1,3}(?:[ .\-]?\(?[0-9]{1,4}\)?)(?:[ .\-]?[0-9]{2,8}){1,4}",
                    r"|\([0-9]{2,4}\)[ .\-]?[0-9]{3,4}[ .\-]?[0-9]{3,4}",
                    r"|\b[0-9]{3}[.\-][0-9]{3}[.\-][0-9]{4}\b",
                ))?,
                pre: Prefilter::MinDigits(7),
                check: phone_ok,
                context: anywhere,
            },
            DetectorSpec::Builtin(Builtin::Ipv4) => DetectorKind::Regex {
                re: rx(r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b")?,
                pre: Prefilter::Dots(3),
                check: |s| s.parse::<std::net::Ipv4Addr>().is_ok(),
                context: not_a_version,
            },
            DetectorSpec::Builtin(Builtin::Iban) => DetectorKind::Regex {
                re: rx(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b")?,
                pre: Prefilter::MinDigits(4),
                check: iban_ok,
                context: anywhere,
            },
            DetectorSpec::Builtin(Builtin::Jwt) => DetectorKind::Regex {
                re: rx(r"\beyJ[A-Za-z0-9_\-]{2,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")?,
                pre: Prefilter::Literal("eyJ"),
                check: always,
                context: anywhere,
            },
            DetectorSpec::Custom { regex, .. } => DetectorKind::Regex {
                re: rx(regex)?,
                pre: Prefilter::None,
                check: always,
                context: anywhere,
            },
        };
        Ok(Detector {
            name: spec.name().to_string(),
            kind,
        })
    }

    /// The digit run ([`Stats::digit_run`]) below which this detector
    /// finds nothing, for the detectors that look only at long runs.
    pub fn digit_gate(&self) -> Option<u8> {
        match self.kind {
            DetectorKind::CreditCard => Some(CARD_RUN),
            DetectorKind::UsSsn => Some(SSN_RUN),
            _ => None,
        }
    }

    /// Appends every match in `s` to `out`, tagged with `id`. `stats` is
    /// computed once per string and shared by all detectors.
    pub fn find(&self, s: &str, stats: &mut Stats, id: u16, out: &mut Vec<Found>) {
        match &self.kind {
            DetectorKind::CreditCard => {
                if stats.digit_run(s.as_bytes()) >= CARD_RUN as usize {
                    find_cards(s.as_bytes(), id, out)
                }
            }
            DetectorKind::UsSsn => {
                if stats.digit_run(s.as_bytes()) >= SSN_RUN as usize {
                    find_ssns(s.as_bytes(), id, out)
                }
            }
            DetectorKind::Ipv6 => find_ipv6(s, id, out),
            DetectorKind::Regex {
                re,
                pre,
                check,
                context,
            } => {
                let pass = match *pre {
                    Prefilter::None => true,
                    Prefilter::Byte(c) => memchr::memchr(c, s.as_bytes()).is_some(),
                    Prefilter::Literal(l) => {
                        memchr::memmem::find(s.as_bytes(), l.as_bytes()).is_some()
                    }
                    Prefilter::MinDigits(n) => stats.digits(s.as_bytes()) >= n,
                    Prefilter::Dots(n) => memchr::memchr_iter(b'.', s.as_bytes()).count() >= n,
                };
                if !pass {
                    return;
                }
                for m in re.find_iter(s) {
                    if m.is_empty() {
                        continue;
                    }
                    let text = m.as_str();
                    if !context(s.as_bytes(), m.start(), m.end()) {
                        continue;
                    }
                    if check(text) {
                        out.push(Found {
                            start: m.start(),
                            end: m.end(),
                            detector: id,
                        });
                    } else if let Some(end) = shrink_iban(text) {
                        // An IBAN followed by unrelated words: keep the valid prefix.
                        out.push(Found {
                            start: m.start(),
                            end: m.start() + end,
                            detector: id,
                        });
                    }
                }
            }
        }
    }
}

/// Facts about one string that several detectors' prefilters share,
/// computed on first use.
#[derive(Default)]
pub(crate) struct Stats {
    digits: Option<usize>,
    run: Option<usize>,
}

impl Stats {
    /// Count of ASCII digits: counted in byte lanes, 255 bytes at most
    /// per lane sum (so a lane cannot overflow), which the compiler
    /// vectorizes 16 bytes at a time; a count in `usize` lanes takes 4.
    pub fn digits(&mut self, b: &[u8]) -> usize {
        *self.digits.get_or_insert_with(|| {
            b.chunks(255)
                .map(|c| {
                    c.iter()
                        .fold(0u8, |n, &x| n + u8::from(x.wrapping_sub(b'0') < 10))
                        as usize
                })
                .sum()
        })
    }

    /// Length in bytes (capped at 16) of the longest run of digits and
    /// single spaces or dashes between digits: an upper bound on the length
    /// of any SSN (11 bytes) or card number (13 or more) in the string.
    /// UUIDs, timestamps and version strings stay short. Computed with bit
    /// masks over 64-byte windows that overlap by 15 bytes.
    pub fn digit_run(&mut self, b: &[u8]) -> usize {
        if let Some(r) = self.run {
            return r;
        }
        // Shorter than an SSN or with fewer digits than one: no run worth
        // measuring.
        let r = if b.len() < SSN_RUN as usize || self.digits(b) < SSN_DIGITS {
            0
        } else {
            longest_run(b)
        };
        self.run = Some(r);
        r
    }
}

const RUN_CAP: usize = 16;
/// The shortest digit runs a card number (13 digits) and an SSN (9 digits,
/// 11 bytes written AAA-GG-SSSS) make.
const CARD_RUN: u8 = 13;
const SSN_RUN: u8 = 11;
const SSN_DIGITS: usize = 9;

/// One bit per byte (bit k for byte k) from a mask of high bits: the
/// multiply gathers the eight bits into the top byte without carries.
#[inline(always)]
fn movemask(hi: u64) -> u64 {
    ((hi >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Digit and separator (space, dash) masks of up to 64 bytes.
#[inline]
fn masks(w: &[u8]) -> (u64, u64) {
    let (mut d, mut s) = (0u64, 0u64);
    let mut chunks = w.chunks_exact(8);
    let mut shift = 0;
    for c in chunks.by_ref() {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let t = x ^ (ONES * b'0' as u64);
        // Bit 7 set where the byte is not 0x30..=0x39.
        let nondigit = (((t & LO7).wrapping_add(ONES * 0x76)) | t) & HI;
        d |= movemask(!nondigit & HI) << shift;
        let sep = zero_bytes(x ^ (ONES * b' ' as u64)) | zero_bytes(x ^ (ONES * b'-' as u64));
        s |= movemask(sep) << shift;
        shift += 8;
    }
    for (i, &c) in chunks.remainder().iter().enumerate() {
        d |= ((c.wrapping_sub(b'0') < 10) as u64) << (shift + i);
        s |= ((c == b' ' || c == b'-') as u64) << (shift + i);
    }
    (d, s)
}

/// Digit and separator (space, dash) masks of 64 bytes: sixteen at once
/// with SSE2.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn masks64(w: &[u8; 64]) -> (u64, u64) {
    use std::arch::x86_64::*;
    let word = |k: usize| i64::from_le_bytes(w[k..k + 8].try_into().expect("8 bytes"));
    let (mut d, mut s) = (0u64, 0u64);
    for k in 0..4 {
        // SAFETY: these intrinsics need only SSE2, which this code is
        // compiled with (the `cfg` above; every x86_64 processor has it),
        // and none of them reads or writes memory: the bytes come in as
        // two words, the masks leave as integers.
        let (dk, sk) = unsafe {
            let v = _mm_set_epi64x(word(16 * k + 8), word(16 * k));
            // Digits: byte - '0' is at most 9 (unsigned).
            let off = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
            let digit = _mm_cmpeq_epi8(_mm_min_epu8(off, _mm_set1_epi8(9)), off);
            let sep = _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8)),
            );
            (
                _mm_movemask_epi8(digit) as u16,
                _mm_movemask_epi8(sep) as u16,
            )
        };
        d |= u64::from(dk) << (16 * k);
        s |= u64::from(sk) << (16 * k);
    }
    (d, s)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn masks64(w: &[u8; 64]) -> (u64, u64) {
    masks(w)
}

/// Whether the string `buf[s..e]` (no escapes) holds a digit run of
/// `gate` bytes or more as [`Stats::digit_run`] measures it (`gate` in
/// 9..=16), in the same 64-byte windows as [`longest_run`], whose masks
/// come from 64 bytes read in place (the bytes after the string masked
/// off): a few instructions per sixteen bytes, nothing per byte.
#[inline]
pub(crate) fn may_run(buf: &[u8], s: usize, e: usize, gate: u8) -> bool {
    debug_assert!((9..=RUN_CAP as u8).contains(&gate));
    if e - s < SSN_RUN as usize {
        return false;
    }
    let (mut digits, mut found) = (0, false);
    let (mut start, mut counted) = (s, s);
    loop {
        let end = (start + 64).min(e);
        let n = end - start;
        let mut copy = [0u8; 64];
        let w: &[u8; 64] = match buf.get(start..start + 64) {
            Some(w) => w.try_into().expect("64 bytes"),
            None => {
                copy[..n].copy_from_slice(&buf[start..end]);
                &copy
            }
        };
        let (d, sep) = masks64(w);
        let keep = u64::MAX >> (64 - n);
        let (d, sep) = (d & keep, sep & keep);
        // Digits counted once: those past the previous window's end.
        digits += (d >> (counted - start)).count_ones();
        counted = end;
        // Bit i of `r8`: bytes i..i + 8 are in a run; of the test: bytes
        // i..i + gate are.
        let x = d | (sep & (d << 1) & (d >> 1));
        let r2 = x & (x >> 1);
        let r4 = r2 & (r2 >> 2);
        let r8 = r4 & (r4 >> 4);
        found |= r8 & (r8 >> (gate - 8)) != 0;
        if end == e {
            return found && digits as usize >= SSN_DIGITS;
        }
        start = end - (RUN_CAP - 1);
    }
}

fn longest_run(b: &[u8]) -> usize {
    let mut best = 0;
    let mut start = 0;
    loop {
        let end = (start + 64).min(b.len());
        let (d, s) = masks(&b[start..end]);
        let mut x = d | (s & (d << 1) & (d >> 1));
        let mut len = 0;
        while x != 0 && len < RUN_CAP {
            x &= x >> 1;
            len += 1;
        }
        best = best.max(len);
        if end == b.len() || best >= RUN_CAP {
            return best;
        }
        start = end - (RUN_CAP - 1);
    }
}

#[inline]
fn alnum(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Luhn check over the digits of `b` (separators skipped).
pub(crate) fn luhn(b: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &c in b.iter().rev() {
        if !c.is_ascii_digit() {
            continue;
        }
        let mut d = (c - b'0') as u32;
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

/// Whether the digits of `b` (separators skipped) start like a card of a
/// real scheme with a length it issues: Visa (4; 13, 16, 19 digits),
/// Mastercard (51-55, 2221-2720; 16), American Express (34, 37; 15), Mir
/// (2200-2204), Diners (300-305, 3095, 36, 38, 39), JCB (3528-3589),
/// Discover, UnionPay, Maestro and RuPay (50, 56-69, 81, 82). Random ids,
/// tracking numbers and timestamps that pass Luhn mostly start otherwise.
pub(crate) fn issued(b: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &c in b {
        if c.is_ascii_digit() {
            if n == digits.len() {
                return false;
            }
            digits[n] = c - b'0';
            n += 1;
        }
    }
    if n < 13 {
        return false;
    }
    let prefix = |k: usize| digits[..k].iter().fold(0u32, |v, &d| v * 10 + d as u32);
    match digits[0] {
        4 => matches!(n, 13 | 16 | 19),
        5 => match prefix(2) {
            51..=55 => n == 16,
            50 | 56..=59 => true,
            _ => false,
        },
        2 => match prefix(4) {
            2221..=2720 => n == 16,
            2200..=2204 => n >= 16,
            _ => false,
        },
        3 => match prefix(2) {
            34 | 37 => n == 15,
            36 | 38 | 39 => n >= 14,
            30 => matches!(prefix(3), 300..=305) || prefix(4) == 3095,
            35 => matches!(prefix(4), 3528..=3589) && n >= 16,
            _ => false,
        },
        6 => n >= 12,
        8 => matches!(prefix(2), 81 | 82) && n >= 16,
        _ => false,
    }
}

/// The hyphen-joined word around `start..end`: letters, digits and dashes.
fn word_around(b: &[u8], start: usize, end: usize) -> (usize, usize) {
    let part = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-';
    let lo = b[..start]
        .iter()
        .rposition(|c| !part(c))
        .map_or(0, |i| i + 1);
    let hi = b[end..]
        .iter()
        .position(|c| !part(c))
        .map_or(b.len(), |i| end + i);
    (lo, hi)
}

/// Whether the match `start..end` stands alone as a token: not one part
/// of a longer dash-joined word (a UUID, an order id such as
/// `123-45-6789-0001`) and not the whole or fraction part of a decimal
/// number (`4111111111111111.00`).
fn standalone(b: &[u8], start: usize, end: usize) -> bool {
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let decimal = (start >= 2 && b[start - 1] == b'.' && digit(start - 2))
        || (b.get(end) == Some(&b'.') && digit(end + 1));
    if decimal {
        return false;
    }
    let (lo, hi) = word_around(b, start, end);
    !b[lo..hi].contains(&b'-') || (lo, hi) == (start, end)
}

/// Card numbers: 13-19 digits in groups split by single spaces or dashes,
/// not glued to letters or digits on either side, passing Luhn, with the
/// prefix and length of a card scheme ([`issued`]). When a run of groups
/// split by spaces is longer, the longest valid prefix of whole groups is
/// taken; digits that are only part of a dash-joined word (a UUID such as
/// `58455754-3422-8218-890f-a42cbc309ed4`, an order id, a date) are not a
/// card: the card must be the whole word.
fn find_cards(b: &[u8], id: u16, out: &mut Vec<Found>) {
    let n = b.len();
    let mut i = 0;
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        if i > 0 && alnum(b, i - 1) {
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        // Collect group ends: (byte end, digits so far).
        let start = i;
        let mut ends: smallvec::SmallVec<[(usize, usize); 8]> = smallvec::SmallVec::new();
        let mut j = i;
        let mut digits = 0;
        loop {
            while j < n && b[j].is_ascii_digit() {
                j += 1;
                digits += 1;
            }
            ends.push((j, digits));
            if digits < 19
                && j + 1 < n
                && (b[j] == b' ' || b[j] == b'-')
                && b[j + 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        let found = ends.iter().rev().find(|&&(end, d)| {
            (13..=19).contains(&d)
                && !alnum(b, end)
                && luhn(&b[start..end])
                && issued(&b[start..end])
                && standalone(b, start, end)
        });
        match found {
            Some(&(end, _)) => {
                out.push(Found {
                    start,
                    end,
                    detector: id,
                });
                i = end;
            }
            None => i = ends[0].0,
        }
    }
}

/// US SSNs: `AAA-GG-SSSS` or `AAA GG SSSS`, area not 000, 666 or 9xx,
/// group not 00, serial not 0000, standing alone ([`standalone`]).
fn find_ssns(b: &[u8], id: u16, out: &mut Vec<Found>) {
    let n = b.len();
    if n < 11 {
        return;
    }
    let d = |i: usize| b[i].is_ascii_digit();
    let mut i = 0;
    while i + 11 <= n {
        if !d(i) || (i > 0 && alnum(b, i - 1)) {
            i += 1;
            continue;
        }
        let sep = b[i + 3];
        let shape = d(i + 1)
            && d(i + 2)
            && (sep == b'-' || sep == b' ')
            && d(i + 4)
            && d(i + 5)
            && b[i + 6] == sep
            && d(i + 7)
            && d(i + 8)
            && d(i + 9)
            && d(i + 10)
            && !alnum(b, i + 11);
        if shape {
            let area = &b[i..i + 3];
            let valid = standalone(b, i, i + 11)
                && area != b"000"
                && area != b"666"
                && area[0] != b'9'
                && &b[i + 4..i + 6] != b"00"
                && &b[i + 7..i + 11] != b"0000";
            if valid {
                out.push(Found {
                    start: i,
                    end: i + 11,
                    detector: id,
                });
                i += 11;
                continue;
            }
        }
        i += 1;
    }
}

fn find_ipv6(s: &str, id: u16, out: &mut Vec<Found>) {
    let b = s.as_bytes();
    if memchr::memchr_iter(b':', b).take(2).count() < 2 {
        return;
    }
    let is_part = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut i = 0;
    while i < b.len() {
        if !is_part(b[i]) || (i > 0 && alnum(b, i - 1)) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_part(b[j]) {
            j += 1;
        }
        let mut end = j;
        // A trailing dot is sentence punctuation, not part of the address.
        while end > i && b[end - 1] == b'.' {
            end -= 1;
        }
        let cand = &s[i..end];
        if !alnum(b, j)
            && cand.matches(':').count() >= 2
            && cand.parse::<std::net::Ipv6Addr>().is_ok()
        {
            out.push(Found {
                start: i,
                end,
                detector: id,
            });
        }
        i = j.max(i + 1);
    }
}

fn phone_ok(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    (7..=15).contains(&digits)
}

fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|c| *c != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Move the first four characters to the end; letters become 10..35.
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let v = match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'A'..=b'Z' => (c - b'A') as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// For an IBAN candidate that fails the check: the longest prefix ending at
/// a space that passes it.
fn shrink_iban(s: &str) -> Option<usize> {
    if !s.as_bytes().first().is_some_and(u8::is_ascii_uppercase) || !s.contains(' ') {
        return None;
    }
    let mut ends: Vec<usize> = s.match_indices(' ').map(|(i, _)| i).collect();
    ends.reverse();
    ends.into_iter().find(|&e| iban_ok(&s[..e]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(b: Builtin, s: &str) -> Vec<String> {
        let d = Detector::compile(&DetectorSpec::Builtin(b)).unwrap();
        let mut out = Vec::new();
        d.find(s, &mut Stats::default(), 0, &mut out);
        out.iter().map(|f| s[f.start..f.end].to_string()).collect()
    }

    #[test]
    fn cards() {
        assert_eq!(
            find(Builtin::CreditCard, "card 4111 1111 1111 1111 exp"),
            vec!["4111 1111 1111 1111"]
        );
        assert_eq!(
            find(Builtin::CreditCard, "4111-1111-1111-1111"),
            vec!["4111-1111-1111-1111"]
        );
        assert_eq!(
            find(Builtin::CreditCard, "x4111111111111111"),
            Vec::<String>::new()
        );
        assert_eq!(
            find(Builtin::CreditCard, "4111111111111112"),
            Vec::<String>::new(),
            "Luhn"
        );
        assert_eq!(
            find(Builtin::CreditCard, "4111 1111 1111 1111 1234"),
            vec!["4111 1111 1111 1111"]
        );
        assert_eq!(
            find(Builtin::CreditCard, "378282246310005"),
            vec!["378282246310005"],
            "amex 15"
        );
        assert!(find(Builtin::CreditCard, "2026-11-05T10:11:12.000Z").is_empty());
    }

    #[test]
    fn ids_whose_digits_pass_luhn_are_not_cards() {
        // From the corpus: 5845575434228218 passes Luhn and starts like a
        // Maestro card, but it is the front of a UUID.
        assert!(luhn(b"5845575434228218"));
        for id in [
            "58455754-3422-8218-890f-a42cbc309ed4",
            "58455754-3422-8218-8900-142331309004",
            "order-4111-1111-1111-1111",
            "4111-1111-1111-1111-x",
        ] {
            assert_eq!(find(Builtin::CreditCard, id), Vec::<String>::new(), "{id}");
        }
        // Luhn-valid, but no scheme issues these prefixes or lengths.
        for n in [
            "1234567812345670",
            "9999999999999995",
            "0000000000000000",
            "411111111111111118",
        ] {
            assert!(luhn(n.as_bytes()), "{n}");
            assert_eq!(find(Builtin::CreditCard, n), Vec::<String>::new(), "{n}");
        }
        // Cards of each kind are still found, whole or inside free text.
        for card in [
            "4111111111111111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
        ] {
            assert_eq!(find(Builtin::CreditCard, card), vec![card], "{card}");
        }
        assert_eq!(
            find(Builtin::CreditCard, "refund to 5555-5555-5555-4444, thanks"),
            vec!["5555-5555-5555-4444"]
        );
    }

    #[test]
    fn swar_masks_match_a_plain_loop() {
        let samples: Vec<Vec<u8>> = vec![
            b"0123456789 -/:aZ\x7f".to_vec(),
            "é9-0 ü1x".as_bytes().to_vec(),
            (0u8..=255).collect(),
            b"--  99 -- 00".repeat(7),
        ];
        for s in samples {
            for w in s.chunks(64) {
                let (d, sp) = masks(w);
                for (i, &c) in w.iter().enumerate() {
                    assert_eq!((d >> i) & 1 == 1, c.is_ascii_digit(), "digit {c} at {i}");
                    assert_eq!((sp >> i) & 1 == 1, c == b' ' || c == b'-', "sep {c} at {i}");
                }
            }
        }
    }

    #[test]
    fn run_prefilter_is_an_upper_bound() {
        assert_eq!(longest_run(b"x 123-45-6789 y"), 11);
        assert_eq!(longest_run(b"4111 1111 1111 1111"), 16);
        assert_eq!(
            longest_run(b"965eda32-dae4-4550-8201-e2bd73ab4876"),
            11,
            "`4-4550-8201`"
        );
        assert_eq!(longest_run(b"830c71c2-cdcc-6929-2f45-e678309d6b79"), 6);
        assert_eq!(longest_run(b"2026-11-16T20:39:50.000Z"), 10);
        assert_eq!(longest_run(b"1--2"), 1);
        let long = format!("{}4111 1111 1111 1111", "a".repeat(60));
        assert_eq!(
            longest_run(long.as_bytes()),
            16,
            "a run across a window edge"
        );
    }

    #[test]
    fn ssns() {
        assert_eq!(
            find(Builtin::UsSsn, "SSN 123-45-6789 twice"),
            vec!["123-45-6789"]
        );
        assert_eq!(find(Builtin::UsSsn, "123 45 6789"), vec!["123 45 6789"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
            "1123-45-6789",
        ] {
            assert!(find(Builtin::UsSsn, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn others() {
        assert_eq!(
            find(Builtin::Email, "mail jane.doe+x@mail.example.com now"),
            vec!["jane.doe+x@mail.example.com"]
        );
        assert_eq!(
            find(Builtin::Phone, "call +1-555-123-4567 or (555) 123-4567"),
            vec!["+1-555-123-4567", "(555) 123-4567"]
        );
        assert_eq!(
            find(Builtin::Phone, "+49 30 1234567"),
            vec!["+49 30 1234567"]
        );
        assert!(find(Builtin::Phone, "2026-11-05").is_empty());
        assert_eq!(find(Builtin::Ipv4, "from 10.0.0.1."), vec!["10.0.0.1"]);
        assert!(find(Builtin::Ipv4, "999.1.1.1").is_empty());
        // A version in a User-Agent is not an address; a URL's host is.
        assert!(find(Builtin::Ipv4, "Chrome/120.0.0.0 Safari/537.36").is_empty());
        assert_eq!(
            find(Builtin::Ipv4, "http://10.1.2.3/x and /10.1.2.4"),
            vec!["10.1.2.3", "10.1.2.4"]
        );
        assert_eq!(
            find(Builtin::Ipv6, "addr 2001:db8::1 ok"),
            vec!["2001:db8::1"]
        );
        assert!(find(Builtin::Ipv6, "at 10:11:12").is_empty());
        assert_eq!(
            find(Builtin::Iban, "pay DE89 3704 0044 0532 0130 00 THANKS"),
            vec!["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            find(Builtin::Iban, "GB82WEST12345698765432"),
            vec!["GB82WEST12345698765432"]
        );
        assert!(find(Builtin::Iban, "GB82WEST12345698765433").is_empty());
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-123";
        assert_eq!(find(Builtin::Jwt, &format!("Bearer {jwt}")), vec![jwt]);
    }

    #[test]
    fn masks_of_64_bytes_agree_with_the_byte_loop() {
        for c in 0..=255u8 {
            for at in [0, 7, 15, 16, 33, 63] {
                let mut w = [b'a'; 64];
                w[at] = c;
                let (d, s) = masks64(&w);
                let want_d = u64::from(c.is_ascii_digit()) << at;
                let want_s = u64::from(c == b' ' || c == b'-') << at;
                assert_eq!((d, s), (want_d, want_s), "byte {c} at {at}");
            }
        }
    }

    #[test]
    fn may_run_agrees_with_the_digit_run() {
        // Strings made of digits, separators and letters, read at every
        // offset of a buffer with more after them, and at its very end.
        let alphabet = b"0123456789- -a.";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 300) as usize;
            let digits_only = next() % 3 == 0;
            let text: Vec<u8> = (0..n)
                .map(|_| {
                    let r = next() as usize;
                    if digits_only {
                        b'0' + (r % 10) as u8
                    } else {
                        alphabet[r % alphabet.len()]
                    }
                })
                .collect();
            let run = Stats::default().digit_run(&text);
            let pad = (next() % 70) as usize;
            let mut buf = b"\"".to_vec();
            buf.extend_from_slice(&text);
            let at_end = buf.clone();
            buf.extend(std::iter::repeat_n(b'7', pad));
            for gate in [SSN_RUN, CARD_RUN, 9, 16] {
                let want = run >= gate as usize;
                for b in [&buf, &at_end] {
                    let got = may_run(b, 1, 1 + n, gate);
                    assert_eq!(
                        got,
                        want,
                        "{:?} gate {gate}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
    }
}
